//! The built-in action catalog, used by flow validation and the dispatcher.

use serde::Serialize;
use serde_json::Value;

use crate::error::ActionError;
use crate::http::{GuardedClient, http_request};

/// Description of one built-in action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ActionInfo {
    /// Connector name, e.g. `http`.
    pub connector: &'static str,
    /// Action name within the connector, e.g. `request`.
    pub action: &'static str,
    /// Semantic version of the action's input/output contract.
    pub version: &'static str,
    /// One-line description for listings.
    pub description: &'static str,
}

static BUILTIN_ACTIONS: [ActionInfo; 1] = [ActionInfo {
    connector: "http",
    action: "request",
    version: "1.0.0",
    description: "Send an HTTP request and return its status, headers and body",
}];

/// All built-in actions.
pub fn builtin_actions() -> &'static [ActionInfo] {
    &BUILTIN_ACTIONS
}

/// Looks up a built-in action by connector and action name.
pub fn find_action(connector: &str, action: &str) -> Option<&'static ActionInfo> {
    BUILTIN_ACTIONS
        .iter()
        .find(|info| info.connector == connector && info.action == action)
}

/// Runs a built-in action; unknown actions are a permanent error.
pub async fn run_action(
    client: &GuardedClient,
    connector: &str,
    action: &str,
    input: &Value,
    idempotency_key: &str,
) -> Result<Value, ActionError> {
    match (connector, action) {
        ("http", "request") => http_request(client, input, idempotency_key).await,
        _ => {
            let known: Vec<String> = BUILTIN_ACTIONS
                .iter()
                .map(|i| format!("{}.{}", i.connector, i.action))
                .collect();
            Err(ActionError::permanent(format!(
                "unknown action `{connector}.{action}`; use one of: {}",
                known.join(", ")
            )))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn catalog_lookup() {
        assert_eq!(builtin_actions().len(), 1);
        let info = find_action("http", "request").unwrap();
        assert_eq!(info.version, "1.0.0");
        assert!(find_action("http", "nope").is_none());
        assert!(find_action("slack", "request").is_none());
    }

    #[tokio::test]
    async fn unknown_action_is_permanent() {
        let client = GuardedClient::new(crate::http::NetPolicy::default()).unwrap();
        let err = run_action(&client, "slack", "post", &Value::Null, "k")
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message().contains("slack.post"), "{err}");
        assert!(err.message().contains("http.request"), "{err}");
    }
}
