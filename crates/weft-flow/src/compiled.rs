//! The executable form of a flow version: expressions compiled once, dependencies resolved.

use std::time::Duration;

use weft_expr::{Expr, TValue};

use crate::FlowDef;

/// A validated flow, ready for the engine. Built once per flow version.
#[derive(Debug, Clone)]
pub struct CompiledFlow {
    /// The definition as written.
    pub def: FlowDef,
    /// How runs start.
    pub trigger: TriggerKind,
    /// Steps in written order.
    pub steps: Vec<CompiledStep>,
    /// Run-level time limit.
    pub run_timeout: Option<Duration>,
    /// `vars` as a JSON object.
    pub vars: serde_json::Value,
    /// Most steps executing at once in one run.
    pub concurrency: Option<usize>,
    /// The flow started when a run fails.
    pub error_flow: Option<String>,
}

impl CompiledFlow {
    /// Index of the step with this id.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
    /// Whether any step answers the webhook synchronously.
    pub fn has_respond(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Respond { .. }))
    }
}

/// The compiled trigger.
#[derive(Debug, Clone)]
pub enum TriggerKind {
    /// `POST /hooks/{hook_id}`.
    Webhook {
        /// How long intake waits for a `respond` step.
        respond_timeout: Duration,
        /// Signature check and event filter, when a connector verifies deliveries.
        verify: Option<Box<WebhookVerify>>,
    },
    /// Cron schedule.
    Schedule {
        /// Parsed pattern.
        cron: Box<croner::Cron>,
        /// Time zone the pattern is read in.
        tz: chrono_tz::Tz,
    },
    /// CLI/API start.
    Manual,
    /// An action polled on an interval.
    Poll(Box<PollSpec>),
    /// Events published in the workspace with one of these names.
    Event {
        /// Event names (`flow.NAME.succeeded` / `flow.NAME.failed` for another flow's ends).
        names: Vec<String>,
    },
}

/// A compiled poll trigger.
#[derive(Debug, Clone)]
pub struct PollSpec {
    /// Time between polls.
    pub every: Duration,
    /// Connector of the listing action.
    pub connector: String,
    /// The listing action.
    pub action: String,
    /// Pinned connector version, if written.
    pub version: Option<String>,
    /// The action's input; templates see `.cursor`, `.vars`, `.now`.
    pub input: TValue,
    /// Credential name, resolved in the flow's workspace at each poll.
    pub credential: Option<String>,
    /// Selects the list from the action's output; `None`: the output or its `.body`.
    pub items: Option<Expr>,
    /// An item's id.
    pub id: Expr,
    /// The next cursor, over `{output, items, cursor}`.
    pub cursor: Option<Expr>,
    /// Starting cursor; its presence makes the first poll start runs.
    pub since: Option<serde_json::Value>,
}

/// How intake verifies a connector-signed webhook before storing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookVerify {
    /// The connector (`github`, `stripe`, `slack`, `webhook`).
    pub connector: String,
    /// Credential holding the signing secret.
    pub credential: String,
    /// The scheme: the connector's own, or for `webhook` the one the trigger chose
    /// (`standard-webhooks`, `shopify`, `hmac`).
    pub scheme: String,
    /// For `hmac`: header, algorithm, encoding and prefix.
    pub hmac: Option<crate::model::HmacDef>,
    /// Accepted event names (`issues` also accepts `issues.opened`); empty accepts all.
    pub events: Vec<String>,
}

impl WebhookVerify {
    /// Whether an event named `event` passes the filter.
    pub fn accepts(&self, event: Option<&str>) -> bool {
        if self.events.is_empty() {
            return true;
        }
        let Some(e) = event else { return false };
        self.events.iter().any(|f| {
            f == "*"
                || f == e
                || (e.len() > f.len() && e.starts_with(f.as_str()) && e.as_bytes()[f.len()] == b'.')
        })
    }
}

impl TriggerKind {
    /// The first tick strictly after `after_ms` (epoch ms), for schedules.
    pub fn next_tick_after(&self, after_ms: i64) -> Option<i64> {
        let TriggerKind::Schedule { cron, tz } = self else {
            return None;
        };
        let start = chrono::DateTime::from_timestamp_millis(after_ms)?.with_timezone(tz);
        cron.find_next_occurrence(&start, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }
    /// Short name: `webhook`, `schedule`, `manual`, `poll`, `event`.
    pub fn name(&self) -> &'static str {
        match self {
            TriggerKind::Webhook { .. } => "webhook",
            TriggerKind::Schedule { .. } => "schedule",
            TriggerKind::Manual => "manual",
            TriggerKind::Poll(_) => "poll",
            TriggerKind::Event { .. } => "event",
        }
    }
}

/// Retry policy with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first.
    pub max_attempts: u32,
    /// First delay.
    pub initial: Duration,
    /// Multiplier.
    pub backoff: f64,
    /// Cap on one delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            initial: Duration::from_secs(1),
            backoff: 2.0,
            max: Duration::from_secs(300),
        }
    }
    /// Default for actions: 3 attempts, 1s doubling up to 5m.
    pub fn action_default() -> Self {
        Self {
            max_attempts: 3,
            ..Self::none()
        }
    }
}

/// One executable step.
#[derive(Debug, Clone)]
pub struct CompiledStep {
    /// Step id.
    pub id: String,
    /// Indexes of the steps that must finish first.
    pub deps: Vec<usize>,
    /// `if:` condition.
    pub condition: Option<Expr>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Per-attempt time limit.
    pub timeout: Option<Duration>,
    /// Failure does not fail the run.
    pub continue_on_error: bool,
    /// `join: any`: runs when at least one need ran (instead of all of them).
    pub join_any: bool,
    /// Steps that run only when this one fails (`on_error`).
    pub on_error: Vec<usize>,
    /// Steps that run only when this one times out waiting (`on_timeout`).
    pub on_timeout: Vec<usize>,
    /// On a handler: the step whose failure it handles, and whether only its timeout.
    pub handles: Option<(usize, Handler)>,
    /// On a step listed in a `switch` case: the switch's index and the case key.
    pub case_of: Option<(usize, String)>,
    /// Steps that undo this one when the run fails after it succeeded.
    pub compensate: Vec<CompiledStep>,
    /// What it does.
    pub kind: StepKind,
}

impl CompiledStep {
    /// Whether a failure of this step is handled by other steps (so the run goes on).
    pub fn has_handlers(&self) -> bool {
        !self.on_error.is_empty() || !self.on_timeout.is_empty()
    }
}

/// Which failures a handler step runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Any failure (`on_error`), unless a timeout has its own `on_timeout` handlers.
    Error,
    /// A timeout while waiting (`on_timeout`).
    Timeout,
}

/// How long a `wait` step waits.
#[derive(Debug, Clone)]
pub enum WaitSpec {
    /// A fixed duration from when the step starts.
    For(Duration),
    /// Until the time the expression yields (RFC 3339 or epoch seconds).
    Until(Expr),
}

/// What resumes a waiting step besides its timer.
#[derive(Debug, Clone)]
pub struct SignalWait {
    /// Signal names that resume it (the step id first).
    pub names: Vec<String>,
    /// How long to wait for one.
    pub timeout: Option<Duration>,
    /// Whether the payload decides approval (`approval`) or is just the output.
    pub approval: bool,
    /// What the approver is asked.
    pub message: Option<TValue>,
    /// The workspace event that also resumes it (`wait_for_event.event`).
    pub event: Option<String>,
    /// Only an event with this key resumes it (evaluated when the wait starts).
    pub key: Option<TValue>,
}

/// Where a loop's items come from.
#[derive(Debug, Clone)]
pub enum ItemSource {
    /// jq yielding the list.
    List(Expr),
    /// The item outputs of an earlier loop (`collect: false`) of the same list of steps.
    OutputsOf {
        /// Its step id.
        step: String,
        /// Its index in the list (a dependency of this step).
        idx: usize,
    },
}

/// A `for_each` loop.
#[derive(Debug, Clone)]
pub struct ForEachSpec {
    /// Where the items come from.
    pub list: ItemSource,
    /// Steps run per item (indexes in `deps` etc. refer to this list).
    pub steps: Vec<CompiledStep>,
    /// Items in progress at once.
    pub concurrency: usize,
    /// Whether the output collects each item's result.
    pub collect: bool,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// jq over the context.
    Transform(Expr),
    /// A connector action.
    Action {
        /// Connector name, e.g. `http`.
        connector: String,
        /// Action name, e.g. `request`.
        action: String,
        /// Pinned version, if written.
        version: Option<String>,
        /// Input with templates.
        input: TValue,
        /// Credential name, resolved in the run's workspace when the step runs.
        credential: Option<String>,
        /// The step's own limit, replacing the connector's: (requests per second, burst).
        rate_limit: Option<(f64, u32)>,
    },
    /// Synchronous webhook answer.
    Respond {
        /// Status (template or number).
        status: TValue,
        /// Header object.
        headers: TValue,
        /// Body.
        body: TValue,
    },
    /// Fail the run.
    Fail(TValue),
    /// Chooses which `cases` run; the output is `{value, case}`.
    Switch {
        /// jq whose value picks a case.
        expr: Expr,
        /// Case keys as written (`default` included when given).
        cases: Vec<String>,
    },
    /// Durable timer.
    Wait(WaitSpec),
    /// `approval` / `wait_for_event`: parked until a signal or its timeout.
    Signal(SignalWait),
    /// Nested steps per item of a list.
    ForEach(Box<ForEachSpec>),
    /// Sandboxed JavaScript: the body of a function over the context; returns the output.
    Code(String),
    /// Publishes an event in the workspace.
    Emit {
        /// Event name.
        event: String,
        /// What it carries.
        data: TValue,
        /// Correlation key.
        key: Option<TValue>,
    },
    /// Another flow, run as a child run.
    Subflow {
        /// The flow's name in the same workspace.
        flow: String,
        /// The child's input (its `.trigger.body`).
        input: TValue,
        /// Start it and go on (output `{run_id}`), instead of awaiting its result.
        detach: bool,
    },
}

impl StepKind {
    /// Kind name as written in flows.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Transform(_) => "transform",
            StepKind::Action { .. } => "action",
            StepKind::Respond { .. } => "respond",
            StepKind::Fail(_) => "fail",
            StepKind::Switch { .. } => "switch",
            StepKind::Wait(_) => "wait",
            StepKind::Signal(s) if s.approval => "approval",
            StepKind::Signal(_) => "wait_for_event",
            StepKind::ForEach(_) => "for_each",
            StepKind::Code(_) => "code",
            StepKind::Subflow { .. } => "subflow",
            StepKind::Emit { .. } => "emit",
        }
    }
}
