//! OAuth2 credentials (RFC 6749 authorization code with RFC 7636 PKCE): starting an
//! authorization, completing it at the callback, and refreshing tokens before they expire —
//! once per credential across every step and process, which rotating refresh tokens require.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value};
use sha2::Digest;
use weft_connectors::reqwest;
use weft_store::{Actor, OAuthState};
use weft_types::{CredentialId, Millis, Scope};
use weft_vault::Secret;

use crate::credentials::OpenCredential;
use crate::{Engine, EngineError};

/// How long an authorization request waits for its callback.
pub const AUTHORIZE_TTL: Duration = Duration::from_secs(600);
/// Tokens expiring within this window are refreshed before use.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);
/// How long one process may hold a credential's refresh before another may take over.
const REFRESH_LEASE: Duration = Duration::from_secs(30);
/// Longest token endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an OAuth2 operation failed.
#[derive(Debug)]
pub enum OAuthError {
    /// The state is unknown, used, or expired.
    InvalidState,
    /// The user (or provider) refused: `error` from the redirect.
    Denied(String),
    /// The token endpoint refused or failed; `code` is its `error` (e.g. `invalid_grant`).
    Token {
        /// The provider's error code, or a description of the failure.
        code: String,
        /// What happened and what to do.
        message: String,
        /// Whether trying again later may work (network failure, 5xx).
        transient: bool,
    },
    /// Anything else (storage, vault, a credential that is not OAuth2).
    Engine(EngineError),
}

impl From<EngineError> for OAuthError {
    fn from(e: EngineError) -> Self {
        OAuthError::Engine(e)
    }
}

impl From<weft_store::StoreError> for OAuthError {
    fn from(e: weft_store::StoreError) -> Self {
        OAuthError::Engine(e.into())
    }
}

/// Whether a credential's connector authenticates with OAuth2.
pub fn is_oauth(c: &OpenCredential) -> bool {
    c.manifest.auth.scheme == "oauth2"
}

fn field<'a>(c: &'a OpenCredential, name: &str) -> Result<&'a str, EngineError> {
    c.values
        .get(name)
        .map(Secret::expose)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            EngineError::BadInput(vec![weft_flow::FieldError::new(
                format!("values.{name}"),
                format!(
                    "credential '{}' has no `{name}`; set it with `weft credentials set {} --connector {} --value {name}=…`",
                    c.record.name, c.record.name, c.manifest.name
                ),
            )])
        })
}

fn expires_at(c: &OpenCredential) -> Option<i64> {
    c.values.get("expires_at")?.expose().parse().ok()
}

/// Whether the access token must be refreshed before use at `now_ms`.
fn needs_refresh(c: &OpenCredential, now_ms: Millis) -> bool {
    c.values.get("refresh_token").is_some()
        && expires_at(c)
            .is_some_and(|at| at.saturating_mul(1000) <= now_ms + REFRESH_AHEAD.as_millis() as i64)
}

/// What the token endpoint answered.
struct Tokens {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
}

impl Engine {
    /// Starts an authorization: returns the URL to open and when it stops being accepted.
    pub async fn start_authorization(
        &self,
        scope: Scope,
        name: &str,
        redirect_uri: &str,
    ) -> Result<(String, Millis), EngineError> {
        let c = self.open_credential(scope, name).await?;
        if !is_oauth(&c) {
            return Err(EngineError::Rule(format!(
                "credential '{name}' is a {} credential; only OAuth2 credentials are authorized",
                c.manifest.name
            )));
        }
        let authorize = field(&c, "authorize_url")?;
        let client_id = field(&c, "client_id")?;
        field(&c, "token_url")?;
        let mut url = url::Url::parse(authorize).map_err(|e| {
            EngineError::BadInput(vec![weft_flow::FieldError::new(
                "values.authorize_url",
                format!("is not a URL: {e}"),
            )])
        })?;
        let state = weft_types::random_secret();
        let verifier = weft_types::random_secret();
        let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(s) = c
                .values
                .get("scopes")
                .map(Secret::expose)
                .filter(|s| !s.is_empty())
            {
                q.append_pair("scope", s);
            }
        }
        let expires = self.clock().now_ms() + AUTHORIZE_TTL.as_millis() as Millis;
        self.store()
            .save_oauth_state(
                &weft_store::hash_secret(&state),
                OAuthState {
                    scope,
                    credential: c.record.id,
                    verifier,
                    redirect_uri: redirect_uri.to_string(),
                    expires_at: expires,
                },
            )
            .await?;
        Ok((url.to_string(), expires))
    }

    /// Completes an authorization at the callback: exchanges the code for tokens and stores
    /// them. Returns the credential's scope and name.
    pub async fn complete_authorization(
        &self,
        state: &str,
        code: Option<&str>,
        error: Option<&str>,
    ) -> Result<(Scope, String), OAuthError> {
        let now = self.clock().now_ms();
        let Some(st) = self
            .store()
            .take_oauth_state(&weft_store::hash_secret(state), now)
            .await?
        else {
            return Err(OAuthError::InvalidState);
        };
        if let Some(e) = error {
            return Err(OAuthError::Denied(e.chars().take(100).collect()));
        }
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Err(OAuthError::Denied("no code in the callback".into()));
        };
        let c = self.credential_by_id(st.scope, st.credential).await?;
        let tokens = self
            .token_request(
                &c,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &st.redirect_uri),
                    ("code_verifier", &st.verifier),
                ],
            )
            .await?;
        self.store_tokens(st.scope, &c, tokens, Some("credential.authorize"))
            .await?;
        self.resume_polls(st.scope).await;
        Ok((st.scope, c.record.name.clone()))
    }

    async fn credential_by_id(
        &self,
        scope: Scope,
        id: CredentialId,
    ) -> Result<OpenCredential, EngineError> {
        let name = self
            .store()
            .list_credentials(scope)
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| r.name)
            .ok_or(EngineError::NotFound("credential"))?;
        self.open_credential(scope, &name).await
    }

    /// Opens a credential for use, refreshing its OAuth2 access token first when it is about
    /// to expire — one refresh per credential, whatever the number of steps and processes.
    pub async fn credential_for_use(
        &self,
        scope: Scope,
        name: &str,
    ) -> Result<OpenCredential, OAuthError> {
        self.fresh_credential(scope, name, &|c, now| needs_refresh(c, now))
            .await
    }

    /// After a provider rejected `rejected` (401), refreshes the credential unless another
    /// task already replaced that token; returns the credential with a different token.
    pub async fn refresh_rejected(
        &self,
        scope: Scope,
        name: &str,
        rejected: &str,
    ) -> Result<OpenCredential, OAuthError> {
        let stale = |c: &OpenCredential, _now: Millis| {
            c.values.get("refresh_token").is_some()
                && c.values.get("access_token").map(Secret::expose) == Some(rejected)
        };
        self.fresh_credential(scope, name, &stale).await
    }

    async fn fresh_credential(
        &self,
        scope: Scope,
        name: &str,
        must_refresh: &(dyn Fn(&OpenCredential, Millis) -> bool + Sync),
    ) -> Result<OpenCredential, OAuthError> {
        // About 30 s of waiting for another process's refresh, then give up (retryable).
        for _ in 0..150 {
            let c = self.open_credential(scope, name).await?;
            if !is_oauth(&c) {
                if c.record.status != "ok" {
                    return Err(OAuthError::Token {
                        code: "paused".into(),
                        message: format!(
                            "credential '{name}' is paused: {}; set its values again with `weft credentials set {name} --connector {} --value FIELD=VALUE`",
                            c.record
                                .status_reason
                                .as_deref()
                                .unwrap_or("it kept failing"),
                            c.record.connector
                        ),
                        transient: false,
                    });
                }
                return Ok(c);
            }
            if c.record.status != "ok" {
                return Err(OAuthError::Token {
                    code: "needs_reauth".into(),
                    message: format!(
                        "credential '{name}' needs re-authorization ({}): run `weft credentials authorize {name}`",
                        c.record
                            .status_reason
                            .as_deref()
                            .unwrap_or("not authorized")
                    ),
                    transient: false,
                });
            }
            let now = self.clock().now_ms();
            if !must_refresh(&c, now) {
                return Ok(c);
            }
            // In this process, one task refreshes while the others wait for it.
            let lock = self.refresh_lock(c.record.id);
            let _held = lock.lock().await;
            let c = self.open_credential(scope, name).await?;
            let now = self.clock().now_ms();
            if !must_refresh(&c, now) {
                return Ok(c);
            }
            let until = now + REFRESH_LEASE.as_millis() as Millis;
            if self
                .store()
                .lease_credential_refresh(scope, c.record.id, until, now)
                .await?
            {
                return self.refresh(scope, c).await;
            }
            // Another process is refreshing: wait for its tokens.
            self.clock().sleep(Duration::from_millis(200)).await;
        }
        Err(OAuthError::Token {
            code: "refresh_timeout".into(),
            message: format!(
                "credential '{name}': another process has been refreshing its token for too long; the step will retry"
            ),
            transient: true,
        })
    }

    fn refresh_lock(&self, id: CredentialId) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = match self.inner.refreshing.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if m.len() > 10_000 {
            m.retain(|_, l| Arc::strong_count(l) > 1);
        }
        m.entry(id).or_default().clone()
    }

    async fn refresh(&self, scope: Scope, c: OpenCredential) -> Result<OpenCredential, OAuthError> {
        let refresh = c
            .values
            .get("refresh_token")
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        match self
            .token_request(
                &c,
                &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            )
            .await
        {
            Ok(tokens) => {
                self.store_tokens(scope, &c, tokens, None).await?;
                Ok(self.open_credential(scope, &c.record.name).await?)
            }
            Err(OAuthError::Token {
                code,
                message,
                transient: false,
            }) => {
                // The grant is gone (revoked, expired, or a rotated token reused): a person
                // must authorize again; until then every use fails with this reason.
                let reason = format!("the provider answered {code} to a token refresh");
                self.store()
                    .set_credential_status(
                        scope,
                        c.record.id,
                        Some(reason.clone()),
                        self.clock().now_ms(),
                    )
                    .await?;
                let fix = format!("run `weft credentials authorize {}`", c.record.name);
                self.inner
                    .alert_credential_reauth(scope, &c.record.name, &reason, &fix)
                    .await;
                Err(OAuthError::Token {
                    code,
                    message: format!(
                        "credential '{}' needs re-authorization: {message}; run `weft credentials authorize {}`",
                        c.record.name, c.record.name
                    ),
                    transient: false,
                })
            }
            Err(e) => {
                // Let the lease lapse quickly so a retry (here or elsewhere) can try again.
                let _ = self
                    .store()
                    .lease_credential_refresh(scope, c.record.id, 0, i64::MAX)
                    .await;
                Err(e)
            }
        }
    }

    /// Seals the credential's values with the new tokens merged in.
    async fn store_tokens(
        &self,
        scope: Scope,
        c: &OpenCredential,
        t: Tokens,
        audit: Option<&'static str>,
    ) -> Result<(), EngineError> {
        let mut values = c.values.clone();
        values.insert("access_token", Secret::new(t.access_token));
        if let Some(r) = t.refresh_token {
            values.insert("refresh_token", Secret::new(r));
        }
        let now_s = self.clock().now_ms() / 1000;
        match t.expires_in {
            Some(secs) => values.insert("expires_at", Secret::new((now_s + secs).to_string())),
            None => values.remove("expires_at"),
        }
        let sealed = self.seal_for(scope, c.record.id, &values)?;
        self.store()
            .replace_credential_values(
                scope,
                c.record.id,
                sealed,
                values.names(),
                audit,
                Actor::system("oauth"),
                self.clock().now_ms(),
            )
            .await?;
        Ok(())
    }

    /// One request to the token endpoint (RFC 6749 4.1.3 / 6), client authenticated with HTTP
    /// Basic (2.3.1), through the guarded client.
    async fn token_request(
        &self,
        c: &OpenCredential,
        params: &[(&str, &str)],
    ) -> Result<Tokens, OAuthError> {
        let token_url = field(c, "token_url")?;
        let client_id = field(c, "client_id")?;
        let secret = c
            .values
            .get("client_secret")
            .map(Secret::expose)
            .unwrap_or("");
        let url = reqwest::Url::parse(token_url).map_err(|e| OAuthError::Token {
            code: "bad_token_url".into(),
            message: format!("token_url is not a URL: {e}"),
            transient: false,
        })?;
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in params {
                form.append_pair(k, v);
            }
            if secret.is_empty() {
                // A public client identifies itself in the body instead.
                form.append_pair("client_id", client_id);
            }
            form.finish()
        };
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let mut req = reqwest::Request::new(reqwest::Method::POST, url);
        let h = req.headers_mut();
        h.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        if !secret.is_empty() {
            let basic = STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret)));
            if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Basic {basic}")) {
                v.set_sensitive(true);
                h.insert(reqwest::header::AUTHORIZATION, v);
            }
        }
        *req.body_mut() = Some(body.into());
        *req.timeout_mut() = Some(TOKEN_TIMEOUT);
        let transient = |message: String| OAuthError::Token {
            code: "unavailable".into(),
            message,
            transient: true,
        };
        let resp = self
            .inner
            .opts
            .http
            .execute(req)
            .await
            .map_err(|e| transient(format!("the token endpoint could not be reached: {e}")))?;
        let status = resp.status();
        let body = tokio::time::timeout(TOKEN_TIMEOUT, resp.bytes())
            .await
            .map_err(|_| transient("the token endpoint did not answer in time".into()))?
            .map_err(|e| transient(format!("the token endpoint's answer was cut off: {e}")))?;
        if body.len() > MAX_TOKEN_RESPONSE {
            return Err(transient("the token endpoint's answer is too large".into()));
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let obj = v.as_object().cloned().unwrap_or_default();
        if !status.is_success() || obj.contains_key("error") {
            let code = text(&obj, "error").unwrap_or_else(|| format!("http_{}", status.as_u16()));
            let desc = text(&obj, "error_description")
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            return Err(OAuthError::Token {
                message: format!(
                    "the token endpoint answered {} {code}{desc}",
                    status.as_u16()
                ),
                transient: status.is_server_error() || status.as_u16() == 429,
                code,
            });
        }
        let Some(access_token) = text(&obj, "access_token") else {
            return Err(OAuthError::Token {
                code: "no_access_token".into(),
                message: "the token endpoint's answer has no access_token".into(),
                transient: false,
            });
        };
        Ok(Tokens {
            access_token,
            refresh_token: text(&obj, "refresh_token"),
            expires_in: obj.get("expires_in").and_then(|e| {
                e.as_i64()
                    .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
            }),
        })
    }
}

fn text(obj: &Map<String, Value>, k: &str) -> Option<String> {
    obj.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(4096).collect())
}

/// Per-credential locks of one process (refreshes in flight).
pub(crate) type RefreshLocks = std::sync::Mutex<HashMap<CredentialId, Arc<tokio::sync::Mutex<()>>>>;
