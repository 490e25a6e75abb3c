//! Records the store reads and writes. Plain data; JSON columns are `serde_json::Value`.

use serde_json::Value;
use weft_types::{
    CredentialId, FlowId, HookId, KeyId, Millis, Role, RunId, RunStatus, Scope, StepStatus,
    TenantId, UserId, WorkspaceId,
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
    /// Set for runs started by a person or key (audited); `None` for webhooks and schedules.
    pub audit: Option<Actor>,
    /// The run that started this one as a sub-flow (in the same workspace), if any.
    pub parent: Option<RunId>,
    /// W3C trace context of the span that started it (intake, a manual start, a parent's
    /// step), so its execution joins that trace.
    pub traceparent: Option<String>,
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
    /// The run that started this one as a sub-flow, if any.
    pub parent: Option<RunId>,
    /// W3C trace context of the span that started it, if it was traced.
    pub traceparent: Option<String>,
}

/// A signal delivered to a run (at most one per name and run).
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRecord {
    /// Name, unique per run.
    pub name: String,
    /// What the sender attached.
    pub payload: Value,
    /// Delivered at.
    pub created_at: Millis,
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
    /// Steps already checkpointed (non-empty only when resuming), as a resume needs them:
    /// loop items (`loop[i]`) without their outputs, and nested steps (`loop[i].step`) only
    /// of items that have not finished.
    pub steps: Vec<StepRecord>,
}

/// How many items of one loop have finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopCount {
    /// The loop's step id.
    pub step_id: String,
    /// Items finished (succeeded or failed).
    pub done: i64,
    /// Of those, failed.
    pub failed: i64,
}

/// One log line of a run.
#[derive(Debug, Clone, PartialEq)]
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
    /// What the line records ([`RunEvent`] name).
    pub event: String,
}

/// What a workspace-wide log search looks for (every filter optional).
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Text the line contains (case-insensitive).
    pub text: Option<String>,
    /// Only lines of this run.
    pub run: Option<RunId>,
    /// Only lines of runs of this flow.
    pub flow_id: Option<FlowId>,
    /// Only lines of this step (and, for a loop, of its items).
    pub step: Option<String>,
    /// Only lines of this level.
    pub level: Option<String>,
    /// Only lines recording this event.
    pub event: Option<RunEvent>,
    /// Only lines of runs in this status.
    pub status: Option<RunStatus>,
    /// Lines at or after this time.
    pub since: Option<Millis>,
    /// Lines before this time.
    pub until: Option<Millis>,
    /// Lines older than this seq (the cursor).
    pub before: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// A log line found by a search, with its run.
#[derive(Debug, Clone, PartialEq)]
pub struct LogHit {
    /// The line.
    pub line: LogRecord,
    /// Its run.
    pub run_id: RunId,
    /// The run's flow name.
    pub flow: String,
}

/// One failed step, to count in its error group.
#[derive(Debug, Clone)]
pub struct NewError {
    /// Its group: a digest of flow, step, connector and class.
    pub fingerprint: String,
    /// The flow.
    pub flow_id: FlowId,
    /// The flow's name.
    pub flow_name: String,
    /// The step (a loop's nested step as `loop.step`).
    pub step_id: String,
    /// The action's connector, or `none`.
    pub connector: String,
    /// `auth`, `rate_limited`, `5xx`, `timeout`, `validation`, `expression`, …
    pub class: String,
    /// The error (already redacted); the group keeps the latest.
    pub message: String,
    /// The run it happened in.
    pub run: RunId,
    /// When.
    pub at: Millis,
}

/// Failed steps with one fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorGroup {
    /// Its fingerprint.
    pub fingerprint: String,
    /// The flow.
    pub flow_id: FlowId,
    /// The flow's name.
    pub flow_name: String,
    /// The step.
    pub step_id: String,
    /// The connector, or `none`.
    pub connector: String,
    /// The error class.
    pub class: String,
    /// The latest error message.
    pub message: String,
    /// How many failures.
    pub count: i64,
    /// First failure.
    pub first_seen: Millis,
    /// Latest failure.
    pub last_seen: Millis,
    /// A run that failed this way (the latest).
    pub sample_run: RunId,
    /// Failures per day (epoch day, count), oldest first, for the days asked for.
    pub trend: Vec<(i64, i64)>,
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
    /// What the line records.
    pub event: RunEvent,
    /// When it happened, if not when it is written (a step's start is written with its first
    /// checkpoint, not in a transaction of its own).
    pub at: Option<Millis>,
}

impl NewLog {
    /// A line recording `event` now.
    pub fn new(
        level: &'static str,
        step_id: Option<String>,
        event: RunEvent,
        message: impl Into<String>,
    ) -> Self {
        Self {
            level,
            step_id,
            message: message.into(),
            event,
            at: None,
        }
    }
}

/// What a run log line records: a typed event of the run's life, or a plain line (`Log`, e.g. a
/// code step's `console.log`). Stored by name; the names are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunEvent {
    /// The run's first claim by a worker.
    RunStarted,
    /// The run ended succeeded.
    RunSucceeded,
    /// The run ended failed (a step, its timeout, or unreadable data).
    RunFailed,
    /// The run was cancelled (on request or with its parent).
    RunCancelled,
    /// A retry of a failed run was asked for.
    RunRetried,
    /// A step began (stamped with its start, written with its first checkpoint).
    StepStarted,
    /// A step succeeded.
    StepSucceeded,
    /// A step was skipped (condition false, or its branch not taken).
    StepSkipped,
    /// A step's attempt failed and it will be tried again.
    StepRetrying,
    /// A step failed for good (or one loop item did).
    StepFailed,
    /// A step parked: a wait, an approval, a signal or event, a child run.
    StepWaiting,
    /// A signal (or a matching event) reached the run.
    SignalReceived,
    /// A plain line.
    Log,
}

impl RunEvent {
    /// Every event, in the order of a run's life.
    pub const ALL: [RunEvent; 13] = [
        RunEvent::RunStarted,
        RunEvent::RunSucceeded,
        RunEvent::RunFailed,
        RunEvent::RunCancelled,
        RunEvent::RunRetried,
        RunEvent::StepStarted,
        RunEvent::StepSucceeded,
        RunEvent::StepSkipped,
        RunEvent::StepRetrying,
        RunEvent::StepFailed,
        RunEvent::StepWaiting,
        RunEvent::SignalReceived,
        RunEvent::Log,
    ];

    /// The stored and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunEvent::RunStarted => "RunStarted",
            RunEvent::RunSucceeded => "RunSucceeded",
            RunEvent::RunFailed => "RunFailed",
            RunEvent::RunCancelled => "RunCancelled",
            RunEvent::RunRetried => "RunRetried",
            RunEvent::StepStarted => "StepStarted",
            RunEvent::StepSucceeded => "StepSucceeded",
            RunEvent::StepSkipped => "StepSkipped",
            RunEvent::StepRetrying => "StepRetrying",
            RunEvent::StepFailed => "StepFailed",
            RunEvent::StepWaiting => "StepWaiting",
            RunEvent::SignalReceived => "SignalReceived",
            RunEvent::Log => "Log",
        }
    }

    /// The event of this name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
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

/// What an API key resolves to (never its secret).
#[derive(Debug, Clone)]
pub struct KeyIdentity {
    /// Key's workspace scope.
    pub scope: Scope,
    /// Workspace slug.
    pub workspace_slug: String,
    /// The key's role.
    pub role: Role,
    /// Key id.
    pub key_id: KeyId,
    /// The user the key acts for (who created it), if known.
    pub user: Option<UserId>,
    /// Last use, for throttled `last_used_at` updates.
    pub last_used_at: Option<Millis>,
}

/// What first start (or `admin tenant create`) created.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The tenant.
    pub tenant: TenantId,
    /// Its `default` workspace.
    pub workspace: WorkspaceId,
    /// The owner.
    pub owner: UserId,
    /// The owner API key, shown once.
    pub owner_key: String,
}

/// A credential's values as the vault sealed them; the store never sees plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValues {
    /// The master key that wraps the data key (`mk_…`).
    pub key_id: String,
    /// The wrapped data key.
    pub wrapped_key: Vec<u8>,
    /// The encrypted values.
    pub ciphertext: Vec<u8>,
}

/// A credential as listed: its field names, never its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// Id; bound into the sealed values, so it never changes.
    pub id: CredentialId,
    /// Name, unique in the workspace; flows refer to it.
    pub name: String,
    /// The connector whose auth fields it holds.
    pub connector: String,
    /// Field names that are set.
    pub fields: Vec<String>,
    /// `ok`, or `needs_reauth` when the provider refused it for good.
    pub status: String,
    /// Why the status is not `ok`.
    pub status_reason: Option<String>,
    /// Authentication failures in a row (reset by a success or new values).
    pub auth_failures: i64,
    /// Created at.
    pub created_at: Millis,
    /// Last set at.
    pub updated_at: Millis,
}

/// A credential to create or replace (by name).
#[derive(Debug, Clone)]
pub struct NewCredential {
    /// The id its values were sealed for: the existing credential's when replacing one.
    pub id: CredentialId,
    /// Name.
    pub name: String,
    /// Connector.
    pub connector: String,
    /// Field names.
    pub fields: Vec<String>,
    /// The sealed values.
    pub sealed: SealedValues,
}

/// An OAuth2 authorization waiting for its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthState {
    /// Where the credential lives.
    pub scope: Scope,
    /// The credential being authorized.
    pub credential: CredentialId,
    /// The PKCE code verifier (RFC 7636).
    pub verifier: String,
    /// The redirect URI sent with the authorization request (the token request repeats it).
    pub redirect_uri: String,
    /// When it stops being accepted.
    pub expires_at: Millis,
}

/// A declarative connector version installed into a workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledConnector {
    /// Connector name.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// The manifest as installed (JSON).
    pub manifest: Value,
    /// Installed at.
    pub created_at: Millis,
}

/// One credential's sealed values, for key rotation.
#[derive(Debug, Clone)]
pub struct SealedCredential {
    /// Where it lives.
    pub scope: Scope,
    /// Its id.
    pub id: CredentialId,
    /// Its sealed values.
    pub sealed: SealedValues,
}

/// An API key as listed (never the secret).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Id.
    pub id: KeyId,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    /// Who created it.
    pub created_by: Option<UserId>,
    /// Created at.
    pub created_at: Millis,
    /// Last used at.
    pub last_used_at: Option<Millis>,
    /// Expires at.
    pub expires_at: Option<Millis>,
    /// Revoked at.
    pub revoked_at: Option<Millis>,
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The user it acts for.
    pub created_by: Option<UserId>,
    /// Optional expiry.
    pub expires_at: Option<Millis>,
}

/// A user (a person, across tenants).
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Id.
    pub id: UserId,
    /// Email, lower-cased.
    pub email: String,
    /// argon2id PHC string, if a password is set.
    pub password_hash: Option<String>,
    /// Created at.
    pub created_at: Millis,
}

/// A member of a workspace.
#[derive(Debug, Clone)]
pub struct MemberRecord {
    /// User.
    pub user_id: UserId,
    /// Email.
    pub email: String,
    /// Role in this workspace.
    pub role: Role,
    /// Member since.
    pub created_at: Millis,
    /// Invited from another tenant and not yet accepted (no access until then).
    pub pending: bool,
}

/// A browser session (looked up by the hash of its cookie secret).
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The user.
    pub user_id: UserId,
    /// Their email.
    pub email: String,
    /// Token the browser must echo in `X-CSRF-Token` on writes.
    pub csrf_token: String,
    /// Expiry.
    pub expires_at: Millis,
}

/// A workspace.
#[derive(Debug, Clone)]
pub struct WorkspaceRecord {
    /// Tenant and id.
    pub scope: Scope,
    /// Slug, unique in the tenant.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Created at.
    pub created_at: Millis,
}

/// A tenant's plan limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Runs started per calendar month (UTC).
    pub runs_per_month: Option<i64>,
    /// Flows with a published version.
    pub active_flows: Option<i64>,
    /// Runs running at once.
    pub concurrent_runs: Option<i64>,
    /// Webhook requests per second.
    pub webhook_rps: Option<i64>,
    /// Bytes of stored run data (triggers and outputs).
    pub stored_bytes: Option<i64>,
}

/// A tenant.
#[derive(Debug, Clone)]
pub struct TenantRecord {
    /// Id.
    pub id: TenantId,
    /// Name.
    pub name: String,
    /// Plan limits.
    pub limits: Limits,
    /// Fair-share weight (default 1).
    pub weight: i64,
    /// Created at.
    pub created_at: Millis,
}

/// A tenant's consumption, against its limits.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Calendar month (`YYYY-MM`) the run count is for.
    pub month: String,
    /// Runs started this month.
    pub runs_in_month: i64,
    /// Stored run data in bytes.
    pub stored_bytes: i64,
    /// Flows with a published version.
    pub active_flows: i64,
    /// Runs running now.
    pub running: i64,
}

/// Who made a change (for the audit trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `user`, `key`, `admin`, `operator` or `system`.
    pub kind: &'static str,
    /// User id, key id, or a name for operator/system.
    pub id: String,
    /// The credential used: `key:key_…` or `session:…` (a prefix of its hash).
    pub via: Option<String>,
    /// The HTTP request id.
    pub request_id: Option<String>,
}

impl Actor {
    /// The operator at the command line (store opened directly).
    pub fn operator() -> Self {
        Self {
            kind: "operator",
            id: "cli".into(),
            via: None,
            request_id: None,
        }
    }
    /// Weft itself (e.g. flows applied from `--flows` at start).
    pub fn system(what: &str) -> Self {
        Self {
            kind: "system",
            id: what.into(),
            via: None,
            request_id: None,
        }
    }
}

/// A change to record, made by `actor`, in the same transaction as the change.
#[derive(Debug, Clone)]
pub struct Audit {
    /// Who.
    pub actor: Actor,
    /// What, e.g. `flow.publish`.
    pub action: &'static str,
    /// Object kind, e.g. `flow`.
    pub object_kind: &'static str,
    /// Object id.
    pub object_id: String,
    /// Workspace, when the change is inside one.
    pub workspace: Option<WorkspaceId>,
    /// Extra facts (never secrets).
    pub detail: Value,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Position in the tenant's chain, from 1.
    pub seq: i64,
    /// Time.
    pub ts: Millis,
    /// Workspace, if any.
    pub workspace_id: Option<String>,
    /// Actor kind.
    pub actor_kind: String,
    /// Actor id.
    pub actor_id: String,
    /// Credential used.
    pub via: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Action.
    pub action: String,
    /// Object kind.
    pub object_kind: String,
    /// Object id.
    pub object_id: String,
    /// Detail, as stored (JSON text).
    pub detail: String,
    /// Hash of the previous entry (empty for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Outcome of checking a tenant's audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    /// Entries checked.
    pub entries: i64,
    /// The first broken entry and why, if any.
    pub broken: Option<(i64, String)>,
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

/// A poll trigger's durable state: one per flow, kept across versions and restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct PollState {
    /// The flow.
    pub flow_id: FlowId,
    /// When it polls next; `None` while the flow has no published poll trigger.
    pub next_at: Option<Millis>,
    /// The cursor the next poll starts from.
    pub cursor: Option<Value>,
    /// Whether items found start runs (false until the first poll has recorded what exists).
    pub primed: bool,
    /// Why polling is paused (a credential that needs re-authorization), if it is.
    pub paused: Option<String>,
    /// When it last polled.
    pub last_polled_at: Option<Millis>,
    /// What went wrong at the last poll, if it failed.
    pub last_error: Option<String>,
    /// Polls completed.
    pub polls: i64,
    /// Runs started.
    pub started: i64,
    /// Item ids remembered.
    pub seen: i64,
}

/// A poll this process holds the lease on.
#[derive(Debug, Clone)]
pub struct ClaimedPoll {
    /// Owner.
    pub scope: Scope,
    /// Flow.
    pub flow_id: FlowId,
    /// Cursor to start from.
    pub cursor: Option<Value>,
    /// Whether new items start runs.
    pub primed: bool,
}

/// What one poll found, to record in one transaction.
#[derive(Debug, Clone)]
pub struct PollDone {
    /// Owner.
    pub scope: Scope,
    /// Flow.
    pub flow_id: FlowId,
    /// The lease holder; nothing is recorded if it no longer holds the poll.
    pub owner: String,
    /// Now.
    pub now: Millis,
    /// When to poll next.
    pub next_at: Millis,
    /// The result.
    pub outcome: PollOutcome,
}

/// The result of one poll.
#[derive(Debug, Clone)]
pub enum PollOutcome {
    /// The listing worked: each item with its id and the run it starts if not seen before
    /// (runs are only started when the poll was primed), and the new cursor.
    Listed {
        /// `(item id, run)` in listing order.
        items: Vec<(String, NewRun)>,
        /// The cursor for the next poll.
        cursor: Option<Value>,
    },
    /// The listing failed; the cursor stays.
    Failed(String),
    /// Polling stops until `resume_polls` (the credential needs re-authorization).
    Paused(String),
}

/// What recording a poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollRecorded {
    /// Runs started, in listing order.
    pub started: Vec<RunId>,
    /// Items seen before.
    pub known: usize,
    /// Items recorded without starting runs (the first poll of an unprimed trigger).
    pub learned: usize,
}

/// How long an item id is remembered after it was last listed.
pub const POLL_SEEN_TTL_MS: Millis = 30 * 24 * 3600 * 1000;

/// A workspace's alert rule: a name and a spec the engine reads (what it watches, where it
/// notifies, how long it stays quiet after notifying).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleRecord {
    /// Unique in the workspace.
    pub name: String,
    /// The rule as JSON.
    pub spec: Value,
    /// Created.
    pub created_at: Millis,
}

/// What raising an alert decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// A notification was queued; `suppressed` occurrences of the incident were held back
    /// since the one before.
    Notify {
        /// Occurrences not notified since the previous notification.
        suppressed: i64,
    },
    /// The incident was notified within its quiet time: counted, not notified.
    Suppressed,
}

/// A queued alert notification.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertDelivery {
    /// Outbox sequence (the delivery's id).
    pub seq: i64,
    /// Workspace.
    pub scope: Scope,
    /// Rule name.
    pub rule: String,
    /// Incident key.
    pub incident: String,
    /// What to send.
    pub payload: Value,
    /// Queued.
    pub created_at: Millis,
    /// Attempts so far.
    pub attempts: i64,
    /// Delivered, if it was.
    pub delivered_at: Option<Millis>,
    /// The last attempt's failure.
    pub error: Option<String>,
}
