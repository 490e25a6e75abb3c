//! The action catalog, used by flow validation and the executor: every action of every
//! built-in manifest, and the code that runs it.

use base64::Engine as _;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use weft_vault::SecretValues;

use crate::error::ActionError;
use crate::http::{GuardedClient, http_request_with_auth};
use crate::manifest::{self, ActionSpec, Manifest};
use crate::providers;

/// Description of one action, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionInfo {
    /// Connector name, e.g. `http`.
    pub connector: String,
    /// Action name within the connector, e.g. `request`.
    pub action: String,
    /// Version of the connector's contract.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// Whether a credential is `required`, `optional` or `none`.
    pub credential: String,
}

/// Every built-in action.
pub fn builtin_actions() -> Vec<ActionInfo> {
    manifest::builtin()
        .iter()
        .flat_map(|m| {
            m.actions.iter().map(move |a| ActionInfo {
                connector: m.name.clone(),
                action: a.name.clone(),
                version: m.version.clone(),
                description: a.description.clone(),
                credential: a.credential.clone(),
            })
        })
        .collect()
}

/// An action by connector and name, at `version` if pinned.
pub fn find_action(
    connector: &str,
    action: &str,
    version: Option<&str>,
) -> Option<(&'static Manifest, &'static ActionSpec)> {
    let m = manifest::find(connector, version)?;
    Some((m, m.action(action)?))
}

/// A decrypted credential as an action sees it: its values plus the manifest's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Credential<'a> {
    /// The credential's name, for messages.
    pub name: &'a str,
    /// Its values.
    pub values: &'a SecretValues,
    /// The connector it belongs to.
    pub manifest: &'a Manifest,
}

impl<'a> Credential<'a> {
    /// A field's value, or the manifest's default for it.
    pub fn get(&self, field: &str) -> Option<&'a str> {
        self.values.get(field).map(|s| s.expose()).or_else(|| {
            self.manifest
                .field(field)
                .and_then(|f| f.default.as_deref())
        })
    }

    /// A field that must be set, or a permanent error saying how to set it.
    pub fn require(&self, field: &str) -> Result<&'a str, ActionError> {
        self.get(field).filter(|v| !v.is_empty()).ok_or_else(|| {
            ActionError::permanent(format!(
                "credential '{}' has no `{field}`; set it with `weft credentials set {} --connector {} --value {field}=…`",
                self.name, self.name, self.manifest.name
            ))
        })
    }
}

/// Runs an action. Unknown actions, a missing required credential and a credential of another
/// connector are permanent errors.
pub async fn run_action(
    client: &GuardedClient,
    connector: &str,
    action: &str,
    input: &Value,
    credential: Option<Credential<'_>>,
    idempotency_key: &str,
) -> Result<Value, ActionError> {
    let Some((m, spec)) = find_action(connector, action, None) else {
        let known: Vec<String> = builtin_actions()
            .iter()
            .map(|i| format!("{}.{}", i.connector, i.action))
            .collect();
        return Err(ActionError::permanent(format!(
            "unknown action `{connector}.{action}`; use one of: {}",
            known.join(", ")
        )));
    };
    if let Some(c) = &credential
        && c.manifest.name != m.name
    {
        return Err(ActionError::permanent(format!(
            "credential '{}' is a {} credential, and `{connector}.{action}` needs a {connector} one; create one with `weft credentials set NAME --connector {connector}`",
            c.name, c.manifest.name
        )));
    }
    let cred = match (spec.credential.as_str(), credential) {
        ("required", None) => {
            return Err(ActionError::permanent(format!(
                "`{connector}.{action}` needs a credential: add `credential: NAME` naming a {connector} credential to the step"
            )));
        }
        ("none", Some(c)) => {
            return Err(ActionError::permanent(format!(
                "`{connector}.{action}` takes no credential; remove `credential: {}` from the step",
                c.name
            )));
        }
        (_, c) => c,
    };
    match (connector, cred) {
        ("http", cred) => {
            let auth = match cred {
                Some(c) => http_auth(&c)?,
                None => Vec::new(),
            };
            http_request_with_auth(client, input, idempotency_key, auth).await
        }
        ("oauth2", Some(c)) => {
            let token = c.require("access_token")?;
            let auth = vec![(
                AUTHORIZATION,
                header_value(&c, "access_token", &format!("Bearer {token}"))?,
            )];
            http_request_with_auth(client, input, idempotency_key, auth)
                .await
                .map_err(|e| e.renamed("http.request", "oauth2.request"))
        }
        ("github", Some(c)) => {
            providers::github::run(client, action, input, c, idempotency_key).await
        }
        ("stripe", Some(c)) => {
            providers::stripe::run(client, action, input, c, idempotency_key).await
        }
        ("slack", Some(c)) => {
            providers::slack::run(client, action, input, c, idempotency_key).await
        }
        ("postgres", Some(c)) => {
            providers::postgres::run(client, action, input, c, idempotency_key).await
        }
        ("email", Some(c)) => {
            providers::email::run(client, action, input, c, idempotency_key).await
        }
        _ => Err(ActionError::permanent(format!(
            "`{connector}.{action}` has no implementation in this build of Weft"
        ))),
    }
}

fn header_value(c: &Credential<'_>, field: &str, v: &str) -> Result<HeaderValue, ActionError> {
    let mut hv = HeaderValue::from_str(v).map_err(|_| {
        ActionError::permanent(format!(
            "credential '{}': `{field}` holds characters an HTTP header cannot carry; set it again",
            c.name
        ))
    })?;
    hv.set_sensitive(true);
    Ok(hv)
}

/// The headers an `http` credential adds: bearer, basic, or a named API-key header.
fn http_auth(c: &Credential<'_>) -> Result<Vec<(HeaderName, HeaderValue)>, ActionError> {
    let mut out = Vec::new();
    if let Some(t) = c.get("token").filter(|t| !t.is_empty()) {
        out.push((
            AUTHORIZATION,
            header_value(c, "token", &format!("Bearer {t}"))?,
        ));
    } else if let Some(u) = c.get("username") {
        let p = c.get("password").unwrap_or_default();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        out.push((
            AUTHORIZATION,
            header_value(c, "password", &format!("Basic {basic}"))?,
        ));
    }
    if let Some(name) = c.get("header_name").filter(|n| !n.is_empty()) {
        let hn = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ActionError::permanent(format!(
                "credential '{}': `header_name` '{name}' is not a valid header name",
                c.name
            ))
        })?;
        let v = c.require("header_value")?;
        out.push((hn, header_value(c, "header_value", v)?));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weft_vault::Secret;

    #[test]
    fn catalog_lookup() {
        let all = builtin_actions();
        assert!(
            all.iter()
                .any(|a| a.connector == "http" && a.action == "request")
        );
        assert!(
            all.iter()
                .any(|a| a.connector == "slack" && a.action == "post_message")
        );
        let (m, a) = find_action("http", "request", Some("1.0.0")).unwrap();
        assert_eq!(
            (m.version.as_str(), a.credential.as_str()),
            ("1.0.0", "optional")
        );
        assert!(find_action("http", "nope", None).is_none());
        assert!(find_action("http", "request", Some("2")).is_none());
    }

    #[tokio::test]
    async fn unknown_action_and_credential_mismatches_are_permanent() {
        let client = GuardedClient::new(crate::http::NetPolicy::default()).unwrap();
        let err = run_action(&client, "slack", "post", &Value::Null, None, "k")
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message().contains("slack.post"), "{err}");
        assert!(err.message().contains("http.request"), "{err}");

        let err = run_action(&client, "slack", "post_message", &Value::Null, None, "k")
            .await
            .unwrap_err();
        assert!(err.message().contains("needs a credential"), "{err}");

        let mut vals = SecretValues::new();
        vals.insert("token", Secret::new("ghp_canary_value"));
        let gh = manifest::find("github", None).unwrap();
        let c = Credential {
            name: "gh",
            values: &vals,
            manifest: gh,
        };
        let err = run_action(&client, "slack", "post_message", &Value::Null, Some(c), "k")
            .await
            .unwrap_err();
        assert!(err.message().contains("is a github credential"), "{err}");
        assert!(!err.message().contains("canary"));
    }

    #[test]
    fn http_credentials_become_headers() {
        let http = manifest::find("http", None).unwrap();
        let mut vals = SecretValues::new();
        vals.insert("username", Secret::new("ann"));
        vals.insert("password", Secret::new("pw"));
        vals.insert("header_name", Secret::new("X-Api-Key"));
        vals.insert("header_value", Secret::new("k123"));
        let c = Credential {
            name: "h",
            values: &vals,
            manifest: http,
        };
        let hs = http_auth(&c).unwrap();
        assert_eq!(hs[0].1.to_str().unwrap(), "Basic YW5uOnB3");
        assert!(hs[0].1.is_sensitive());
        assert_eq!(hs[1].0.as_str(), "x-api-key");
        let mut bad = SecretValues::new();
        bad.insert("token", Secret::new("a\nb"));
        let c = Credential {
            name: "h",
            values: &bad,
            manifest: http,
        };
        let e = http_auth(&c).unwrap_err();
        assert!(!e.message().contains("a\nb"));
    }
}
