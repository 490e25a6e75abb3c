//! The flow file as users write it (YAML or JSON). `weft flow schema` prints the JSON Schema of [`FlowDef`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A flow definition: a trigger and the steps it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowDef {
    /// Unique name within the workspace: letters, digits, `-`, `_`, `.`; at most 100 characters.
    pub name: String,
    /// Free text shown in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How runs start; exactly one form.
    pub trigger: TriggerDef,
    /// Constants available to expressions as `.vars`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<Map<String, Value>>,
    /// Run-level time limit, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// A flow started (with the failed run's details as its input) whenever a run of this
    /// one fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_flow: Option<String>,
    /// Most steps of one run executing at once (default: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Steps, run in the order written unless `needs:` says otherwise.
    pub steps: Vec<StepDef>,
}

/// A duration: a string such as `500ms`, `30s`, `5m`, `1h30m`, `2d`, or a number of seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DurationSpec {
    /// Seconds.
    Seconds(f64),
    /// Text with units.
    Text(String),
}

/// How runs start. Exactly one key is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    /// Started by `POST /hooks/{hook_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTrigger>,
    /// Started when polling a connector finds new items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollTrigger>,
    /// Started on a cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleTrigger>,
    /// Started from the CLI or API with an input document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualTrigger>,
    /// Started by another flow's output or an internal event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventTrigger>,
}

/// Event trigger: a run starts for each event of that name published in the workspace (by the
/// API, an `emit` step, or the end of another flow's run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// The event name, e.g. `order.paid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Another flow of the workspace: a run starts when one of its runs ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// With `flow`: which ends count, `succeeded` (default), `failed` or `finished` (both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Webhook trigger options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// Connector that verifies the signature and names the event (e.g. `github`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    /// Credential holding the signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Event names to accept, e.g. `issues.opened`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// How long intake waits for a `respond` step before answering 202 (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond_timeout: Option<DurationSpec>,
    /// With `connector: webhook`: the signature scheme (`standard-webhooks`, `shopify`, or a
    /// plain HMAC described by an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureDef>,
}

/// How a generic signed webhook is verified: a scheme name, or a plain HMAC's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SignatureDef {
    /// `standard-webhooks` or `shopify`.
    Named(String),
    /// A plain HMAC of the raw body.
    Hmac(HmacDef),
}

/// A plain HMAC of the raw body in one header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacDef {
    /// Header carrying the signature, e.g. `X-Signature`.
    pub header: String,
    /// `sha256` (default), `sha1` or `sha512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// `hex` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Text before the signature, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Polling: an action called on an interval; each item it lists that was not seen before
/// starts one run. The cursor and the set of seen item ids belong to the flow, so they
/// survive restarts and new versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollTrigger {
    /// How often to poll, e.g. `5m` (at least `1s`).
    pub every: DurationSpec,
    /// The action that lists items, `connector.action[@version]` (default `http.request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Credential the action uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The action's input; templates see `.cursor`, `.vars` and `.now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// jq selecting the list of items from the action's output (default: the output when
    /// it is a list, else its `.body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<String>,
    /// jq giving an item's unique id (default `.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// jq over `{output, items, cursor}` giving the next cursor; `null` keeps the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Starting cursor. With it, the first poll starts runs for what it finds (a backfill);
    /// without it, the first poll only records what already exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Value>,
}

/// Cron schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Cron pattern (5 or 6 fields, or `@hourly`-style aliases).
    pub cron: String,
    /// IANA time zone, e.g. `Europe/Paris` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// Manual trigger options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualTrigger {}

/// Retry policy of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDef {
    /// Total attempts including the first (1 = no retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// First backoff delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<DurationSpec>,
    /// Multiplier between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
    /// Largest delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<DurationSpec>,
}

/// A `wait` step: a duration or `{until: JQ}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WaitDef {
    /// Wait this long.
    For(DurationSpec),
    /// Wait until the timestamp the expression yields.
    Until {
        /// jq yielding an RFC 3339 time or epoch seconds.
        until: String,
    },
}

/// What a `for_each` iterates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ForEachDef {
    /// jq yielding the list.
    List(String),
    /// The item outputs of an earlier loop with `collect: false`, streamed from the store.
    OutputsOf {
        /// The loop's step id.
        outputs_of: String,
    },
}

/// One step. Exactly one of the kind keys (`transform`, `action`, `code`, `switch`, `for_each`,
/// `wait`, `approval`, `wait_for_event`, `subflow`, `respond`, `fail`, `emit`) is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Unique id; outputs are at `.steps.<id>.output`.
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Steps that must finish first (default: the previous step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<String>>,
    /// How `needs` join: `all` (default: skipped when any need was skipped) or `any`
    /// (runs when at least one need ran; skipped only when all were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// jq condition; false skips the step.
    #[serde(rename = "if", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDef>,
    /// Per-attempt time limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// A failure is recorded but the run goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_error: Option<bool>,
    /// Steps that run only when this step fails (the failure is then handled: the run goes
    /// on, and steps that need this one are skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<Vec<String>>,
    /// Steps that undo this one (saga): when the run fails after this step succeeded, they
    /// run, for each such step in reverse order. They see `.compensating: {step, output}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Vec<StepDef>>,
    /// Rate limit override for the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Map<String, Value>>,

    /// jq transform of the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    /// Connector action `connector.action[@version]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Input of an action or sub-flow; strings may hold `{{ jq }}` templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Credential name for the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Sandboxed JavaScript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// jq whose value selects a case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<String>,
    /// Cases of a `switch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<Map<String, Value>>,
    /// What a loop iterates: a jq list, or `{outputs_of: LOOP}` (another loop's item outputs,
    /// read from the store a page at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEachDef>,
    /// Nested steps of a `for_each`, run for each item (they see `.item` and `.index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepDef>>,
    /// Items of a `for_each` in progress at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Whether a `for_each` collects each item's last output into its own output
    /// (default true; false keeps only the counts, for very large lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<bool>,
    /// Durable wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitDef>,
    /// Human approval (resumed by a signal named after the step id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalDef>,
    /// Wait for a signal named after the step id (or after `event`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_event: Option<WaitForEventDef>,
    /// Another flow to call (its published version); the step's output is the child run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subflow: Option<String>,
    /// With `subflow`: start the child and go on without waiting for its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detach: Option<bool>,
    /// Synchronous answer to the webhook that started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondDef>,
    /// Fail the run with this message (may hold templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
    /// Publish an event in the workspace (resumes runs waiting for it, starts event-triggered
    /// flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit: Option<EmitDef>,
}

/// An `emit` step: publishes one event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitDef {
    /// The event name, e.g. `order.paid`.
    pub event: String,
    /// What the event carries; strings may hold templates (default: null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Correlation key (a template): only waits with this key, or with none, are resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// An `approval` step: resumed by the signal named after the step id, whose payload
/// approves (`{approved: true}`, the default) or rejects (`{approved: false, reason}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDef {
    /// How long to wait for a decision (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Steps that run only when the timeout passes (without them, the step fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<Vec<String>>,
    /// What the approver is asked; may hold templates. Shown on the waiting step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A `wait_for_event` step: resumed by a signal named after the step id or after `event`;
/// the signal's payload is its output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForEventDef {
    /// Another signal name that resumes the step; an event of this name published in the
    /// workspace resumes it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Only an event with this key resumes the step (a template, evaluated when it starts
    /// waiting, e.g. `{{ .trigger.body.order_id }}`); without it, any event of the name does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How long to wait (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Steps that run only when the timeout passes (without them, the step fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<Vec<String>>,
}

/// The webhook answer of a `respond` step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondDef {
    /// HTTP status (default 200); may be a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// Response headers; values may be templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Map<String, Value>>,
    /// Body (JSON, or a string); may hold templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl StepDef {
    /// The kind keys that are set, in declaration order.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        let mut add = |set: bool, name: &'static str| {
            if set {
                k.push(name)
            }
        };
        add(self.transform.is_some(), "transform");
        add(self.action.is_some(), "action");
        add(self.code.is_some(), "code");
        add(self.switch.is_some(), "switch");
        add(self.for_each.is_some(), "for_each");
        add(self.wait.is_some(), "wait");
        add(self.approval.is_some(), "approval");
        add(self.wait_for_event.is_some(), "wait_for_event");
        add(self.subflow.is_some(), "subflow");
        add(self.respond.is_some(), "respond");
        add(self.fail.is_some(), "fail");
        add(self.emit.is_some(), "emit");
        k
    }
}
