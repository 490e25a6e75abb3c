//! Client commands: talk to a Weft server's HTTP API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::ClientArgs;

/// `weft flow …`.
#[derive(Subcommand, Debug)]
pub enum FlowCmd {
    /// Create the flow in FILE or save a new version of it; publishes it unless --draft.
    Apply {
        /// Flow file (YAML or JSON).
        file: PathBuf,
        /// Save without publishing.
        #[arg(long)]
        draft: bool,
    },
    /// Check a flow file locally without saving it.
    Validate {
        /// Flow file (YAML or JSON).
        file: PathBuf,
    },
    /// List flows.
    List {
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
        /// Cursor from a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one flow.
    Show {
        /// Flow name or id.
        flow: String,
    },
    /// Publish a version (default: the latest).
    Publish {
        /// Flow name or id.
        flow: String,
        /// Version number.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Delete a flow with its versions and triggers (its runs are kept).
    Delete {
        /// Flow name or id.
        flow: String,
    },
    /// Show a flow's poll trigger: cursor, next poll, last error, counts.
    Poll {
        /// Flow name or id.
        flow: String,
    },
    /// Restart a flow's poll trigger from a cursor: it polls now, and items not seen before
    /// start runs.
    Backfill {
        /// Flow name or id.
        flow: String,
        /// The cursor to start from: JSON (`0`, `"abc"`) or plain text (a timestamp).
        #[arg(long)]
        since: Option<String>,
    },
    /// Print the JSON Schema of flow files.
    Schema,
}

fn print_poll(v: &Value, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        print_json(v);
        return Ok(());
    }
    let opt = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let state = match (
        v.get("paused").and_then(Value::as_str),
        v.get("active").and_then(Value::as_bool),
    ) {
        (Some(p), _) => p.to_string(),
        (None, Some(true)) => format!("polling; next at {}", opt("next_poll_at")),
        _ => "off (the published version has no poll trigger)".into(),
    };
    println!("state:        {state}");
    println!("cursor:       {}", v.get("cursor").unwrap_or(&Value::Null));
    println!("last poll:    {}", opt("last_polled_at"));
    if let Some(e) = v.get("last_error").and_then(Value::as_str) {
        println!("last error:   {e}");
    }
    println!(
        "polls: {}  runs started: {}  items seen: {}",
        v.get("polls").unwrap_or(&Value::Null),
        v.get("runs_started").unwrap_or(&Value::Null),
        v.get("seen_items").unwrap_or(&Value::Null)
    );
    Ok(())
}

/// `weft run …`.
#[derive(Subcommand, Debug)]
pub enum RunCmd {
    /// Start a run of a flow's published version.
    Start {
        /// Flow name or id.
        flow: String,
        /// Input document (JSON).
        #[arg(long, default_value = "{}")]
        input: String,
        /// Idempotency key: the same key starts no second run.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

/// `weft runs …`.
#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// List runs, newest first.
    List {
        /// Only runs of this flow (name or id).
        #[arg(long)]
        flow: Option<String>,
        /// Only runs with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only runs created at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
        /// Cursor from a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show a run with its steps.
    Show {
        /// Run id.
        run: String,
    },
    /// Print a run's log lines.
    Logs {
        /// Run id.
        run: String,
        /// Keep printing new lines until the run ends.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a run.
    Cancel {
        /// Run id.
        run: String,
    },
    /// Delete a finished run with its steps, logs and stored payloads.
    Delete {
        /// Run id.
        run: String,
    },
    /// Retry a failed run in place, from its failed step (completed steps are kept).
    Retry {
        /// Run id.
        run: String,
    },
    /// Start a new run with the same trigger event; with `--failed`, replay every failed run
    /// (the dead letters, newest first), printing progress.
    Replay {
        /// Run id (leave out with `--failed`).
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        run: Option<String>,
        /// Replay all failed runs (of `--flow`, since `--since`).
        #[arg(long)]
        failed: bool,
        /// With `--failed`: only this flow's runs.
        #[arg(long, requires = "failed")]
        flow: Option<String>,
        /// With `--failed`: only runs created at or after this RFC 3339 time.
        #[arg(long, requires = "failed")]
        since: Option<String>,
        /// Run the flow's published version instead of the one each run was pinned to.
        #[arg(long)]
        latest: bool,
    },
    /// Send a signal to a run (resumes the `approval` / `wait_for_event` step of that name).
    Signal {
        /// Run id.
        run: String,
        /// Signal name: the id of the step it resumes.
        name: String,
        /// Payload (JSON), e.g. '{"approved": false, "reason": "too big"}'.
        #[arg(long)]
        payload: Option<String>,
    },
}

/// `weft logs …`.
#[derive(Subcommand, Debug)]
pub(crate) enum LogsCmd {
    /// Search the log lines of every run of the workspace, newest first.
    Search {
        /// Text the line contains (case-insensitive).
        text: Option<String>,
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// Only this step (a loop's includes its items).
        #[arg(long)]
        step: Option<String>,
        /// info, warn or error.
        #[arg(long)]
        level: Option<String>,
        /// Only lines recording this event (RunStarted, StepRetrying, StepFailed, …).
        #[arg(long)]
        event: Option<String>,
        /// Only runs in this status.
        #[arg(long)]
        status: Option<String>,
        /// Lines at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Lines before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Most lines to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Runs `weft logs …`.
pub(crate) async fn logs(cmd: LogsCmd, args: ClientArgs) -> anyhow::Result<()> {
    let json_out = args.json;
    let api = Api::new(args)?;
    let LogsCmd::Search {
        text,
        flow,
        run,
        step,
        level,
        event,
        status,
        since,
        until,
        limit,
    } = cmd;
    let query: Vec<(&str, String)> = [
        ("q", text),
        ("flow", flow),
        ("run", run),
        ("step", step),
        ("level", level),
        ("event", event),
        ("status", status),
        ("since", since),
        ("until", until),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    each_item(&api, "/logs", &query, limit, 500, |l| {
        if json_out {
            println!("{l}");
        } else {
            let step = l
                .get("step")
                .and_then(Value::as_str)
                .map(|s| format!("[{s}] "))
                .unwrap_or_default();
            println!(
                "{} {:<5} {} {} {step}{}",
                s(l, "ts"),
                s(l, "level"),
                s(l, "flow"),
                s(l, "run_id"),
                s(l, "message")
            );
        }
    })
    .await?;
    Ok(())
}

/// Pages through a workspace list endpoint (`{items, next_cursor}`) with `query`, handing each
/// item to `f`, until `limit` items or the last page; `page_max` is the endpoint's largest page.
/// Returns how many items there were.
async fn each_item(
    api: &Api,
    path: &str,
    query: &[(&str, String)],
    limit: usize,
    page_max: usize,
    mut f: impl FnMut(&Value),
) -> anyhow::Result<usize> {
    let mut seen = 0usize;
    let mut cursor: Option<String> = None;
    while seen < limit {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            q.append_pair(k, v);
        }
        q.append_pair("limit", &(limit - seen).min(page_max).to_string());
        if let Some(c) = &cursor {
            q.append_pair("cursor", c);
        }
        let v = api.get(api.ws(&format!("{path}?{}", q.finish()))).await?;
        let items = v
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in items.iter().take(limit - seen) {
            f(item);
        }
        seen += items.len().min(limit - seen);
        cursor = v
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() || items.is_empty() {
            break;
        }
    }
    Ok(seen)
}

/// `weft errors …`.
#[derive(Subcommand, Debug)]
pub(crate) enum ErrorsCmd {
    /// Failed steps grouped by flow, step, connector and error class, latest first.
    List {
        /// Only this flow's.
        #[arg(long)]
        flow: Option<String>,
        /// Only groups seen at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Days of trend to show.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Most groups to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Runs `weft errors …`.
pub(crate) async fn errors(cmd: ErrorsCmd, args: ClientArgs) -> anyhow::Result<()> {
    let json_out = args.json;
    let api = Api::new(args)?;
    let ErrorsCmd::List {
        flow,
        since,
        days,
        limit,
    } = cmd;
    let mut query: Vec<(&str, String)> = [("flow", flow), ("since", since)]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    query.push(("days", days.to_string()));
    let printed = each_item(&api, "/errors", &query, limit, 200, |g| {
        if json_out {
            println!("{g}");
            return;
        }
        let trend: Vec<String> = g
            .get("trend")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|d| format!("{} {}", s(d, "day").get(5..).unwrap_or(""), d["count"]))
            .collect();
        println!(
            "{} ×{} {}/{} [{} {}] last {} (first {}) e.g. run {}\n    {}\n    trend: {}",
            s(g, "fingerprint"),
            g["count"],
            s(g, "flow"),
            s(g, "step"),
            s(g, "connector"),
            s(g, "class"),
            s(g, "last_seen"),
            s(g, "first_seen"),
            s(g, "sample_run"),
            s(g, "message"),
            trend.join(", ")
        );
    })
    .await?;
    if printed == 0 && !json_out {
        println!("no failures recorded");
    }
    Ok(())
}

/// `weft events …`.
#[derive(Subcommand, Debug)]
pub(crate) enum EventsCmd {
    /// Publish an event: resumes the runs waiting for it and starts the flows it triggers.
    Publish {
        /// Event name, e.g. order.paid.
        name: String,
        /// What the event carries (JSON).
        #[arg(long)]
        data: Option<String>,
        /// Correlation key: only waits with this key (or with none) resume. (`--key` is the
        /// API key.)
        #[arg(long)]
        event_key: Option<String>,
        /// Event id: publishing the same id again does nothing more.
        #[arg(long)]
        id: Option<String>,
    },
}

/// Runs `weft events …`.
pub(crate) async fn events(cmd: EventsCmd, args: ClientArgs) -> anyhow::Result<()> {
    let json_out = args.json;
    let api = Api::new(args)?;
    match cmd {
        EventsCmd::Publish {
            name,
            data,
            event_key: key,
            id,
        } => {
            let data: Value = match data {
                Some(d) => serde_json::from_str(&d)
                    .map_err(|e| anyhow::anyhow!("--data is not valid JSON: {e}"))?,
                None => Value::Null,
            };
            let body = serde_json::json!({"name": name, "data": data, "key": key, "id": id});
            let v = api
                .send(api.http.post(api.ws("/events")).json(&body))
                .await?;
            if json_out {
                print_json(&v)
            } else {
                let n = |k: &str| v.get(k).and_then(Value::as_array).map_or(0, Vec::len);
                println!(
                    "event {} published: {} waiting run(s) resumed, {} run(s) started",
                    s(&v, "id"),
                    n("resumed"),
                    n("started")
                )
            }
        }
    }
    Ok(())
}

pub(crate) struct Api {
    http: reqwest::Client,
    pub(crate) args: ClientArgs,
}

impl Api {
    pub(crate) fn new(args: ClientArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()?;
        Ok(Self { http, args })
    }

    pub(crate) fn ws(&self, path: &str) -> String {
        format!(
            "{}/api/v1/workspaces/{}{}",
            self.args.url.trim_end_matches('/'),
            self.args.workspace,
            path
        )
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let key = self
            .args
            .key
            .as_deref()
            .ok_or_else(|| anyhow!("no API key: pass --key or set WEFT_API_KEY"))?;
        let resp =
            req.bearer_auth(key).send().await.map_err(|e| {
                anyhow!("cannot reach Weft at {}: {}", self.args.url, root_cause(&e))
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let detail = v
                .get("detail")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            let fields: Vec<String> = v
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| {
                            Some(format!(
                                "{}: {}",
                                e.get("path")?.as_str()?,
                                e.get("message")?.as_str()?
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if fields.len() > 1 {
                bail!(
                    "{} ({status}): {}",
                    detail.split(':').next().unwrap_or("request failed"),
                    fields.join("; ")
                );
            }
            bail!("{detail} ({status})");
        }
        Ok(v)
    }

    pub(crate) async fn get(&self, url: String) -> anyhow::Result<Value> {
        self.send(self.http.get(url)).await
    }

    pub(crate) async fn post(&self, url: String, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(url).json(body)).await
    }

    pub(crate) async fn patch(&self, url: String, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.patch(url).json(body)).await
    }

    pub(crate) async fn delete(&self, url: String) -> anyhow::Result<Value> {
        self.send(self.http.delete(url)).await
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn print_flow(f: &Value) {
    let published = f
        .get("published_version")
        .and_then(Value::as_i64)
        .map(|v| v.to_string())
        .unwrap_or_else(|| "none".into());
    println!("flow {} ({})", s(f, "name"), s(f, "id"));
    println!(
        "  version {} (published: {published})",
        f.get("version").and_then(Value::as_i64).unwrap_or(0)
    );
    if let Some(url) = f.get("hook_url").and_then(Value::as_str) {
        println!("  hook_id  {}", s(f, "hook_id"));
        println!("  hook_url {url}");
    }
}

pub(crate) async fn flow(cmd: FlowCmd, args: ClientArgs) -> anyhow::Result<()> {
    let json_out = args.json;
    match cmd {
        FlowCmd::Schema => {
            print_json(&weft_flow::json_schema());
            return Ok(());
        }
        FlowCmd::Validate { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let res = weft_flow::parse_text(&text)
                .and_then(|d| weft_flow::compile(&d, &weft_engine::ActionRegistry).map(|c| (d, c)));
            match res {
                Ok((d, c)) => {
                    if json_out {
                        print_json(&json!({"valid": true, "name": d.name, "steps": c.steps.len()}));
                    } else {
                        println!(
                            "{} is valid: flow '{}' with {} steps ({} trigger)",
                            file.display(),
                            d.name,
                            c.steps.len(),
                            c.trigger.name()
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    if json_out {
                        print_json(&json!({"valid": false, "errors": e.field_errors()}));
                    }
                    bail!("{} is invalid: {e}", file.display());
                }
            }
        }
        _ => {}
    }
    let api = Api::new(args)?;
    let out = match cmd {
        FlowCmd::Apply { file, draft } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            // Parse locally first: errors name the file and need no round trip.
            let def =
                weft_flow::parse_text(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let url = api.ws(&format!("/flows{}", if draft { "?draft=true" } else { "" }));
            api.send(api.http.post(url).json(&def)).await?
        }
        FlowCmd::List { limit, cursor } => {
            let mut url = api.ws("/flows?");
            if let Some(l) = limit {
                url.push_str(&format!("limit={l}&"));
            }
            if let Some(c) = cursor {
                url.push_str(&format!("cursor={}&", enc(&c)));
            }
            let v = api.get(url).await?;
            if !json_out {
                for f in v
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let published = f
                        .get("published_version")
                        .and_then(Value::as_i64)
                        .map(|v| format!("v{v}"))
                        .unwrap_or_else(|| "draft".into());
                    println!("{:<32} {:<36} {published}", s(f, "name"), s(f, "id"));
                }
                if let Some(c) = v.get("next_cursor").and_then(Value::as_str) {
                    println!("(more: --cursor {c})");
                }
                return Ok(());
            }
            v
        }
        FlowCmd::Show { flow } => api.get(api.ws(&format!("/flows/{}", enc(&flow)))).await?,
        FlowCmd::Publish { flow, version } => {
            let body = match version {
                Some(v) => json!({"version": v}),
                None => json!({}),
            };
            api.send(
                api.http
                    .post(api.ws(&format!("/flows/{}/publish", enc(&flow))))
                    .json(&body),
            )
            .await?
        }
        FlowCmd::Delete { flow } => {
            api.delete(api.ws(&format!("/flows/{}", enc(&flow))))
                .await?;
            if json_out {
                print_json(&json!({"deleted": flow}));
            } else {
                println!("deleted flow {flow}");
            }
            return Ok(());
        }
        FlowCmd::Poll { flow } => {
            let v = api
                .get(api.ws(&format!("/flows/{}/poll", enc(&flow))))
                .await?;
            return print_poll(&v, json_out);
        }
        FlowCmd::Backfill { flow, since } => {
            // `--since 2026-11-01T00:00:00Z` is text; `--since 42` or `--since '"x"'` is JSON.
            let since = since.map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)));
            let v = api
                .send(
                    api.http
                        .post(api.ws(&format!("/flows/{}/poll/backfill", enc(&flow))))
                        .json(&json!({ "since": since })),
                )
                .await?;
            return print_poll(&v, json_out);
        }
        FlowCmd::Schema | FlowCmd::Validate { .. } => Value::Null,
    };
    if json_out {
        print_json(&out)
    } else {
        print_flow(&out)
    }
    Ok(())
}

pub(crate) fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(crate) async fn run(cmd: RunCmd, args: ClientArgs) -> anyhow::Result<()> {
    let json_out = args.json;
    let api = Api::new(args)?;
    let RunCmd::Start {
        flow,
        input,
        idempotency_key,
    } = cmd;
    let input: Value =
        serde_json::from_str(&input).map_err(|e| anyhow!("--input is not valid JSON: {e}"))?;
    let mut req = api
        .http
        .post(api.ws(&format!("/flows/{}/runs", enc(&flow))))
        .json(&json!({"input": input}));
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    let v = api.send(req).await?;
    if json_out {
        print_json(&v);
    } else {
        let dup = if v.get("duplicate").and_then(Value::as_bool) == Some(true) {
            " (duplicate: already started)"
        } else {
            ""
        };
        println!("started run {}{dup}", s(&v, "run_id"));
    }
    Ok(())
}

fn print_run(r: &Value) {
    println!("run {}  {}", s(r, "id"), s(r, "status"));
    println!(
        "  flow {} v{}",
        s(r, "flow"),
        r.get("flow_version").and_then(Value::as_i64).unwrap_or(0)
    );
    println!(
        "  created {}  finished {}",
        s(r, "created_at"),
        s(r, "finished_at")
    );
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        println!("  error: {e}");
    }
    for st in r
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let attempts = st.get("attempts").and_then(Value::as_i64).unwrap_or(0);
        println!(
            "  - {:<24} {:<10} attempts={attempts}",
            s(st, "id"),
            s(st, "status")
        );
        if let Some(e) = st.get("error").and_then(Value::as_str) {
            println!("      error: {e}");
        }
    }
    if let Some(o) = r.get("output").filter(|o| !o.is_null()) {
        println!("  output: {o}");
    }
}

pub(crate) async fn runs(cmd: RunsCmd, args: ClientArgs) -> anyhow::Result<()> {
    let json_out = args.json;
    let api = Api::new(args)?;
    match cmd {
        RunsCmd::List {
            flow,
            status,
            since,
            limit,
            cursor,
        } => {
            let mut q = Vec::new();
            for (k, v) in [
                ("flow", flow),
                ("status", status),
                ("since", since),
                ("cursor", cursor),
                ("limit", limit.map(|l| l.to_string())),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            let v = api.get(api.ws(&format!("/runs?{}", q.join("&")))).await?;
            if json_out {
                print_json(&v);
            } else {
                for r in v
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    println!(
                        "{}  {:<10} {:<24} {}",
                        s(r, "id"),
                        s(r, "status"),
                        s(r, "flow"),
                        s(r, "created_at")
                    );
                }
                if let Some(c) = v.get("next_cursor").and_then(Value::as_str) {
                    println!("(more: --cursor {c})");
                }
            }
        }
        RunsCmd::Show { run } => {
            let v = api.get(api.ws(&format!("/runs/{}", enc(&run)))).await?;
            if json_out {
                print_json(&v)
            } else {
                print_run(&v)
            }
        }
        RunsCmd::Cancel { run } => {
            let v = api
                .send(
                    api.http
                        .post(api.ws(&format!("/runs/{}/cancel", enc(&run)))),
                )
                .await?;
            if json_out {
                print_json(&v)
            } else {
                println!("run {} is {}", s(&v, "id"), s(&v, "status"))
            }
        }
        RunsCmd::Retry { run } => {
            let v = api
                .send(api.http.post(api.ws(&format!("/runs/{}/retry", enc(&run)))))
                .await?;
            if json_out {
                print_json(&v)
            } else {
                println!("run {} is {} again", s(&v, "id"), s(&v, "status"))
            }
        }
        RunsCmd::Replay {
            run: Some(run),
            latest,
            ..
        } => {
            let body = serde_json::json!({"version": if latest { "latest" } else { "pinned" }});
            let v = api
                .send(
                    api.http
                        .post(api.ws(&format!("/runs/{}/replay", enc(&run))))
                        .json(&body),
                )
                .await?;
            if json_out {
                print_json(&v)
            } else {
                println!("replayed as run {}", s(&v, "run_id"))
            }
        }
        RunsCmd::Replay {
            run: None,
            flow,
            since,
            latest,
            ..
        } => {
            let mut cursor: Option<String> = None;
            let mut total = 0usize;
            let mut not_replayed = 0usize;
            loop {
                let body = serde_json::json!({
                    "flow": flow,
                    "since": since,
                    "cursor": cursor,
                    "limit": 50,
                    "version": if latest { "latest" } else { "pinned" },
                });
                let v = api
                    .send(api.http.post(api.ws("/runs/replay")).json(&body))
                    .await?;
                for r in v
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let err = r.get("error").and_then(Value::as_str);
                    if err.is_some() {
                        not_replayed += 1;
                    } else {
                        total += 1;
                    }
                    if json_out {
                        println!("{r}");
                    } else if let Some(e) = err {
                        println!("{} not replayed: {e}", s(r, "from"));
                    } else {
                        println!("{} -> {}", s(r, "from"), s(r, "run_id"));
                    }
                }
                if !json_out {
                    eprintln!("replayed {total} runs so far");
                }
                cursor = v
                    .get("next_cursor")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if cursor.is_none() {
                    break;
                }
            }
            if !json_out {
                println!("replayed {total} failed runs");
            }
            if not_replayed > 0 {
                anyhow::bail!(
                    "{not_replayed} run(s) could not be replayed (listed above with the reason)"
                );
            }
        }
        RunsCmd::Signal { run, name, payload } => {
            let mut req =
                api.http
                    .post(api.ws(&format!("/runs/{}/signals/{}", enc(&run), enc(&name))));
            if let Some(p) = payload {
                let v: Value = serde_json::from_str(&p)
                    .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
                req = req.json(&v);
            }
            let v = api.send(req).await?;
            if json_out {
                print_json(&v)
            } else {
                println!(
                    "signal '{name}' delivered; run {} is {}",
                    s(&v, "id"),
                    s(&v, "status")
                )
            }
        }
        RunsCmd::Delete { run } => {
            api.delete(api.ws(&format!("/runs/{}", enc(&run)))).await?;
            if json_out {
                print_json(&serde_json::json!({"id": run, "deleted": true}))
            } else {
                println!("run {run} deleted")
            }
        }
        RunsCmd::Logs { run, follow } => {
            let mut after = 0i64;
            loop {
                let v = api
                    .get(api.ws(&format!("/runs/{}/logs?after={after}", enc(&run))))
                    .await?;
                for l in v
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    after = l.get("seq").and_then(Value::as_i64).unwrap_or(after);
                    if json_out {
                        println!("{l}");
                    } else {
                        let step = l
                            .get("step")
                            .and_then(Value::as_str)
                            .map(|s| format!("[{s}] "))
                            .unwrap_or_default();
                        println!(
                            "{} {:<5} {step}{}",
                            s(l, "ts"),
                            s(l, "level"),
                            s(l, "message")
                        );
                    }
                }
                let status = s(&v, "run_status").to_string();
                let done = matches!(status.as_str(), "succeeded" | "failed" | "cancelled");
                if !follow
                    || (done
                        && v.get("items")
                            .and_then(Value::as_array)
                            .is_none_or(|a| a.is_empty()))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(())
}
