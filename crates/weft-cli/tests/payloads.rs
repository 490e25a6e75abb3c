//! Large payloads end to end: a webhook body and step outputs over the threshold live in the
//! payload store (the data dir's `payloads/` by default), expressions and the API see them
//! whole, and deleting the run deletes them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Server, post_hook};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

const FLOW: &str = r#"name: bulk
trigger:
  webhook: {}
steps:
  - id: count
    transform: '{n: (.trigger.body.items | length), last: .trigger.body.items[-1].sku}'
  - id: echo
    transform: '.trigger.body'
"#;

/// Every file under `dir` whose path contains `needle`.
fn files_with(dir: &Path, needle: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, needle: &str, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, needle, out);
            } else if p.to_string_lossy().contains(needle) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, needle, &mut out);
    out
}

fn big_body() -> Value {
    let items: Vec<Value> = (0..20_000)
        .map(|i| json!({"sku": format!("sku-{i:05}"), "qty": i % 7, "note": "a fairly ordinary line item"}))
        .collect();
    json!({"items": items})
}

#[test]
fn a_megabyte_webhook_runs_through_the_payload_store_and_goes_with_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    let hook = srv.apply(FLOW)["hook_url"].as_str().unwrap().to_string();
    let body = big_body();
    let text = body.to_string();
    assert!(text.len() > 1 << 20, "the body is {} bytes", text.len());

    let (st, ack) = post_hook(&hook, &text, &[("idempotency-key", "batch-1")]).unwrap();
    assert_eq!(st, 202, "{ack}");
    let run = ack["run_id"].as_str().unwrap().to_string();
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{}", r["error"]);
    assert_eq!(r["trigger"]["body"], body, "the API serves the whole event");
    assert_eq!(
        r["steps"][0]["output"],
        json!({"n": 20_000, "last": "sku-19999"})
    );
    assert_eq!(
        r["steps"][1]["output"], body,
        "a large step output reads back whole"
    );

    let payloads = dir.path().join("payloads");
    let mine = files_with(&payloads, &run);
    let names: Vec<String> = mine
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("trigger-")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("step-1-")), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("step-0-")),
        "small outputs stay in the database: {names:?}"
    );
    // The database holds references only: it grew by far less than the payloads.
    let db = std::fs::metadata(dir.path().join("weft.db")).unwrap().len()
        + std::fs::metadata(dir.path().join("weft.db-wal")).map_or(0, |m| m.len());
    assert!(db < 2 * text.len() as u64, "the database is {db} bytes");

    // A repeated delivery is absorbed and stores nothing.
    let (_, again) = post_hook(&hook, &text, &[("idempotency-key", "batch-1")]).unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        files_with(&payloads, "trigger-").len(),
        names.iter().filter(|n| n.starts_with("trigger-")).count()
    );

    // Listing shows it whole too.
    let (st, list) = srv.api_get("/api/v1/workspaces/default/runs?flow=bulk");
    assert_eq!(st, 200);
    assert_eq!(
        list["items"][0]["trigger"]["body"]["items"][19_999]["sku"],
        "sku-19999"
    );

    // Deleting the run deletes its payloads; a second delete is a 404 problem.
    let out = srv.cli(&["runs", "delete", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(files_with(&payloads, &run).is_empty());
    let (st, p) = srv.api_get(&format!("/api/v1/workspaces/default/runs/{run}"));
    assert_eq!(st, 404, "{p}");
    let out = srv.cli(&["runs", "delete", &run]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("not found") || err.contains("404"), "{err}");

    // An orphan (a write whose run never committed) goes with the operator's sweep.
    let ws_dir = mine[0].parent().unwrap().parent().unwrap().to_path_buf();
    let orphan = ws_dir.join(weft_types::RunId::new().to_string());
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("trigger-x.json"), "{}").unwrap();
    drop(srv);
    let out = std::process::Command::new(common::weft_bin())
        .args([
            "admin",
            "payloads",
            "sweep",
            "--older-than-secs",
            "0",
            "--json",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs_swept"], 1, "{v}");
    assert!(!orphan.exists());
}

#[test]
fn a_bad_payload_store_setting_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::weft_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--payload-store",
            "ftp://x/y",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("payload store") && err.contains("s3://"),
        "{err}"
    );
}

/// An unsigned call to the S3 test server (moto accepts them); (status, body text).
fn s3(method: &str, url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .request(method.parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[test]
fn on_postgres_an_api_and_a_worker_process_share_payloads_in_s3() {
    let endpoint = std::env::var("WEFT_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("WEFT_TEST_S3_ENDPOINT is not set: start the S3 test server with `eval \"$(scripts/s3.sh start)\"` (scripts/test.sh does this)")
    });
    let bucket = format!("weft-{}", &weft_types::random_secret()[..12]);
    assert_eq!(s3("PUT", &format!("{endpoint}/{bucket}")).0, 200);
    let url = common::fresh_pg_db();
    let store = format!("s3://{bucket}/tenants");
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let common_flags = [
        "--database-url",
        url.as_str(),
        "--payload-store",
        store.as_str(),
    ];
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut flags = common_flags.to_vec();
    flags.extend(["--role", "api"]);
    let api = Server::start(d1.path(), None, &env, &flags);
    let mut flags = common_flags.to_vec();
    flags.extend(["--role", "worker"]);
    let _worker = Server::start(d2.path(), Some(&api.key), &env, &flags);

    let hook = api.apply(FLOW)["hook_url"].as_str().unwrap().to_string();
    let body = big_body();
    let (st, ack) = post_hook(&hook, &body.to_string(), &[]).unwrap();
    assert_eq!(st, 202, "{ack}");
    let run = ack["run_id"].as_str().unwrap().to_string();
    // The worker read the event the api process stored, and wrote the large output back.
    let r = api.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{}", r["error"]);
    assert_eq!(
        r["steps"][0]["output"],
        json!({"n": 20_000, "last": "sku-19999"})
    );
    assert_eq!(r["steps"][1]["output"], body);
    let (_, listing) = s3(
        "GET",
        &format!("{endpoint}/{bucket}?list-type=2&prefix=tenants/"),
    );
    assert!(listing.contains(&format!("{run}/trigger-")), "{listing}");
    assert!(listing.contains(&format!("{run}/step-1-")), "{listing}");
    assert!(!d1.path().join("payloads").join("tenants").exists());

    let out = api.cli(&["runs", "delete", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, listing) = s3(
        "GET",
        &format!("{endpoint}/{bucket}?list-type=2&prefix=tenants/"),
    );
    assert!(!listing.contains(&run), "{listing}");
}
