//! `Store`: the one storage type the rest of Weft uses, dispatching each operation to the
//! embedded SQLite backend or to PostgreSQL. Both implement the same operations with the same
//! signatures (`tests/conformance.rs` runs every case on both); this file only forwards.

use serde_json::Value;
use weft_types::{
    CredentialId, FlowId, HookId, KeyId, Millis, Role, RunId, RunStatus, Scope, TenantId, UserId,
    WorkspaceId,
};

use crate::payloads::Payloads;
use crate::postgres::PgStore;
use crate::*;

/// The store: SQLite on one machine, PostgreSQL for many processes; with large payloads in
/// object storage when a payload store is configured.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    payloads: Option<Payloads>,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl From<SqliteStore> for Store {
    fn from(s: SqliteStore) -> Self {
        Store {
            backend: Backend::Sqlite(s),
            payloads: None,
        }
    }
}

impl From<PgStore> for Store {
    fn from(s: PgStore) -> Self {
        Store {
            backend: Backend::Postgres(s),
            payloads: None,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the embedded store.
    pub fn open(opts: SqliteOptions) -> Result<Self, StoreError> {
        SqliteStore::open(opts).map(Store::from)
    }

    /// Connects to PostgreSQL (the schema must be migrated: `weft admin migrate`).
    pub async fn connect_postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        PgStore::connect(url, max_connections)
            .await
            .map(Store::from)
    }

    /// Keeps values larger than the payload store's threshold there. Without one, every value
    /// stays in the database.
    pub fn with_payloads(mut self, payloads: Payloads) -> Self {
        self.payloads = Some(payloads);
        self
    }

    /// The payload store, if one is configured.
    pub fn payloads(&self) -> Option<&Payloads> {
        self.payloads.as_ref()
    }

    /// The newest schema version this build's backend knows; a database at an older one has
    /// migrations left to apply.
    pub fn latest_schema_version(&self) -> i64 {
        match &self.backend {
            Backend::Sqlite(_) => crate::sqlite::latest_version(),
            Backend::Postgres(_) => crate::postgres::latest_version(),
        }
    }

    /// The embedded backend, if that is what this is.
    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL backend, if that is what this is.
    pub fn as_postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Postgres(s) => Some(s),
            Backend::Sqlite(_) => None,
        }
    }

    /// Whether several processes may share this store (PostgreSQL), so leases, not a
    /// data-dir lock, decide who runs what.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Signals of new ready work from other processes (PostgreSQL LISTEN/NOTIFY); `None` for
    /// the embedded store, where all work is announced in-process.
    pub async fn work_signals(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<()>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(s) => s.work_signals().await.map(Some),
        }
    }

    /// Where the data lives, for messages (a file path, or the PostgreSQL server).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(_) => "PostgreSQL".into(),
        }
    }
}

macro_rules! dispatch {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        impl Store {
            $(
                $(#[$doc])*
                #[allow(clippy::too_many_arguments)]
                pub async fn $name(&self, $($arg: $ty),*) -> $ret {
                    match &self.backend {
                        Backend::Sqlite(s) => s.$name($($arg),*).await,
                        Backend::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

dispatch! {
    /// Counts one request against the limit `rate` of `key`: in memory for the embedded store,
    /// in a row every process shares for PostgreSQL.
    fn rate_take(key: &str, rate: crate::rate::Rate, now_us: i64) -> Result<crate::rate::RateDecision, StoreError>;
    /// Creates the flow or saves a new version of it; publishes the new version when `publish`.
    fn save_flow(scope: Scope, name: &str, definition: Value, publish: bool, actor: Actor, now: Millis) -> Result<FlowRecord, StoreError>;
    /// A flow by id (`flw_…`) or by name.
    fn get_flow(scope: Scope, id_or_name: &str) -> Result<FlowRecord, StoreError>;
    /// Flows of a workspace ordered by name, after the `after` name (cursor).
    fn list_flows(scope: Scope, after: Option<String>, limit: usize) -> Result<Vec<FlowRecord>, StoreError>;
    /// One version of a flow.
    fn flow_version(scope: Scope, flow: FlowId, version: i64) -> Result<FlowVersion, StoreError>;
    /// Every version of a flow, newest first.
    fn list_versions(scope: Scope, flow: FlowId) -> Result<Vec<FlowVersion>, StoreError>;
    /// Makes `version` the active one.
    fn publish(scope: Scope, flow: FlowId, version: i64, actor: Actor, now: Millis) -> Result<FlowRecord, StoreError>;
    /// Deletes a flow, its versions and its schedule (runs stay in history).
    fn delete_flow(scope: Scope, flow: FlowId, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// System: where an (unguessable) hook id leads.
    fn lookup_hook(hook: HookId) -> Result<Option<HookTarget>, StoreError>;
    /// Sets (or with `None`, removes) a flow's next schedule tick.
    fn set_schedule(scope: Scope, flow: FlowId, next_tick: Option<Millis>) -> Result<(), StoreError>;
    /// System: schedules whose tick is at or before `now`.
    fn due_schedules(now: Millis, limit: usize) -> Result<Vec<DueSchedule>, StoreError>;
    /// System: the earliest pending schedule tick.
    fn next_schedule_at() -> Result<Option<Millis>, StoreError>;
    /// Turns a flow's polling on (next poll at `next_at`) or off (`None`); a new poll starts
    /// from `since` (primed when given); an existing one keeps its cursor and seen items.
    fn set_poll(scope: Scope, flow: FlowId, next_at: Option<Millis>, since: Option<Value>) -> Result<(), StoreError>;
    /// System: leases up to `limit` due, unpaused polls to `owner` until `now + lease_ms`.
    fn claim_polls(owner: &str, now: Millis, lease_ms: Millis, limit: usize) -> Result<Vec<ClaimedPoll>, StoreError>;
    /// A flow's poll state, if it ever had a poll trigger.
    fn poll_state(scope: Scope, flow: FlowId) -> Result<Option<PollState>, StoreError>;
    /// Restarts a flow's polling from `since` (items found start runs unless already seen),
    /// due at `now`; `NotFound` without an active poll trigger.
    fn backfill_poll(scope: Scope, flow: FlowId, since: Option<Value>, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// Resumes the workspace's paused polls, due at `now`.
    fn resume_polls(scope: Scope, now: Millis) -> Result<usize, StoreError>;
    /// System: the earliest time an unpaused poll is due and not leased.
    fn next_poll_at() -> Result<Option<Millis>, StoreError>;
    /// System: hands back the poll leases `owner` holds, or with `others`, every other one.
    fn release_polls(owner: &str, others: bool) -> Result<usize, StoreError>;
    /// Item ids of `keys` the flow's poll has seen.
    fn poll_known(scope: Scope, flow: FlowId, keys: Vec<String>) -> Result<Vec<String>, StoreError>;
    /// Hands one run `owner` holds back to the queue, ready again at `not_before`; false when it
    /// does not hold it.
    fn release_run(scope: Scope, run: RunId, owner: &str, not_before: Millis) -> Result<bool, StoreError>;
    /// System: extends the leases of every run `owner` is running.
    fn renew_leases(owner: &str, until: Millis) -> Result<usize, StoreError>;
    /// System: returns runs whose lease expired (their worker died) to the queue.
    fn reclaim_expired(now: Millis) -> Result<usize, StoreError>;
    /// System: returns every running run not owned by `owner` to the queue (embedded mode at start:
    fn reclaim_all_except(owner: &str) -> Result<usize, StoreError>;
    /// Hands `owner`'s running runs back to the queue (graceful shutdown).
    fn release_leases(owner: &str) -> Result<usize, StoreError>;
    /// Cancels a run that has not finished, with every unfinished run below it (sub-flows, theirs,
    /// …), and wakes its parent if that waits; returns its status afterwards.
    fn cancel_run(scope: Scope, run: RunId, actor: Actor, now: Millis) -> Result<RunStatus, StoreError>;
    /// Parks a run `owner` holds: `waiting` until `wake_at` (`None`: no timer), or until a signal
    /// named in `awaiting` arrives or a child run whose id is in `awaiting` ends; ready again at
    /// once when one of those already has. False (nothing changed) when `owner` does not hold it.
    fn park_run(scope: Scope, run: RunId, owner: &str, wake_at: Option<Millis>, awaiting: Vec<String>, now: Millis) -> Result<bool, StoreError>;
    /// System: makes up to `limit` waiting runs whose wake time is at or before `now` ready;
    /// returns how many.
    fn wake_runs(now: Millis, limit: usize) -> Result<usize, StoreError>;
    /// System: the earliest wake time of a waiting run with a timer.
    fn next_wake_at() -> Result<Option<Millis>, StoreError>;
    /// Records that `run` waits for `event` with `key` (any key when `None`); idempotent.
    fn watch_event(scope: Scope, run: RunId, event: &str, key: Option<&str>, now: Millis) -> Result<(), StoreError>;
    /// Runs watching `event` with no key or exactly `key`, oldest watch first, at most `limit`.
    fn event_watchers(scope: Scope, event: &str, key: Option<&str>, limit: usize) -> Result<Vec<RunId>, StoreError>;
    /// Forgets that `run` watches `event` (nothing happens when it does not).
    fn unwatch_event(scope: Scope, run: RunId, event: &str) -> Result<(), StoreError>;
    /// Queues a failed run again, keeping its succeeded steps and dropping the rest (no new run
    /// is counted); a run that has not failed is a conflict.
    fn retry_run(scope: Scope, run: RunId, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// Appends log lines to a run.
    fn append_logs(scope: Scope, run: RunId, logs: Vec<NewLog>, now: Millis) -> Result<(), StoreError>;
    /// Log lines of a run after sequence `after`.
    fn run_logs(scope: Scope, run: RunId, after: i64, limit: usize) -> Result<Vec<LogRecord>, StoreError>;
    /// System: how many runs are in each status (for metrics, benchmarks and tests).
    fn count_runs() -> Result<Vec<(RunStatus, i64)>, StoreError>;
    /// System: runs queued or running since before `before` (started, or queued if never
    /// started), oldest first: what an operator looks at when work seems stuck.
    fn stuck_runs(before: Millis, limit: usize) -> Result<Vec<RunRecord>, StoreError>;
    /// System: the first tenant's `default` workspace (where `--flows` and the example flow go).
    fn default_scope() -> Result<Option<Scope>, StoreError>;
    /// On an empty store, creates the default tenant, its `default` workspace and owner, and returns the owner key (once).
    fn bootstrap_if_empty(now: Millis) -> Result<Option<Bootstrap>, StoreError>;
    /// Creates a tenant with its `default` workspace and owner (an existing user when the email
    fn create_tenant(name: &str, owner_email: &str, limits: Limits, actor: Actor, now: Millis) -> Result<Bootstrap, StoreError>;
    /// Whether `user` owns `tenant` (may create workspaces and read the tenant's whole trail).
    fn is_tenant_owner(tenant: TenantId, user: UserId) -> Result<bool, StoreError>;
    /// Tenants `user` owns.
    fn owned_tenants(user: UserId) -> Result<Vec<TenantId>, StoreError>;
    /// System (instance admin): tenants ordered by id, after `after`.
    fn list_tenants(after: Option<String>, limit: usize) -> Result<Vec<TenantRecord>, StoreError>;
    /// A tenant.
    fn get_tenant(tenant: TenantId) -> Result<TenantRecord, StoreError>;
    /// Sets a tenant's plan limits and weight.
    fn set_tenant_plan(tenant: TenantId, limits: Limits, weight: i64, actor: Actor, now: Millis) -> Result<TenantRecord, StoreError>;
    /// Changes a tenant's plan: the given parts replace the stored ones, in one transaction.
    fn patch_tenant_plan(tenant: TenantId, limits: Option<Limits>, weight: Option<i64>, actor: Actor, now: Millis) -> Result<TenantRecord, StoreError>;
    /// A tenant's consumption.
    fn usage(tenant: TenantId, now: Millis) -> Result<Usage, StoreError>;
    /// Creates a workspace in `tenant`; `owner` (if any) becomes its owner.
    fn create_workspace(tenant: TenantId, slug: &str, name: &str, owner: Option<UserId>, actor: Actor, now: Millis) -> Result<WorkspaceRecord, StoreError>;
    /// A workspace of `tenant` by id or slug.
    fn get_workspace(tenant: TenantId, id_or_slug: &str) -> Result<WorkspaceRecord, StoreError>;
    /// Renames a workspace.
    fn rename_workspace(scope: Scope, name: &str, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// Sets how many days a workspace keeps finished runs (`None`: for ever); audited.
    fn set_retention(scope: Scope, days: Option<i64>, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// How many days a workspace keeps finished runs (`None`: for ever).
    fn retention(scope: Scope) -> Result<Option<i64>, StoreError>;
    /// System: finished runs older than their workspace's retention at `now`, oldest first.
    fn expired_runs(now: Millis, limit: usize) -> Result<Vec<(Scope, RunId)>, StoreError>;
    /// Workspaces `user` is a member of (across tenants), with the role in each.
    fn user_workspaces(user: UserId) -> Result<Vec<(WorkspaceRecord, Role)>, StoreError>;
    /// Invitations waiting for `user` to accept them.
    fn pending_invitations(user: UserId) -> Result<Vec<(WorkspaceRecord, Role)>, StoreError>;
    /// System (login): a user by email.
    fn user_by_email(email: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Sets a user's password hash (and ends their sessions); creates the user if `email` is new.
    fn set_password(email: &str, password_hash: &str, now: Millis) -> Result<UserId, StoreError>;
    /// A member's role in a workspace, if they are one.
    fn member_role(scope: Scope, user: UserId) -> Result<Option<Role>, StoreError>;
    /// Members of a workspace, by email.
    fn list_members(scope: Scope) -> Result<Vec<MemberRecord>, StoreError>;
    /// Adds the user with `email` (created without a password if new) to a workspace.
    fn add_member(scope: Scope, email: &str, role: Role, actor: Actor, now: Millis) -> Result<MemberRecord, StoreError>;
    /// Changes a member's role; refuses to demote the last owner.
    fn set_member_role(scope: Scope, user: UserId, role: Role, actor: Actor, now: Millis) -> Result<MemberRecord, StoreError>;
    /// Removes a member; refuses to remove the last owner.
    fn remove_member(scope: Scope, user: UserId, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// Accepts `user`'s invitation to a workspace; `NotFound` when there is none.
    fn accept_invitation(user: UserId, workspace: WorkspaceId, actor: Actor, now: Millis) -> Result<(WorkspaceRecord, Role), StoreError>;
    /// System: resolves an API key secret to its identity, if the key exists, is not revoked
    fn resolve_key(secret: &str, now: Millis) -> Result<Option<KeyIdentity>, StoreError>;
    /// Records that a key was used (callers throttle this).
    fn touch_key(scope: Scope, key: KeyId, now: Millis) -> Result<(), StoreError>;
    /// Creates an API key; returns it and its secret (shown once).
    fn create_key(scope: Scope, key: NewKey, actor: Actor, now: Millis) -> Result<(KeyRecord, String), StoreError>;
    /// The workspace's keys, newest first.
    fn list_keys(scope: Scope) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revokes a key (revoking twice changes nothing).
    fn revoke_key(scope: Scope, key: KeyId, actor: Actor, now: Millis) -> Result<KeyRecord, StoreError>;
    /// Stores a session under the hash of its cookie secret.
    fn create_session(user: UserId, secret_hash: String, csrf_token: String, expires_at: Millis, now: Millis) -> Result<(), StoreError>;
    /// System: the live session with this secret hash.
    fn resolve_session(secret_hash: String, now: Millis) -> Result<Option<SessionRecord>, StoreError>;
    /// Ends a session.
    fn delete_session(secret_hash: String) -> Result<(), StoreError>;
    /// An instance setting.
    fn setting(key: &str) -> Result<Option<String>, StoreError>;
    /// Sets an instance setting.
    fn set_setting(key: &str, value: &str) -> Result<(), StoreError>;
    /// A tenant's audit entries, newest first, before `before` (cursor); only one workspace's
    fn list_audit(tenant: TenantId, workspace: Option<WorkspaceId>, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Walks a tenant's whole audit chain and names the first entry that does not check.
    fn verify_audit(tenant: TenantId) -> Result<ChainCheck, StoreError>;
    /// The schema version the database is at; an error when it does not answer.
    fn ping() -> Result<i64, StoreError>;
    /// Creates an alert rule; a conflict when the workspace has one of that name.
    fn create_alert_rule(scope: Scope, name: &str, spec: Value, actor: Actor, now: Millis) -> Result<AlertRuleRecord, StoreError>;
    /// The workspace's alert rules, by name.
    fn list_alert_rules(scope: Scope) -> Result<Vec<AlertRuleRecord>, StoreError>;
    /// System: every workspace's alert rules watching `on`.
    fn alert_rules_on(on: &str) -> Result<Vec<(Scope, AlertRuleRecord)>, StoreError>;
    /// Deletes an alert rule with its incidents and undelivered notifications.
    fn delete_alert_rule(scope: Scope, name: &str, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// One occurrence of an incident of a rule: queues `payload` unless the incident was
    /// notified within `quiet_ms` or (with `at_least = (n, window_ms)`) has fewer than `n`
    /// occurrences within the window; then only counted. Decided atomically.
    fn raise_alert(scope: Scope, rule: &str, incident: &str, quiet_ms: i64, at_least: Option<(i64, i64)>, payload: Value, now: Millis) -> Result<Raised, StoreError>;
    /// System: notifications due at `now`, each held for `lease_ms`.
    fn claim_alert_deliveries(now: Millis, lease_ms: i64, limit: usize) -> Result<Vec<AlertDelivery>, StoreError>;
    /// Records a delivery attempt: delivered, or failed and due again at a time (or never).
    fn finish_alert_delivery(seq: i64, outcome: Result<(), (String, Option<Millis>)>, now: Millis) -> Result<(), StoreError>;
    /// A rule's notifications, newest first.
    fn alert_deliveries(scope: Scope, rule: &str, limit: usize) -> Result<Vec<AlertDelivery>, StoreError>;
    /// A credential by name, with its sealed values.
    fn credential(scope: Scope, name: &str) -> Result<Option<(CredentialRecord, SealedValues)>, StoreError>;
    /// Creates a credential or replaces the values of the one with the same name (whose id the
    /// new values must have been sealed for); true when created.
    fn put_credential(scope: Scope, cred: NewCredential, actor: Actor, now: Millis) -> Result<(CredentialRecord, bool), StoreError>;
    /// The workspace's credentials (names and fields, never values), by name.
    fn list_credentials(scope: Scope) -> Result<Vec<CredentialRecord>, StoreError>;
    /// Deletes a credential by name.
    fn delete_credential(scope: Scope, name: &str, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// Counts an authentication failure of a credential in use; pauses it at `threshold` in a
    /// row (true when this failure did).
    fn note_auth_failure(scope: Scope, id: CredentialId, threshold: i64, reason: String, now: Millis) -> Result<bool, StoreError>;
    /// A credential worked: its run of authentication failures is over.
    fn clear_auth_failures(scope: Scope, id: CredentialId) -> Result<(), StoreError>;
    /// Marks a credential `needs_reauth` with a reason, or back to `ok` with `None`.
    fn set_credential_status(scope: Scope, id: CredentialId, reason: Option<String>, now: Millis) -> Result<(), StoreError>;
    /// System (key rotation): credentials whose data key is not wrapped by `key_id`.
    fn credentials_to_rewrap(key_id: &str, after: Option<(Scope, CredentialId)>, limit: usize) -> Result<Vec<SealedCredential>, StoreError>;
    /// Installs a declarative connector version (false when this exact manifest already is);
    /// another manifest under an installed version is a conflict.
    fn install_connector(scope: Scope, name: &str, version: &str, manifest: Value, actor: Actor, now: Millis) -> Result<bool, StoreError>;
    /// Records an OAuth2 authorization request under the hash of its `state`.
    fn save_oauth_state(state_hash: &str, st: OAuthState) -> Result<(), StoreError>;
    /// System: removes and returns the unexpired authorization request of a state (once).
    fn take_oauth_state(state_hash: &str, now: Millis) -> Result<Option<OAuthState>, StoreError>;
    /// Takes the right to refresh a credential until `until`, unless another process holds it.
    fn lease_credential_refresh(scope: Scope, id: CredentialId, until: Millis, now: Millis) -> Result<bool, StoreError>;
    /// Replaces a credential's sealed values, sets it `ok` and ends its refresh lease.
    fn replace_credential_values(scope: Scope, id: CredentialId, sealed: SealedValues, fields: Vec<String>, audit_action: Option<&'static str>, actor: Actor, now: Millis) -> Result<(), StoreError>;
    /// Every connector version installed in the workspace.
    fn installed_connectors(scope: Scope) -> Result<Vec<InstalledConnector>, StoreError>;
    /// Replaces a credential's wrapped data key if it is unchanged since it was read.
    fn rewrap_credential(scope: Scope, id: CredentialId, old_key_id: &str, sealed: SealedValues) -> Result<bool, StoreError>;
}

/// How long a run whose payload store is unreachable waits in the queue before another claim.
const PAYLOAD_RETRY_MS: Millis = 10_000;

/// Calls one backend operation.
macro_rules! on_backend {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($s) => $call.await,
            Backend::Postgres($s) => $call.await,
        }
    };
}

/// The operations that carry run data: values over the payload threshold are offloaded on the
/// way in and resolved on the way out, so nothing above this layer sees a reference.
impl Store {
    /// The stored form of `v` (see [`crate::payloads`]), and the object written for it, if any.
    async fn put_value(
        &self,
        scope: &Scope,
        run: RunId,
        slot: &str,
        v: Value,
    ) -> Result<(Value, Option<object_store::path::Path>), StoreError> {
        match &self.payloads {
            Some(p) => p.store(scope, run, slot, v).await,
            None => Ok((crate::payloads::encode(v), None)),
        }
    }

    /// Removes objects whose database write did not happen.
    async fn forget(&self, written: impl IntoIterator<Item = object_store::path::Path>) {
        if let Some(p) = &self.payloads {
            for path in written {
                p.forget(path).await;
            }
        }
    }

    /// The value a stored `v` of `run` stands for.
    async fn resolve(&self, scope: &Scope, run: RunId, v: Value) -> Result<Value, StoreError> {
        match crate::payloads::decode(v)? {
            crate::payloads::Decoded::Inline(v) => Ok(v),
            crate::payloads::Decoded::Blob(b) => match &self.payloads {
                Some(p) => p.load(scope, run, b).await,
                None => Err(StoreError::Unavailable(format!(
                    "run {run} keeps a payload in object storage, and this process was started without a payload store (--payload-store)"
                ))),
            },
        }
    }

    async fn resolve_run(&self, mut r: RunRecord) -> Result<RunRecord, StoreError> {
        let trigger = std::mem::take(&mut r.trigger);
        r.trigger = self.resolve(&r.scope, r.id, trigger).await?;
        if let Some(o) = r.output.take() {
            r.output = Some(self.resolve(&r.scope, r.id, o).await?);
        }
        Ok(r)
    }

    async fn resolve_steps(
        &self,
        scope: &Scope,
        run: RunId,
        steps: &mut [StepRecord],
    ) -> Result<(), StoreError> {
        for s in steps {
            if let Some(o) = s.output.take() {
                s.output = Some(self.resolve(scope, run, o).await?);
            }
        }
        Ok(())
    }

    /// Durably inserts a queued run, or reports the run that already holds its dedupe key.
    pub async fn insert_run(&self, mut run: NewRun) -> Result<Inserted, StoreError> {
        let trigger = std::mem::take(&mut run.trigger);
        let (stored, written) = self
            .put_value(&run.scope, run.id, "trigger", trigger)
            .await?;
        run.trigger = stored;
        let r = on_backend!(self, s => s.insert_run(run));
        if !matches!(
            r,
            Ok(Inserted {
                duplicate: false,
                ..
            })
        ) {
            self.forget(written).await;
        }
        r
    }

    /// Starts the run of a due tick (deduplicated on the tick) and moves the schedule to
    /// `next_tick`, in one transaction; `None` when another worker fired the tick.
    pub async fn fire_schedule(
        &self,
        mut run: NewRun,
        tick_at: Millis,
        next_tick: Option<Millis>,
    ) -> Result<Option<Inserted>, StoreError> {
        let trigger = std::mem::take(&mut run.trigger);
        let (stored, written) = self
            .put_value(&run.scope, run.id, "trigger", trigger)
            .await?;
        run.trigger = stored;
        let r = on_backend!(self, s => s.fire_schedule(run, tick_at, next_tick));
        if !matches!(
            r,
            Ok(Some(Inserted {
                duplicate: false,
                ..
            }))
        ) {
            self.forget(written).await;
        }
        r
    }

    /// Records a poll's result (runs for new items, the cursor, the next time) and hands its
    /// lease back, in one transaction; `None` when `owner` no longer holds the poll.
    pub async fn complete_poll(
        &self,
        mut done: PollDone,
    ) -> Result<Option<PollRecorded>, StoreError> {
        let mut written = Vec::new();
        if let PollOutcome::Listed { items, .. } = &mut done.outcome {
            for (_, run) in items.iter_mut() {
                let trigger = std::mem::take(&mut run.trigger);
                let (stored, w) = self
                    .put_value(&run.scope, run.id, "trigger", trigger)
                    .await?;
                run.trigger = stored;
                if let Some(w) = w {
                    written.push((run.id, w));
                }
            }
        }
        let r = on_backend!(self, s => s.complete_poll(done));
        // Payloads of items that started no run (seen before, or nothing recorded) go.
        let started: std::collections::HashSet<RunId> = match &r {
            Ok(Some(rec)) => rec.started.iter().copied().collect(),
            _ => Default::default(),
        };
        for (run, w) in written {
            if !started.contains(&run) {
                self.forget(Some(w)).await;
            }
        }
        r
    }

    /// System: claims up to `limit` ready runs for `owner` with a lease until `now + lease_ms`.
    pub async fn claim_runs(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: Millis,
        limit: usize,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let claimed = on_backend!(self, s => s.claim_runs(owner, now, lease_ms, limit))?;
        let mut out = Vec::with_capacity(claimed.len());
        for mut c in claimed {
            let (scope, id) = (c.run.scope, c.run.id);
            let trigger = std::mem::take(&mut c.run.trigger);
            let resolved = match self.resolve(&scope, id, trigger).await {
                Ok(t) => {
                    c.run.trigger = t;
                    self.resolve_steps(&scope, id, &mut c.steps).await
                }
                Err(e) => Err(e),
            };
            match resolved {
                Ok(()) => out.push(c),
                // The run's data is gone or damaged: retrying cannot help, so the run fails
                // with the reason rather than coming back forever.
                Err(StoreError::Corrupt(m)) => {
                    let error = format!("the run's stored data cannot be read: {m}");
                    tracing::error!(run = %id, %error, "failing a run whose payload cannot be read");
                    let log = NewLog::new(
                        "error",
                        None,
                        RunEvent::RunFailed,
                        format!("run failed: {error}"),
                    );
                    on_backend!(self, s => s.finish_run(scope, id, owner, RunStatus::Failed, None, Some(error), vec![log], now))?;
                }
                // The payload store is unreachable: the run waits in the queue and is tried
                // again later, instead of holding a lease this worker keeps renewing.
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "a run's payload cannot be read now; it goes back to the queue for 10 s");
                    on_backend!(self, s => s.release_run(scope, id, owner, now + PAYLOAD_RETRY_MS))?;
                }
            }
        }
        Ok(out)
    }

    /// Checkpoints a step of a run `owner` holds. Returns false (and writes nothing) when the run
    /// is no longer held by `owner`.
    pub async fn checkpoint_step(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        cp: StepCheckpoint,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.checkpoint_steps(scope, run, owner, vec![cp], now)
            .await
    }

    /// Checkpoints several steps of a run `owner` holds in one transaction, in order (their
    /// lines too); false (and nothing written) when the run is no longer held by `owner`.
    pub async fn checkpoint_steps(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        cps: Vec<StepCheckpoint>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (cps, written) = self.put_steps(&scope, run, cps).await?;
        let r = on_backend!(self, s => s.checkpoint_steps(scope, run, owner, cps, now));
        if !matches!(r, Ok(true)) {
            self.forget(written).await;
        }
        r
    }

    /// Moves large step outputs to the payload store; the objects written, to forget if the
    /// database write does not happen.
    async fn put_steps(
        &self,
        scope: &Scope,
        run: RunId,
        mut cps: Vec<StepCheckpoint>,
    ) -> Result<(Vec<StepCheckpoint>, Vec<object_store::path::Path>), StoreError> {
        let mut written = Vec::new();
        for cp in &mut cps {
            if let Some(o) = cp.step.output.take() {
                let slot = format!("step-{}", cp.step.idx);
                match self.put_value(scope, run, &slot, o).await {
                    Ok((stored, w)) => {
                        cp.step.output = Some(stored);
                        written.extend(w);
                    }
                    Err(e) => {
                        self.forget(written).await;
                        return Err(e);
                    }
                }
            }
        }
        Ok((cps, written))
    }

    /// Finishes a run `owner` holds, waking its parent if that waits; false when it is no longer
    /// held (e.g. cancelled meanwhile).
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_run(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        logs: Vec<NewLog>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.finish_run_with(
            scope,
            run,
            owner,
            Vec::new(),
            status,
            output,
            error,
            logs,
            now,
        )
        .await
    }

    /// [`Store::finish_run`] that first checkpoints `steps` in the same transaction (a run's
    /// last step ends with its run: one write instead of two); their lines come before `logs`.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_run_with(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        steps: Vec<StepCheckpoint>,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        logs: Vec<NewLog>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (steps, mut written) = self.put_steps(&scope, run, steps).await?;
        let output = match output {
            Some(o) => match self.put_value(&scope, run, "output", o).await {
                Ok((stored, w)) => {
                    written.extend(w);
                    Some(stored)
                }
                Err(e) => {
                    self.forget(written).await;
                    return Err(e);
                }
            },
            None => None,
        };
        let r = on_backend!(self, s => s.finish_run_with(scope, run, owner, steps, status, output, error, logs, now));
        if !matches!(r, Ok(true)) {
            self.forget(written).await;
        }
        r
    }

    /// A run with its steps.
    pub async fn get_run(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<(RunRecord, Vec<StepRecord>), StoreError> {
        let (r, mut steps) = on_backend!(self, s => s.get_run(scope, run))?;
        self.resolve_steps(&scope, run, &mut steps).await?;
        Ok((self.resolve_run(r).await?, steps))
    }

    /// Counts one failed step in its error group; true when this failure opened the group.
    pub async fn record_error(&self, scope: Scope, e: NewError) -> Result<bool, StoreError> {
        on_backend!(self, s => s.record_error(scope, e))
    }

    /// Error groups seen at or after `since`, latest first (cursor: last_seen and fingerprint
    /// of the previous page's last), with per-day counts from `trend_from`.
    pub async fn list_errors(
        &self,
        scope: Scope,
        flow: Option<FlowId>,
        since: Millis,
        trend_from: Millis,
        before: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<ErrorGroup>, StoreError> {
        on_backend!(self, s => s.list_errors(scope, flow, since, trend_from, before, limit))
    }

    /// Log lines of every run of a workspace after seq `after`, oldest first (the live feed).
    pub async fn workspace_logs(
        &self,
        scope: Scope,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogHit>, StoreError> {
        on_backend!(self, s => s.workspace_logs(scope, after, limit))
    }

    /// Log lines of a workspace matching `q`, newest first (the workspace-wide log search).
    pub async fn search_logs(&self, scope: Scope, q: LogQuery) -> Result<Vec<LogHit>, StoreError> {
        on_backend!(self, s => s.search_logs(scope, q))
    }

    /// A run with its top-level steps and per-loop item counts (not the item checkpoints).
    pub async fn get_run_summary(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<(RunRecord, Vec<StepRecord>, Vec<LoopCount>), StoreError> {
        let (r, mut steps, counts) = on_backend!(self, s => s.get_run_summary(scope, run))?;
        self.resolve_steps(&scope, run, &mut steps).await?;
        Ok((self.resolve_run(r).await?, steps, counts))
    }

    /// The records of some steps of a run, by step id (ids with no record are left out);
    /// a loop reads another loop's item outputs this way, a page at a time.
    pub async fn get_steps(
        &self,
        scope: Scope,
        run: RunId,
        ids: &[String],
    ) -> Result<Vec<StepRecord>, StoreError> {
        let mut steps = on_backend!(self, s => s.get_steps(scope, run, ids))?;
        self.resolve_steps(&scope, run, &mut steps).await?;
        Ok(steps)
    }

    /// Runs of a workspace, newest first, filtered.
    pub async fn list_runs(
        &self,
        scope: Scope,
        f: RunFilter,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let runs = on_backend!(self, s => s.list_runs(scope, f))?;
        let mut out = Vec::with_capacity(runs.len());
        for r in runs {
            out.push(self.resolve_run(r).await?);
        }
        Ok(out)
    }

    /// Delivers the signal `name` with `payload` to an unfinished run (once per name: a second
    /// delivery, or one to a finished run, is a conflict) and makes the run ready now if it
    /// waits; returns its status afterwards.
    pub async fn signal_run(
        &self,
        scope: Scope,
        run: RunId,
        name: &str,
        payload: Value,
        actor: Actor,
        now: Millis,
    ) -> Result<RunStatus, StoreError> {
        let (stored, written) = self.put_value(&scope, run, "signal", payload).await?;
        let r = on_backend!(self, s => s.signal_run(scope, run, name, stored, actor, now));
        if r.is_err() {
            self.forget(written).await;
        }
        r
    }

    /// The signals delivered to a run, oldest first.
    pub async fn run_signals(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<Vec<SignalRecord>, StoreError> {
        let mut signals = on_backend!(self, s => s.run_signals(scope, run))?;
        for sig in &mut signals {
            let p = std::mem::take(&mut sig.payload);
            sig.payload = self.resolve(&scope, run, p).await?;
        }
        Ok(signals)
    }

    /// The runs `run` started as sub-flows, oldest first.
    pub async fn child_runs(&self, scope: Scope, run: RunId) -> Result<Vec<RunRecord>, StoreError> {
        let runs = on_backend!(self, s => s.child_runs(scope, run))?;
        let mut out = Vec::with_capacity(runs.len());
        for r in runs {
            out.push(self.resolve_run(r).await?);
        }
        Ok(out)
    }

    /// Deletes a finished run with its steps, logs, signals, event watches and payloads, and
    /// gives its stored bytes back to the tenant. A queued or running run must be cancelled
    /// first.
    pub async fn delete_run(
        &self,
        scope: Scope,
        run: RunId,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        on_backend!(self, s => s.delete_run(scope, run, actor, now))?;
        if let Some(p) = &self.payloads {
            p.delete_run(&scope, run).await?;
        }
        Ok(())
    }

    /// Operator: deletes the payloads of runs that do not exist (writes that never committed,
    /// runs deleted while the payload store was unreachable) whose newest object is older than
    /// `before`. Returns the runs swept.
    pub async fn sweep_payloads(&self, before: Millis) -> Result<usize, StoreError> {
        let Some(p) = &self.payloads else {
            return Ok(0);
        };
        let mut swept = 0;
        for (scope, run, newest) in p.runs_with_objects().await? {
            if newest >= before {
                continue;
            }
            match on_backend!(self, s => s.get_run(scope, run)) {
                Err(StoreError::NotFound) => {
                    p.delete_run(&scope, run).await?;
                    swept += 1;
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(swept)
    }
}
