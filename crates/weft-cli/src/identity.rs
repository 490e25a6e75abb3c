//! Client commands for API keys, members, workspaces and the audit trail.

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::ClientArgs;
use crate::client::{Api, print_json, s};

/// `weft keys …`.
#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create an API key for this workspace; prints its secret once.
    Create {
        /// viewer, editor, admin or owner (at most your own role).
        #[arg(long)]
        role: String,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds (default: does not expire).
        #[arg(long)]
        expires_in_secs: Option<u64>,
    },
    /// List this workspace's API keys (never their secrets).
    List,
    /// Revoke an API key at once.
    Revoke {
        /// Key id (`key_…`).
        #[arg(value_name = "KEY_ID")]
        key_id: String,
    },
}

/// `weft members …`.
#[derive(Subcommand, Debug)]
pub enum MembersCmd {
    /// List the workspace's members.
    List,
    /// Add a person by email with a role.
    Add {
        /// Their email.
        email: String,
        /// viewer, editor, admin or owner.
        #[arg(long)]
        role: String,
    },
    /// Change a member's role.
    SetRole {
        /// User id (`usr_…`).
        user: String,
        /// New role.
        #[arg(long)]
        role: String,
    },
    /// Remove a member.
    Remove {
        /// User id (`usr_…`).
        user: String,
    },
}

/// `weft workspaces …`.
#[derive(Subcommand, Debug)]
pub enum WorkspacesCmd {
    /// Workspaces you can use.
    List,
    /// Create a workspace in your tenant (owners).
    Create {
        /// Slug (a-z, 0-9, '-').
        slug: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
    },
}

/// `weft audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// List audit entries, newest first.
    List {
        /// The whole tenant's trail (owners) instead of this workspace's.
        #[arg(long)]
        tenant: bool,
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
        /// Cursor from a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Check the tenant's hash chain; exits non-zero naming the first tampered entry.
    Verify,
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn print_key(k: &Value) {
    let state = if k.get("revoked_at").is_some_and(|r| !r.is_null()) {
        "revoked"
    } else {
        "active"
    };
    println!(
        "{}  {}  role={}  {}…  {state}  last used {}",
        s(k, "id"),
        s(k, "name"),
        s(k, "role"),
        s(k, "prefix"),
        k.get("last_used_at")
            .and_then(Value::as_str)
            .unwrap_or("never")
    );
}

pub(crate) async fn keys(cmd: KeysCmd, args: ClientArgs) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let out = match cmd {
        KeysCmd::Create {
            role,
            name,
            expires_in_secs,
        } => {
            let body = json!({"role": role, "name": name, "expires_in_secs": expires_in_secs});
            let v = api.post(api.ws("/api-keys"), &body).await?;
            if !api.args.json {
                print_key(&v);
                println!("secret (shown once): {}", s(&v, "secret"));
                return Ok(());
            }
            v
        }
        KeysCmd::List => {
            let v = api.get(api.ws("/api-keys")).await?;
            if !api.args.json {
                items(&v).for_each(print_key);
                return Ok(());
            }
            v
        }
        KeysCmd::Revoke { key_id } => {
            let v = api
                .delete(api.ws(&format!("/api-keys/{}", crate::client::enc(&key_id))))
                .await?;
            if !api.args.json {
                print_key(&v);
                return Ok(());
            }
            v
        }
    };
    print_json(&out);
    Ok(())
}

fn print_member(m: &Value) {
    println!("{}  {}  {}", s(m, "user_id"), s(m, "email"), s(m, "role"));
}

pub(crate) async fn members(cmd: MembersCmd, args: ClientArgs) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let v = match cmd {
        MembersCmd::List => api.get(api.ws("/members")).await?,
        MembersCmd::Add { email, role } => {
            api.post(api.ws("/members"), &json!({"email": email, "role": role}))
                .await?
        }
        MembersCmd::SetRole { user, role } => {
            api.patch(
                api.ws(&format!("/members/{}", crate::client::enc(&user))),
                &json!({ "role": role }),
            )
            .await?
        }
        MembersCmd::Remove { user } => {
            api.delete(api.ws(&format!("/members/{}", crate::client::enc(&user))))
                .await?;
            if !api.args.json {
                println!("removed {user}");
            }
            return Ok(());
        }
    };
    if api.args.json {
        print_json(&v);
    } else if v.get("items").is_some() {
        items(&v).for_each(print_member);
    } else {
        print_member(&v);
    }
    Ok(())
}

pub(crate) async fn workspaces(cmd: WorkspacesCmd, args: ClientArgs) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let base = format!("{}/api/v1/workspaces", api.args.url.trim_end_matches('/'));
    let v = match cmd {
        WorkspacesCmd::List => api.get(base).await?,
        WorkspacesCmd::Create { slug, name } => {
            api.post(base, &json!({"slug": slug, "name": name})).await?
        }
    };
    if api.args.json {
        print_json(&v);
        return Ok(());
    }
    let one = [v.clone()];
    let list: Vec<&Value> = if v.get("items").is_some() {
        items(&v).collect()
    } else {
        one.iter().collect()
    };
    for w in list {
        println!(
            "{}  {}  {}  role={}",
            s(w, "id"),
            s(w, "slug"),
            s(w, "name"),
            s(w, "role")
        );
    }
    Ok(())
}

pub(crate) async fn audit(cmd: AuditCmd, args: ClientArgs) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    match cmd {
        AuditCmd::List {
            tenant,
            limit,
            cursor,
        } => {
            let mut q = vec![format!(
                "scope={}",
                if tenant { "tenant" } else { "workspace" }
            )];
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            if let Some(c) = cursor {
                q.push(format!("cursor={}", crate::client::enc(&c)));
            }
            let v = api.get(api.ws(&format!("/audit?{}", q.join("&")))).await?;
            if api.args.json {
                print_json(&v);
                return Ok(());
            }
            for e in items(&v) {
                println!(
                    "#{}  {}  {}:{}  {}  {} {}",
                    e.get("seq").and_then(Value::as_i64).unwrap_or(0),
                    s(e, "ts"),
                    s(e, "actor_kind"),
                    s(e, "actor_id"),
                    s(e, "action"),
                    s(e, "object_kind"),
                    s(e, "object_id")
                );
            }
            if let Some(c) = v.get("next_cursor").and_then(Value::as_str) {
                println!("more: --cursor {c}");
            }
        }
        AuditCmd::Verify => {
            let v = api.get(api.ws("/audit/verify")).await?;
            if api.args.json {
                print_json(&v);
            }
            let entries = v.get("entries").and_then(Value::as_i64).unwrap_or(0);
            if v.get("ok").and_then(Value::as_bool) != Some(true) {
                bail!(
                    "the audit trail is broken at entry {}: {}",
                    v.get("broken_seq").and_then(Value::as_i64).unwrap_or(0),
                    s(&v, "reason")
                );
            }
            if !api.args.json {
                println!("audit trail intact: {entries} entries check");
            }
        }
    }
    Ok(())
}
