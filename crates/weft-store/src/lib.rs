//! The storage contract of Weft and its embedded SQLite backend.
//!
//! Every method that touches tenant data takes a [`Scope`]; the few system methods that work
//! across tenants (claiming work, resolving a hook id, due schedules) say so in their docs.
//! Only this crate contains SQL.

mod alerting;
pub mod audit;
pub mod fair;
mod model;
pub mod payloads;
pub mod postgres;
mod quota;
pub mod rate;
mod sqlite;
mod store;

pub use model::*;
pub use sqlite::{SqliteOptions, SqliteStore};

use weft_types::Scope;

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Db(String),
    /// The object does not exist in this scope.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store has shut down.
    #[error("the store is shut down")]
    Closed,
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A plan limit of the tenant would be exceeded; nothing was written.
    #[error("{detail}")]
    Quota {
        /// Which limit (`runs_per_month`, `active_flows`, `stored_bytes`).
        limit: &'static str,
        /// What happened and what to do.
        detail: String,
        /// Seconds until the limit resets, when it does by itself.
        retry_after: Option<u64>,
    },
    /// A rule about the data was broken (e.g. removing the last owner).
    #[error("{0}")]
    Rule(String),
    /// The database cannot be reached (down, restarting, connections exhausted); nothing was
    /// written.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database gave up on a transaction that may succeed when retried (a deadlock or a
    /// serialization failure); nothing of it was written.
    #[error("the database asked to retry: {0}")]
    Busy(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
            rusqlite::Error::SqliteFailure(f, ref m)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(m.clone().unwrap_or_else(|| "constraint violated".into()))
            }
            other => StoreError::Db(other.to_string()),
        }
    }
}

pub use store::Store;

/// The field names stored beside a sealed credential.
pub(crate) fn credential_fields(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("credential field list: {e}")))
}

/// A connector version is immutable once installed.
pub(crate) fn connector_version_taken(name: &str, version: &str) -> StoreError {
    StoreError::Conflict(format!(
        "{name}@{version} is installed with a different manifest; versions are immutable: bump the version"
    ))
}

/// Two writers raced to create the same credential name with different ids.
pub(crate) fn credential_replaced(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "credential '{name}' was created by another request at the same time; send yours again"
    ))
}

/// The refusal to delete a run that has not finished.
pub(crate) fn run_not_finished(
    run: weft_types::RunId,
    status: weft_types::RunStatus,
) -> StoreError {
    StoreError::Rule(format!(
        "run {run} is {}; cancel it before deleting it",
        status.as_str()
    ))
}

/// The wake time stored for a run that waits for a signal or a child run only: later than any
/// real time, so it is never due (and never reported as the next wake-up).
pub(crate) const NO_WAKE: weft_types::Millis = i64::MAX / 4;

/// The refusal to signal a run that has finished.
pub(crate) fn signal_to_finished(status: weft_types::RunStatus) -> StoreError {
    StoreError::Conflict(format!(
        "run is already {}; signals reach only unfinished runs",
        status.as_str()
    ))
}

/// The refusal to deliver a signal name twice to one run.
pub(crate) fn signal_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "signal '{name}' was already delivered to this run; signals are single-use"
    ))
}

/// The refusal to retry a run in place that has not failed.
pub(crate) fn retry_refused(status: weft_types::RunStatus) -> StoreError {
    StoreError::Conflict(format!(
        "only a failed run can be retried in place; this one is {}",
        status.as_str()
    ))
}

/// Hashes an API key secret for storage and lookup (keys are high-entropy, so a fast hash fits).
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A scope's tenant and workspace ids as strings, for binding.
pub(crate) fn scope_strs(s: &Scope) -> (String, String) {
    (s.tenant.to_string(), s.workspace.to_string())
}
