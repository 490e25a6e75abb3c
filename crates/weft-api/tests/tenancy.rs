//! Tenancy through the real router: the BOLA and role matrices walk every route of the
//! generated OpenAPI description (so a new route cannot be forgotten), plus keys, sessions,
//! quotas, the audit trail and the nasty inputs.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{ADMIN, App};
use serde_json::{Value, json};
use weft_types::{FlowId, KeyId, Permission, Role, RunId, TenantId, UserId};

const FLOW: &str =
    "name: hooked\ntrigger:\n  webhook: {}\nsteps:\n  - id: a\n    transform: '.trigger.body'\n";

/// Tenant A's objects, made through the API with A's owner key.
struct World {
    app: App,
    a_key: String,
    a_ws: String,
    a_flow: String,
    a_run: String,
    a_keyid: String,
    a_user: String,
    a_tenant: String,
    b_key: String,
    b_ws: String,
}

async fn world() -> World {
    let app = App::new().await;
    let a_key = app.owner_key.clone();
    let a_ws = app.scope.workspace.to_string();
    let def = serde_json::to_value(weft_flow::parse_text(FLOW).unwrap()).unwrap();
    let r = app
        .call(
            "POST",
            "/api/v1/workspaces/default/flows",
            Some(&a_key),
            Some(def),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let a_flow = r.body["id"].as_str().unwrap().to_string();
    let r = app
        .call(
            "POST",
            "/api/v1/workspaces/default/flows/hooked/runs",
            Some(&a_key),
            Some(json!({"input": {"x": 1}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let a_run = r.body["run_id"].as_str().unwrap().to_string();
    let r = app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&a_key),
            Some(json!({"role": "viewer", "name": "ci"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let a_keyid = r.body["id"].as_str().unwrap().to_string();
    let r = app
        .call(
            "POST",
            "/api/v1/workspaces/default/members",
            Some(&a_key),
            Some(json!({"email": "ann@a.example", "role": "editor"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let a_user = r.body["user_id"].as_str().unwrap().to_string();
    let r = app
        .call(
            "POST",
            "/api/v1/admin/tenants",
            Some(ADMIN),
            Some(json!({"name": "B", "owner_email": "bob@b.example"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let b_key = r.body["owner_key"].as_str().unwrap().to_string();
    let b_ws = r.body["workspace_id"].as_str().unwrap().to_string();
    let r = app
        .call(
            "POST",
            "/api/v1/workspaces/default/credentials",
            Some(&a_key),
            Some(json!({"name": A_CRED, "connector": "github", "values": {"token": "ghp_a_only"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    World {
        a_tenant: app.scope.tenant.to_string(),
        app,
        a_key,
        a_ws,
        a_flow,
        a_run,
        a_keyid,
        a_user,
        b_key,
        b_ws,
    }
}

/// Tenant A's credential, whose name must never reach tenant B.
const A_CRED: &str = "a-cred-7c1e";

/// Every (method, path template, scopes of the api_key scheme) of the generated description.
fn operations() -> Vec<(String, String, Vec<String>)> {
    let api = serde_json::to_value(weft_api::openapi()).unwrap();
    let mut out = Vec::new();
    for (path, item) in api["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let scopes = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("api_key"))
                .flat_map(|s| s.as_array().cloned().unwrap_or_default())
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            out.push((method.to_uppercase(), path.clone(), scopes));
        }
    }
    assert!(out.len() >= 30, "the route table shrank: {}", out.len());
    out
}

/// Fills a path template; panics on a parameter the matrices do not know yet.
fn fill(path: &str, vals: &[(&str, &str)]) -> String {
    let mut p = path.to_string();
    for (k, v) in vals {
        p = p.replace(&format!("{{{k}}}"), v);
    }
    assert!(
        !p.contains('{'),
        "{path}: a path parameter the tenancy matrices do not know; add it to them"
    );
    p
}

/// A body that gets a write past parsing, so the check under test is what answers.
fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("GET" | "DELETE", _) => None,
        ("PATCH", p) if p.ends_with("/members/{user}") => Some(json!({"role": "viewer"})),
        ("PATCH", "/api/v1/workspaces/{ws}") => Some(json!({"name": "renamed"})),
        ("POST", "/api/v1/workspaces") => {
            Some(json!({"slug": format!("ws-{}", &RunId::new().to_string()[30..])}))
        }
        _ => Some(json!({})),
    }
}

#[tokio::test]
async fn bola_matrix_tenant_b_never_reaches_tenant_a() {
    let w = world().await;
    let a_objects = [
        w.a_ws.as_str(),
        w.a_flow.as_str(),
        w.a_run.as_str(),
        w.a_keyid.as_str(),
        w.a_user.as_str(),
        w.a_tenant.as_str(),
        A_CRED,
    ];
    let mut walked = 0;
    for (method, path, _) in operations() {
        if path.starts_with("/hooks/") {
            continue; // public by design: addressed by an unguessable id, not by a key
        }
        let body = body_for(&method, &path);
        let check_absent = |r: &common::Resp, what: &str| {
            let text = r.body.to_string();
            for id in a_objects {
                assert!(!text.contains(id), "{what}: tenant A's {id} leaked: {text}");
            }
        };
        if path.contains("{ws}") {
            // 1. Tenant B's key on tenant A's workspace: 404, as if it did not exist.
            let url = fill(
                &path,
                &[
                    ("ws", &w.a_ws),
                    ("flow", &w.a_flow),
                    ("run", &w.a_run),
                    ("key", &w.a_keyid),
                    ("user", &w.a_user),
                    ("name", A_CRED),
                ],
            );
            let r = w
                .app
                .call(&method, &url, Some(&w.b_key), body.clone())
                .await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{method} {url}: {}",
                r.body
            );
            assert_eq!(r.body["code"], "not_found", "{method} {url}");
            check_absent(&r, &format!("{method} {url}"));
            // The same by slug.
            let url = url.replace(&w.a_ws, "default");
            let r = w
                .app
                .call(&method, &url, Some(&w.b_key), body.clone())
                .await;
            // B's own workspace is also called `default`: then only object routes must 404.
            check_absent(&r, &format!("{method} {url}"));
            // 2. Tenant B's own workspace with tenant A's object ids: 404 or absent.
            let url = fill(
                &path,
                &[
                    ("ws", &w.b_ws),
                    ("flow", &w.a_flow),
                    ("run", &w.a_run),
                    ("key", &w.a_keyid),
                    ("user", &w.a_user),
                    ("name", A_CRED),
                ],
            );
            let r = w
                .app
                .call(&method, &url, Some(&w.b_key), body.clone())
                .await;
            let has_object = ["{flow}", "{run}", "{key}", "{user}", "{name}"]
                .iter()
                .any(|p| path.contains(p));
            if has_object {
                assert_eq!(
                    r.status,
                    StatusCode::NOT_FOUND,
                    "{method} {url}: {}",
                    r.body
                );
            }
            check_absent(&r, &format!("{method} {url}"));
        } else if path.starts_with("/api/v1/admin/") {
            // 3. A workspace owner key is not the instance admin.
            let url = fill(&path, &[("tenant", &w.a_tenant)]);
            let r = w
                .app
                .call(&method, &url, Some(&w.b_key), body.clone())
                .await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{method} {url}: {}",
                r.body
            );
            check_absent(&r, &format!("{method} {url}"));
        } else {
            // 4. Routes outside a workspace: nothing of tenant A in B's answers.
            // Resume links are capabilities: a token this instance did not sign leads nowhere.
            let url = fill(
                &path,
                &[("name", "github"), ("token", "not-a-signed-token")],
            );
            let r = w
                .app
                .call(&method, &url, Some(&w.b_key), body.clone())
                .await;
            // The test app has no sandbox program, so readiness says so (see health.rs).
            let unready = path == "/readyz" && r.status == StatusCode::SERVICE_UNAVAILABLE;
            assert!(
                r.status.as_u16() < 500 || unready,
                "{method} {url}: {}",
                r.body
            );
            check_absent(&r, &format!("{method} {url}"));
        }
        walked += 1;
    }
    assert!(walked >= 28, "walked {walked} routes");
    // Nothing above changed tenant A: its run and flow are intact.
    let r = w
        .app
        .call(
            "GET",
            &format!("/api/v1/workspaces/default/runs/{}", w.a_run),
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "queued");
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/members",
            Some(&w.a_key),
            None,
        )
        .await;
    assert!(r.body.to_string().contains("ann@a.example"));
}

#[tokio::test]
async fn role_matrix_every_route_for_every_role() {
    let w = world().await;
    let mut keys = Vec::new();
    for role in Role::ALL {
        let r = w
            .app
            .call(
                "POST",
                "/api/v1/workspaces/default/api-keys",
                Some(&w.a_key),
                Some(json!({"role": role.as_str()})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        keys.push((role, r.body["secret"].as_str().unwrap().to_string()));
    }
    let mut checked = 0;
    for (method, path, scopes) in operations() {
        if scopes.is_empty() {
            continue;
        }
        assert_eq!(scopes.len(), 1, "{method} {path}: one permission per route");
        let need = Permission::from_scope(&scopes[0])
            .unwrap_or_else(|| panic!("{path}: unknown scope {}", scopes[0]));
        // Well-formed ids of objects that do not exist: an allowed caller gets past the
        // permission check to a 404 (or a validation error), so nothing is changed.
        let url = fill(
            &path,
            &[
                ("ws", "default"),
                ("flow", &FlowId::new().to_string()),
                ("run", &RunId::new().to_string()),
                ("key", &KeyId::new().to_string()),
                ("user", &UserId::new().to_string()),
                ("name", "no-such-credential"),
            ],
        );
        for (role, key) in &keys {
            let r = w
                .app
                .call(&method, &url, Some(key), body_for(&method, &path))
                .await;
            if role.allows(need) {
                assert!(
                    r.status != StatusCode::FORBIDDEN && r.status != StatusCode::UNAUTHORIZED,
                    "{role} may {method} {path} ({need:?}) but got {}: {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{role} must not {method} {path}: {}",
                    r.body
                );
                assert_eq!(r.body["code"], "forbidden");
            }
            checked += 1;
        }
    }
    assert!(checked >= 4 * 25, "checked {checked}");
}

#[tokio::test]
async fn keys_are_shown_once_hashed_revocable_and_scoped() {
    let w = world().await;
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "editor"})),
        )
        .await;
    let secret = r.body["secret"].as_str().unwrap().to_string();
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("wft_") && secret.len() >= 68);
    // Listing never shows a secret.
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            None,
        )
        .await;
    assert!(!r.body.to_string().contains(&secret));
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("secret").is_none())
    );
    // It works, then it is revoked and stops working at once.
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows",
            Some(&secret),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = w
        .app
        .call(
            "DELETE",
            &format!("/api/v1/workspaces/default/api-keys/{id}"),
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["revoked_at"].is_string());
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows",
            Some(&secret),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["code"], "unauthenticated");
    // An admin cannot mint an owner key; an editor cannot mint any.
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "admin"})),
        )
        .await;
    let admin = r.body["secret"].as_str().unwrap().to_string();
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&admin),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Malformed, unknown, and expired keys.
    for bad in [
        "nope",
        "wft_",
        "wft_0000",
        &format!("wft_{}", "x".repeat(300)),
    ] {
        let r = w
            .app
            .call("GET", "/api/v1/workspaces/default/flows", Some(bad), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "viewer", "expires_in_secs": 60})),
        )
        .await;
    let short = r.body["secret"].as_str().unwrap().to_string();
    assert_eq!(
        w.app
            .call(
                "GET",
                "/api/v1/workspaces/default/flows",
                Some(&short),
                None
            )
            .await
            .status,
        StatusCode::OK
    );
    w.app.clock.advance(std::time::Duration::from_secs(61));
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows",
            Some(&short),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Bad role and unknown fields name the field.
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "root"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["path"], "role");
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "viewer", "scopes": []})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["detail"].as_str().unwrap().contains("scopes"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn sessions_log_in_need_csrf_for_writes_and_log_out() {
    let w = world().await;
    let hash = weft_api::password::hash("correct horse battery".into())
        .await
        .unwrap();
    w.app
        .store
        .set_password("ann@a.example", &hash, common::T0)
        .await
        .unwrap();
    // Wrong password and unknown user: the same answer.
    for (email, pw) in [
        ("ann@a.example", "wrong password"),
        ("nobody@a.example", "correct horse battery"),
    ] {
        let r = w
            .app
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"email": email, "password": pw})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body["code"], "invalid_credentials");
    }
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ANN@a.example", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let set_cookie = r.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = r.body["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(r.body["workspaces"][0]["role"], "editor");
    let c = [("cookie", cookie.as_str())];
    // Reads work with the cookie alone; writes need the CSRF token too.
    let r = w
        .app
        .call_with("GET", "/api/v1/workspaces/default/flows", None, None, &c)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let def = serde_json::to_value(weft_flow::parse_text(FLOW).unwrap()).unwrap();
    let r = w
        .app
        .call_with(
            "POST",
            "/api/v1/workspaces/default/flows",
            None,
            Some(def.clone()),
            &c,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["code"], "csrf_failed");
    let with_csrf = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let r = w
        .app
        .call_with(
            "POST",
            "/api/v1/workspaces/default/flows",
            None,
            Some(def),
            &with_csrf,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The editor may not manage keys.
    let r = w
        .app
        .call_with(
            "GET",
            "/api/v1/workspaces/default/api-keys",
            None,
            None,
            &with_csrf,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The change is audited as the user, via the session.
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/audit",
            Some(&w.a_key),
            None,
        )
        .await;
    let newest = &r.body["items"][0];
    assert_eq!(newest["action"], "flow.update");
    assert_eq!(newest["actor_id"], w.a_user);
    assert!(newest["via"].as_str().unwrap().starts_with("session:"));
    // Logout ends it.
    let r = w
        .app
        .call_with("POST", "/api/v1/auth/logout", None, None, &with_csrf)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = w
        .app
        .call_with("GET", "/api/v1/workspaces/default/flows", None, None, &c)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Forged, malformed and oversized cookies are refused the same way.
    for bad in [
        "weft_session=0123456789abcdef".to_string(),
        "weft_session=".to_string(),
        format!("weft_session={}", "a".repeat(500)),
        "other=1; weft_session=%%%".to_string(),
    ] {
        let r = w
            .app
            .call_with(
                "GET",
                "/api/v1/workspaces/default/flows",
                None,
                None,
                &[("cookie", bad.as_str())],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    // Expired sessions do not work either.
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ann@a.example", "password": "correct horse battery"})),
        )
        .await;
    let cookie = r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    w.app
        .clock
        .advance(std::time::Duration::from_secs(13 * 3600));
    let r = w
        .app
        .call_with(
            "GET",
            "/api/v1/auth/me",
            None,
            None,
            &[("cookie", cookie.as_str())],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_brute_force_is_throttled_per_account() {
    let w = world().await;
    let mut limited = 0;
    for i in 0..12 {
        let r = w
            .app
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"email": "ann@a.example", "password": format!("guess {i}")})),
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.body["code"], "too_many_attempts");
            assert!(r.headers.contains_key("retry-after"));
            limited += 1;
        } else {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        }
    }
    assert!(limited >= 6, "only {limited} of 12 guesses were throttled");
}

#[tokio::test]
async fn members_the_last_owner_stays_and_duplicates_are_refused() {
    let w = world().await;
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/members",
            Some(&w.a_key),
            None,
        )
        .await;
    let owner = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "owner")
        .unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = w
        .app
        .store
        .verify_audit(w.app.scope.tenant)
        .await
        .unwrap()
        .entries;
    let r = w
        .app
        .call(
            "DELETE",
            &format!("/api/v1/workspaces/default/members/{owner}"),
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["code"], "rule_violated");
    let r = w
        .app
        .call(
            "PATCH",
            &format!("/api/v1/workspaces/default/members/{owner}"),
            Some(&w.a_key),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/members",
            Some(&w.a_key),
            Some(json!({"email": "Ann@A.example", "role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/members",
            Some(&w.a_key),
            Some(json!({"email": "not an email", "role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["path"], "email");
    // Nothing was changed or audited by the refused requests.
    assert_eq!(
        w.app
            .store
            .verify_audit(w.app.scope.tenant)
            .await
            .unwrap()
            .entries,
        before
    );
    // With a second owner, the first may step down.
    let r = w
        .app
        .call(
            "PATCH",
            &format!("/api/v1/workspaces/default/members/{}", w.a_user),
            Some(&w.a_key),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = w
        .app
        .call(
            "PATCH",
            &format!("/api/v1/workspaces/default/members/{owner}"),
            Some(&w.a_key),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn workspaces_slugs_are_unique_per_tenant_and_keys_stay_in_theirs() {
    let w = world().await;
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces",
            Some(&w.a_key),
            Some(json!({"slug": "ops"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces",
            Some(&w.a_key),
            Some(json!({"slug": "ops"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Another tenant may use the same slug.
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces",
            Some(&w.b_key),
            Some(json!({"slug": "ops"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for bad in ["", "Ops", "-x", "a b", &"x".repeat(65)] {
        let r = w
            .app
            .call(
                "POST",
                "/api/v1/workspaces",
                Some(&w.a_key),
                Some(json!({"slug": bad})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    // A's default-workspace key does not open A's `ops` workspace.
    let r = w
        .app
        .call("GET", "/api/v1/workspaces/ops/flows", Some(&w.a_key), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A key lists only its own workspace; A's owner, logged in, sees both (sessions follow
    // memberships).
    let list = w
        .app
        .call("GET", "/api/v1/workspaces", Some(&w.a_key), None)
        .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let (cookie, _) = session(&w.app, "owner@localhost").await;
    let list = w
        .app
        .call_with(
            "GET",
            "/api/v1/workspaces",
            None,
            None,
            &[("cookie", cookie.as_str())],
        )
        .await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        2,
        "{}",
        list.body
    );
}

async fn start(app: &App, key: &str) -> common::Resp {
    app.call(
        "POST",
        "/api/v1/workspaces/default/flows/hooked/runs",
        Some(key),
        Some(json!({})),
    )
    .await
}

#[tokio::test]
async fn quotas_refuse_with_429_and_change_nothing() {
    let w = world().await;
    let t = &w.a_tenant;
    // Runs per month: one more run is allowed (one exists), then 429.
    let r = w
        .app
        .call(
            "PATCH",
            &format!("/api/v1/admin/tenants/{t}"),
            Some(ADMIN),
            Some(json!({"limits": {"runs_per_month": 2, "active_flows": 1}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["usage"]["runs_in_month"], 1);
    assert_eq!(start(&w.app, &w.a_key).await.status, StatusCode::ACCEPTED);
    let r = start(&w.app, &w.a_key).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["code"], "quota_exceeded");
    assert!(r.headers.contains_key("retry-after"));
    let runs = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/runs",
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(runs.body["items"].as_array().unwrap().len(), 2);
    // Next month the count starts again.
    w.app
        .clock
        .advance(std::time::Duration::from_secs(32 * 86_400));
    assert_eq!(start(&w.app, &w.a_key).await.status, StatusCode::ACCEPTED);
    // Active flows: a second published flow is refused, a draft is fine.
    let mut def = serde_json::to_value(weft_flow::parse_text(FLOW).unwrap()).unwrap();
    def["name"] = json!("second");
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/flows",
            Some(&w.a_key),
            Some(def.clone()),
        )
        .await;
    // Waiting does not help here, so it is 403, not 429.
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["code"], "quota_exceeded");
    assert!(r.body["detail"].as_str().unwrap().contains("active_flows"));
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows/second",
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "nothing half-written");
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/flows?draft=true",
            Some(&w.a_key),
            Some(def),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Webhook requests per second.
    w.app
        .call(
            "PATCH",
            &format!("/api/v1/admin/tenants/{t}"),
            Some(ADMIN),
            Some(json!({"limits": {"webhook_rps": 2}})),
        )
        .await;
    let flow = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows/hooked",
            Some(&w.a_key),
            None,
        )
        .await;
    let hook = flow.body["hook_id"].as_str().unwrap().to_string();
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = w
            .app
            .call(
                "POST",
                &format!("/hooks/{hook}"),
                None,
                Some(json!({"n": 1})),
            )
            .await;
        codes.push(r.status.as_u16());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.body["code"], "rate_limited");
            assert_eq!(r.headers["retry-after"], "1");
        }
    }
    assert!(codes.contains(&202) && codes.contains(&429), "{codes:?}");
    // A limit of 0 refuses every webhook.
    w.app
        .call(
            "PATCH",
            &format!("/api/v1/admin/tenants/{t}"),
            Some(ADMIN),
            Some(json!({"limits": {"webhook_rps": 0}})),
        )
        .await;
    let r = w
        .app
        .call(
            "POST",
            &format!("/hooks/{hook}"),
            None,
            Some(json!({"n": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // Tenant B is not affected by A's limits.
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows",
            Some(&w.b_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Bad limits are refused with the field named.
    let r = w
        .app
        .call(
            "PATCH",
            &format!("/api/v1/admin/tenants/{t}"),
            Some(ADMIN),
            Some(json!({"limits": {"runs_per_month": -1}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["path"], "limits.runs_per_month");
    let r = w
        .app
        .call(
            "GET",
            &format!("/api/v1/admin/tenants/{}", TenantId::new()),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn audit_trail_records_changes_and_verifies() {
    let w = world().await;
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/audit?scope=tenant",
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let actions: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "tenant.create",
        "workspace.create",
        "api_key.create",
        "flow.create",
        "run.start",
        "member.add",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let first = &r.body["items"][0];
    assert!(first["request_id"].is_string(), "{first}");
    assert_eq!(first["actor_kind"], "key");
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/audit/verify",
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    // Paging walks back through the chain.
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/audit?scope=tenant&limit=2",
            Some(&w.a_key),
            None,
        )
        .await;
    let cursor = r.body["next_cursor"].as_str().unwrap().to_string();
    let r2 = w
        .app
        .call(
            "GET",
            &format!("/api/v1/workspaces/default/audit?scope=tenant&limit=2&cursor={cursor}"),
            Some(&w.a_key),
            None,
        )
        .await;
    // The next page starts right below the last entry of this one.
    assert_eq!(
        r2.body["items"][0]["seq"].as_i64().unwrap(),
        r.body["items"][1]["seq"].as_i64().unwrap() - 1
    );
    // Viewers cannot read it.
    let viewer = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "viewer"})),
        )
        .await;
    let viewer = viewer.body["secret"].as_str().unwrap().to_string();
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/audit",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // B sees none of A's entries.
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/audit?scope=tenant",
            Some(&w.b_key),
            None,
        )
        .await;
    assert!(!r.body.to_string().contains(&w.a_flow));
}

#[tokio::test]
async fn bad_input_is_problem_json_with_the_field() {
    let w = world().await;
    let k = Some(w.a_key.as_str());
    let r = w
        .app
        .call("GET", "/api/v1/workspaces/default/runs/run_nope", k, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["path"], "run");
    let r = w
        .app
        .call("GET", "/api/v1/workspaces/default/runs?limit=abc", k, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["path"], "limit");
    let r = w
        .app
        .call("GET", "/api/v1/workspaces/default/runs?bogus=1", k, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = w
        .app
        .call_with(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            k,
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "empty body: {}", r.body);
    let r = w
        .app
        .call("POST", "/api/v1/workspaces", k, Some(json!({"slug": 5})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["path"], "slug");
    let r = w.app.call("GET", "/api/v1/nowhere", k, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let r = w
        .app
        .call("PUT", "/api/v1/workspaces/default/flows", k, None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // Every answer carries a request id.
    assert!(r.headers.contains_key("x-request-id"));
    // No admin token, a wrong one, a workspace key.
    for key in [None, Some("wfa_wrong"), k] {
        let r = w.app.call("GET", "/api/v1/admin/tenants", key, None).await;
        assert!(
            r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN,
            "{key:?}"
        );
    }
}

#[tokio::test]
async fn openapi_is_served_and_matches_the_committed_file() {
    let app = App::new().await;
    let r = app.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let generated = serde_json::to_string_pretty(&weft_api::openapi()).unwrap() + "\n";
    assert_eq!(serde_json::from_str::<Value>(&generated).unwrap(), r.body);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is out of date; regenerate with WEFT_BLESS=1 cargo test -p weft-api --test tenancy openapi"
    );
}

/// Logs `email` in (setting its password first); returns (cookie, csrf).
async fn session(app: &App, email: &str) -> (String, String) {
    let hash = weft_api::password::hash("correct horse battery".into())
        .await
        .unwrap();
    app.store
        .set_password(email, &hash, common::T0)
        .await
        .unwrap();
    let r = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": email, "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let cookie = r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (cookie, r.body["csrf_token"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_key_never_outlives_or_outranks_its_creators_membership() {
    let w = world().await;
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/members",
            Some(&w.a_key),
            Some(json!({"email": "kim@a.example", "role": "admin"})),
        )
        .await;
    let kim = r.body["user_id"].as_str().unwrap().to_string();
    let (cookie, csrf) = session(&w.app, "kim@a.example").await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let r = w
        .app
        .call_with(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            None,
            Some(json!({"role": "admin"})),
            &h,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["created_by"], kim);
    let kims_key = r.body["secret"].as_str().unwrap().to_string();
    assert_eq!(
        w.app
            .call(
                "GET",
                "/api/v1/workspaces/default/api-keys",
                Some(&kims_key),
                None
            )
            .await
            .status,
        StatusCode::OK
    );
    // Kim is demoted: her admin key now acts as a viewer.
    let r = w
        .app
        .call(
            "PATCH",
            &format!("/api/v1/workspaces/default/members/{kim}"),
            Some(&w.a_key),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/api-keys",
            Some(&kims_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/members",
            Some(&kims_key),
            Some(json!({"email": "kim@a.example", "role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "she cannot re-add herself");
    assert_eq!(
        w.app
            .call(
                "GET",
                "/api/v1/workspaces/default/flows",
                Some(&kims_key),
                None
            )
            .await
            .status,
        StatusCode::OK
    );
    // Kim is removed: her key stops working at once.
    let r = w
        .app
        .call(
            "DELETE",
            &format!("/api/v1/workspaces/default/members/{kim}"),
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows",
            Some(&kims_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn owning_one_workspace_is_not_owning_the_tenant() {
    let w = world().await;
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces",
            Some(&w.a_key),
            Some(json!({"slug": "sandbox"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/sandbox/members",
            Some(&w.a_key),
            Some(json!({"email": "bo@a.example", "role": "owner"})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the default key does not reach sandbox"
    );
    // The tenant owner, by session, adds Bo as owner of sandbox.
    let (cookie, csrf) = session(&w.app, "owner@localhost").await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let r = w
        .app
        .call_with(
            "POST",
            "/api/v1/workspaces/sandbox/members",
            None,
            Some(json!({"email": "bo@a.example", "role": "owner"})),
            &h,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (cookie, csrf) = session(&w.app, "bo@a.example").await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let r = w
        .app
        .call_with("GET", "/api/v1/workspaces/sandbox/audit", None, None, &h)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = w
        .app
        .call_with(
            "GET",
            "/api/v1/workspaces/sandbox/audit?scope=tenant",
            None,
            None,
            &h,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = w
        .app
        .call_with(
            "POST",
            "/api/v1/workspaces",
            None,
            Some(json!({"slug": "bos"})),
            &h,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // The tenant owner can do both.
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/audit?scope=tenant",
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn admins_cannot_promote_to_owner_or_touch_owners() {
    let w = world().await;
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "admin"})),
        )
        .await;
    let admin = r.body["secret"].as_str().unwrap().to_string();
    let r = w
        .app
        .call(
            "PATCH",
            &format!("/api/v1/workspaces/default/members/{}", w.a_user),
            Some(&admin),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let members = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/members",
            Some(&w.a_key),
            None,
        )
        .await;
    let owner = members.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "owner")
        .unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (m, body) in [("PATCH", Some(json!({"role": "viewer"}))), ("DELETE", None)] {
        let r = w
            .app
            .call(
                m,
                &format!("/api/v1/workspaces/default/members/{owner}"),
                Some(&admin),
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m}");
    }
    let keys = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/api-keys",
            Some(&admin),
            None,
        )
        .await;
    let owner_key = keys.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "owner")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = w
        .app
        .call(
            "DELETE",
            &format!("/api/v1/workspaces/default/api-keys/{owner_key}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn viewers_do_not_get_hook_urls_and_request_ids_are_the_servers() {
    let w = world().await;
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "viewer"})),
        )
        .await;
    let viewer = r.body["secret"].as_str().unwrap().to_string();
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows/hooked",
            Some(&viewer),
            None,
        )
        .await;
    assert!(
        r.body["hook_id"].is_null() && r.body["hook_url"].is_null(),
        "{}",
        r.body
    );
    let r = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/flows/hooked",
            Some(&w.a_key),
            None,
        )
        .await;
    assert!(
        r.body["hook_url"]
            .as_str()
            .unwrap()
            .starts_with("http://weft.test/hooks/hk_")
    );
    // A client-chosen request id is replaced, so it cannot be planted in the audit trail.
    let r = w
        .app
        .call_with(
            "POST",
            "/api/v1/workspaces/default/api-keys",
            Some(&w.a_key),
            Some(json!({"role": "viewer"})),
            &[("x-request-id", "forged")],
        )
        .await;
    let rid = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(rid, "forged");
    let audit = w
        .app
        .call(
            "GET",
            "/api/v1/workspaces/default/audit",
            Some(&w.a_key),
            None,
        )
        .await;
    assert_eq!(audit.body["items"][0]["request_id"], rid);
}

#[tokio::test]
async fn another_tenant_can_only_invite_a_member_who_then_accepts() {
    let w = world().await;
    let (cookie, csrf) = session(&w.app, "ann@a.example").await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    // Tenant B's owner adds Ann, who belongs to tenant A: she is invited, not a member yet.
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/members",
            Some(&w.b_key),
            Some(json!({"email": "ann@a.example", "role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "invited");
    // Her `default` is still tenant A's, unambiguously; B's workspace is not open to her.
    let r = w
        .app
        .call_with("GET", "/api/v1/workspaces/default/flows", None, None, &h)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = w
        .app
        .call_with(
            "GET",
            &format!("/api/v1/workspaces/{}/flows", w.b_ws),
            None,
            None,
            &h,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let me = w
        .app
        .call_with("GET", "/api/v1/auth/me", None, None, &h)
        .await;
    assert_eq!(me.body["workspaces"].as_array().unwrap().len(), 1);
    assert_eq!(me.body["invitations"][0]["id"], w.b_ws);
    // Keys and other users cannot accept for her.
    let url = format!("/api/v1/auth/invitations/{}/accept", w.b_ws);
    assert_eq!(
        w.app.call("POST", &url, Some(&w.b_key), None).await.status,
        StatusCode::NOT_FOUND
    );
    // She accepts; now B's workspace opens by id.
    let r = w.app.call_with("POST", &url, None, None, &h).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["role"], "admin");
    let r = w
        .app
        .call_with(
            "GET",
            &format!("/api/v1/workspaces/{}/flows", w.b_ws),
            None,
            None,
            &h,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        w.app.call_with("POST", &url, None, None, &h).await.status,
        StatusCode::NOT_FOUND,
        "accepted once"
    );
    // New people (in no tenant yet) are members at once.
    let r = w
        .app
        .call(
            "POST",
            "/api/v1/workspaces/default/members",
            Some(&w.b_key),
            Some(json!({"email": "new@b.example", "role": "viewer"})),
        )
        .await;
    assert_eq!(r.body["status"], "active");
}
