//! Webhook signatures: providers' published vectors (tests/vectors/webhooks.json), then hostile
//! and boundary inputs. Pure and clock-free, so every case is deterministic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use weft_connectors::webhook::{
    DEFAULT_TOLERANCE_SECS, HmacAlgorithm, HmacScheme, Scheme, SigEncoding, SignatureError,
    Verified, sign, verify,
};

const TOL: u64 = DEFAULT_TOLERANCE_SECS;
const NOW: i64 = 1_700_000_000;

fn vectors() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/webhooks.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn vector(id: &str) -> Value {
    vectors()
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("vector {id} is gone from webhooks.json"))
}

/// The scheme a vector entry exercises; `None` for the entries handled elsewhere (Twilio, which
/// Weft does not support, and the legacy GitHub SHA-1 one, which must be rejected).
fn scheme_of(e: &Value) -> Option<Scheme> {
    let provider = e["provider"].as_str().unwrap();
    match provider {
        "GitHub" => Some(Scheme::GitHub),
        "Stripe" => Some(Scheme::Stripe {
            tolerance_secs: TOL,
        }),
        "Slack" => Some(Scheme::Slack {
            tolerance_secs: TOL,
        }),
        "Shopify" => Some(Scheme::Shopify),
        "Standard Webhooks / Svix" => Some(Scheme::StandardWebhooks {
            tolerance_secs: TOL,
        }),
        "GitHub (legacy X-Hub-Signature)" => None,
        p if p.starts_with("Twilio") => None,
        other => panic!("webhooks.json has a provider this test does not know: {other}"),
    }
}

fn supported() -> Vec<(Value, Scheme)> {
    vectors()
        .into_iter()
        .filter_map(|e| scheme_of(&e).map(|s| (e, s)))
        .collect()
}

fn secret_of(e: &Value) -> &str {
    e["secret"].as_str().unwrap()
}

fn body_of(e: &Value) -> Vec<u8> {
    e["body"].as_str().unwrap().as_bytes().to_vec()
}

fn ts_of(e: &Value) -> Option<i64> {
    e["timestamp"].as_i64()
}

/// The entry's own timestamp as "now", or any time for untimestamped schemes.
fn now_of(e: &Value) -> i64 {
    ts_of(e).unwrap_or(NOW)
}

fn headers_of(e: &Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in e["headers"].as_object().unwrap() {
        map.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value.as_str().unwrap()).unwrap(),
        );
    }
    map
}

fn to_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn set(map: &mut HeaderMap, name: &str, value: &str) {
    map.insert(
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_str(value).unwrap(),
    );
}

/// The header carrying the signature itself (as opposed to ids and timestamps).
fn sig_header(scheme: &Scheme) -> String {
    match scheme {
        Scheme::GitHub => "x-hub-signature-256".into(),
        Scheme::Stripe { .. } => "stripe-signature".into(),
        Scheme::Slack { .. } => "x-slack-signature".into(),
        Scheme::StandardWebhooks { .. } => "webhook-signature".into(),
        Scheme::Shopify => "x-shopify-hmac-sha256".into(),
        Scheme::Hmac(h) => h.header.to_ascii_lowercase(),
    }
}

/// A secret valid for every scheme (Standard Webhooks needs base64 after `whsec_`).
fn fixture_secret() -> String {
    format!("whsec_{}", STANDARD.encode(b"weft-fixture-key-do-not-leak"))
}

fn all_schemes() -> Vec<Scheme> {
    vec![
        Scheme::GitHub,
        Scheme::Stripe {
            tolerance_secs: TOL,
        },
        Scheme::Slack {
            tolerance_secs: TOL,
        },
        Scheme::StandardWebhooks {
            tolerance_secs: TOL,
        },
        Scheme::Shopify,
        Scheme::Hmac(HmacScheme::new("X-Signature")),
    ]
}

fn signed(scheme: &Scheme, secret: &str, body: &[u8], ts: i64) -> HeaderMap {
    to_map(&sign(scheme, secret, body, ts, "msg_fixture_1").unwrap())
}

fn header_is(err: &SignatureError, expected: &str) -> bool {
    match err {
        SignatureError::MissingHeader { header }
        | SignatureError::Malformed { header, .. }
        | SignatureError::Mismatch { header } => header.eq_ignore_ascii_case(expected),
        _ => false,
    }
}

#[test]
fn published_vectors_verify_and_sign_reproduces_them() {
    let mut covered = Vec::new();
    for (e, scheme) in supported() {
        let id = e["id"].as_str().unwrap();
        let got = verify(
            &scheme,
            secret_of(&e),
            &headers_of(&e),
            &body_of(&e),
            now_of(&e),
        );
        assert_eq!(
            got,
            Ok(Verified {
                timestamp: ts_of(&e)
            }),
            "{id}"
        );

        // msg_id only matters for Standard Webhooks, whose id is one of the published headers.
        let msg_id = e["headers"]["webhook-id"].as_str().unwrap_or("unused");
        let ts = ts_of(&e).unwrap_or(0);
        let out = sign(&scheme, secret_of(&e), &body_of(&e), ts, msg_id).unwrap();
        let published = e["headers"].as_object().unwrap();
        assert_eq!(out.len(), published.len(), "{id}: {out:?}");
        for (name, value) in published {
            let name = name.to_ascii_lowercase();
            assert!(
                out.iter().any(|(n, v)| *n == name && v == value),
                "{id}: sign() did not reproduce {name}: {out:?}"
            );
        }
        let sig = out.iter().find(|(n, _)| *n == sig_header(&scheme)).unwrap();
        assert_eq!(sig.1, e["expected_header_value"].as_str().unwrap(), "{id}");
        covered.push(scheme);
    }
    for scheme in all_schemes() {
        if !matches!(scheme, Scheme::Hmac(_)) {
            assert!(covered.contains(&scheme), "no vector covers {scheme:?}");
        }
    }
}

#[test]
fn twilio_vectors_are_present_and_deliberately_unsupported() {
    let twilio = vectors()
        .into_iter()
        .filter(|e| e["provider"].as_str().unwrap().starts_with("Twilio"))
        .count();
    assert!(twilio >= 1, "the Twilio entries this test skips are gone");
    assert_eq!(Scheme::for_provider("twilio"), None);
}

#[test]
fn github_sha1_only_delivery_is_rejected() {
    let e = vector("github-x-hub-signature-sha1-legacy-derived");
    let err = verify(
        &Scheme::GitHub,
        secret_of(&e),
        &headers_of(&e),
        &body_of(&e),
        NOW,
    )
    .unwrap_err();
    assert!(
        matches!(&err, SignatureError::MissingHeader { header } if header.eq_ignore_ascii_case("X-Hub-Signature-256")),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("X-Hub-Signature-256") && msg.contains("SHA-1"),
        "{msg}"
    );

    // The SHA-1 value itself is right: the rejection is policy, not bad data.
    let legacy = Scheme::Hmac(HmacScheme {
        header: "X-Hub-Signature".into(),
        algorithm: HmacAlgorithm::Sha1,
        encoding: SigEncoding::Hex,
        prefix: Some("sha1=".into()),
    });
    verify(&legacy, secret_of(&e), &headers_of(&e), &body_of(&e), NOW).unwrap();
    let out = sign(&legacy, secret_of(&e), &body_of(&e), 0, "").unwrap();
    assert_eq!(out[0].1, e["expected_header_value"].as_str().unwrap());
}

#[test]
fn extra_cases_from_the_vectors() {
    let mut ran = 0;
    let mut listed = 0;
    for e in vectors() {
        let Some(cases) = e["extra_cases"].as_array() else {
            continue;
        };
        listed += cases.len();
        let scheme = scheme_of(&e).expect("extra cases on an unsupported provider");
        for case in cases {
            run_extra_case(&e, &scheme, case);
            ran += 1;
        }
    }
    assert_eq!(ran, listed);
    assert!(ran >= 8, "extra cases went missing: {ran}");
}

fn run_extra_case(e: &Value, scheme: &Scheme, case: &Value) {
    let text = case["case"].as_str().unwrap();
    let accept = match case["expect"].as_str().unwrap() {
        x if x.starts_with("accept") => true,
        x if x.starts_with("reject") => false,
        other => panic!("{text}: unknown expectation {other}"),
    };
    let secret = secret_of(e);
    let body = body_of(e);
    let now = now_of(e);
    let ts = ts_of(e).unwrap();
    let with_sig = |value: &str| {
        let mut h = headers_of(e);
        set(&mut h, &sig_header(scheme), value);
        h
    };
    let check = |r: &Result<Verified, SignatureError>| {
        assert_eq!(r.is_ok(), accept, "{text}: {r:?}");
    };

    if text.starts_with("key rotation") {
        let h = with_sig(case["header"].as_str().unwrap());
        let old = case["old_secret"].as_str().unwrap();
        for s in [secret, old] {
            check(&verify(scheme, s, &h, &body, now));
        }
        // The second v1 really is the old secret's, so the rotation path is exercised.
        let old_sig = &sign(scheme, old, &body, ts, "").unwrap()[0].1;
        let v1 = old_sig.split_once(",v1=").unwrap().1;
        assert!(case["header"].as_str().unwrap().ends_with(v1), "{text}");
        let err = verify(scheme, "whsec_some_other_secret", &h, &body, now).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
    } else if text.starts_with("unknown/bad extra signature")
        || text.starts_with("multi-signature header")
    {
        check(&verify(
            scheme,
            secret,
            &with_sig(case["header"].as_str().unwrap()),
            &body,
            now,
        ));
    } else if text.starts_with("only v0 scheme") {
        let r = verify(
            scheme,
            secret,
            &with_sig(case["header"].as_str().unwrap()),
            &body,
            now,
        );
        check(&r);
        assert!(matches!(r, Err(SignatureError::Malformed { .. })), "{r:?}");
        assert!(r.unwrap_err().to_string().contains("v1"));
    } else if text.starts_with("body with one trailing space") {
        let mut spaced = body.clone();
        spaced.push(b' ');
        let r = verify(scheme, secret, &headers_of(e), &spaced, now);
        check(&r);
        assert!(matches!(r, Err(SignatureError::Mismatch { .. })), "{r:?}");
    } else if text.starts_with("invalid signature") {
        let r = verify(
            scheme,
            secret,
            &with_sig(case["header"].as_str().unwrap()),
            &body,
            now,
        );
        check(&r);
        assert!(matches!(r, Err(SignatureError::Mismatch { .. })), "{r:?}");
    } else if text.starts_with("missing webhook-id / webhook-timestamp / webhook-signature") {
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut h = headers_of(e);
            h.remove(name);
            let r = verify(scheme, secret, &h, &body, now);
            check(&r);
            assert!(
                matches!(&r, Err(SignatureError::MissingHeader { header }) if header == name),
                "{name}: {r:?}"
            );
        }
        let mut h = headers_of(e);
        set(&mut h, "webhook-timestamp", "hello");
        let r = verify(scheme, secret, &h, &body, now);
        check(&r);
        assert!(
            matches!(&r, Err(e @ SignatureError::Malformed { .. }) if header_is(e, "webhook-timestamp")),
            "{r:?}"
        );
    } else if text.starts_with("timestamp now-5min-1s or now+5min+1s") {
        // The delivery's timestamp is fixed, so move "now" around it.
        let five_min = i64::try_from(TOL).unwrap();
        for (now, age) in [
            (ts + five_min + 1, five_min + 1),
            (ts - five_min - 1, -five_min - 1),
        ] {
            let r = verify(scheme, secret, &headers_of(e), &body, now);
            check(&r);
            assert_eq!(
                r,
                Err(SignatureError::Stale {
                    age_secs: age,
                    tolerance_secs: TOL
                })
            );
        }
        for now in [ts + five_min, ts - five_min] {
            verify(scheme, secret, &headers_of(e), &body, now).unwrap();
        }
    } else {
        panic!("extra case {text:?} has no check here; add one");
    }
}

#[test]
fn tampered_body_by_one_byte_is_rejected() {
    for (e, scheme) in supported() {
        let mut body = body_of(&e);
        for i in [0, body.len() / 2, body.len() - 1] {
            let mut tampered = body.clone();
            tampered[i] ^= 0x01;
            let err = verify(
                &scheme,
                secret_of(&e),
                &headers_of(&e),
                &tampered,
                now_of(&e),
            )
            .unwrap_err();
            assert!(header_is(&err, &sig_header(&scheme)), "{err:?}");
            assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
        }
        body.truncate(body.len() - 1);
        let err = verify(&scheme, secret_of(&e), &headers_of(&e), &body, now_of(&e)).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
        let err = verify(&scheme, secret_of(&e), &headers_of(&e), b"", now_of(&e)).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
    }
}

#[test]
fn empty_body_round_trips() {
    let secret = fixture_secret();
    for scheme in all_schemes() {
        let h = signed(&scheme, &secret, b"", NOW);
        verify(&scheme, &secret, &h, b"", NOW).unwrap();
        let err = verify(&scheme, &secret, &h, b" ", NOW).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
    }
}

#[test]
fn wrong_secret_is_rejected() {
    // Still valid base64, so Standard Webhooks reaches the comparison.
    let wrong = format!("whsec_{}", STANDARD.encode(b"another key entirely"));
    for (e, scheme) in supported() {
        let mut secrets = vec![wrong.clone()];
        // Near misses; Standard Webhooks secrets must stay base64 to reach the comparison.
        if !matches!(scheme, Scheme::StandardWebhooks { .. }) {
            secrets.push("x".to_owned());
            secrets.push(format!("{}x", secret_of(&e)));
            secrets.push(secret_of(&e).to_ascii_uppercase());
        }
        for secret in secrets {
            let err = verify(&scheme, &secret, &headers_of(&e), &body_of(&e), now_of(&e));
            assert!(
                matches!(err, Err(SignatureError::Mismatch { .. })),
                "{}: {err:?}",
                e["id"]
            );
        }
    }
}

#[test]
fn timestamps_at_tolerance_boundaries() {
    let secret = fixture_secret();
    let body = br#"{"event":"boundary"}"#;
    for tolerance_secs in [0, 10, TOL] {
        let tol = i64::try_from(tolerance_secs).unwrap();
        for scheme in [
            Scheme::Stripe { tolerance_secs },
            Scheme::Slack { tolerance_secs },
            Scheme::StandardWebhooks { tolerance_secs },
        ] {
            for ts in [NOW - tol, NOW, NOW + tol] {
                let got = verify(
                    &scheme,
                    &secret,
                    &signed(&scheme, &secret, body, ts),
                    body,
                    NOW,
                );
                assert_eq!(
                    got,
                    Ok(Verified {
                        timestamp: Some(ts)
                    }),
                    "{scheme:?} ts={ts}"
                );
            }
            for (ts, age_secs) in [(NOW - tol - 1, tol + 1), (NOW + tol + 1, -tol - 1)] {
                let err = verify(
                    &scheme,
                    &secret,
                    &signed(&scheme, &secret, body, ts),
                    body,
                    NOW,
                )
                .unwrap_err();
                assert_eq!(
                    err,
                    SignatureError::Stale {
                        age_secs,
                        tolerance_secs
                    },
                    "{scheme:?}"
                );
                let msg = err.to_string();
                let direction = if age_secs < 0 { "in the future" } else { "old" };
                assert!(msg.contains(direction) && msg.contains("clock"), "{msg}");
            }
        }
    }
    // Untimestamped schemes ignore the clock entirely.
    for scheme in [Scheme::GitHub, Scheme::Shopify] {
        let h = signed(&scheme, &secret, body, 0);
        for now in [i64::MIN, 0, i64::MAX] {
            assert_eq!(
                verify(&scheme, &secret, &h, body, now),
                Ok(Verified { timestamp: None })
            );
        }
    }
}

#[test]
fn extreme_timestamps_do_not_overflow() {
    let secret = fixture_secret();
    let body = b"{}";
    for scheme in [
        Scheme::Stripe {
            tolerance_secs: TOL,
        },
        Scheme::Slack {
            tolerance_secs: TOL,
        },
        Scheme::StandardWebhooks {
            tolerance_secs: TOL,
        },
    ] {
        let h = signed(&scheme, &secret, body, i64::MAX);
        verify(&scheme, &secret, &h, body, i64::MAX).unwrap();
        let err = verify(&scheme, &secret, &h, body, i64::MIN).unwrap_err();
        assert!(
            matches!(err, SignatureError::Stale { age_secs, .. } if age_secs < 0),
            "{err:?}"
        );
        let h = signed(&scheme, &secret, body, 0);
        let err = verify(&scheme, &secret, &h, body, i64::MAX).unwrap_err();
        assert!(
            matches!(
                err,
                SignatureError::Stale {
                    age_secs: i64::MAX,
                    ..
                }
            ),
            "{err:?}"
        );

        let err = sign(&scheme, &secret, body, -1, "msg_1").unwrap_err();
        assert!(matches!(err, SignatureError::Malformed { .. }), "{err:?}");
    }

    // The widest tolerance still cannot overflow.
    let wide = Scheme::Stripe {
        tolerance_secs: u64::MAX,
    };
    let h = signed(&wide, &secret, body, 0);
    verify(&wide, &secret, &h, body, i64::MIN).unwrap();

    // Timestamps that are not a non-negative i64 of digits are malformed, not a panic.
    let stripe = Scheme::Stripe {
        tolerance_secs: TOL,
    };
    let slack = Scheme::Slack {
        tolerance_secs: TOL,
    };
    let sig = "0".repeat(64);
    for t in [
        "99999999999999999999999",
        "9223372036854775808",
        "-5",
        "+5",
        "1.5",
        "12 34",
        "abc",
        "",
    ] {
        let mut h = HeaderMap::new();
        set(&mut h, "stripe-signature", &format!("t={t},v1={sig}"));
        let err = verify(&stripe, &secret, &h, body, NOW).unwrap_err();
        assert!(header_is(&err, "Stripe-Signature"), "{t}: {err:?}");
        assert!(
            matches!(err, SignatureError::Malformed { .. }),
            "{t}: {err:?}"
        );

        let mut h = HeaderMap::new();
        set(&mut h, "x-slack-signature", &format!("v0={sig}"));
        set(&mut h, "x-slack-request-timestamp", t);
        let err = verify(&slack, &secret, &h, body, NOW).unwrap_err();
        assert!(
            matches!(&err, SignatureError::Malformed { header, .. } if header.eq_ignore_ascii_case("x-slack-request-timestamp")),
            "{t}: {err:?}"
        );
    }
}

#[test]
fn non_ascii_header_values_are_malformed() {
    let secret = fixture_secret();
    for scheme in all_schemes() {
        let mut h = signed(&scheme, &secret, b"{}", NOW);
        let name = HeaderName::from_bytes(sig_header(&scheme).as_bytes()).unwrap();
        for raw in [
            "sha256=\u{e9}t\u{e9}".as_bytes(),
            &[b'v', b'1', 0xff, 0xfe][..],
            &b"t=1,v1=\x80"[..],
        ] {
            h.insert(name.clone(), HeaderValue::from_bytes(raw).unwrap());
            let err = verify(&scheme, &secret, &h, b"{}", NOW).unwrap_err();
            assert!(
                matches!(&err, SignatureError::Malformed { reason, .. } if reason.contains("ASCII")),
                "{scheme:?}: {err:?}"
            );
        }
        // A tab is a legal header byte but never part of a signature.
        h.insert(name.clone(), HeaderValue::from_static("v1,a\tb"));
        assert!(verify(&scheme, &secret, &h, b"{}", NOW).is_err());
    }
    // The timestamp and id headers go through the same check.
    let sw = Scheme::StandardWebhooks {
        tolerance_secs: TOL,
    };
    for name in ["webhook-id", "webhook-timestamp"] {
        let mut h = signed(&sw, &secret, b"{}", NOW);
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_bytes("m\u{fc}ll".as_bytes()).unwrap(),
        );
        let err = verify(&sw, &secret, &h, b"{}", NOW).unwrap_err();
        assert!(header_is(&err, name), "{err:?}");
    }
}

#[test]
fn huge_headers_are_an_error_not_a_panic() {
    let secret = fixture_secret();
    let valid_stripe = sign(
        &Scheme::Stripe {
            tolerance_secs: TOL,
        },
        &secret,
        b"{}",
        NOW,
        "",
    )
    .unwrap()
    .remove(0)
    .1;
    for scheme in all_schemes() {
        let good = signed(&scheme, &secret, b"{}", NOW);
        let fillers = [
            "a".repeat(100 * 1024),
            format!("{},v1={}", valid_stripe, "0".repeat(100 * 1024)),
            format!("t={NOW}{}", ",v1=00".repeat(20_000)),
            format!("{} ", "v1,AAAA".repeat(15_000)),
        ];
        for filler in &fillers {
            let mut h = good.clone();
            set(&mut h, &sig_header(&scheme), filler);
            let err = verify(&scheme, &secret, &h, b"{}", NOW).unwrap_err();
            assert!(
                matches!(&err, SignatureError::Malformed { reason, .. } if reason.contains("bytes")),
                "{scheme:?}: {err:?}"
            );
        }
        // Every header the scheme reads is bounded, not only the signature.
        for name in scheme.required_headers() {
            let mut h = good.clone();
            set(&mut h, &name, &"7".repeat(100 * 1024));
            let err = verify(&scheme, &secret, &h, b"{}", NOW).unwrap_err();
            assert!(header_is(&err, &name), "{name}: {err:?}");
        }
    }
}

#[test]
fn signature_entries_beyond_the_cap_are_ignored() {
    let secret = fixture_secret();
    let body = b"{}";
    let stripe = Scheme::Stripe {
        tolerance_secs: TOL,
    };
    let valid = sign(&stripe, &secret, body, NOW, "").unwrap().remove(0).1;
    let valid_v1 = valid.split_once(",v1=").unwrap().1;
    let junk = format!(",v1={}", "0".repeat(64)).repeat(40);
    let mut h = HeaderMap::new();
    set(
        &mut h,
        "stripe-signature",
        &format!("t={NOW},v1={valid_v1}{junk}"),
    );
    verify(&stripe, &secret, &h, body, NOW).unwrap();
    set(
        &mut h,
        "stripe-signature",
        &format!("t={NOW}{junk},v1={valid_v1}"),
    );
    let err = verify(&stripe, &secret, &h, body, NOW).unwrap_err();
    assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");

    let sw = Scheme::StandardWebhooks {
        tolerance_secs: TOL,
    };
    let mut h = signed(&sw, &secret, body, NOW);
    let valid = h["webhook-signature"].to_str().unwrap().to_owned();
    let junk = format!(" v1,{}", STANDARD.encode([0u8; 32])).repeat(40);
    set(&mut h, "webhook-signature", &format!("{valid}{junk}"));
    verify(&sw, &secret, &h, body, NOW).unwrap();
    set(
        &mut h,
        "webhook-signature",
        &format!("{}{junk} {valid}", &junk[1..]),
    );
    let err = verify(&sw, &secret, &h, body, NOW).unwrap_err();
    assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
}

#[test]
fn stripe_header_shapes() {
    let e = vector("stripe-signature-v1-derived");
    let scheme = scheme_of(&e).unwrap();
    let (secret, body, now) = (secret_of(&e), body_of(&e), now_of(&e));
    let published = e["expected_header_value"].as_str().unwrap();
    let v1 = published.split_once(",v1=").unwrap().1;
    let run = |value: &str| {
        let mut h = HeaderMap::new();
        set(&mut h, "Stripe-Signature", value);
        verify(&scheme, secret, &h, &body, now)
    };

    // Accepted: order, spacing, unknown items and upper-case hex do not matter.
    for ok in [
        format!("v1={v1},t=12345"),
        format!("t=12345, v1={v1}"),
        format!("t=12345,v0=abc,foo=bar,junk,v1={v1}"),
        format!("t=12345,v1={}", v1.to_ascii_uppercase()),
        format!("t=12345,v1=zz,v1={v1}"),
    ] {
        assert_eq!(
            run(&ok),
            Ok(Verified {
                timestamp: Some(12345)
            }),
            "{ok}"
        );
    }

    // Malformed: each names the header and says what the sender must send.
    for (bad, needle) in [
        (format!("v1={v1}"), "t="),
        (format!("t=12345,t=12345,v1={v1}"), "more than one"),
        (format!("t=12345,t=99999,v1={v1}"), "more than one"),
        (format!("t=12345,v0={v1}"), "v1"),
        ("t=12345".to_owned(), "v1"),
        ("t=12345,v1=not-hex".to_owned(), "hex"),
        (",,,".to_owned(), "t="),
        ("=".to_owned(), "t="),
    ] {
        let err = run(&bad).unwrap_err();
        assert!(
            matches!(&err, SignatureError::Malformed { header, reason } if header == "Stripe-Signature" && reason.contains(needle)),
            "{bad}: {err:?}"
        );
    }

    // The right signature under another timestamp is a mismatch, not a pass.
    let err = run(&format!("t=12346,v1={v1}")).unwrap_err();
    assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");

    let err = verify(&scheme, secret, &HeaderMap::new(), &body, now).unwrap_err();
    assert_eq!(
        err,
        SignatureError::MissingHeader {
            header: "Stripe-Signature".into()
        }
    );
}

#[test]
fn slack_and_shopify_header_shapes() {
    let e = vector("slack-v0-docs");
    let scheme = scheme_of(&e).unwrap();
    let (secret, body, now) = (secret_of(&e), body_of(&e), now_of(&e));
    let sig = e["headers"]["X-Slack-Signature"].as_str().unwrap();
    for (bad, kind) in [
        (sig.replacen("v0=", "v1=", 1), "Malformed"),
        (sig.replacen("v0=", "", 1), "Malformed"),
        (format!("{sig}0"), "Malformed"),
        (format!("{sig}00"), "Mismatch"),
        ("v0=".to_owned(), "Malformed"),
    ] {
        let mut h = headers_of(&e);
        set(&mut h, "X-Slack-Signature", &bad);
        let err = verify(&scheme, secret, &h, &body, now).unwrap_err();
        assert!(format!("{err:?}").starts_with(kind), "{bad}: {err:?}");
    }
    let mut h = headers_of(&e);
    h.remove("x-slack-request-timestamp");
    let err = verify(&scheme, secret, &h, &body, now).unwrap_err();
    assert!(header_is(&err, "X-Slack-Request-Timestamp"), "{err:?}");

    let e = vector("shopify-hmac-sha256-base64-sqlpage");
    let (secret, body) = (secret_of(&e), body_of(&e));
    let sig = e["headers"]["X-Shopify-Hmac-Sha256"].as_str().unwrap();
    for (value, accept) in [
        (sig.trim_end_matches('=').to_owned(), true),
        (sig.replace('/', "_"), false),
        ("%%%".to_owned(), false),
        (STANDARD.encode([0u8; 32]), false),
    ] {
        let mut h = HeaderMap::new();
        set(&mut h, "x-shopify-hmac-sha256", &value);
        let r = verify(&Scheme::Shopify, secret, &h, &body, NOW);
        assert_eq!(r.is_ok(), accept, "{value}: {r:?}");
    }
}

#[test]
fn standard_webhooks_secret_forms() {
    let e = vector("standard-webhooks-v1-sign");
    let scheme = scheme_of(&e).unwrap();
    let (body, now) = (body_of(&e), now_of(&e));
    let secret = secret_of(&e);
    let bare = secret.strip_prefix("whsec_").unwrap();
    for s in [secret, bare] {
        verify(&scheme, s, &headers_of(&e), &body, now).unwrap();
    }
    for bad in [
        "whsec_not base64!",
        "not-base64-at-all!!",
        "whsec_",
        "whsec_=",
        "whsec_A",
    ] {
        let err = verify(&scheme, bad, &headers_of(&e), &body, now).unwrap_err();
        assert!(
            matches!(err, SignatureError::BadSecret { .. }),
            "{bad}: {err:?}"
        );
        assert!(!err.to_string().contains(bad), "{err}");
        let err = sign(&scheme, bad, &body, now, "msg_1").unwrap_err();
        assert!(
            matches!(err, SignatureError::BadSecret { .. }),
            "{bad}: {err:?}"
        );
    }
    // Only the v1 entries count; a header of other versions says so.
    let mut h = headers_of(&e);
    set(&mut h, "webhook-signature", "v1a,abcd v2,abcd");
    let err = verify(&scheme, secret, &h, &body, now).unwrap_err();
    assert!(matches!(err, SignatureError::Malformed { .. }), "{err:?}");
    set(&mut h, "webhook-signature", "v1,***");
    let err = verify(&scheme, secret, &h, &body, now).unwrap_err();
    assert!(matches!(err, SignatureError::Malformed { .. }), "{err:?}");
    // The id is signed: another id fails.
    let mut h = headers_of(&e);
    set(&mut h, "webhook-id", "msg_other");
    let err = verify(&scheme, secret, &h, &body, now).unwrap_err();
    assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
}

#[test]
fn empty_secret_is_a_bad_secret_everywhere() {
    for scheme in all_schemes() {
        let h = signed(&scheme, &fixture_secret(), b"{}", NOW);
        let err = verify(&scheme, "", &h, b"{}", NOW).unwrap_err();
        assert!(matches!(err, SignatureError::BadSecret { .. }), "{err:?}");
        let err = sign(&scheme, "", b"{}", NOW, "msg_1").unwrap_err();
        assert!(matches!(err, SignatureError::BadSecret { .. }), "{err:?}");
    }
}

#[test]
fn missing_and_duplicate_headers() {
    let secret = fixture_secret();
    for scheme in all_schemes() {
        let good = signed(&scheme, &secret, b"{}", NOW);
        for name in scheme.required_headers() {
            let mut h = good.clone();
            h.remove(&name);
            let err = verify(&scheme, &secret, &h, b"{}", NOW).unwrap_err();
            assert!(
                matches!(&err, SignatureError::MissingHeader { header } if header.eq_ignore_ascii_case(&name)),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains("sender"), "{err}");

            // A second copy, even an identical one, is ambiguous.
            let mut h = good.clone();
            let value = h[name.as_str()].clone();
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            let err = verify(&scheme, &secret, &h, b"{}", NOW).unwrap_err();
            assert!(
                matches!(&err, SignatureError::Malformed { reason, .. } if reason.contains("more than once")),
                "{name}: {err:?}"
            );

            let mut h = good.clone();
            set(&mut h, &name, "   ");
            let err = verify(&scheme, &secret, &h, b"{}", NOW).unwrap_err();
            assert!(header_is(&err, &name), "{name}: {err:?}");
        }
    }
}

#[test]
fn hmac_scheme_variants_round_trip() {
    let secret = "hmac-fixture-secret";
    let body = br#"{"order":42}"#;
    let mut n = 0;
    for algorithm in [
        HmacAlgorithm::Sha1,
        HmacAlgorithm::Sha256,
        HmacAlgorithm::Sha512,
    ] {
        for encoding in [SigEncoding::Hex, SigEncoding::Base64] {
            for prefix in [None, Some("sha256="), Some("v1:")] {
                let scheme = Scheme::Hmac(HmacScheme {
                    header: "X-Weft-Signature".into(),
                    algorithm,
                    encoding,
                    prefix: prefix.map(str::to_owned),
                });
                let out = sign(&scheme, secret, body, 0, "").unwrap();
                assert_eq!(out.len(), 1);
                assert_eq!(out[0].0, "x-weft-signature");
                let value = out[0].1.clone();
                assert!(value.starts_with(prefix.unwrap_or("")), "{value}");
                let h = to_map(&out);
                assert_eq!(
                    verify(&scheme, secret, &h, body, NOW),
                    Ok(Verified { timestamp: None })
                );
                let err = verify(&scheme, secret, &h, b"{\"order\":43}", NOW).unwrap_err();
                assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");

                let bare = value.strip_prefix(prefix.unwrap_or("")).unwrap();
                let mut h2 = HeaderMap::new();
                if let Some(p) = prefix {
                    // The prefix is required when configured (its case is not significant).
                    set(&mut h2, "x-weft-signature", bare);
                    let err = verify(&scheme, secret, &h2, body, NOW).unwrap_err();
                    assert!(matches!(err, SignatureError::Malformed { .. }), "{err:?}");
                    set(
                        &mut h2,
                        "X-WEFT-SIGNATURE",
                        &format!("{}{bare}", p.to_ascii_uppercase()),
                    );
                    verify(&scheme, secret, &h2, body, NOW).unwrap();
                }
                if encoding == SigEncoding::Hex {
                    let upper = format!("{}{}", prefix.unwrap_or(""), bare.to_ascii_uppercase());
                    set(&mut h2, "x-weft-signature", &upper);
                    verify(&scheme, secret, &h2, body, NOW).unwrap();
                }
                // A value in the other encoding is malformed or a mismatch, never accepted.
                let other = match encoding {
                    SigEncoding::Hex => STANDARD.encode(hex::decode(bare).unwrap()),
                    SigEncoding::Base64 => hex::encode(STANDARD.decode(bare).unwrap()),
                };
                set(
                    &mut h2,
                    "x-weft-signature",
                    &format!("{}{other}", prefix.unwrap_or("")),
                );
                assert!(verify(&scheme, secret, &h2, body, NOW).is_err());
                n += 1;
            }
        }
    }
    assert_eq!(n, 18);
}

#[test]
fn hmac_scheme_matches_reference_values() {
    // RFC 2202 / RFC 4231 test case 2.
    let body = b"what do ya want for nothing?";
    for (algorithm, expected) in [
        (
            HmacAlgorithm::Sha1,
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        ),
        (
            HmacAlgorithm::Sha256,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            HmacAlgorithm::Sha512,
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        ),
    ] {
        let scheme = Scheme::Hmac(HmacScheme {
            algorithm,
            ..HmacScheme::new("X-Sig")
        });
        assert_eq!(sign(&scheme, "Jefe", body, 0, "").unwrap()[0].1, expected);
    }

    // The GitHub and Shopify vectors expressed as plain HMAC schemes.
    let gh = vector("github-x-hub-signature-256-docs");
    let as_hmac = Scheme::Hmac(HmacScheme {
        prefix: Some("sha256=".into()),
        ..HmacScheme::new("X-Hub-Signature-256")
    });
    verify(
        &as_hmac,
        secret_of(&gh),
        &headers_of(&gh),
        &body_of(&gh),
        NOW,
    )
    .unwrap();
    let sh = vector("shopify-hmac-sha256-base64-sqlpage");
    let as_hmac = Scheme::Hmac(HmacScheme {
        encoding: SigEncoding::Base64,
        ..HmacScheme::new("X-Shopify-Hmac-Sha256")
    });
    verify(
        &as_hmac,
        secret_of(&sh),
        &headers_of(&sh),
        &body_of(&sh),
        NOW,
    )
    .unwrap();
}

#[test]
fn sign_rejects_what_it_cannot_express() {
    let secret = fixture_secret();
    let sw = Scheme::StandardWebhooks {
        tolerance_secs: TOL,
    };
    for id in ["", "msg 1", "msg\n1", "m\u{fc}"] {
        let err = sign(&sw, &secret, b"{}", NOW, id).unwrap_err();
        assert!(header_is(&err, "webhook-id"), "{id:?}: {err:?}");
    }
    for header in ["", "bad header", "x-sig\n"] {
        let scheme = Scheme::Hmac(HmacScheme::new(header));
        assert!(matches!(
            sign(&scheme, &secret, b"{}", 0, ""),
            Err(SignatureError::Malformed { .. })
        ));
        assert!(matches!(
            verify(&scheme, &secret, &HeaderMap::new(), b"{}", NOW),
            Err(SignatureError::Malformed { .. })
        ));
    }
    let scheme = Scheme::Hmac(HmacScheme {
        prefix: Some("sha 256=".into()),
        ..HmacScheme::new("x-sig")
    });
    assert!(matches!(
        sign(&scheme, &secret, b"{}", 0, ""),
        Err(SignatureError::Malformed { .. })
    ));
}

#[test]
fn error_messages_never_leak_the_secret_or_the_expected_signature() {
    let secret = fixture_secret();
    let key = "weft-fixture-key-do-not-leak";
    let body = b"{\"a\":1}";
    let mut errors = Vec::new();
    for scheme in all_schemes() {
        let good = signed(&scheme, &secret, body, NOW);
        let expected: Vec<String> = sign(&scheme, &secret, body, NOW, "msg_fixture_1")
            .unwrap()
            .into_iter()
            .filter(|(n, _)| *n == sig_header(&scheme))
            .map(|(_, v)| v)
            .collect();
        let mut collect = |r: Result<Verified, SignatureError>| {
            let err = r.unwrap_err();
            errors.push((err.to_string(), expected.clone()));
        };
        collect(verify(&scheme, &secret, &good, b"tampered", NOW));
        collect(verify(&scheme, &secret, &HeaderMap::new(), body, NOW));
        collect(verify(&scheme, "", &good, body, NOW));
        for bad in ["zz", "sha256=zz", "t=1,v1=zz", "v0=zz", "v1,***"] {
            let mut h = good.clone();
            set(&mut h, &sig_header(&scheme), bad);
            collect(verify(&scheme, &secret, &h, body, NOW));
        }
        if matches!(
            scheme,
            Scheme::Stripe { .. } | Scheme::Slack { .. } | Scheme::StandardWebhooks { .. }
        ) {
            collect(verify(&scheme, &secret, &good, body, NOW + 10_000));
            collect(verify(&scheme, "whsec_!!not-base64!!", &good, body, NOW));
        }
    }
    let sw = Scheme::StandardWebhooks {
        tolerance_secs: TOL,
    };
    let err = verify(&sw, "whsec_!!not-base64!!", &HeaderMap::new(), body, NOW).unwrap_err();
    errors.push((err.to_string(), Vec::new()));

    assert!(errors.len() > 30);
    for (msg, expected) in errors {
        assert!(!msg.is_empty());
        for needle in [secret.as_str(), &secret[6..], key, "not-base64!!"] {
            assert!(!msg.contains(needle), "leaked {needle:?} in: {msg}");
        }
        for sig in expected {
            // Even a 16-character piece of the expected MAC must not appear.
            let bare = sig.rsplit([',', '=']).find(|s| s.len() > 16).unwrap();
            assert!(
                !msg.contains(&bare[..16]),
                "leaked the expected signature in: {msg}"
            );
        }
    }
}

#[test]
fn providers_and_required_headers() {
    for (name, expected) in [
        ("github", Some(Scheme::GitHub)),
        ("GitHub", Some(Scheme::GitHub)),
        (
            "stripe",
            Some(Scheme::Stripe {
                tolerance_secs: 300,
            }),
        ),
        (
            "slack",
            Some(Scheme::Slack {
                tolerance_secs: 300,
            }),
        ),
        (
            "standard-webhooks",
            Some(Scheme::StandardWebhooks {
                tolerance_secs: 300,
            }),
        ),
        (
            "standard_webhooks",
            Some(Scheme::StandardWebhooks {
                tolerance_secs: 300,
            }),
        ),
        (
            "svix",
            Some(Scheme::StandardWebhooks {
                tolerance_secs: 300,
            }),
        ),
        ("shopify", Some(Scheme::Shopify)),
        ("twilio", None),
        ("", None),
        ("http", None),
    ] {
        assert_eq!(Scheme::for_provider(name), expected, "{name}");
    }
    assert_eq!(Scheme::GitHub.required_headers(), ["x-hub-signature-256"]);
    assert_eq!(
        Scheme::for_provider("slack").unwrap().required_headers(),
        ["x-slack-request-timestamp", "x-slack-signature"]
    );
    assert_eq!(
        Scheme::for_provider("svix").unwrap().required_headers(),
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    );
    assert_eq!(
        Scheme::Hmac(HmacScheme::new("X-Sig")).required_headers(),
        ["x-sig"]
    );
    // sign() emits exactly the required headers, so docs and behaviour agree.
    for scheme in all_schemes() {
        let mut names: Vec<String> = sign(&scheme, &fixture_secret(), b"", NOW, "msg_1")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut required = scheme.required_headers();
        names.sort();
        required.sort();
        assert_eq!(names, required, "{scheme:?}");
    }
}
