//! `/metrics` after a known sequence of deliveries and runs: each counter moved by exactly what
//! happened, and nothing of any tenant shows.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Server, Sink, SinkBehavior, post_hook, sample};

#[test]
fn metrics_count_what_happened_and_show_no_tenant_data() {
    // The sink fails the first call once, so exactly one retry happens.
    let sink = Sink::start(SinkBehavior {
        statuses: vec![500],
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let before = srv.metrics_text();
    let f = srv.apply(&format!(
        "name: counted\ntrigger:\n  webhook: {{}}\nsteps:\n  - id: shape\n    transform: '{{n: .trigger.body.n}}'\n  - id: send\n    action: http.request\n    input: {{method: POST, url: '{}/got', body: '{{{{ .steps.shape.output }}}}'}}\n    retry: {{max_attempts: 3, initial: 50ms}}\n",
        sink.url
    ));
    let hook = f["hook_url"].as_str().unwrap().to_string();
    let mut runs = Vec::new();
    for n in 0..3 {
        let (st, ack) = post_hook(
            &hook,
            &format!(r#"{{"n": {n}}}"#),
            &[("idempotency-key", &format!("k{n}"))],
        )
        .unwrap();
        assert_eq!(st, 202, "{ack}");
        runs.push(ack["run_id"].as_str().unwrap().to_string());
    }
    let (st, ack) = post_hook(&hook, r#"{"n": 0}"#, &[("idempotency-key", "k0")]).unwrap();
    assert_eq!((st, ack["duplicate"].as_bool()), (202, Some(true)));
    let unknown = format!("{}/hooks/hk_0000000000000000000000000000", srv.url);
    assert_eq!(post_hook(&unknown, "{}", &[]).unwrap().0, 404);
    for r in &runs {
        assert_eq!(
            srv.wait_run(r, Duration::from_secs(30))["status"],
            "succeeded"
        );
    }

    let m = srv.metrics_text();
    let delta = |series: &str| sample(&m, series) - sample(&before, series);
    assert_eq!(
        delta(r#"weft_intake_total{outcome="accepted"}"#),
        3.0,
        "{m}"
    );
    assert_eq!(
        delta(r#"weft_intake_total{outcome="duplicate"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        delta(r#"weft_intake_total{outcome="not_found"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        delta(r#"weft_runs_finished_total{status="succeeded"}"#),
        3.0,
        "{m}"
    );
    assert_eq!(
        delta(r#"weft_run_duration_seconds_count{status="succeeded"}"#),
        3.0,
        "{m}"
    );
    assert_eq!(
        delta(
            r#"weft_steps_total{kind="action",connector="http",outcome="succeeded",error_class="none"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        delta(
            r#"weft_steps_total{kind="transform",connector="none",outcome="succeeded",error_class="none"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        delta(r#"weft_step_retries_total{connector="http"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(delta("weft_runs_claimed_total"), 3.0, "{m}");
    assert_eq!(delta("weft_claim_lag_seconds_count"), 3.0, "{m}");
    assert_eq!(
        delta(
            r#"weft_http_request_duration_seconds_count{method="POST",route="/hooks/{hook_id}",status="202"}"#
        ),
        4.0,
        "{m}"
    );
    assert!(sample(&m, r#"weft_runs{status="succeeded"}"#) >= 3.0, "{m}");
    assert_eq!(sample(&m, "weft_runs_in_flight"), 0.0, "{m}");
    assert!(m.trim_end().ends_with("# EOF"), "{m}");

    // Every metric the Grafana dashboard queries is registered (families without samples yet
    // are not printed, so the registrations are the reference).
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dash = std::fs::read_to_string(format!("{root}/deploy/grafana/weft.json")).unwrap();
    let registered = [
        "crates/weft-engine/src/metrics.rs",
        "crates/weft-api/src/metrics.rs",
    ]
    .map(|f| std::fs::read_to_string(format!("{root}/{f}")).unwrap())
    .join("\n");
    let mut rest = dash.as_str();
    let mut used = 0;
    while let Some(i) = rest.find("weft_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let Some(short) = name.strip_prefix("weft_") else {
            continue;
        };
        if short.is_empty() {
            continue;
        }
        used += 1;
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|x| short.strip_suffix(x))
            .unwrap_or(short);
        assert!(
            registered.contains(&format!("\"{base}\"")),
            "the dashboard queries {name}, which is not registered"
        );
    }
    assert!(
        used >= 10,
        "the dashboard should chart the metrics ({used} found)"
    );

    // Instance-wide, and no tenant's data: no ids, names or hook ids.
    let ws = srv.cli_json(&["flow", "show", "counted"]);
    for secret in [
        ws["id"].as_str().unwrap(),
        ws["hook_id"].as_str().unwrap(),
        "counted",
        runs[0].as_str(),
    ] {
        assert!(!m.contains(secret), "{secret} in metrics");
    }
}
