//! Webhook signature schemes: GitHub, Stripe, Slack, Standard Webhooks (Svix), Shopify and a
//! configurable plain HMAC.
//!
//! Everything here is pure: no I/O and no clock (callers pass `now_unix`), so verification is
//! reproducible and testable against providers' published vectors. Signatures are compared in
//! constant time through [`Mac::verify_slice`], and no error message ever contains the secret or
//! the expected signature.

use ::http::{HeaderMap, HeaderName};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::digest::InvalidLength;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha512};

/// The default replay window, in seconds, for timestamped schemes (what Stripe, Slack and
/// Standard Webhooks recommend).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Longest header value parsed; real senders stay far below this, so anything longer is hostile.
const MAX_HEADER_LEN: usize = 8 * 1024;

/// Most signature entries tried per header; later ones are ignored to bound the work per request.
const MAX_SIGNATURES: usize = 32;

const GITHUB_SIG: &str = "X-Hub-Signature-256";
const STRIPE_SIG: &str = "Stripe-Signature";
const SLACK_SIG: &str = "X-Slack-Signature";
const SLACK_TS: &str = "X-Slack-Request-Timestamp";
const STD_ID: &str = "webhook-id";
const STD_TS: &str = "webhook-timestamp";
const STD_SIG: &str = "webhook-signature";
const SHOPIFY_SIG: &str = "X-Shopify-Hmac-Sha256";

/// Base64 that accepts values with or without `=` padding (senders differ), still rejecting
/// non-canonical trailing bits.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which signature scheme a webhook trigger verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// GitHub `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`; the legacy SHA-1
    /// `X-Hub-Signature` alone is not accepted.
    GitHub,
    /// Stripe `Stripe-Signature: t=..,v1=..[,v1=..]` over `"{t}.{body}"`, keyed with the secret
    /// as UTF-8 including its `whsec_` prefix.
    Stripe {
        /// Largest accepted distance, in seconds, between `t` and now (either direction).
        tolerance_secs: u64,
    },
    /// Slack `X-Slack-Signature: v0=<hex>` over `"v0:{X-Slack-Request-Timestamp}:{body}"`.
    Slack {
        /// Largest accepted distance, in seconds, between the timestamp and now.
        tolerance_secs: u64,
    },
    /// Standard Webhooks (Svix): `webhook-id`, `webhook-timestamp` and `webhook-signature`
    /// (`v1,<base64>` entries) over `"{id}.{timestamp}.{body}"`, keyed with the base64-decoded
    /// secret (optional `whsec_` prefix).
    StandardWebhooks {
        /// Largest accepted distance, in seconds, between the timestamp and now.
        tolerance_secs: u64,
    },
    /// Shopify `X-Shopify-Hmac-Sha256: base64(HMAC-SHA256(secret, body))`.
    Shopify,
    /// Plain HMAC of the raw body in a configurable header.
    Hmac(HmacScheme),
}

/// A plain HMAC of the raw body, sent in one header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    /// Header carrying the signature (matched case-insensitively).
    pub header: String,
    /// Hash function of the HMAC.
    pub algorithm: HmacAlgorithm,
    /// How the MAC is written in the header.
    pub encoding: SigEncoding,
    /// Text before the encoded MAC (e.g. `sha256=`); required when set, matched ignoring case.
    pub prefix: Option<String>,
}

impl HmacScheme {
    /// HMAC-SHA256, hex-encoded, without prefix, in `header`.
    pub fn new(header: impl Into<String>) -> Self {
        HmacScheme {
            header: header.into(),
            algorithm: HmacAlgorithm::default(),
            encoding: SigEncoding::default(),
            prefix: None,
        }
    }
}

/// Hash function of an [`HmacScheme`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA1, only for senders that offer nothing stronger.
    Sha1,
    /// HMAC-SHA512.
    Sha512,
}

/// Text encoding of a MAC in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigEncoding {
    /// Hexadecimal, either case when verifying, lowercase when signing.
    #[default]
    Hex,
    /// Standard base64 (padding optional when verifying, present when signing).
    Base64,
}

/// A delivery whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed timestamp, for schemes that have one.
    pub timestamp: Option<i64>,
}

/// Why a delivery's signature was not accepted, or why signing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header the scheme needs is absent.
    #[error(
        "the delivery is missing the `{header}` header; {}",
        missing_hint(header)
    )]
    MissingHeader {
        /// The header's name.
        header: String,
    },
    /// A header is present but cannot be parsed.
    #[error("the `{header}` header is malformed: {reason}")]
    Malformed {
        /// The header's name.
        header: String,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// No signature in the header matches the body under the configured secret.
    #[error(
        "the `{header}` signature does not match the request body; check that the signing secret \
         stored for this trigger is the one the sender signs with (after a rotation, update it), \
         and that nothing between the sender and Weft rewrites the body"
    )]
    Mismatch {
        /// The signature header's name.
        header: String,
    },
    /// The signature is valid but its timestamp is outside the tolerance.
    #[error("{}", stale_message(*age_secs, *tolerance_secs))]
    Stale {
        /// Now minus the signed timestamp; negative when the timestamp is in the future.
        age_secs: i64,
        /// The tolerance that was exceeded.
        tolerance_secs: u64,
    },
    /// The configured secret cannot be used with this scheme.
    #[error("the signing secret is unusable: {reason}")]
    BadSecret {
        /// What is wrong with it and what to do (never the secret itself).
        reason: String,
    },
}

fn missing_hint(header: &str) -> &'static str {
    if header.eq_ignore_ascii_case(GITHUB_SIG) {
        "the sender must sign deliveries with SHA-256: GitHub sends this header once the webhook \
         has a secret, and the legacy SHA-1 `X-Hub-Signature` header alone is not accepted"
    } else {
        "the sender must sign every delivery with the shared secret and send this header; check \
         that signing is enabled on the sender and that no proxy strips the header"
    }
}

fn stale_message(age_secs: i64, tolerance_secs: u64) -> String {
    let when = if age_secs < 0 {
        format!("{} s in the future", age_secs.unsigned_abs())
    } else {
        format!("{age_secs} s old")
    };
    format!(
        "the signed timestamp is {when}, outside the {tolerance_secs} s tolerance; this is either \
         a replayed delivery or a clock problem: check that the sender's and Weft's clocks are \
         synchronised (NTP)"
    )
}

impl Scheme {
    /// The scheme a connector name implies (`github`, `stripe`, `slack`, `standard-webhooks` /
    /// `standard_webhooks` / `svix`, `shopify`), with the default tolerance; `None` otherwise.
    pub fn for_provider(name: &str) -> Option<Scheme> {
        let tolerance_secs = DEFAULT_TOLERANCE_SECS;
        let scheme = match name.to_ascii_lowercase().as_str() {
            "github" => Scheme::GitHub,
            "stripe" => Scheme::Stripe { tolerance_secs },
            "slack" => Scheme::Slack { tolerance_secs },
            "standard-webhooks" | "standard_webhooks" | "svix" => {
                Scheme::StandardWebhooks { tolerance_secs }
            }
            "shopify" => Scheme::Shopify,
            _ => return None,
        };
        Some(scheme)
    }

    /// The headers a sender must set (lowercase), for error messages and docs.
    pub fn required_headers(&self) -> Vec<String> {
        let names: &[&str] = match self {
            Scheme::GitHub => &[GITHUB_SIG],
            Scheme::Stripe { .. } => &[STRIPE_SIG],
            Scheme::Slack { .. } => &[SLACK_TS, SLACK_SIG],
            Scheme::StandardWebhooks { .. } => &[STD_ID, STD_TS, STD_SIG],
            Scheme::Shopify => &[SHOPIFY_SIG],
            Scheme::Hmac(h) => return vec![h.header.to_ascii_lowercase()],
        };
        names.iter().map(|n| n.to_ascii_lowercase()).collect()
    }
}

/// Verifies one delivery: `body` exactly as received, `now_unix` the current Unix time.
pub fn verify(
    scheme: &Scheme,
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
) -> Result<Verified, SignatureError> {
    require_secret(secret)?;
    match scheme {
        Scheme::GitHub => {
            let value = header_str(headers, GITHUB_SIG)?;
            let sig = decode_hex(GITHUB_SIG, strip_prefix(GITHUB_SIG, value, "sha256=")?)?;
            let mac = Keyed::new(HmacAlgorithm::Sha256, secret.as_bytes())?.chain(body);
            accept_any(GITHUB_SIG, &mac, &[sig], None)
        }
        Scheme::Stripe { tolerance_secs } => {
            verify_stripe(secret, headers, body, now_unix, *tolerance_secs)
        }
        Scheme::Slack { tolerance_secs } => {
            let value = header_str(headers, SLACK_SIG)?;
            let sig = decode_hex(SLACK_SIG, strip_prefix(SLACK_SIG, value, "v0=")?)?;
            let ts_raw = header_str(headers, SLACK_TS)?;
            let ts = parse_timestamp(SLACK_TS, ts_raw)?;
            // The raw header text is signed, not a re-rendering of the parsed number.
            let mac = Keyed::new(HmacAlgorithm::Sha256, secret.as_bytes())?
                .chain(b"v0:")
                .chain(ts_raw.as_bytes())
                .chain(b":")
                .chain(body);
            accept_any(SLACK_SIG, &mac, &[sig], None)?;
            check_age(ts, now_unix, *tolerance_secs)?;
            Ok(Verified {
                timestamp: Some(ts),
            })
        }
        Scheme::StandardWebhooks { tolerance_secs } => {
            verify_standard(secret, headers, body, now_unix, *tolerance_secs)
        }
        Scheme::Shopify => {
            let value = header_str(headers, SHOPIFY_SIG)?;
            let sig = decode_base64(SHOPIFY_SIG, value)?;
            let mac = Keyed::new(HmacAlgorithm::Sha256, secret.as_bytes())?.chain(body);
            accept_any(SHOPIFY_SIG, &mac, &[sig], None)
        }
        Scheme::Hmac(h) => {
            let name = h.header.as_str();
            let mut value = header_str(headers, name)?;
            if let Some(prefix) = &h.prefix {
                value = strip_prefix(name, value, prefix)?;
            }
            let sig = match h.encoding {
                SigEncoding::Hex => decode_hex(name, value)?,
                SigEncoding::Base64 => decode_base64(name, value)?,
            };
            let mac = Keyed::new(h.algorithm, secret.as_bytes())?.chain(body);
            accept_any(name, &mac, &[sig], None)
        }
    }
}

fn verify_stripe(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: u64,
) -> Result<Verified, SignatureError> {
    let value = header_str(headers, STRIPE_SIG)?;
    let mut t_raw = None;
    let mut v1_seen = 0usize;
    let mut sigs = Vec::new();
    for item in value.split(',') {
        // Items without `=` are ignored like unknown schemes, as Stripe's own libraries do.
        let Some((key, val)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if t_raw.is_some() => {
                return Err(malformed(
                    STRIPE_SIG,
                    "carries more than one `t=` timestamp, so it is ambiguous which one was \
                     signed; the sender must send exactly one",
                ));
            }
            "t" => t_raw = Some(val),
            "v1" => {
                v1_seen += 1;
                // Undecodable entries are skipped rather than fatal: another v1 may still match.
                if v1_seen <= MAX_SIGNATURES
                    && let Ok(sig) = hex::decode(val)
                {
                    sigs.push(sig);
                }
            }
            // v0 (legacy test mode) and unknown schemes are deliberately ignored.
            _ => {}
        }
    }
    let Some(t_raw) = t_raw else {
        return Err(malformed(
            STRIPE_SIG,
            "has no `t=` timestamp; the sender must send `t=<unix seconds>,v1=<hex signature>`",
        ));
    };
    let ts = parse_timestamp(STRIPE_SIG, t_raw)?;
    if v1_seen == 0 {
        return Err(malformed(
            STRIPE_SIG,
            "carries no `v1=` signature (v0 and other schemes are not accepted); the sender must \
             sign with the v1 scheme",
        ));
    }
    if sigs.is_empty() {
        return Err(malformed(
            STRIPE_SIG,
            "none of its `v1=` signatures is hexadecimal; the sender must send \
             `v1=<hex HMAC-SHA256>`",
        ));
    }
    let mac = Keyed::new(HmacAlgorithm::Sha256, secret.as_bytes())?
        .chain(t_raw.as_bytes())
        .chain(b".")
        .chain(body);
    accept_any(STRIPE_SIG, &mac, &sigs, Some(ts))?;
    check_age(ts, now_unix, tolerance_secs)?;
    Ok(Verified {
        timestamp: Some(ts),
    })
}

fn verify_standard(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: u64,
) -> Result<Verified, SignatureError> {
    let key = standard_key(secret)?;
    let id = header_str(headers, STD_ID)?;
    let ts_raw = header_str(headers, STD_TS)?;
    let ts = parse_timestamp(STD_TS, ts_raw)?;
    let value = header_str(headers, STD_SIG)?;
    let mut v1_seen = 0usize;
    let mut sigs = Vec::new();
    for entry in value.split_ascii_whitespace() {
        let Some(("v1", sig)) = entry.split_once(',') else {
            // Other versions (e.g. asymmetric v1a) are not ours to check.
            continue;
        };
        v1_seen += 1;
        if v1_seen > MAX_SIGNATURES {
            break;
        }
        if let Ok(sig) = BASE64_LENIENT.decode(sig) {
            sigs.push(sig);
        }
    }
    if v1_seen == 0 {
        return Err(malformed(
            STD_SIG,
            "carries no `v1,<base64>` signature; the sender must sign with the v1 (HMAC-SHA256) \
             scheme",
        ));
    }
    if sigs.is_empty() {
        return Err(malformed(
            STD_SIG,
            "none of its `v1,` signatures is valid base64; the sender must send \
             `v1,<base64 HMAC-SHA256>`",
        ));
    }
    let mac = Keyed::new(HmacAlgorithm::Sha256, &key)?
        .chain(id.as_bytes())
        .chain(b".")
        .chain(ts_raw.as_bytes())
        .chain(b".")
        .chain(body);
    accept_any(STD_SIG, &mac, &sigs, Some(ts))?;
    check_age(ts, now_unix, tolerance_secs)?;
    Ok(Verified {
        timestamp: Some(ts),
    })
}

/// Signs `body` as the provider would and returns the headers to send (lowercase names);
/// `timestamp` is used by timestamped schemes and `msg_id` by Standard Webhooks.
pub fn sign(
    scheme: &Scheme,
    secret: &str,
    body: &[u8],
    timestamp: i64,
    msg_id: &str,
) -> Result<Vec<(String, String)>, SignatureError> {
    require_secret(secret)?;
    let lower = |name: &str| name.to_ascii_lowercase();
    let headers = match scheme {
        Scheme::GitHub => {
            let mac = Keyed::new(HmacAlgorithm::Sha256, secret.as_bytes())?.chain(body);
            vec![(
                lower(GITHUB_SIG),
                format!("sha256={}", hex::encode(mac.finalize())),
            )]
        }
        Scheme::Stripe { .. } => {
            let t = signable_timestamp(STRIPE_SIG, timestamp)?;
            let mac = Keyed::new(HmacAlgorithm::Sha256, secret.as_bytes())?
                .chain(t.as_bytes())
                .chain(b".")
                .chain(body);
            vec![(
                lower(STRIPE_SIG),
                format!("t={t},v1={}", hex::encode(mac.finalize())),
            )]
        }
        Scheme::Slack { .. } => {
            let t = signable_timestamp(SLACK_TS, timestamp)?;
            let mac = Keyed::new(HmacAlgorithm::Sha256, secret.as_bytes())?
                .chain(b"v0:")
                .chain(t.as_bytes())
                .chain(b":")
                .chain(body);
            vec![
                (lower(SLACK_TS), t),
                (
                    lower(SLACK_SIG),
                    format!("v0={}", hex::encode(mac.finalize())),
                ),
            ]
        }
        Scheme::StandardWebhooks { .. } => {
            let key = standard_key(secret)?;
            let t = signable_timestamp(STD_TS, timestamp)?;
            if !is_token(msg_id) {
                return Err(malformed(
                    STD_ID,
                    "must be a non-empty message id of visible ASCII without spaces; pass a \
                     unique id per message",
                ));
            }
            let mac = Keyed::new(HmacAlgorithm::Sha256, &key)?
                .chain(msg_id.as_bytes())
                .chain(b".")
                .chain(t.as_bytes())
                .chain(b".")
                .chain(body);
            vec![
                (lower(STD_ID), msg_id.to_owned()),
                (lower(STD_TS), t),
                (
                    lower(STD_SIG),
                    format!("v1,{}", STANDARD.encode(mac.finalize())),
                ),
            ]
        }
        Scheme::Shopify => {
            let mac = Keyed::new(HmacAlgorithm::Sha256, secret.as_bytes())?.chain(body);
            vec![(lower(SHOPIFY_SIG), STANDARD.encode(mac.finalize()))]
        }
        Scheme::Hmac(h) => {
            let name = header_name(&h.header)?;
            let prefix = h.prefix.as_deref().unwrap_or("");
            if !prefix.is_empty() && !is_token(prefix) {
                return Err(malformed(
                    &h.header,
                    "has a prefix that is not visible ASCII without spaces; fix the prefix in the \
                     trigger's signature settings",
                ));
            }
            let mac = Keyed::new(h.algorithm, secret.as_bytes())?
                .chain(body)
                .finalize();
            let encoded = match h.encoding {
                SigEncoding::Hex => hex::encode(mac),
                SigEncoding::Base64 => STANDARD.encode(mac),
            };
            vec![(name.as_str().to_owned(), format!("{prefix}{encoded}"))]
        }
    };
    Ok(headers)
}

/// An HMAC keyed and fed with the signed content, ready to compare or finalize.
#[derive(Clone)]
enum Keyed {
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
}

impl Keyed {
    fn new(algorithm: HmacAlgorithm, key: &[u8]) -> Result<Self, SignatureError> {
        Ok(match algorithm {
            HmacAlgorithm::Sha1 => Keyed::Sha1(Hmac::new_from_slice(key).map_err(bad_key)?),
            HmacAlgorithm::Sha256 => Keyed::Sha256(Hmac::new_from_slice(key).map_err(bad_key)?),
            HmacAlgorithm::Sha512 => Keyed::Sha512(Hmac::new_from_slice(key).map_err(bad_key)?),
        })
    }

    fn chain(mut self, data: &[u8]) -> Self {
        match &mut self {
            Keyed::Sha1(m) => m.update(data),
            Keyed::Sha256(m) => m.update(data),
            Keyed::Sha512(m) => m.update(data),
        }
        self
    }

    /// Constant-time comparison with one candidate (a length mismatch fails early; the length
    /// is not secret).
    fn matches(&self, candidate: &[u8]) -> bool {
        match self.clone() {
            Keyed::Sha1(m) => m.verify_slice(candidate).is_ok(),
            Keyed::Sha256(m) => m.verify_slice(candidate).is_ok(),
            Keyed::Sha512(m) => m.verify_slice(candidate).is_ok(),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            Keyed::Sha1(m) => m.finalize().into_bytes().to_vec(),
            Keyed::Sha256(m) => m.finalize().into_bytes().to_vec(),
            Keyed::Sha512(m) => m.finalize().into_bytes().to_vec(),
        }
    }
}

/// HMAC takes keys of any length, so this only fires if the hmac crate changes its contract.
fn bad_key(_: InvalidLength) -> SignatureError {
    SignatureError::BadSecret {
        reason: "it was rejected as an HMAC key; use the secret exactly as the sender shows it"
            .to_owned(),
    }
}

fn accept_any(
    header: &str,
    mac: &Keyed,
    candidates: &[Vec<u8>],
    timestamp: Option<i64>,
) -> Result<Verified, SignatureError> {
    if candidates.iter().any(|c| mac.matches(c)) {
        Ok(Verified { timestamp })
    } else {
        Err(SignatureError::Mismatch {
            header: header.to_owned(),
        })
    }
}

fn require_secret(secret: &str) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::BadSecret {
            reason: "it is empty; store the signing secret the sender uses in the trigger's \
                     credential"
                .to_owned(),
        });
    }
    Ok(())
}

/// The Standard Webhooks key: the base64 part of the secret, with or without `whsec_`.
fn standard_key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = BASE64_LENIENT
        .decode(encoded)
        .map_err(|_| SignatureError::BadSecret {
            reason: "a Standard Webhooks secret must be base64, optionally prefixed with \
                     `whsec_`; copy it exactly as the sender shows it"
                .to_owned(),
        })?;
    if key.is_empty() {
        return Err(SignatureError::BadSecret {
            reason: "the Standard Webhooks secret decodes to an empty key; copy the whole secret \
                     as the sender shows it"
                .to_owned(),
        });
    }
    Ok(key)
}

fn malformed(header: &str, reason: &str) -> SignatureError {
    SignatureError::Malformed {
        header: header.to_owned(),
        reason: reason.to_owned(),
    }
}

fn header_name(name: &str) -> Result<HeaderName, SignatureError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        malformed(
            name,
            "is not a valid HTTP header name; fix the header in the trigger's signature settings",
        )
    })
}

/// The single value of `name`, trimmed, bounded and visible ASCII.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, SignatureError> {
    let key = header_name(name)?;
    let mut values = headers.get_all(&key).iter();
    let Some(value) = values.next() else {
        return Err(SignatureError::MissingHeader {
            header: name.to_owned(),
        });
    };
    if values.next().is_some() {
        return Err(malformed(
            name,
            "was sent more than once, so it is ambiguous which to check; the sender must send it \
             exactly once",
        ));
    }
    if value.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed {
            header: name.to_owned(),
            reason: format!(
                "is {} bytes long, more than the {MAX_HEADER_LEN} bytes accepted; the sender must \
                 send only its current signatures",
                value.len()
            ),
        });
    }
    let text = value.to_str().map_err(|_| {
        malformed(
            name,
            "contains bytes that are not visible ASCII; the sender must send it exactly in the \
             provider's format",
        )
    })?;
    let text = text.trim_matches([' ', '\t']);
    if text.is_empty() {
        return Err(malformed(
            name,
            "is empty; the sender must put the signature in it",
        ));
    }
    Ok(text)
}

/// `value` without `prefix` (compared ignoring ASCII case), which must be there.
fn strip_prefix<'a>(header: &str, value: &'a str, prefix: &str) -> Result<&'a str, SignatureError> {
    match value.split_at_checked(prefix.len()) {
        Some((head, rest)) if head.eq_ignore_ascii_case(prefix) => Ok(rest),
        _ => Err(SignatureError::Malformed {
            header: header.to_owned(),
            reason: format!(
                "does not start with `{prefix}`; the sender must send `{prefix}<signature>`"
            ),
        }),
    }
}

fn decode_hex(header: &str, value: &str) -> Result<Vec<u8>, SignatureError> {
    require_signature(header, value)?;
    hex::decode(value).map_err(|_| {
        malformed(
            header,
            "the signature is not hexadecimal; the sender must send the MAC as hex digits",
        )
    })
}

fn decode_base64(header: &str, value: &str) -> Result<Vec<u8>, SignatureError> {
    require_signature(header, value)?;
    BASE64_LENIENT.decode(value).map_err(|_| {
        malformed(
            header,
            "the signature is not base64; the sender must send the MAC in standard base64",
        )
    })
}

/// An empty MAC would decode fine and then merely mismatch; say what is actually wrong.
fn require_signature(header: &str, value: &str) -> Result<(), SignatureError> {
    if value.is_empty() {
        return Err(malformed(
            header,
            "carries an empty signature; the sender must put the MAC after the prefix",
        ));
    }
    Ok(())
}

/// Digits only: signs, spaces and fractions are refused so the signed text has one spelling.
fn parse_timestamp(header: &str, raw: &str) -> Result<i64, SignatureError> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(
            header,
            "the timestamp is not a whole number of seconds since the Unix epoch; the sender \
             must send digits only",
        ));
    }
    raw.parse().map_err(|_| {
        malformed(
            header,
            "the timestamp does not fit in 64 bits; the sender must send the Unix time in \
             seconds",
        )
    })
}

fn signable_timestamp(header: &str, timestamp: i64) -> Result<String, SignatureError> {
    if timestamp < 0 {
        return Err(malformed(
            header,
            "cannot carry a negative timestamp; pass the current Unix time in seconds",
        ));
    }
    Ok(timestamp.to_string())
}

/// Rejects timestamps further than `tolerance_secs` from now, either way; the boundary is
/// accepted. Saturating math keeps hostile timestamps from overflowing.
fn check_age(ts: i64, now_unix: i64, tolerance_secs: u64) -> Result<(), SignatureError> {
    let age_secs = now_unix.saturating_sub(ts);
    if age_secs.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::Stale {
            age_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

/// Visible ASCII without spaces, as header values built from it must round-trip exactly.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_HEADER_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}
