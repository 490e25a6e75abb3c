//! OAuth2 credentials end to end: the real `weft` binary against a local authorization server
//! that follows RFC 6749 (authorization code grant, refresh tokens, HTTP Basic client
//! authentication, error responses) and RFC 7636 (PKCE with S256), plus a bearer-protected API
//! (RFC 6750). The test plays the browser between the two.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION, PRAGMA, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Server, fresh_pg_db};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "weft-test-client";
/// Only characters that `application/x-www-form-urlencoded` leaves alone, so the RFC 6749 2.3.1
/// encoding of the Basic credentials and a plain one agree.
const CLIENT_SECRET: &str = "oauth-canary-client-secret_4b7e1a";
/// Scopes the provider knows.
const KNOWN_SCOPES: &[&str] = &["read", "write", "admin"];
/// RFC 6749 4.1.2: codes live at most 10 minutes.
const CODE_TTL: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// PKCE S256 and HTTP Basic decoding for the stand-in provider.

mod s256 {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use sha2::Digest;

    /// Base64url without padding (RFC 7636 appendix A).
    pub fn b64url_nopad(data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(data)
    }

    /// Standard base64 (padding optional), as HTTP Basic uses it.
    pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
        STANDARD_NO_PAD.decode(s.trim_end_matches('=')).ok()
    }

    /// RFC 7636 4.2: `code_challenge = BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))`.
    pub fn challenge(verifier: &str) -> String {
        b64url_nopad(&sha2::Sha256::digest(verifier.as_bytes()))
    }
}

#[test]
fn the_test_providers_pkce_matches_rfc7636_appendix_b() {
    assert_eq!(
        s256::challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    assert_eq!(
        s256::b64_decode("d2VmdDpzZWNyZXQ=").unwrap(),
        b"weft:secret".to_vec()
    );
    assert_eq!(s256::b64_decode("d2VmdDpzZWNyZXQ").unwrap(), b"weft:secret");
    assert_eq!(s256::b64url_nopad(&[0xfb, 0xff]), "-_8");
}

// ---------------------------------------------------------------------------------------------
// The authorization server.

/// An authorization code, bound to what the authorization request said.
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    issued: Instant,
    used: bool,
    /// The grant its exchange created, revoked if the code is presented again.
    grant: Option<usize>,
}

/// What one user consent granted: the current refresh token and the scope.
struct Grant {
    client_id: String,
    scope: String,
    refresh_token: String,
    revoked: bool,
}

struct Access {
    grant: usize,
    no: u64,
    scope: String,
    expires: Instant,
}

/// The provider's state; tests read and switch it through [`OAuth::with`].
struct AsState {
    /// Registered redirection endpoints (RFC 6749 3.1.2.2).
    redirect_uris: Vec<String>,
    /// `expires_in` of access tokens issued from now on.
    expires_in: u64,
    /// The user refuses consent.
    deny: bool,
    /// How long a refresh grant takes to answer (widens any race between refreshers).
    refresh_delay: Duration,
    codes: HashMap<String, Code>,
    grants: Vec<Grant>,
    /// Refresh tokens replaced by rotation → their grant.
    retired_refresh: HashMap<String, usize>,
    access: HashMap<String, Access>,
    /// Number of the last access token issued (1, 2, …).
    token_no: u64,
    /// `grant_type=authorization_code` requests received.
    code_requests: usize,
    /// `grant_type=refresh_token` requests received.
    refresh_requests: usize,
    /// Every access and refresh token issued.
    issued: Vec<String>,
    /// Each `/api/me` call: the number of the valid token it carried, or None.
    me_calls: Vec<Option<u64>>,
    /// What the provider refused and why.
    log: Vec<String>,
}

type OErr = (StatusCode, &'static str, String);

fn bad(error: &'static str, description: impl Into<String>) -> OErr {
    (StatusCode::BAD_REQUEST, error, description.into())
}

/// Parameters of a query or form body. RFC 6749 3.1/3.2: parameters sent without a value are
/// treated as omitted, and none may be included more than once.
fn unique_params(raw: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut m = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw) {
        if v.is_empty() {
            continue;
        }
        if m.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("parameter {k} is included more than once"));
        }
    }
    Ok(m)
}

/// One `application/x-www-form-urlencoded` value (RFC 6749 2.3.1 encodes Basic credentials so).
fn form_decode(s: &str) -> String {
    form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `redirect_uri` with the response parameters added to its query (RFC 6749 4.1.2).
fn redirect_to(redirect_uri: &str, params: &[(&str, &str)], state: Option<&str>) -> String {
    let mut u = reqwest::Url::parse(redirect_uri).unwrap();
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(s) = state {
            q.append_pair("state", s);
        }
    }
    u.to_string()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

impl AsState {
    fn new() -> Self {
        AsState {
            redirect_uris: Vec::new(),
            expires_in: 3600,
            deny: false,
            refresh_delay: Duration::ZERO,
            codes: HashMap::new(),
            grants: Vec::new(),
            retired_refresh: HashMap::new(),
            access: HashMap::new(),
            token_no: 0,
            code_requests: 0,
            refresh_requests: 0,
            issued: Vec::new(),
            me_calls: Vec::new(),
            log: Vec::new(),
        }
    }

    /// The authorization endpoint (RFC 6749 4.1.1, RFC 7636 4.3): the redirect Location, or
    /// a reason to answer 400 without redirecting (bad client or redirect URI, 4.1.2.1).
    fn authorize(&mut self, query: &str) -> Result<String, String> {
        let q = unique_params(query.as_bytes())?;
        let client_id = q.get("client_id").ok_or("client_id is missing")?;
        if client_id != CLIENT_ID {
            return Err(format!("unknown client_id {client_id}"));
        }
        let redirect_uri = q.get("redirect_uri").ok_or("redirect_uri is missing")?;
        if !self.redirect_uris.contains(redirect_uri) {
            return Err(format!(
                "redirect_uri {redirect_uri} is not registered for this client (registered: {:?})",
                self.redirect_uris
            ));
        }
        let state = q.get("state").map(String::as_str);
        let fail = |error: &str, description: &str| {
            redirect_to(
                redirect_uri,
                &[("error", error), ("error_description", description)],
                state,
            )
        };
        if q.get("response_type").map(String::as_str) != Some("code") {
            return Ok(fail(
                "unsupported_response_type",
                "response_type must be code",
            ));
        }
        match q.get("code_challenge_method").map(String::as_str) {
            Some("S256") => {}
            Some(_) => return Ok(fail("invalid_request", "transform algorithm not supported")),
            None => {
                return Ok(fail(
                    "invalid_request",
                    "code_challenge_method=S256 is required",
                ));
            }
        }
        let Some(challenge) = q.get("code_challenge") else {
            return Ok(fail("invalid_request", "code challenge required"));
        };
        if challenge.len() != 43
            || !challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Ok(fail(
                "invalid_request",
                "code_challenge is not BASE64URL(SHA256(code_verifier))",
            ));
        }
        let scope = q.get("scope").cloned().unwrap_or_else(|| "read".into());
        if scope.split(' ').any(|s| !KNOWN_SCOPES.contains(&s)) {
            return Ok(fail("invalid_scope", "unknown scope"));
        }
        if self.deny {
            return Ok(fail("access_denied", "the user denied the request"));
        }
        let code = format!("code-{}", weft_types::random_secret());
        self.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.clone(),
                redirect_uri: redirect_uri.clone(),
                challenge: challenge.clone(),
                scope,
                issued: Instant::now(),
                used: false,
                grant: None,
            },
        );
        Ok(redirect_to(redirect_uri, &[("code", &code)], state))
    }

    /// Client authentication with HTTP Basic (RFC 6749 2.3.1): the client id.
    fn client_auth(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<String, OErr> {
        let unauthorized = |d: &str| (StatusCode::UNAUTHORIZED, "invalid_client", d.to_string());
        let basic = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, c)| c.trim().to_string());
        let Some(basic) = basic else {
            return Err(unauthorized(
                "client authentication with HTTP Basic is required (RFC 6749 2.3.1)",
            ));
        };
        if form.contains_key("client_secret") {
            return Err(bad(
                "invalid_request",
                "more than one client authentication method (RFC 6749 2.3)",
            ));
        }
        let decoded = s256::b64_decode(&basic)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| unauthorized("the Basic credentials are not base64"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| unauthorized("the Basic credentials have no ':'"))?;
        let (id, secret) = (form_decode(id), form_decode(secret));
        if id != CLIENT_ID || secret != CLIENT_SECRET {
            return Err(unauthorized("unknown client or wrong client secret"));
        }
        if let Some(cid) = form.get("client_id")
            && *cid != id
        {
            return Err(unauthorized(
                "client_id does not match the authenticated client",
            ));
        }
        Ok(id)
    }

    /// Issues an access token and a new refresh token for a grant (rotation, RFC 6749 6).
    fn issue(&mut self, grant: usize, scope: &str) -> Value {
        self.token_no += 1;
        let access_token = format!("at-canary-{}", weft_types::random_secret());
        let refresh_token = format!("rt-canary-{}", weft_types::random_secret());
        let old = std::mem::replace(&mut self.grants[grant].refresh_token, refresh_token.clone());
        if !old.is_empty() {
            self.retired_refresh.insert(old, grant);
        }
        self.access.insert(
            access_token.clone(),
            Access {
                grant,
                no: self.token_no,
                scope: scope.to_string(),
                expires: Instant::now() + Duration::from_secs(self.expires_in),
            },
        );
        self.issued.push(access_token.clone());
        self.issued.push(refresh_token.clone());
        json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": refresh_token,
            "scope": scope,
        })
    }

    /// The token endpoint (RFC 6749 4.1.3, 6; RFC 7636 4.5, 4.6).
    fn token(
        &mut self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<Value, OErr> {
        let client = self.client_auth(headers, form)?;
        let need = |k: &str| {
            form.get(k)
                .cloned()
                .ok_or_else(|| bad("invalid_request", format!("{k} is required")))
        };
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let code = need("code")?;
                let Some(c) = self.codes.get_mut(&code) else {
                    return Err(bad("invalid_grant", "unknown authorization code"));
                };
                if c.used {
                    // RFC 6749 4.1.2: a code used twice revokes what it granted.
                    if let Some(g) = c.grant {
                        self.grants[g].revoked = true;
                    }
                    return Err(bad("invalid_grant", "authorization code already used"));
                }
                c.used = true;
                if c.issued.elapsed() > CODE_TTL {
                    return Err(bad("invalid_grant", "authorization code expired"));
                }
                if c.client_id != client {
                    return Err(bad("invalid_grant", "code issued to another client"));
                }
                if form.get("redirect_uri") != Some(&c.redirect_uri) {
                    return Err(bad(
                        "invalid_grant",
                        "redirect_uri does not match the authorization request",
                    ));
                }
                let Some(verifier) = form.get("code_verifier") else {
                    return Err(bad(
                        "invalid_request",
                        "code_verifier is required (RFC 7636)",
                    ));
                };
                if !(43..=128).contains(&verifier.len()) || !verifier.bytes().all(is_unreserved) {
                    return Err(bad(
                        "invalid_request",
                        "code_verifier must be 43-128 unreserved characters (RFC 7636 4.1)",
                    ));
                }
                if s256::challenge(verifier) != c.challenge {
                    return Err(bad(
                        "invalid_grant",
                        "PKCE verification failed: BASE64URL(SHA256(code_verifier)) != code_challenge",
                    ));
                }
                let scope = c.scope.clone();
                self.grants.push(Grant {
                    client_id: client,
                    scope: scope.clone(),
                    refresh_token: String::new(),
                    revoked: false,
                });
                let g = self.grants.len() - 1;
                if let Some(c) = self.codes.get_mut(&code) {
                    c.grant = Some(g);
                }
                Ok(self.issue(g, &scope))
            }
            Some("refresh_token") => {
                let rt = need("refresh_token")?;
                let Some(g) = self.grants.iter().position(|g| g.refresh_token == rt) else {
                    if let Some(&g) = self.retired_refresh.get(&rt) {
                        // OAuth 2.1 4.3.1: a rotated refresh token presented again revokes the grant.
                        self.grants[g].revoked = true;
                        return Err(bad(
                            "invalid_grant",
                            "refresh token already used (it was rotated); the grant is revoked",
                        ));
                    }
                    return Err(bad("invalid_grant", "unknown refresh token"));
                };
                if self.grants[g].revoked {
                    return Err(bad("invalid_grant", "the grant was revoked"));
                }
                if self.grants[g].client_id != client {
                    return Err(bad(
                        "invalid_grant",
                        "refresh token issued to another client",
                    ));
                }
                let granted = self.grants[g].scope.clone();
                let scope = match form.get("scope") {
                    Some(s) => {
                        if s.split(' ').any(|x| !granted.split(' ').any(|y| y == x)) {
                            return Err(bad("invalid_scope", "scope exceeds the grant"));
                        }
                        s.clone()
                    }
                    None => granted,
                };
                Ok(self.issue(g, &scope))
            }
            Some(_) => Err(bad("unsupported_grant_type", "unsupported grant_type")),
            None => Err(bad("invalid_request", "grant_type is required")),
        }
    }
}

type Shared = Arc<Mutex<AsState>>;

fn no_store(r: &mut Response) {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

async fn authorize_endpoint(State(st): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let mut s = st.lock().unwrap();
    match s.authorize(q.as_deref().unwrap_or("")) {
        Ok(location) => {
            if location.contains("error=") {
                s.log
                    .push(format!("authorize: redirected with an error: {location}"));
            }
            (StatusCode::FOUND, [(LOCATION, location)]).into_response()
        }
        Err(why) => {
            s.log.push(format!("authorize: 400 {why}"));
            (StatusCode::BAD_REQUEST, why).into_response()
        }
    }
}

async fn token_endpoint(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let ctype = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let is_form = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded");
    let result = match unique_params(&body) {
        _ if !is_form => Err(bad(
            "invalid_request",
            format!("the token endpoint takes application/x-www-form-urlencoded, not {ctype:?}"),
        )),
        Err(e) => Err(bad("invalid_request", e)),
        Ok(form) => {
            if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
                let delay = {
                    let mut s = st.lock().unwrap();
                    s.refresh_requests += 1;
                    s.refresh_delay
                };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            } else if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
                st.lock().unwrap().code_requests += 1;
            }
            let mut s = st.lock().unwrap();
            let r = s.token(&headers, &form);
            if let Err((status, error, description)) = &r {
                let grant = form.get("grant_type").cloned().unwrap_or_default();
                s.log.push(format!(
                    "token ({grant}): {} {error}: {description}",
                    status.as_u16()
                ));
            }
            r
        }
    };
    let mut resp = match result {
        Ok(tokens) => (StatusCode::OK, axum::Json(tokens)).into_response(),
        Err((status, error, description)) => {
            let mut r = (
                status,
                axum::Json(json!({"error": error, "error_description": description})),
            )
                .into_response();
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"oauth\""),
                );
            }
            r
        }
    };
    no_store(&mut resp);
    resp
}

async fn me_endpoint(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let now = Instant::now();
    let valid = token
        .as_ref()
        .and_then(|t| s.access.get(t))
        .filter(|a| a.expires > now && !s.grants[a.grant].revoked)
        .map(|a| (a.no, a.scope.split(' ').any(|x| x == "read")));
    s.me_calls.push(valid.map(|(no, _)| no));
    match valid {
        Some((no, true)) => (
            StatusCode::OK,
            axum::Json(json!({"user": "octo", "token_no": no})),
        )
            .into_response(),
        Some((_, false)) => (
            StatusCode::FORBIDDEN,
            [(
                WWW_AUTHENTICATE,
                "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"read\"",
            )],
            axum::Json(json!({"error": "insufficient_scope"})),
        )
            .into_response(),
        None => {
            s.log.push(format!(
                "/api/me: invalid token (authorization header present: {})",
                token.is_some()
            ));
            (
                StatusCode::UNAUTHORIZED,
                [(
                    WWW_AUTHENTICATE,
                    "Bearer realm=\"api\", error=\"invalid_token\"",
                )],
                axum::Json(json!({"error": "invalid_token"})),
            )
                .into_response()
        }
    }
}

/// The provider, on 127.0.0.1 on its own thread: `/authorize`, `/token`, `/api/me`.
struct OAuth {
    url: String,
    st: Shared,
}

impl OAuth {
    fn start() -> OAuth {
        let st: Shared = Arc::new(Mutex::new(AsState::new()));
        let shared = st.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new()
                    .route("/authorize", axum::routing::get(authorize_endpoint))
                    .route("/token", axum::routing::post(token_endpoint))
                    .route("/api/me", axum::routing::get(me_endpoint))
                    .with_state(shared);
                axum::serve(listener, app).await.unwrap();
            });
        });
        OAuth {
            url: format!("http://{}", rx.recv().unwrap()),
            st,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut AsState) -> R) -> R {
        f(&mut self.st.lock().unwrap())
    }

    /// Registers Weft's redirection endpoint for the client.
    fn register(&self, srv: &Server) {
        let uri = format!("{}/oauth/callback", srv.url);
        self.with(|s| s.redirect_uris.push(uri));
    }

    fn refreshes(&self) -> usize {
        self.with(|s| s.refresh_requests)
    }

    fn exchanges(&self) -> usize {
        self.with(|s| s.code_requests)
    }

    fn last_token_no(&self) -> u64 {
        self.with(|s| s.token_no)
    }

    fn log(&self) -> String {
        self.with(|s| s.log.join("\n"))
    }

    /// Everything that must never show: the client secret and every token issued.
    fn secrets(&self) -> Vec<String> {
        let mut v = self.with(|s| s.issued.clone());
        v.push(CLIENT_SECRET.to_string());
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: the browser, credentials, flows.

/// A browser's GET: no API key, redirects not followed; (status, Location, body).
fn browser_get(url: &str) -> (u16, Option<String>, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let st = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = r.text().await.unwrap_or_default();
        (
            st,
            location,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

fn query_map(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(url: &str, key: &str) -> Option<String> {
    query_map(url).remove(key)
}

/// `url` with one query parameter's value replaced.
fn replace_param(url: &str, key: &str, value: &str) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == key {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// Whether a credential (as `credentials show` gives it) has this field set.
fn has_field(c: &Value, name: &str) -> bool {
    c["fields"]
        .as_array()
        .is_some_and(|a| a.iter().any(|f| f == name))
}

/// `weft credentials set NAME --connector oauth2 …` pointing at the provider.
fn set_credential(srv: &Server, auth: &OAuth, name: &str) -> Value {
    srv.cli_json(&[
        "credentials",
        "set",
        name,
        "--connector",
        "oauth2",
        "--value",
        &format!("client_id={CLIENT_ID}"),
        "--value",
        &format!("client_secret={CLIENT_SECRET}"),
        "--value",
        &format!("authorize_url={}/authorize", auth.url),
        "--value",
        &format!("token_url={}/token", auth.url),
        "--value",
        "scopes=read write",
    ])
}

/// Starts authorization in Weft and plays the user at the provider: the Location the provider
/// redirects the browser to (Weft's callback with a code or an error).
fn consent(srv: &Server, auth: &OAuth, name: &str) -> String {
    let a = srv.cli_json(&["credentials", "authorize", name]);
    let url = a["authorize_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no authorize_url: {a}"));
    let (st, location, body) = browser_get(url);
    assert_eq!(
        st,
        302,
        "the provider refused the authorization request {url}: {body}\n{}",
        auth.log()
    );
    location.unwrap()
}

/// The whole authorization: consent, then the callback on Weft; the credential is ok after.
fn connect(srv: &Server, auth: &OAuth, name: &str) {
    let location = consent(srv, auth, name);
    assert!(
        param(&location, "code").is_some(),
        "the provider redirected without a code: {location}\n{}",
        auth.log()
    );
    let (st, _, body) = browser_get(&location);
    assert_eq!(st, 200, "callback: {body}\n{}", auth.log());
    assert_eq!(body, json!({"credential": name, "status": "ok"}));
    let c = srv.cli_json(&["credentials", "show", name]);
    assert_eq!(c["status"], "ok", "{c}");
}

fn me_flow(name: &str, cred: &str, base: &str, steps: usize) -> String {
    let mut y = format!("name: {name}\ntrigger:\n  manual: {{}}\nsteps:\n");
    for i in 0..steps {
        y.push_str(&format!(
            "  - id: me{i}\n    needs: []\n    action: oauth2.request\n    credential: {cred}\n    input:\n      method: GET\n      url: \"{base}/api/me\"\n    retry: {{max_attempts: 3, initial: 100ms}}\n"
        ));
    }
    y
}

fn start_run(srv: &Server, flow: &str) -> String {
    let r = srv.cli_json(&["run", "start", flow, "--input", "{}"]);
    r["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run_id: {r}"))
        .to_string()
}

fn run_flow(srv: &Server, flow: &str) -> Value {
    let id = start_run(srv, flow);
    srv.wait_run(&id, T)
}

/// The token number `/api/me` answered to each step.
fn token_nos(run: &Value) -> Vec<u64> {
    run["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {run}"))
        .iter()
        .map(|s| {
            s["output"]["body"]["token_no"]
                .as_u64()
                .unwrap_or_else(|| panic!("step without a token number: {s}"))
        })
        .collect()
}

/// Every file under `dir`, as bytes.
fn all_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn assert_problem(got: (u16, Option<String>, Value), status: u16, code: &str, what: &str) -> Value {
    let (st, _, p) = got;
    assert_eq!(
        (st, p["code"].as_str()),
        (status, Some(code)),
        "{what}: {p}"
    );
    p
}

/// A client's POST to the token endpoint: (status, headers, JSON body).
fn token_post(
    auth: &OAuth,
    basic: Option<(&str, &str)>,
    content_type: &str,
    form: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = reqwest::Client::new()
            .post(format!("{}/token", auth.url))
            .header("content-type", content_type)
            .body(body);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let headers = r.headers().clone();
        (st, headers, r.json().await.unwrap_or(Value::Null))
    })
}

/// An API call with a bearer token: (status, WWW-Authenticate, body).
fn api_me(auth: &OAuth, token: Option<&str>) -> (u16, String, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(format!("{}/api/me", auth.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (st, challenge, r.json().await.unwrap_or(Value::Null))
    })
}

/// The stand-in refuses what RFC 6749/7636 make it refuse, so the tests above cannot pass
/// against a client that gets the protocol wrong.
#[test]
fn the_test_provider_enforces_rfc6749_and_rfc7636() {
    let auth = OAuth::start();
    let redirect = "http://127.0.0.1:9/oauth/callback";
    auth.with(|s| s.redirect_uris.push(redirect.into()));
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let authorize = |client: &str, redirect: &str, extra: &str| {
        browser_get(&format!(
            "{}/authorize?response_type=code&client_id={client}&redirect_uri={}&scope=read%20write&state=s1{extra}",
            auth.url,
            enc(redirect)
        ))
    };
    let pkce = format!(
        "&code_challenge={}&code_challenge_method=S256",
        s256::challenge(verifier)
    );
    let code = || {
        let (st, loc, body) = authorize(CLIENT_ID, redirect, &pkce);
        assert_eq!(st, 302, "{body}");
        let loc = loc.unwrap();
        assert_eq!(param(&loc, "state").as_deref(), Some("s1"), "{loc}");
        param(&loc, "code").unwrap()
    };
    let client = Some((CLIENT_ID, CLIENT_SECRET));
    const FORM: &str = "application/x-www-form-urlencoded";
    let exchange = |code: &str, verifier: &str, redirect: &str| {
        token_post(
            &auth,
            client,
            FORM,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
            ],
        )
    };

    // The authorization endpoint: no redirect for a bad client or redirect URI, an error
    // redirect for the rest (RFC 6749 4.1.2.1, RFC 7636 4.4.1).
    let (st, loc, _) = authorize("someone-else", redirect, &pkce);
    assert_eq!((st, loc), (400, None));
    let (st, loc, _) = authorize(CLIENT_ID, "http://127.0.0.1:9/elsewhere", &pkce);
    assert_eq!((st, loc), (400, None));
    for extra in [
        String::new(),
        "&code_challenge_method=S256".to_string(),
        pkce.replace("S256", "plain"),
    ] {
        let (st, loc, _) = authorize(CLIENT_ID, redirect, &extra);
        assert_eq!(st, 302);
        assert_eq!(
            param(&loc.unwrap(), "error").as_deref(),
            Some("invalid_request"),
            "{extra}"
        );
    }

    // The token endpoint authenticates the client with HTTP Basic.
    let c = code();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", c.as_str()),
        ("redirect_uri", redirect),
        ("code_verifier", verifier),
    ];
    let (st, h, b) = token_post(&auth, None, FORM, &form);
    assert_eq!((st, &b["error"]), (401, &json!("invalid_client")), "{b}");
    assert!(h.get("www-authenticate").is_some());
    let (st, _, b) = token_post(&auth, Some((CLIENT_ID, "wrong")), FORM, &form);
    assert_eq!((st, &b["error"]), (401, &json!("invalid_client")), "{b}");
    let (st, _, b) = token_post(&auth, client, "application/json", &form);
    assert_eq!((st, &b["error"]), (400, &json!("invalid_request")), "{b}");
    let (st, _, b) = token_post(&auth, client, FORM, &[("grant_type", "password")]);
    assert_eq!(
        (st, &b["error"]),
        (400, &json!("unsupported_grant_type")),
        "{b}"
    );

    // PKCE and the redirect URI are checked; a code is good once.
    let wrong = "A".repeat(43);
    let (st, _, b) = exchange(&code(), &wrong, redirect);
    assert_eq!((st, &b["error"]), (400, &json!("invalid_grant")), "{b}");
    let (st, _, b) = exchange(&code(), verifier, "http://127.0.0.1:9/other");
    assert_eq!((st, &b["error"]), (400, &json!("invalid_grant")), "{b}");
    let c = code();
    let (st, h, tokens) = exchange(&c, verifier, redirect);
    assert_eq!(st, 200, "{tokens}");
    assert_eq!(
        h.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["scope"], "read write");
    let at = tokens["access_token"].as_str().unwrap().to_string();
    assert_eq!(api_me(&auth, Some(&at)).2["user"], "octo");
    let (st, _, b) = exchange(&c, verifier, redirect);
    assert_eq!((st, &b["error"]), (400, &json!("invalid_grant")), "{b}");
    assert_eq!(
        api_me(&auth, Some(&at)).0,
        401,
        "a code used twice revokes its tokens"
    );

    // Refresh tokens rotate; presenting a rotated one revokes the grant.
    let (_, _, tokens) = exchange(&code(), verifier, redirect);
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let refresh = |rt: &str| {
        token_post(
            &auth,
            client,
            FORM,
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        )
    };
    let (st, _, t2) = refresh(&rt1);
    assert_eq!(st, 200, "{t2}");
    let rt2 = t2["refresh_token"].as_str().unwrap().to_string();
    let at2 = t2["access_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert_eq!(api_me(&auth, Some(&at2)).0, 200);
    let (st, _, b) = refresh(&rt1);
    assert_eq!((st, &b["error"]), (400, &json!("invalid_grant")), "{b}");
    let (st, _, b) = refresh(&rt2);
    assert_eq!((st, &b["error"]), (400, &json!("invalid_grant")), "{b}");
    let (st, challenge, b) = api_me(&auth, Some(&at2));
    assert_eq!((st, &b["error"]), (401, &json!("invalid_token")));
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(api_me(&auth, None).0, 401);
    assert_eq!(auth.refreshes(), 3);
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn oauth_authorization_code_with_pkce_connects_and_actions_use_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, None, &[], &[]);
    let auth = OAuth::start();
    auth.register(&srv);
    let redirect_uri = format!("{}/oauth/callback", srv.url);

    // Created, but not usable until someone authorizes it.
    let c = set_credential(&srv, &auth, "api");
    assert_eq!(c["connector"], "oauth2", "{c}");
    let shown = srv.cli_json(&["credentials", "show", "api"]);
    assert_eq!(shown["status"], "needs_reauth", "{shown}");
    let reason = shown["status_reason"].as_str().unwrap_or("").to_lowercase();
    assert!(reason.contains("authoriz"), "{shown}");
    assert!(!has_field(&shown, "access_token"), "{shown}");

    // The authorization request (RFC 6749 4.1.1 with RFC 7636 4.3).
    let started = srv.cli_json(&["credentials", "authorize", "api"]);
    let url = started["authorize_url"].as_str().unwrap().to_string();
    let expires = started["expires_at"].as_str().unwrap_or("");
    assert!(
        expires.len() >= 20 && expires.contains('T'),
        "expires_at is not RFC 3339: {started}"
    );
    assert!(
        url.starts_with(&format!("{}/authorize?", auth.url)),
        "{url}"
    );
    let q = query_map(&url);
    let get = |k: &str| q.get(k).map(String::as_str);
    assert_eq!(get("response_type"), Some("code"), "{url}");
    assert_eq!(get("client_id"), Some(CLIENT_ID), "{url}");
    assert_eq!(get("redirect_uri"), Some(redirect_uri.as_str()), "{url}");
    assert_eq!(get("scope"), Some("read write"), "{url}");
    assert_eq!(get("code_challenge_method"), Some("S256"), "{url}");
    let challenge = get("code_challenge").unwrap_or("");
    assert!(
        challenge.len() == 43
            && challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "code_challenge is not BASE64URL(SHA256(…)): {url}"
    );
    let state = get("state").unwrap_or("");
    assert!(
        state.len() >= 16,
        "state too short to be unguessable: {url}"
    );
    assert!(
        !url.contains(CLIENT_SECRET),
        "the client secret is in the authorize URL"
    );
    // Every authorization has its own state and verifier.
    let again = srv.cli_json(&["credentials", "authorize", "api"]);
    let url2 = again["authorize_url"].as_str().unwrap().to_string();
    assert_ne!(param(&url2, "state").as_deref(), Some(state));
    assert_ne!(param(&url2, "code_challenge").as_deref(), Some(challenge));

    // The user consents at the provider; the browser lands on Weft's callback.
    let (st, location, body) = browser_get(&url2);
    assert_eq!(st, 302, "{body}\n{}", auth.log());
    let location = location.unwrap();
    assert!(
        location.starts_with(&format!("{redirect_uri}?")),
        "{location}"
    );
    assert_eq!(param(&location, "state"), param(&url2, "state"));
    let (st, _, callback) = browser_get(&location);
    assert_eq!(st, 200, "{callback}\n{}", auth.log());
    assert_eq!(callback, json!({"credential": "api", "status": "ok"}));
    assert_eq!(auth.exchanges(), 1, "{}", auth.log());

    let shown = srv.cli_json(&["credentials", "show", "api"]);
    assert_eq!(shown["status"], "ok", "{shown}");
    assert!(shown["status_reason"].is_null(), "{shown}");
    for field in ["access_token", "refresh_token"] {
        assert!(has_field(&shown, field), "{field} missing: {shown}");
    }

    // An action with the credential sends the access token as a bearer token.
    srv.apply(&format!(
        "name: whoami\ntrigger:\n  manual: {{}}\nsteps:\n  - id: me\n    action: oauth2.request\n    credential: api\n    input: {{url: \"{}/api/me\"}}\n",
        auth.url
    ));
    let run_id = start_run(&srv, "whoami");
    let run = srv.wait_run(&run_id, T);
    assert_eq!(run["status"], "succeeded", "{run}\n{}", auth.log());
    let out = &run["steps"][0]["output"];
    assert_eq!(out["status"], 200, "{run}");
    assert_eq!(out["body"]["user"], "octo", "{run}");
    assert_eq!(out["body"]["token_no"], 1, "{run}");
    assert_eq!(auth.refreshes(), 0, "an hour-long token is used as it is");

    // The tokens and the client secret show nowhere.
    let answers = [
        ("runs show", srv.cli_json(&["runs", "show", &run_id])),
        (
            "credentials show",
            srv.cli_json(&["credentials", "show", "api"]),
        ),
        ("credentials list", srv.cli_json(&["credentials", "list"])),
        ("audit list", srv.cli_json(&["audit", "list"])),
        (
            "run logs",
            srv.api_get(&format!("/api/v1/workspaces/default/runs/{run_id}/logs"))
                .1,
        ),
        ("authorize", started.clone()),
        ("callback", callback.clone()),
    ];
    let secrets = auth.secrets();
    assert_eq!(secrets.len(), 3, "one access and one refresh token issued");
    for (what, a) in &answers {
        let s = a.to_string();
        for secret in &secrets {
            assert!(!s.contains(secret.as_str()), "{what} holds a secret: {s}");
        }
    }
    let stdout = srv.output.lock().unwrap().join("\n");
    drop(srv);
    for secret in &secrets {
        assert!(!stdout.contains(secret.as_str()), "stdout holds a secret");
        for (path, bytes) in all_bytes(&data) {
            assert!(
                !contains(&bytes, secret),
                "{path} holds a secret in plaintext"
            );
        }
    }
}

#[test]
fn expiring_tokens_are_refreshed_once_for_parallel_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let auth = OAuth::start();
    auth.register(&srv);
    // Tokens that expire inside Weft's 60 s window, and a slow refresh to widen any race.
    auth.with(|s| {
        s.expires_in = 30;
        s.refresh_delay = Duration::from_millis(300);
    });
    set_credential(&srv, &auth, "api");
    connect(&srv, &auth, "api");
    let connected = auth.last_token_no();

    // One use: the token is refreshed first, and the rotated refresh token is kept.
    srv.apply(&me_flow("one", "api", &auth.url, 1));
    let run = run_flow(&srv, "one");
    assert_eq!(run["status"], "succeeded", "{run}\n{}", auth.log());
    assert_eq!(auth.refreshes(), 1, "{}", auth.log());
    let first = auth.last_token_no();
    assert_eq!(first, connected + 1);
    assert_eq!(token_nos(&run), vec![first], "{run}");

    // That token expires within a minute too; the refresh it needs must present the rotated
    // refresh token (the old one would revoke the grant). Refreshed tokens now last an hour.
    auth.with(|s| s.expires_in = 3600);
    srv.apply(&me_flow("five", "api", &auth.url, 5));
    let calls_before = auth.with(|s| s.me_calls.len());
    let run = run_flow(&srv, "five");
    assert_eq!(run["status"], "succeeded", "{run}\n{}", auth.log());
    assert_eq!(
        auth.refreshes(),
        2,
        "five parallel steps must cause exactly one refresh\n{}",
        auth.log()
    );
    let second = auth.last_token_no();
    assert_eq!(second, first + 1);
    assert_eq!(token_nos(&run), vec![second; 5], "{run}");
    let calls = auth.with(|s| s.me_calls[calls_before..].to_vec());
    assert_eq!(
        calls,
        vec![Some(second); 5],
        "every call carried the refreshed token"
    );
    let shown = srv.cli_json(&["credentials", "show", "api"]);
    assert_eq!(shown["status"], "ok", "{shown}");
    let s = shown.to_string();
    for secret in auth.secrets() {
        assert!(!s.contains(&secret), "{s}");
        assert!(!run.to_string().contains(&secret), "{run}");
    }
}

#[test]
fn a_revoked_grant_marks_the_credential_for_reauthorization() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let auth = OAuth::start();
    auth.register(&srv);
    auth.with(|s| s.expires_in = 30);
    set_credential(&srv, &auth, "api");
    connect(&srv, &auth, "api");

    // The user revokes the app at the provider: the refresh is refused with invalid_grant.
    auth.with(|s| s.grants.iter_mut().for_each(|g| g.revoked = true));
    srv.apply(&me_flow("me", "api", &auth.url, 1));
    let run = run_flow(&srv, "me");
    assert_eq!(run["status"], "failed", "{run}");
    let step = &run["steps"][0];
    assert_eq!(step["status"], "failed", "{run}");
    let err = step["error"].as_str().unwrap_or("");
    assert!(err.contains("needs re-authorization"), "{run}");
    assert_eq!(step["attempts"], 1, "a refused grant is not retried: {run}");
    assert_eq!(auth.refreshes(), 1, "{}", auth.log());
    assert!(
        auth.with(|s| s.me_calls.is_empty()),
        "no call went out with the expiring token"
    );
    let shown = srv.cli_json(&["credentials", "show", "api"]);
    assert_eq!(shown["status"], "needs_reauth", "{shown}");
    assert!(
        shown["status_reason"]
            .as_str()
            .unwrap_or("")
            .contains("invalid_grant"),
        "{shown}"
    );
    for secret in auth.secrets() {
        assert!(!run.to_string().contains(&secret), "{run}");
    }

    // Authorizing again repairs it.
    auth.with(|s| s.expires_in = 3600);
    connect(&srv, &auth, "api");
    let shown = srv.cli_json(&["credentials", "show", "api"]);
    assert!(shown["status_reason"].is_null(), "{shown}");
    let run = run_flow(&srv, "me");
    assert_eq!(run["status"], "succeeded", "{run}\n{}", auth.log());
    assert_eq!(token_nos(&run), vec![auth.last_token_no()], "{run}");
    assert_eq!(
        auth.refreshes(),
        1,
        "the new token is fresh: {}",
        auth.log()
    );
}

#[test]
fn bad_callbacks_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let auth = OAuth::start();
    auth.register(&srv);
    set_credential(&srv, &auth, "api");
    let callback = format!("{}/oauth/callback", srv.url);

    // A state Weft never issued, with nothing else or with a code the provider really issued.
    assert_problem(
        browser_get(&format!("{callback}?code=abc&state=never-issued-state")),
        400,
        "invalid_state",
        "unknown state",
    );
    let (st, _, p) = browser_get(&format!("{callback}?code=abc"));
    assert_eq!(st, 400, "no state: {p}");
    let location = consent(&srv, &auth, "api");
    let forged = replace_param(&location, "state", "forged-state-0123456789abcdef");
    assert_problem(browser_get(&forged), 400, "invalid_state", "forged state");
    assert_eq!(
        auth.exchanges(),
        0,
        "no code is exchanged for an unknown state"
    );

    // The user denies: oauth_denied, and that state is spent.
    auth.with(|s| s.deny = true);
    let denied = consent(&srv, &auth, "api");
    assert_eq!(
        param(&denied, "error").as_deref(),
        Some("access_denied"),
        "{denied}"
    );
    assert_problem(browser_get(&denied), 400, "oauth_denied", "denied");
    assert_problem(browser_get(&denied), 400, "invalid_state", "denied, again");
    auth.with(|s| s.deny = false);

    // A code the token endpoint refuses: 502 quoting the provider; the state is spent too.
    let location = consent(&srv, &auth, "api");
    let code = param(&location, "code").unwrap();
    let tampered = replace_param(&location, "code", &format!("{code}x"));
    let p = assert_problem(browser_get(&tampered), 502, "oauth_token_error", "bad code");
    assert!(p.to_string().contains("invalid_grant"), "{p}");
    assert_eq!(auth.exchanges(), 1, "{}", auth.log());
    assert_problem(
        browser_get(&tampered),
        400,
        "invalid_state",
        "bad code, again",
    );
    assert_eq!(auth.exchanges(), 1, "a spent state exchanges nothing");

    // None of that touched the credential.
    let shown = srv.cli_json(&["credentials", "show", "api"]);
    assert_eq!(shown["status"], "needs_reauth", "{shown}");
    for field in ["access_token", "refresh_token"] {
        assert!(!has_field(&shown, field), "{shown}");
    }

    // A callback that connected cannot be replayed.
    set_credential(&srv, &auth, "other");
    let location = consent(&srv, &auth, "other");
    let (st, _, body) = browser_get(&location);
    assert_eq!(st, 200, "{body}\n{}", auth.log());
    assert_eq!(auth.exchanges(), 2);
    assert_problem(browser_get(&location), 400, "invalid_state", "replayed");
    assert_eq!(auth.exchanges(), 2, "a replayed callback exchanges nothing");
    assert_eq!(
        srv.cli_json(&["credentials", "show", "other"])["status"],
        "ok"
    );
    assert_eq!(
        srv.cli_json(&["credentials", "show", "api"])["status"],
        "needs_reauth"
    );
}

#[test]
fn refresh_is_single_flight_across_processes_on_postgres() {
    let url = fresh_pg_db();
    let key = "S0lJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUk=";
    let env = [("WEFT_MASTER_KEY", key)];
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let api = Server::start(
        d1.path(),
        None,
        &env,
        &["--database-url", &url, "--role", "api"],
    );
    let worker = |d: &std::path::Path| {
        Server::start(
            d,
            Some(&api.key),
            &env,
            &["--database-url", &url, "--role", "worker"],
        )
    };
    let _w1 = worker(d2.path());
    let _w2 = worker(d3.path());
    let auth = OAuth::start();
    auth.register(&api);
    auth.with(|s| {
        s.expires_in = 30;
        s.refresh_delay = Duration::from_millis(300);
    });
    set_credential(&api, &auth, "api");
    connect(&api, &auth, "api");
    let connected = auth.last_token_no();
    auth.with(|s| s.expires_in = 3600);

    api.apply(&me_flow("fan", "api", &auth.url, 8));
    let runs: Vec<String> = (0..4).map(|_| start_run(&api, "fan")).collect();
    let mut nos = Vec::new();
    for r in &runs {
        let got = api.wait_run(r, T);
        assert_eq!(got["status"], "succeeded", "{got}\n{}", auth.log());
        nos.extend(token_nos(&got));
    }
    assert_eq!(
        auth.refreshes(),
        1,
        "32 steps in two worker processes must cause exactly one refresh\n{}",
        auth.log()
    );
    let refreshed = auth.last_token_no();
    assert_eq!(refreshed, connected + 1);
    assert_eq!(nos, vec![refreshed; 32]);
    assert_eq!(
        auth.with(|s| s.me_calls.clone()),
        vec![Some(refreshed); 32],
        "every call carried the refreshed token"
    );
    assert_eq!(
        api.cli_json(&["credentials", "show", "api"])["status"],
        "ok"
    );
}

#[test]
fn a_token_revoked_before_its_expiry_is_refreshed_once_and_the_call_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let auth = OAuth::start();
    auth.register(&srv);
    auth.with(|s| s.refresh_delay = Duration::from_millis(300));
    set_credential(&srv, &auth, "api");
    connect(&srv, &auth, "api");
    let connected = auth.last_token_no();
    // The provider drops every access token (the grant stays): calls get 401 although the
    // tokens have an hour left.
    auth.with(|s| s.access.clear());
    srv.apply(&me_flow("three", "api", &auth.url, 3));
    let run = run_flow(&srv, "three");
    assert_eq!(run["status"], "succeeded", "{run}\n{}", auth.log());
    assert_eq!(
        auth.refreshes(),
        1,
        "three steps rejected at once cause one refresh\n{}",
        auth.log()
    );
    assert_eq!(token_nos(&run), vec![connected + 1; 3], "{run}");
    for s in run["steps"].as_array().unwrap() {
        assert_eq!(
            s["attempts"], 1,
            "the retry after a refresh is the same attempt: {s}"
        );
    }
}

#[test]
fn a_poll_trigger_pauses_while_its_credential_needs_reauthorization() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let auth = OAuth::start();
    auth.register(&srv);
    set_credential(&srv, &auth, "api");
    connect(&srv, &auth, "api");
    srv.apply(&format!(
        "name: watch\ntrigger:\n  poll:\n    every: 1s\n    action: oauth2.request\n    credential: api\n    input: {{method: GET, url: \"{}/api/me\"}}\n    items: '[.body]'\n    id: '.user'\nsteps:\n  - id: t\n    transform: '.trigger.item.user'\n",
        auth.url
    ));
    let calls = || auth.with(|s| s.me_calls.len());
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + T;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                auth.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until("two polls", &|| calls() >= 2);

    // The user revokes the app: the 401 leads to a refused refresh, and polling pauses.
    auth.with(|s| s.grants.iter_mut().for_each(|g| g.revoked = true));
    until("the pause", &|| {
        srv.cli_json(&["flow", "poll", "watch"])["paused"].is_string()
    });
    let st = srv.cli_json(&["flow", "poll", "watch"]);
    let why = st["paused"].as_str().unwrap();
    assert!(
        why.contains("credential 'api' needs re-authorization"),
        "{st}"
    );
    for secret in auth.secrets() {
        assert!(!st.to_string().contains(&secret), "{st}");
    }
    let (paused_at, refreshes) = (calls(), auth.refreshes());
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(calls(), paused_at, "a paused trigger calls nothing");
    assert_eq!(auth.refreshes(), refreshes, "nor tries to refresh");
    let text = String::from_utf8_lossy(&srv.cli(&["flow", "poll", "watch"]).stdout).to_string();
    assert!(
        text.contains("state:        paused: credential 'api'"),
        "{text}"
    );

    // Authorizing again resumes it.
    connect(&srv, &auth, "api");
    until("polls after re-authorization", &|| calls() >= paused_at + 2);
    let st = srv.cli_json(&["flow", "poll", "watch"]);
    assert!(st["paused"].is_null() && st["active"] == true, "{st}");
    assert_eq!(
        st["runs_started"], 0,
        "the one item was known from the first poll: {st}"
    );
}
