//! Live view of one run: `GET …/runs/{run}/events` as Server-Sent Events.
//!
//! The stream carries the run's log lines as `log` events whose `id` is the line's sequence
//! number, so a client that reconnects with `Last-Event-ID` (or `?after=`) gets every line
//! after the last one it saw and misses nothing. Between them come snapshots: `run` (the
//! run without its steps) whenever its status changes, and `step` whenever a step's status,
//! attempts or loop progress change; both are sent whole again on every (re)connect, so a
//! client just keeps the latest. When the run has finished and every line was sent, an `end`
//! event closes the stream.
//!
//! It is read from the store (which every process shares), checked often while something
//! changes and less often while the run waits, up to every [`SLOWEST`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;
use weft_types::{RunId, Scope};

use crate::auth::{Read, Ws};
use crate::body::parse_id;
use crate::body::parse_query;
use crate::dto::{LogOut, ProblemDoc, RunOut, fold_steps};
use crate::flows::WsParam;
use crate::logs::LogHitOut;
use crate::runs::RunParam;
use crate::{AppState, Problem};

/// Fastest re-check of the store, while lines are arriving.
const FASTEST: Duration = Duration::from_millis(200);
/// Slowest re-check, after a while with nothing new (a run waiting for days).
const SLOWEST: Duration = Duration::from_secs(2);
/// Log lines read per store call.
const PAGE: usize = 500;
/// Age after which a log line is settled: every line with a smaller seq has committed.
const SETTLE_MS: i64 = 10_000;
/// Most unsettled lines re-read per pass.
const MAX_UNSETTLED: usize = 1_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: Option<i64>,
}

/// Follow a run live: Server-Sent Events `log` (id = the line's seq), `run`, `step`, and
/// `end` once the run finished and every line was sent. Reconnect with `Last-Event-ID`
/// (or `?after=SEQ`) to miss nothing.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/runs/{run}/events", tag = "runs",
    params(WsParam, RunParam,
        ("after" = Option<i64>, Query, description = "only log lines after this seq (as Last-Event-ID)"),
        ("Last-Event-ID" = Option<String>, Header, description = "the id of the last event received, to resume")),
    responses((status = 200, description = "a text/event-stream of `log`, `run`, `step` and `end` events", content_type = "text/event-stream"),
        (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn run_events(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let (_, run) = path;
    let id: RunId = parse_id("run", &run)?;
    let q: EventsQuery = parse_query(q.as_deref())?;
    let after = resume_point(&headers, q.after)?;
    // A missing run (or another tenant's) is a 404 before the stream starts.
    s.engine
        .store()
        .get_run_summary(auth.scope, id)
        .await
        .map_err(|e| Problem::store(e, "run"))?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(follow(s, auth.scope, id, after.unwrap_or(0), tx));
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Feeds `tx` until the run ended or the client went away.
async fn follow(s: AppState, scope: Scope, run: RunId, after: i64, tx: mpsc::Sender<Event>) {
    let store = s.engine.store();
    let mut last_run: Option<String> = None;
    let mut last_steps: HashMap<String, String> = HashMap::new();
    // On PostgreSQL a line's seq is taken before its transaction commits, so a line may
    // become visible after one with a higher seq (parallel steps checkpoint in parallel
    // transactions): each pass re-reads the lines above the settled point and sends only new
    // ones; the point moves past lines once they are old enough that nothing before them can
    // still appear.
    let mut win = Window {
        settled: after,
        recent: BTreeMap::new(),
    };
    let mut wait = FASTEST;
    loop {
        // The status first, then the lines: a finished run wrote its last line before it
        // was marked finished, so reading the lines after seeing the end misses none.
        let (r, steps, counts) = match store.get_run_summary(scope, run).await {
            Ok(v) => v,
            Err(e) => {
                let _ = tx
                    .send(Event::default().event("error").data(e.to_string()))
                    .await;
                return;
            }
        };
        let mut changed = false;
        let mut cursor = win.settled;
        loop {
            let lines = match store.run_logs(scope, run, cursor, PAGE).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx
                        .send(Event::default().event("error").data(e.to_string()))
                        .await;
                    return;
                }
            };
            let n = lines.len();
            for l in lines {
                cursor = l.seq;
                if !win.fresh(l.seq, l.ts) {
                    continue; // sent by an earlier pass over the unsettled window
                }
                let ev = Event::default()
                    .id(l.seq.to_string())
                    .event("log")
                    .json_data(LogOut::from(l));
                let Ok(ev) = ev else { continue };
                if tx.send(ev).await.is_err() {
                    return;
                }
                changed = true;
            }
            if n < PAGE {
                break;
            }
        }
        win.settle();
        for step in fold_steps(&steps, &counts) {
            let Ok(text) = serde_json::to_string(&step) else {
                continue;
            };
            if last_steps.get(&step.id) == Some(&text) {
                continue;
            }
            last_steps.insert(step.id.clone(), text.clone());
            if tx
                .send(Event::default().event("step").data(text))
                .await
                .is_err()
            {
                return;
            }
            changed = true;
        }
        let status = r.status.as_str().to_string();
        if last_run.as_deref() != Some(status.as_str()) {
            last_run = Some(status);
            if let Ok(ev) = Event::default()
                .event("run")
                .json_data(RunOut::new(&r, None))
                && tx.send(ev).await.is_err()
            {
                return;
            }
            changed = true;
        }
        if r.status.is_terminal() {
            let _ = tx
                .send(
                    Event::default()
                        .event("end")
                        .data(format!("{{\"status\":\"{}\"}}", r.status.as_str())),
                )
                .await;
            return;
        }
        wait = if changed {
            FASTEST
        } else {
            (wait * 2).min(SLOWEST)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Log lines sent above a settled seq: see [`follow`] for why lines are re-read.
struct Window {
    /// Every line up to here was sent and nothing below can still appear.
    settled: i64,
    /// Lines sent above `settled`, by seq, with their time.
    recent: BTreeMap<i64, i64>,
}

impl Window {
    /// Whether the line is new (and records it).
    fn fresh(&mut self, seq: i64, ts: i64) -> bool {
        seq > self.settled && self.recent.insert(seq, ts).is_none()
    }

    /// Moves `settled` past lines old enough (or when the window is too large).
    fn settle(&mut self) {
        let cutoff = now_ms() - SETTLE_MS;
        while let Some((&seq, &ts)) = self.recent.first_key_value() {
            if ts >= cutoff && self.recent.len() <= MAX_UNSETTLED {
                break;
            }
            self.settled = seq;
            self.recent.pop_first();
        }
    }
}

/// Follow a workspace live: every run's log lines as `log` events (id = the line's seq, data
/// with its `run_id` and `flow`), and a `run` snapshot when a run that logged changes status.
/// It does not end; reconnect with `Last-Event-ID` (or `?after=SEQ`) to miss nothing.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/runs/feed", tag = "runs",
    params(WsParam,
        ("after" = Option<i64>, Query, description = "only log lines after this seq (as Last-Event-ID); default: from now on"),
        ("Last-Event-ID" = Option<String>, Header, description = "the id of the last event received, to resume")),
    responses((status = 200, description = "a text/event-stream of `log` and `run` events", content_type = "text/event-stream"),
        (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn workspace_feed(
    State(s): State<AppState>,
    auth: Ws<Read>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let q: EventsQuery = parse_query(q.as_deref())?;
    let after = resume_point(&headers, q.after)?;
    // Without a resume point the feed starts now: the newest line so far is where it starts.
    let start = match after {
        Some(a) => a,
        None => s
            .engine
            .store()
            .search_logs(
                auth.scope,
                weft_store::LogQuery {
                    limit: 1,
                    ..Default::default()
                },
            )
            .await?
            .first()
            .map_or(0, |h| h.line.seq),
    };
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(feed(s, auth.scope, start, tx));
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The resume point of a stream: `Last-Event-ID`, else `?after=`.
fn resume_point(headers: &HeaderMap, after: Option<i64>) -> Result<Option<i64>, Problem> {
    let after = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    Problem::invalid(
                        "Last-Event-ID",
                        "must be the id of an event of this stream (a log line's seq)",
                    )
                })?,
        ),
        None => after,
    };
    if after.is_some_and(|a| a < 0) {
        return Err(Problem::invalid("after", "must be 0 or more"));
    }
    Ok(after)
}

/// Feeds `tx` with the workspace's lines until the client goes away.
async fn feed(s: AppState, scope: Scope, start: i64, tx: mpsc::Sender<Event>) {
    let store = s.engine.store();
    let mut win = Window {
        settled: start,
        recent: BTreeMap::new(),
    };
    let mut statuses: HashMap<RunId, String> = HashMap::new();
    let mut wait = FASTEST;
    loop {
        let mut changed = false;
        let mut cursor = win.settled;
        let mut touched: Vec<RunId> = Vec::new();
        loop {
            let hits = match store.workspace_logs(scope, cursor, PAGE).await {
                Ok(h) => h,
                Err(e) => {
                    let _ = tx
                        .send(Event::default().event("error").data(e.to_string()))
                        .await;
                    return;
                }
            };
            let n = hits.len();
            for h in hits {
                cursor = h.line.seq;
                if !win.fresh(h.line.seq, h.line.ts) {
                    continue;
                }
                if !touched.contains(&h.run_id) && touched.len() < 50 {
                    touched.push(h.run_id);
                }
                let seq = h.line.seq;
                let Ok(ev) = Event::default()
                    .id(seq.to_string())
                    .event("log")
                    .json_data(LogHitOut::from(h))
                else {
                    continue;
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
                changed = true;
            }
            if n < PAGE {
                break;
            }
        }
        win.settle();
        for run in touched {
            let Ok((r, _, _)) = store.get_run_summary(scope, run).await else {
                continue;
            };
            let status = r.status.as_str().to_string();
            if statuses.get(&run) == Some(&status) {
                continue;
            }
            if statuses.len() >= 10_000 {
                statuses.clear();
            }
            statuses.insert(run, status);
            if let Ok(ev) = Event::default()
                .event("run")
                .json_data(RunOut::new(&r, None))
                && tx.send(ev).await.is_err()
            {
                return;
            }
        }
        wait = if changed {
            FASTEST
        } else {
            (wait * 2).min(SLOWEST)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}
