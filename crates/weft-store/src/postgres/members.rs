//! PostgreSQL: workspaces, users, members and invitations, usage and the audit listing (mirrors
//! `sqlite/identity.rs` and `sqlite/audit.rs`; the conformance suite checks they agree).

use serde_json::json;
use sqlx::Row;
use sqlx::postgres::PgRow;
use weft_types::{Millis, Role, Scope, TenantId, UserId, WorkspaceId};

use super::PgStore;
use super::store::{Tx, append, db, parse, read_audit, role, user_for_email};
use crate::*;

fn read_ws(r: &PgRow) -> Result<(WorkspaceRecord, Role), StoreError> {
    Ok((
        WorkspaceRecord {
            scope: Scope {
                tenant: parse(r.try_get(0).map_err(db)?, "tenant id")?,
                workspace: parse(r.try_get(1).map_err(db)?, "workspace id")?,
            },
            slug: r.try_get(2).map_err(db)?,
            name: r.try_get(3).map_err(db)?,
            created_at: r.try_get(4).map_err(db)?,
        },
        role(r.try_get(5).map_err(db)?)?,
    ))
}

async fn member_tx(tx: &mut Tx, t: &str, w: &str, user: &str) -> Result<MemberRecord, StoreError> {
    let r = sqlx::query(
        "SELECT m.user_id, u.email, m.role, m.created_at, m.accepted_at IS NULL FROM members m JOIN users u ON u.id = m.user_id
         WHERE m.tenant_id = $1 AND m.workspace_id = $2 AND m.user_id = $3",
    )
    .bind(t)
    .bind(w)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?
    .ok_or(StoreError::NotFound)?;
    Ok(MemberRecord {
        user_id: parse(r.get(0), "user id")?,
        email: r.get(1),
        role: role(r.get(2))?,
        created_at: r.get(3),
        pending: r.get(4),
    })
}

async fn owners(tx: &mut Tx, t: &str, w: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE tenant_id = $1 AND workspace_id = $2 AND role = 'owner' AND accepted_at IS NOT NULL")
        .bind(t)
        .bind(w)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)
}

const LAST_OWNER: &str = "this is the workspace's last owner; make another member owner first";

impl PgStore {
    /// Whether `user` owns `tenant`.
    pub async fn is_tenant_owner(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        let t = tenant.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tenant_owners WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(&t)
        .bind(user.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
    }

    /// System (a person spans tenants): tenants `user` owns.
    pub async fn owned_tenants(&self, user: UserId) -> Result<Vec<TenantId>, StoreError> {
        let mut tx = self.system_tx().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT tenant_id FROM tenant_owners WHERE user_id = $1 ORDER BY tenant_id",
        )
        .bind(user.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        ids.into_iter().map(|t| parse(t, "tenant id")).collect()
    }

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
        let t = tenant.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let ws = WorkspaceId::new();
        let n = sqlx::query("INSERT INTO workspaces (tenant_id, id, slug, name, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
            .bind(&t)
            .bind(ws.to_string())
            .bind(slug)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "a workspace with the slug '{slug}' already exists in this tenant"
            )));
        }
        if let Some(u) = owner {
            sqlx::query("INSERT INTO members (tenant_id, workspace_id, user_id, role, created_at, accepted_at) VALUES ($1, $2, $3, 'owner', $4, $4)")
                .bind(&t)
                .bind(ws.to_string())
                .bind(u.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "workspace.create",
                object_kind: "workspace",
                object_id: ws.to_string(),
                workspace: Some(ws),
                detail: json!({"slug": slug, "name": name}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
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

    /// A workspace of `tenant` by id or slug.
    pub async fn get_workspace(
        &self,
        tenant: TenantId,
        id_or_slug: &str,
    ) -> Result<WorkspaceRecord, StoreError> {
        let t = tenant.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let r = sqlx::query("SELECT id, slug, name, created_at FROM workspaces WHERE tenant_id = $1 AND (id = $2 OR slug = $2)")
            .bind(&t)
            .bind(id_or_slug)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(db)?;
        Ok(WorkspaceRecord {
            scope: Scope {
                tenant,
                workspace: parse(r.get(0), "workspace id")?,
            },
            slug: r.get(1),
            name: r.get(2),
            created_at: r.get(3),
        })
    }

    /// Sets how many days a workspace keeps finished runs (`None`: for ever).
    pub async fn set_retention(
        &self,
        scope: Scope,
        days: Option<i64>,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "UPDATE workspaces SET retention_days = $3 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(&t)
        .bind(&w)
        .bind(days)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            tx.rollback().await.map_err(db)?;
            return Err(StoreError::NotFound);
        }
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "workspace.retention",
                object_kind: "workspace",
                object_id: w.clone(),
                workspace: Some(scope.workspace),
                detail: json!({"retention_days": days}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    /// How many days a workspace keeps finished runs.
    pub async fn retention(&self, scope: Scope) -> Result<Option<i64>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let days: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT retention_days FROM workspaces WHERE tenant_id = $1 AND id = $2",
        )
        .bind(&t)
        .bind(&w)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        days.ok_or(StoreError::NotFound)
    }

    /// System: finished runs older than their workspace's retention at `now`, oldest first.
    pub async fn expired_runs(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(Scope, weft_types::RunId)>, StoreError> {
        let mut tx = self.system_tx().await?;
        let rows = sqlx::query(
            "SELECT r.tenant_id, r.workspace_id, r.id FROM runs r
             JOIN workspaces w ON w.tenant_id = r.tenant_id AND w.id = r.workspace_id
             WHERE w.retention_days IS NOT NULL
               AND r.status IN ('succeeded', 'failed', 'cancelled')
               AND r.finished_at < $1 - w.retention_days * 86400000
             ORDER BY r.finished_at LIMIT $2",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                let scope = Scope {
                    tenant: parse(r.get(0), "tenant id")?,
                    workspace: parse(r.get(1), "workspace id")?,
                };
                Ok((scope, parse(r.get(2), "run id")?))
            })
            .collect()
    }

    /// Renames a workspace.
    pub async fn rename_workspace(
        &self,
        scope: Scope,
        name: &str,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query("UPDATE workspaces SET name = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(&t)
            .bind(&w)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "workspace.update",
                object_kind: "workspace",
                object_id: w.clone(),
                workspace: Some(scope.workspace),
                detail: json!({"name": name}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    async fn memberships(
        &self,
        user: UserId,
        accepted: bool,
    ) -> Result<Vec<(WorkspaceRecord, Role)>, StoreError> {
        let mut tx = self.system_tx().await?;
        let rows = sqlx::query(
            "SELECT w.tenant_id, w.id, w.slug, w.name, w.created_at, m.role FROM members m
             JOIN workspaces w ON w.tenant_id = m.tenant_id AND w.id = m.workspace_id
             WHERE m.user_id = $1 AND (m.accepted_at IS NOT NULL) = $2 ORDER BY w.tenant_id, w.slug",
        )
        .bind(user.to_string())
        .bind(accepted)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(read_ws).collect()
    }

    /// System (a person spans tenants): workspaces `user` is a member of, with the role in each.
    pub async fn user_workspaces(
        &self,
        user: UserId,
    ) -> Result<Vec<(WorkspaceRecord, Role)>, StoreError> {
        self.memberships(user, true).await
    }

    /// System: invitations waiting for `user` to accept them.
    pub async fn pending_invitations(
        &self,
        user: UserId,
    ) -> Result<Vec<(WorkspaceRecord, Role)>, StoreError> {
        self.memberships(user, false).await
    }

    /// System (login): a user by email.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let r =
            sqlx::query("SELECT id, email, password_hash, created_at FROM users WHERE email = $1")
                .bind(email.trim().to_lowercase())
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        r.map(|r| {
            Ok(UserRecord {
                id: parse(r.get(0), "user id")?,
                email: r.get(1),
                password_hash: r.get(2),
                created_at: r.get(3),
            })
        })
        .transpose()
    }

    /// Sets a user's password hash (and ends their sessions); creates the user if `email` is new.
    pub async fn set_password(
        &self,
        email: &str,
        password_hash: &str,
        now: Millis,
    ) -> Result<UserId, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let id = user_for_email(&mut tx, email, now).await?;
        sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(password_hash)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(id)
    }

    /// A member's role in a workspace, if they are one (accepted).
    pub async fn member_role(
        &self,
        scope: Scope,
        user: UserId,
    ) -> Result<Option<Role>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let r: Option<String> = sqlx::query_scalar("SELECT role FROM members WHERE tenant_id = $1 AND workspace_id = $2 AND user_id = $3 AND accepted_at IS NOT NULL")
            .bind(&t)
            .bind(&w)
            .bind(user.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        r.map(role).transpose()
    }

    /// Members of a workspace, by email.
    pub async fn list_members(&self, scope: Scope) -> Result<Vec<MemberRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(
            "SELECT m.user_id, u.email, m.role, m.created_at, m.accepted_at IS NULL FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.tenant_id = $1 AND m.workspace_id = $2 ORDER BY u.email",
        )
        .bind(&t)
        .bind(&w)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(MemberRecord {
                    user_id: parse(r.get(0), "user id")?,
                    email: r.get(1),
                    role: role(r.get(2))?,
                    created_at: r.get(3),
                    pending: r.get(4),
                })
            })
            .collect()
    }

    /// Adds the user with `email` to a workspace; someone from another tenant is only invited.
    pub async fn add_member(
        &self,
        scope: Scope,
        email: &str,
        role: Role,
        actor: Actor,
        now: Millis,
    ) -> Result<MemberRecord, StoreError> {
        let (t, w) = scope_strs(&scope);
        // Whether the person belongs to some tenant is a cross-tenant fact: read it as system work.
        let mut tx = self.system_tx().await?;
        let user = user_for_email(&mut tx, email, now).await?;
        let u = user.to_string();
        let (here, anywhere): (bool, bool) = {
            let r = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM members WHERE tenant_id = $1 AND user_id = $2 AND accepted_at IS NOT NULL),
                        EXISTS (SELECT 1 FROM members WHERE user_id = $2)",
            )
            .bind(&t)
            .bind(&u)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            (r.get(0), r.get(1))
        };
        // The rest is this tenant's data.
        sqlx::query(
            "SELECT set_config('weft.system', 'off', true), set_config('weft.tenant_id', $1, true)",
        )
        .bind(&t)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let accepted = (here || !anywhere).then_some(now);
        let n = sqlx::query("INSERT INTO members (tenant_id, workspace_id, user_id, role, created_at, accepted_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
            .bind(&t)
            .bind(&w)
            .bind(&u)
            .bind(role.as_str())
            .bind(now)
            .bind(accepted)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "{} is already a member of this workspace",
                email.trim().to_lowercase()
            )));
        }
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "member.add",
                object_kind: "user",
                object_id: u.clone(),
                workspace: Some(scope.workspace),
                detail: json!({"role": role.as_str(), "invited": accepted.is_none()}),
            },
        )
        .await?;
        let m = member_tx(&mut tx, &t, &w, &u).await?;
        tx.commit().await.map_err(db)?;
        Ok(m)
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
        let (t, w) = scope_strs(&scope);
        let u = user.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        // Lock the workspace's owners so two demotions cannot both pass the last-owner check.
        sqlx::query("SELECT 1 FROM members WHERE tenant_id = $1 AND workspace_id = $2 AND role = 'owner' FOR UPDATE")
            .bind(&t)
            .bind(&w)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let old = member_tx(&mut tx, &t, &w, &u).await?;
        if old.role == Role::Owner
            && !old.pending
            && role != Role::Owner
            && owners(&mut tx, &t, &w).await? <= 1
        {
            return Err(StoreError::Rule(LAST_OWNER.into()));
        }
        sqlx::query("UPDATE members SET role = $4 WHERE tenant_id = $1 AND workspace_id = $2 AND user_id = $3")
            .bind(&t)
            .bind(&w)
            .bind(&u)
            .bind(role.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "member.update",
                object_kind: "user",
                object_id: u.clone(),
                workspace: Some(scope.workspace),
                detail: json!({"role": role.as_str(), "previous_role": old.role.as_str()}),
            },
        )
        .await?;
        let m = member_tx(&mut tx, &t, &w, &u).await?;
        tx.commit().await.map_err(db)?;
        Ok(m)
    }

    /// Removes a member; refuses to remove the last owner.
    pub async fn remove_member(
        &self,
        scope: Scope,
        user: UserId,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let u = user.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        sqlx::query("SELECT 1 FROM members WHERE tenant_id = $1 AND workspace_id = $2 AND role = 'owner' FOR UPDATE")
            .bind(&t)
            .bind(&w)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let old = member_tx(&mut tx, &t, &w, &u).await?;
        if old.role == Role::Owner && !old.pending && owners(&mut tx, &t, &w).await? <= 1 {
            return Err(StoreError::Rule(LAST_OWNER.into()));
        }
        sqlx::query(
            "DELETE FROM members WHERE tenant_id = $1 AND workspace_id = $2 AND user_id = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(&u)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "member.remove",
                object_kind: "user",
                object_id: u,
                workspace: Some(scope.workspace),
                detail: json!({"role": old.role.as_str()}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    /// Accepts `user`'s invitation to a workspace; `NotFound` when there is none.
    pub async fn accept_invitation(
        &self,
        user: UserId,
        workspace: WorkspaceId,
        actor: Actor,
        now: Millis,
    ) -> Result<(WorkspaceRecord, Role), StoreError> {
        let mut tx = self.system_tx().await?;
        let r = sqlx::query("SELECT tenant_id, role FROM members WHERE workspace_id = $1 AND user_id = $2 AND accepted_at IS NULL")
            .bind(workspace.to_string())
            .bind(user.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let (t, ro): (String, String) = (r.get(0), r.get(1));
        sqlx::query(
            "SELECT set_config('weft.system', 'off', true), set_config('weft.tenant_id', $1, true)",
        )
        .bind(&t)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("UPDATE members SET accepted_at = $4 WHERE tenant_id = $1 AND workspace_id = $2 AND user_id = $3")
            .bind(&t)
            .bind(workspace.to_string())
            .bind(user.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "member.accept",
                object_kind: "user",
                object_id: user.to_string(),
                workspace: Some(workspace),
                detail: json!({"role": ro}),
            },
        )
        .await?;
        let w = sqlx::query("SELECT tenant_id, id, slug, name, created_at, $3::text FROM workspaces WHERE tenant_id = $1 AND id = $2")
            .bind(&t)
            .bind(workspace.to_string())
            .bind(&ro)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let out = read_ws(&w)?;
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    /// A tenant's audit entries, newest first, before `before`; only one workspace's when given.
    pub async fn list_audit(
        &self,
        tenant: TenantId,
        workspace: Option<WorkspaceId>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let t = tenant.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(
            "SELECT seq, ts, workspace_id, actor_kind, actor_id, via, request_id, action, object_kind, object_id, detail, prev_hash, hash
             FROM audit_log WHERE tenant_id = $1 AND ($2::text IS NULL OR workspace_id = $2) AND ($3::bigint IS NULL OR seq < $3)
             ORDER BY seq DESC LIMIT $4",
        )
        .bind(&t)
        .bind(workspace.map(|w| w.to_string()))
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(rows.iter().map(read_audit).collect())
    }
}
