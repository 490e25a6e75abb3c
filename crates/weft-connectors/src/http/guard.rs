//! Guarded outbound HTTP client: the only way Weft makes outbound HTTP requests.
//!
//! Flows are written by users, so every request is a potential SSRF vector
//! (cloud metadata endpoints, the Weft API itself, databases on the private
//! network). The guard therefore checks the address that is actually
//! connected to — after DNS resolution and on every redirect hop — rather than
//! the host name in the URL.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::{Deserialize, Serialize};
use url::{Host, Url};

/// Maximum number of redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Time allowed for establishing a TCP/TLS connection, independent of the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which network destinations outbound requests may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPolicy {
    /// Allow every address, including private and loopback ones (`--allow-private-network`).
    pub allow_private: bool,
    /// Operator allowlist of networks that are reachable even though they are not public.
    pub allow: Vec<IpNet>,
}

impl NetPolicy {
    /// Policy that only allows public addresses (the default).
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Policy that allows every address, for local testing.
    pub fn allow_all() -> Self {
        Self {
            allow_private: true,
            allow: Vec::new(),
        }
    }

    /// Whether a connection to `ip` is permitted under this policy.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow_private || !is_forbidden(ip) {
            return true;
        }
        // An allowlisted v4 network also covers its IPv4-mapped IPv6 spelling.
        let canonical = ip.to_canonical();
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }

    /// Checks a URL before it is requested: scheme, presence of a host and, for
    /// literal-IP hosts (which never reach the DNS resolver), the address.
    pub fn check_url(&self, url: &Url) -> Result<(), PolicyError> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(PolicyError::UnsupportedScheme {
                url: redact_url(url),
                scheme: scheme.to_owned(),
            });
        }
        let ip = match url.host() {
            None => {
                return Err(PolicyError::MissingHost {
                    url: redact_url(url),
                });
            }
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            // `url` normalises every IPv4 spelling into `Host::Ipv4`; this is a
            // second line of defence in case a domain still parses as an IP
            // further down the stack (which would bypass the resolver).
            Some(Host::Domain(domain)) => match domain.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Ok(()),
            },
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(PolicyError::ForbiddenAddress {
                host: url.host_str().unwrap_or_default().to_owned(),
                ip,
            })
        }
    }
}

/// A request refused by the network policy; always permanent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The URL scheme is not http or https.
    #[error(
        "refused {url}: scheme `{scheme}` is not allowed; only http:// and https:// URLs can be requested"
    )]
    UnsupportedScheme {
        /// The offending URL (query and credentials removed).
        url: String,
        /// The scheme that was refused.
        scheme: String,
    },
    /// The URL has no host.
    #[error(
        "refused {url}: the URL has no host; give an absolute URL such as https://example.com/"
    )]
    MissingHost {
        /// The offending URL (query and credentials removed).
        url: String,
    },
    /// The target address is not public and not allowlisted.
    #[error(
        "refused to connect to {ip} (host `{host}`): it is a private, loopback, link-local or otherwise non-public address; use a public address, or ask the operator to allowlist this network or start Weft with --allow-private-network"
    )]
    ForbiddenAddress {
        /// The host as written in the URL.
        host: String,
        /// The refused address.
        ip: IpAddr,
    },
    /// Every address the host name resolved to is forbidden.
    #[error(
        "refused to connect to `{host}`: it resolves only to non-public addresses ({}); use a public host, or ask the operator to allowlist this network or start Weft with --allow-private-network",
        join_ips(.refused)
    )]
    NoPublicAddress {
        /// The host name that was resolved.
        host: String,
        /// The addresses it resolved to, all refused.
        refused: Vec<IpAddr>,
    },
    /// A redirect pointed at a target the policy refuses.
    #[error("refused redirect target {target}: {reason}")]
    RedirectRefused {
        /// The redirect target URL (query and credentials removed), or its host
        /// when the refusal came from DNS resolution.
        target: String,
        /// Why the target was refused.
        reason: Box<PolicyError>,
    },
    /// The redirect chain was too long.
    #[error(
        "stopped at {url} after {max} redirects; request the final URL directly or fix the redirect loop"
    )]
    TooManyRedirects {
        /// The redirect target that was not followed (query and credentials removed).
        url: String,
        /// The redirect limit.
        max: usize,
    },
}

fn join_ips(ips: &[IpAddr]) -> String {
    let mut out = String::new();
    for (i, ip) in ips.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{ip}");
    }
    out
}

/// Errors from [`GuardedClient`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The underlying HTTP client could not be constructed.
    #[error(
        "could not build the outbound HTTP client: {0}; check the TLS and system configuration"
    )]
    Build(#[source] reqwest::Error),
    /// The network policy refused the request; retrying will not help.
    #[error(transparent)]
    Refused(#[from] PolicyError),
    /// The request failed in transit (DNS, connect, reset, timeout, ...).
    #[error(
        "request to {url} failed: {message}; check the host name and that the server is reachable (the request can be retried)"
    )]
    Transport {
        /// The request URL (query and credentials removed).
        url: String,
        /// Description of the failure, including its causes.
        message: String,
        /// Whether the failure was a timeout.
        timeout: bool,
        /// The underlying reqwest error.
        #[source]
        source: reqwest::Error,
    },
}

impl NetError {
    /// Whether this error was caused by a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, NetError::Transport { timeout: true, .. })
    }
}

/// Outbound HTTP client that enforces a [`NetPolicy`]; cheap to clone (shares one connection pool).
#[derive(Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    policy: Arc<NetPolicy>,
}

impl std::fmt::Debug for GuardedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedClient")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The W3C `traceparent` of a span: `00-{trace id}-{span id}-{flags}`.
pub fn traceparent(sc: &opentelemetry::trace::SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Sends `sc` as the request's `traceparent`.
fn set_traceparent(request: &mut reqwest::Request, sc: &opentelemetry::trace::SpanContext) {
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&traceparent(sc)) {
        request.headers_mut().insert("traceparent", v);
    }
}

impl GuardedClient {
    /// Builds the client (and its connection pool) once for the given policy.
    pub fn new(policy: NetPolicy) -> Result<Self, NetError> {
        let policy = Arc::new(policy);
        let redirect_policy = {
            let policy = Arc::clone(&policy);
            reqwest::redirect::Policy::custom(move |attempt| {
                let url = attempt.url();
                // `previous` includes the original request URL.
                if attempt.previous().len() > MAX_REDIRECTS {
                    let err = PolicyError::TooManyRedirects {
                        url: redact_url(url),
                        max: MAX_REDIRECTS,
                    };
                    return attempt.error(err);
                }
                // Literal-IP targets are checked here; host names are checked
                // by the resolver when the hop connects.
                match policy.check_url(url) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => {
                        let err = PolicyError::RedirectRefused {
                            target: redact_url(url),
                            reason: Box::new(reason),
                        };
                        attempt.error(err)
                    }
                }
            })
        };
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardResolver {
                policy: Arc::clone(&policy),
            }))
            .redirect(redirect_policy)
            // Proxies (incl. HTTP_PROXY from the environment, honoured by
            // default) resolve names themselves, which would bypass the guard.
            .no_proxy()
            // Don't leak the previous URL (which may carry secrets) to redirect targets.
            .referer(false)
            // Retries are the engine's job, with its own bookkeeping.
            .retry(reqwest::retry::never())
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(NetError::Build)?;
        Ok(Self { client, policy })
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &NetPolicy {
        &self.policy
    }

    /// Sends a request after checking it against the policy; follows up to [`MAX_REDIRECTS`] redirects.
    /// Within a trace (a run's step), the request is a client span of it and carries its W3C
    /// `traceparent`, so the receiver can join the trace.
    pub async fn execute(
        &self,
        mut request: reqwest::Request,
    ) -> Result<reqwest::Response, NetError> {
        use opentelemetry::trace::{
            Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _,
        };
        use opentelemetry::{Context, KeyValue};
        self.policy.check_url(request.url())?;
        let original = request.url().clone();
        let parent = Context::current();
        let (traced, sampled) = {
            let span = parent.span();
            let sc = span.span_context();
            (sc.is_valid(), sc.is_sampled())
        };
        // An unsampled trace records nothing: the request carries the step's own context.
        if traced && !sampled {
            set_traceparent(&mut request, parent.span().span_context());
        }
        let mut span = (traced && sampled).then(|| {
            let tracer = opentelemetry::global::tracer("weft");
            let name = format!("HTTP {}", request.method());
            // Host and path only: a query string may carry a secret.
            let target = format!(
                "{}://{}{}",
                original.scheme(),
                original.host_str().unwrap_or(""),
                original.path()
            );
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("http.request.method", request.method().to_string()),
                    KeyValue::new("url.full", target),
                ])
                .start_with_context(&tracer, &parent)
        });
        if let Some(span) = &span {
            set_traceparent(&mut request, span.span_context());
        }
        let out = self
            .client
            .execute(request)
            .await
            .map_err(|err| classify_error(err, &original));
        if let Some(span) = &mut span {
            match &out {
                Ok(r) => {
                    let code = r.status().as_u16();
                    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
                    if code >= 500 {
                        span.set_status(Status::error(format!("HTTP {code}")));
                    }
                }
                // Not the error text: it may quote the URL, query and all.
                Err(_) => span.set_status(Status::error("the request failed")),
            }
            span.end();
        }
        out
    }
}

/// Turns a reqwest error into a [`NetError`], surfacing policy refusals that
/// reqwest wrapped (from the resolver or the redirect policy).
fn classify_error(err: reqwest::Error, original: &Url) -> NetError {
    if let Some(policy_err) = find_in_chain::<PolicyError>(&err) {
        let policy_err = match policy_err.clone() {
            // reqwest reports the original URL even when a later hop failed,
            // so a resolver refusal for a different host must come from a redirect.
            refusal @ PolicyError::NoPublicAddress { .. }
                if !refusal_is_for(&refusal, original) =>
            {
                let target = match &refusal {
                    PolicyError::NoPublicAddress { host, .. } => format!("`{host}`"),
                    _ => String::new(),
                };
                PolicyError::RedirectRefused {
                    target,
                    reason: Box::new(refusal),
                }
            }
            other => other,
        };
        return NetError::Refused(policy_err);
    }
    let url = redact_url(err.url().unwrap_or(original));
    let timeout = err.is_timeout();
    let message = describe_chain(&err);
    NetError::Transport {
        url,
        message,
        timeout,
        source: err.without_url(),
    }
}

fn refusal_is_for(refusal: &PolicyError, url: &Url) -> bool {
    match refusal {
        PolicyError::NoPublicAddress { host, .. } => {
            url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(host))
        }
        _ => true,
    }
}

fn find_in_chain<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// Describes an error and its causes without the URL (which may carry secrets).
pub(crate) fn describe_chain(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    if err.is_timeout() {
        parts.push("timed out".to_owned());
    } else if err.is_connect() {
        parts.push("could not connect".to_owned());
    } else if err.is_body() || err.is_decode() {
        parts.push("error reading the response body".to_owned());
    } else if err.is_redirect() {
        parts.push("error following a redirect".to_owned());
    } else {
        parts.push("error sending the request".to_owned());
    }
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        // hyper and reqwest add wrapper layers that say nothing new, and some
        // repeat their causes in Display; skip those.
        let noise = matches!(
            text.as_str(),
            "client error (Connect)" | "error resolving DNS"
        );
        if !noise && !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// A URL without credentials, query or fragment, for error messages.
pub(crate) fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// DNS failures that are not policy refusals (and so may be transient).
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("could not resolve host `{host}`: {source}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("host `{host}` has no addresses")]
    Empty { host: String },
}

/// Boxes an error for reqwest without double-boxing (a `Box<E>` would hide `E` from downcasts).
fn boxed<E: StdError + Send + Sync + 'static>(err: E) -> Box<dyn StdError + Send + Sync> {
    Box::new(err)
}

/// Resolver that drops forbidden addresses, so the address actually connected to is checked.
struct GuardResolver {
    policy: Arc<NetPolicy>,
}

impl Resolve for GuardResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let lookup = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(|addrs| addrs.collect::<Vec<SocketAddr>>());
            let resolved = match lookup {
                Ok(addrs) => addrs,
                Err(source) => return Err(boxed(ResolveError::Lookup { host, source })),
            };
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|addr| policy.permits(addr.ip()));
            if allowed.is_empty() {
                if refused.is_empty() {
                    return Err(boxed(ResolveError::Empty { host }));
                }
                let mut refused: Vec<IpAddr> = refused.iter().map(SocketAddr::ip).collect();
                refused.sort();
                refused.dedup();
                return Err(boxed(PolicyError::NoPublicAddress { host, refused }));
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Whether `ip` is outside the public unicast address space (loopback, private,
/// link-local, reserved, documentation, multicast, ...), including IPv6 forms
/// that embed a forbidden IPv4 address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    match a {
        0 => true,                             // "this network" 0/8
        10 => true,                            // private
        100 if (64..128).contains(&b) => true, // CGNAT 100.64/10
        127 => true,                           // loopback
        169 if b == 254 => true,               // link-local (cloud metadata)
        172 if (16..32).contains(&b) => true,  // private 172.16/12
        192 => matches!(
            (b, c),
            (0, 0)      // IETF protocol assignments 192.0.0/24
            | (0, 2)    // TEST-NET-1
            | (88, 99)  // deprecated 6to4 relay anycast
            | (168, _) // private 192.168/16
        ),
        198 if b == 18 || b == 19 => true, // benchmarking 198.18/15
        198 if b == 51 && c == 100 => true, // TEST-NET-2
        203 if b == 0 && c == 113 => true, // TEST-NET-3
        224..=239 => true,                 // multicast
        240..=255 => true,                 // reserved 240/4 incl. broadcast
        _ => false,
    }
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    // Low 32 bits; truncation is the point.
    let embedded_low = || Ipv4Addr::from(ip.to_bits() as u32);

    // IPv4-mapped ::ffff:a.b.c.d — the same host as the v4 address.
    if seg[..5] == [0, 0, 0, 0, 0] && seg[5] == 0xffff {
        return is_forbidden_v4(embedded_low());
    }
    // IPv4-compatible ::a.b.c.d (deprecated); also covers :: and ::1.
    if seg[..6] == [0, 0, 0, 0, 0, 0] {
        return is_forbidden_v4(embedded_low());
    }
    // NAT64 well-known prefix 64:ff9b::/96 reaches the embedded v4 address.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_forbidden_v4(embedded_low());
    }
    // Only 2000::/3 is global unicast. Everything else — the rest of ::/8
    // (incl. local-use NAT64 64:ff9b:1::/48, whose embedding depends on the
    // local prefix length), discard-only 100::/64, unique-local fc00::/7,
    // link-local fe80::/10, site-local fec0::/10, multicast ff00::/8 — is not.
    if seg[0] & 0xe000 != 0x2000 {
        return true;
    }
    // 2001::/23 IETF protocol assignments: Teredo 2001::/32 (embeds an
    // obfuscated client address), benchmarking 2001:2::/48, ORCHID, ...
    if seg[0] == 0x2001 && seg[1] < 0x0200 {
        return true;
    }
    // Documentation 2001:db8::/32 and 3fff::/20.
    if (seg[0] == 0x2001 && seg[1] == 0x0db8) || (seg[0] == 0x3fff && seg[1] < 0x1000) {
        return true;
    }
    // 6to4 2002:AABB:CCDD::/48 embeds the v4 address AA.BB.CC.DD.
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::from((u32::from(seg[1]) << 16) | u32::from(seg[2]));
        return is_forbidden_v4(v4);
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(ip: &str, forbidden: bool) {
        let addr: IpAddr = ip.parse().unwrap();
        assert_eq!(is_forbidden(addr), forbidden, "is_forbidden({ip})");
    }

    #[test]
    fn forbidden_table() {
        let table: &[(&str, bool)] = &[
            // IPv4 public
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("93.184.216.34", false),
            ("100.63.255.255", false),
            ("100.128.0.0", false),
            ("172.15.255.255", false),
            ("172.32.0.0", false),
            ("192.0.1.1", false),
            ("192.169.0.1", false),
            ("198.17.255.255", false),
            ("198.20.0.0", false),
            ("223.255.255.255", false),
            ("11.0.0.1", false),
            // IPv4 forbidden
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("192.0.0.8", true),
            ("192.0.0.170", true),
            ("192.0.2.1", true),
            ("198.51.100.7", true),
            ("203.0.113.9", true),
            ("198.18.0.1", true),
            ("198.19.255.255", true),
            ("192.88.99.1", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("240.0.0.1", true),
            ("255.255.255.255", true),
            // IPv6 public
            ("2606:4700:4700::1111", false),
            ("2001:4860:4860::8888", false),
            ("2a00:1450:4001:80b::200e", false),
            ("::ffff:8.8.8.8", false),
            ("64:ff9b::808:808", false),
            ("2002:808:808::1", false),
            // IPv6 forbidden
            ("::1", true),
            ("::", true),
            ("fc00::1", true),
            ("fd12:3456:789a::1", true),
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", true),
            ("ff02::1", true),
            ("ff0e::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:7f00:1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:10.0.0.1", true),
            ("::ffff:0.0.0.0", true),
            ("::127.0.0.1", true),
            ("::10.1.2.3", true),
            ("::ffff:0:127.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b::127.0.0.1", true),
            ("64:ff9b::10.0.0.1", true),
            ("64:ff9b:1::808:808", true),
            ("64:ff9b:1:abcd::a9fe:a9fe", true),
            ("2002:7f00:1::1", true),
            ("2002:a9fe:a9fe::", true),
            ("2002:c0a8:101::1", true),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", true),
            ("2001::1", true),
            ("2001:db8::1", true),
            ("2001:db8:ffff::1", true),
            ("2001:2::1", true),
            ("3fff::1", true),
            ("100::1", true),
            ("5f00::1", true),
            ("::2", true),
        ];
        assert!(table.len() >= 40);
        for (ip, forbidden) in table {
            check(ip, *forbidden);
        }
    }

    #[test]
    fn policy_allowlist_and_allow_private() {
        let off = NetPolicy::public_only();
        assert!(!off.permits("127.0.0.1".parse().unwrap()));
        assert!(off.permits("8.8.8.8".parse().unwrap()));

        let on = NetPolicy::allow_all();
        assert!(on.permits("127.0.0.1".parse().unwrap()));
        assert!(on.permits("::1".parse().unwrap()));

        let listed = NetPolicy {
            allow_private: false,
            allow: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(listed.permits("10.1.2.3".parse().unwrap()));
        assert!(listed.permits("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!listed.permits("10.2.0.1".parse().unwrap()));
        assert!(!listed.permits("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn check_url_normalised_literals() {
        let off = NetPolicy::public_only();
        for raw in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "https://169.254.169.254/latest/meta-data",
        ] {
            let url = Url::parse(raw).unwrap();
            let err = off.check_url(&url).unwrap_err();
            assert!(
                matches!(err, PolicyError::ForbiddenAddress { .. }),
                "{raw}: {err}"
            );
        }
        let ftp = Url::parse("ftp://example.com/file").unwrap();
        assert!(matches!(
            off.check_url(&ftp),
            Err(PolicyError::UnsupportedScheme { .. })
        ));
        let file = Url::parse("file:///etc/passwd").unwrap();
        assert!(off.check_url(&file).is_err());
        assert!(
            off.check_url(&Url::parse("https://example.com/").unwrap())
                .is_ok()
        );
    }

    #[test]
    fn redact_removes_secrets() {
        let url = Url::parse("https://user:pw@example.com/p?api_key=s3cret#frag").unwrap();
        assert_eq!(redact_url(&url), "https://example.com/p");
    }
}
