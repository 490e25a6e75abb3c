//! The `email` connector against a real SMTP sink on loopback: enough RFC 5321 (EHLO, AUTH
//! PLAIN/LOGIN, STARTTLS or implicit TLS with a test CA made by rcgen, MAIL/RCPT/DATA with
//! dot-unstuffing, RSET, QUIT) to check what arrives on the wire, and configurable answers for
//! the failure cases.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_connectors::{ActionError, Credential, NetPolicy, manifest, run_action};
use weft_vault::{Secret, SecretValues};

use crate::conformance::{Adapter, Answer, assert_clean, check_connector};
use crate::support::{allow_only, bounded, client};

const USER: &str = "robot@weft.test";
const PASSWORD: &str = "smtp-password-canary-0123456789";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// ---------------------------------------------------------------------------------------------
// The sink
// ---------------------------------------------------------------------------------------------

/// How the sink behaves; changed by tests between sends.
#[derive(Clone, Default)]
struct Config {
    /// Required login; `None` offers no AUTH at all.
    login: Option<(String, String)>,
    /// Mechanisms advertised (default `PLAIN LOGIN`).
    mechanisms: Option<String>,
    /// Offers STARTTLS with this configuration.
    starttls: Option<Arc<ServerConfig>>,
    /// Speaks TLS from the first byte with this configuration.
    implicit_tls: Option<Arc<ServerConfig>>,
    /// Answers every AUTH with this (the provider's "bad credentials").
    auth_answer: Option<String>,
    /// Answers MAIL FROM with this.
    mail_answer: Option<String>,
    /// Answers RCPT TO of the given address with the given line.
    rcpt_answers: HashMap<String, String>,
    /// Answers the end of DATA with this (and keeps nothing).
    data_answer: Option<String>,
}

/// One message as received.
#[derive(Debug, Clone)]
struct Received {
    from: String,
    rcpts: Vec<String>,
    /// The content after dot-unstuffing, without the final `.` line.
    data: Vec<u8>,
    tls: bool,
    user: Option<String>,
}

struct Sink {
    addr: SocketAddr,
    /// Connections accepted.
    hits: Arc<AtomicUsize>,
    /// AUTH commands received (over any connection).
    auths: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    config: Arc<Mutex<Config>>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    async fn start(config: Config) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let auths = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let config = Arc::new(Mutex::new(config));
        let task = {
            let (hits, auths, received, config) = (
                Arc::clone(&hits),
                Arc::clone(&auths),
                Arc::clone(&received),
                Arc::clone(&config),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    hits.fetch_add(1, Ordering::SeqCst);
                    let cfg = config.lock().unwrap().clone();
                    let (auths, received) = (Arc::clone(&auths), Arc::clone(&received));
                    tokio::spawn(async move {
                        let _ = serve(Box::new(stream), cfg, auths, received).await;
                    });
                }
            })
        };
        Sink {
            addr,
            hits,
            auths,
            received,
            config,
            task,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn configure(&self, f: impl FnOnce(&mut Config)) {
        f(&mut self.config.lock().unwrap());
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<Box<dyn Io>>;

async fn reply(io: &mut Conn, line: &str) -> std::io::Result<()> {
    io.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await?;
    io.get_mut().flush().await
}

/// One line without its CRLF; `None` at end of stream.
async fn read_line(io: &mut Conn) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *io)
        .take(64 * 1024)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The address inside `FROM:<…>` / `TO:<…>` (parameters after it are ignored).
fn path_of(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg.find('>').unwrap_or(arg.len());
    arg[start..end].to_owned()
}

async fn serve(
    stream: Box<dyn Io>,
    cfg: Config,
    auths: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let (stream, mut tls): (Box<dyn Io>, bool) = match &cfg.implicit_tls {
        Some(tls_cfg) => (
            Box::new(
                TlsAcceptor::from(Arc::clone(tls_cfg))
                    .accept(stream)
                    .await?,
            ),
            true,
        ),
        None => (stream, false),
    };
    let mut io: Conn = BufReader::new(stream);
    reply(&mut io, "220 sink.weft.test ESMTP ready").await?;
    let mut user: Option<String> = None;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    while let Some(line) = read_line(&mut io).await? {
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" => {
                let mut caps = vec!["250-sink.weft.test greets you".to_owned()];
                if cfg.login.is_some() {
                    let mechs = cfg.mechanisms.as_deref().unwrap_or("PLAIN LOGIN");
                    caps.push(format!("250-AUTH {mechs}"));
                }
                if cfg.starttls.is_some() && !tls {
                    caps.push("250-STARTTLS".into());
                }
                caps.push("250-8BITMIME".into());
                caps.push("250 SIZE 35882577".into());
                for c in caps {
                    reply(&mut io, &c).await?;
                }
            }
            "STARTTLS" => match (&cfg.starttls, tls) {
                (Some(tls_cfg), false) => {
                    reply(&mut io, "220 2.0.0 Ready to start TLS").await?;
                    let inner = io.into_inner();
                    let upgraded = TlsAcceptor::from(Arc::clone(tls_cfg)).accept(inner).await?;
                    io = BufReader::new(Box::new(upgraded));
                    tls = true;
                    // RFC 3207: forget everything learnt before the handshake.
                    (user, from) = (None, None);
                    rcpts.clear();
                }
                _ => reply(&mut io, "502 5.5.1 STARTTLS not offered").await?,
            },
            "AUTH" => {
                auths.fetch_add(1, Ordering::SeqCst);
                let (mech, initial) = arg.split_once(' ').unwrap_or((arg, ""));
                let got = match mech.to_ascii_uppercase().as_str() {
                    "PLAIN" => {
                        let b64 = if initial.is_empty() {
                            reply(&mut io, "334 ").await?;
                            read_line(&mut io).await?.unwrap_or_default()
                        } else {
                            initial.to_owned()
                        };
                        let raw = B64.decode(b64.trim()).unwrap_or_default();
                        let parts: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                        (parts.len() == 3).then(|| {
                            (
                                String::from_utf8_lossy(parts[1]).into_owned(),
                                String::from_utf8_lossy(parts[2]).into_owned(),
                            )
                        })
                    }
                    "LOGIN" => {
                        reply(&mut io, "334 VXNlcm5hbWU6").await?;
                        let u = read_line(&mut io).await?.unwrap_or_default();
                        reply(&mut io, "334 UGFzc3dvcmQ6").await?;
                        let p = read_line(&mut io).await?.unwrap_or_default();
                        let dec = |s: &str| {
                            String::from_utf8_lossy(&B64.decode(s.trim()).unwrap_or_default())
                                .into_owned()
                        };
                        Some((dec(&u), dec(&p)))
                    }
                    _ => None,
                };
                if let Some(answer) = &cfg.auth_answer {
                    reply(&mut io, answer).await?;
                } else if got.is_some() && got == cfg.login {
                    user = got.map(|(u, _)| u);
                    reply(&mut io, "235 2.7.0 Authentication successful").await?;
                } else {
                    reply(&mut io, "535 5.7.8 Authentication credentials invalid").await?;
                }
            }
            "MAIL" => {
                if cfg.login.is_some() && user.is_none() {
                    reply(&mut io, "530 5.7.0 Authentication required").await?;
                } else if let Some(answer) = &cfg.mail_answer {
                    reply(&mut io, answer).await?;
                } else {
                    from = Some(path_of(arg));
                    rcpts.clear();
                    reply(&mut io, "250 2.1.0 Ok").await?;
                }
            }
            "RCPT" => {
                let to = path_of(arg);
                if from.is_none() {
                    reply(&mut io, "503 5.5.1 Need MAIL first").await?;
                } else if let Some(answer) = cfg.rcpt_answers.get(&to) {
                    reply(&mut io, answer).await?;
                } else {
                    rcpts.push(to);
                    reply(&mut io, "250 2.1.5 Ok").await?;
                }
            }
            "DATA" => {
                if rcpts.is_empty() {
                    reply(&mut io, "503 5.5.1 Need RCPT first").await?;
                    continue;
                }
                reply(&mut io, "354 End data with <CR><LF>.<CR><LF>").await?;
                let mut data = Vec::new();
                loop {
                    let mut buf = Vec::new();
                    if io.read_until(b'\n', &mut buf).await? == 0 {
                        return Ok(());
                    }
                    if buf == b".\r\n" {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321 4.5.2).
                    let line = buf.strip_prefix(b".").unwrap_or(&buf);
                    data.extend_from_slice(line);
                }
                match &cfg.data_answer {
                    Some(answer) => reply(&mut io, answer).await?,
                    None => {
                        let n = {
                            let mut all = received.lock().unwrap();
                            all.push(Received {
                                from: from.take().unwrap_or_default(),
                                rcpts: std::mem::take(&mut rcpts),
                                data,
                                tls,
                                user: user.clone(),
                            });
                            all.len()
                        };
                        reply(&mut io, &format!("250 2.0.0 Ok: queued as Q{n}")).await?;
                    }
                }
            }
            "RSET" => {
                (from, rcpts) = (None, Vec::new());
                reply(&mut io, "250 2.0.0 Ok").await?;
            }
            "NOOP" => reply(&mut io, "250 2.0.0 Ok").await?,
            "QUIT" => {
                reply(&mut io, "221 2.0.0 Bye").await?;
                return Ok(());
            }
            _ => reply(&mut io, "500 5.5.2 Command not recognized").await?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A test CA and a server certificate for `localhost`
// ---------------------------------------------------------------------------------------------

struct TestPki {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Weft test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A plain-text credential for `sink` with the test login.
fn credential(sink: &Sink) -> SecretValues {
    let mut v = SecretValues::new();
    v.insert("host", Secret::new("127.0.0.1"));
    v.insert("port", Secret::new(sink.port().to_string()));
    v.insert("tls", Secret::new("none"));
    v.insert("username", Secret::new(USER));
    v.insert("password", Secret::new(PASSWORD));
    v.insert("from", Secret::new("Weft Robot <robot@weft.test>"));
    v
}

fn login() -> Option<(String, String)> {
    Some((USER.to_owned(), PASSWORD.to_owned()))
}

async fn send_with(
    policy: NetPolicy,
    values: &SecretValues,
    input: Value,
    key: &str,
) -> Result<Value, ActionError> {
    let m = manifest::find("email", None).unwrap();
    let cred = Credential {
        name: "mailer",
        values,
        manifest: m,
    };
    let c = client(policy);
    let r = bounded(run_action(&c, "email", "send", &input, Some(cred), key)).await;
    assert_clean(&r, PASSWORD, "email.send");
    r
}

async fn send(values: &SecretValues, input: Value) -> Result<Value, ActionError> {
    send_with(allow_only("127.0.0.0/8"), values, input, "run_1:mail:0").await
}

/// A MIME entity: unfolded headers and the raw body.
struct Entity {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Entity {
    fn parse(raw: &[u8]) -> Entity {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("headers end with an empty line");
        let head = std::str::from_utf8(&raw[..split]).expect("headers are ASCII");
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                let last = headers.last_mut().expect("a continuation follows a header");
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else {
                let (name, value) = line.split_once(':').expect("a header has a colon");
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
        }
        Entity {
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_type(&self) -> String {
        self.header("Content-Type")
            .unwrap_or("text/plain")
            .to_ascii_lowercase()
    }

    fn children(&self) -> Vec<Entity> {
        let ct = self.header("Content-Type").expect("a multipart has a type");
        let boundary = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .expect("a multipart has a boundary")
            .trim_matches('"');
        let body = String::from_utf8(self.body.clone()).expect("the message is ASCII");
        let delimiter = format!("--{boundary}");
        let mut chunks: Vec<&str> = body.split(delimiter.as_str()).collect();
        assert!(
            chunks.last().unwrap().starts_with("--"),
            "the multipart ends with --{boundary}--"
        );
        chunks.pop();
        chunks
            .into_iter()
            .skip(1) // the preamble
            .map(|c| {
                let c = c.strip_prefix("\r\n").expect("a delimiter ends its line");
                let c = c.strip_suffix("\r\n").unwrap_or(c);
                Entity::parse(c.as_bytes())
            })
            .collect()
    }

    /// The body with its Content-Transfer-Encoding undone.
    fn decoded(&self) -> Vec<u8> {
        match self
            .header("Content-Transfer-Encoding")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("base64") => {
                let compact: Vec<u8> = self
                    .body
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                B64.decode(compact).expect("valid base64")
            }
            Some("quoted-printable") => {
                let text = String::from_utf8(self.body.clone()).unwrap();
                let mut out = Vec::new();
                let joined = text.replace("=\r\n", "");
                let bytes = joined.as_bytes();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'=' && i + 3 <= bytes.len() {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                        out.push(u8::from_str_radix(hex, 16).unwrap());
                        i += 3;
                    } else {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
                out
            }
            _ => self.body.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conformance
// ---------------------------------------------------------------------------------------------

struct EmailAdapter {
    sink: Sink,
}

impl Adapter for EmailAdapter {
    fn connector(&self) -> &'static str {
        "email"
    }

    fn credential(&self) -> SecretValues {
        credential(&self.sink)
    }

    fn secret_field(&self) -> &'static str {
        "password"
    }

    fn valid_input(&self, _action: &str) -> Value {
        json!({"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"})
    }

    fn answer(&self, answer: Answer) {
        self.sink.configure(|c| {
            (c.auth_answer, c.mail_answer, c.data_answer) = (None, None, None);
            match answer {
                Answer::Success => {}
                Answer::Unauthorized => {
                    c.auth_answer = Some("535 5.7.8 Authentication credentials invalid".into());
                }
                Answer::RateLimited => {
                    c.mail_answer = Some("451 4.7.1 Sender rate limit exceeded, slow down".into());
                }
                Answer::ServerError => {
                    c.data_answer = Some("451 4.3.0 Error: queue file write error".into());
                }
            }
        });
    }

    fn rate_limit_delay(&self) -> Option<Duration> {
        // SMTP answers carry no delay; the engine's backoff decides.
        None
    }

    fn hits(&self) -> usize {
        self.sink.hits()
    }
}

#[tokio::test]
async fn email_send_conforms() {
    let sink = Sink::start(Config {
        login: login(),
        ..Config::default()
    })
    .await;
    let adapter = EmailAdapter { sink };
    assert_eq!(check_connector(&adapter).await, 1);
    // Only the successful sends left a message.
    assert!(!adapter.sink.received().is_empty());
}

// ---------------------------------------------------------------------------------------------
// What arrives
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn email_text_html_and_attachment_arrive_as_mime() {
    let sink = Sink::start(Config {
        login: login(),
        ..Config::default()
    })
    .await;
    let vals = credential(&sink);
    let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let input = json!({
        "to": ["Ann <ann@example.com>", "bob@example.com"],
        "cc": "\"Doe, Carl\" <carl@example.com>",
        "bcc": ["hidden@example.com"],
        "reply_to": "support@weft.test",
        "subject": "Grüße: report",
        "text": "Hello Ann,\n.leading dot line\nbye",
        "html": "<p>Hello <b>Ann</b></p>",
        "attachments": [
            {"filename": "data.bin", "content_base64": B64.encode(&binary)},
            {"filename": "notes.csv", "content_type": "text/csv", "content": "a,b\n1,2\n"}
        ],
        "headers": {"X-Campaign": "weft-42", "In-Reply-To": "<prev@example.com>"}
    });
    let out = send(&vals, input.clone()).await.unwrap();
    let got = sink.received();
    assert_eq!(got.len(), 1);
    let msg = &got[0];

    // Envelope: the sender from the credential, every recipient once, Bcc included.
    assert_eq!(msg.from, "robot@weft.test");
    assert_eq!(
        msg.rcpts,
        vec![
            "ann@example.com",
            "bob@example.com",
            "carl@example.com",
            "hidden@example.com"
        ]
    );
    assert_eq!(msg.user.as_deref(), Some(USER));
    assert!(!msg.tls);
    assert_eq!(
        out["accepted"],
        json!([
            "ann@example.com",
            "bob@example.com",
            "carl@example.com",
            "hidden@example.com"
        ])
    );
    assert!(
        out["response"].as_str().unwrap().starts_with("250 "),
        "{out}"
    );

    // Headers: Bcc never appears in the data; non-ASCII is encoded.
    assert!(msg.data.is_ascii());
    let raw = String::from_utf8(msg.data.clone()).unwrap();
    assert!(!raw.to_ascii_lowercase().contains("bcc"), "{raw}");
    assert!(!raw.contains("hidden@example.com"), "{raw}");
    let top = Entity::parse(&msg.data);
    assert_eq!(top.header("From"), Some("\"Weft Robot\" <robot@weft.test>"));
    let to = top.header("To").unwrap();
    assert!(
        to.contains("ann@example.com") && to.contains("bob@example.com"),
        "{to}"
    );
    assert!(top.header("Cc").unwrap().contains("carl@example.com"));
    assert_eq!(top.header("Reply-To"), Some("support@weft.test"));
    assert_eq!(top.header("X-Campaign"), Some("weft-42"));
    assert_eq!(top.header("In-Reply-To"), Some("<prev@example.com>"));
    assert!(
        top.header("Subject").unwrap().starts_with("=?utf-8?"),
        "{raw}"
    );
    assert!(top.header("Date").is_some());
    assert_eq!(top.header("MIME-Version"), Some("1.0"));
    let message_id = top.header("Message-ID").unwrap().to_owned();
    assert_eq!(out["message_id"], message_id.as_str());
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@weft.test>"),
        "{message_id}"
    );

    // Structure: mixed(alternative(text, html), data.bin, notes.csv).
    assert!(top.content_type().starts_with("multipart/mixed"));
    let parts = top.children();
    assert_eq!(parts.len(), 3);
    assert!(parts[0].content_type().starts_with("multipart/alternative"));
    let alt = parts[0].children();
    assert_eq!(alt.len(), 2);
    assert!(alt[0].content_type().starts_with("text/plain"));
    assert_eq!(
        String::from_utf8(alt[0].decoded()).unwrap(),
        "Hello Ann,\r\n.leading dot line\r\nbye"
    );
    assert!(alt[1].content_type().starts_with("text/html"));
    assert_eq!(alt[1].decoded(), b"<p>Hello <b>Ann</b></p>");
    let bin = &parts[1];
    assert!(bin.content_type().starts_with("application/octet-stream"));
    assert_eq!(bin.header("Content-Transfer-Encoding"), Some("base64"));
    assert!(
        bin.header("Content-Disposition")
            .unwrap()
            .contains("data.bin")
    );
    assert_eq!(bin.decoded(), binary);
    let csv = &parts[2];
    assert!(csv.content_type().starts_with("text/csv"));
    assert!(
        csv.header("Content-Disposition")
            .unwrap()
            .contains("notes.csv")
    );
    assert_eq!(csv.decoded(), b"a,b\r\n1,2\r\n");

    // The same idempotency key gives the same Message-ID (a retry); another key another one.
    send(&vals, input.clone()).await.unwrap();
    let other = send_with(allow_only("127.0.0.0/8"), &vals, input, "run_1:mail:1")
        .await
        .unwrap();
    let ids: Vec<String> = sink
        .received()
        .iter()
        .map(|m| {
            Entity::parse(&m.data)
                .header("Message-ID")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    assert_eq!(other["message_id"], ids[2].as_str());
}

#[tokio::test]
async fn email_text_only_is_a_single_part_and_login_can_be_login() {
    let sink = Sink::start(Config {
        login: login(),
        mechanisms: Some("LOGIN".into()),
        ..Config::default()
    })
    .await;
    let mut vals = credential(&sink);
    vals.insert("from", Secret::new("nobody@weft.test"));
    let out = send(
        &vals,
        json!({"from": "Ops <ops@weft.test>", "to": "ann@example.com", "subject": "", "text": "just text"}),
    )
    .await
    .unwrap();
    assert_eq!(out["accepted"], json!(["ann@example.com"]));
    let got = sink.received();
    assert_eq!(got[0].from, "ops@weft.test");
    assert_eq!(got[0].user.as_deref(), Some(USER));
    let top = Entity::parse(&got[0].data);
    assert!(top.content_type().starts_with("text/plain"));
    // The content ends with the CRLF before the final dot.
    assert_eq!(top.decoded(), b"just text\r\n\r\n");
    assert_eq!(top.header("From"), Some("Ops <ops@weft.test>"));
}

#[tokio::test]
async fn a_relay_without_login_needs_no_credentials() {
    let sink = Sink::start(Config::default()).await;
    let mut vals = SecretValues::new();
    vals.insert("host", Secret::new("127.0.0.1"));
    vals.insert("port", Secret::new(sink.port().to_string()));
    vals.insert("tls", Secret::new("none"));
    let out = send(
        &vals,
        json!({"from": "a@weft.test", "to": "b@example.com", "subject": "s", "html": "<i>x</i>"}),
    )
    .await
    .unwrap();
    assert_eq!(out["accepted"], json!(["b@example.com"]));
    let got = sink.received();
    assert_eq!(got[0].user, None);
    assert_eq!(sink.auths.load(Ordering::SeqCst), 0);
    assert!(
        Entity::parse(&got[0].data)
            .content_type()
            .starts_with("text/html")
    );

    // Without `from` anywhere, the input must name one; nothing is sent.
    let e = send(
        &vals,
        json!({"to": "b@example.com", "subject": "s", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message().contains("input `from` is required"), "{e}");
    assert_eq!(sink.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_wrong_password_is_permanent_and_sends_nothing() {
    let sink = Sink::start(Config {
        login: login(),
        ..Config::default()
    })
    .await;
    let mut vals = credential(&sink);
    let wrong = "wrong-password-canary-987654";
    vals.insert("password", Secret::new(wrong));
    let e = send(
        &vals,
        json!({"to": "ann@example.com", "subject": "s", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().starts_with("email.send: "), "{e}");
    assert!(e.message().contains("refused the login"), "{e}");
    assert!(e.message().contains("`password`"), "{e}");
    assert!(e.message().contains("535"), "{e}");
    assert!(!e.message().contains(wrong), "{e}");
    let out = e.output().unwrap();
    assert_eq!(out["smtp_code"], 535);
    assert_eq!(out["enhanced_code"], "5.7.8");
    assert_eq!(out["stage"], "AUTH");
    assert!(!out.to_string().contains(wrong));
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn recipient_refusals_are_classified_and_deliver_to_nobody() {
    let sink = Sink::start(Config {
        login: login(),
        ..Config::default()
    })
    .await;
    sink.configure(|c| {
        c.rcpt_answers.insert(
            "busy@example.com".into(),
            "450 4.2.1 Mailbox busy, try again later".into(),
        );
        c.rcpt_answers.insert(
            "gone@example.com".into(),
            "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown".into(),
        );
        c.rcpt_answers.insert(
            "fast@example.com".into(),
            "452 4.7.1 Too many messages, slow down".into(),
        );
    });
    let vals = credential(&sink);

    let e = send(
        &vals,
        json!({"to": ["ann@example.com", "busy@example.com"], "subject": "s", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.message().contains("busy@example.com"), "{e}");
    let out = e.output().unwrap();
    assert_eq!(out["smtp_code"], 450);
    assert_eq!(out["recipient"], "busy@example.com");
    assert_eq!(out["stage"], "RCPT TO");
    assert!(out.get("rate_limited").is_none(), "{out}");

    let e = send(
        &vals,
        json!({"to": "ann@example.com", "bcc": "gone@example.com", "subject": "s", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("gone@example.com"), "{e}");
    assert!(e.message().contains("User unknown"), "{e}");
    assert_eq!(e.output().unwrap()["smtp_code"], 550);

    let e = send(
        &vals,
        json!({"to": "fast@example.com", "subject": "s", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.output().unwrap()["rate_limited"], true);

    // A refused recipient stops the send before DATA: nobody got a copy.
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn answers_after_data_are_classified() {
    let sink = Sink::start(Config::default()).await;
    let mut vals = credential(&sink);
    vals.remove("username");
    vals.remove("password");
    let input = json!({"to": "ann@example.com", "subject": "s", "text": "x"});
    sink.configure(|c| c.data_answer = Some("554 5.7.1 Message rejected as spam".into()));
    let e = send(&vals, input.clone()).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("rejected as spam"), "{e}");
    assert_eq!(e.output().unwrap()["stage"], "the message content");
    sink.configure(|c| c.data_answer = Some("421 4.3.2 Shutting down".into()));
    let e = send(&vals, input).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn header_injection_and_bad_addresses_are_refused_before_connecting() {
    let sink = Sink::start(Config {
        login: login(),
        ..Config::default()
    })
    .await;
    let vals = credential(&sink);
    let base = json!({"to": "ann@example.com", "subject": "s", "text": "x"});
    let with = |field: &str, value: Value| {
        let mut v = base.clone();
        v[field] = value;
        v
    };
    let cases = [
        (with("to", json!("not-an-email")), "`to`"),
        (with("to", json!("a@b.c\r\nBcc: x@y.z")), "`to`"),
        (with("to", json!("a@b.c, d@e.f")), "`to`"),
        (with("to", json!([])), "`to`"),
        (
            with("cc", json!(["ok@example.com", "not-an-email"])),
            "`cc[1]`",
        ),
        (with("bcc", json!("x@y.z\nSubject: hi")), "`bcc`"),
        (with("reply_to", json!("Name <broken@>")), "`reply_to`"),
        (with("from", json!("me@weft.test\r\nBcc: x@y.z")), "`from`"),
        (
            with("from", json!("Evil\r\nBcc: x@y.z <me@weft.test>")),
            "`from`",
        ),
        (with("subject", json!("hello\r\nBcc: x@y.z")), "`subject`"),
        (with("subject", json!("bell\u{7}")), "`subject`"),
        (with("headers", json!({"Bcc": "x@y.z"})), "`headers.Bcc`"),
        (
            with("headers", json!({"content-type": "text/html"})),
            "`headers.content-type`",
        ),
        (
            with("headers", json!({"X-Ok": "v\r\nBcc: x@y.z"})),
            "`headers.X-Ok`",
        ),
        (with("headers", json!({"X Bad": "v"})), "`headers`"),
        (with("headers", json!({"X-Bad\r\nBcc": "v"})), "`headers`"),
        (
            with(
                "attachments",
                json!([{"filename": "a.bin", "content_base64": "%%%"}]),
            ),
            "`attachments[0].content_base64`",
        ),
        (
            with(
                "attachments",
                json!([{"filename": "a\r\nb.txt", "content": "x"}]),
            ),
            "`attachments[0].filename`",
        ),
        (
            with("attachments", json!([{"filename": "a.txt"}])),
            "`attachments[0]`",
        ),
        (
            with(
                "attachments",
                json!([{"filename": "a.txt", "content": "x", "content_base64": "eA=="}]),
            ),
            "`attachments[0]`",
        ),
        (
            with(
                "attachments",
                json!([{"filename": "a.txt", "content": "x", "content_type": "not a type"}]),
            ),
            "`attachments[0].content_type`",
        ),
        (json!({"to": "ann@example.com", "subject": "s"}), "`text`"),
    ];
    for (input, needle) in cases {
        let e = send(&vals, input.clone()).await.unwrap_err();
        assert!(!e.is_retryable(), "{input}: {e}");
        assert!(e.message().starts_with("email.send: "), "{input}: {e}");
        assert!(
            e.message().contains(needle),
            "{input}: `{e}` should name {needle}"
        );
        assert!(
            !e.message().contains('\r') && !e.message().contains('\n'),
            "{e:?}"
        );
    }
    assert_eq!(sink.hits(), 0, "refused input reached the server");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn bad_credential_fields_are_permanent_and_name_the_field() {
    let sink = Sink::start(Config::default()).await;
    let input = json!({"to": "ann@example.com", "subject": "s", "text": "x"});
    let cases: [(&str, &str, &str); 6] = [
        ("tls", "ssl", "`tls`"),
        ("port", "smtp", "`port`"),
        ("host", "smtp.example.com:587", "`host`"),
        ("host", "", "`host`"),
        ("ca_cert", "not a pem", "`ca_cert`"),
        ("from", "not-an-email", "`from`"),
    ];
    for (field, value, needle) in cases {
        let mut vals = credential(&sink);
        if field == "ca_cert" {
            vals.insert("tls", Secret::new("starttls"));
        }
        vals.insert(field, Secret::new(value));
        let e = send(&vals, input.clone()).await.unwrap_err();
        assert!(!e.is_retryable(), "{field}={value}: {e}");
        assert!(e.message().contains(needle), "{field}={value}: {e}");
    }
    // A password without a user name.
    let mut vals = credential(&sink);
    vals.remove("username");
    let e = send(&vals, input.clone()).await.unwrap_err();
    assert!(e.message().contains("`username`"), "{e}");
    // A private CA with `tls: none` would check nothing.
    let mut vals = credential(&sink);
    vals.insert("ca_cert", Secret::new(test_pki().ca_pem));
    let e = send(&vals, input).await.unwrap_err();
    assert!(e.message().contains("`ca_cert`"), "{e}");
    assert_eq!(sink.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

fn tls_credential(sink: &Sink, mode: &str, ca: Option<&str>) -> SecretValues {
    let mut v = credential(sink);
    v.insert("host", Secret::new("localhost"));
    v.insert("tls", Secret::new(mode));
    if let Some(ca) = ca {
        v.insert("ca_cert", Secret::new(ca));
    }
    v
}

#[tokio::test]
async fn starttls_with_a_private_ca_is_verified_and_required() {
    let pki = test_pki();
    let sink = Sink::start(Config {
        login: login(),
        starttls: Some(Arc::clone(&pki.server)),
        ..Config::default()
    })
    .await;
    let input = json!({"to": "ann@example.com", "subject": "s", "text": "over TLS"});

    // Trusted through `ca_cert`: the login and the mail travel inside TLS.
    let vals = tls_credential(&sink, "starttls", Some(&pki.ca_pem));
    send(&vals, input.clone()).await.unwrap();
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert_eq!(got[0].user.as_deref(), Some(USER));

    // Without `ca_cert` the certificate is not trusted: permanent, and no login is sent.
    let auths = sink.auths.load(Ordering::SeqCst);
    let vals = tls_credential(&sink, "starttls", None);
    let e = send(&vals, input.clone()).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("not trusted"), "{e}");
    assert!(e.message().contains("`ca_cert`"), "{e}");
    assert_eq!(sink.auths.load(Ordering::SeqCst), auths);

    // A certificate for another name: `127.0.0.1` is not `localhost`.
    let mut vals = tls_credential(&sink, "starttls", Some(&pki.ca_pem));
    vals.insert("host", Secret::new("127.0.0.1"));
    let e = send(&vals, input.clone()).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("TLS handshake"), "{e}");
    assert_eq!(sink.received().len(), 1);

    // A server that does not offer STARTTLS is refused before the login (no downgrade).
    let plain = Sink::start(Config {
        login: login(),
        ..Config::default()
    })
    .await;
    let vals = tls_credential(&plain, "starttls", Some(&pki.ca_pem));
    let e = send(&vals, input).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("does not offer STARTTLS"), "{e}");
    assert_eq!(plain.auths.load(Ordering::SeqCst), 0);
    assert!(plain.received().is_empty());
}

#[tokio::test]
async fn implicit_tls_with_a_private_ca() {
    let pki = test_pki();
    let sink = Sink::start(Config {
        login: login(),
        implicit_tls: Some(Arc::clone(&pki.server)),
        ..Config::default()
    })
    .await;
    let input = json!({"to": "ann@example.com", "subject": "s", "text": "wrapped"});
    let vals = tls_credential(&sink, "tls", Some(&pki.ca_pem));
    send(&vals, input.clone()).await.unwrap();
    assert!(sink.received()[0].tls);

    let vals = tls_credential(&sink, "tls", None);
    let e = send(&vals, input).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("not trusted"), "{e}");
    assert_eq!(sink.received().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Network policy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_network_guard_refuses_loopback_unless_allowed() {
    let sink = Sink::start(Config {
        login: login(),
        ..Config::default()
    })
    .await;
    let input = json!({"to": "ann@example.com", "subject": "s", "text": "x"});
    let vals = credential(&sink);
    let e = send_with(NetPolicy::default(), &vals, input.clone(), "k")
        .await
        .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(
        e.message().contains("refused to connect to 127.0.0.1"),
        "{e}"
    );
    assert!(e.message().contains("--allow-private-network"), "{e}");

    // A name that resolves only to loopback is refused too.
    let mut by_name = vals.clone();
    by_name.insert("host", Secret::new("localhost"));
    let e = send_with(NetPolicy::default(), &by_name, input.clone(), "k")
        .await
        .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("non-public addresses"), "{e}");
    assert_eq!(sink.hits(), 0);

    // Allowed by the operator: private networks, or an allowlist.
    send_with(NetPolicy::allow_all(), &vals, input.clone(), "k")
        .await
        .unwrap();
    send_with(allow_only("127.0.0.0/8"), &by_name, input, "k")
        .await
        .unwrap();
    assert_eq!(sink.received().len(), 2);
}

#[tokio::test]
async fn connection_failures_are_retryable() {
    // A port nobody listens on.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut vals = SecretValues::new();
    vals.insert("host", Secret::new("127.0.0.1"));
    vals.insert("port", Secret::new(port.to_string()));
    vals.insert("tls", Secret::new("none"));
    vals.insert("from", Secret::new("a@weft.test"));
    let e = send(
        &vals,
        json!({"to": "ann@example.com", "subject": "s", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.message().contains("127.0.0.1"), "{e}");
}
