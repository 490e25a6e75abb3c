//! A minimal HTTP/1 client: one hyper connection per caller, no pool, no retries.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One HTTP/1 connection's request sender.
pub type Conn = SendRequest<Full<Bytes>>;

/// Where requests go: a socket address plus the request target.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub uri: Uri,
    /// When set, every POST is signed as GitHub signs deliveries, with this secret.
    pub github_secret: Option<String>,
}

impl Target {
    /// Parses `http://host:port/path?query`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("`{url}` is not an http:// URL");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = authority
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve `{authority}`"))?
            .next()
            .with_context(|| format!("`{authority}` resolves to no address"))?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority)?,
            uri: path.parse().with_context(|| format!("bad path `{path}`"))?,
            github_secret: None,
        })
    }

    /// A POST of a JSON body to this target.
    pub fn post_json(
        &self,
        body: Bytes,
        bearer: Option<&str>,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let sig = match &self.github_secret {
            Some(secret) => {
                use hmac::{KeyInit, Mac};
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
                    .map_err(|e| anyhow::anyhow!("hmac key: {e}"))?;
                mac.update(&body);
                Some(format!(
                    "sha256={}",
                    hex::encode(mac.finalize().into_bytes())
                ))
            }
            None => None,
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(k) = bearer {
            h.insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {k}"))?,
            );
        }
        if let Some(sig) = sig {
            h.insert("x-hub-signature-256", HeaderValue::from_str(&sig)?);
            h.insert("x-github-event", HeaderValue::from_static("push"));
        }
        Ok(req)
    }
}

/// Opens one keep-alive HTTP/1 connection (TCP_NODELAY).
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request on `conn` (which must be ready) and reads the whole answer.
pub async fn send(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let resp = conn.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One request on a fresh connection.
pub async fn one_shot(
    target: &Target,
    body: Bytes,
    bearer: Option<&str>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut conn = connect(target.addr)
        .await
        .with_context(|| format!("cannot connect to {}", target.addr))?;
    conn.ready().await?;
    send(&mut conn, target.post_json(body, bearer)?).await
}
