//! The hostile expressions of the core issue each fail cleanly, and the pool keeps serving.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use weft_sandbox::{SandboxError, SandboxOptions, SandboxPool};

fn pool(workers: usize) -> SandboxPool {
    SandboxPool::new(SandboxOptions {
        program: env!("CARGO_BIN_EXE_weft-sandbox-worker").into(),
        args: vec![],
        workers,
        timeout: Duration::from_secs(3),
        memory_bytes: 256 * 1024 * 1024,
    })
}

#[tokio::test]
async fn ordinary_filters_work() {
    let p = pool(1);
    let out = p
        .eval_jq("[.a[] | . * 2] | add", &json!({"a": [1, 2, 3]}))
        .await
        .unwrap();
    assert_eq!(out, vec![json!(12)]);
    let err = p.eval_jq(".a.b", &json!({"a": 1})).await.unwrap_err();
    assert!(matches!(err, SandboxError::Eval(_)), "{err:?}");
    // the worker survived a jq error
    assert_eq!(
        p.eval_jq("1, 2", &json!(null)).await.unwrap(),
        vec![json!(1), json!(2)]
    );
    assert_eq!(p.kills(), 0);
}

#[tokio::test]
async fn hostile_filters_fail_within_limits_and_the_pool_recovers() {
    let p = pool(2);
    let cases = [
        "def f: 1+f; f",
        "[range(1e9)]",
        "\"x\" * 1000000000",
        "[repeat(1)]",
        "last(range(1e12))",
    ];
    // All at once, next to a healthy evaluation that must still answer.
    let mut handles = Vec::new();
    for src in cases {
        let p = p.clone();
        handles.push(tokio::spawn(async move {
            (src, p.eval_jq(src, &json!(null)).await)
        }));
    }
    for h in handles {
        let (src, res) = h.await.unwrap();
        match res {
            Err(
                SandboxError::Timeout(_) | SandboxError::Crashed { .. } | SandboxError::Eval(_),
            ) => {}
            other => panic!("{src}: expected a limit error, got {other:?}"),
        }
    }
    assert!(p.kills() >= 3, "kills: {}", p.kills());
    assert_eq!(
        p.eval_jq(".x + 1", &json!({"x": 41})).await.unwrap(),
        vec![json!(42)]
    );
}

#[tokio::test]
async fn runaway_javascript_fails_its_evaluation_and_the_worker_keeps_serving() {
    let p = pool(2);
    let t = Duration::from_millis(500);
    let ctx = json!({"trigger": {"body": {"n": 2}}});
    let cases = [
        ("while (true) {}", "time limit"),
        (
            "var a = []; while (true) { a.push(new Array(1e7).fill(1)); }",
            "memory",
        ),
        (
            "function f(n) { return f(n + 1) + 1; } return f(0);",
            "stack",
        ),
        ("return require('fs')", "require"),
    ];
    let mut handles = Vec::new();
    for (code, want) in cases {
        let p = p.clone();
        let ctx = ctx.clone();
        handles.push(tokio::spawn(async move {
            (code, want, p.eval_js(code, &ctx, t).await)
        }));
    }
    for h in handles {
        let (code, want, res) = h.await.unwrap();
        let o = res.unwrap_or_else(|e| panic!("{code}: the worker itself failed: {e}"));
        let e = o.result.unwrap_err();
        assert!(e.contains(want), "{code}: {e}");
    }
    // The QuickJS limits stopped every case: no worker had to be killed, and they still answer.
    assert_eq!(p.kills(), 0);
    let ok = p
        .eval_js("console.log('hi'); return trigger.body.n * 21;", &ctx, t)
        .await
        .unwrap();
    assert_eq!(ok.result, Ok(json!(42)));
    assert_eq!(ok.logs, vec!["hi".to_string()]);
}
