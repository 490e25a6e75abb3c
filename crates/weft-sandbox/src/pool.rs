//! The parent side: a pool of worker processes with per-request deadlines.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use crate::{Request, Response};

/// How the pool starts and limits workers.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Program to start (the `weft` binary itself).
    pub program: PathBuf,
    /// Arguments that make it a worker (e.g. `["sandbox-worker"]`).
    pub args: Vec<String>,
    /// Most workers running at once.
    pub workers: usize,
    /// Wall-clock limit of one evaluation.
    pub timeout: Duration,
    /// Address-space limit of a worker, in bytes.
    pub memory_bytes: u64,
}

/// Why a sandboxed evaluation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SandboxError {
    /// The expression itself failed (a jq error).
    #[error("{0}")]
    Eval(String),
    /// It ran past the time limit and was killed.
    #[error(
        "the expression ran longer than its {0:?} time limit and was stopped; make it cheaper or bound its loops"
    )]
    Timeout(Duration),
    /// The worker died (out of memory or stack).
    #[error(
        "the expression exhausted its memory or stack limit ({limit_mib} MiB) and was stopped: {detail}"
    )]
    Crashed {
        /// Exit status.
        detail: String,
        /// The memory limit.
        limit_mib: u64,
    },
    /// A worker could not be started.
    #[error("the expression sandbox could not start a worker: {0}")]
    Spawn(String),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// A pool of sandbox worker processes.
#[derive(Clone)]
pub struct SandboxPool {
    opts: Arc<SandboxOptions>,
    idle: Arc<Mutex<Vec<Worker>>>,
    permits: Arc<Semaphore>,
    kills: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for SandboxPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxPool")
            .field("opts", &self.opts)
            .finish()
    }
}

impl SandboxPool {
    /// A pool; workers start on first use.
    pub fn new(opts: SandboxOptions) -> Self {
        let permits = Arc::new(Semaphore::new(opts.workers.max(1)));
        Self {
            opts: Arc::new(opts),
            idle: Arc::default(),
            permits,
            kills: Arc::default(),
        }
    }

    /// Workers killed or crashed so far.
    pub fn kills(&self) -> u64 {
        self.kills.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn spawn(&self) -> Result<Worker, SandboxError> {
        let mut child = Command::new(&self.opts.program)
            .args(&self.opts.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::Spawn(format!("{}: {e}", self.opts.program.display())))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| SandboxError::Spawn("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SandboxError::Spawn("no stdout".into()))?;
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// Evaluates jq `src` on `input` in a worker; returns all outputs.
    pub async fn eval_jq(&self, src: &str, input: &Value) -> Result<Vec<Value>, SandboxError> {
        let req = Request {
            src: src.to_string(),
            input: input.clone(),
            js_ms: None,
        };
        match self.exchange(&req, self.opts.timeout).await? {
            Response::Ok(v) => Ok(v),
            Response::Err(e) => Err(SandboxError::Eval(e)),
            Response::Js(_) => Err(SandboxError::Eval(
                "the sandbox answered a jq request with a code result".into(),
            )),
        }
    }

    /// Runs a JavaScript code step's `code` over `input` (its context) in a worker, with
    /// `time` of CPU; the worker is killed if it outlives that by a second.
    pub async fn eval_js(
        &self,
        code: &str,
        input: &Value,
        time: Duration,
    ) -> Result<crate::JsOutcome, SandboxError> {
        let req = Request {
            src: code.to_string(),
            input: input.clone(),
            js_ms: Some(time.as_millis() as u64),
        };
        match self.exchange(&req, time + Duration::from_secs(1)).await {
            Ok(Response::Js(o)) => Ok(o),
            Ok(Response::Err(e)) => Err(SandboxError::Eval(e)),
            Ok(Response::Ok(_)) => Err(SandboxError::Eval(
                "the sandbox answered a code request with a jq result".into(),
            )),
            Err(SandboxError::Timeout(_)) => Err(SandboxError::Timeout(time)),
            Err(e) => Err(e),
        }
    }

    /// Readiness: a worker evaluates a trivial expression. A pool whose every worker is busy is
    /// up (they are running), so this answers at once then instead of queueing behind them.
    pub async fn probe(&self) -> Result<(), SandboxError> {
        if self.permits.available_permits() == 0 {
            return Ok(());
        }
        let req = Request {
            src: "1".into(),
            input: Value::Null,
            js_ms: None,
        };
        match self.exchange(&req, self.opts.timeout).await? {
            Response::Ok(v) if v == [Value::from(1)] => Ok(()),
            _ => Err(SandboxError::Eval(
                "a sandbox worker gave a wrong answer to a probe".into(),
            )),
        }
    }

    /// Sends one request to an idle (or new) worker and reads its answer within `timeout`;
    /// a worker that overruns is killed, one that dies is counted, either way replaced later.
    async fn exchange(&self, req: &Request, timeout: Duration) -> Result<Response, SandboxError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SandboxError::Spawn("sandbox pool closed".into()))?;
        let worker = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut worker = match worker {
            Some(w) => w,
            None => self.spawn()?,
        };
        let mut line = serde_json::to_string(req)
            .map_err(|e| SandboxError::Eval(format!("cannot encode the input: {e}")))?;
        line.push('\n');
        let exchange = async {
            worker.stdin.write_all(line.as_bytes()).await?;
            worker.stdin.flush().await?;
            let mut answer = String::new();
            let n = worker.stdout.read_line(&mut answer).await?;
            Ok::<_, std::io::Error>((n, answer))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                self.kills
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = worker.child.start_kill();
                let _ = worker.child.wait().await;
                Err(SandboxError::Timeout(timeout))
            }
            Ok(Ok((n, answer))) if n > 0 => {
                let resp: Response = serde_json::from_str(&answer).map_err(|e| {
                    SandboxError::Eval(format!("the sandbox sent an unreadable answer: {e}"))
                })?;
                if let Ok(mut idle) = self.idle.lock() {
                    idle.push(worker);
                }
                Ok(resp)
            }
            Ok(_) => {
                // EOF or broken pipe: the worker died mid-evaluation.
                self.kills
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = worker.child.start_kill();
                let status = worker
                    .child
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                Err(SandboxError::Crashed {
                    detail: status,
                    limit_mib: self.opts.memory_bytes / (1024 * 1024),
                })
            }
        }
    }
}
