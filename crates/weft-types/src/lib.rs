//! Plain domain types shared by every Weft crate: typed ids, statuses, the tenant scope and the clock.
//!
//! This crate does no I/O (the system clock is the one exception, behind the [`Clock`] trait).

mod authz;
mod clock;
mod failpoint;
mod ids;
mod status;

pub use authz::{Permission, Role};
pub use clock::{Clock, ManualClock, SystemClock};
pub use failpoint::{failpoint, failpoint_at};
pub use ids::{
    CredentialId, FlowId, HookId, IdError, KeyId, RunId, TenantId, UserId, WorkspaceId,
    random_secret,
};
pub use status::{RunStatus, StepStatus};

/// The tenant and workspace every stored object belongs to; every store call takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The owning workspace (belongs to `tenant`).
    pub workspace: WorkspaceId,
}

/// Milliseconds since the Unix epoch: the one time representation stored and compared.
pub type Millis = i64;

/// Formats epoch milliseconds as RFC 3339 with millisecond precision (UTC).
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}
