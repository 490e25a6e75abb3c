//! Loopback test servers: an axum app for well-behaved responses and raw TCP
//! servers for misbehaving ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use weft_connectors::{GuardedClient, NetPolicy};

/// Upper bound for any single test step, so a bug fails instead of hanging.
pub const BOUND: Duration = Duration::from_secs(10);

/// Runs `fut` with [`BOUND`] as a deadline.
pub async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(BOUND, fut)
        .await
        .expect("test step exceeded its time bound")
}

/// A background server; aborted when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn client(policy: NetPolicy) -> GuardedClient {
    GuardedClient::new(policy).unwrap()
}

pub fn allow_only(net: &str) -> NetPolicy {
    NetPolicy {
        allow_private: false,
        allow: vec![net.parse().unwrap()],
    }
}

/// The axum test app bound to `bind` (e.g. "127.0.0.1:0").
pub async fn spawn_app(bind: &str) -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/status/{code}", get(status).post(status))
        .route("/text", get(|| async { "hello, plain text" }))
        .route(
            "/problem",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/problem+json")],
                    r#"{"title":"nope","n":1}"#,
                )
            }),
        )
        .route(
            "/bad-json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], "{not json") }),
        )
        .route(
            "/invalid-utf8",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain")],
                    Bytes::from_static(b"f\xffo"),
                )
            }),
        )
        .route(
            "/multi-header",
            get(|| async {
                let mut h = HeaderMap::new();
                h.append("x-multi", "one".parse().unwrap());
                h.append("x-multi", "two".parse().unwrap());
                h.append("X-Single", "solo".parse().unwrap());
                (h, "ok")
            }),
        )
        .route("/big", get(|| async { vec![b'a'; 10 * 1024 * 1024 + 1] }))
        .route("/redirect", get(redirect))
        .route(
            "/loop",
            get(|hits: Hits| async move {
                count(&hits);
                redirect_to("/loop")
            }),
        )
        .fallback(echo)
        .with_state(Arc::clone(&hits));
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { addr, hits, task }
}

type Hits = State<Arc<AtomicUsize>>;

fn count(hits: &Hits) {
    hits.0.fetch_add(1, Ordering::SeqCst);
}

/// Echoes the request as JSON so tests can assert what arrived.
async fn echo(hits: Hits, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    count(&hits);
    let mut hs = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(", ");
        hs.insert(name.as_str().to_owned(), Value::String(joined));
    }
    axum::Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": hs,
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response()
}

async fn status(
    hits: Hits,
    Path(code): Path<u16>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    count(&hits);
    let mut response = Response::new(Body::from(format!("status body {code}")));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    if let Some(ra) = params.get("retry_after") {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, ra.parse().unwrap());
    }
    response
}

async fn redirect(hits: Hits, Query(params): Query<HashMap<String, String>>) -> Response {
    count(&hits);
    redirect_to(&params["to"])
}

fn redirect_to(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}

/// Accepts connections and never answers.
pub async fn spawn_silent() -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    Server { addr, hits, task }
}

/// Answers 200 with a chunked body (no content-length) of up to 64 MiB.
pub async fn spawn_flood() -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
                chunk.extend(std::iter::repeat_n(b'z', 64 * 1024));
                chunk.extend_from_slice(b"\r\n");
                // Bounded so the server stops even if the client kept reading.
                for _ in 0..1024 {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    Server { addr, hits, task }
}

/// Serves `app` on a loopback port; `hits` is the counter its handlers bump.
pub async fn spawn_router(app: Router, hits: Arc<AtomicUsize>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { addr, hits, task }
}

/// A proxy to `upstream` that loses every answer: it forwards one request, waits until the
/// upstream starts answering (so the request has had its effect), then closes the client's
/// connection without a byte, as when a connection is reset in transit.
pub async fn spawn_answer_losing_proxy(upstream: SocketAddr) -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                // Read the head, then as much body as Content-Length announces.
                loop {
                    let Ok(n) = client.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                if up.write_all(&request).await.is_err() {
                    return;
                }
                let _ = up.read(&mut buf).await;
                drop(client);
            });
        }
    });
    Server { addr, hits, task }
}
