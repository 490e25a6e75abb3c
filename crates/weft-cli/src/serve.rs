//! `weft serve` and the operator commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use weft_connectors::{GuardedClient, NetPolicy};
use weft_engine::{Engine, EngineOptions};
use weft_sandbox::{SandboxOptions, SandboxPool};
use weft_store::payloads::Payloads;
use weft_store::{SqliteOptions, Store};
use weft_types::{Clock, Scope, SystemClock};
use weft_vault::{KeySource, MasterKey, Vault};

use crate::StoreArgs;

/// Which parts of Weft this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// API, intake, workers and scheduler.
    All,
    /// HTTP API and webhook intake only.
    Api,
    /// Execution, timers and polling only.
    Worker,
}

/// Options of `weft serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    /// Which parts to run.
    #[arg(long, env = "WEFT_ROLE", value_enum, default_value_t = Role::All)]
    role: Role,
    /// Apply the flow files in this directory at start (to the default workspace).
    #[arg(long, env = "WEFT_FLOWS")]
    flows: Option<PathBuf>,
    /// Let actions reach loopback and private addresses (for local testing).
    #[arg(long, env = "WEFT_ALLOW_PRIVATE_NETWORK")]
    allow_private_network: bool,
    /// Networks actions may reach even though they are private (CIDR, repeatable or comma-separated).
    #[arg(long, env = "WEFT_ALLOW_NETWORKS", value_delimiter = ',')]
    allow_network: Vec<String>,
    /// Base URL used in printed hook URLs (default: http://LISTEN).
    #[arg(long, env = "WEFT_PUBLIC_URL")]
    public_url: Option<String>,
    /// Largest request body, in bytes.
    #[arg(long, env = "WEFT_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most runs executing at once in this process.
    #[arg(long, env = "WEFT_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Seconds a worker's lease on a run lasts without a heartbeat: how soon another worker
    /// takes over the runs of one that died.
    #[arg(long, env = "WEFT_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_secs: u64,
    /// Sandbox worker processes for expressions.
    #[arg(long, env = "WEFT_SANDBOX_WORKERS", default_value_t = 2)]
    sandbox_workers: usize,
    /// Time limit of one sandboxed expression, in milliseconds.
    #[arg(long, env = "WEFT_EXPR_TIMEOUT_MS", default_value_t = 5000)]
    expr_timeout_ms: u64,
    /// Memory limit of a sandbox worker, in MiB.
    #[arg(long, env = "WEFT_SANDBOX_MEMORY_MIB", default_value_t = 512)]
    sandbox_memory_mib: u64,
    /// How long a delivery id / Idempotency-Key blocks a second run, in seconds.
    #[arg(long, env = "WEFT_DEDUPE_WINDOW_SECS", default_value_t = 86_400)]
    dedupe_window_secs: u64,
    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// OTLP/HTTP endpoint to export spans to (e.g. http://127.0.0.1:4318; spans are posted to
    /// `/v1/traces`). Unset: spans are not exported (`traceparent` is still propagated).
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share of new traces recorded and exported, 0.0-1.0 (a caller's `traceparent` decides
    /// for its own traces).
    #[arg(long, env = "WEFT_TRACE_SAMPLE_RATIO", default_value_t = 1.0, value_parser = sample_ratio)]
    trace_sample_ratio: f64,
    /// Instance admin token (`wfa_…`) for `/api/v1/admin/*`; when unset, the one made at first
    /// start (or by `weft admin token`) is used.
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

fn sample_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("must be a number from 0.0 to 1.0".into()),
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `weft admin …`.
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// Apply pending store migrations and exit.
    Migrate,
    /// Make a new instance admin token (the old one stops working); prints it once.
    Token {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Make a new master key primary and re-wrap every credential's data key with it, while
    /// servers keep serving; then retire the old keys (key file) or say how (WEFT_MASTER_KEY).
    RotateKey {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Maintain the payload store.
    Payloads {
        #[command(subcommand)]
        cmd: PayloadsCmd,
    },
    /// Queue depth (runs by status, every tenant) and the runs queued or running for longer
    /// than --stuck-after.
    Queue {
        /// A run queued or running for longer than this many seconds is listed as stuck.
        #[arg(long, default_value_t = 600)]
        stuck_after_secs: u64,
        /// Most stuck runs to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `weft admin payloads …`.
#[derive(Subcommand, Debug)]
pub enum PayloadsCmd {
    /// Delete payloads whose run does not exist (writes that never committed, runs deleted while
    /// the payload store was unreachable).
    Sweep {
        /// Only payloads older than this many seconds (younger ones may belong to a run being
        /// accepted right now).
        #[arg(long, default_value_t = 3600)]
        older_than_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `weft admin user …`.
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Set a user's password (creating the user if new); reads it from WEFT_PASSWORD or stdin.
    SetPassword {
        /// The user's email.
        #[arg(long)]
        email: String,
    },
}

/// Makes and stores a new instance admin token; returns it (shown once).
async fn new_admin_token(s: &Store) -> anyhow::Result<String> {
    let token = format!("wfa_{}", weft_types::random_secret());
    s.set_setting(
        weft_api::ADMIN_TOKEN_SETTING,
        &weft_store::hash_secret(&token),
    )
    .await?;
    Ok(token)
}

/// `weft admin tenant …`.
#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant with its `default` workspace and owner; prints the owner's API key once.
    Create {
        /// Tenant name.
        #[arg(long)]
        name: String,
        /// Owner's email.
        #[arg(long)]
        owner_email: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Opens the store: PostgreSQL when `--database-url` is given (migrating it first when it is
/// behind and the role may), else the embedded SQLite store in `--data-dir`.
async fn open_store(args: &StoreArgs) -> anyhow::Result<Store> {
    if let Some(url) = &args.database_url {
        let have = weft_store::postgres::schema_version(url)
            .await
            .context("cannot reach PostgreSQL at --database-url")?;
        let want = weft_store::postgres::latest_version();
        if have < want {
            migrate_postgres(url, args.database_app_role.as_deref())
                .await
                .with_context(|| format!("the PostgreSQL schema is at version {have} and this Weft needs {want}; run `weft admin migrate --database-url <owner URL>` as the schema's owner"))?;
        } else if have > want {
            bail!(
                "the PostgreSQL schema is at version {have}, newer than this Weft ({want}); upgrade Weft"
            );
        }
        let store = Store::connect_postgres(url, 16)
            .await
            .context("cannot connect to PostgreSQL at --database-url")?;
        return Ok(store.with_payloads(open_payloads(args)?));
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let store = Store::open(SqliteOptions {
        path: args.data_dir.join("weft.db"),
        readers: 4,
    })
    .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    Ok(store.with_payloads(open_payloads(args)?))
}

/// The credential vault: `WEFT_MASTER_KEY`, else `--master-key-file`, else (embedded store
/// only) `master.key` in the data dir, created on first start. With PostgreSQL and no key the
/// vault is off: credentials then answer 503 saying how to configure one.
fn open_vault(args: &StoreArgs) -> anyhow::Result<Option<Arc<Vault>>> {
    let source = match (&args.master_key, &args.master_key_file) {
        (Some(k), _) => KeySource::Env(k.clone()),
        (None, Some(f)) => KeySource::File(f.clone()),
        (None, None) if args.database_url.is_none() => {
            let path = args.data_dir.join("master.key");
            let src = KeySource::File(path.clone());
            let (ring, created) = src
                .load_or_create()
                .with_context(|| format!("cannot open the master key {}", path.display()))?;
            if created {
                eprintln!(
                    "created the master key {} (it encrypts credentials: back it up, and keep it out of backups of the database)",
                    path.display()
                );
            }
            return Ok(Some(Arc::new(Vault::new(src, ring))));
        }
        (None, None) => return Ok(None),
    };
    let vault = Vault::load(source.clone())
        .with_context(|| format!("cannot load the master key from {}", source.describe()))?;
    Ok(Some(Arc::new(vault)))
}

/// The payload store of `--payload-store` (default: a `payloads` directory in the data dir).
fn open_payloads(args: &StoreArgs) -> anyhow::Result<Payloads> {
    match &args.payload_store {
        Some(url) => Payloads::open(url, args.payload_threshold)
            .with_context(|| format!("cannot open the payload store {url}")),
        None => {
            let dir = args.data_dir.join("payloads");
            Payloads::local(&dir, args.payload_threshold)
                .with_context(|| format!("cannot open the payload directory {}", dir.display()))
        }
    }
}

/// `weft admin rotate-key`.
async fn rotate_key(s: &Store, args: &StoreArgs, json: bool) -> anyhow::Result<()> {
    let Some(vault) = open_vault(args)? else {
        bail!(
            "no master key is configured: set WEFT_MASTER_KEY or --master-key-file to the key the servers use"
        );
    };
    let before = vault.ring();
    let (ring, retire) = match vault.source() {
        KeySource::File(_) => {
            let ring = before.with_primary(MasterKey::generate()?);
            // The new key is on disk (beside the old ones) before anything is wrapped with it.
            vault.source().store(&ring)?;
            (ring, true)
        }
        // Weft cannot edit the variable: the operator puts the new key first.
        KeySource::Env(_) => ((*before).clone(), false),
    };
    let vault = Vault::new(vault.source().clone(), ring.clone());
    let primary = ring.primary().id().to_string();
    let mut rewrapped = weft_engine::rewrap_all(s, &vault).await?;
    // A second pass catches credentials a server sealed with the old key while the first ran.
    rewrapped += weft_engine::rewrap_all(s, &vault).await?;
    let left = s.credentials_to_rewrap(&primary, None, 1).await?;
    let old: Vec<String> = ring.ids().into_iter().skip(1).collect();
    let retired = if retire && left.is_empty() {
        vault.source().store(&ring.primary_only())?;
        old.clone()
    } else {
        Vec::new()
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"primary": primary, "rewrapped": rewrapped, "retired": retired, "still_old": !left.is_empty()})
        );
        return Ok(());
    }
    println!("master key {primary} is primary; re-wrapped {rewrapped} credential(s)");
    if !retired.is_empty() {
        println!(
            "retired {} from {}",
            retired.join(", "),
            vault.source().describe()
        );
    } else if !left.is_empty() {
        println!(
            "some credentials are still wrapped by an older key: run rotate-key again before removing old keys"
        );
    } else if !retire && !old.is_empty() {
        println!(
            "every credential is under {primary}: remove the other keys from WEFT_MASTER_KEY once every server runs with it first"
        );
    } else if !retire {
        println!(
            "to rotate, put a new key first in WEFT_MASTER_KEY (NEW,OLD; make one with `head -c 32 /dev/urandom | base64`), restart the servers, and run rotate-key again"
        );
    }
    Ok(())
}

/// Applies PostgreSQL migrations and grants `app_role` (default: the connecting role).
async fn migrate_postgres(url: &str, app_role: Option<&str>) -> anyhow::Result<()> {
    let role = match app_role {
        Some(r) => r.to_string(),
        None => url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(user, _)| user.split(':').next().unwrap_or("").to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres".into()),
    };
    weft_store::postgres::migrate(url, &role).await?;
    Ok(())
}

/// Takes the data directory's lock: one serving process per embedded store.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("weft.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(_) => bail!(
            "another Weft process is serving the data directory {}; stop it or use another --data-dir",
            dir.display()
        ),
    }
}

pub(crate) async fn admin(cmd: AdminCmd, store: StoreArgs) -> anyhow::Result<()> {
    if let (AdminCmd::Migrate, Some(url)) = (&cmd, &store.database_url) {
        migrate_postgres(url, store.database_app_role.as_deref()).await?;
        println!(
            "PostgreSQL schema is at the latest version ({})",
            weft_store::postgres::latest_version()
        );
        return Ok(());
    }
    let s = open_store(&store).await?;
    match cmd {
        AdminCmd::Migrate => {
            println!("store is at the latest schema ({})", s.describe());
        }
        AdminCmd::Tenant {
            cmd:
                TenantCmd::Create {
                    name,
                    owner_email,
                    json,
                },
        } => {
            if name.trim().is_empty() || name.len() > 100 {
                bail!("--name must be 1-100 characters");
            }
            if !owner_email.contains('@') || owner_email.len() > 254 {
                bail!("--owner-email '{owner_email}' is not an email address");
            }
            let b = s
                .create_tenant(
                    &name,
                    &owner_email,
                    weft_store::Limits::default(),
                    weft_store::Actor::operator(),
                    SystemClock.now_ms(),
                )
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tenant_id": b.tenant.to_string(), "workspace_id": b.workspace.to_string(), "workspace": "default", "api_key": b.owner_key})
                );
            } else {
                println!(
                    "created tenant '{name}' ({}) with workspace 'default'",
                    b.tenant
                );
                println!("owner API key (shown once): {}", b.owner_key);
            }
        }
        AdminCmd::Payloads {
            cmd:
                PayloadsCmd::Sweep {
                    older_than_secs,
                    json,
                },
        } => {
            let before = SystemClock
                .now_ms()
                .saturating_sub(older_than_secs.saturating_mul(1000) as i64);
            let swept = s.sweep_payloads(before).await?;
            let at = s.payloads().map_or("", |p| p.describe()).to_string();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "runs_swept": swept, "payload_store": at })
                );
            } else {
                println!("removed the payloads of {swept} runs that do not exist, from {at}");
            }
        }
        AdminCmd::Queue {
            stuck_after_secs,
            limit,
            json,
        } => {
            let now = SystemClock.now_ms();
            let mut counts = s.count_runs().await?;
            counts.sort_by_key(|(st, _)| st.as_str());
            let before = now.saturating_sub(stuck_after_secs.saturating_mul(1000) as i64);
            let stuck = s.stuck_runs(before, limit.clamp(1, 1000)).await?;
            let since = |r: &weft_store::RunRecord| r.started_at.unwrap_or(r.created_at);
            if json {
                let by_status: serde_json::Map<String, serde_json::Value> = counts
                    .iter()
                    .map(|(st, n)| (st.as_str().to_string(), serde_json::json!(n)))
                    .collect();
                let stuck: Vec<serde_json::Value> = stuck
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "run_id": r.id.to_string(),
                            "tenant": r.scope.tenant.to_string(),
                            "workspace": r.scope.workspace.to_string(),
                            "flow": r.flow_name,
                            "status": r.status.as_str(),
                            "since": weft_types::rfc3339(since(r)),
                            "for_secs": (now - since(r)) / 1000,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"runs_by_status": by_status, "stuck": stuck})
                );
            } else {
                let text: Vec<String> = counts
                    .iter()
                    .map(|(st, n)| format!("{} {n}", st.as_str()))
                    .collect();
                println!("runs by status: {}", text.join(", "));
                if stuck.is_empty() {
                    println!("no run has been queued or running for over {stuck_after_secs} s");
                }
                for r in &stuck {
                    println!(
                        "stuck: {} {} {} for {} s (since {}), tenant {} workspace {}",
                        r.id,
                        r.flow_name,
                        r.status.as_str(),
                        (now - since(r)) / 1000,
                        weft_types::rfc3339(since(r)),
                        r.scope.tenant,
                        r.scope.workspace
                    );
                }
            }
        }
        AdminCmd::RotateKey { json } => rotate_key(&s, &store, json).await?,
        AdminCmd::Token { json } => {
            let token = new_admin_token(&s).await?;
            if json {
                println!("{}", serde_json::json!({ "admin_token": token }));
            } else {
                println!(
                    "instance admin token (shown once; the previous one no longer works): {token}"
                );
            }
        }
        AdminCmd::User {
            cmd: UserCmd::SetPassword { email },
        } => {
            let email = email.trim().to_lowercase();
            if email.split('@').count() != 2 || email.len() > 254 {
                bail!("--email '{email}' is not an email address");
            }
            let password = match std::env::var("WEFT_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("cannot read the password from stdin")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if password.chars().count() < 10 || password.len() > 1024 {
                bail!("the password must be 10-1024 characters");
            }
            let hash = weft_api::password::hash(password)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            let id = s.set_password(&email, &hash, SystemClock.now_ms()).await?;
            println!("password set for {email} ({id})");
        }
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

async fn apply_dir(engine: &Engine, scope: Scope, dir: &Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --flows directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let def = weft_flow::parse_text(&text).with_context(|| format!("{}", f.display()))?;
        let rec = engine
            .apply_flow(scope, def, false, weft_store::Actor::system("flows-dir"))
            .await
            .with_context(|| format!("{}", f.display()))?;
        tracing::info!(file = %f.display(), flow = %rec.name, version = rec.latest_version, "applied flow");
    }
    Ok(())
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let telemetry = crate::telemetry::init(args.otlp_endpoint.as_deref(), args.trace_sample_ratio)?;
    let store = open_store(&args.store).await?;
    // The embedded store has one serving process; a shared store has many, coordinated by leases.
    let _lock = if store.is_shared() {
        None
    } else {
        Some(lock_data_dir(&args.store.data_dir)?)
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut allow = Vec::new();
    for n in &args.allow_network {
        allow.push(n.parse().with_context(|| {
            format!("--allow-network '{n}' is not a CIDR network like 10.0.0.0/8")
        })?);
    }
    let http = GuardedClient::new(NetPolicy {
        allow_private: args.allow_private_network,
        allow,
    })?;
    let sandbox = SandboxPool::new(SandboxOptions {
        program: std::env::current_exe()
            .context("cannot find the weft executable for the sandbox")?,
        args: vec![
            "sandbox-worker".into(),
            "--memory-mib".into(),
            args.sandbox_memory_mib.to_string(),
        ],
        workers: args.sandbox_workers,
        timeout: Duration::from_millis(args.expr_timeout_ms),
        memory_bytes: args.sandbox_memory_mib * 1024 * 1024,
    });
    let owner = format!(
        "proc-{}-{}",
        std::process::id(),
        weft_types::random_secret().get(..8).unwrap_or("0")
    );
    let vault = open_vault(&args.store)?;
    if vault.is_none() {
        tracing::warn!(
            "no master key is configured (WEFT_MASTER_KEY or --master-key-file): credentials cannot be set or used"
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"))
        .trim_end_matches('/')
        .to_string();
    let engine = Engine::new(EngineOptions {
        store: store.clone(),
        clock: clock.clone(),
        sandbox,
        http,
        owner,
        max_in_flight: args.max_in_flight,
        lease: Duration::from_secs(args.lease_secs),
        poll_interval: Duration::from_secs(1),
        dedupe_window: Duration::from_secs(args.dedupe_window_secs),
        execute: args.role != Role::Api,
        vault,
        public_url: public_url.clone(),
    });

    let boot = store.bootstrap_if_empty(clock.now_ms()).await?;
    // The instance admin token: the operator's, or one made at first start (shown once).
    let admin_token_hash = args.admin_token.as_deref().map(weft_store::hash_secret);
    let new_admin = match (&boot, &admin_token_hash) {
        (Some(_), None) => Some(new_admin_token(&store).await?),
        _ => None,
    };
    let scope = store.default_scope().await?;
    if let (Some(_), Some(scope)) = (&boot, scope) {
        let def = weft_flow::parse_text(include_str!("../../../examples/hello.yaml"))?;
        engine
            .apply_flow(scope, def, false, weft_store::Actor::system("bootstrap"))
            .await?;
    }
    if let (Some(dir), Some(scope)) = (&args.flows, scope) {
        apply_dir(&engine, scope, dir).await?;
    }
    engine.start(!store.is_shared()).await?;

    println!(
        "Weft is serving on http://{local} (data: {})",
        if store.is_shared() {
            store.describe()
        } else {
            args.store.data_dir.display().to_string()
        }
    );
    if let Some(b) = &boot {
        println!("Owner API key (shown once, keep it): {}", b.owner_key);
        println!("  export WEFT_API_KEY={}", b.owner_key);
    }
    if let Some(t) = &new_admin {
        println!("Instance admin token for /api/v1/admin (shown once): {t}");
    }
    if let Some(scope) = scope
        && let Ok(hello) = engine.get_flow(scope, "hello").await
    {
        println!("Try the example flow:");
        println!(
            "  curl -s -X POST {public_url}/hooks/{} -H 'content-type: application/json' -d '{{\"name\":\"Ada\"}}'",
            hello.hook_id
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let app = weft_api::router(
        engine.clone(),
        weft_api::ApiOptions {
            public_url,
            max_body_bytes: args.max_body_bytes,
            admin_token_hash,
        },
    );
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term_fut = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! { _ = ctrl_c => {}, _ = term_fut => {} }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutting down");
    };
    weft_api::serve(listener, app, shutdown, Duration::from_secs(10)).await?;
    engine.shutdown(Duration::from_secs(10)).await;
    // The exporter's flush blocks on its own thread's HTTP client.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(())
}
