//! `weft-bench`: throughput, latency and memory of `weft serve` on this machine.
//!
//! Starts a recording HTTP sink and a `weft serve` child on a fresh data dir, applies a
//! webhook → transform → http.request flow that posts to the sink, then runs a closed-loop
//! concurrency sweep and a fixed-rate open-loop test, and prints the figures beside the targets.
//! Run it through `bench/run.sh`.

mod client;
mod load;
mod loops;
mod neighbour;
mod pg;
mod rss;
mod sink;
mod weft;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use serde_json::{Value, json};

use crate::client::Target;
use crate::load::{Outcome, Progress};
use crate::sink::Sink;

const TARGET_COMPLETED: f64 = 5000.0;
/// The scale-out issue's target on PostgreSQL (same flow, database on the same machine).
const TARGET_COMPLETED_PG: f64 = 3000.0;
const TARGET_ACK_P99_MS: f64 = 10.0;
const TARGET_RATE: u64 = 2000;
const TARGET_IDLE_MB: f64 = 50.0;
const TARGET_LOAD_MB: f64 = 300.0;

/// Benchmark of `weft serve`: webhook → transform → HTTP delivery to a local sink.
#[derive(Parser, Debug)]
#[command(name = "weft-bench")]
struct Args {
    /// The `weft` binary to benchmark.
    #[arg(long)]
    weft: PathBuf,
    /// Concurrency levels of the closed-loop sweep [default: 16,64,256; --quick: 16,64].
    #[arg(long, value_delimiter = ',')]
    levels: Option<Vec<usize>>,
    /// Seconds per sweep level and for the fixed-rate test [default: 30; --quick: 5].
    #[arg(long)]
    duration: Option<u64>,
    /// Requests/s of the fixed-rate latency test (0 skips it).
    #[arg(long, default_value_t = TARGET_RATE)]
    rate: u64,
    /// Seconds to wait, after each phase, for the sink to receive every accepted id.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// Seconds to let weft idle before measuring the idle RSS.
    #[arg(long, default_value_t = 2)]
    idle: u64,
    /// Most connections the fixed-rate test may have in flight.
    #[arg(long, default_value_t = 1024)]
    max_conns: usize,
    /// Smoke run: levels 16,64 for 5 s each, rate test 5 s.
    #[arg(long)]
    quick: bool,
    /// Keep weft's temp dir (data dir and weft.log).
    #[arg(long)]
    keep: bool,
    /// Noisy-neighbour phase: tenant B's requests/s beside tenant A's flood (0 skips it).
    #[arg(long, default_value_t = 0)]
    neighbour: u64,
    /// Concurrency of tenant A's flood in the noisy-neighbour phase.
    #[arg(long, default_value_t = 256)]
    neighbour_flood: usize,
    /// Tenant A's plan limit on webhook requests/s during the noisy-neighbour phase (0: none).
    #[arg(long, default_value_t = 0)]
    neighbour_a_rps: u64,
    /// Soak phase: closed loop at --soak-concurrency for this many seconds (0 skips it).
    #[arg(long, default_value_t = 0)]
    soak: u64,
    /// Concurrency of the soak phase.
    #[arg(long, default_value_t = 64)]
    soak_concurrency: usize,
    /// Seconds per reported interval of the soak phase.
    #[arg(long, default_value_t = 60)]
    soak_interval: u64,
    /// Owner URL of weft's PostgreSQL database, for database size and claim statistics
    /// (`bench/run.sh --backend postgres` sets it).
    #[arg(long)]
    pg_url: Option<String>,
    /// Extra argument for `weft serve` (repeatable), e.g. `--weft-arg=--max-in-flight=512`.
    #[arg(long = "weft-arg", allow_hyphen_values = true)]
    weft_args: Vec<String>,
    /// Send GitHub-signed webhooks to a trigger that verifies them (`connector: github` with a
    /// credential), to measure what signature checks cost.
    #[arg(long)]
    signed: bool,
    /// Large-loop phase only: one run whose for_each posts this many items to the sink
    /// (killed with SIGKILL part-way and resumed; see --loop-kill-at).
    #[arg(long, default_value_t = 0)]
    loop_items: u64,
    /// Items of the large loop in progress at once.
    #[arg(long, default_value_t = 16)]
    loop_concurrency: usize,
    /// Fraction of the items delivered when weft is killed (0: not killed).
    #[arg(long, default_value_t = 0.5)]
    loop_kill_at: f64,
    /// Export weft's spans over OTLP to a local receiver (pass `--weft-arg=--trace-sample-ratio=R`
    /// for sampling): what tracing costs.
    #[arg(long)]
    otlp: bool,
}

struct Config {
    weft: PathBuf,
    levels: Vec<usize>,
    duration: Duration,
    rate: u64,
    drain_timeout: Duration,
    idle: Duration,
    max_conns: usize,
    keep: bool,
    weft_args: Vec<String>,
    neighbour: u64,
    neighbour_flood: usize,
    neighbour_a_rps: u64,
    soak: Duration,
    soak_concurrency: usize,
    soak_interval: Duration,
    pg: Option<pg::Pg>,
    signed: bool,
}

impl Config {
    fn from_args(a: Args) -> anyhow::Result<Self> {
        let levels = a.levels.unwrap_or_else(|| {
            if a.quick {
                vec![16, 64]
            } else {
                vec![16, 64, 256]
            }
        });
        if levels.contains(&0) {
            bail!("--levels must be positive");
        }
        let duration = a.duration.unwrap_or(if a.quick { 5 } else { 30 });
        if duration == 0 {
            bail!("--duration must be at least 1 s");
        }
        Ok(Self {
            weft: a.weft,
            levels,
            duration: Duration::from_secs(duration),
            rate: a.rate,
            drain_timeout: Duration::from_secs(a.drain_timeout),
            idle: Duration::from_secs(a.idle),
            max_conns: a.max_conns.max(1),
            keep: a.keep,
            weft_args: a.weft_args,
            neighbour: a.neighbour,
            neighbour_flood: a.neighbour_flood.max(1),
            neighbour_a_rps: a.neighbour_a_rps,
            soak: Duration::from_secs(a.soak),
            soak_concurrency: a.soak_concurrency.max(1),
            soak_interval: Duration::from_secs(a.soak_interval.max(1)),
            signed: a.signed,
            pg: a.pg_url.map(pg::Pg::new),
        })
    }
}

/// One load phase and what was measured around it.
struct Phase {
    label: String,
    dur: Duration,
    start: Instant,
    /// Ids handed out during the phase: `lo..hi`.
    lo: u64,
    hi: u64,
    out: Outcome,
    peak_kib: u64,
    peak_tree_kib: u64,
    hwm_kib: u64,
    cpu: rss::CpuUse,
}

#[derive(Default, Clone, Copy)]
struct Pcts {
    p50: u64,
    p99: u64,
    max: u64,
    n: usize,
}

impl Pcts {
    fn of(mut v: Vec<u64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            p50: at(0.50),
            p99: at(0.99),
            max: v[v.len() - 1],
            n: v.len(),
        }
    }
}

struct Analysis {
    accepted: u64,
    accepted_rate: f64,
    completed_rate: Option<f64>,
    last_delivery: Option<Duration>,
    ack: Pcts,
    t2c: Pcts,
    missing: u64,
    sink_distinct: u64,
    dup_ids: u64,
    dup_extra: u64,
    dup_runs: u64,
}

impl Analysis {
    fn ok(&self) -> bool {
        self.missing == 0 && self.sink_distinct == self.accepted
    }
}

fn analyze(sink: &Sink, p: &Phase) -> Analysis {
    let (seen, sink_distinct) = sink.lookup(p.out.sent.iter().map(|s| s.id), p.lo, p.hi);
    let mut t2c = Vec::with_capacity(seen.len());
    let (mut missing, mut dup_ids, mut dup_extra, mut dup_runs) = (0, 0, 0, 0);
    let mut last = None::<Instant>;
    for (s, seen) in p.out.sent.iter().zip(&seen) {
        match seen {
            None => missing += 1,
            Some(x) => {
                t2c.push(x.first_at.saturating_duration_since(s.at).as_micros() as u64);
                last = Some(last.map_or(x.first_at, |l| l.max(x.first_at)));
                if x.count > 1 {
                    dup_ids += 1;
                    dup_extra += u64::from(x.count - 1);
                    if x.other_keys > 0 {
                        dup_runs += 1;
                    }
                }
            }
        }
    }
    let accepted = p.out.sent.len() as u64;
    let last_delivery = last.map(|l| l.saturating_duration_since(p.start));
    Analysis {
        accepted,
        accepted_rate: accepted as f64 / p.dur.as_secs_f64(),
        completed_rate: last_delivery
            .filter(|d| !d.is_zero())
            .map(|d| (accepted - missing) as f64 / d.as_secs_f64()),
        last_delivery,
        ack: Pcts::of(p.out.sent.iter().map(|s| s.ack_us).collect()),
        t2c: Pcts::of(t2c),
        missing,
        sink_distinct,
        dup_ids,
        dup_extra,
        dup_runs,
    }
}

/// Total size of the regular files in `dir` (not recursive).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn failures(o: &Outcome) -> String {
    if o.failures.is_empty() {
        return "none".into();
    }
    o.failures
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn met(b: bool) -> &'static str {
    if b { "met" } else { "NOT MET" }
}

fn print_phase(p: &Phase, a: &Analysis) {
    println!(
        "  accepted        {} in {} s = {:.0} req/s; non-202: {}",
        a.accepted,
        p.dur.as_secs(),
        a.accepted_rate,
        failures(&p.out)
    );
    match (a.completed_rate, a.last_delivery) {
        (Some(r), Some(d)) => println!(
            "  completed       {r:.0} runs/s (last delivery {:.2} s after the phase start)",
            d.as_secs_f64()
        ),
        _ => println!("  completed       - (nothing reached the sink)"),
    }
    println!(
        "  ack latency     p50 {}  p99 {}  max {}",
        ms(a.ack.p50),
        ms(a.ack.p99),
        ms(a.ack.max)
    );
    println!(
        "  trigger→sink    p50 {}  p99 {}  max {}  ({} runs)",
        ms(a.t2c.p50),
        ms(a.t2c.p99),
        ms(a.t2c.max),
        a.t2c.n
    );
    println!(
        "  weft RSS        peak {:.1} MB (with sandbox workers: {:.1} MB), VmHWM {:.1} MB",
        mb(p.peak_kib),
        mb(p.peak_tree_kib),
        mb(p.hwm_kib)
    );
    println!(
        "  sink            {} distinct ids = {} accepted: {}{}; duplicates: {} ids ({} extra deliveries, {} with a different Idempotency-Key)",
        a.sink_distinct,
        a.accepted,
        yes(a.ok()),
        if a.missing > 0 {
            format!(" ({} accepted ids never arrived)", a.missing)
        } else {
            String::new()
        },
        a.dup_ids,
        a.dup_extra,
        a.dup_runs
    );
    let arrived = a.accepted - a.missing;
    if a.sink_distinct > arrived {
        println!(
            "  note            {} ids that were not answered 202 reached the sink anyway",
            a.sink_distinct - arrived
        );
    }
    println!(
        "  CPU (load)      weft {:.2} cores, weft-bench (load generator + sink) {:.2}, other processes {:.2}",
        p.cpu.weft, p.cpu.bench, p.cpu.other
    );
    if p.out.dup_acks > 0 {
        println!(
            "  note            {} webhook answers said \"duplicate\": true",
            p.out.dup_acks
        );
    }
}

/// Waits until the sink has every id of `sent` (or the timeout, or weft died).
pub(crate) async fn drain(
    sink: &Sink,
    sent: &[load::Sent],
    timeout: Duration,
    pid: u32,
) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    let mut pending: Vec<u64> = sent.iter().map(|s| s.id).collect();
    let total = pending.len();
    let mut last_print = t0;
    loop {
        sink.retain_missing(&mut pending);
        if pending.is_empty() {
            if t0.elapsed() > Duration::from_secs(1) {
                println!(
                    "  drained         all {total} runs delivered {:.1} s after the load stopped",
                    t0.elapsed().as_secs_f64()
                );
            }
            return Ok(true);
        }
        if rss::status_kib(pid).is_none() {
            bail!(
                "weft exited while {} of {total} runs were still undelivered",
                pending.len()
            );
        }
        if t0.elapsed() >= timeout {
            println!(
                "  drain timeout   {} of {total} accepted runs not delivered after {} s",
                pending.len(),
                timeout.as_secs()
            );
            return Ok(false);
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            println!(
                "  draining        {}/{total} delivered ({:.0} s)",
                total - pending.len(),
                t0.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints progress every 5 s until aborted.
fn progress_printer(progress: Arc<Progress>, sink: Arc<Sink>) -> tokio::task::JoinHandle<()> {
    let start = Instant::now();
    let base = sink.distinct();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        let mut prev = 0;
        loop {
            tick.tick().await;
            let acc = progress.accepted.load(Ordering::Relaxed);
            println!(
                "  [{:>3.0} s]         accepted {acc} ({:.0}/s in the last 5 s), non-202 {}, delivered {}",
                start.elapsed().as_secs_f64(),
                (acc - prev) as f64 / 5.0,
                progress.failed.load(Ordering::Relaxed),
                sink.distinct() - base
            );
            prev = acc;
        }
    })
}

struct Ctx {
    cfg: Config,
    pid: u32,
    url: String,
    key: String,
    admin: String,
    mon: Arc<rss::Monitor>,
    tck: u64,
    data_dir: PathBuf,
}

async fn run(ctx: &Ctx) -> anyhow::Result<bool> {
    let cfg = &ctx.cfg;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "weft-bench: {cores} cores; weft {} (pid {}) at {}; sweep {:?} × {} s; fixed rate: {}",
        cfg.weft.display(),
        ctx.pid,
        ctx.url,
        cfg.levels,
        cfg.duration.as_secs(),
        if cfg.rate > 0 {
            format!("{} req/s × {} s", cfg.rate, cfg.duration.as_secs())
        } else {
            "skipped".into()
        }
    );
    let sink = Sink::start().await?;
    println!("sink on http://{}", sink.addr);
    let db_start = match &cfg.pg {
        Some(pg) => Some(pg.db_bytes()?),
        None => None,
    };

    tokio::time::sleep(cfg.idle).await;
    let (idle_kib, idle_tree_kib) = ctx.mon.now();
    println!(
        "idle RSS: {:.1} MB (with child processes: {:.1} MB)",
        mb(idle_kib),
        mb(idle_tree_kib)
    );

    // The benchmark flow; with --signed, a GitHub-signed webhook verified with a credential.
    let secret = "bench-webhook-secret";
    if cfg.signed {
        let creds = Target::parse(&format!(
            "{}/api/v1/workspaces/default/credentials",
            ctx.url
        ))?;
        let body = json!({"name": "bench-hook", "connector": "github", "values": {"webhook_secret": secret}});
        let (status, answer) = client::one_shot(
            &creds,
            Bytes::from(serde_json::to_vec(&body)?),
            Some(&ctx.key),
        )
        .await
        .context("creating the signing credential")?;
        if !status.is_success() {
            bail!(
                "creating the credential answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    let trigger = if cfg.signed {
        json!({"webhook": {"connector": "github", "credential": "bench-hook"}})
    } else {
        json!({"webhook": {}})
    };
    let flow = json!({
        "name": "bench",
        "trigger": trigger,
        "steps": [
            {"id": "shape", "transform": "{id: .trigger.body.id, total: (.trigger.body.price * .trigger.body.qty), customer: (.trigger.body.name | ascii_upcase)}"},
            {"id": "send", "action": "http.request", "input": {"method": "POST", "url": format!("http://{}/sink", sink.addr), "body": "{{ .steps.shape.output }}"}}
        ]
    });
    let api = Target::parse(&format!("{}/api/v1/workspaces/default/flows", ctx.url))?;
    let (status, body) = client::one_shot(
        &api,
        Bytes::from(serde_json::to_vec(&flow)?),
        Some(&ctx.key),
    )
    .await
    .context("applying the flow")?;
    if !status.is_success() {
        bail!(
            "applying the flow answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: Value = serde_json::from_slice(&body).context("the flow answer is not JSON")?;
    let hook_url = v["hook_url"]
        .as_str()
        .with_context(|| format!("the flow answer has no hook_url: {v}"))?;
    let path = hook_url
        .find("/hooks/")
        .map(|i| &hook_url[i..])
        .with_context(|| format!("odd hook_url {hook_url}"))?;
    let hook_target = format!("{}{path}", ctx.url);
    if hook_url != hook_target {
        println!("note: weft answered hook_url {hook_url}; posting to {hook_target} instead");
    }
    let mut hook = Target::parse(&hook_target)?;
    if cfg.signed {
        hook.github_secret = Some(secret.to_string());
    }
    let hook = Arc::new(hook);
    println!(
        "flow applied (version {}); hook {hook_target}",
        v["version"]
    );

    let ids = Arc::new(AtomicU64::new(1));

    // Smoke check: one webhook must reach the sink.
    {
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (status, body) = client::one_shot(&hook, load::payload(id), None)
            .await
            .context("first webhook")?;
        if status.as_u16() != 202 {
            bail!(
                "the first webhook answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let t0 = Instant::now();
        while sink.seen(id).is_none() {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the first run did not reach the sink within 30 s (sink got {} requests, {} without an id); webhook answer: {}",
                    sink.requests(),
                    sink.without_id(),
                    String::from_utf8_lossy(&body)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "smoke check: one run delivered in {:.1} ms",
            t0.elapsed().as_secs_f64() * 1000.0
        );
    }

    let mut phases: Vec<(Phase, Option<usize>)> = Vec::new();

    for &n in &cfg.levels {
        println!(
            "\n== concurrency {n}: closed loop for {} s",
            cfg.duration.as_secs()
        );
        ctx.mon.reset();
        let progress = Arc::new(Progress::default());
        let printer = progress_printer(progress.clone(), sink.clone());
        let lo = ids.load(Ordering::Relaxed);
        let start = Instant::now();
        let meter = rss::CpuMeter::start(ctx.pid, ctx.tck);
        let out = load::closed_loop(hook.clone(), n, cfg.duration, ids.clone(), progress).await;
        let cpu = meter.finish();
        let hi = ids.load(Ordering::Relaxed);
        printer.abort();
        drain(&sink, &out.sent, cfg.drain_timeout, ctx.pid).await?;
        let (peak_kib, peak_tree_kib) = ctx.mon.peak();
        let p = Phase {
            label: format!("{n}"),
            dur: cfg.duration,
            start,
            lo,
            hi,
            out,
            peak_kib,
            peak_tree_kib,
            hwm_kib: ctx.mon.hwm(),
            cpu,
        };
        print_phase(&p, &analyze(&sink, &p));
        phases.push((p, Some(n)));
    }

    let mut rate_phase = None;
    if cfg.rate > 0 {
        println!(
            "\n== fixed rate: {} req/s for {} s (open loop)",
            cfg.rate,
            cfg.duration.as_secs()
        );
        ctx.mon.reset();
        let progress = Arc::new(Progress::default());
        let printer = progress_printer(progress.clone(), sink.clone());
        let lo = ids.load(Ordering::Relaxed);
        let start = Instant::now();
        let meter = rss::CpuMeter::start(ctx.pid, ctx.tck);
        let out = load::open_loop(
            hook.clone(),
            cfg.rate,
            cfg.duration,
            cfg.max_conns,
            ids.clone(),
            progress,
        )
        .await;
        let cpu = meter.finish();
        let hi = ids.load(Ordering::Relaxed);
        printer.abort();
        drain(&sink, &out.sent, cfg.drain_timeout, ctx.pid).await?;
        let (peak_kib, peak_tree_kib) = ctx.mon.peak();
        let p = Phase {
            label: format!("{}/s", cfg.rate),
            dur: cfg.duration,
            start,
            lo,
            hi,
            out,
            peak_kib,
            peak_tree_kib,
            hwm_kib: ctx.mon.hwm(),
            cpu,
        };
        let a = analyze(&sink, &p);
        print_phase(&p, &a);
        let lag = Pcts::of(p.out.lag_us.clone());
        println!(
            "  generator       {} sends, lag behind schedule p50 {} p99 {} max {}; {} connections; {} sends waited for a free connection",
            lag.n,
            ms(lag.p50),
            ms(lag.p99),
            ms(lag.max),
            p.out.conns,
            p.out.waited_for_conn
        );
        rate_phase = Some(p);
    }

    let mut soak_phase = None;
    if !cfg.soak.is_zero() {
        soak_phase = Some(soak(ctx, &sink, hook.clone(), ids.clone()).await?);
    }

    let mut neighbour_ok = true;
    if cfg.neighbour > 0 {
        neighbour_ok = neighbour::run(
            &ctx.url,
            &ctx.admin,
            &flow,
            hook.clone(),
            &sink,
            cfg.neighbour,
            cfg.neighbour_flood,
            cfg.duration,
            ids.clone(),
            cfg.drain_timeout,
            ctx.pid,
            cfg.neighbour_a_rps,
        )
        .await?;
    }

    // ---- Summary ----
    let mut all_ok = true;
    let mut best_completed = 0.0f64;
    let mut max_peak = 0u64;
    let mut max_peak_tree = 0u64;
    println!("\n================ Weft benchmark summary ({cores} cores) ================");
    println!(
        "{:>11} {:>11} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>11} {:>8} {:>5}  non-202",
        "load",
        "accepted/s",
        "completed/s",
        "ack p50",
        "ack p99",
        "t2c p50",
        "t2c p99",
        "peak RSS",
        "+children",
        "VmHWM",
        "CPU w/b/o",
        "sink=acc",
        "dups"
    );
    let rows = phases
        .iter()
        .map(|(p, _)| p)
        .chain(rate_phase.iter())
        .chain(soak_phase.iter());
    for p in rows {
        let a = analyze(&sink, p);
        all_ok &= a.ok();
        max_peak = max_peak.max(p.peak_kib);
        max_peak_tree = max_peak_tree.max(p.peak_tree_kib);
        let completed = a.completed_rate.unwrap_or(0.0);
        if !p.label.ends_with("/s") && !p.label.starts_with("soak") {
            best_completed = best_completed.max(completed);
        }
        let f = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        println!(
            "{:>11} {:>11.0} {:>12.0} {:>8} {:>8} {:>8} {:>8} {:>9.1} {:>9.1} {:>8.1} {:>11} {:>8} {:>5}  {}",
            if p.label.ends_with("/s") {
                format!("rate {}", p.label)
            } else if p.label.starts_with("soak") {
                p.label.clone()
            } else {
                format!("conc {}", p.label)
            },
            a.accepted_rate,
            completed,
            f(a.ack.p50),
            f(a.ack.p99),
            f(a.t2c.p50),
            f(a.t2c.p99),
            mb(p.peak_kib),
            mb(p.peak_tree_kib),
            mb(p.hwm_kib),
            format!("{:.1}/{:.1}/{:.1}", p.cpu.weft, p.cpu.bench, p.cpu.other),
            yes(a.ok()),
            a.dup_extra,
            failures(&p.out)
        );
    }
    println!(
        "(latencies in ms, memory in MB = 10^6 bytes; t2c = trigger → sink delivery; +children = RSS of weft and its child processes;\n CPU w/b/o = cores used by weft / weft-bench (load generator + sink) / other processes while sending)"
    );
    if let Some(p) = &rate_phase {
        let a = analyze(&sink, p);
        let lag = Pcts::of(p.out.lag_us.clone());
        let behind = lag.p99 > 5000 || p.out.waited_for_conn > 0;
        println!(
            "fixed rate {} req/s: ack p50 {} p99 {} max {}; trigger→sink p50 {} p99 {}; generator kept up: {}",
            cfg.rate,
            ms(a.ack.p50),
            ms(a.ack.p99),
            ms(a.ack.max),
            ms(a.t2c.p50),
            ms(a.t2c.p99),
            if behind {
                format!(
                    "NO (lag p99 {}, max {}, {} waited for a connection)",
                    ms(lag.p99),
                    ms(lag.max),
                    p.out.waited_for_conn
                )
            } else {
                format!(
                    "yes (lag behind schedule p99 {}, max {})",
                    ms(lag.p99),
                    ms(lag.max)
                )
            }
        );
    }
    println!("\n{:<34} {:>16}   target", "figure", "measured");
    let target = if cfg.pg.is_some() {
        TARGET_COMPLETED_PG
    } else {
        TARGET_COMPLETED
    };
    println!(
        "{:<34} {:>16}   {:<16} {}",
        "completed runs/s (best level)",
        format!("{best_completed:.0}"),
        format!("≥ {target:.0}"),
        met(best_completed >= target)
    );
    match &rate_phase {
        Some(p) => {
            let a = analyze(&sink, p);
            let p99 = a.ack.p99 as f64 / 1000.0;
            let label = if cfg.rate == TARGET_RATE {
                format!("ack p99 at {} req/s", cfg.rate)
            } else {
                format!("ack p99 at {} req/s (target: {TARGET_RATE})", cfg.rate)
            };
            println!(
                "{:<34} {:>16}   {:<16} {}",
                label,
                format!("{p99:.2} ms"),
                format!("≤ {TARGET_ACK_P99_MS:.0} ms"),
                met(p99 <= TARGET_ACK_P99_MS)
            );
        }
        None => println!(
            "{:<34} {:>16}   {:<16}",
            "ack p99 at 2000 req/s",
            "skipped",
            format!("≤ {TARGET_ACK_P99_MS:.0} ms")
        ),
    }
    println!(
        "{:<34} {:>16}   {:<16} {}",
        "idle RSS",
        format!("{:.1} MB", mb(idle_kib)),
        format!("≤ {TARGET_IDLE_MB:.0} MB"),
        met(mb(idle_kib) <= TARGET_IDLE_MB)
    );
    println!(
        "{:<34} {:>16}   {:<16} {}",
        "peak RSS under load",
        format!("{:.1} MB", mb(max_peak)),
        format!("≤ {TARGET_LOAD_MB:.0} MB"),
        met(mb(max_peak) <= TARGET_LOAD_MB)
    );
    println!(
        "{:<34} {:>16}   {:<16} {}",
        "  same, with child processes",
        format!("{:.1} MB", mb(max_peak_tree)),
        format!("≤ {TARGET_LOAD_MB:.0} MB"),
        met(mb(max_peak_tree) <= TARGET_LOAD_MB)
    );
    println!("{:<34} {:>16}", "sink count = accepted count", yes(all_ok));
    let runs = sink.distinct();
    match (&cfg.pg, db_start) {
        (Some(pg), Some(start)) => {
            let end = pg.db_bytes()?;
            let grew = end.saturating_sub(start);
            println!(
                "PostgreSQL database: {:.1} MB → {:.1} MB after {runs} runs ({:.2} KB per run; {:.2} GB per million runs)",
                start as f64 / 1e6,
                end as f64 / 1e6,
                grew as f64 / 1e3 / runs.max(1) as f64,
                grew as f64 / runs.max(1) as f64 * 1e6 / 1e9
            );
        }
        _ => {
            let disk = dir_bytes(&ctx.data_dir);
            println!(
                "data dir: {:.1} MB after {runs} runs ({:.1} KB per run)",
                disk as f64 / 1e6,
                disk as f64 / 1e3 / runs.max(1) as f64
            );
        }
    }
    if sink.without_id() > 0 {
        println!(
            "note: the sink got {} requests without a numeric id",
            sink.without_id()
        );
    }
    Ok(all_ok && neighbour_ok)
}

/// The soak phase: a long closed loop, reported per interval, to show whether the rate holds.
async fn soak(
    ctx: &Ctx,
    sink: &Arc<Sink>,
    hook: Arc<Target>,
    ids: Arc<AtomicU64>,
) -> anyhow::Result<Phase> {
    let cfg = &ctx.cfg;
    let n = cfg.soak_concurrency;
    println!(
        "\n== soak: concurrency {n} for {} s, reported every {} s",
        cfg.soak.as_secs(),
        cfg.soak_interval.as_secs()
    );
    println!(
        "  {:>7} {:>12} {:>14} {:>12} {:>10} {:>12} {:>10}",
        "at s", "completed/s", "claim mean ms", "runs/claim", "DB MB", "live runs", "dead"
    );
    ctx.mon.reset();
    let lo = ids.load(Ordering::Relaxed);
    let start = Instant::now();
    let meter = rss::CpuMeter::start(ctx.pid, ctx.tck);
    let load = tokio::spawn(load::closed_loop(
        hook,
        n,
        cfg.soak,
        ids.clone(),
        Arc::new(Progress::default()),
    ));
    let mut rates = Vec::new();
    let mut prev_count = sink.distinct();
    let mut prev_claims = match &cfg.pg {
        Some(pg) => pg.claims().unwrap_or_default(),
        None => pg::ClaimStats::default(),
    };
    let mut next = start + cfg.soak_interval;
    while next <= start + cfg.soak {
        tokio::time::sleep_until(next.into()).await;
        let count = sink.distinct();
        let rate = (count - prev_count) as f64 / cfg.soak_interval.as_secs_f64();
        prev_count = count;
        rates.push(rate);
        let (claim, batch, db, live, dead) = match &cfg.pg {
            Some(pg) => {
                let c = pg.claims().unwrap_or_default();
                let row = (
                    c.mean_ms_since(&prev_claims)
                        .map_or("-".into(), |m| format!("{m:.3}")),
                    c.batch_since(&prev_claims)
                        .map_or("-".into(), |b| format!("{b:.1}")),
                    pg.db_bytes()
                        .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                    pg.runs_tuples(),
                );
                prev_claims = c;
                let (live, dead) = row.3.unwrap_or_default();
                (row.0, row.1, row.2, live.to_string(), dead.to_string())
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "  {:>7.0} {:>12.0} {:>14} {:>12} {:>10} {:>12} {:>10}",
            next.duration_since(start).as_secs_f64(),
            rate,
            claim,
            batch,
            db,
            live,
            dead
        );
        next += cfg.soak_interval;
    }
    let out = load.await.context("the soak load task failed")?;
    let cpu = meter.finish();
    let hi = ids.load(Ordering::Relaxed);
    drain(sink, &out.sent, cfg.drain_timeout, ctx.pid).await?;
    if let (Some(first), Some(last)) = (rates.first(), rates.last())
        && *first > 0.0
    {
        println!(
            "  held rate       last interval {last:.0}/s = {:.0} % of the first ({first:.0}/s); target ≥ 80 %: {}",
            last / first * 100.0,
            met(last / first >= 0.8)
        );
    }
    let (peak_kib, peak_tree_kib) = ctx.mon.peak();
    let p = Phase {
        label: format!("soak {n}"),
        dur: cfg.soak,
        start,
        lo,
        hi,
        out,
        peak_kib,
        peak_tree_kib,
        hwm_kib: ctx.mon.hwm(),
        cpu,
    };
    print_phase(&p, &analyze(sink, &p));
    Ok(p)
}

fn real_main(args: Args) -> anyhow::Result<bool> {
    if args.loop_items > 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let la = loops::LoopArgs {
            bin: &args.weft,
            weft_args: &args.weft_args,
            items: args.loop_items,
            concurrency: args.loop_concurrency.clamp(1, 100),
            kill_at: args.loop_kill_at.clamp(0.0, 0.99),
            timeout: Duration::from_secs(args.drain_timeout.max(600)),
        };
        rt.block_on(async {
            let sink = Sink::start().await?;
            loops::run(la, sink).await
        })?;
        return Ok(true);
    }
    let otlp_on = args.otlp;
    let mut cfg = Config::from_args(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // A second sink stands in for an OTLP collector: it answers 200 and counts the exports.
    let otlp = if otlp_on {
        let s = rt.block_on(Sink::start())?;
        cfg.weft_args
            .push(format!("--otlp-endpoint=http://{}", s.addr));
        println!("OTLP receiver on http://{}", s.addr);
        Some(s)
    } else {
        None
    };
    let mut w = weft::Weft::start(&cfg.weft, &cfg.weft_args)?;
    let mon = rss::Monitor::start(w.pid);
    let keep = cfg.keep;
    let ctx = Ctx {
        cfg,
        pid: w.pid,
        url: w.url.clone(),
        key: w.key.clone(),
        admin: w.admin.clone(),
        mon: mon.clone(),
        tck: rss::clk_tck(),
        data_dir: w.data_dir.clone(),
    };
    let res = rt.block_on(async {
        tokio::select! {
            r = run(&ctx) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    mon.stop();
    if let Some(s) = &otlp {
        println!("OTLP receiver: {} span exports received", s.requests());
    }
    if res.is_err() || !w.alive() {
        eprintln!("{}", w.log_tail(20));
    }
    if let Some(dir) = w.stop(keep) {
        println!("kept weft's data dir and log in {}", dir.display());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    res
}

fn main() -> ExitCode {
    match real_main(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("weft-bench: FAILED: the sink did not receive exactly the accepted runs");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("weft-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
