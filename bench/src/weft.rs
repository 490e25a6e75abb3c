//! The `weft serve` child process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `weft serve` on a fresh data directory.
pub struct Weft {
    child: Option<Child>,
    pub pid: u32,
    pub url: String,
    pub key: String,
    /// The instance admin token printed at first start.
    pub admin: String,
    pub root: Option<tempfile::TempDir>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Weft {
    /// Starts `weft serve --listen 127.0.0.1:0 --data-dir <tmp>/data --allow-private-network`
    /// (plus `extra`), stderr to `<tmp>/weft.log`, and waits for its URL and owner key.
    pub fn start(bin: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("weft-bench-")
            .tempdir()
            .context("cannot create a temp dir")?;
        Self::spawn(bin, extra, root, true)
    }

    /// Kills the process with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `weft serve` again on the same data directory (after [`Weft::kill9`]); the keys
    /// stay those of the first start.
    pub fn restart(&mut self, bin: &Path, extra: &[String]) -> anyhow::Result<()> {
        self.kill9();
        let root = self.root.take().context("the temp dir is gone")?;
        let (key, admin) = (self.key.clone(), self.admin.clone());
        let mut w = Self::spawn(bin, extra, root, false)?;
        w.key = key;
        w.admin = admin;
        std::mem::swap(self, &mut w);
        // `w` is now the old, empty handle: nothing to stop, no temp dir to remove.
        Ok(())
    }

    fn spawn(
        bin: &Path,
        extra: &[String],
        root: tempfile::TempDir,
        first: bool,
    ) -> anyhow::Result<Self> {
        let data = root.path().join("data");
        let log = root.path().join("weft.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--allow-private-network")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        if std::env::var_os("WEFT_LOG").is_none() {
            cmd.env("WEFT_LOG", "warn");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut w = Self {
            child: Some(child),
            pid,
            url: String::new(),
            key: String::new(),
            admin: String::new(),
            root: Some(root),
            data_dir: data,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while w.url.is_empty() || (first && (w.key.is_empty() || w.admin.is_empty())) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("Weft is serving on ") {
                        w.url = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .trim_end_matches('/')
                            .to_string();
                    } else if let Some(k) =
                        line.strip_prefix("Owner API key (shown once, keep it): ")
                    {
                        w.key = k.trim().to_string();
                    } else if let Some(t) =
                        line.strip_prefix("Instance admin token for /api/v1/admin (shown once): ")
                    {
                        w.admin = t.trim().to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = w.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
                    {
                        bail!(
                            "weft serve exited ({status}) before it was ready\n{}",
                            w.log_tail(30)
                        );
                    }
                    if left.is_zero() {
                        bail!(
                            "weft serve did not print its URL and owner key within 60 s\n{}",
                            w.log_tail(30)
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(200));
                    bail!(
                        "weft serve closed its stdout before printing its URL and owner key\n{}",
                        w.log_tail(30)
                    );
                }
            }
        }
        drop(rx); // the reader thread keeps draining, ignoring send errors
        Ok(w)
    }

    /// The last `n` lines of weft's stderr.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        if tail.is_empty() {
            "(weft's stderr is empty)".into()
        } else {
            format!("--- last lines of {} ---\n{tail}", self.log.display())
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL. Removes the temp dir unless `keep`.
    pub fn stop(&mut self, keep: bool) -> Option<PathBuf> {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!("weft did not exit within 10 s of SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        let root = self.root.take()?;
        if keep { Some(root.keep()) } else { None }
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        self.stop(false);
    }
}
