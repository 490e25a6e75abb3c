//! Alert rules through the router: create, list, refuse bad or duplicate rules naming the
//! field, list deliveries, delete.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::App;
use serde_json::json;

#[tokio::test]
async fn alert_rules_are_created_listed_refused_and_deleted() {
    let app = App::new().await;
    let key = Some(app.owner_key.as_str());
    let base = format!("/api/v1/workspaces/{}/alerts", app.scope.workspace);
    let rule = json!({"name": "pager", "on": "run_failed", "quiet": "30m",
                      "notify": {"webhook": {"url": "https://ops.example.com/hook"}}});
    let r = app.call("POST", &base, key, Some(rule.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (r.body["name"].as_str(), r.body["on"].as_str()),
        (Some("pager"), Some("run_failed"))
    );
    let r = app.call("POST", &base, key, Some(rule)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = app
        .call(
            "POST",
            &base,
            key,
            Some(json!({"name": "stuck", "on": "run_stuck", "notify": {"slack": {"credential": "s", "channel": ""}}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let paths: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["stuck_after", "notify.slack.channel"], "{}", r.body);
    let r = app
        .call("POST", &base, key, Some(json!({"on": "run_failed"})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = app.call("GET", &base, key, None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = app
        .call("GET", &format!("{base}/pager/deliveries"), key, None)
        .await;
    assert_eq!(
        (r.status, r.body["items"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    assert_eq!(
        app.call("GET", &format!("{base}/nope/deliveries"), key, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call("DELETE", &format!("{base}/pager"), key, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.call("DELETE", &format!("{base}/pager"), key, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
