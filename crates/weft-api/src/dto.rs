//! The JSON shapes of the API (PRODUCT.md names them; fields may be added, never renamed).
//! Each derives its OpenAPI schema, so `openapi.json` is generated from these very types.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use weft_store::{
    AuditEntry, KeyRecord, LogRecord, MemberRecord, RunRecord, StepRecord, TenantRecord,
    WorkspaceRecord,
};

fn ts(ms: Option<i64>) -> Option<String> {
    ms.map(weft_types::rfc3339)
}

/// A page of a list: `{items, next_cursor}`; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    /// This page.
    pub items: Vec<T>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A flow.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowOut {
    /// Id (`flw_…`).
    pub id: String,
    /// Name, unique in the workspace.
    pub name: String,
    /// Newest saved version.
    pub version: i64,
    /// Active version, if any.
    pub published_version: Option<i64>,
    /// Webhook address id, for webhook-triggered flows (null for viewers: it starts runs).
    pub hook_id: Option<String>,
    /// Full webhook URL, for webhook-triggered flows (null for viewers).
    pub hook_url: Option<String>,
    /// The newest version's definition.
    pub definition: Value,
    /// Created at (RFC 3339).
    pub created_at: String,
    /// Last changed at (RFC 3339).
    pub updated_at: String,
}

/// One saved version of a flow.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowVersionOut {
    /// Version number.
    pub version: i64,
    /// Whether it is the published one.
    pub published: bool,
    /// Its definition.
    pub definition: Value,
    /// Saved at.
    pub created_at: String,
}

/// A step of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepOut {
    /// Step id.
    pub id: String,
    /// Status.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Output.
    pub output: Option<Value>,
    /// Last error.
    pub error: Option<String>,
    /// Started at.
    pub started_at: Option<String>,
    /// Finished at.
    pub finished_at: Option<String>,
    /// A `for_each` step's items: how many finished and failed so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Progress of a `for_each` step.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Progress {
    /// Items in the list (known once the loop started).
    pub total: Option<i64>,
    /// Items finished (succeeded or failed).
    pub done: i64,
    /// Items that failed.
    pub failed: i64,
}

impl From<&StepRecord> for StepOut {
    fn from(s: &StepRecord) -> Self {
        StepOut {
            id: s.step_id.clone(),
            status: s.status.as_str().into(),
            attempts: s.attempts,
            output: s.output.clone(),
            error: s.error.clone(),
            started_at: ts(s.started_at),
            finished_at: ts(s.finished_at),
            progress: None,
        }
    }
}

/// The run's top-level steps as shown, each loop with its `progress` from the item counts.
pub fn fold_steps(records: &[StepRecord], counts: &[weft_store::LoopCount]) -> Vec<StepOut> {
    let mut out: Vec<StepOut> = records
        .iter()
        .filter(|r| !r.step_id.contains('['))
        .map(StepOut::from)
        .collect();
    for step in &mut out {
        let count = counts.iter().find(|c| c.step_id == step.id);
        // A loop in progress says how many items it has (`items_total`); a finished one
        // has its collected list, or its counts.
        let marker = step
            .output
            .as_ref()
            .and_then(|o| o.get("items_total"))
            .and_then(Value::as_i64);
        if count.is_some() || marker.is_some() {
            let p = Progress {
                total: marker.or_else(|| match step.output.as_ref() {
                    Some(Value::Array(a)) => Some(a.len() as i64),
                    Some(o) => o.get("total").and_then(Value::as_i64),
                    None => None,
                }),
                done: count.map_or(0, |c| c.done),
                failed: count.map_or(0, |c| c.failed),
            };
            step.progress = Some(p);
        }
    }
    out
}

/// A run (`steps` only on the single-run route).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunOut {
    /// Id (`run_…`).
    pub id: String,
    /// Flow name.
    pub flow: String,
    /// Flow id.
    pub flow_id: String,
    /// Pinned flow version.
    pub flow_version: i64,
    /// `queued`, `running`, `waiting`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// The trigger event.
    pub trigger: Value,
    /// Final output.
    pub output: Option<Value>,
    /// Failure reason.
    pub error: Option<String>,
    /// Accepted at.
    pub created_at: String,
    /// First started at.
    pub started_at: Option<String>,
    /// Finished at.
    pub finished_at: Option<String>,
    /// The run that started this one as a sub-flow, if any.
    pub parent_run: Option<String>,
    /// Steps (single-run route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepOut>>,
}

impl RunOut {
    /// The run, with its steps (and per-loop item counts) when given.
    pub fn new(r: &RunRecord, steps: Option<(&[StepRecord], &[weft_store::LoopCount])>) -> Self {
        RunOut {
            id: r.id.to_string(),
            flow: r.flow_name.clone(),
            flow_id: r.flow_id.to_string(),
            flow_version: r.flow_version,
            status: r.status.as_str().into(),
            trigger: r.trigger.clone(),
            output: r.output.clone(),
            error: r.error.clone(),
            created_at: weft_types::rfc3339(r.created_at),
            started_at: ts(r.started_at),
            finished_at: ts(r.finished_at),
            parent_run: r.parent.map(|p| p.to_string()),
            steps: steps.map(|(s, c)| fold_steps(s, c)),
        }
    }
}

/// What starting a run (or a webhook) answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    /// The run representing the event.
    pub run_id: String,
    /// True when an earlier run with the same key absorbed it.
    pub duplicate: bool,
}

/// A run's status after a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunStatusOut {
    /// Run id.
    pub id: String,
    /// Status now.
    pub status: String,
}

/// One log line.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogOut {
    /// Sequence number (pass as `after` to follow).
    pub seq: i64,
    /// Time.
    pub ts: String,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// Step, if any.
    pub step: Option<String>,
    /// Text.
    pub message: String,
    /// What the line records: `RunStarted`, `StepStarted`, `StepSucceeded`, `StepRetrying`,
    /// `StepFailed`, `StepSkipped`, `StepWaiting`, `SignalReceived`, `RunSucceeded`,
    /// `RunFailed`, `RunCancelled`, `RunRetried`, or `Log` for a plain line.
    pub event: String,
}

impl From<LogRecord> for LogOut {
    fn from(l: LogRecord) -> Self {
        LogOut {
            seq: l.seq,
            ts: weft_types::rfc3339(l.ts),
            level: l.level,
            step: l.step_id,
            message: l.message,
            event: l.event,
        }
    }
}

/// A page of log lines, with the run's status (so followers know when to stop).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    /// Lines.
    pub items: Vec<LogOut>,
    /// Last sequence number on this page.
    pub next_cursor: Option<i64>,
    /// The run's status.
    pub run_status: String,
}

/// A connector action in the catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorOut {
    /// Connector name.
    pub connector: String,
    /// Action name.
    pub action: String,
    /// Version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Whether the action needs a credential: `required`, `optional` or `none`.
    pub credential: String,
}

/// A credential: its name, connector and which fields are set, never their values.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialOut {
    /// Id (`crd_…`).
    pub id: String,
    /// Name, unique in the workspace.
    pub name: String,
    /// Connector.
    pub connector: String,
    /// Field names that are set.
    pub fields: Vec<String>,
    /// `ok`, or `needs_reauth` when the provider refused it for good.
    pub status: String,
    /// Why the status is not `ok`.
    pub status_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&weft_store::CredentialRecord> for CredentialOut {
    fn from(c: &weft_store::CredentialRecord) -> Self {
        CredentialOut {
            id: c.id.to_string(),
            name: c.name.clone(),
            connector: c.connector.clone(),
            fields: c.fields.clone(),
            status: c.status.clone(),
            status_reason: c.status_reason.clone(),
            created_at: weft_types::rfc3339(c.created_at),
            updated_at: weft_types::rfc3339(c.updated_at),
        }
    }
}

/// A workspace.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceOut {
    /// Id (`wsp_…`).
    pub id: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Slug, unique in the tenant.
    pub slug: String,
    /// Name.
    pub name: String,
    /// The caller's role in it.
    pub role: String,
    /// Created at.
    pub created_at: String,
}

impl WorkspaceOut {
    /// The workspace as seen by a caller with `role`.
    pub fn new(w: &WorkspaceRecord, role: weft_types::Role) -> Self {
        WorkspaceOut {
            id: w.scope.workspace.to_string(),
            tenant_id: w.scope.tenant.to_string(),
            slug: w.slug.clone(),
            name: w.name.clone(),
            role: role.as_str().into(),
            created_at: weft_types::rfc3339(w.created_at),
        }
    }
}

/// Body of `POST /workspaces`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// Slug: 1-64 of `a-z 0-9 -`, starting with a letter or digit.
    pub slug: String,
    /// Display name (defaults to the slug).
    #[serde(default)]
    pub name: Option<String>,
    /// Tenant to create it in (needed only for a session user who owns several tenants).
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// Body of `PATCH /workspaces/{ws}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatch {
    /// New display name.
    pub name: String,
}

/// An API key (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyOut {
    /// Id (`key_…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// First characters of the secret.
    pub prefix: String,
    /// The user it acts for.
    pub created_by: Option<String>,
    /// Created at.
    pub created_at: String,
    /// Last used at (updated at most once a minute).
    pub last_used_at: Option<String>,
    /// Expires at.
    pub expires_at: Option<String>,
    /// Revoked at.
    pub revoked_at: Option<String>,
}

impl From<&KeyRecord> for KeyOut {
    fn from(k: &KeyRecord) -> Self {
        KeyOut {
            id: k.id.to_string(),
            name: k.name.clone(),
            role: k.role.as_str().into(),
            prefix: k.prefix.clone(),
            created_by: k.created_by.map(|u| u.to_string()),
            created_at: weft_types::rfc3339(k.created_at),
            last_used_at: ts(k.last_used_at),
            expires_at: ts(k.expires_at),
            revoked_at: ts(k.revoked_at),
        }
    }
}

/// A new API key: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    /// The key.
    #[serde(flatten)]
    pub key: KeyOut,
    /// The secret (`wft_…`): store it now, it is never shown again.
    pub secret: String,
}

/// Body of `POST /api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyIn {
    /// `viewer`, `editor`, `admin` or `owner` (at most the caller's own role).
    pub role: String,
    /// Name (defaults to the role).
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime in seconds; none for a key that does not expire.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A member of a workspace.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberOut {
    /// User id (`usr_…`).
    pub user_id: String,
    /// Email.
    pub email: String,
    /// Role.
    pub role: String,
    /// `active`, or `invited` until a person from another tenant accepts.
    pub status: String,
    /// Member since.
    pub created_at: String,
}

impl From<&MemberRecord> for MemberOut {
    fn from(m: &MemberRecord) -> Self {
        MemberOut {
            user_id: m.user_id.to_string(),
            email: m.email.clone(),
            role: m.role.as_str().into(),
            status: if m.pending { "invited" } else { "active" }.into(),
            created_at: weft_types::rfc3339(m.created_at),
        }
    }
}

/// Body of `POST /members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// The person's email (a user is created if new).
    pub email: String,
    /// Their role (at most the caller's own).
    pub role: String,
}

/// Body of `PATCH /members/{user}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberPatch {
    /// New role.
    pub role: String,
}

/// An audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditOut {
    /// Position in the tenant's chain.
    pub seq: i64,
    /// Time.
    pub ts: String,
    /// Workspace, if any.
    pub workspace_id: Option<String>,
    /// `user`, `key`, `admin`, `operator` or `system`.
    pub actor_kind: String,
    /// Who.
    pub actor_id: String,
    /// With which credential.
    pub via: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// What, e.g. `flow.publish`.
    pub action: String,
    /// Object kind.
    pub object_kind: String,
    /// Object id.
    pub object_id: String,
    /// Extra facts.
    pub detail: Value,
    /// Previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

impl From<AuditEntry> for AuditOut {
    fn from(e: AuditEntry) -> Self {
        AuditOut {
            seq: e.seq,
            ts: weft_types::rfc3339(e.ts),
            workspace_id: e.workspace_id,
            actor_kind: e.actor_kind,
            actor_id: e.actor_id,
            via: e.via,
            request_id: e.request_id,
            action: e.action,
            object_kind: e.object_kind,
            object_id: e.object_id,
            detail: serde_json::from_str(&e.detail).unwrap_or(Value::String(e.detail)),
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// The result of checking the tenant's audit chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerifyOut {
    /// True when every entry checks.
    pub ok: bool,
    /// Entries checked.
    pub entries: i64,
    /// The first broken entry's `seq`.
    pub broken_seq: Option<i64>,
    /// Why it is broken.
    pub reason: Option<String>,
}

/// Login body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginIn {
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
}

/// The logged-in user and where they may go.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeOut {
    /// User id.
    pub user_id: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Echo this in `X-CSRF-Token` on writes made with the session cookie.
    pub csrf_token: Option<String>,
    /// Session expiry.
    pub expires_at: Option<String>,
    /// Workspaces and roles.
    pub workspaces: Vec<WorkspaceOut>,
    /// Invitations waiting to be accepted (`POST /api/v1/auth/invitations/{ws}/accept`).
    pub invitations: Vec<WorkspaceOut>,
}

/// Plan limits; null is unlimited.
#[derive(Debug, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsIo {
    /// Runs started per calendar month (UTC).
    #[serde(default)]
    pub runs_per_month: Option<i64>,
    /// Flows with a published version.
    #[serde(default)]
    pub active_flows: Option<i64>,
    /// Runs running at once.
    #[serde(default)]
    pub concurrent_runs: Option<i64>,
    /// Webhook requests per second.
    #[serde(default)]
    pub webhook_rps: Option<i64>,
    /// Bytes of stored run data.
    #[serde(default)]
    pub stored_bytes: Option<i64>,
}

/// A tenant's consumption.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageOut {
    /// Month of `runs_in_month`.
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

/// A tenant (instance admin view).
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantOut {
    /// Id (`ten_…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Plan limits.
    pub limits: LimitsIo,
    /// Fair-share weight.
    pub weight: i64,
    /// Created at.
    pub created_at: String,
    /// Consumption (single-tenant route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

impl From<&TenantRecord> for TenantOut {
    fn from(t: &TenantRecord) -> Self {
        let l = &t.limits;
        TenantOut {
            id: t.id.to_string(),
            name: t.name.clone(),
            limits: LimitsIo {
                runs_per_month: l.runs_per_month,
                active_flows: l.active_flows,
                concurrent_runs: l.concurrent_runs,
                webhook_rps: l.webhook_rps,
                stored_bytes: l.stored_bytes,
            },
            weight: t.weight,
            created_at: weft_types::rfc3339(t.created_at),
            usage: None,
        }
    }
}

/// Body of `POST /admin/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Name.
    pub name: String,
    /// The owner's email (an existing user is reused).
    pub owner_email: String,
    /// Plan limits.
    #[serde(default)]
    pub limits: Option<LimitsIo>,
}

/// A new tenant, with its owner key (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    /// The tenant.
    pub tenant: TenantOut,
    /// Its `default` workspace id.
    pub workspace_id: String,
    /// The owner's user id.
    pub owner_user_id: String,
    /// Owner API key (`wft_…`): shown once.
    pub owner_key: String,
}

/// Body of `PATCH /admin/tenants/{tenant}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// New plan limits (replace the old ones; null fields are unlimited).
    #[serde(default)]
    pub limits: Option<LimitsIo>,
    /// New fair-share weight (1-1000).
    #[serde(default)]
    pub weight: Option<i64>,
}

/// A poll trigger's state: where it is, when it polls next, how it went.
#[derive(Debug, Serialize, ToSchema)]
pub struct PollOut {
    /// Whether it is polling (the flow's published version has a poll trigger).
    pub active: bool,
    /// Next poll (RFC 3339), while active.
    pub next_poll_at: Option<String>,
    /// The cursor the next poll starts from (`.cursor` in the trigger's templates).
    #[schema(value_type = Object)]
    pub cursor: Value,
    /// Whether items found start runs (false until the first poll has recorded what exists).
    pub primed: bool,
    /// Why polling is paused (a credential that needs re-authorization), if it is.
    pub paused: Option<String>,
    /// Last poll (RFC 3339).
    pub last_polled_at: Option<String>,
    /// What went wrong at the last poll, if it failed.
    pub last_error: Option<String>,
    /// Polls done.
    pub polls: i64,
    /// Runs started.
    pub runs_started: i64,
    /// Item ids remembered (each starts one run, however often it is listed).
    pub seen_items: i64,
}

impl From<weft_store::PollState> for PollOut {
    fn from(p: weft_store::PollState) -> Self {
        PollOut {
            active: p.next_at.is_some(),
            next_poll_at: p.next_at.map(weft_types::rfc3339),
            cursor: p.cursor.unwrap_or(Value::Null),
            primed: p.primed,
            paused: p.paused,
            last_polled_at: p.last_polled_at.map(weft_types::rfc3339),
            last_error: p.last_error,
            polls: p.polls,
            runs_started: p.started,
            seen_items: p.seen,
        }
    }
}

/// Body of `POST /flows/{flow}/poll/backfill`.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BackfillIn {
    /// The cursor to start from, e.g. a timestamp `"2026-11-01T00:00:00Z"` (default: none).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub since: Option<Value>,
}

/// Body of `POST /flows/{flow}/publish`.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PublishIn {
    /// Version to publish (default: the newest).
    #[serde(default)]
    pub version: Option<i64>,
}

/// Field-level error in a problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldErrorDoc {
    /// Where, e.g. `steps[0].needs[0]`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

/// RFC 9457 problem details: the one error shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDoc {
    /// URI naming the error kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened and what to do.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// Field errors.
    pub errors: Vec<FieldErrorDoc>,
}

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusOut {
    /// `ok` or `ready`.
    pub status: String,
}
