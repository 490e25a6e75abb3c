//! One call of a connector action, as a step or a poll trigger makes it: the credential
//! opened (and its OAuth2 token refreshed), the connector's limits and breaker applied, a 401
//! answered by one refresh, and the credential's values masked in whatever comes back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weft_types::Scope;

use crate::Inner;
use crate::limits::{CallOutcome, Hold, StepLimit};

/// A failed attempt.
pub(crate) struct AttemptError {
    /// What failed (redacted).
    pub(crate) message: String,
    /// Whether another attempt may succeed.
    pub(crate) retryable: bool,
    /// The provider's `Retry-After`, or a limit's wait.
    pub(crate) retry_after: Option<Duration>,
    /// A rate limit (the provider's or ours): waiting is not failing.
    pub(crate) rate_limited: bool,
    /// The provider answered 401: an OAuth2 token may have been revoked before its expiry.
    pub(crate) unauthorized: bool,
}

impl AttemptError {
    /// The error class metrics and error groups use.
    pub(crate) fn class(&self) -> &'static str {
        if self.rate_limited {
            "rate_limited"
        } else if self.unauthorized {
            "auth"
        } else if self.message.starts_with("timed out") {
            "timeout"
        } else if self.retryable {
            "transient"
        } else {
            "permanent"
        }
    }

    /// A failure that retrying cannot fix.
    pub(crate) fn permanent(message: String) -> Self {
        Self {
            message,
            retryable: false,
            retry_after: None,
            rate_limited: false,
            unauthorized: false,
        }
    }
}

/// An action's error as an attempt's: 429, or a provider's own way of saying it (GitHub's 403
/// with no remaining quota, Slack's `ratelimited`), which connectors flag, is a rate limit.
fn attempt_error(e: &weft_connectors::ActionError) -> AttemptError {
    AttemptError {
        message: e.to_string(),
        retryable: e.is_retryable(),
        retry_after: e.retry_after(),
        rate_limited: e.output().is_some_and(|o| {
            o.get("status").and_then(Value::as_u64) == Some(429)
                || o.get("rate_limited").and_then(Value::as_bool) == Some(true)
        }),
        unauthorized: e
            .output()
            .and_then(|o| o.get("status"))
            .and_then(Value::as_u64)
            == Some(401),
    }
}

/// What to call.
pub(crate) struct ActionCall<'a> {
    /// Whose workspace (credentials and installed connectors are looked up there).
    pub(crate) scope: Scope,
    /// Connector name.
    pub(crate) connector: &'a str,
    /// Action name.
    pub(crate) action: &'a str,
    /// Pinned version of an installed connector.
    pub(crate) version: Option<&'a str>,
    /// Rendered input.
    pub(crate) input: &'a Value,
    /// Credential name.
    pub(crate) credential: Option<&'a str>,
    /// Idempotency key sent to the provider.
    pub(crate) key: &'a str,
    /// A step's own rate limit, replacing the connector's.
    pub(crate) step_limit: Option<StepLimit<'a>>,
}

/// Calls an action once (plus one repeat after an OAuth2 token refresh).
pub(crate) async fn invoke(
    inner: &Arc<Inner>,
    call: &ActionCall<'_>,
) -> Result<Value, AttemptError> {
    let (connector, action) = (call.connector, call.action);
    let open = match call.credential {
        Some(name) => Some(open_credential(inner, call.scope, name).await?),
        None => None,
    };
    let mut redactor = open
        .as_ref()
        .map(|c| weft_vault::Redactor::new(&c.values))
        .unwrap_or_default();
    let builtin = weft_connectors::manifest::find(connector, None);
    let installed = match builtin {
        Some(_) => None,
        None => Some(installed(inner, call.scope, connector, call.version).await?),
    };
    let manifest: &weft_connectors::Manifest = match (builtin, &installed) {
        (Some(m), _) => m,
        (None, Some(m)) => m,
        (None, None) => {
            return Err(AttemptError::permanent(format!(
                "unknown connector {connector}"
            )));
        }
    };
    let cred_id = open.as_ref().map(|c| c.record.id.to_string());
    let ticket = match inner
        .before_call(
            call.scope,
            manifest,
            action,
            cred_id.as_deref(),
            call.step_limit,
        )
        .await
    {
        Ok(t) => t,
        // Waiting for a limit or a breaker is not a failure: the step waits.
        Err(Hold::RateLimited(d, message) | Hold::BreakerOpen(d, message)) => {
            return Err(AttemptError {
                message,
                retryable: true,
                retry_after: Some(d),
                rate_limited: true,
                unauthorized: false,
            });
        }
    };
    let mut out = call_action(
        inner,
        installed.as_deref(),
        connector,
        action,
        call.input,
        open.as_ref(),
        call.key,
    )
    .await;
    // A provider may revoke an OAuth2 token before it expires: refresh once (unless
    // another step already did) and try again with the new token.
    if let (Err(e), Some(c)) = (&out, &open)
        && e.unauthorized
        && crate::oauth::is_oauth(c)
    {
        let rejected = c
            .values
            .get("access_token")
            .map(|t| t.expose().to_string())
            .unwrap_or_default();
        let engine = crate::Engine {
            inner: inner.clone(),
        };
        out = match engine
            .refresh_rejected(call.scope, &c.record.name, &rejected)
            .await
        {
            Ok(fresh) => {
                redactor.add_all(&fresh.values);
                call_action(
                    inner,
                    installed.as_deref(),
                    connector,
                    action,
                    call.input,
                    Some(&fresh),
                    call.key,
                )
                .await
            }
            Err(crate::OAuthError::Token {
                message,
                transient: false,
                ..
            }) => Err(AttemptError::permanent(message)),
            // The refresh could not run now: report the 401 as it was.
            Err(_) => out,
        };
    }
    inner.after_call(
        ticket,
        match &out {
            Ok(_) => CallOutcome::Ok,
            Err(e) if e.rate_limited => CallOutcome::RateLimited(e.retry_after),
            Err(e) if e.retryable => CallOutcome::Transient,
            Err(_) => CallOutcome::Permanent,
        },
    );
    if let Some(c) = &open {
        note_auth(inner, call.scope, c, &out).await;
    }
    // A provider may echo what it was sent; nothing of the credential is kept.
    out.map(|mut v| {
        redactor.value(&mut v);
        v
    })
    .map_err(|mut e| {
        e.message = redactor.text(&e.message);
        e
    })
}

/// Authentication failures (401) in a row after which a credential is paused. OAuth2
/// credentials are exempt: their refresh decides (a refused refresh pauses them at once).
pub const AUTH_FAILURES_TO_PAUSE: i64 = 5;

/// Keeps a credential's run of authentication failures: the one that reaches
/// [`AUTH_FAILURES_TO_PAUSE`] pauses it (steps using it then fail at once with the reason,
/// its poll triggers pause, and `credential_reauth` alerts fire); a success ends the run.
/// Bookkeeping failures are logged: they must not fail the call.
async fn note_auth(
    inner: &Arc<Inner>,
    scope: Scope,
    c: &crate::OpenCredential,
    out: &Result<Value, AttemptError>,
) {
    let store = &inner.opts.store;
    let name = &c.record.name;
    let noted = match out {
        Err(e) if e.unauthorized && !crate::oauth::is_oauth(c) => {
            let reason = format!(
                "the provider refused it {AUTH_FAILURES_TO_PAUSE} times in a row (HTTP 401)"
            );
            match store
                .note_auth_failure(
                    scope,
                    c.record.id,
                    AUTH_FAILURES_TO_PAUSE,
                    reason.clone(),
                    inner.now(),
                )
                .await
            {
                Ok(true) => {
                    tracing::warn!(credential = %name, "credential paused after repeated authentication failures");
                    let fix = format!("set its values again with `weft credentials set {name}`");
                    inner
                        .alert_credential_reauth(scope, name, &reason, &fix)
                        .await;
                    Ok(())
                }
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Ok(_) if c.record.auth_failures > 0 => store.clear_auth_failures(scope, c.record.id).await,
        _ => Ok(()),
    };
    if let Err(e) = noted {
        tracing::warn!(credential = %name, error = %e, "could not record a credential's authentication result");
    }
}

/// One call of an action: a built-in connector's, or an installed one's.
async fn call_action(
    inner: &Arc<Inner>,
    installed: Option<&weft_connectors::Manifest>,
    connector: &str,
    action: &str,
    input: &Value,
    open: Option<&crate::OpenCredential>,
    key: &str,
) -> Result<Value, AttemptError> {
    match installed {
        Some(m) => run_installed(inner, m, action, input, open, key).await,
        None => weft_connectors::run_action(
            &inner.opts.http,
            connector,
            action,
            input,
            open.map(|c| c.as_action_credential()),
            key,
        )
        .await
        .map_err(|e| attempt_error(&e)),
    }
}

/// The installed connector a step names, at its pinned version.
async fn installed(
    inner: &Arc<Inner>,
    scope: Scope,
    connector: &str,
    version: Option<&str>,
) -> Result<std::sync::Arc<weft_connectors::Manifest>, AttemptError> {
    let catalog = inner.catalog(scope).await.map_err(|e| AttemptError {
        message: e.to_string(),
        retryable: true,
        retry_after: None,
        rate_limited: false,
        unauthorized: false,
    })?;
    catalog.installed(connector, version).cloned().ok_or_else(|| {
        let pin = version.map(|v| format!("@{v}")).unwrap_or_default();
        AttemptError::permanent(format!(
            "connector {connector}{pin} is not installed in this workspace; install it with `weft connectors install FILE`"
        ))
    })
}

/// Runs an action of a connector installed in the run's workspace.
async fn run_installed(
    inner: &Arc<Inner>,
    m: &weft_connectors::Manifest,
    action: &str,
    input: &Value,
    open: Option<&crate::OpenCredential>,
    key: &str,
) -> Result<Value, AttemptError> {
    let connector = &m.name;
    let Some(spec) = m.action(action) else {
        return Err(AttemptError::permanent(format!(
            "{connector}@{} has no action `{action}`",
            m.version
        )));
    };
    match (spec.credential.as_str(), open) {
        ("required", None) => {
            return Err(AttemptError::permanent(format!(
                "`{connector}.{action}` needs a credential: add `credential: NAME` naming a {connector} credential to the step"
            )));
        }
        (_, Some(c)) if c.manifest.name != m.name => {
            return Err(AttemptError::permanent(format!(
                "credential '{}' is a {} credential, and `{connector}.{action}` needs a {connector} one",
                c.record.name, c.manifest.name
            )));
        }
        _ => {}
    }
    crate::connectors::run_declarative(inner, m, spec, input, open.map(|c| &c.values), key)
        .await
        .map_err(|e| match e {
            crate::connectors::DeclarativeError::Expr(m) => AttemptError::permanent(m),
            crate::connectors::DeclarativeError::Action(e) => attempt_error(&e),
        })
}

/// Opens the step's credential in the run's workspace (refreshing an OAuth2 token that
/// is about to expire).
async fn open_credential(
    inner: &Arc<Inner>,
    scope: Scope,
    name: &str,
) -> Result<crate::OpenCredential, AttemptError> {
    let engine = crate::Engine {
        inner: inner.clone(),
    };
    let engine_error = |e: crate::EngineError| match e {
        crate::EngineError::NotFound(_) => AttemptError::permanent(format!(
            "credential '{name}' does not exist in this workspace; create it with `weft credentials set {name} --connector CONNECTOR --value FIELD=VALUE`"
        )),
        crate::EngineError::Rule(m) => AttemptError::permanent(m),
        // No master key, a store hiccup: fixing the process lets a retry succeed.
        other => AttemptError {
            message: other.to_string(),
            retryable: true,
            retry_after: None,
            rate_limited: false,
            unauthorized: false,
        },
    };
    engine
        .credential_for_use(scope, name)
        .await
        .map_err(|e| match e {
            crate::OAuthError::Engine(e) => engine_error(e),
            crate::OAuthError::Token {
                message,
                transient: true,
                ..
            } => AttemptError {
                message: format!("credential '{name}': {message}"),
                retryable: true,
                retry_after: None,
                rate_limited: false,
                unauthorized: false,
            },
            crate::OAuthError::Token { message, .. } => AttemptError::permanent(message),
            other => AttemptError::permanent(format!("credential '{name}': {other:?}")),
        })
}
