//! The engine's Prometheus metrics, defined in one place. Labels never carry tenant data (a
//! scrape is instance-wide): only statuses, step kinds, connector names and error classes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Seconds, from 1 ms to about 9 hours.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// A run's final status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// `succeeded`, `failed`, `cancelled`.
    pub status: &'static str,
}

/// One finished step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// `action`, `transform`, `respond`, `fail`.
    pub kind: &'static str,
    /// The action's connector (`none` for other kinds).
    pub connector: String,
    /// `succeeded`, `failed`, `skipped`.
    pub outcome: &'static str,
    /// Why it failed: `auth`, `rate_limited`, `timeout`, `transient`, `permanent`,
    /// `expression`; `none` otherwise.
    pub error_class: &'static str,
}

/// A step's kind and connector.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Step kind.
    pub kind: &'static str,
    /// The action's connector (`none` for other kinds).
    pub connector: String,
}

/// A connector.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabels {
    /// Connector name.
    pub connector: String,
}

/// How a poll ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `listed`, `failed`, `paused`.
    pub outcome: &'static str,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the engine keeps (cheap atomics; always on).
pub struct EngineMetrics {
    pub(crate) runs_finished: Family<RunLabels, Counter>,
    pub(crate) run_duration: Hist<RunLabels>,
    pub(crate) steps: Family<StepLabels, Counter>,
    pub(crate) step_duration: Hist<KindLabels>,
    pub(crate) retries: Family<ConnectorLabels, Counter>,
    pub(crate) rate_limit_waits: Family<ConnectorLabels, Counter>,
    pub(crate) claimed: Counter,
    pub(crate) claim_lag: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) polls: Family<OutcomeLabels, Counter>,
    pub(crate) poll_runs: Counter,
    pub(crate) vault_decrypts: Counter,
    pub(crate) breakers_opened: Family<ConnectorLabels, Counter>,
    pub(crate) breakers_open: Gauge,
    pub(crate) sandbox_kills: Counter,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            runs_finished: Family::default(),
            run_duration: Family::new_with_constructor(seconds),
            steps: Family::default(),
            step_duration: Family::new_with_constructor(seconds),
            retries: Family::default(),
            rate_limit_waits: Family::default(),
            claimed: Counter::default(),
            claim_lag: seconds(),
            in_flight: Gauge::default(),
            polls: Family::default(),
            poll_runs: Counter::default(),
            vault_decrypts: Counter::default(),
            breakers_opened: Family::default(),
            breakers_open: Gauge::default(),
            sandbox_kills: Counter::default(),
        }
    }
}

impl EngineMetrics {
    /// Adds every metric to `r` (names get the `weft_` prefix there).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "runs_finished",
            "Runs that reached a final status, by status",
            self.runs_finished.clone(),
        );
        r.register(
            "run_duration_seconds",
            "Time from a run's claim by this process to its final status",
            self.run_duration.clone(),
        );
        r.register(
            "steps",
            "Finished steps by kind, connector, outcome and error class",
            self.steps.clone(),
        );
        r.register(
            "step_duration_seconds",
            "Time from a step's start to its final status, retries included",
            self.step_duration.clone(),
        );
        r.register(
            "step_retries",
            "Failed attempts that will be retried, by connector",
            self.retries.clone(),
        );
        r.register(
            "rate_limit_waits",
            "Times a step waited for a rate limit, a provider's 429 or an open breaker",
            self.rate_limit_waits.clone(),
        );
        r.register(
            "runs_claimed",
            "Runs claimed by this process",
            self.claimed.clone(),
        );
        r.register(
            "claim_lag_seconds",
            "Time a run waited in the queue before its first claim",
            self.claim_lag.clone(),
        );
        r.register(
            "runs_in_flight",
            "Runs this process is executing",
            self.in_flight.clone(),
        );
        r.register(
            "polls",
            "Polls of poll triggers by outcome",
            self.polls.clone(),
        );
        r.register(
            "poll_runs_started",
            "Runs started by poll triggers",
            self.poll_runs.clone(),
        );
        r.register(
            "vault_decrypts",
            "Credentials opened (decrypted) by this process",
            self.vault_decrypts.clone(),
        );
        r.register(
            "breakers_opened",
            "Times a circuit breaker of a (connector, credential) opened, by connector",
            self.breakers_opened.clone(),
        );
        r.register(
            "breakers_open",
            "Circuit breakers open in this process now",
            self.breakers_open.clone(),
        );
        r.register(
            "sandbox_kills",
            "Sandbox worker processes killed (time or memory limit) or crashed",
            self.sandbox_kills.clone(),
        );
    }

    /// A finished step.
    pub(crate) fn step(
        &self,
        kind: &'static str,
        connector: &str,
        outcome: &'static str,
        error_class: &'static str,
        secs: f64,
    ) {
        self.steps
            .get_or_create(&StepLabels {
                kind,
                connector: connector.into(),
                outcome,
                error_class,
            })
            .inc();
        self.step_duration
            .get_or_create(&KindLabels {
                kind,
                connector: connector.into(),
            })
            .observe(secs);
    }

    /// A counter of `connector`.
    pub(crate) fn per_connector(family: &Family<ConnectorLabels, Counter>, connector: &str) {
        family
            .get_or_create(&ConnectorLabels {
                connector: connector.into(),
            })
            .inc();
    }
}
