//! The Weft engine: turns accepted events into durable runs and executes them.
//!
//! Built as Options → [`Engine`] (a cheap, cloneable handle) → background tasks started by
//! [`Engine::start`] and stopped by [`Engine::shutdown`]. All time goes through the injected
//! [`Clock`], all storage through the [`Store`], all outbound HTTP through the guarded client.

pub mod alerts;
mod connectors;
mod credentials;
mod dispatch;
pub mod errors;
mod eval;
mod events;
mod executor;
mod flows;
mod invoke;
mod limits;
pub mod metrics;
mod oauth;
mod poll;
pub mod retention;
pub mod retry;
mod runs;
mod schedule;
pub mod trace;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use weft_connectors::GuardedClient;
use weft_sandbox::SandboxPool;
use weft_store::{Store, StoreError};
use weft_types::{Clock, RunId};

pub use connectors::{MAX_MANIFEST_BYTES, WorkspaceCatalog, check_manifest};
pub use credentials::{MAX_VALUE_BYTES, OpenCredential, rewrap_all};
pub use events::{MAX_EVENT_BYTES, MAX_EVENT_DEPTH, NewEvent, Published, check_event};
pub use flows::{Accepted, ActionRegistry, Delivery, FlowRef, Intake};
pub use oauth::{AUTHORIZE_TTL, OAuthError, REFRESH_AHEAD};
pub use poll::MAX_POLL_ITEMS;
pub use runs::{MAX_SIGNAL_BYTES, MAX_SIGNAL_NAME, ReplayVersion, ResumeTarget, valid_signal_name};

/// Options for building an [`Engine`].
#[derive(Clone)]
pub struct EngineOptions {
    /// The store.
    pub store: Store,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Expression sandbox.
    pub sandbox: SandboxPool,
    /// Outbound HTTP.
    pub http: GuardedClient,
    /// This process's lease owner id.
    pub owner: String,
    /// Most runs executing at once in this process.
    pub max_in_flight: usize,
    /// Lease length on claimed runs.
    pub lease: Duration,
    /// How often to look for work not announced in-process (other processes, missed wake-ups).
    pub poll_interval: Duration,
    /// How long a delivery id / Idempotency-Key blocks a second run.
    pub dedupe_window: Duration,
    /// Whether this process executes runs (role `worker` or `all`).
    pub execute: bool,
    /// The credential vault; `None` when no master key is configured (credentials then
    /// cannot be set or used, and say so).
    pub vault: Option<Arc<weft_vault::Vault>>,
    /// The address users reach this instance at (resume links are built on it).
    pub public_url: String,
}

/// Why an engine call failed; each variant maps to one API error kind.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The object does not exist (in this scope).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The flow definition is invalid.
    #[error(transparent)]
    Invalid(#[from] weft_flow::FlowError),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A plan limit of the tenant would be exceeded.
    #[error("{detail}")]
    Quota {
        /// Which limit.
        limit: &'static str,
        /// What happened and what to do.
        detail: String,
        /// Seconds until it resets by itself.
        retry_after: Option<u64>,
    },
    /// A rule about the data forbids the change (e.g. removing the last owner).
    #[error("{0}")]
    Rule(String),
    /// The store failed.
    #[error("storage failed: {0}")]
    Store(StoreError),
    /// Request fields that are not acceptable (outside a flow definition).
    #[error("the request is invalid: {}", .0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>().join("; "))]
    BadInput(Vec<weft_flow::FieldError>),
    /// A part the operation needs is not available (no master key, a credential that cannot
    /// be opened); nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    /// A webhook delivery was refused: bad or missing signature, stale timestamp.
    #[error("{0}")]
    Unauthorized(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => EngineError::NotFound("object"),
            StoreError::Conflict(m) => EngineError::Conflict(m),
            StoreError::Quota {
                limit,
                detail,
                retry_after,
            } => EngineError::Quota {
                limit,
                detail,
                retry_after,
            },
            StoreError::Rule(m) => EngineError::Rule(m),
            other => EngineError::Store(other),
        }
    }
}

/// The synchronous answer a `respond` step gives to the webhook that started its run.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body: a string is sent as text, anything else as JSON.
    pub body: Value,
}

/// Something that happened to a run in this process (for live views and deterministic tests).
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A step attempt failed and a retry is scheduled after `delay`.
    StepRetrying {
        /// Run.
        run: RunId,
        /// Step id.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// A step finished (succeeded, failed or skipped).
    StepFinished {
        /// Run.
        run: RunId,
        /// Step id.
        step: String,
        /// Final status.
        status: weft_types::StepStatus,
    },
    /// This process stopped executing a run it does not own any more (cancelled, or its lease
    /// was lost); whoever owns it now decides its status.
    RunStopped {
        /// Run.
        run: RunId,
    },
    /// Every step left in a run waits: the run is parked (`waiting`) until `until` (if
    /// any), a signal, or a child run's end.
    RunParked {
        /// Run.
        run: RunId,
        /// When its timer fires.
        until: Option<weft_types::Millis>,
    },
    /// A run reached a terminal status.
    RunFinished {
        /// Run.
        run: RunId,
        /// Final status.
        status: weft_types::RunStatus,
    },
    /// A poll trigger was polled and its outcome recorded.
    Polled {
        /// The flow.
        flow: weft_types::FlowId,
        /// Runs it started.
        started: usize,
        /// Why it failed or paused, if it did.
        error: Option<String>,
    },
}

/// Handle to the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.inner.opts.owner)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) opts: EngineOptions,
    pub(crate) wake: Notify,
    pub(crate) capacity: Notify,
    pub(crate) schedule_wake: Notify,
    pub(crate) poll_wake: Notify,
    pub(crate) timer_wake: Notify,
    pub(crate) alert_wake: Notify,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when shutdown's deadline passes: runs still executing stop where they are.
    pub(crate) stop_runs: CancellationToken,
    pub(crate) cancels: Mutex<HashMap<RunId, CancellationToken>>,
    pub(crate) responders: Mutex<HashMap<RunId, oneshot::Sender<WebhookResponse>>>,
    pub(crate) flows: flows::FlowCache,
    pub(crate) events_cache: events::EventCache,
    pub(crate) catalogs: connectors::CatalogCache,
    pub(crate) guards: limits::Guards,
    pub(crate) refreshing: oauth::RefreshLocks,
    pub(crate) signing: credentials::SigningCache,
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(crate) idle: Notify,
    pub(crate) events: tokio::sync::broadcast::Sender<EngineEvent>,
    pub(crate) metrics: Arc<metrics::EngineMetrics>,
}

impl Engine {
    /// A stopped engine; call [`Engine::start`] to run background work.
    pub fn new(opts: EngineOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                opts,
                wake: Notify::new(),
                capacity: Notify::new(),
                schedule_wake: Notify::new(),
                poll_wake: Notify::new(),
                timer_wake: Notify::new(),
                alert_wake: Notify::new(),
                in_flight: AtomicUsize::new(0),
                shutdown: CancellationToken::new(),
                stop_runs: CancellationToken::new(),
                cancels: Mutex::default(),
                responders: Mutex::default(),
                flows: flows::FlowCache::default(),
                events_cache: events::EventCache::default(),
                catalogs: connectors::CatalogCache::default(),
                guards: limits::Guards::default(),
                refreshing: Default::default(),
                signing: Default::default(),
                tasks: Mutex::default(),
                idle: Notify::new(),
                events: tokio::sync::broadcast::channel(4096).0,
                metrics: Arc::default(),
            }),
        }
    }

    /// The store behind the engine.
    pub fn store(&self) -> &Store {
        &self.inner.opts.store
    }

    /// The expression and code sandbox.
    pub fn sandbox(&self) -> &SandboxPool {
        &self.inner.opts.sandbox
    }

    /// The engine's metrics (registered into a Prometheus registry by the API).
    pub fn metrics(&self) -> &Arc<metrics::EngineMetrics> {
        &self.inner.metrics
    }

    /// Brings the metrics read from state (open breakers, sandbox kills) up to date; called
    /// before each scrape.
    pub fn refresh_metrics(&self) {
        let m = &self.inner.metrics;
        m.breakers_open.set(self.inner.open_breakers());
        let kills = self.inner.opts.sandbox.kills();
        let seen = m.sandbox_kills.get();
        if kills > seen {
            m.sandbox_kills.inc_by(kills - seen);
        }
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.opts.clock
    }

    /// Events of runs executed by this process, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<EngineEvent> {
        self.inner.events.subscribe()
    }

    /// Starts the dispatcher, lease keeper and scheduler. With `exclusive`, first returns every run
    /// a dead process left `running` to the queue (only safe when no other process shares the store).
    pub async fn start(&self, exclusive: bool) -> Result<(), EngineError> {
        let store = &self.inner.opts.store;
        if exclusive {
            let n = store.reclaim_all_except(&self.inner.opts.owner).await?;
            if n > 0 {
                tracing::info!(runs = n, "resuming runs left running by a stopped process");
            }
            store.release_polls(&self.inner.opts.owner, true).await?;
        }
        let mut tasks = Vec::new();
        if self.inner.opts.execute {
            // Work announced by other processes wakes the dispatcher at once; the poll stays as
            // the fallback for notifications lost while the listener reconnects.
            if let Some(mut signals) = store.work_signals().await? {
                let inner = self.inner.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            s = signals.recv() => match s {
                                Some(()) => inner.wake.notify_one(),
                                None => return,
                            },
                            _ = inner.shutdown.cancelled() => return,
                        }
                    }
                }));
            }
            tasks.push(tokio::spawn(dispatch::dispatcher(self.inner.clone())));
            tasks.push(tokio::spawn(dispatch::lease_keeper(self.inner.clone())));
            tasks.push(tokio::spawn(dispatch::timers(self.inner.clone())));
            tasks.push(tokio::spawn(schedule::scheduler(self.inner.clone())));
            tasks.push(tokio::spawn(poll::poller(self.inner.clone())));
            tasks.push(tokio::spawn(retention::cleaner(self.inner.clone())));
            tasks.push(tokio::spawn(alerts::deliverer(self.inner.clone())));
        }
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.extend(tasks);
        }
        Ok(())
    }

    /// Stops claiming work, waits up to `deadline` for runs in flight, then stops the rest
    /// where they are and hands them back (a step cut off is re-sent, with its key, by the
    /// process that claims the run next).
    pub async fn shutdown(&self, deadline: Duration) {
        self.inner.shutdown.cancel();
        let wait_idle = || async {
            while self.inner.in_flight.load(Ordering::SeqCst) > 0 {
                let notified = self.inner.idle.notified();
                if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(deadline, wait_idle()).await.is_err() {
            // Stopped runs must not write after their leases are handed back.
            self.inner.stop_runs.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), wait_idle()).await;
        }
        let tasks = self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            t.abort();
        }
        if let Err(e) = self
            .inner
            .opts
            .store
            .release_leases(&self.inner.opts.owner)
            .await
        {
            tracing::warn!(error = %e, "could not hand back leases at shutdown");
        }
        if let Err(e) = self
            .inner
            .opts
            .store
            .release_polls(&self.inner.opts.owner, false)
            .await
        {
            tracing::warn!(error = %e, "could not hand back poll leases at shutdown");
        }
    }

    /// Tells the dispatcher new work was committed.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Asks a run executing in this process to stop (after the store marked it cancelled).
    pub fn signal_cancel(&self, run: RunId) {
        if let Some(t) = self
            .inner
            .cancels
            .lock()
            .ok()
            .and_then(|m| m.get(&run).cloned())
        {
            t.cancel();
        }
    }
}
