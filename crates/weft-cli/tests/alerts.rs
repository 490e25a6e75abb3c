//! Alerting through the real binary: a rule made with `weft alerts create` pages a signed
//! webhook once for a burst of identical failures, and `weft alerts deliveries` shows it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Server, Sink, SinkBehavior};
use serde_json::json;

#[test]
fn a_burst_of_failures_pages_a_webhook_once_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply("name: orders\ntrigger:\n  manual: {}\nsteps:\n  - id: check\n    fail: 'order {{ .trigger.body.n }} is bad'\n");
    // Bad rules fail with one line naming the problem.
    let out = srv.cli(&["alerts", "create", "pager", "--on", "run_failed"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--webhook"), "{err}");
    let out = srv.cli(&[
        "alerts",
        "create",
        "pager",
        "--on",
        "run_stuck",
        "--webhook",
        &sink.url,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stuck_after"));

    let url = format!("{}/pager", sink.url);
    let rule = srv.cli_json(&[
        "alerts",
        "create",
        "pager",
        "--on",
        "run_failed",
        "--flow",
        "orders",
        "--quiet",
        "1h",
        "--webhook",
        &url,
    ]);
    assert_eq!(
        (rule["name"].as_str(), rule["on"].as_str()),
        (Some("pager"), Some("run_failed"))
    );
    let listed = srv.cli_json(&["alerts", "list"]);
    assert_eq!(
        listed["items"][0]["spec"]["notify"]["webhook"]["url"],
        json!(url)
    );

    let runs = srv.failed_runs("orders", 20);
    let delivered = srv.wait_alert_delivered("pager", Duration::from_secs(30));
    assert_eq!(
        delivered["items"].as_array().unwrap().len(),
        1,
        "{delivered}"
    );
    let got = sink.all();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, "/pager");
    assert_eq!(got[0].body["type"], "alert.run_failed");
    assert_eq!(got[0].body["flow"], "orders");
    assert!(runs.contains(&got[0].body["run_id"].as_str().unwrap().to_string()));

    let out = srv.cli(&["alerts", "delete", "pager"]);
    assert!(out.status.success());
    assert!(
        srv.cli_json(&["alerts", "list"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let out = srv.cli(&["alerts", "delete", "pager"]);
    assert!(!out.status.success());
}
