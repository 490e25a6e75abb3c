//! The Stripe connector's actions: create a customer, create a payment intent, refund.
//!
//! Requests are form-encoded with Stripe's bracket notation for nested values
//! (`metadata[order_id]=42`, `payment_method_types[0]=card`) and carry the step's idempotency
//! key as `Idempotency-Key`, so a retried step replays Stripe's first answer instead of charging
//! or creating twice.

use http::Method;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::common::{Call, Reply, header};
use crate::catalog::Credential;
use crate::error::ActionError;
use crate::http::GuardedClient;

/// Longest idempotency key Stripe accepts; longer keys are replaced by a digest of the key.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Runs one stripe action.
pub async fn run(
    client: &GuardedClient,
    action: &str,
    input: &Value,
    credential: Credential<'_>,
    idempotency_key: &str,
) -> Result<Value, ActionError> {
    let call = Call::new(action, credential);
    let result = run_inner(&call, client, action, input, idempotency_key).await;
    call.finish(result)
}

async fn run_inner(
    call: &Call<'_>,
    client: &GuardedClient,
    action: &str,
    input: &Value,
    idempotency_key: &str,
) -> Result<Value, ActionError> {
    let spec = call.spec(action)?;
    let obj = call.input(spec, input)?;
    let resource = match action {
        "create_customer" => "customers",
        "create_payment_intent" => {
            call.required_str(obj, "currency")?;
            call.positive_int(obj, "amount")?;
            "payment_intents"
        }
        "refund" => {
            let pi = call.optional_str(obj, "payment_intent")?;
            let charge = call.optional_str(obj, "charge")?;
            if pi.is_some() == charge.is_some() {
                return Err(ActionError::permanent(format!(
                    "{}: input needs exactly one of `payment_intent` (pi_…) or `charge` (ch_…), {}",
                    call.name,
                    if pi.is_some() {
                        "not both"
                    } else {
                        "got neither"
                    }
                )));
            }
            "refunds"
        }
        _ => {
            return Err(ActionError::permanent(format!(
                "`{}` has no implementation in this build of Weft",
                call.name
            )));
        }
    };
    let form = encode_form(call, obj)?;
    let key = idempotency_header(call, idempotency_key)?;
    let secret = call.secret("secret_key")?;
    let url = call.endpoint(&["v1", resource])?;

    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, call.bearer("secret_key", secret)?);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers.insert(header("idempotency-key"), key);
    let mut request = reqwest::Request::new(Method::POST, url);
    *request.headers_mut() = headers;
    *request.body_mut() = Some(form.into_bytes().into());

    let reply = call.send(client, request).await?;
    classify(call, reply)
}

/// The step's key as `Idempotency-Key`: as is when Stripe accepts it, else a stable digest of
/// it (the same on every retry, so still idempotent).
fn idempotency_header(call: &Call<'_>, key: &str) -> Result<HeaderValue, ActionError> {
    let key = if key.len() > MAX_IDEMPOTENCY_KEY {
        format!(
            "weft-sha256-{}",
            hex::encode(Sha256::digest(key.as_bytes()))
        )
    } else {
        key.to_owned()
    };
    if key.is_empty() {
        return Err(ActionError::permanent(format!(
            "{}: the step has no idempotency key; this is a bug in the caller, report it",
            call.name
        )));
    }
    HeaderValue::from_str(&key).map_err(|_| {
        ActionError::permanent(format!(
            "{}: the idempotency key contains characters not allowed in an HTTP header; this is a bug in the caller, report it",
            call.name
        ))
    })
}

/// The input as Stripe's form encoding: nested objects and arrays in bracket notation, `null`
/// left out. Brackets stay literal (as Stripe's own clients send them); everything else is
/// percent-encoded.
pub(crate) fn encode_form(
    call: &Call<'_>,
    obj: &Map<String, Value>,
) -> Result<String, ActionError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (key, value) in obj {
        flatten(call, key.clone(), key, value, &mut pairs)?;
    }
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&enc(&k).replace("%5B", "[").replace("%5D", "]"));
        out.push('=');
        out.push_str(&enc(&v));
    }
    Ok(out)
}

fn flatten(
    call: &Call<'_>,
    key: String,
    field: &str,
    value: &Value,
    out: &mut Vec<(String, String)>,
) -> Result<(), ActionError> {
    match value {
        Value::Null => {}
        Value::String(s) => out.push((key, s.clone())),
        Value::Bool(b) => out.push((key, b.to_string())),
        Value::Number(n) => out.push((key, n.to_string())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten(
                    call,
                    format!("{key}[{i}]"),
                    &format!("{field}[{i}]"),
                    item,
                    out,
                )?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let sub = format!("{field}.{k}");
                // Stripe parses brackets in names, so a key with one would mean something else.
                if k.is_empty() || k.contains(['[', ']']) {
                    return Err(call.bad_input(
                        &sub,
                        "has a key Stripe cannot take: keys must be non-empty and without '[' or ']'",
                    ));
                }
                flatten(call, format!("{key}[{k}]"), &sub, v, out)?;
            }
        }
    }
    Ok(())
}

/// Classifies Stripe's answer. `Stripe-Should-Retry`, when present, decides retryability;
/// otherwise 409, 429 and 5xx are retryable and other 4xx permanent.
fn classify(call: &Call<'_>, reply: Reply) -> Result<Value, ActionError> {
    let name = &call.name;
    let code = reply.status.as_u16();
    if reply.status.is_success() {
        return if reply.body.is_object() {
            Ok(reply.body)
        } else {
            Err(call.unexpected(&reply, "a Stripe JSON object"))
        };
    }
    let should_retry = match reply
        .header("stripe-should-retry")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    };
    let retryable =
        should_retry.unwrap_or(matches!(code, 409 | 429) || reply.status.is_server_error());
    let detail = detail(&reply.body);
    let cred = call.credential.name;
    let what = match code {
        401 => {
            format!("Stripe rejected the secret key (HTTP 401 {detail}); check credential '{cred}'")
        }
        402 => format!("Stripe declined the request (HTTP 402 {detail})"),
        403 => format!(
            "the key in credential '{cred}' may not do this (HTTP 403 {detail}); use a secret key or give the restricted key this permission"
        ),
        404 => format!("Stripe found no such object (HTTP 404 {detail})"),
        409 => format!(
            "another request with the same idempotency key is still in progress at Stripe (HTTP 409 {detail})"
        ),
        429 => format!("Stripe rate-limited the request (HTTP 429 {detail})"),
        500..=599 => format!("Stripe failed (HTTP {code} {detail})"),
        _ => format!("Stripe refused the request (HTTP {code} {detail})"),
    };
    let next = match (retryable, should_retry) {
        (true, Some(true)) => "; Stripe says it can be retried (Stripe-Should-Retry: true)",
        (true, _) => "; the step can be retried with the same idempotency key",
        (false, Some(false)) => {
            "; Stripe says retrying will not help (Stripe-Should-Retry: false): check the object in the Stripe dashboard before running the step again"
        }
        (false, _) => "",
    };
    let message = format!("{name}: {what}{next}");
    if retryable {
        let output = if code == 429 {
            reply.rate_limited_output()
        } else {
            reply.output()
        };
        Err(ActionError::Retryable {
            message,
            retry_after: reply.retry_after(),
            output: Some(output),
        })
    } else {
        Err(ActionError::Permanent {
            message,
            output: Some(reply.output()),
        })
    }
}

/// `type, code …, decline_code …, param …: message` from Stripe's `error` object.
fn detail(body: &Value) -> String {
    let Some(err) = body.get("error").filter(|e| e.is_object()) else {
        let e = super::common::excerpt(body);
        return if e.is_empty() {
            "with an empty body".into()
        } else {
            format!("answered: {e}")
        };
    };
    let s = |k: &str| err.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let mut parts: Vec<String> = Vec::new();
    if let Some(t) = s("type") {
        parts.push(t.to_owned());
    }
    for k in ["code", "decline_code", "param"] {
        if let Some(v) = s(k) {
            parts.push(format!("{k} {v}"));
        }
    }
    let head = parts.join(", ");
    match s("message") {
        Some(m) if head.is_empty() => m.to_owned(),
        Some(m) => format!("{head}: {m}"),
        None if head.is_empty() => "with no error details".into(),
        None => head,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::manifest;
    use serde_json::json;
    use weft_vault::SecretValues;

    fn call_with<R>(f: impl FnOnce(&Call<'_>) -> R) -> R {
        let values = SecretValues::new();
        let m = manifest::find("stripe", None).unwrap();
        f(&Call::new(
            "create_payment_intent",
            Credential {
                name: "s",
                values: &values,
                manifest: m,
            },
        ))
    }

    #[test]
    fn form_uses_brackets() {
        call_with(|call| {
            let obj = json!({
                "amount": 2000,
                "currency": "eur",
                "payment_method_types": ["card", "sepa_debit"],
                "metadata": {"order_id": "42", "note": "a&b=c ü"},
                "description": null
            });
            let form = encode_form(call, obj.as_object().unwrap()).unwrap();
            assert_eq!(
                form,
                "amount=2000&currency=eur&metadata[note]=a%26b%3Dc+%C3%BC&metadata[order_id]=42&payment_method_types[0]=card&payment_method_types[1]=sepa_debit"
            );
            let bad = json!({"metadata": {"a[b]": "x"}});
            let e = encode_form(call, bad.as_object().unwrap()).unwrap_err();
            assert!(e.message().contains("`metadata.a[b]`"), "{e}");
        });
    }

    #[test]
    fn long_idempotency_keys_become_stable_digests() {
        call_with(|call| {
            assert_eq!(idempotency_header(call, "r:s:0").unwrap(), "r:s:0");
            let long = "k".repeat(300);
            let a = idempotency_header(call, &long).unwrap();
            let b = idempotency_header(call, &long).unwrap();
            assert_eq!(a, b);
            assert!(a.len() <= MAX_IDEMPOTENCY_KEY);
            assert!(a.to_str().unwrap().starts_with("weft-sha256-"));
            assert!(idempotency_header(call, "").is_err());
            assert!(idempotency_header(call, "a\nb").is_err());
        });
    }

    #[test]
    fn details_quote_stripe_errors() {
        let body = json!({"error": {
            "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.", "param": ""
        }});
        assert_eq!(
            detail(&body),
            "card_error, code card_declined, decline_code insufficient_funds: Your card has insufficient funds."
        );
        assert_eq!(detail(&json!({"error": {"message": "m"}})), "m");
        assert_eq!(detail(&json!("oops")), "answered: oops");
        assert_eq!(detail(&Value::Null), "with an empty body");
    }
}
