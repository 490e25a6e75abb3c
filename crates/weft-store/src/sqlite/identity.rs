//! Tenants, workspaces, users, members, API keys, sessions and instance settings on SQLite.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::json;
use weft_types::{KeyId, Millis, Role, Scope, TenantId, UserId, WorkspaceId, random_secret};

use super::SqliteStore;
use super::audit::append;
use super::ops::parse;
use crate::*;

fn role(s: String) -> Result<Role, StoreError> {
    Role::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("bad role {s}")))
}

/// The user with `email`, created (without a password) if missing.
fn user_for_email(c: &Connection, email: &str, now: Millis) -> Result<UserId, StoreError> {
    let email = email.trim().to_lowercase();
    let found: Option<String> = c
        .prepare_cached("SELECT id FROM users WHERE email = ?1")?
        .query_row([&email], |r| r.get(0))
        .optional()?;
    match found {
        Some(id) => parse(id, "user id"),
        None => {
            let id = UserId::new();
            c.prepare_cached("INSERT INTO users (id, email, created_at) VALUES (?1, ?2, ?3)")?
                .execute(params![id.to_string(), email, now])?;
            Ok(id)
        }
    }
}

/// Inserts a key; returns its record and the secret (shown once).
fn insert_key(
    c: &Connection,
    scope: &Scope,
    k: &NewKey,
    now: Millis,
) -> Result<(KeyRecord, String), StoreError> {
    let (t, w) = scope_strs(scope);
    let secret = format!("wft_{}", random_secret());
    let prefix: String = secret.chars().take(12).collect();
    let id = KeyId::new();
    c.prepare_cached(
        "INSERT INTO api_keys (tenant_id, workspace_id, id, name, role, secret_hash, created_at, created_by, prefix, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![t, w, id.to_string(), k.name, k.role.as_str(), hash_secret(&secret), now,
        k.created_by.map(|u| u.to_string()), prefix, k.expires_at])?;
    Ok((
        KeyRecord {
            id,
            name: k.name.clone(),
            role: k.role,
            prefix,
            created_by: k.created_by,
            created_at: now,
            last_used_at: None,
            expires_at: k.expires_at,
            revoked_at: None,
        },
        secret,
    ))
}

fn insert_workspace(
    c: &Connection,
    tenant: TenantId,
    slug: &str,
    name: &str,
    now: Millis,
) -> Result<WorkspaceRecord, StoreError> {
    let ws = WorkspaceId::new();
    let n = c.prepare_cached(
        "INSERT INTO workspaces (tenant_id, id, slug, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
    )?
    .execute(params![tenant.to_string(), ws.to_string(), slug, name, now])?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "a workspace with the slug '{slug}' already exists in this tenant"
        )));
    }
    Ok(WorkspaceRecord {
        scope: Scope {
            tenant,
            workspace: ws,
        },
        slug: slug.into(),
        name: name.into(),
        created_at: now,
    })
}

fn add_member_tx(
    c: &Connection,
    scope: &Scope,
    user: UserId,
    role: Role,
    now: Millis,
    accepted_at: Option<Millis>,
) -> Result<bool, StoreError> {
    let (t, w) = scope_strs(scope);
    Ok(c.prepare_cached(
        "INSERT INTO members (tenant_id, workspace_id, user_id, role, created_at, accepted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?
    .execute(params![t, w, user.to_string(), role.as_str(), now, accepted_at])? == 1)
}

/// Whether `user` already belongs to tenant `t` (an accepted membership in any of its workspaces).
fn in_tenant(c: &Connection, t: &str, user: &str) -> Result<bool, StoreError> {
    Ok(c
        .prepare_cached("SELECT 1 FROM members WHERE tenant_id = ?1 AND user_id = ?2 AND accepted_at IS NOT NULL LIMIT 1")?
        .query_row(params![t, user], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Whether `user` belongs to any tenant at all.
fn in_any_tenant(c: &Connection, user: &str) -> Result<bool, StoreError> {
    Ok(
        c.prepare_cached("SELECT 1 FROM members WHERE user_id = ?1 LIMIT 1")?
            .query_row([user], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

pub(super) fn create_tenant_tx(
    c: &Connection,
    name: &str,
    email: &str,
    limits: &Limits,
    actor: &Actor,
    now: Millis,
) -> Result<Bootstrap, StoreError> {
    let tenant = TenantId::new();
    let t = tenant.to_string();
    c.execute(
        "INSERT INTO tenants (id, name, created_at, max_runs_per_month, max_active_flows, max_concurrent_runs, max_webhook_rps, max_stored_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![t, name, now, limits.runs_per_month, limits.active_flows, limits.concurrent_runs, limits.webhook_rps, limits.stored_bytes],
    )?;
    c.execute(
        "INSERT INTO tenant_usage (tenant_id, month, runs_in_month, stored_bytes) VALUES (?1, '', 0, 0)",
        [&t],
    )?;
    let owner = user_for_email(c, email, now)?;
    c.execute(
        "INSERT INTO tenant_owners (tenant_id, user_id, created_at) VALUES (?1, ?2, ?3)",
        params![t, owner.to_string(), now],
    )?;
    let ws = insert_workspace(c, tenant, "default", "Default", now)?;
    add_member_tx(c, &ws.scope, owner, Role::Owner, now, Some(now))?;
    let (key, owner_key) = insert_key(
        c,
        &ws.scope,
        &NewKey {
            name: "owner".into(),
            role: Role::Owner,
            created_by: Some(owner),
            expires_at: None,
        },
        now,
    )?;
    let audit = |action, kind, id: String, ws: Option<WorkspaceId>, detail| Audit {
        actor: actor.clone(),
        action,
        object_kind: kind,
        object_id: id,
        workspace: ws,
        detail,
    };
    append(
        c,
        &t,
        now,
        &audit(
            "tenant.create",
            "tenant",
            t.clone(),
            None,
            json!({"name": name, "owner": owner.to_string(), "limits": limits}),
        ),
    )?;
    append(
        c,
        &t,
        now,
        &audit(
            "workspace.create",
            "workspace",
            ws.scope.workspace.to_string(),
            Some(ws.scope.workspace),
            json!({"slug": "default"}),
        ),
    )?;
    append(
        c,
        &t,
        now,
        &audit(
            "api_key.create",
            "api_key",
            key.id.to_string(),
            Some(ws.scope.workspace),
            json!({"name": "owner", "role": "owner"}),
        ),
    )?;
    Ok(Bootstrap {
        tenant,
        workspace: ws.scope.workspace,
        owner,
        owner_key,
    })
}

fn read_key(r: &Row<'_>) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        id: parse(r.get(0)?, "key id")?,
        name: r.get(1)?,
        role: role(r.get(2)?)?,
        prefix: r.get(3)?,
        created_by: r
            .get::<_, Option<String>>(4)?
            .map(|u| parse(u, "user id"))
            .transpose()?,
        created_at: r.get(5)?,
        last_used_at: r.get(6)?,
        expires_at: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

fn owners(c: &Connection, t: &str, w: &str) -> Result<i64, StoreError> {
    Ok(c.prepare_cached("SELECT COUNT(*) FROM members WHERE tenant_id = ?1 AND workspace_id = ?2 AND role = 'owner' AND accepted_at IS NOT NULL")?
        .query_row(params![t, w], |r| r.get(0))?)
}

fn member_tx(c: &Connection, t: &str, w: &str, user: &str) -> Result<MemberRecord, StoreError> {
    c.prepare_cached(
        "SELECT m.user_id, u.email, m.role, m.created_at, m.accepted_at IS NULL FROM members m JOIN users u ON u.id = m.user_id
         WHERE m.tenant_id = ?1 AND m.workspace_id = ?2 AND m.user_id = ?3",
    )?
    .query_row(params![t, w, user], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, String>(2)?, r.get(3)?, r.get(4)?)))
    .optional()?
    .ok_or(StoreError::NotFound)
    .and_then(|(id, email, ro, created_at, pending)| Ok(MemberRecord { user_id: parse(id, "user id")?, email, role: role(ro)?, created_at, pending }))
}

fn read_tenant(r: &Row<'_>) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: parse(r.get(0)?, "tenant id")?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        limits: Limits {
            runs_per_month: r.get(3)?,
            active_flows: r.get(4)?,
            concurrent_runs: r.get(5)?,
            webhook_rps: r.get(6)?,
            stored_bytes: r.get(7)?,
        },
        weight: r.get(8)?,
    })
}

const TENANT_COLS: &str = "id, name, created_at, max_runs_per_month, max_active_flows, max_concurrent_runs, max_webhook_rps, max_stored_bytes, weight";

impl SqliteStore {
    // ---- tenants ----------------------------------------------------------------------------

    /// On an empty store, creates the default tenant, its `default` workspace and owner, and returns the owner key (once).
    pub async fn bootstrap_if_empty(&self, now: Millis) -> Result<Option<Bootstrap>, StoreError> {
        self.write(move |c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM tenants", [], |r| r.get(0))?;
            if n > 0 {
                return Ok(None);
            }
            create_tenant_tx(
                c,
                "default",
                "owner@localhost",
                &Limits::default(),
                &Actor::system("bootstrap"),
                now,
            )
            .map(Some)
        })
        .await
    }

    /// Creates a tenant with its `default` workspace and owner (an existing user when the email
    /// is known); returns the owner key (once).
    pub async fn create_tenant(
        &self,
        name: &str,
        owner_email: &str,
        limits: Limits,
        actor: Actor,
        now: Millis,
    ) -> Result<Bootstrap, StoreError> {
        let (name, email) = (name.to_string(), owner_email.to_string());
        self.write(move |c| create_tenant_tx(c, &name, &email, &limits, &actor, now))
            .await
    }

    /// Whether `user` owns `tenant` (may create workspaces and read the tenant's whole trail).
    pub async fn is_tenant_owner(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT 1 FROM tenant_owners WHERE tenant_id = ?1 AND user_id = ?2",
            )?
            .query_row(params![tenant.to_string(), user.to_string()], |_| Ok(()))
            .optional()?
            .is_some())
        })
        .await
    }

    /// Tenants `user` owns.
    pub async fn owned_tenants(&self, user: UserId) -> Result<Vec<TenantId>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT tenant_id FROM tenant_owners WHERE user_id = ?1 ORDER BY tenant_id",
            )?;
            let ids = st
                .query_map([user.to_string()], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids.into_iter().map(|t| parse(t, "tenant id")).collect()
        })
        .await
    }

    /// System (instance admin): tenants ordered by id, after `after`.
    pub async fn list_tenants(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {TENANT_COLS} FROM tenants WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let mut rows = st.query(params![after.unwrap_or_default(), limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read_tenant(r)?);
            }
            Ok(out)
        })
        .await
    }

    /// A tenant.
    pub async fn get_tenant(&self, tenant: TenantId) -> Result<TenantRecord, StoreError> {
        self.read(move |c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"))?;
            let mut rows = st.query([tenant.to_string()])?;
            match rows.next()? {
                Some(r) => read_tenant(r),
                None => Err(StoreError::NotFound),
            }
        })
        .await
    }

    /// Sets a tenant's plan limits and weight.
    pub async fn set_tenant_plan(
        &self,
        tenant: TenantId,
        limits: Limits,
        weight: i64,
        actor: Actor,
        now: Millis,
    ) -> Result<TenantRecord, StoreError> {
        self.patch_tenant_plan(tenant, Some(limits), Some(weight), actor, now)
            .await
    }

    /// Changes a tenant's plan: the given parts replace the stored ones, in one transaction.
    pub async fn patch_tenant_plan(
        &self,
        tenant: TenantId,
        limits: Option<Limits>,
        weight: Option<i64>,
        actor: Actor,
        now: Millis,
    ) -> Result<TenantRecord, StoreError> {
        self.write(move |c| {
            let t = tenant.to_string();
            let cur = {
                let mut st = c.prepare_cached(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"))?;
                let mut rows = st.query([&t])?;
                match rows.next()? {
                    Some(r) => read_tenant(r)?,
                    None => return Err(StoreError::NotFound),
                }
            };
            let limits = limits.clone().unwrap_or(cur.limits);
            let weight = weight.unwrap_or(cur.weight);
            let n = c.execute(
                "UPDATE tenants SET max_runs_per_month = ?2, max_active_flows = ?3, max_concurrent_runs = ?4, max_webhook_rps = ?5, max_stored_bytes = ?6, weight = ?7 WHERE id = ?1",
                params![t, limits.runs_per_month, limits.active_flows, limits.concurrent_runs, limits.webhook_rps, limits.stored_bytes, weight],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            append(c, &t, now, &Audit {
                actor: actor.clone(), action: "tenant.update", object_kind: "tenant", object_id: t.clone(), workspace: None,
                detail: json!({"limits": limits, "weight": weight}),
            })?;
            let mut st = c.prepare_cached(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"))?;
            let mut rows = st.query([&t])?;
            match rows.next()? {
                Some(r) => read_tenant(r),
                None => Err(StoreError::NotFound),
            }
        })
        .await
    }

    /// A tenant's consumption.
    pub async fn usage(&self, tenant: TenantId, now: Millis) -> Result<Usage, StoreError> {
        self.read(move |c| {
            let t = tenant.to_string();
            let (month, runs_in_month, stored_bytes) = c
                .prepare_cached("SELECT month, runs_in_month, stored_bytes FROM tenant_usage WHERE tenant_id = ?1")?
                .query_row([&t], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))
                .optional()?
                .unwrap_or_default();
            let active_flows = c
                .prepare_cached("SELECT COUNT(*) FROM flows WHERE tenant_id = ?1 AND published_version IS NOT NULL")?
                .query_row([&t], |r| r.get(0))?;
            let running = c
                .prepare_cached("SELECT COUNT(*) FROM runs WHERE tenant_id = ?1 AND status = 'running'")?
                .query_row([&t], |r| r.get(0))?;
            // A count from an earlier month is stale: this month has none yet.
            let current = crate::quota::month_of(now);
            let runs_in_month = if month == current { runs_in_month } else { 0 };
            Ok(Usage { month: current, runs_in_month, stored_bytes, active_flows, running })
        })
        .await
    }

    // ---- workspaces -------------------------------------------------------------------------

    /// Creates a workspace in `tenant`; `owner` (if any) becomes its owner.
    pub async fn create_workspace(
        &self,
        tenant: TenantId,
        slug: &str,
        name: &str,
        owner: Option<UserId>,
        actor: Actor,
        now: Millis,
    ) -> Result<WorkspaceRecord, StoreError> {
        let (slug, name) = (slug.to_string(), name.to_string());
        self.write(move |c| {
            let ws = insert_workspace(c, tenant, &slug, &name, now)?;
            if let Some(u) = owner {
                add_member_tx(c, &ws.scope, u, Role::Owner, now, Some(now))?;
            }
            append(
                c,
                &tenant.to_string(),
                now,
                &Audit {
                    actor: actor.clone(),
                    action: "workspace.create",
                    object_kind: "workspace",
                    object_id: ws.scope.workspace.to_string(),
                    workspace: Some(ws.scope.workspace),
                    detail: json!({"slug": slug, "name": name}),
                },
            )?;
            Ok(ws)
        })
        .await
    }

    /// A workspace of `tenant` by id or slug.
    pub async fn get_workspace(
        &self,
        tenant: TenantId,
        id_or_slug: &str,
    ) -> Result<WorkspaceRecord, StoreError> {
        let key = id_or_slug.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT id, slug, name, created_at FROM workspaces WHERE tenant_id = ?1 AND (id = ?2 OR slug = ?2)")?
                .query_row(params![tenant.to_string(), key], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?
                .ok_or(StoreError::NotFound)
                .and_then(|(id, slug, name, created_at)| {
                    Ok(WorkspaceRecord { scope: Scope { tenant, workspace: parse(id, "workspace id")? }, slug, name, created_at })
                })
        })
        .await
    }

    /// Sets how many days a workspace keeps finished runs (`None`: for ever).
    pub async fn set_retention(
        &self,
        scope: Scope,
        days: Option<i64>,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n = c.execute(
                "UPDATE workspaces SET retention_days = ?3 WHERE tenant_id = ?1 AND id = ?2",
                params![t, w, days],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            append(
                c,
                &t,
                now,
                &Audit {
                    actor: actor.clone(),
                    action: "workspace.retention",
                    object_kind: "workspace",
                    object_id: w.clone(),
                    workspace: Some(scope.workspace),
                    detail: json!({"retention_days": days}),
                },
            )
        })
        .await
    }

    /// How many days a workspace keeps finished runs.
    pub async fn retention(&self, scope: Scope) -> Result<Option<i64>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT retention_days FROM workspaces WHERE tenant_id = ?1 AND id = ?2",
            )?;
            let mut rows = st.query(params![t, w])?;
            match rows.next()? {
                Some(r) => Ok(r.get(0)?),
                None => Err(StoreError::NotFound),
            }
        })
        .await
    }

    /// System: finished runs older than their workspace's retention at `now`, oldest first.
    pub async fn expired_runs(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(Scope, weft_types::RunId)>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT r.tenant_id, r.workspace_id, r.id FROM runs r
                 JOIN workspaces w ON w.tenant_id = r.tenant_id AND w.id = r.workspace_id
                 WHERE w.retention_days IS NOT NULL
                   AND r.status IN ('succeeded', 'failed', 'cancelled')
                   AND r.finished_at < ?1 - w.retention_days * 86400000
                 ORDER BY r.finished_at LIMIT ?2",
            )?;
            let mut rows = st.query(params![now, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let scope = Scope {
                    tenant: parse(r.get(0)?, "tenant id")?,
                    workspace: parse(r.get(1)?, "workspace id")?,
                };
                out.push((scope, parse(r.get(2)?, "run id")?));
            }
            Ok(out)
        })
        .await
    }

    /// Renames a workspace.
    pub async fn rename_workspace(
        &self,
        scope: Scope,
        name: &str,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n = c.execute(
                "UPDATE workspaces SET name = ?3 WHERE tenant_id = ?1 AND id = ?2",
                params![t, w, name],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            append(
                c,
                &t,
                now,
                &Audit {
                    actor: actor.clone(),
                    action: "workspace.update",
                    object_kind: "workspace",
                    object_id: w.clone(),
                    workspace: Some(scope.workspace),
                    detail: json!({"name": name}),
                },
            )
        })
        .await
    }

    /// Workspaces `user` is a member of (across tenants), with the role in each.
    pub async fn user_workspaces(
        &self,
        user: UserId,
    ) -> Result<Vec<(WorkspaceRecord, Role)>, StoreError> {
        self.memberships(user, true).await
    }

    /// Invitations waiting for `user` to accept them.
    pub async fn pending_invitations(
        &self,
        user: UserId,
    ) -> Result<Vec<(WorkspaceRecord, Role)>, StoreError> {
        self.memberships(user, false).await
    }

    async fn memberships(
        &self,
        user: UserId,
        accepted: bool,
    ) -> Result<Vec<(WorkspaceRecord, Role)>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT w.tenant_id, w.id, w.slug, w.name, w.created_at, m.role FROM members m
                 JOIN workspaces w ON w.tenant_id = m.tenant_id AND w.id = m.workspace_id
                 WHERE m.user_id = ?1 AND (m.accepted_at IS NOT NULL) = ?2 ORDER BY w.tenant_id, w.slug",
            )?;
            let mut rows = st.query(params![user.to_string(), accepted])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((
                    WorkspaceRecord {
                        scope: Scope {
                            tenant: parse(r.get(0)?, "tenant id")?,
                            workspace: parse(r.get(1)?, "workspace id")?,
                        },
                        slug: r.get(2)?,
                        name: r.get(3)?,
                        created_at: r.get(4)?,
                    },
                    role(r.get(5)?)?,
                ));
            }
            Ok(out)
        })
        .await
    }

    // ---- users and members ----------------------------------------------------------------

    /// System (login): a user by email.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let email = email.trim().to_lowercase();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, email, password_hash, created_at FROM users WHERE email = ?1",
            )?
            .query_row([email], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?
            .map(|(id, email, password_hash, created_at)| {
                Ok(UserRecord {
                    id: parse(id, "user id")?,
                    email,
                    password_hash,
                    created_at,
                })
            })
            .transpose()
        })
        .await
    }

    /// Sets a user's password hash (and ends their sessions); creates the user if `email` is new.
    pub async fn set_password(
        &self,
        email: &str,
        password_hash: &str,
        now: Millis,
    ) -> Result<UserId, StoreError> {
        let (email, hash) = (email.to_string(), password_hash.to_string());
        self.write(move |c| {
            let id = user_for_email(c, &email, now)?;
            c.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![id.to_string(), hash],
            )?;
            c.execute("DELETE FROM sessions WHERE user_id = ?1", [id.to_string()])?;
            Ok(id)
        })
        .await
    }

    /// A member's role in a workspace, if they are one.
    pub async fn member_role(
        &self,
        scope: Scope,
        user: UserId,
    ) -> Result<Option<Role>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            c.prepare_cached("SELECT role FROM members WHERE tenant_id = ?1 AND workspace_id = ?2 AND user_id = ?3 AND accepted_at IS NOT NULL")?
                .query_row(params![t, w, user.to_string()], |r| r.get::<_, String>(0))
                .optional()?
                .map(role)
                .transpose()
        })
        .await
    }

    /// Members of a workspace, by email.
    pub async fn list_members(&self, scope: Scope) -> Result<Vec<MemberRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT m.user_id, u.email, m.role, m.created_at, m.accepted_at IS NULL FROM members m JOIN users u ON u.id = m.user_id
                 WHERE m.tenant_id = ?1 AND m.workspace_id = ?2 ORDER BY u.email",
            )?;
            let mut rows = st.query(params![t, w])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(MemberRecord { user_id: parse(r.get(0)?, "user id")?, email: r.get(1)?, role: role(r.get(2)?)?, created_at: r.get(3)?, pending: r.get(4)? });
            }
            Ok(out)
        })
        .await
    }

    /// Adds the user with `email` (created without a password if new) to a workspace.
    pub async fn add_member(
        &self,
        scope: Scope,
        email: &str,
        role: Role,
        actor: Actor,
        now: Millis,
    ) -> Result<MemberRecord, StoreError> {
        let email = email.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let user = user_for_email(c, &email, now)?;
            let u = user.to_string();
            // Someone who already belongs to another tenant must accept first: one tenant's
            // admin cannot drop a workspace into another tenant's member's account.
            let accepted = (in_tenant(c, &t, &u)? || !in_any_tenant(c, &u)?).then_some(now);
            if !add_member_tx(c, &scope, user, role, now, accepted)? {
                return Err(StoreError::Conflict(format!(
                    "{} is already a member of this workspace",
                    email.trim().to_lowercase()
                )));
            }
            append(
                c,
                &t,
                now,
                &Audit {
                    actor: actor.clone(),
                    action: "member.add",
                    object_kind: "user",
                    object_id: user.to_string(),
                    workspace: Some(scope.workspace),
                    detail: json!({"role": role.as_str(), "invited": accepted.is_none()}),
                },
            )?;
            member_tx(c, &t, &w, &user.to_string())
        })
        .await
    }

    /// Changes a member's role; refuses to demote the last owner.
    pub async fn set_member_role(
        &self,
        scope: Scope,
        user: UserId,
        role: Role,
        actor: Actor,
        now: Millis,
    ) -> Result<MemberRecord, StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let u = user.to_string();
            let old = member_tx(c, &t, &w, &u)?;
            if old.role == Role::Owner && !old.pending && role != Role::Owner && owners(c, &t, &w)? <= 1 {
                return Err(StoreError::Rule("this is the workspace's last owner; make another member owner first".into()));
            }
            c.execute("UPDATE members SET role = ?4 WHERE tenant_id = ?1 AND workspace_id = ?2 AND user_id = ?3", params![t, w, u, role.as_str()])?;
            append(c, &t, now, &Audit {
                actor: actor.clone(), action: "member.update", object_kind: "user", object_id: u.clone(),
                workspace: Some(scope.workspace), detail: json!({"role": role.as_str(), "previous_role": old.role.as_str()}),
            })?;
            member_tx(c, &t, &w, &u)
        })
        .await
    }

    /// Removes a member; refuses to remove the last owner.
    pub async fn remove_member(
        &self,
        scope: Scope,
        user: UserId,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let u = user.to_string();
            let old = member_tx(c, &t, &w, &u)?;
            if old.role == Role::Owner && !old.pending && owners(c, &t, &w)? <= 1 {
                return Err(StoreError::Rule(
                    "this is the workspace's last owner; make another member owner first".into(),
                ));
            }
            c.execute(
                "DELETE FROM members WHERE tenant_id = ?1 AND workspace_id = ?2 AND user_id = ?3",
                params![t, w, u],
            )?;
            append(
                c,
                &t,
                now,
                &Audit {
                    actor: actor.clone(),
                    action: "member.remove",
                    object_kind: "user",
                    object_id: u,
                    workspace: Some(scope.workspace),
                    detail: json!({"role": old.role.as_str()}),
                },
            )
        })
        .await
    }

    /// Accepts `user`'s invitation to a workspace; `NotFound` when there is none.
    pub async fn accept_invitation(
        &self,
        user: UserId,
        workspace: WorkspaceId,
        actor: Actor,
        now: Millis,
    ) -> Result<(WorkspaceRecord, Role), StoreError> {
        self.write(move |c| {
            let (t, ro): (String, String) = c
                .prepare_cached("SELECT tenant_id, role FROM members WHERE workspace_id = ?1 AND user_id = ?2 AND accepted_at IS NULL")?
                .query_row(params![workspace.to_string(), user.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or(StoreError::NotFound)?;
            c.execute(
                "UPDATE members SET accepted_at = ?4 WHERE tenant_id = ?1 AND workspace_id = ?2 AND user_id = ?3",
                params![t, workspace.to_string(), user.to_string(), now],
            )?;
            append(c, &t, now, &Audit {
                actor: actor.clone(), action: "member.accept", object_kind: "user", object_id: user.to_string(),
                workspace: Some(workspace), detail: json!({"role": ro}),
            })?;
            let (slug, name, created_at): (String, String, Millis) = c
                .prepare_cached("SELECT slug, name, created_at FROM workspaces WHERE tenant_id = ?1 AND id = ?2")?
                .query_row(params![t, workspace.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok((
                WorkspaceRecord { scope: Scope { tenant: parse(t, "tenant id")?, workspace }, slug, name, created_at },
                role(ro)?,
            ))
        })
        .await
    }

    // ---- API keys ---------------------------------------------------------------------------

    /// System: resolves an API key secret to its identity, if the key exists, is not revoked
    /// and has not expired.
    pub async fn resolve_key(
        &self,
        secret: &str,
        now: Millis,
    ) -> Result<Option<KeyIdentity>, StoreError> {
        let hash = hash_secret(secret);
        self.read(move |c| {
            c.prepare_cached(
                "SELECT k.tenant_id, k.workspace_id, w.slug, k.role, k.id, k.created_by, k.last_used_at, m.role FROM api_keys k
                 JOIN workspaces w ON w.tenant_id = k.tenant_id AND w.id = k.workspace_id
                 LEFT JOIN members m ON m.tenant_id = k.tenant_id AND m.workspace_id = k.workspace_id AND m.user_id = k.created_by AND m.accepted_at IS NOT NULL
                 WHERE k.secret_hash = ?1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?2)",
            )?
            .query_row(params![hash, now], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, Option<String>>(5)?, r.get(6)?, r.get::<_, Option<String>>(7)?))
            })
            .optional()?
            // A key acts for its creator: it dies with their membership and never exceeds their
            // current role, so removing or demoting a person also disarms their keys.
            .filter(|row| row.5.is_none() || row.7.is_some())
            .map(|(t, w, slug, ro, id, by, last_used_at, member_role)| {
                let key_role = role(ro)?;
                let effective = match member_role {
                    Some(m) => key_role.min(role(m)?),
                    None => key_role,
                };
                Ok(KeyIdentity {
                    scope: Scope { tenant: parse(t, "tenant id")?, workspace: parse(w, "workspace id")? },
                    workspace_slug: slug,
                    role: effective,
                    key_id: parse(id, "key id")?,
                    user: by.map(|u| parse(u, "user id")).transpose()?,
                    last_used_at,
                })
            })
            .transpose()
        })
        .await
    }

    /// Records that a key was used (callers throttle this).
    pub async fn touch_key(&self, scope: Scope, key: KeyId, now: Millis) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            c.prepare_cached("UPDATE api_keys SET last_used_at = ?4 WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3")?
                .execute(params![t, w, key.to_string(), now])?;
            Ok(())
        })
        .await
    }

    /// Creates an API key; returns it and its secret (shown once).
    pub async fn create_key(
        &self,
        scope: Scope,
        key: NewKey,
        actor: Actor,
        now: Millis,
    ) -> Result<(KeyRecord, String), StoreError> {
        self.write(move |c| {
            let (rec, secret) = insert_key(c, &scope, &key, now)?;
            append(c, &scope.tenant.to_string(), now, &Audit {
                actor: actor.clone(), action: "api_key.create", object_kind: "api_key", object_id: rec.id.to_string(),
                workspace: Some(scope.workspace), detail: json!({"name": rec.name, "role": rec.role.as_str(), "expires_at": rec.expires_at}),
            })?;
            Ok((rec, secret))
        })
        .await
    }

    /// The workspace's keys, newest first.
    pub async fn list_keys(&self, scope: Scope) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT id, name, role, prefix, created_by, created_at, last_used_at, expires_at, revoked_at FROM api_keys
                 WHERE tenant_id = ?1 AND workspace_id = ?2 ORDER BY id DESC",
            )?;
            let mut rows = st.query(params![t, w])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read_key(r)?);
            }
            Ok(out)
        })
        .await
    }

    /// Revokes a key (revoking twice changes nothing).
    pub async fn revoke_key(
        &self,
        scope: Scope,
        key: KeyId,
        actor: Actor,
        now: Millis,
    ) -> Result<KeyRecord, StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let k = key.to_string();
            let n = c.execute(
                "UPDATE api_keys SET revoked_at = ?4 WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND revoked_at IS NULL",
                params![t, w, k, now],
            )?;
            if n == 1 {
                append(c, &t, now, &Audit {
                    actor: actor.clone(), action: "api_key.revoke", object_kind: "api_key", object_id: k.clone(),
                    workspace: Some(scope.workspace), detail: json!({}),
                })?;
            }
            let mut st = c.prepare_cached(
                "SELECT id, name, role, prefix, created_by, created_at, last_used_at, expires_at, revoked_at FROM api_keys
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
            )?;
            let mut rows = st.query(params![t, w, k])?;
            match rows.next()? {
                Some(r) => read_key(r),
                None => Err(StoreError::NotFound),
            }
        })
        .await
    }

    // ---- sessions ---------------------------------------------------------------------------

    /// Stores a session under the hash of its cookie secret.
    pub async fn create_session(
        &self,
        user: UserId,
        secret_hash: String,
        csrf_token: String,
        expires_at: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
            c.execute(
                "INSERT INTO sessions (secret_hash, user_id, csrf_token, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![secret_hash, user.to_string(), csrf_token, now, expires_at],
            )?;
            Ok(())
        })
        .await
    }

    /// System: the live session with this secret hash.
    pub async fn resolve_session(
        &self,
        secret_hash: String,
        now: Millis,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT s.user_id, u.email, s.csrf_token, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.secret_hash = ?1 AND s.expires_at > ?2",
            )?
            .query_row(params![secret_hash, now], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?
            .map(|(u, email, csrf_token, expires_at)| Ok(SessionRecord { user_id: parse(u, "user id")?, email, csrf_token, expires_at }))
            .transpose()
        })
        .await
    }

    /// Ends a session.
    pub async fn delete_session(&self, secret_hash: String) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM sessions WHERE secret_hash = ?1",
                [secret_hash.clone()],
            )?;
            Ok(())
        })
        .await
    }

    // ---- instance settings ------------------------------------------------------------------

    /// An instance setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT value FROM instance_settings WHERE key = ?1")?
                    .query_row([key], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    /// Sets an instance setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |c| {
            c.execute(
                "INSERT INTO instance_settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
        .await
    }
}
