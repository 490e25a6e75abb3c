//! Records the store reads and writes. Plain data; JSON columns are `serde_json::Value`.

use serde_json::Value;
use weft_types::{
    FlowId, HookId, Millis, RunId, RunStatus, Scope, StepStatus, TenantId, WorkspaceId,
};

/// A flow's current state (its definition lives in [`FlowVersion`]s).
#[derive(Debug, Clone)]
pub struct FlowRecord {
    /// Owner.
    pub scope: Scope,
    /// Id.
    pub id: FlowId,
    /// Unique name in the workspace.
    pub name: String,
    /// Webhook address, stable across versions.
    pub hook_id: HookId,
    /// Newest saved version.
    pub latest_version: i64,
    /// Active version, if any.
    pub published_version: Option<i64>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// One immutable saved version of a flow.
#[derive(Debug, Clone)]
pub struct FlowVersion {
    /// Version number, from 1.
    pub version: i64,
    /// The definition as JSON.
    pub definition: Value,
    /// When it was saved.
    pub created_at: Millis,
}

/// Where a webhook goes: resolved from an unguessable hook id by intake.
#[derive(Debug, Clone)]
pub struct HookTarget {
    /// Owner.
    pub scope: Scope,
    /// Flow.
    pub flow_id: FlowId,
    /// Flow name.
    pub flow_name: String,
    /// Published version, if any.
    pub published_version: Option<i64>,
}

/// A run to insert.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Owner.
    pub scope: Scope,
    /// New id.
    pub id: RunId,
    /// Flow.
    pub flow_id: FlowId,
    /// Flow name (denormalised for listing).
    pub flow_name: String,
    /// Pinned version.
    pub flow_version: i64,
    /// Trigger event.
    pub trigger: Value,
    /// Duplicate-delivery key, if any.
    pub dedupe_key: Option<String>,
    /// How long a dedupe key blocks a second run.
    pub dedupe_window_ms: Millis,
    /// Creation time.
    pub now: Millis,
}

/// Result of inserting a run: the new id, or the id of the run that absorbed the duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The run that represents this event.
    pub run_id: RunId,
    /// True when an earlier run with the same dedupe key exists.
    pub duplicate: bool,
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Owner.
    pub scope: Scope,
    /// Id.
    pub id: RunId,
    /// Flow.
    pub flow_id: FlowId,
    /// Flow name.
    pub flow_name: String,
    /// Pinned version.
    pub flow_version: i64,
    /// Status.
    pub status: RunStatus,
    /// Trigger event.
    pub trigger: Value,
    /// Final output.
    pub output: Option<Value>,
    /// Failure reason.
    pub error: Option<String>,
    /// Accepted at.
    pub created_at: Millis,
    /// First claimed at.
    pub started_at: Option<Millis>,
    /// Finished at.
    pub finished_at: Option<Millis>,
}

/// A step's checkpointed state.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Step id.
    pub step_id: String,
    /// Position in the flow.
    pub idx: i64,
    /// Status.
    pub status: StepStatus,
    /// Attempts made.
    pub attempts: i64,
    /// Output.
    pub output: Option<Value>,
    /// Last error.
    pub error: Option<String>,
    /// First attempt began.
    pub started_at: Option<Millis>,
    /// Finished (or last attempt ended).
    pub finished_at: Option<Millis>,
}

/// A run handed to a worker by a claim.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// The run.
    pub run: RunRecord,
    /// Steps already checkpointed (non-empty only when resuming).
    pub steps: Vec<StepRecord>,
}

/// One log line of a run.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Monotonic sequence (cursor for `--follow`).
    pub seq: i64,
    /// Time.
    pub ts: Millis,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// Step, if any.
    pub step_id: Option<String>,
    /// Text (already redacted).
    pub message: String,
}

/// A log line to write.
#[derive(Debug, Clone)]
pub struct NewLog {
    /// `info`, `warn` or `error`.
    pub level: &'static str,
    /// Step, if any.
    pub step_id: Option<String>,
    /// Text.
    pub message: String,
}

/// Filters for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this flow.
    pub flow_id: Option<FlowId>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only runs created at or after.
    pub since: Option<Millis>,
    /// Runs older than this id (cursor).
    pub before: Option<RunId>,
    /// Page size.
    pub limit: usize,
}

/// How a step checkpoint ended the step.
#[derive(Debug, Clone)]
pub struct StepCheckpoint {
    /// The step state to store.
    pub step: StepRecord,
    /// Log lines written in the same transaction.
    pub logs: Vec<NewLog>,
}

/// A credential-free identity an API key resolves to.
#[derive(Debug, Clone)]
pub struct KeyIdentity {
    /// Key's workspace scope.
    pub scope: Scope,
    /// Workspace slug.
    pub workspace_slug: String,
    /// Role name.
    pub role: String,
    /// Key id.
    pub key_id: String,
}

/// What first start created.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Default tenant.
    pub tenant: TenantId,
    /// Default workspace.
    pub workspace: WorkspaceId,
    /// The owner API key, shown once.
    pub owner_key: String,
}

/// A schedule that is due.
#[derive(Debug, Clone)]
pub struct DueSchedule {
    /// Owner.
    pub scope: Scope,
    /// Flow.
    pub flow_id: FlowId,
    /// The tick that is due.
    pub tick_at: Millis,
}
