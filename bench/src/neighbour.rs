//! Noisy neighbour: tenant A floods its webhook (closed loop, high concurrency) while tenant B
//! sends a trickle at a fixed rate. B's acknowledgement and trigger→sink latencies under the
//! flood, against B alone, show how much one tenant's backlog delays another's runs.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::client::{self, Target};
use crate::load::{self, Outcome, Progress};
use crate::sink::Sink;

/// Ids of tenant B's events start here, far above A's.
const B_IDS: u64 = 1 << 40;

/// Creates tenant B through the admin API, applies `flow` there; returns B's hook target.
async fn tenant_b(url: &str, admin: &str, flow: &Value) -> anyhow::Result<Target> {
    let t = Target::parse(&format!("{url}/api/v1/admin/tenants"))?;
    let body = json!({"name": "neighbour", "owner_email": "b@bench.example"});
    let (st, resp) = client::one_shot(&t, Bytes::from(body.to_string()), Some(admin)).await?;
    if !st.is_success() {
        bail!(
            "creating tenant B answered {st}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    let v: Value = serde_json::from_slice(&resp)?;
    let key = v["owner_key"].as_str().context("no owner_key")?.to_string();
    let api = Target::parse(&format!("{url}/api/v1/workspaces/default/flows"))?;
    let (st, resp) = client::one_shot(&api, Bytes::from(flow.to_string()), Some(&key)).await?;
    if !st.is_success() {
        bail!(
            "applying B's flow answered {st}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    let v: Value = serde_json::from_slice(&resp)?;
    let hook = v["hook_id"].as_str().context("no hook_id")?;
    Target::parse(&format!("{url}/hooks/{hook}"))
}

fn pct(mut v: Vec<u64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)] as f64 / 1000.0
}

/// (ack p50, ack p99, t2c p50, t2c p99) in ms, and how many never reached the sink.
fn latencies(sink: &Sink, out: &Outcome) -> ([f64; 4], usize) {
    let ack: Vec<u64> = out.sent.iter().map(|s| s.ack_us).collect();
    let mut t2c = Vec::new();
    let mut missing = 0;
    for s in &out.sent {
        match sink.seen(s.id) {
            Some(x) => t2c.push(x.first_at.saturating_duration_since(s.at).as_micros() as u64),
            None => missing += 1,
        }
    }
    (
        [
            pct(ack.clone(), 0.5),
            pct(ack, 0.99),
            pct(t2c.clone(), 0.5),
            pct(t2c, 0.99),
        ],
        missing,
    )
}

/// Sets tenant A's (the default tenant's) plan limit on webhook requests per second.
async fn limit_a(url: &str, admin: &str, rps: u64) -> anyhow::Result<()> {
    let list = Target::parse(&format!("{url}/api/v1/admin/tenants"))?;
    let mut conn = client::connect(list.addr).await?;
    conn.ready().await?;
    let req = hyper::Request::get("/api/v1/admin/tenants")
        .header("host", list.host.clone())
        .header("authorization", format!("Bearer {admin}"))
        .body(http_body_util::Full::new(Bytes::new()))?;
    let (st, body) = client::send(&mut conn, req).await?;
    if !st.is_success() {
        bail!("listing tenants answered {st}");
    }
    let v: Value = serde_json::from_slice(&body)?;
    let id = v["items"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "default"))
        .and_then(|t| t["id"].as_str())
        .context("no default tenant")?
        .to_string();
    let mut conn = client::connect(list.addr).await?;
    conn.ready().await?;
    let req = hyper::Request::patch(format!("/api/v1/admin/tenants/{id}"))
        .header("host", list.host.clone())
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(
            json!({"limits": {"webhook_rps": rps}}).to_string(),
        )))?;
    let (st, body) = client::send(&mut conn, req).await?;
    if !st.is_success() {
        bail!(
            "limiting tenant A answered {st}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Runs the phase; returns whether every accepted event of both tenants reached the sink.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    url: &str,
    admin: &str,
    flow: &Value,
    hook_a: Arc<Target>,
    sink: &Arc<Sink>,
    rate_b: u64,
    flood: usize,
    dur: Duration,
    ids_a: Arc<AtomicU64>,
    drain_timeout: Duration,
    pid: u32,
    a_rps: u64,
) -> anyhow::Result<bool> {
    let hook_b = Arc::new(tenant_b(url, admin, flow).await?);
    if a_rps > 0 {
        limit_a(url, admin, a_rps).await?;
        println!("tenant A's plan: webhook_rps = {a_rps}");
    }
    let ids_b = Arc::new(AtomicU64::new(B_IDS));
    println!(
        "\n== noisy neighbour: tenant B at {rate_b} req/s alone, then beside tenant A flooding at concurrency {flood} ({} s each)",
        dur.as_secs()
    );
    let alone = load::open_loop(
        hook_b.clone(),
        rate_b,
        dur,
        64,
        ids_b.clone(),
        Arc::new(Progress::default()),
    )
    .await;
    crate::drain(sink, &alone.sent, drain_timeout, pid).await?;
    let flood_task = tokio::spawn(load::closed_loop(
        hook_a,
        flood,
        dur,
        ids_a,
        Arc::new(Progress::default()),
    ));
    let beside = load::open_loop(
        hook_b,
        rate_b,
        dur,
        64,
        ids_b,
        Arc::new(Progress::default()),
    )
    .await;
    let a = flood_task.await.context("the flood task failed")?;
    crate::drain(sink, &beside.sent, drain_timeout, pid).await?;
    crate::drain(sink, &a.sent, drain_timeout, pid).await?;
    let (l_alone, m1) = latencies(sink, &alone);
    let (l_beside, m2) = latencies(sink, &beside);
    let (l_a, m3) = latencies(sink, &a);
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "accepted", "ack p50", "ack p99", "t2c p50", "t2c p99"
    );
    let row = |label: &str, o: &Outcome, l: [f64; 4]| {
        println!(
            "{:<30} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            label,
            o.sent.len(),
            l[0],
            l[1],
            l[2],
            l[3]
        );
    };
    row("B alone", &alone, l_alone);
    row("B beside A's flood", &beside, l_beside);
    row(
        &format!(
            "A flooding ({:.0}/s)",
            a.sent.len() as f64 / dur.as_secs_f64()
        ),
        &a,
        l_a,
    );
    println!(
        "(ms; t2c = trigger → sink delivery; non-202: B {:?}, A {:?})",
        beside.failures, a.failures
    );
    Ok(m1 + m2 + m3 == 0)
}
