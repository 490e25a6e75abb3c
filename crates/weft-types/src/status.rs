//! Run and step statuses as stored and shown.

use serde::{Deserialize, Serialize};

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, waiting for a worker.
    Queued,
    /// Claimed by a worker.
    Running,
    /// Parked until a time or a signal.
    Waiting,
    /// Every step finished.
    Succeeded,
    /// A step failed for good, or the run timed out.
    Failed,
    /// Stopped on request.
    Cancelled,
}

/// Lifecycle of one step in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started yet.
    Pending,
    /// Executing now.
    Running,
    /// Failed an attempt; another one is scheduled.
    Retrying,
    /// Finished with an output.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Its `if:` was false or a dependency was skipped.
    Skipped,
    /// Stopped because the run was cancelled.
    Cancelled,
    /// Parked until a time, a signal or a child run (the run is `waiting`).
    Waiting,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            /// The stored and displayed name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            /// Parses the stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(RunStatus { Queued = "queued", Running = "running", Waiting = "waiting", Succeeded = "succeeded", Failed = "failed", Cancelled = "cancelled" });
str_enum!(StepStatus { Pending = "pending", Running = "running", Retrying = "retrying", Succeeded = "succeeded", Failed = "failed", Skipped = "skipped", Cancelled = "cancelled", Waiting = "waiting" });

impl RunStatus {
    /// Whether the run can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}
