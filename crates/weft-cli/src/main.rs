//! `weft`: the one binary. Server (`serve`), client commands against a server's API, operator
//! commands on the store, and the hidden `sandbox-worker` the server spawns for expressions.

mod alerts;
mod client;
mod credentials;
mod identity;
mod serve;
mod telemetry;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of glibc's malloc: under load a quarter of weft's own CPU went to glibc's
/// slow paths (chunk unlinking, consolidation) for the many short-lived buffers of each run.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weft: durable integration and workflow automation.
#[derive(Parser, Debug)]
#[command(name = "weft", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where a client command sends its requests.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the Weft server.
    #[arg(
        long,
        env = "WEFT_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key (`wft_…`).
    #[arg(long, env = "WEFT_API_KEY", global = true, hide_env_values = true)]
    pub key: Option<String>,
    /// Workspace slug.
    #[arg(long, env = "WEFT_WORKSPACE", default_value = "default", global = true)]
    pub workspace: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Where operator commands find the store.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Directory for the embedded store (SQLite + files).
    #[arg(
        long,
        env = "WEFT_DATA_DIR",
        default_value = "./weft-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (instead of the embedded store).
    #[arg(long, env = "WEFT_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// PostgreSQL role the servers connect as, granted row access by `weft admin migrate`
    /// (default: the role of --database-url).
    #[arg(long, env = "WEFT_DATABASE_APP_ROLE", global = true)]
    pub database_app_role: Option<String>,
    /// Where payloads larger than --payload-threshold go: `s3://BUCKET[/PREFIX]` (configured by
    /// the `AWS_*` variables), `file:///DIR` or a directory (default: DATA_DIR/payloads). Every
    /// process of a deployment must use the same one.
    #[arg(long, env = "WEFT_PAYLOAD_STORE", global = true)]
    pub payload_store: Option<String>,
    /// Trigger events, step outputs and run outputs whose JSON is larger than this many bytes
    /// are kept in the payload store instead of the database.
    #[arg(long, env = "WEFT_PAYLOAD_THRESHOLD", default_value_t = weft_store::payloads::DEFAULT_THRESHOLD, global = true)]
    pub payload_threshold: usize,
    /// File with the master key(s) that encrypt credentials: base64, one per line, primary
    /// first (default: DATA_DIR/master.key, created on the embedded store's first start).
    #[arg(long, env = "WEFT_MASTER_KEY_FILE", global = true)]
    pub master_key_file: Option<PathBuf>,
    /// The master key(s) as base64, comma-separated, primary first; set it through the
    /// environment, not the command line.
    #[arg(
        long,
        env = "WEFT_MASTER_KEY",
        hide_env_values = true,
        global = true,
        hide = true
    )]
    pub master_key: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server: API, webhook intake, workers and scheduler.
    Serve(serve::ServeArgs),
    /// Manage flows.
    Flow {
        #[command(subcommand)]
        cmd: client::FlowCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start runs.
    Run {
        #[command(subcommand)]
        cmd: client::RunCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Inspect and operate runs.
    Runs {
        #[command(subcommand)]
        cmd: client::RunsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Failed steps grouped by fingerprint (error analytics).
    Errors {
        #[command(subcommand)]
        cmd: client::ErrorsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Search the log lines of the workspace's runs.
    Logs {
        #[command(subcommand)]
        cmd: client::LogsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Alert rules: notify a webhook, Slack or email when runs fail, errors are new, runs are
    /// stuck or credentials need re-authorization.
    Alerts {
        #[command(subcommand)]
        cmd: alerts::AlertsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publish workspace events (they resume waiting runs and start event-triggered flows).
    Events {
        #[command(subcommand)]
        cmd: client::EventsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the available connectors, or show one.
    Connectors {
        #[command(subcommand)]
        cmd: credentials::ConnectorsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage this workspace's credentials (values are never shown).
    Credentials {
        #[command(subcommand)]
        cmd: credentials::CredentialsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage this workspace's API keys.
    Keys {
        #[command(subcommand)]
        cmd: identity::KeysCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage this workspace's members.
    Members {
        #[command(subcommand)]
        cmd: identity::MembersCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List and create workspaces.
    Workspaces {
        #[command(subcommand)]
        cmd: identity::WorkspacesCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read and verify the audit trail.
    Audit {
        #[command(subcommand)]
        cmd: identity::AuditCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Operator commands acting on the store directly.
    Admin {
        #[command(subcommand)]
        cmd: serve::AdminCmd,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Internal: serve sandboxed expression evaluations on stdin/stdout.
    #[command(hide = true)]
    SandboxWorker {
        /// Address-space limit in MiB.
        #[arg(long, default_value_t = 512)]
        memory_mib: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("{e:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("error: {msg}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::SandboxWorker { memory_mib } = cli.cmd {
        // No runtime, no logging: the worker is a plain loop under rlimits.
        weft_sandbox::worker_main(memory_mib * 1024 * 1024)?;
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(args) => serve::serve(args).await,
            Cmd::Flow { cmd, client } => client::flow(cmd, client).await,
            Cmd::Run { cmd, client } => client::run(cmd, client).await,
            Cmd::Runs { cmd, client } => client::runs(cmd, client).await,
            Cmd::Events { cmd, client } => client::events(cmd, client).await,
            Cmd::Alerts { cmd, client } => alerts::alerts(cmd, client).await,
            Cmd::Logs { cmd, client } => client::logs(cmd, client).await,
            Cmd::Errors { cmd, client } => client::errors(cmd, client).await,
            Cmd::Connectors { cmd, client } => credentials::connectors(cmd, client).await,
            Cmd::Credentials { cmd, client } => credentials::credentials(cmd, client).await,
            Cmd::Keys { cmd, client } => identity::keys(cmd, client).await,
            Cmd::Members { cmd, client } => identity::members(cmd, client).await,
            Cmd::Workspaces { cmd, client } => identity::workspaces(cmd, client).await,
            Cmd::Audit { cmd, client } => identity::audit(cmd, client).await,
            Cmd::Admin { cmd, store } => serve::admin(cmd, store).await,
            Cmd::SandboxWorker { .. } => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
