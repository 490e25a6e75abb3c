//! The error type every action returns, classified for the engine's retry logic.

use std::time::Duration;

use serde_json::Value;

/// Why an action failed, and whether running it again may succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// A transient failure (timeout, 5xx, 429, ...); the engine may retry.
    #[error("{message}")]
    Retryable {
        /// What failed and what happens next.
        message: String,
        /// How long the remote side asked us to wait before retrying.
        retry_after: Option<Duration>,
        /// The response received, if any, for inspection in the run log.
        output: Option<serde_json::Value>,
    },
    /// A failure that retrying cannot fix (bad input, 4xx, refused by policy, ...).
    #[error("{message}")]
    Permanent {
        /// What failed and what to do about it.
        message: String,
        /// The response received, if any, for inspection in the run log.
        output: Option<serde_json::Value>,
    },
}

impl ActionError {
    /// A permanent error with no output.
    pub fn permanent(message: impl Into<String>) -> Self {
        ActionError::Permanent {
            message: message.into(),
            output: None,
        }
    }

    /// A retryable error with no output and no retry hint.
    pub fn retryable(message: impl Into<String>) -> Self {
        ActionError::Retryable {
            message: message.into(),
            retry_after: None,
            output: None,
        }
    }

    /// Whether the engine may retry the action.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ActionError::Retryable { .. })
    }

    /// The delay the remote side asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ActionError::Retryable { retry_after, .. } => *retry_after,
            ActionError::Permanent { .. } => None,
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            ActionError::Retryable { message, .. } | ActionError::Permanent { message, .. } => {
                message
            }
        }
    }

    /// The same error with `from` (an action's name at the start of its message) replaced by
    /// `to`: an action built on another one speaks under its own name.
    pub fn renamed(self, from: &str, to: &str) -> Self {
        let fix = |m: String| m.replacen(from, to, 1);
        match self {
            ActionError::Retryable {
                message,
                retry_after,
                output,
            } => ActionError::Retryable {
                message: fix(message),
                retry_after,
                output,
            },
            ActionError::Permanent { message, output } => ActionError::Permanent {
                message: fix(message),
                output,
            },
        }
    }

    /// The partial output (e.g. the error response), if any.
    pub fn output(&self) -> Option<&Value> {
        match self {
            ActionError::Retryable { output, .. } | ActionError::Permanent { output, .. } => {
                output.as_ref()
            }
        }
    }
}
