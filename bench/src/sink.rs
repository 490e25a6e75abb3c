//! The sink: an in-process HTTP/1 server that answers `200 {}` to everything and records, per
//! request, its arrival time, `Idempotency-Key` and the JSON body's `id`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// One request the sink received.
#[derive(Debug)]
#[allow(dead_code)] // kept as the raw record; the analysis uses the per-id index
pub struct Record {
    pub at: Instant,
    pub key: Option<Box<str>>,
    pub id: Option<u64>,
}

/// What the sink knows about one id.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Arrival of the first request carrying this id.
    pub first_at: Instant,
    /// Requests carrying this id (1 = exactly once).
    pub count: u32,
    /// Of the repeats, how many carried an Idempotency-Key different from the first one's
    /// (a second run rather than a redelivery of the same step).
    pub other_keys: u32,
}

#[derive(Default)]
struct State {
    records: Vec<Record>,
    by_id: HashMap<u64, (Seen, Option<Box<str>>)>,
}

/// The recording sink.
pub struct Sink {
    pub addr: SocketAddr,
    state: Mutex<State>,
    requests: AtomicU64,
    distinct: AtomicU64,
    without_id: AtomicU64,
}

impl Sink {
    /// Binds 127.0.0.1:0 and serves in the background.
    pub async fn start() -> anyhow::Result<Arc<Self>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sink = Arc::new(Self {
            addr: listener.local_addr()?,
            state: Mutex::new(State {
                records: Vec::with_capacity(1 << 20),
                by_id: HashMap::with_capacity(1 << 20),
            }),
            requests: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            without_id: AtomicU64::new(0),
        });
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(sink)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, at: Instant, key: Option<Box<str>>, id: Option<u64>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        match id {
            None => {
                self.without_id.fetch_add(1, Ordering::Relaxed);
            }
            Some(id) => match st.by_id.get_mut(&id) {
                Some((seen, first_key)) => {
                    seen.count += 1;
                    if *first_key != key {
                        seen.other_keys += 1;
                    }
                }
                None => {
                    st.by_id.insert(
                        id,
                        (
                            Seen {
                                first_at: at,
                                count: 1,
                                other_keys: 0,
                            },
                            key.clone(),
                        ),
                    );
                    self.distinct.fetch_add(1, Ordering::Relaxed);
                }
            },
        }
        st.records.push(Record { at, key, id });
    }

    /// Total requests received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Distinct ids received.
    pub fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::Relaxed)
    }

    /// Requests whose body had no numeric `id`.
    pub fn without_id(&self) -> u64 {
        self.without_id.load(Ordering::Relaxed)
    }

    /// Drops from `ids` every id the sink has received.
    pub fn retain_missing(&self, ids: &mut Vec<u64>) {
        let st = self.lock();
        ids.retain(|id| !st.by_id.contains_key(id));
    }

    /// The first arrival of `id`, if any.
    pub fn seen(&self, id: u64) -> Option<Seen> {
        self.lock().by_id.get(&id).map(|(s, _)| *s)
    }

    /// What the sink knows about each of `ids`, and how many distinct ids in `lo..hi` it got.
    pub fn lookup(
        &self,
        ids: impl Iterator<Item = u64>,
        lo: u64,
        hi: u64,
    ) -> (Vec<Option<Seen>>, u64) {
        let st = self.lock();
        let seen = ids.map(|id| st.by_id.get(&id).map(|(s, _)| *s)).collect();
        let in_range = (lo..hi).filter(|id| st.by_id.contains_key(id)).count() as u64;
        (seen, in_range)
    }
}

async fn handle(
    sink: Arc<Sink>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(Box::from);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    sink.record(at, key, body_id(&body));
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The `id` of a JSON body (also accepts the object sent as a JSON string).
fn body_id(body: &[u8]) -> Option<u64> {
    fn id_of(v: &Value) -> Option<u64> {
        match v {
            Value::Object(o) => {
                let id = o.get("id")?;
                id.as_u64().or_else(|| {
                    id.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
            }
            Value::String(s) => serde_json::from_str::<Value>(s)
                .ok()
                .as_ref()
                .and_then(id_of),
            _ => None,
        }
    }
    serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(id_of)
}

#[cfg(test)]
mod tests {
    use super::body_id;

    #[test]
    fn ids() {
        assert_eq!(body_id(br#"{"id":7,"total":10}"#), Some(7));
        assert_eq!(body_id(br#"{"id":7.0}"#), Some(7));
        assert_eq!(body_id(br#""{\"id\":9}""#), Some(9));
        assert_eq!(body_id(br#"{"x":1}"#), None);
        assert_eq!(body_id(b"nope"), None);
    }
}
