//! PostgreSQL: API keys, tenants' plans, sessions and instance settings (mirrors
//! `sqlite/identity.rs`; the conformance suite checks they agree).

use serde_json::json;
use sqlx::Row;
use sqlx::postgres::PgRow;
use weft_types::{KeyId, Millis, Scope, TenantId, UserId, random_secret};

use super::PgStore;
use super::store::{append, db, parse, role};
use crate::*;

const KEY_COLS: &str =
    "id, name, role, prefix, created_by, created_at, last_used_at, expires_at, revoked_at";

fn read_key(r: &PgRow) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        id: parse(r.try_get(0).map_err(db)?, "key id")?,
        name: r.try_get(1).map_err(db)?,
        role: role(r.try_get(2).map_err(db)?)?,
        prefix: r.try_get(3).map_err(db)?,
        created_by: r
            .try_get::<Option<String>, _>(4)
            .map_err(db)?
            .map(|u| parse(u, "user id"))
            .transpose()?,
        created_at: r.try_get(5).map_err(db)?,
        last_used_at: r.try_get(6).map_err(db)?,
        expires_at: r.try_get(7).map_err(db)?,
        revoked_at: r.try_get(8).map_err(db)?,
    })
}

const TENANT_COLS: &str = "id, name, created_at, max_runs_per_month, max_active_flows, max_concurrent_runs, max_webhook_rps, max_stored_bytes, weight";

fn read_tenant(r: &PgRow) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: parse(r.try_get(0).map_err(db)?, "tenant id")?,
        name: r.try_get(1).map_err(db)?,
        created_at: r.try_get(2).map_err(db)?,
        limits: Limits {
            runs_per_month: r.try_get(3).map_err(db)?,
            active_flows: r.try_get(4).map_err(db)?,
            concurrent_runs: r.try_get(5).map_err(db)?,
            webhook_rps: r.try_get(6).map_err(db)?,
            stored_bytes: r.try_get(7).map_err(db)?,
        },
        weight: r.try_get(8).map_err(db)?,
    })
}

impl PgStore {
    // ---- API keys ---------------------------------------------------------------------------

    /// Creates an API key; returns it and its secret (shown once).
    pub async fn create_key(
        &self,
        scope: Scope,
        key: NewKey,
        actor: Actor,
        now: Millis,
    ) -> Result<(KeyRecord, String), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let secret = format!("wft_{}", random_secret());
        let prefix: String = secret.chars().take(12).collect();
        let id = KeyId::new();
        sqlx::query(
            "INSERT INTO api_keys (tenant_id, workspace_id, id, name, role, secret_hash, created_at, created_by, prefix, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&t)
        .bind(&w)
        .bind(id.to_string())
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(hash_secret(&secret))
        .bind(now)
        .bind(key.created_by.map(|u| u.to_string()))
        .bind(&prefix)
        .bind(key.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        append(&mut tx, &t, now, &Audit {
            actor,
            action: "api_key.create",
            object_kind: "api_key",
            object_id: id.to_string(),
            workspace: Some(scope.workspace),
            detail: json!({"name": key.name, "role": key.role.as_str(), "expires_at": key.expires_at}),
        })
        .await?;
        tx.commit().await.map_err(db)?;
        let rec = KeyRecord {
            id,
            name: key.name,
            role: key.role,
            prefix,
            created_by: key.created_by,
            created_at: now,
            last_used_at: None,
            expires_at: key.expires_at,
            revoked_at: None,
        };
        Ok((rec, secret))
    }

    /// The workspace's keys, newest first.
    pub async fn list_keys(&self, scope: Scope) -> Result<Vec<KeyRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let sql = format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE tenant_id = $1 AND workspace_id = $2 ORDER BY id DESC"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&t)
            .bind(&w)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(read_key).collect()
    }

    /// Revokes a key (revoking twice changes nothing).
    pub async fn revoke_key(
        &self,
        scope: Scope,
        key: KeyId,
        actor: Actor,
        now: Millis,
    ) -> Result<KeyRecord, StoreError> {
        let (t, w) = scope_strs(&scope);
        let k = key.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query("UPDATE api_keys SET revoked_at = $4 WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3 AND revoked_at IS NULL")
            .bind(&t)
            .bind(&w)
            .bind(&k)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 1 {
            append(
                &mut tx,
                &t,
                now,
                &Audit {
                    actor,
                    action: "api_key.revoke",
                    object_kind: "api_key",
                    object_id: k.clone(),
                    workspace: Some(scope.workspace),
                    detail: json!({}),
                },
            )
            .await?;
        }
        let sql = format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&t)
            .bind(&w)
            .bind(&k)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let rec = read_key(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(rec)
    }

    /// Records that a key was used (callers throttle this).
    pub async fn touch_key(&self, scope: Scope, key: KeyId, now: Millis) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        sqlx::query("UPDATE api_keys SET last_used_at = $4 WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3")
            .bind(&t)
            .bind(&w)
            .bind(key.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    // ---- tenants ----------------------------------------------------------------------------

    /// A tenant.
    pub async fn get_tenant(&self, tenant: TenantId) -> Result<TenantRecord, StoreError> {
        let t = tenant.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let sql = format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&t)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(db)?;
        read_tenant(&row)
    }

    /// System (instance admin): tenants ordered by id, after `after`.
    pub async fn list_tenants(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>, StoreError> {
        let mut tx = self.system_tx().await?;
        let sql = format!("SELECT {TENANT_COLS} FROM tenants WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.unwrap_or_default())
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(read_tenant).collect()
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
        let t = tenant.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let sql = format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1 FOR UPDATE");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&t)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let cur = read_tenant(&row)?;
        let limits = limits.unwrap_or(cur.limits);
        let weight = weight.unwrap_or(cur.weight);
        sqlx::query("UPDATE tenants SET max_runs_per_month = $2, max_active_flows = $3, max_concurrent_runs = $4, max_webhook_rps = $5, max_stored_bytes = $6, weight = $7 WHERE id = $1")
            .bind(&t)
            .bind(limits.runs_per_month)
            .bind(limits.active_flows)
            .bind(limits.concurrent_runs)
            .bind(limits.webhook_rps)
            .bind(limits.stored_bytes)
            .bind(weight)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "tenant.update",
                object_kind: "tenant",
                object_id: t.clone(),
                workspace: None,
                detail: json!({"limits": limits, "weight": weight}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(TenantRecord {
            limits,
            weight,
            ..cur
        })
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

    // ---- sessions and settings ----------------------------------------------------------------

    /// Stores a session under the hash of its cookie secret.
    pub async fn create_session(
        &self,
        user: UserId,
        secret_hash: String,
        csrf_token: String,
        expires_at: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("INSERT INTO sessions (secret_hash, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(secret_hash)
            .bind(user.to_string())
            .bind(csrf_token)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// System: the live session with this secret hash.
    pub async fn resolve_session(
        &self,
        secret_hash: String,
        now: Millis,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT s.user_id, u.email, s.csrf_token, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.secret_hash = $1 AND s.expires_at > $2",
        )
        .bind(secret_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| {
            Ok(SessionRecord {
                user_id: parse(r.get(0), "user id")?,
                email: r.get(1),
                csrf_token: r.get(2),
                expires_at: r.get(3),
            })
        })
        .transpose()
    }

    /// Ends a session.
    pub async fn delete_session(&self, secret_hash: String) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE secret_hash = $1")
            .bind(secret_hash)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// An instance setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM instance_settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    /// Sets an instance setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO instance_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}
