//! Poll triggers end to end, on the real binary: a listing API on loopback, items appearing
//! over time, restarts, new versions, backfill, and two workers on one PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// A listing API: `GET /items` answers `{items: [...]}` and records when it was asked.
struct Source {
    url: String,
    items: Arc<Mutex<Vec<Value>>>,
    asked: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Source {
    fn start() -> Source {
        let items: Arc<Mutex<Vec<Value>>> = Arc::default();
        let asked: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let (i2, a2) = (items.clone(), asked.clone());
        let app = axum::Router::new().route(
            "/items",
            axum::routing::get(move |uri: axum::http::Uri| {
                let (items, asked) = (i2.clone(), a2.clone());
                async move {
                    asked
                        .lock()
                        .unwrap()
                        .push((Instant::now(), uri.query().unwrap_or_default().to_string()));
                    axum::Json(json!({"items": *items.lock().unwrap()}))
                }
            }),
        );
        let addr = common::serve_app(app);
        Source {
            url: format!("http://{addr}"),
            items,
            asked,
        }
    }

    fn add(&self, ids: std::ops::Range<i64>) {
        let mut items = self.items.lock().unwrap();
        for i in ids {
            items.push(json!({"id": format!("item-{i}"), "n": i}));
        }
    }

    fn asked(&self) -> usize {
        self.asked.lock().unwrap().len()
    }
}

fn flow(url: &str, sink: &str, extra: &str) -> String {
    format!(
        r#"name: poller
trigger:
  poll:
    every: 1s
    input: {{ url: '{url}/items', query: {{ after: '{{{{ .cursor }}}}' }} }}
    items: '.body.items'
    cursor: '[.items[].n] | max'
{extra}steps:
  - id: deliver
    action: http.request
    input: {{ method: POST, url: '{sink}/got', body: {{ id: '{{{{ .trigger.item.id }}}}' }} }}
"#
    )
}

/// Waits until `f` holds, polling every 50 ms.
fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delivered(sink: &Sink) -> Vec<String> {
    let mut ids: Vec<String> = sink
        .all()
        .iter()
        .map(|r| r.body["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn poll_trigger_runs_each_new_item_once_across_restarts_versions_and_backfill() {
    let src = Source::start();
    let sink = Sink::start(SinkBehavior::default());
    src.add(0..3);
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(&flow(&src.url, &sink.url, ""));

    // The first poll learns the three existing items and starts nothing.
    until("the first poll", T, || {
        srv.cli_json(&["flow", "poll", "poller"])["polls"].as_i64() >= Some(1)
    });
    let st = srv.cli_json(&["flow", "poll", "poller"]);
    assert_eq!(
        (st["seen_items"].as_i64(), st["cursor"].clone()),
        (Some(3), json!(2)),
        "{st}"
    );
    assert_eq!(st["active"], true);

    // Two new items: one run each, delivered once, however many polls list them.
    src.add(3..5);
    until("two deliveries", T, || sink.count() >= 2);
    let before = src.asked();
    until("three more polls", T, || src.asked() >= before + 3);
    assert_eq!(delivered(&sink), vec!["item-3", "item-4"]);
    assert!(
        src.asked
            .lock()
            .unwrap()
            .iter()
            .any(|(_, q)| q == "after=4"),
        "the cursor reaches the listing"
    );

    // kill -9 and restart: the cursor and the seen ids are in the store, not in the process.
    let key = srv.key.clone();
    drop(srv);
    src.add(5..6);
    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    until("the item added while down", T, || sink.count() >= 3);

    // A new version keeps the trigger's state.
    srv.apply(&flow(&src.url, &sink.url, "    id: '.id'\n"));
    src.add(6..7);
    until("the item after the new version", T, || sink.count() >= 4);
    let before = src.asked();
    until("two more polls", T, || src.asked() >= before + 2);
    assert_eq!(
        delivered(&sink),
        vec!["item-3", "item-4", "item-5", "item-6"],
        "each item once"
    );

    // Backfill from the start: everything listed is known, so nothing runs twice.
    let out = srv.cli(&["flow", "backfill", "poller", "--since", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = src.asked();
    until("the backfill poll", T, || src.asked() > before);
    until("one more poll", T, || src.asked() > before + 1);
    assert_eq!(sink.count(), 4);
    let text = String::from_utf8_lossy(&srv.cli(&["flow", "poll", "poller"]).stdout).to_string();
    assert!(
        text.contains("polling; next at") && text.contains("items seen: 7"),
        "{text}"
    );

    // Bad input: one line, nothing changed.
    let out = srv.cli(&["flow", "backfill", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.trim().lines().count() == 1,
        "{err}"
    );
    srv.apply("name: manual\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    transform: '.'\n");
    let out = srv.cli(&["flow", "backfill", "manual", "--since", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no published poll trigger"));
    let (status, body) = srv.api_get("/api/v1/workspaces/default/flows/manual/poll");
    assert_eq!(status, 404, "{body}");
}

#[test]
fn two_workers_on_postgres_poll_each_tick_once_and_start_each_item_once() {
    let url = fresh_pg_db();
    let src = Source::start();
    let sink = Sink::start(SinkBehavior::default());
    src.add(0..2);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(d1.path(), None, &[], &["--database-url", &url]);
    let _b = Server::start(d2.path(), Some(&a.key), &[], &["--database-url", &url]);
    a.apply(&flow(&src.url, &sink.url, "    since: -1\n"));
    until("the first items", T, || sink.count() >= 2);
    // Items keep appearing while both workers poll.
    for i in 2..12 {
        src.add(i..i + 1);
        std::thread::sleep(Duration::from_millis(300));
    }
    until("every item", T, || sink.count() >= 12);
    let before = src.asked();
    until("two more polls", T, || src.asked() >= before + 2);
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..12).map(|i| format!("item-{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(delivered(&sink), want, "each item started exactly one run");
    // One poll per interval across both workers: two workers polling the same tick would
    // ask within a few milliseconds of each other.
    let asked = src.asked.lock().unwrap().clone();
    for w in asked.windows(2) {
        let gap = w[1].0.duration_since(w[0].0);
        assert!(
            gap >= Duration::from_millis(500),
            "two polls {gap:?} apart: {asked:?}"
        );
    }
}
