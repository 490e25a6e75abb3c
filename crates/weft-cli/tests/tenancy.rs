//! Tenancy through the real binary: keys, the audit trail (with a tampered database), operator
//! commands, the instance admin token and password login.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Server, weft_bin};
use serde_json::{Value, json};

fn http(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = reqwest::Client::new().request(method.parse().unwrap(), url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let st = resp.status().as_u16();
        (st, resp.json().await.unwrap_or(Value::Null))
    })
}

#[test]
fn keys_roles_and_a_tampered_audit_trail_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path(), None, &[], &[]);
    let created = srv.cli_json(&["keys", "create", "--role", "viewer", "--name", "dash"]);
    let secret = created["secret"].as_str().unwrap().to_string();
    let key_id = created["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("wft_"));
    // The viewer key reads but may not write: a one-line error and a non-zero exit.
    let viewer = |args: &[&str]| {
        Command::new(weft_bin())
            .args(args)
            .env("WEFT_URL", &srv.url)
            .env("WEFT_API_KEY", &secret)
            .output()
            .unwrap()
    };
    assert!(viewer(&["flow", "list"]).status.success());
    let f = dir.path().join("f.yaml");
    std::fs::write(
        &f,
        "name: x\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    transform: '1'\n",
    )
    .unwrap();
    let out = viewer(&["flow", "apply", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("viewer") && err.contains("403"), "{err}");
    // Listing shows the key but never a secret; revoking stops it at once.
    let list = srv.cli_json(&["keys", "list"]);
    assert!(list.to_string().contains(&key_id));
    assert!(!list.to_string().contains(&secret));
    srv.cli_json(&["keys", "revoke", &key_id]);
    let out = viewer(&["flow", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // The trail names what happened and checks.
    let trail = srv.cli_json(&["audit", "list"]);
    let actions: Vec<&str> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.starts_with(&["api_key.revoke", "api_key.create"]),
        "{actions:?}"
    );
    let out = srv.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
    // Someone edits entry 3 in the database file.
    srv.kill9();
    let db = rusqlite::Connection::open(dir.path().join("weft.db")).unwrap();
    let n = db
        .execute("UPDATE audit_log SET actor_id = 'nobody' WHERE seq = 3", [])
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let srv = Server::start(dir.path(), Some(&srv.key), &[], &[]);
    let out = srv.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken at entry 3"), "{err}");
}

#[test]
fn operator_commands_admin_token_and_password_login() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    let admin = srv
        .admin_token
        .clone()
        .expect("first start prints the admin token");
    assert!(admin.starts_with("wfa_"));
    // The operator creates a tenant on the store while the server runs.
    let out = Command::new(weft_bin())
        .args([
            "admin",
            "tenant",
            "create",
            "--name",
            "acme",
            "--owner-email",
            "Ops@Acme.example",
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
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let acme_key = t["api_key"].as_str().unwrap();
    let out = Command::new(weft_bin())
        .args([
            "admin",
            "user",
            "set-password",
            "--email",
            "ops@acme.example",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("WEFT_PASSWORD", "a long enough secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(weft_bin())
        .args([
            "admin",
            "user",
            "set-password",
            "--email",
            "ops@acme.example",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("WEFT_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The admin sees both tenants; a workspace key is not an admin credential.
    let (st, v) = http(
        "GET",
        &format!("{}/api/v1/admin/tenants", srv.url),
        Some(&admin),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let (st, _) = http(
        "GET",
        &format!("{}/api/v1/admin/tenants", srv.url),
        Some(acme_key),
        None,
    );
    assert_eq!(st, 403);
    // The new owner logs in; each tenant sees only its own flows.
    let (st, me) = http(
        "POST",
        &format!("{}/api/v1/auth/login", srv.url),
        None,
        Some(json!({"email": "ops@acme.example", "password": "a long enough secret"})),
    );
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["workspaces"][0]["role"], "owner");
    let (st, flows) = http(
        "GET",
        &format!("{}/api/v1/workspaces/default/flows", srv.url),
        Some(acme_key),
        None,
    );
    assert_eq!(st, 200);
    assert!(
        flows["items"].as_array().unwrap().is_empty(),
        "acme must not see the default tenant's hello flow"
    );
    // `weft admin token` replaces the token; the old one stops working.
    let out = Command::new(weft_bin())
        .args(["admin", "token", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let new: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = new["admin_token"].as_str().unwrap();
    let (st, _) = http(
        "GET",
        &format!("{}/api/v1/admin/tenants", srv.url),
        Some(&admin),
        None,
    );
    assert_eq!(st, 401);
    let (st, _) = http(
        "GET",
        &format!("{}/api/v1/admin/tenants", srv.url),
        Some(new),
        None,
    );
    assert_eq!(st, 200);
    // The served description is the API's own.
    let (st, spec) = http(
        "GET",
        &format!("{}/api/v1/openapi.json", srv.url),
        None,
        None,
    );
    assert_eq!(st, 200);
    assert!(spec["paths"]["/api/v1/workspaces/{ws}/api-keys"].is_object());
}

#[test]
fn login_spraying_many_accounts_from_one_address_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    let mut codes = Vec::new();
    for i in 0..26 {
        let (st, v) = http(
            "POST",
            &format!("{}/api/v1/auth/login", srv.url),
            None,
            Some(json!({"email": format!("user{i}@spray.example"), "password": "hunter2hunter2"})),
        );
        if st == 429 {
            assert_eq!(v["code"], "too_many_attempts");
        }
        codes.push(st);
    }
    // Each account was tried once: only the per-address limit (20 a minute) can answer 429.
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 20, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 6, "{codes:?}");
}
