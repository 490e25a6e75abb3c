//! `weft alerts …`: a workspace's alert rules and their notifications.

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::ClientArgs;
use crate::client::{Api, enc, print_json, s};

/// `weft alerts …`.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum AlertsCmd {
    /// Create a rule that notifies a webhook, Slack or email.
    Create {
        /// Rule name.
        name: String,
        /// run_failed, error_new, error_spike, run_stuck, credential_reauth or quota_near.
        #[arg(long)]
        on: String,
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// After notifying an incident, only count it for this long (default 1h).
        #[arg(long)]
        quiet: Option<String>,
        /// For run_stuck: queued or running for longer than this (e.g. 30m).
        #[arg(long)]
        stuck_after: Option<String>,
        /// For error_spike: failures of one error group within --window that make a spike.
        #[arg(long)]
        threshold: Option<i64>,
        /// For error_spike: the window --threshold counts in (default 1h).
        #[arg(long)]
        window: Option<String>,
        /// For quota_near: the share of a plan limit, in percent, that alerts (default 80).
        #[arg(long)]
        percent: Option<i64>,
        /// POST alerts to this URL (signed when --credential names a webhook credential).
        #[arg(long, conflicts_with_all = ["slack", "email"])]
        webhook: Option<String>,
        /// Post alerts to this Slack channel (with --credential, a slack credential).
        #[arg(long, conflicts_with = "email")]
        slack: Option<String>,
        /// Email alerts to this address (with --credential, an email credential).
        #[arg(long)]
        email: Option<String>,
        /// The credential the channel uses.
        #[arg(long)]
        credential: Option<String>,
    },
    /// List the rules.
    List,
    /// Delete a rule (with its open incidents and undelivered notifications).
    Delete {
        /// Rule name.
        name: String,
    },
    /// A rule's latest notifications: delivered, waiting for a retry, or given up.
    Deliveries {
        /// Rule name.
        name: String,
    },
}

/// Runs `weft alerts …`.
pub(crate) async fn alerts(cmd: AlertsCmd, args: ClientArgs) -> anyhow::Result<()> {
    let json_out = args.json;
    let api = Api::new(args)?;
    match cmd {
        AlertsCmd::Create {
            name,
            on,
            flow,
            quiet,
            stuck_after,
            threshold,
            window,
            percent,
            webhook,
            slack,
            email,
            credential,
        } => {
            let notify = match (webhook, slack, email, credential) {
                (Some(url), None, None, credential) => {
                    json!({"webhook": {"url": url, "credential": credential}})
                }
                (None, Some(channel), None, Some(c)) => {
                    json!({"slack": {"channel": channel, "credential": c}})
                }
                (None, None, Some(to), Some(c)) => json!({"email": {"to": to, "credential": c}}),
                (None, Some(_), None, None) | (None, None, Some(_), None) => {
                    bail!("--slack and --email need --credential (a slack or email credential)")
                }
                _ => {
                    bail!("say where to notify: --webhook URL, --slack CHANNEL or --email ADDRESS")
                }
            };
            let mut body = json!({"name": name, "on": on, "notify": notify});
            for (k, v) in [
                ("flow", flow),
                ("quiet", quiet),
                ("stuck_after", stuck_after),
                ("window", window),
            ] {
                if let Some(v) = v {
                    body[k] = Value::String(v);
                }
            }
            if let Some(n) = threshold {
                body["threshold"] = json!(n);
            }
            if let Some(p) = percent {
                body["percent"] = json!(p);
            }
            let v = api.post(api.ws("/alerts"), &body).await?;
            if json_out {
                print_json(&v);
            } else {
                println!("alert rule {} created (on {})", s(&v, "name"), s(&v, "on"));
            }
        }
        AlertsCmd::List => {
            let v = api.get(api.ws("/alerts")).await?;
            if json_out {
                print_json(&v);
            } else {
                for r in v["items"].as_array().into_iter().flatten() {
                    let spec = &r["spec"];
                    let target = spec["notify"]
                        .as_object()
                        .and_then(|o| o.iter().next())
                        .map(|(k, v)| {
                            let to = ["url", "channel", "to"]
                                .iter()
                                .find_map(|f| v[*f].as_str())
                                .unwrap_or("");
                            format!("{k} {to}")
                        })
                        .unwrap_or_default();
                    println!(
                        "{} on {}{} → {} (quiet {})",
                        s(r, "name"),
                        s(r, "on"),
                        spec["flow"]
                            .as_str()
                            .map(|f| format!(" of {f}"))
                            .unwrap_or_default(),
                        target,
                        spec["quiet"].as_str().unwrap_or("1h")
                    );
                }
            }
        }
        AlertsCmd::Delete { name } => {
            api.delete(api.ws(&format!("/alerts/{}", enc(&name))))
                .await?;
            if !json_out {
                println!("alert rule {name} deleted");
            }
        }
        AlertsCmd::Deliveries { name } => {
            let v = api
                .get(api.ws(&format!("/alerts/{}/deliveries", enc(&name))))
                .await?;
            if json_out {
                print_json(&v);
            } else {
                for d in v["items"].as_array().into_iter().flatten() {
                    let state = match (d["delivered_at"].as_str(), d["error"].as_str()) {
                        (Some(at), _) => format!("delivered {at}"),
                        (None, Some(e)) => {
                            format!("not delivered after {} attempt(s): {e}", d["attempts"])
                        }
                        (None, None) => "queued".to_string(),
                    };
                    println!(
                        "#{} {} {}: {} ({} held back) — {state}",
                        d["id"],
                        s(d, "created_at"),
                        s(d, "incident"),
                        d["payload"]["summary"].as_str().unwrap_or(""),
                        d["payload"]["suppressed"]
                    );
                }
            }
        }
    }
    Ok(())
}
