//! `weft credentials …` and `weft connectors …`: credentials are sent once and never shown.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::ClientArgs;
use crate::client::{Api, enc, print_json, s};

/// `weft credentials …`.
#[derive(Subcommand, Debug)]
pub enum CredentialsCmd {
    /// Create a credential, or replace the values of the one with this name.
    Set {
        /// Credential name (flows refer to it).
        name: String,
        /// Connector whose auth fields the values fill (`weft connectors show NAME` lists them).
        #[arg(long)]
        connector: String,
        /// A field: `FIELD=VALUE`, or `FIELD=@PATH` to read the value from a file (keeps it
        /// out of shell history). Repeatable.
        #[arg(long = "value", value_name = "FIELD=VALUE")]
        values: Vec<String>,
        /// A JSON object of fields, read from a file (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        values_file: Option<PathBuf>,
    },
    /// List credentials: names, connectors and field names (never values).
    List,
    /// Show one credential (never its values).
    Show {
        /// Credential name.
        name: String,
    },
    /// Delete a credential.
    Delete {
        /// Credential name.
        name: String,
    },
    /// Start the OAuth2 authorization of a credential: prints the URL to open in a browser.
    Authorize {
        /// Credential name (of an OAuth2 connector).
        name: String,
    },
}

/// `weft connectors …`.
#[derive(Subcommand, Debug)]
pub enum ConnectorsCmd {
    /// List connectors and their actions.
    List,
    /// Show a connector: its credential fields, triggers and actions.
    Show {
        /// Connector name, e.g. `github`.
        name: String,
    },
    /// Install a declarative connector (a YAML or JSON manifest) into this workspace.
    Install {
        /// The manifest file.
        file: PathBuf,
    },
}

/// Reads `FIELD=VALUE` / `FIELD=@PATH` pairs and a values file into one object.
fn collect_values(pairs: &[String], file: Option<&PathBuf>) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    if let Some(path) = file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
                .context("cannot read the values from stdin")?
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => out.extend(m),
            // Never echo the file: it holds secrets.
            _ => bail!("--values-file must hold a JSON object of field names to string values"),
        }
    }
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--value must be FIELD=VALUE or FIELD=@PATH (got a value without '=')");
        };
        let v = match v.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the value of {k} from {path}"))?;
                text.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text)
                    .to_string()
            }
            None => v.to_string(),
        };
        out.insert(k.to_string(), Value::String(v));
    }
    if out.is_empty() {
        bail!("give at least one --value FIELD=VALUE (or --values-file)");
    }
    Ok(out)
}

fn print_credential(c: &Value) {
    let fields: Vec<&str> = c
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "{}  {}  {}  fields: {}  updated {}",
        s(c, "name"),
        s(c, "connector"),
        s(c, "status"),
        fields.join(","),
        s(c, "updated_at")
    );
}

pub(crate) async fn credentials(cmd: CredentialsCmd, args: ClientArgs) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let v = match cmd {
        CredentialsCmd::Set {
            name,
            connector,
            values,
            values_file,
        } => {
            let values = collect_values(&values, values_file.as_ref())?;
            let body = json!({"name": name, "connector": connector, "values": values});
            api.post(api.ws("/credentials"), &body).await?
        }
        CredentialsCmd::List => {
            let v = api.get(api.ws("/credentials")).await?;
            if !api.args.json {
                for c in v
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    print_credential(c);
                }
                return Ok(());
            }
            v
        }
        CredentialsCmd::Show { name } => {
            api.get(api.ws(&format!("/credentials/{}", enc(&name))))
                .await?
        }
        CredentialsCmd::Authorize { name } => {
            let v = api
                .post(
                    api.ws(&format!("/credentials/{}/authorize", enc(&name))),
                    &json!({}),
                )
                .await?;
            if !api.args.json {
                println!(
                    "open this URL in a browser to authorize {name} (valid until {}):",
                    s(&v, "expires_at")
                );
                println!("{}", s(&v, "authorize_url"));
                println!(
                    "the provider must allow the redirect URI {}",
                    s(&v, "redirect_uri")
                );
                return Ok(());
            }
            v
        }
        CredentialsCmd::Delete { name } => {
            api.delete(api.ws(&format!("/credentials/{}", enc(&name))))
                .await?;
            if !api.args.json {
                println!("deleted credential {name}");
                return Ok(());
            }
            json!({"deleted": name})
        }
    };
    if api.args.json {
        print_json(&v);
    } else {
        print_credential(&v);
    }
    Ok(())
}

pub(crate) async fn connectors(cmd: ConnectorsCmd, args: ClientArgs) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let base = api.args.url.trim_end_matches('/').to_string();
    match cmd {
        ConnectorsCmd::Install { file } => {
            let meta = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            if meta.len() as usize > weft_engine::MAX_MANIFEST_BYTES {
                bail!(
                    "{} is {} bytes; a manifest may be at most {} bytes",
                    file.display(),
                    meta.len(),
                    weft_engine::MAX_MANIFEST_BYTES
                );
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let doc = weft_flow::parse_document(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let v = api.post(api.ws("/connectors"), &doc).await?;
            if api.args.json {
                print_json(&v);
            } else {
                let actions: Vec<&str> = v
                    .get("actions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.get("name").and_then(Value::as_str))
                    .collect();
                println!(
                    "installed {}@{}  actions: {}",
                    s(&v, "name"),
                    s(&v, "version"),
                    actions.join(", ")
                );
            }
        }
        ConnectorsCmd::List => {
            let url = if api.args.key.is_some() {
                api.ws("/connectors")
            } else {
                format!("{base}/api/v1/connectors")
            };
            let v = api.get(url).await?;
            if api.args.json {
                print_json(&v);
                return Ok(());
            }
            for c in v
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!(
                    "{}.{}@{}  {}",
                    s(c, "connector"),
                    s(c, "action"),
                    s(c, "version"),
                    s(c, "description")
                );
            }
        }
        ConnectorsCmd::Show { name } => {
            let url = if api.args.key.is_some() {
                api.ws(&format!("/connectors/{}", enc(&name)))
            } else {
                format!("{base}/api/v1/connectors/{}", enc(&name))
            };
            let v = api.get(url).await?;
            if api.args.json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{}@{}  {}",
                s(&v, "name"),
                s(&v, "version"),
                s(&v, "description")
            );
            println!("credential fields:");
            for f in v
                .pointer("/auth/fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let secret = if f.get("secret").and_then(Value::as_bool) == Some(true) {
                    " (secret)"
                } else {
                    ""
                };
                println!(
                    "  {}{}  for {}  {}",
                    s(f, "name"),
                    secret,
                    s(f, "for"),
                    s(f, "description")
                );
            }
            for t in v
                .get("triggers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("trigger {}: {}", s(t, "name"), s(t, "description"));
            }
            for a in v
                .get("actions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!(
                    "action {}.{}: {}",
                    s(&v, "name"),
                    s(a, "name"),
                    s(a, "description")
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_from_pairs_files_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "ghp_file\n").unwrap();
        let m = collect_values(
            &[
                "token=a=b".into(),
                format!("webhook_secret=@{}", f.display()),
            ],
            None,
        )
        .unwrap();
        assert_eq!(m["token"], "a=b");
        assert_eq!(m["webhook_secret"], "ghp_file");
        let j = dir.path().join("v.json");
        std::fs::write(&j, r#"{"token": "x"}"#).unwrap();
        assert_eq!(collect_values(&[], Some(&j)).unwrap()["token"], "x");
        std::fs::write(&j, "canary-not-json").unwrap();
        let e = collect_values(&[], Some(&j)).unwrap_err().to_string();
        assert!(!e.contains("canary"), "{e}");
        assert!(collect_values(&["novalue".into()], None).is_err());
        assert!(collect_values(&[], None).is_err());
    }
}
