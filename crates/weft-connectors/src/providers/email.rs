//! The email connector: `email.send` sends one message through the credential's SMTP server.
//!
//! # Credential
//!
//! `host`, `port` (default by `tls`: 587 for `starttls`, 465 for `tls`, 25 for `none`),
//! `username` and `password` (AUTH PLAIN or LOGIN; both or neither), `tls` (`starttls`, the
//! default: STARTTLS is *required* before the login and the mail; `tls`: implicit TLS; `none`:
//! plain text, trusted networks only), `ca_cert` (PEM of a private CA, trusted *instead of* the
//! public roots) and `from` (the default sender).
//!
//! # Network policy
//!
//! The host is resolved here and every address is checked against the client's [`NetPolicy`]
//! exactly as outbound HTTP and `postgres` are (same refusal messages). The connection is then
//! made to the checked IP itself, so a second DNS answer cannot redirect it (no DNS rebinding),
//! while TLS still verifies the certificate against the host *name* (lettre takes the address
//! to connect to and the TLS server name separately). Permitted addresses are tried in turn
//! until one answers with a greeting.
//!
//! # Message
//!
//! Built with lettre's builder: `text` alone is a `text/plain` body, `text` + `html` a
//! `multipart/alternative`, and attachments wrap the body in a `multipart/mixed`. `Bcc` goes into
//! the envelope only, never into the message. Every address, the subject, attachment names and
//! extra headers are checked before anything is sent: line breaks and other control characters
//! are refused (no header injection), and `headers` cannot override the structural headers
//! (`From`, `To`, `Content-Type`, …).
//!
//! # Idempotency
//!
//! SMTP has no idempotency key. The `Message-ID` is derived from the step's idempotency key
//! (`<` + the first 32 hex digits of its SHA-256 + `@` + the sender's domain + `>`), so every
//! retry of a step carries the same one and receivers that deduplicate by Message-ID drop a
//! repeat. A retry after an ambiguous failure (the connection lost after the message was sent,
//! before the server's answer) may still deliver the message twice to receivers that do not.
//! A recipient refused at `RCPT TO` stops the whole send before `DATA`: nothing is delivered to
//! anyone, so a retry never repeats a partial delivery.
//!
//! # Errors
//!
//! Bad input and credential fields, the network policy, an untrusted or mismatched certificate,
//! a server without STARTTLS (when required) and every 5xx answer (535: the login was refused)
//! are permanent. Connection failures, timeouts and 4xx answers are retryable; a 4xx that says
//! it is a rate limit ("too many…", "rate limit", "throttl…", "quota") is marked
//! `rate_limited`. The output of an SMTP answer is `{smtp_code, enhanced_code, response, stage,
//! recipient}` (the code is not called `status`, which the engine reads as an HTTP status).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lettre::address::{Address, Envelope};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Body, Mailbox, MessageBuilder, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, CertificateStore, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::common::{Call, kind, permitted_addresses};
use crate::catalog::Credential;
use crate::error::ActionError;
use crate::http::{DEFAULT_TIMEOUT, GuardedClient, NetPolicy};

/// Longest time spent opening one connection (TCP, and TLS for `tls: tls`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time one send may take, from resolving the host to the server's final answer.
pub const SEND_TIMEOUT: Duration = DEFAULT_TIMEOUT;
/// Most envelope recipients (to + cc + bcc) of one message; many servers refuse more than 100.
pub const MAX_RECIPIENTS: usize = 100;
/// Largest total size of the attachments, decoded.
pub const MAX_ATTACHMENT_BYTES: usize = 25 * 1024 * 1024;
/// Time given to a polite QUIT after the work is done or failed.
const GOODBYE: Duration = Duration::from_secs(1);
/// Login mechanisms, in order of preference.
const MECHANISMS: &[Mechanism] = &[Mechanism::Plain, Mechanism::Login];
/// Longest excerpt of an SMTP answer quoted in a message.
const EXCERPT_CHARS: usize = 300;

/// Headers that `headers` may not set: the builder writes them from the structured input, and
/// letting input replace them would allow changing the sender, the recipients or the MIME
/// structure behind the schema's back.
const STRUCTURAL_HEADERS: &[&str] = &[
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "return-path",
    "received",
];

/// Runs one email action.
pub async fn run(
    client: &GuardedClient,
    action: &str,
    input: &Value,
    credential: Credential<'_>,
    idempotency_key: &str,
) -> Result<Value, ActionError> {
    let call = Call::new(action, credential);
    let result = run_inner(&call, client.policy(), action, input, idempotency_key).await;
    call.finish(result)
}

async fn run_inner(
    call: &Call<'_>,
    policy: &NetPolicy,
    action: &str,
    input: &Value,
    idempotency_key: &str,
) -> Result<Value, ActionError> {
    let spec = call.spec(action)?;
    let obj = call.input(spec, input)?;
    if action != "send" {
        // `spec` knows the manifest's actions; this only fires if the manifest gains one.
        return Err(ActionError::permanent(format!(
            "`{}` has no implementation in this build of Weft",
            call.name
        )));
    }
    let server = Server::from_credential(call)?;
    let mail = compose(call, obj, server.default_from, idempotency_key)?;
    deliver(call, policy, &server, &mail).await
}

// ---------------------------------------------------------------------------------------------
// Credential
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    StartTls,
    Implicit,
    Plain,
}

/// Where and how to connect, from the credential.
struct Server<'c> {
    host: String,
    port: u16,
    mode: Mode,
    /// The TLS settings (server name, trusted roots); `None` with `tls: none`.
    tls: Option<TlsParameters>,
    /// The user name (for messages) and the login.
    login: Option<(&'c str, Credentials)>,
    default_from: Option<&'c str>,
}

impl<'c> Server<'c> {
    fn from_credential(call: &Call<'c>) -> Result<Server<'c>, ActionError> {
        let c = call.credential;
        let bad = |field: &str, why: String| {
            ActionError::permanent(format!(
                "{}: credential '{}': `{field}` {why}",
                call.name, c.name
            ))
        };
        let raw_host = c.require("host")?.trim();
        let host = raw_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(raw_host)
            .to_owned();
        // A ':' is only allowed inside an IPv6 address, so `host:port` is refused.
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
            && (!host.contains(':') || host.parse::<std::net::Ipv6Addr>().is_ok());
        if !host_ok {
            return Err(bad(
                "host",
                "must be one host name or IP address, e.g. smtp.example.com (no scheme, port or path)".into(),
            ));
        }
        let mode = match c.get("tls").unwrap_or("starttls").trim() {
            m if m.eq_ignore_ascii_case("starttls") => Mode::StartTls,
            m if m.eq_ignore_ascii_case("tls") => Mode::Implicit,
            m if m.eq_ignore_ascii_case("none") => Mode::Plain,
            other => {
                return Err(bad(
                    "tls",
                    format!(
                        "is '{}'; use `starttls` (port 587), `tls` (implicit TLS, port 465) or `none` (no encryption, trusted networks only)",
                        shown(other, 20)
                    ),
                ));
            }
        };
        let port = match c.get("port").map(str::trim).filter(|p| !p.is_empty()) {
            None => match mode {
                Mode::StartTls => 587,
                Mode::Implicit => 465,
                Mode::Plain => 25,
            },
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                bad(
                    "port",
                    format!("'{}' is not a TCP port (1-65535)", shown(p, 20)),
                )
            })?,
        };
        let ca_cert = c.get("ca_cert").map(str::trim).filter(|p| !p.is_empty());
        let tls = match (mode, ca_cert) {
            (Mode::Plain, Some(_)) => {
                return Err(bad(
                    "ca_cert",
                    "is set but `tls` is `none`, so no certificate would be checked; set `tls` to `starttls` or `tls`, or remove `ca_cert`".into(),
                ));
            }
            (Mode::Plain, None) => None,
            (_, ca) => Some(tls_parameters(call, &host, ca)?),
        };
        let username = c.get("username").map(str::trim).filter(|u| !u.is_empty());
        let password_given = c
            .values
            .get("password")
            .is_some_and(|p| !p.expose().is_empty());
        let login = match username {
            Some(user) => {
                let password = c.require("password")?;
                Some((user, Credentials::new(user.to_owned(), password.to_owned())))
            }
            None if password_given => {
                return Err(bad(
                    "username",
                    "is not set, but `password` is; set both for a server that needs a login, or neither for a relay that does not".into(),
                ));
            }
            None => None,
        };
        Ok(Server {
            host,
            port,
            mode,
            tls,
            login,
            default_from: c.get("from").map(str::trim).filter(|f| !f.is_empty()),
        })
    }

    fn shown(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// TLS settings verifying `host`: against `ca_cert` alone when given (a private CA), else
/// against the platform's roots.
fn tls_parameters(
    call: &Call<'_>,
    host: &str,
    ca_cert: Option<&str>,
) -> Result<TlsParameters, ActionError> {
    let c = call.credential;
    if rustls::pki_types::ServerName::try_from(host).is_err() {
        return Err(ActionError::permanent(format!(
            "{}: credential '{}': `host` '{}' is not a name a TLS certificate can be checked against",
            call.name,
            c.name,
            shown(host, 80)
        )));
    }
    let bad_ca = |why: &str| {
        ActionError::permanent(format!(
            "{}: credential '{}': `ca_cert` {why}; paste the CA certificate in PEM form (-----BEGIN CERTIFICATE----- …)",
            call.name, c.name
        ))
    };
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(pem) = ca_cert {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad_ca("holds no PEM certificate"));
        }
        let cert = lettre::transport::smtp::client::Certificate::from_pem(pem.as_bytes())
            .map_err(|_| bad_ca("is not a readable PEM certificate"))?;
        builder = builder
            .certificate_store(CertificateStore::None)
            .add_root_certificate(cert);
    }
    builder.build().map_err(|e| {
        if ca_cert.is_some() {
            bad_ca(&format!("was refused ({e})"))
        } else {
            ActionError::permanent(format!("{}: could not set up TLS: {e}", call.name))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Message
// ---------------------------------------------------------------------------------------------

/// A message ready to send.
struct Outgoing {
    from: Address,
    /// Envelope recipients: to, cc and bcc, each once.
    recipients: Vec<Address>,
    message_id: String,
    bytes: Vec<u8>,
}

fn compose(
    call: &Call<'_>,
    obj: &Map<String, Value>,
    default_from: Option<&str>,
    idempotency_key: &str,
) -> Result<Outgoing, ActionError> {
    let from = match call.optional_str(obj, "from")? {
        Some(raw) => mailbox(call, "from", raw)?,
        None => match default_from {
            Some(raw) => mailbox(call, "from", raw).map_err(|_| {
                ActionError::permanent(format!(
                    "{}: credential '{}': `from` is not an email address; set it to `name@example.com` or `Name <name@example.com>`",
                    call.name, call.credential.name
                ))
            })?,
            None => {
                return Err(call.bad_input(
                    "from",
                    format!(
                        "is required (a string) because credential '{}' has no `from`",
                        call.credential.name
                    ),
                ));
            }
        },
    };
    let to = mailboxes(call, obj, "to")?;
    if to.is_empty() {
        return Err(call.bad_input("to", "must name at least one recipient"));
    }
    let cc = mailboxes(call, obj, "cc")?;
    let bcc = mailboxes(call, obj, "bcc")?;
    let reply_to = mailboxes(call, obj, "reply_to")?;
    let subject = match obj.get("subject") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(call.bad_input("subject", "is required (a string)")),
    };
    if let Some(why) = control_chars(subject) {
        return Err(call.bad_input("subject", why));
    }
    let text = call.optional_str(obj, "text")?;
    let html = call.optional_str(obj, "html")?;

    let mut recipients: Vec<Address> = Vec::new();
    for m in to.iter().chain(&cc).chain(&bcc) {
        if !recipients.contains(&m.email) {
            recipients.push(m.email.clone());
        }
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(call.bad_input(
            "to",
            format!(
                "with `cc` and `bcc` names {} recipients; one message takes at most {MAX_RECIPIENTS} (send several)",
                recipients.len()
            ),
        ));
    }
    let message_id = message_id(idempotency_key, from.email.domain());

    let mut builder = MessageBuilder::new()
        .from(from.clone())
        .subject(subject)
        .message_id(Some(message_id.clone()));
    for m in to {
        builder = builder.to(m);
    }
    for m in cc {
        builder = builder.cc(m);
    }
    // Only for the envelope: the builder drops the Bcc header once the message is built.
    for m in bcc {
        builder = builder.bcc(m);
    }
    for m in reply_to {
        builder = builder.reply_to(m);
    }
    for header in extra_headers(call, obj)? {
        builder = builder.raw_header(header);
    }
    let envelope = Envelope::new(Some(from.email.clone()), recipients.clone())
        .map_err(|e| call.bad_input("to", format!("cannot be used: {e}")))?;
    builder = builder.envelope(envelope);

    let body = match (text, html) {
        (Some(t), Some(h)) => Part::Multi(MultiPart::alternative_plain_html(
            t.to_owned(),
            h.to_owned(),
        )),
        (Some(t), None) => Part::Single(SinglePart::plain(t.to_owned())),
        (None, Some(h)) => Part::Single(SinglePart::html(h.to_owned())),
        (None, None) => {
            return Err(ActionError::permanent(format!(
                "{}: input needs `text` or `html` (or both); an email without a body is refused",
                call.name
            )));
        }
    };
    let attachments = attachments(call, obj)?;
    let built = if attachments.is_empty() {
        match body {
            Part::Single(p) => builder.singlepart(p),
            Part::Multi(p) => builder.multipart(p),
        }
    } else {
        let mut mixed = match body {
            Part::Single(p) => MultiPart::mixed().singlepart(p),
            Part::Multi(p) => MultiPart::mixed().multipart(p),
        };
        for a in attachments {
            mixed = mixed.singlepart(a);
        }
        builder.multipart(mixed)
    };
    let message = built.map_err(|e| {
        ActionError::permanent(format!("{}: the message cannot be built: {e}", call.name))
    })?;
    Ok(Outgoing {
        from: from.email,
        recipients,
        message_id,
        bytes: message.formatted(),
    })
}

enum Part {
    Single(SinglePart),
    Multi(MultiPart),
}

/// `<HEX@DOMAIN>` from the idempotency key: the same for every retry of a step. The sender's
/// domain keeps the id plausible to spam filters; a domain that is not plain ASCII (or an
/// address literal) falls back to `weft.invalid`.
fn message_id(idempotency_key: &str, domain: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    let hex = hex::encode(digest);
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let domain = if domain_ok { domain } else { "weft.invalid" };
    format!("<{}@{domain}>", &hex[..32])
}

/// Why `s` cannot go into a header, if it cannot: a line break would start a new header.
fn control_chars(s: &str) -> Option<&'static str> {
    if s.contains(['\r', '\n']) {
        Some("must not contain line breaks (they would start a new header)")
    } else if s.chars().any(|c| c.is_control() && c != '\t') {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// `name@example.com` or `Name <name@example.com>`, validated whole: lettre's own mailbox
/// parser ignores trailing text, so the display name and the address are split here and the
/// address is checked by [`Address`]'s strict parser.
fn mailbox(call: &Call<'_>, field: &str, raw: &str) -> Result<Mailbox, ActionError> {
    if let Some(why) = control_chars(raw) {
        return Err(call.bad_input(field, why));
    }
    let raw = raw.trim();
    let bad = || {
        call.bad_input(
            field,
            format!(
                "'{}' is not an email address; use `name@example.com` or `Name <name@example.com>` (one address per string; give a list for several)",
                shown(raw, 80)
            ),
        )
    };
    let (name, addr) = match raw.strip_suffix('>').and_then(|r| r.rsplit_once('<')) {
        Some((name, addr)) => {
            let name = name.trim();
            let name = name
                .strip_prefix('"')
                .and_then(|n| n.strip_suffix('"'))
                .map_or_else(
                    || name.to_owned(),
                    |n| n.replace("\\\"", "\"").replace("\\\\", "\\"),
                );
            (Some(name).filter(|n| !n.is_empty()), addr.trim())
        }
        None => (None, raw),
    };
    if addr.is_empty() || addr.contains(|c: char| c.is_whitespace() || c == '<' || c == '>') {
        return Err(bad());
    }
    let email = addr.parse::<Address>().map_err(|_| bad())?;
    Ok(Mailbox::new(name, email))
}

/// A string or a list of strings, each one mailbox; absent or `null` is empty.
fn mailboxes(
    call: &Call<'_>,
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Vec<Mailbox>, ActionError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![mailbox(call, field, s)?]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("{field}[{i}]");
                match item {
                    Value::String(s) => mailbox(call, &path, s),
                    other => {
                        Err(call.bad_input(&path, format!("must be a string, got {}", kind(other))))
                    }
                }
            })
            .collect(),
        Some(other) => Err(call.bad_input(
            field,
            format!(
                "must be a string or an array of strings, got {}",
                kind(other)
            ),
        )),
    }
}

/// `headers` as raw header values, refusing structural names and anything that could break
/// out of the header.
fn extra_headers(
    call: &Call<'_>,
    obj: &Map<String, Value>,
) -> Result<Vec<HeaderValue>, ActionError> {
    let Some(Value::Object(headers)) = obj.get("headers") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let path = format!("headers.{name}");
        // RFC 5322 field names: printable ASCII except ':'; lettre also caps them at 76.
        let name_ok = !name.is_empty()
            && name.len() <= 76
            && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !name_ok {
            return Err(call.bad_input(
                "headers",
                format!(
                    "has the name '{}', which is not a header name (printable ASCII without spaces or ':', at most 76 characters)",
                    shown(name, 80)
                ),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if STRUCTURAL_HEADERS.contains(&lower.as_str())
            || lower.starts_with("content-")
            || lower.starts_with("resent-")
        {
            return Err(call.bad_input(
                &path,
                "cannot be set through `headers`: the sender, recipients, subject, date, Message-ID and MIME headers come from the other fields",
            ));
        }
        let Value::String(value) = value else {
            return Err(call.bad_input(&path, format!("must be a string, got {}", kind(value))));
        };
        if let Some(why) = control_chars(value) {
            return Err(call.bad_input(&path, why));
        }
        let header_name = HeaderName::new_from_ascii(name.clone()).map_err(|_| {
            call.bad_input(
                "headers",
                format!("has the invalid name '{}'", shown(name, 80)),
            )
        })?;
        out.push(HeaderValue::new(header_name, value.clone()));
    }
    Ok(out)
}

fn attachments(call: &Call<'_>, obj: &Map<String, Value>) -> Result<Vec<SinglePart>, ActionError> {
    let Some(Value::Array(items)) = obj.get("attachments") else {
        return Ok(Vec::new());
    };
    let mut total = 0usize;
    let mut parts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |f: &str| format!("attachments[{i}].{f}");
        let Some(a) = item.as_object() else {
            return Err(call.bad_input(
                &format!("attachments[{i}]"),
                format!("must be an object, got {}", kind(item)),
            ));
        };
        let filename = match a.get("filename") {
            Some(Value::String(f)) if !f.trim().is_empty() => f.trim(),
            _ => return Err(call.bad_input(&at("filename"), "is required (a non-empty string)")),
        };
        if let Some(why) = control_chars(filename) {
            return Err(call.bad_input(&at("filename"), why));
        }
        if filename.chars().count() > 255 {
            return Err(call.bad_input(&at("filename"), "must be at most 255 characters"));
        }
        let text = a.get("content").and_then(Value::as_str);
        let encoded = a.get("content_base64").and_then(Value::as_str);
        let (body, default_type) = match (text, encoded) {
            (Some(_), Some(_)) => {
                return Err(call.bad_input(
                    &format!("attachments[{i}]"),
                    "takes `content` (text) or `content_base64` (bytes), not both",
                ));
            }
            // Text goes in as a string, so lettre writes its line ends as CRLF (MIME's
            // canonical form for text).
            (Some(t), None) => (Body::new(t.to_owned()), "text/plain; charset=utf-8"),
            (None, Some(b64)) => {
                // Base64 is often wrapped at 76 columns; the line breaks are not data.
                let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(compact.as_bytes())
                    .map_err(|e| {
                        call.bad_input(&at("content_base64"), format!("is not base64 ({e})"))
                    })?;
                (Body::new(bytes), "application/octet-stream")
            }
            (None, None) => {
                return Err(call.bad_input(
                    &format!("attachments[{i}]"),
                    "needs `content` (text) or `content_base64` (bytes)",
                ));
            }
        };
        total = total.saturating_add(body.as_ref().len());
        if total > MAX_ATTACHMENT_BYTES {
            return Err(call.bad_input(
                "attachments",
                format!(
                    "add up to more than {} MiB; send large files as links",
                    MAX_ATTACHMENT_BYTES / (1024 * 1024)
                ),
            ));
        }
        let raw_type = match a.get("content_type") {
            Some(Value::String(t)) if !t.trim().is_empty() => t.trim(),
            _ => default_type,
        };
        let content_type = if control_chars(raw_type).is_some() {
            None
        } else {
            ContentType::parse(raw_type).ok()
        };
        let Some(content_type) = content_type else {
            return Err(call.bad_input(
                &at("content_type"),
                format!(
                    "'{}' is not a MIME type; use e.g. `application/pdf` or `text/csv; charset=utf-8`",
                    shown(raw_type, 80)
                ),
            ));
        };
        parts.push(Attachment::new(filename.to_owned()).body(body, content_type));
    }
    Ok(parts)
}

// ---------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------

/// What the client was doing when something failed, for messages and classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connect,
    StartTls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    /// Sending the content and waiting for the answer to the final dot.
    Message,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Connect => "the greeting",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Message => "the message content",
        }
    }
}

async fn deliver(
    call: &Call<'_>,
    policy: &NetPolicy,
    server: &Server<'_>,
    mail: &Outgoing,
) -> Result<Value, ActionError> {
    let deadline = Instant::now() + SEND_TIMEOUT;
    let ips = resolve(call, policy, server, deadline).await?;
    let hello = ClientId::default();
    let mut conn = open(call, server, &ips, &hello, deadline).await?;
    let mut stream_lost = false;
    let result = session(
        call,
        server,
        &mut conn,
        &hello,
        mail,
        deadline,
        &mut stream_lost,
    )
    .await;
    // A polite goodbye; the result does not depend on it. After a failed or interrupted TLS
    // upgrade lettre no longer holds a stream (writing would hit its internal assertion), so
    // the connection is just dropped.
    match &result {
        Ok(_) => {
            let _ = tokio::time::timeout(GOODBYE, conn.quit()).await;
        }
        Err(_) if stream_lost => {}
        Err(_) => {
            let _ = tokio::time::timeout(GOODBYE, conn.abort()).await;
        }
    }
    result
}

/// Resolves the host and keeps the addresses the policy permits (the same refusals as HTTP).
async fn resolve(
    call: &Call<'_>,
    policy: &NetPolicy,
    server: &Server<'_>,
    deadline: Instant,
) -> Result<Vec<IpAddr>, ActionError> {
    let budget = left(deadline).min(CONNECT_TIMEOUT);
    permitted_addresses(call, policy, &server.host, server.port, budget)
        .await
        .map_err(|e| {
            e.unwrap_or_else(|| {
                ActionError::retryable(format!(
                    "{}: resolving host `{}` timed out; the step can be retried",
                    call.name, server.host
                ))
            })
        })
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Connects to the permitted addresses in turn until one greets (TLS first with `tls: tls`).
async fn open(
    call: &Call<'_>,
    server: &Server<'_>,
    ips: &[IpAddr],
    hello: &ClientId,
    deadline: Instant,
) -> Result<AsyncSmtpConnection, ActionError> {
    let mut last = None;
    for ip in ips {
        let budget = left(deadline);
        if budget.is_zero() {
            break;
        }
        let wrapper = match server.mode {
            Mode::Implicit => server.tls.clone(),
            Mode::StartTls | Mode::Plain => None,
        };
        let connect = AsyncSmtpConnection::connect_tokio1(
            SocketAddr::new(*ip, server.port),
            Some(CONNECT_TIMEOUT.min(budget)),
            hello,
            wrapper,
            None,
        );
        match tokio::time::timeout(budget, connect).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => {
                let e = classify(call, server, Stage::Connect, None, &e);
                // Another address may answer; a permanent refusal (a bad certificate, 5xx)
                // would be the same there.
                if !e.is_retryable() {
                    return Err(e);
                }
                last = Some(e);
            }
            Err(_) => last = Some(timed_out(call, server, Stage::Connect)),
        }
    }
    Err(last.unwrap_or_else(|| timed_out(call, server, Stage::Connect)))
}

/// STARTTLS, login and one mail transaction on an open connection.
async fn session(
    call: &Call<'_>,
    server: &Server<'_>,
    conn: &mut AsyncSmtpConnection,
    hello: &ClientId,
    mail: &Outgoing,
    deadline: Instant,
    stream_lost: &mut bool,
) -> Result<Value, ActionError> {
    if server.mode == Mode::StartTls {
        if !conn.can_starttls() {
            return Err(ActionError::permanent(format!(
                "{}: the SMTP server at {} does not offer STARTTLS, and `tls: starttls` requires it before the login and the mail are sent; use `tls: tls` if the server speaks TLS from the start (usually port 465), or `tls: none` only on a trusted network",
                call.name,
                server.shown()
            )));
        }
        if let Some(params) = server.tls.clone() {
            *stream_lost = true;
            match tokio::time::timeout(left(deadline), conn.starttls(params, hello)).await {
                Ok(Ok(())) => *stream_lost = false,
                Ok(Err(e)) => return Err(classify(call, server, Stage::StartTls, None, &e)),
                Err(_) => return Err(timed_out(call, server, Stage::StartTls)),
            }
        }
    }
    if let Some((user, credentials)) = &server.login {
        if conn.server_info().get_auth_mechanism(MECHANISMS).is_none() {
            return Err(ActionError::permanent(format!(
                "{}: the SMTP server at {} offers no login Weft supports (AUTH PLAIN or LOGIN){}; remove `username` and `password` if it needs no login",
                call.name,
                server.shown(),
                if server.mode == Mode::Plain {
                    "; many servers offer AUTH only over TLS, so try `tls: starttls`"
                } else {
                    ""
                }
            )));
        }
        let r = tokio::time::timeout(left(deadline), conn.auth(MECHANISMS, credentials)).await;
        if let Err(e) = answered(call, server, Stage::Auth, r) {
            return Err(login_refused(call, server, user, e));
        }
    }

    let mut params = Vec::new();
    let non_ascii = !mail.from.to_string().is_ascii()
        || mail.recipients.iter().any(|r| !r.to_string().is_ascii());
    if non_ascii {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(ActionError::permanent(format!(
                "{}: an address is not plain ASCII and the SMTP server at {} does not support internationalized addresses (SMTPUTF8)",
                call.name,
                server.shown()
            )));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !mail.bytes.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(ActionError::permanent(format!(
                "{}: the message is not plain ASCII and the SMTP server at {} does not accept 8-bit messages (8BITMIME)",
                call.name,
                server.shown()
            )));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let r = tokio::time::timeout(
        left(deadline),
        conn.command(Mail::new(Some(mail.from.clone()), params)),
    )
    .await;
    answered(call, server, Stage::MailFrom, r)?;
    for rcpt in &mail.recipients {
        let r = tokio::time::timeout(
            left(deadline),
            conn.command(Rcpt::new(rcpt.clone(), vec![])),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(classify(call, server, Stage::RcptTo, Some(rcpt), &e)),
            Err(_) => return Err(timed_out(call, server, Stage::RcptTo)),
        }
    }
    let r = tokio::time::timeout(left(deadline), conn.command(Data)).await;
    answered(call, server, Stage::Data, r)?;
    let r = tokio::time::timeout(left(deadline), conn.message(&mail.bytes)).await;
    let answer = answered(call, server, Stage::Message, r)?;
    Ok(json!({
        "message_id": mail.message_id,
        "accepted": mail.recipients.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "response": reply_line(&answer),
    }))
}

/// The result of one bounded SMTP exchange, classified.
fn answered<T>(
    call: &Call<'_>,
    server: &Server<'_>,
    stage: Stage,
    r: Result<Result<T, lettre::transport::smtp::Error>, tokio::time::error::Elapsed>,
) -> Result<T, ActionError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(call, server, stage, None, &e)),
        Err(_) => Err(timed_out(call, server, stage)),
    }
}

/// `250 2.0.0 Ok: queued as …`, on one line.
fn reply_line(r: &Response) -> String {
    let code: u16 = r.code().into();
    let text = r.message().collect::<Vec<_>>().join(" ");
    excerpt(&format!("{code} {text}"))
}

/// An AUTH failure in the words of a login problem (a 5xx names the credential's fields).
fn login_refused(call: &Call<'_>, server: &Server<'_>, user: &str, e: ActionError) -> ActionError {
    match e {
        ActionError::Permanent {
            output: Some(output),
            ..
        } => {
            let answer = answer_text(&output);
            ActionError::Permanent {
                message: format!(
                    "{}: the SMTP server at {} refused the login of `{user}` ({answer}); check `username` and `password` of credential '{}' (some providers need an app password or SMTP access turned on)",
                    call.name,
                    server.shown(),
                    call.credential.name
                ),
                output: Some(output),
            }
        }
        other => other,
    }
}

fn answer_text(output: &Value) -> String {
    format!(
        "{} {}",
        output["smtp_code"],
        output["response"].as_str().unwrap_or_default()
    )
    .trim()
    .to_owned()
}

fn timed_out(call: &Call<'_>, server: &Server<'_>, stage: Stage) -> ActionError {
    let hint = match stage {
        Stage::Message => {
            "; the message may have been delivered: a retry carries the same Message-ID, so receivers that deduplicate drop the repeat"
        }
        // A server that expects TLS first stays silent while Weft waits for its greeting.
        Stage::Connect => "; check `port` and `tls` (port 465 usually needs `tls: tls`)",
        _ => "",
    };
    ActionError::retryable(format!(
        "{}: the SMTP server at {} did not answer in time during {} (the send is bounded by {}s){hint}; the step can be retried",
        call.name,
        server.shown(),
        stage.name(),
        SEND_TIMEOUT.as_secs()
    ))
}

/// Classifies a lettre error: SMTP answers by their code (4xx retryable, 5xx permanent),
/// certificate and TLS problems permanent, everything else about the connection retryable.
fn classify(
    call: &Call<'_>,
    server: &Server<'_>,
    stage: Stage,
    recipient: Option<&Address>,
    err: &lettre::transport::smtp::Error,
) -> ActionError {
    let shown = server.shown();
    if let Some(code) = err.status() {
        let code: u16 = code.into();
        let text = std::error::Error::source(err)
            .map(|s| excerpt(&s.to_string()))
            .unwrap_or_default();
        let mut output = json!({
            "smtp_code": code,
            "response": text,
            "stage": stage.name(),
        });
        if let Some(enhanced) = enhanced_code(&text) {
            output["enhanced_code"] = Value::String(enhanced.to_owned());
        }
        let what = match recipient {
            Some(r) => {
                output["recipient"] = Value::String(r.to_string());
                format!("refused recipient `{r}` with")
            }
            None => format!("answered {} with", stage.name()),
        };
        if err.is_transient() {
            let limited = is_rate_limit(&text);
            if limited {
                output["rate_limited"] = Value::Bool(true);
            }
            return ActionError::Retryable {
                message: format!(
                    "{}: the SMTP server at {shown} {what} {code} {text} (temporary{}); nothing was delivered and the step can be retried",
                    call.name,
                    if limited { ": a rate limit" } else { "" }
                ),
                retry_after: None,
                output: Some(output),
            };
        }
        return ActionError::Permanent {
            message: format!(
                "{}: the SMTP server at {shown} {what} {code} {text}; nothing was delivered",
                call.name
            ),
            output: Some(output),
        };
    }
    if let Some(tls) = rustls_error(err) {
        let hint = match tls {
            rustls::Error::InvalidCertificate(_) => format!(
                "the server's certificate is not trusted for `{}`; if the server uses a private CA, put its certificate in the credential's `ca_cert`, and check that `host` is the name on the certificate",
                server.host
            ),
            _ => "check `tls` (starttls for port 587, tls for port 465) and `port`".to_owned(),
        };
        return ActionError::permanent(format!(
            "{}: the TLS handshake with the SMTP server at {shown} failed ({tls}); {hint}",
            call.name
        ));
    }
    if err.is_timeout() {
        return timed_out(call, server, stage);
    }
    if err.is_client() || err.is_tls() {
        return ActionError::permanent(format!(
            "{}: cannot talk to the SMTP server at {shown} during {}: {err}",
            call.name,
            stage.name()
        ));
    }
    let maybe_sent = if stage == Stage::Message {
        "; the message may have been delivered: a retry carries the same Message-ID, so receivers that deduplicate drop the repeat"
    } else {
        ""
    };
    ActionError::retryable(format!(
        "{}: the connection to the SMTP server at {shown} failed during {}: {err}{maybe_sent}; check `host`, `port` and `tls` (the step can be retried)",
        call.name,
        stage.name()
    ))
}

/// The rustls error somewhere in lettre's error chain (tokio-rustls wraps it in an io::Error,
/// whose `source` skips it, so io errors are opened by hand).
fn rustls_error(err: &lettre::transport::smtp::Error) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(t) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// The RFC 3463 enhanced status code at the start of an answer's text (`5.7.8 …`).
fn enhanced_code(text: &str) -> Option<&str> {
    let first = text.split_whitespace().next()?;
    let parts: Vec<&str> = first.split('.').collect();
    let ok = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(first)
}

/// Whether a temporary answer is a rate limit, in the words servers use for one (Gmail's
/// "unusual rate", Postfix policy "rate limit exceeded", SES "Throttling failure", Microsoft's
/// "too many connections"…). "Too many recipients" is not: it fails again the same way.
fn is_rate_limit(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    (t.contains("too many") && !t.contains("recipient"))
        || t.contains("rate limit")
        || t.contains("ratelimit")
        || t.contains("rate-limit")
        || t.contains("sending rate")
        || t.contains("unusual rate")
        || t.contains("at a rate")
        || t.contains("throttl")
        || t.contains("quota")
        || t.contains("slow down")
}

/// One line, at most [`EXCERPT_CHARS`] characters.
fn excerpt(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = collapsed.chars();
    let mut out: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Input echoed in a message: control characters escaped, cut short.
fn shown(s: &str, max: usize) -> String {
    let escaped: String = s.chars().flat_map(char::escape_debug).collect();
    let mut chars = escaped.chars();
    let mut out: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_safe() {
        let a = message_id("run_1:send:0", "example.com");
        assert_eq!(a, message_id("run_1:send:0", "example.com"));
        assert_ne!(a, message_id("run_1:send:1", "example.com"));
        assert!(a.starts_with('<') && a.ends_with("@example.com>"), "{a}");
        assert_eq!(a.len(), 1 + 32 + 1 + "example.com".len() + 1);
        assert!(message_id("k", "[127.0.0.1]").ends_with("@weft.invalid>"));
        assert!(message_id("k", "bücher.example").ends_with("@weft.invalid>"));
    }

    #[test]
    fn enhanced_codes_and_rate_limits() {
        assert_eq!(enhanced_code("5.7.8 Authentication failed"), Some("5.7.8"));
        assert_eq!(enhanced_code("4.2.1 slow"), Some("4.2.1"));
        assert_eq!(enhanced_code("Authentication failed"), None);
        assert_eq!(enhanced_code("5.7 nope"), None);
        assert!(is_rate_limit("4.7.0 Too many connections from your host"));
        assert!(is_rate_limit(
            "Throttling failure: Maximum sending rate exceeded."
        ));
        assert!(is_rate_limit("4.7.1 Rate limit exceeded, slow down"));
        assert!(!is_rate_limit("4.5.3 Error: too many recipients"));
        assert!(!is_rate_limit("4.7.1 Greylisted, try again later"));
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(control_chars("a@b.c\r\nBcc: x@y.z").is_some());
        assert!(control_chars("hello\u{0}").is_some());
        assert!(control_chars("tab\tis fine, ünïcode too").is_none());
    }
}
