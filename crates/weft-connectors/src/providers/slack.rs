//! The Slack connector's action: `chat.postMessage` over the Web API.
//!
//! Slack answers most failures with HTTP 200 and `{"ok": false, "error": CODE}`; the code, not
//! the status, says what went wrong. Rate limits are HTTP 429 with `Retry-After` in seconds.
//! Slack has no idempotency keys, so a step retried after an ambiguous failure may post twice.

use http::Method;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use super::common::{Call, Reply};
use crate::catalog::Credential;
use crate::error::ActionError;
use crate::http::GuardedClient;

/// Error codes that mean the token is wrong or lacks rights: fix the credential.
const AUTH_ERRORS: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "missing_scope",
    "not_allowed_token_type",
    "no_permission",
    "ekm_access_denied",
    "team_access_not_granted",
    "access_denied",
];

/// Error codes Slack documents as transient.
const RETRYABLE_ERRORS: &[&str] = &[
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
];

/// Runs one slack action.
pub async fn run(
    client: &GuardedClient,
    action: &str,
    input: &Value,
    credential: Credential<'_>,
    _idempotency_key: &str,
) -> Result<Value, ActionError> {
    let call = Call::new(action, credential);
    let result = run_inner(&call, client, action, input).await;
    call.finish(result)
}

async fn run_inner(
    call: &Call<'_>,
    client: &GuardedClient,
    action: &str,
    input: &Value,
) -> Result<Value, ActionError> {
    let spec = call.spec(action)?;
    let obj = call.input(spec, input)?;
    let (method, channel) = match action {
        "post_message" => ("chat.postMessage", check_message(call, obj)?),
        _ => {
            return Err(ActionError::permanent(format!(
                "`{}` has no implementation in this build of Weft",
                call.name
            )));
        }
    };
    let token = call.secret("bot_token")?;
    let url = call.endpoint(&[method])?;
    let body: Map<String, Value> = obj
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bytes = serde_json::to_vec(&Value::Object(body)).map_err(|e| {
        ActionError::permanent(format!(
            "{}: input could not be encoded as JSON ({e})",
            call.name
        ))
    })?;

    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, call.bearer("bot_token", token)?);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let mut request = reqwest::Request::new(Method::POST, url);
    *request.headers_mut() = headers;
    *request.body_mut() = Some(bytes.into());

    let reply = call.send(client, request).await?;
    classify(call, channel, reply)
}

/// `channel` is required by the schema; Slack also needs `text` or `blocks`, and blocks are
/// objects. Returns the channel.
fn check_message<'v>(call: &Call<'_>, obj: &'v Map<String, Value>) -> Result<&'v str, ActionError> {
    let channel = call.required_str(obj, "channel")?;
    let text = call.optional_str(obj, "text")?;
    let blocks = obj.get("blocks").and_then(Value::as_array);
    if let Some(blocks) = blocks {
        for (i, b) in blocks.iter().enumerate() {
            if !b.is_object() {
                return Err(call.bad_input(
                    &format!("blocks[{i}]"),
                    format!(
                        "must be an object (a Block Kit block such as {{\"type\": \"section\", …}}), got {}",
                        super::common::kind(b)
                    ),
                ));
            }
        }
    }
    if text.is_none() && blocks.is_none_or(Vec::is_empty) {
        return Err(ActionError::permanent(format!(
            "{}: input needs `text` or `blocks` (or both); Slack refuses an empty message",
            call.name
        )));
    }
    Ok(channel)
}

fn classify(call: &Call<'_>, channel: &str, reply: Reply) -> Result<Value, ActionError> {
    let name = &call.name;
    let code = reply.status.as_u16();
    if code == 429 {
        return Err(ActionError::Retryable {
            message: format!(
                "{name}: Slack rate-limited the request (HTTP 429{}); the step will wait and retry",
                reply
                    .retry_after()
                    .map(|d| format!(", retry after {}s", d.as_secs()))
                    .unwrap_or_default()
            ),
            retry_after: reply.retry_after(),
            output: Some(reply.rate_limited_output()),
        });
    }
    if reply.status.is_server_error() {
        return Err(ActionError::Retryable {
            message: format!(
                "{name}: Slack failed with HTTP {code} ({}); the step can be retried",
                reply.excerpt_or("empty body")
            ),
            retry_after: reply.retry_after(),
            output: Some(reply.output()),
        });
    }
    match reply.body.get("ok").and_then(Value::as_bool) {
        Some(true) if reply.status.is_success() => Ok(reply.body),
        Some(false) => Err(slack_error(call, channel, &reply)),
        _ if reply.status.is_success() => Err(call.unexpected(&reply, "Slack's `ok` field")),
        _ => Err(ActionError::Permanent {
            message: format!(
                "{name}: Slack answered HTTP {code} ({}); check the credential's `api_url`",
                reply.excerpt_or("empty body")
            ),
            output: Some(reply.output()),
        }),
    }
}

/// Classifies `{"ok": false, "error": CODE}`.
fn slack_error(call: &Call<'_>, channel: &str, reply: &Reply) -> ActionError {
    let name = &call.name;
    let error = reply.body_str("error").unwrap_or("unknown_error");
    if RETRYABLE_ERRORS.contains(&error) {
        let output = if error.contains("rate") {
            reply.rate_limited_output()
        } else {
            reply.output()
        };
        return ActionError::Retryable {
            message: format!(
                "{name}: Slack answered `{error}`, a temporary failure; the step can be retried"
            ),
            retry_after: reply.retry_after(),
            output: Some(output),
        };
    }
    let cred = call.credential.name;
    let message = if error == "missing_scope" {
        let needed = reply.body_str("needed").unwrap_or("chat:write");
        format!(
            "{name}: the bot token in credential '{cred}' lacks the `{needed}` scope (`missing_scope`); add the scope to the Slack app, reinstall it and update the credential"
        )
    } else if AUTH_ERRORS.contains(&error) {
        format!(
            "{name}: Slack rejected the bot token (`{error}`); check credential '{cred}' (it must be a valid xoxb- token of an installed app)"
        )
    } else {
        let hint = match error {
            "channel_not_found" => format!(
                "channel `{channel}` does not exist or the bot cannot see it; use the channel ID (C…) and invite the bot to private channels"
            ),
            "not_in_channel" => format!(
                "the bot is not a member of `{channel}`; invite it (`/invite @your-app`) or add the chat:write.public scope"
            ),
            "is_archived" => format!("channel `{channel}` is archived"),
            "msg_too_long" => "`text` is longer than Slack accepts (40,000 characters)".into(),
            "no_text" => "give `text` or `blocks`".into(),
            "invalid_blocks" | "invalid_blocks_format" => {
                let why = reply
                    .body
                    .pointer("/response_metadata/messages")
                    .and_then(Value::as_array)
                    .map(|m| {
                        m.iter()
                            .filter_map(Value::as_str)
                            .take(5)
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .filter(|s| !s.is_empty());
                match why {
                    Some(w) => format!("`blocks` are not valid Block Kit: {w}"),
                    None => "`blocks` are not valid Block Kit".into(),
                }
            }
            "restricted_action" | "restricted_action_read_only_channel" => {
                "the workspace does not let the bot post there".into()
            }
            _ => "see Slack's chat.postMessage documentation for this error".into(),
        };
        format!("{name}: Slack refused the message (`{error}`): {hint}")
    };
    ActionError::Permanent {
        message,
        output: Some(reply.output()),
    }
}
