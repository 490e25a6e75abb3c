//! Liveness and readiness: `/readyz` names the part that is not up.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::App;

#[tokio::test]
async fn readiness_names_a_schema_behind_this_build_and_a_sandbox_that_cannot_start() {
    // The test app's sandbox program is /bin/false: workers die at once.
    let app = App::new().await;
    assert_eq!(
        app.call("GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );

    let db = rusqlite::Connection::open(app.dir.path().join("weft.db")).unwrap();
    let latest: i64 = db
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    db.execute("DELETE FROM schema_migrations WHERE version = ?1", [latest])
        .unwrap();
    let r = app.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.body["code"], "not_ready", "{}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("version {}", latest - 1))
            && detail.contains("weft admin migrate"),
        "{detail}"
    );

    db.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
        [latest],
    )
    .unwrap();
    let r = app.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("sandbox"), "{detail}");
    // Liveness does not depend on either.
    assert_eq!(
        app.call("GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
}
