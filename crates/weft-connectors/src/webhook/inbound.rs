//! What a verified delivery means: its event name, its provider delivery id (for dedupe) and
//! any answer the provider expects at once (Slack's `url_verification`).

use http::HeaderMap;
use serde_json::{Value, json};

use super::signature::{DEFAULT_TOLERANCE_SECS, HmacAlgorithm, HmacScheme, Scheme, SigEncoding};

/// Longest delivery id or event name kept; longer ones are cut (they only name things).
const MAX_NAME: usize = 200;

/// What intake learns from a verified delivery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inbound {
    /// Event name, e.g. `issues.opened`, `payment_intent.succeeded`, `app_mention`.
    pub event: Option<String>,
    /// The provider's id of this delivery; a redelivery carries the same one.
    pub delivery_id: Option<String>,
    /// A body to answer with at once instead of starting a run.
    pub immediate: Option<Value>,
}

/// The parts of a plain HMAC scheme as a flow writes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct HmacParts<'a> {
    /// Header name.
    pub header: &'a str,
    /// `sha256`, `sha1` or `sha512`.
    pub algorithm: Option<&'a str>,
    /// `hex` or `base64`.
    pub encoding: Option<&'a str>,
    /// Text before the signature.
    pub prefix: Option<&'a str>,
}

/// The signature scheme for a trigger's scheme name (`github`, `stripe`, `slack`,
/// `standard-webhooks`, `shopify`, `hmac`); `None` for unknown names.
pub fn scheme(name: &str, hmac: Option<HmacParts<'_>>) -> Option<Scheme> {
    if name == "hmac" {
        let h = hmac?;
        return Some(Scheme::Hmac(HmacScheme {
            header: h.header.to_string(),
            algorithm: match h.algorithm {
                Some("sha1") => HmacAlgorithm::Sha1,
                Some("sha512") => HmacAlgorithm::Sha512,
                _ => HmacAlgorithm::Sha256,
            },
            encoding: match h.encoding {
                Some("base64") => SigEncoding::Base64,
                _ => SigEncoding::Hex,
            },
            prefix: h.prefix.map(str::to_string),
        }));
    }
    let s = Scheme::for_provider(name)?;
    Some(match s {
        Scheme::Stripe { .. } => Scheme::Stripe {
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        },
        other => other,
    })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn cut(s: &str) -> String {
    s.chars().take(MAX_NAME).collect()
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty()).map(cut)
}

/// Reads a verified delivery of `connector` under `scheme`.
pub fn inspect(connector: &str, scheme: &str, headers: &HeaderMap, body: &Value) -> Inbound {
    match connector {
        "github" => {
            let kind = header(headers, "x-github-event").map(cut);
            let action = text(body, &["action"]);
            Inbound {
                event: kind.map(|k| match action {
                    Some(a) => format!("{k}.{a}"),
                    None => k,
                }),
                delivery_id: header(headers, "x-github-delivery").map(cut),
                immediate: None,
            }
        }
        "stripe" => Inbound {
            event: text(body, &["type"]),
            delivery_id: text(body, &["id"]),
            immediate: None,
        },
        "slack" => match text(body, &["type"]).as_deref() {
            Some("url_verification") => Inbound {
                event: Some("url_verification".into()),
                delivery_id: None,
                immediate: Some(
                    json!({"challenge": body.get("challenge").cloned().unwrap_or(Value::Null)}),
                ),
            },
            Some("event_callback") => Inbound {
                event: text(body, &["event", "type"]),
                delivery_id: text(body, &["event_id"]),
                immediate: None,
            },
            other => Inbound {
                event: other.map(str::to_string),
                delivery_id: None,
                immediate: None,
            },
        },
        _ => Inbound {
            event: text(body, &["type"]),
            delivery_id: match scheme {
                "standard-webhooks" => header(headers, "webhook-id").map(cut),
                "shopify" => header(headers, "x-shopify-webhook-id")
                    .or_else(|| header(headers, "x-shopify-event-id"))
                    .map(cut),
                _ => None,
            },
            immediate: None,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn provider_events_and_delivery_ids() {
        let gh = inspect(
            "github",
            "github",
            &hs(&[("x-github-event", "issues"), ("x-github-delivery", "d-1")]),
            &json!({"action": "opened"}),
        );
        assert_eq!(gh.event.as_deref(), Some("issues.opened"));
        assert_eq!(gh.delivery_id.as_deref(), Some("d-1"));
        let push = inspect(
            "github",
            "github",
            &hs(&[("x-github-event", "push")]),
            &json!({}),
        );
        assert_eq!(push.event.as_deref(), Some("push"));

        let st = inspect(
            "stripe",
            "stripe",
            &HeaderMap::new(),
            &json!({"id": "evt_1", "type": "charge.refunded"}),
        );
        assert_eq!(
            (st.event.as_deref(), st.delivery_id.as_deref()),
            (Some("charge.refunded"), Some("evt_1"))
        );

        let ch = inspect(
            "slack",
            "slack",
            &HeaderMap::new(),
            &json!({"type": "url_verification", "challenge": "abc"}),
        );
        assert_eq!(ch.immediate, Some(json!({"challenge": "abc"})));
        let ev = inspect(
            "slack",
            "slack",
            &HeaderMap::new(),
            &json!({"type": "event_callback", "event_id": "Ev1", "event": {"type": "app_mention"}}),
        );
        assert_eq!(
            (ev.event.as_deref(), ev.delivery_id.as_deref()),
            (Some("app_mention"), Some("Ev1"))
        );

        let sw = inspect(
            "webhook",
            "standard-webhooks",
            &hs(&[("webhook-id", "msg_1")]),
            &json!({"type": "user.created"}),
        );
        assert_eq!(
            (sw.event.as_deref(), sw.delivery_id.as_deref()),
            (Some("user.created"), Some("msg_1"))
        );
        let sh = inspect(
            "webhook",
            "shopify",
            &hs(&[("x-shopify-webhook-id", "w1")]),
            &json!(1),
        );
        assert_eq!(sh.delivery_id.as_deref(), Some("w1"));
        let long = "x".repeat(1000);
        let l = inspect("stripe", "stripe", &HeaderMap::new(), &json!({"id": long}));
        assert_eq!(l.delivery_id.unwrap().len(), MAX_NAME);
    }

    #[test]
    fn scheme_names() {
        assert_eq!(scheme("github", None), Some(Scheme::GitHub));
        assert!(matches!(
            scheme("stripe", None),
            Some(Scheme::Stripe {
                tolerance_secs: 300
            })
        ));
        assert!(scheme("hmac", None).is_none());
        let h = scheme(
            "hmac",
            Some(HmacParts {
                header: "X-Sig",
                algorithm: Some("sha1"),
                encoding: Some("base64"),
                prefix: Some("sha1="),
            }),
        )
        .unwrap();
        let Scheme::Hmac(h) = h else { panic!() };
        assert_eq!(
            (h.algorithm, h.encoding),
            (HmacAlgorithm::Sha1, SigEncoding::Base64)
        );
        assert!(scheme("rot13", None).is_none());
    }
}
