//! The large-loop phase: one run whose `for_each` posts each of N items to the sink, killed
//! with SIGKILL part-way and started again on the same data directory. It measures item
//! throughput, how long the resumed process takes to pick the loop up and finish it, memory,
//! and what the sink saw: every item once, and repeats only for items in flight at the kill,
//! carrying the same idempotency key.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Method, Request};
use serde_json::{Value, json};

use crate::client::{self, Target};
use crate::rss;
use crate::sink::Sink;
use crate::weft::Weft;

/// What the phase is told.
pub struct LoopArgs<'a> {
    pub bin: &'a Path,
    pub weft_args: &'a [String],
    pub items: u64,
    pub concurrency: usize,
    /// Fraction of the items the sink has seen when the process is killed (0: never).
    pub kill_at: f64,
    pub timeout: Duration,
}

/// GET with the owner key; the answer as JSON.
async fn get_json(url: &str, key: &str) -> anyhow::Result<Value> {
    let t = Target::parse(url)?;
    let mut conn = client::connect(t.addr).await?;
    conn.ready().await?;
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = t.uri.clone();
    req.headers_mut().insert(HOST, t.host.clone());
    req.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}"))?,
    );
    let (status, body) = client::send(&mut conn, req).await?;
    if !status.is_success() {
        bail!(
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

async fn post_json(url: &str, key: &str, body: &Value) -> anyhow::Result<Value> {
    let t = Target::parse(url)?;
    let (status, answer) =
        client::one_shot(&t, Bytes::from(serde_json::to_vec(body)?), Some(key)).await?;
    if !status.is_success() {
        bail!(
            "POST {url} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(serde_json::from_slice(&answer)?)
}

/// Runs the phase and prints its figures.
pub async fn run(a: LoopArgs<'_>, sink: Arc<Sink>) -> anyhow::Result<()> {
    let mut weft = Weft::start(a.bin, a.weft_args)?;
    let flow = json!({
        "name": "big-loop",
        "trigger": {"manual": {}},
        "steps": [{
            "id": "each",
            "for_each": ".trigger.body.items",
            "collect": false,
            "concurrency": a.concurrency,
            "steps": [{
                "id": "send",
                "action": "http.request",
                "input": {"method": "POST", "url": format!("http://{}/sink", sink.addr), "body": {"id": "{{ .item }}"}}
            }]
        }]
    });
    let ws = |w: &Weft| format!("{}/api/v1/workspaces/default", w.url);
    post_json(&format!("{}/flows", ws(&weft)), &weft.key, &flow)
        .await
        .context("applying the loop flow")?;
    let items: Vec<u64> = (0..a.items).collect();
    let t0 = Instant::now();
    let started = post_json(
        &format!("{}/flows/big-loop/runs", ws(&weft)),
        &weft.key,
        &json!({"items": items}),
    )
    .await
    .context("starting the loop run")?;
    drop(items);
    let run = started["run_id"]
        .as_str()
        .context("no run_id in the start answer")?
        .to_string();
    println!(
        "loop: run {run}, {} items, concurrency {}",
        a.items, a.concurrency
    );

    let mut mem = rss::Monitor::start(weft.pid);
    let mut killed: Option<(Duration, u64)> = None;
    if a.kill_at > 0.0 {
        let target = (a.items as f64 * a.kill_at) as u64;
        while sink.distinct() < target {
            if t0.elapsed() > a.timeout {
                bail!(
                    "the loop did not reach {target} items within {:?}",
                    a.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at = t0.elapsed();
        weft.kill9();
        let done = sink.distinct();
        let (peak, _) = mem.peak();
        mem.stop();
        println!(
            "  killed (SIGKILL) after {:.1} s with {done} items delivered: {:.0} items/s, peak RSS {:.1} MB",
            at.as_secs_f64(),
            done as f64 / at.as_secs_f64(),
            peak as f64 / 1024.0
        );
        killed = Some((at, done));
        let t1 = Instant::now();
        weft.restart(a.bin, a.weft_args)?;
        println!("  restarted in {} ms", t1.elapsed().as_millis());
        mem = rss::Monitor::start(weft.pid);
    }
    // The run list (no steps) tells when it ends, so polling costs the server little.
    let list_url = format!("{}/runs?flow=big-loop&limit=1", ws(&weft));
    let t_resume = Instant::now();
    let status = loop {
        let page = get_json(&list_url, &weft.key).await?;
        let v = page["items"][0].clone();
        let st = v["status"].as_str().unwrap_or("").to_string();
        if matches!(st.as_str(), "succeeded" | "failed" | "cancelled") {
            break (st, v);
        }
        if t0.elapsed() > a.timeout {
            bail!("the loop run did not finish within {:?}", a.timeout);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = t0.elapsed();
    let (peak, _) = mem.peak();
    let (st, v) = status;
    if st != "succeeded" {
        bail!("the loop run ended {st}: {}", v["error"]);
    }
    let t_get = Instant::now();
    let whole = get_json(&format!("{}/runs/{run}", ws(&weft)), &weft.key).await?;
    let get_ms = t_get.elapsed().as_millis();
    let (_, after_get) = (mem.peak(), mem.hwm());
    let each = whole["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == "each"))
        .cloned()
        .unwrap_or(Value::Null);

    // What the sink saw.
    let mut once = 0u64;
    let mut repeated = 0u64;
    let mut other_keys = 0u64;
    let mut missing = 0u64;
    let (seen, _) = sink.lookup(0..a.items, 0, 0);
    for s in seen {
        match s {
            None => missing += 1,
            Some(s) if s.count == 1 => once += 1,
            Some(s) => {
                repeated += 1;
                other_keys += u64::from(s.other_keys);
            }
        }
    }
    match killed {
        Some((at, done)) => {
            let after = total - at;
            println!(
                "  resumed run finished {:.1} s after the restart: {} items in {:.1} s ({:.0} items/s), peak RSS {:.1} MB",
                t_resume.elapsed().as_secs_f64(),
                a.items - done,
                after.as_secs_f64(),
                (a.items - done) as f64 / after.as_secs_f64(),
                peak as f64 / 1024.0
            );
        }
        None => println!(
            "  finished in {:.1} s: {:.0} items/s, peak RSS {:.1} MB",
            total.as_secs_f64(),
            a.items as f64 / total.as_secs_f64(),
            peak as f64 / 1024.0
        ),
    }
    println!(
        "  loop output: {}, progress {}",
        each["output"], each["progress"]
    );
    println!(
        "  GET /runs/{{run}} of the finished run: {get_ms} ms, process high-water mark after it {:.1} MB",
        after_get as f64 / 1024.0
    );
    println!(
        "  sink: {once} items once, {repeated} twice or more (in flight at the kill), {other_keys} repeats with another idempotency key, {missing} missing"
    );
    mem.stop();
    if missing > 0 || other_keys > 0 {
        bail!(
            "the loop lost or redid items: {missing} missing, {other_keys} redone under a new key"
        );
    }
    weft.stop(false);
    Ok(())
}
