//! The load generators: closed-loop workers and a fixed-rate open loop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use tokio::sync::Semaphore;

use crate::client::{self, Conn, Target};

/// One accepted (202) webhook.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub id: u64,
    /// When the request started.
    pub at: Instant,
    /// Time to the 202, in µs.
    pub ack_us: u64,
}

/// What a load phase produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: Vec<Sent>,
    /// Non-202 answers by status ("503", "connection error", ...).
    pub failures: BTreeMap<String, u64>,
    /// 202s that said `"duplicate": true`.
    pub dup_acks: u64,
    /// Open loop only: scheduled → actual send lag, in µs, per request.
    pub lag_us: Vec<u64>,
    /// Open loop only: sends that had to wait for a free connection slot.
    pub waited_for_conn: u64,
    /// Connections opened.
    pub conns: u64,
}

impl Outcome {
    fn merge(&mut self, o: Outcome) {
        self.sent.extend(o.sent);
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.dup_acks += o.dup_acks;
        self.lag_us.extend(o.lag_us);
        self.waited_for_conn += o.waited_for_conn;
        self.conns += o.conns;
    }

    fn fail(&mut self, what: String) {
        *self.failures.entry(what).or_default() += 1;
    }

    fn answer(&mut self, id: u64, at: Instant, status: StatusCode, body: &[u8]) {
        if status == StatusCode::ACCEPTED {
            self.sent.push(Sent {
                id,
                at,
                ack_us: at.elapsed().as_micros() as u64,
            });
            if contains(body, b"\"duplicate\":true") {
                self.dup_acks += 1;
            }
        } else {
            self.fail(status.as_u16().to_string());
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The webhook payload for `id`.
pub fn payload(id: u64) -> Bytes {
    Bytes::from(format!(r#"{{"id":{id},"price":2.5,"qty":4,"name":"ada"}}"#))
}

/// Counters shared with the progress printer.
#[derive(Debug, Default)]
pub struct Progress {
    pub accepted: AtomicU64,
    pub failed: AtomicU64,
}

/// `workers` closed-loop workers, each on its own keep-alive connection, for `dur`.
pub async fn closed_loop(
    target: Arc<Target>,
    workers: usize,
    dur: Duration,
    ids: Arc<AtomicU64>,
    progress: Arc<Progress>,
) -> Outcome {
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (target, ids, progress) = (target.clone(), ids.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut conn: Option<Conn> = None;
            while Instant::now() < deadline {
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => match client::connect(target.addr).await {
                        Ok(c) => {
                            out.conns += 1;
                            c
                        }
                        Err(e) => {
                            out.fail(format!("connect error: {e}"));
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                if c.ready().await.is_err() {
                    continue; // the server closed the idle connection; reconnect
                }
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let Ok(req) = target.post_json(payload(id), None) else {
                    break;
                };
                let at = Instant::now();
                match client::send(&mut c, req).await {
                    Ok((status, body)) => {
                        out.answer(id, at, status, &body);
                        if status == StatusCode::ACCEPTED {
                            progress.accepted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        conn = Some(c);
                    }
                    Err(_) => {
                        out.fail("connection error".into());
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            out
        }));
    }
    let mut all = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            all.merge(o);
        }
    }
    all
}

/// Open loop: `rate` requests/s for `dur`, each sent at its scheduled instant on an idle pooled
/// connection (a new one when none is idle), at most `max_conns` in flight.
pub async fn open_loop(
    target: Arc<Target>,
    rate: u64,
    dur: Duration,
    max_conns: usize,
    ids: Arc<AtomicU64>,
    progress: Arc<Progress>,
) -> Outcome {
    let total = rate.saturating_mul(dur.as_secs()).max(1);
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(max_conns));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let handle = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(20);
    // The scheduler is an OS thread: std sleeps are finer than tokio's 1 ms timer.
    let scheduler = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let (target, pool, slots, ids, progress, tx) = (
                target.clone(),
                pool.clone(),
                slots.clone(),
                ids.clone(),
                progress.clone(),
                tx.clone(),
            );
            handle.spawn(async move {
                let mut out = Outcome::default();
                let permit = match slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        out.waited_for_conn += 1;
                        match slots.acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return,
                        }
                    }
                };
                let mut conn = None;
                loop {
                    let idle = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    match idle {
                        Some(mut c) => {
                            if c.ready().await.is_ok() {
                                conn = Some(c);
                                break;
                            }
                        }
                        None => break,
                    }
                }
                let mut c = match conn {
                    Some(c) => c,
                    None => match client::connect(target.addr).await {
                        Ok(mut c) => {
                            out.conns += 1;
                            let _ = c.ready().await;
                            c
                        }
                        Err(e) => {
                            out.fail(format!("connect error: {e}"));
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                            let _ = tx.send(out);
                            return;
                        }
                    },
                };
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let Ok(req) = target.post_json(payload(id), None) else {
                    return;
                };
                let at = Instant::now();
                out.lag_us
                    .push(at.saturating_duration_since(due).as_micros() as u64);
                match client::send(&mut c, req).await {
                    Ok((status, body)) => {
                        out.answer(id, at, status, &body);
                        if status == StatusCode::ACCEPTED {
                            progress.accepted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        pool.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    }
                    Err(_) => {
                        out.fail("connection error".into());
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
                let _ = tx.send(out);
            });
        }
    });
    let mut all = Outcome::default();
    while let Some(o) = rx.recv().await {
        all.merge(o);
    }
    let _ = scheduler.join();
    all
}
