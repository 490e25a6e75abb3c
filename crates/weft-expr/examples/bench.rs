//! Rough throughput numbers for the fast path (run with --release).
#![allow(clippy::unwrap_used)]
use serde_json::json;
use std::time::Instant;
use weft_expr::{Expr, Limits, TValue, eval_jaq, single};

fn main() {
    let items: Vec<_> = (0..50).map(|i| json!({"id": i, "price": i as f64 * 1.5, "qty": i % 4, "name": format!("item {i}")})).collect();
    let input = json!({
        "trigger": {"body": {"issue": {"title": "Crash on save", "number": 42, "labels": ["bug", "p1"]}, "items": items}},
        "steps": {"a": {"output": {"ok": true, "items": [1, 2, 3]}}},
        "run": {"id": "r1"}, "flow": {"name": "f"}, "vars": {"env": "prod"}
    });
    let limits = Limits::default();
    for src in [
        ".steps.a.output.ok",
        "{title: .trigger.body.issue.title, n: (.steps.a.output.items | length)}",
        "[.trigger.body.items[] | select(.price > 10) | {id, total: (.price * .qty)}]",
        r##""#\(.trigger.body.issue.number): \(.trigger.body.issue.title) [\(.trigger.body.issue.labels | join(", "))]""##,
        ".trigger.body.items | map(.price) | add",
        ".trigger.body.items | sort_by(-.price) | .[0:3] | map(.name)",
    ] {
        let e = Expr::compile(src).unwrap();
        assert!(e.is_fast(), "{src}");
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            let out = e.eval_fast(&input, &limits).unwrap().unwrap();
            std::hint::black_box(single(out).unwrap());
        }
        let per = t.elapsed() / n;
        let t2 = Instant::now();
        for _ in 0..200 {
            std::hint::black_box(eval_jaq(src, &input).unwrap());
        }
        let jaq = t2.elapsed() / 200;
        println!("{per:>10?}/eval fast  {jaq:>10?}/eval jaq(+compile)  {src}");
    }
    let t = Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(
            Expr::compile(
                "{title: .trigger.body.issue.title, n: (.steps.a.output.items | length)}",
            )
            .unwrap(),
        );
    }
    println!("compile fast expr: {:?}", t.elapsed() / 1000);
    let t = Instant::now();
    for _ in 0..200 {
        std::hint::black_box(Expr::compile("reduce .[] as $x (0; . + $x)").unwrap());
    }
    println!("compile sandbox expr: {:?}", t.elapsed() / 200);
    let tv = TValue::compile(&json!({"url": "https://api/{{ .run.id }}", "body": {"t": "{{ .trigger.body.issue.title }}", "n": 1}})).unwrap();
    let t = Instant::now();
    for _ in 0..20_000 {
        let res: Vec<_> = tv
            .exprs()
            .iter()
            .map(|e| single(e.eval_fast(&input, &limits).unwrap().unwrap()).unwrap())
            .collect();
        std::hint::black_box(tv.render(&mut res.into_iter()));
    }
    println!("template render: {:?}", t.elapsed() / 20_000);
}
