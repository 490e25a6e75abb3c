//! Sealed credentials on PostgreSQL. Values arrive and leave sealed; only field names are
//! readable.

use serde_json::json;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::pg_text;
use weft_types::{CredentialId, Millis, Scope};

use super::PgStore;
use super::store::{Tx, append, db, parse};
use crate::*;

const COLS: &str = "id, name, connector, fields, status, status_reason, created_at, updated_at, key_id, wrapped_key, ciphertext, auth_failures";

fn read(r: &PgRow) -> Result<(CredentialRecord, SealedValues), StoreError> {
    let fields: String = r.try_get(3).map_err(db)?;
    Ok((
        CredentialRecord {
            id: parse(r.try_get(0).map_err(db)?, "credential id")?,
            name: r.try_get(1).map_err(db)?,
            connector: r.try_get(2).map_err(db)?,
            fields: crate::credential_fields(&fields)?,
            status: r.try_get(4).map_err(db)?,
            status_reason: r.try_get(5).map_err(db)?,
            auth_failures: r.try_get(11).map_err(db)?,
            created_at: r.try_get(6).map_err(db)?,
            updated_at: r.try_get(7).map_err(db)?,
        },
        SealedValues {
            key_id: r.try_get(8).map_err(db)?,
            wrapped_key: r.try_get(9).map_err(db)?,
            ciphertext: r.try_get(10).map_err(db)?,
        },
    ))
}

async fn by_name(
    tx: &mut Tx,
    scope: &Scope,
    name: &str,
) -> Result<Option<(CredentialRecord, SealedValues)>, StoreError> {
    let (t, w) = scope_strs(scope);
    let sql = format!(
        "SELECT {COLS} FROM credentials WHERE tenant_id = $1 AND workspace_id = $2 AND name = $3"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&t)
        .bind(&w)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    row.as_ref().map(read).transpose()
}

impl PgStore {
    /// A credential by name, with its sealed values.
    pub async fn credential(
        &self,
        scope: Scope,
        name: &str,
    ) -> Result<Option<(CredentialRecord, SealedValues)>, StoreError> {
        let mut tx = self.tenant_tx(&scope.tenant.to_string()).await?;
        let out = by_name(&mut tx, &scope, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    /// Creates a credential or replaces the values of the one with the same name (whose id
    /// `cred.id` must be, since the values were sealed for it).
    pub async fn put_credential(
        &self,
        scope: Scope,
        cred: NewCredential,
        actor: Actor,
        now: Millis,
    ) -> Result<(CredentialRecord, bool), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let fields = json!(cred.fields).to_string();
        // The row lock makes a concurrent replace of the same name wait instead of racing.
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT id FROM credentials WHERE tenant_id = $1 AND workspace_id = $2 AND name = $3 FOR UPDATE",
        )
        .bind(&t)
        .bind(&w)
        .bind(&cred.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let id = cred.id.to_string();
        let created = match existing {
            Some(found) if found == id => {
                sqlx::query(
                    "UPDATE credentials SET connector = $4, fields = $5, key_id = $6, wrapped_key = $7, ciphertext = $8,
                     status = 'ok', status_reason = NULL, auth_failures = 0, updated_at = $9
                     WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3",
                )
                .bind(&t)
                .bind(&w)
                .bind(&id)
                .bind(&cred.connector)
                .bind(&fields)
                .bind(&cred.sealed.key_id)
                .bind(&cred.sealed.wrapped_key)
                .bind(&cred.sealed.ciphertext)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                false
            }
            Some(_) => return Err(crate::credential_replaced(&cred.name)),
            None => {
                sqlx::query(
                    "INSERT INTO credentials (tenant_id, workspace_id, id, name, connector, fields, key_id, wrapped_key, ciphertext, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
                )
                .bind(&t)
                .bind(&w)
                .bind(&id)
                .bind(&cred.name)
                .bind(&cred.connector)
                .bind(&fields)
                .bind(&cred.sealed.key_id)
                .bind(&cred.sealed.wrapped_key)
                .bind(&cred.sealed.ciphertext)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| match db(e) {
                    StoreError::Conflict(_) => crate::credential_replaced(&cred.name),
                    other => other,
                })?;
                true
            }
        };
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: if created {
                    "credential.create"
                } else {
                    "credential.update"
                },
                object_kind: "credential",
                object_id: id,
                workspace: Some(scope.workspace),
                detail: json!({"name": cred.name, "connector": cred.connector, "fields": cred.fields}),
            },
        )
        .await?;
        let (rec, _) = by_name(&mut tx, &scope, &cred.name)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(db)?;
        Ok((rec, created))
    }

    /// The workspace's credentials, by name.
    pub async fn list_credentials(
        &self,
        scope: Scope,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let sql = format!(
            "SELECT {COLS} FROM credentials WHERE tenant_id = $1 AND workspace_id = $2 ORDER BY name"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&t)
            .bind(&w)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(|r| read(r).map(|(rec, _)| rec)).collect()
    }

    /// Deletes a credential by name.
    pub async fn delete_credential(
        &self,
        scope: Scope,
        name: &str,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let (rec, _) = by_name(&mut tx, &scope, name)
            .await?
            .ok_or(StoreError::NotFound)?;
        sqlx::query(
            "DELETE FROM credentials WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(rec.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "credential.delete",
                object_kind: "credential",
                object_id: rec.id.to_string(),
                workspace: Some(scope.workspace),
                detail: json!({"name": rec.name, "connector": rec.connector}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Counts an authentication failure of a credential in use; at `threshold` in a row it
    /// is paused (`needs_reauth`, `reason`). True when this failure paused it.
    pub async fn note_auth_failure(
        &self,
        scope: Scope,
        id: CredentialId,
        threshold: i64,
        reason: String,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n: Option<i64> = sqlx::query_scalar(
            "UPDATE credentials SET auth_failures = auth_failures + 1,
                status = CASE WHEN auth_failures + 1 >= $4 THEN 'needs_reauth' ELSE status END,
                status_reason = CASE WHEN auth_failures + 1 >= $4 THEN $5 ELSE status_reason END,
                updated_at = CASE WHEN auth_failures + 1 >= $4 THEN $6 ELSE updated_at END
             WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3 AND status = 'ok'
             RETURNING auth_failures",
        )
        .bind(&t)
        .bind(&w)
        .bind(id.to_string())
        .bind(threshold)
        .bind(pg_text(&reason).as_ref())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n == Some(threshold))
    }

    /// A credential worked: its run of authentication failures is over.
    pub async fn clear_auth_failures(
        &self,
        scope: Scope,
        id: CredentialId,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        sqlx::query(
            "UPDATE credentials SET auth_failures = 0
             WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3 AND auth_failures > 0",
        )
        .bind(&t)
        .bind(&w)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Marks a credential `needs_reauth` (or back to `ok` with `None`).
    pub async fn set_credential_status(
        &self,
        scope: Scope,
        id: CredentialId,
        reason: Option<String>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let status = if reason.is_some() {
            "needs_reauth"
        } else {
            "ok"
        };
        let n = sqlx::query(
            "UPDATE credentials SET status = $4, status_reason = $5, updated_at = $6, refreshing_until = NULL, auth_failures = 0
             WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(id.to_string())
        .bind(status)
        .bind(&reason)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// System (key rotation): sealed credentials not wrapped by `key_id`, in id order after
    /// `after`.
    pub async fn credentials_to_rewrap(
        &self,
        key_id: &str,
        after: Option<(Scope, CredentialId)>,
        limit: usize,
    ) -> Result<Vec<SealedCredential>, StoreError> {
        let (t, w, i) = match &after {
            Some((s, id)) => (
                s.tenant.to_string(),
                s.workspace.to_string(),
                id.to_string(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let mut tx = self.system_tx().await?;
        let rows = sqlx::query(
            "SELECT tenant_id, workspace_id, id, key_id, wrapped_key, ciphertext FROM credentials
             WHERE key_id <> $1 AND (tenant_id, workspace_id, id) > ($2, $3, $4)
             ORDER BY tenant_id, workspace_id, id LIMIT $5",
        )
        .bind(key_id)
        .bind(&t)
        .bind(&w)
        .bind(&i)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(SealedCredential {
                    scope: Scope {
                        tenant: parse(r.try_get(0).map_err(db)?, "tenant id")?,
                        workspace: parse(r.try_get(1).map_err(db)?, "workspace id")?,
                    },
                    id: parse(r.try_get(2).map_err(db)?, "credential id")?,
                    sealed: SealedValues {
                        key_id: r.try_get(3).map_err(db)?,
                        wrapped_key: r.try_get(4).map_err(db)?,
                        ciphertext: r.try_get(5).map_err(db)?,
                    },
                })
            })
            .collect()
    }

    /// Replaces a credential's wrapped data key, if it is still wrapped by `old_key_id` and
    /// its values are unchanged; false when someone set it meanwhile.
    pub async fn rewrap_credential(
        &self,
        scope: Scope,
        id: CredentialId,
        old_key_id: &str,
        sealed: SealedValues,
    ) -> Result<bool, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "UPDATE credentials SET key_id = $5, wrapped_key = $6
             WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3 AND key_id = $4 AND ciphertext = $7",
        )
        .bind(&t)
        .bind(&w)
        .bind(id.to_string())
        .bind(old_key_id)
        .bind(&sealed.key_id)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.ciphertext)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(n == 1)
    }

    /// Installs a connector version; false when this exact manifest was installed already. A
    /// different manifest under an installed version is a conflict: versions are immutable.
    pub async fn install_connector(
        &self,
        scope: Scope,
        name: &str,
        version: &str,
        manifest: serde_json::Value,
        actor: Actor,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT manifest FROM connectors WHERE tenant_id = $1 AND workspace_id = $2 AND name = $3 AND version = $4",
        )
        .bind(&t)
        .bind(&w)
        .bind(name)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(old) = existing {
            let same = serde_json::from_str::<serde_json::Value>(&old).ok() == Some(manifest);
            return if same {
                Ok(false)
            } else {
                Err(crate::connector_version_taken(name, version))
            };
        }
        sqlx::query(
            "INSERT INTO connectors (tenant_id, workspace_id, name, version, manifest, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t)
        .bind(&w)
        .bind(name)
        .bind(version)
        .bind(manifest.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db(e) {
            StoreError::Conflict(_) => crate::connector_version_taken(name, version),
            other => other,
        })?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "connector.install",
                object_kind: "connector",
                object_id: format!("{name}@{version}"),
                workspace: Some(scope.workspace),
                detail: json!({"name": name, "version": version}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    /// Every connector version installed in the workspace, by name then install order.
    pub async fn installed_connectors(
        &self,
        scope: Scope,
    ) -> Result<Vec<InstalledConnector>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(
            "SELECT name, version, manifest, created_at FROM connectors WHERE tenant_id = $1 AND workspace_id = $2 ORDER BY name, created_at",
        )
        .bind(&t)
        .bind(&w)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get(2).map_err(db)?;
                Ok(InstalledConnector {
                    name: r.try_get(0).map_err(db)?,
                    version: r.try_get(1).map_err(db)?,
                    manifest: serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("connector manifest: {e}")))?,
                    created_at: r.try_get(3).map_err(db)?,
                })
            })
            .collect()
    }

    /// Records an authorization request under the hash of its `state`.
    pub async fn save_oauth_state(
        &self,
        state_hash: &str,
        st: OAuthState,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&st.scope);
        let mut tx = self.tenant_tx(&t).await?;
        sqlx::query("DELETE FROM oauth_states WHERE tenant_id = $1 AND expires_at < $2")
            .bind(&t)
            .bind(st.expires_at - 3_600_000)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO oauth_states (state_hash, tenant_id, workspace_id, credential_id, verifier, redirect_uri, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(state_hash)
        .bind(&t)
        .bind(&w)
        .bind(st.credential.to_string())
        .bind(&st.verifier)
        .bind(&st.redirect_uri)
        .bind(st.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// System (the callback has no tenant yet): removes and returns the authorization request
    /// with this state hash, if it exists and has not expired. A state works once.
    pub async fn take_oauth_state(
        &self,
        state_hash: &str,
        now: Millis,
    ) -> Result<Option<OAuthState>, StoreError> {
        let mut tx = self.system_tx().await?;
        let row = sqlx::query(
            "DELETE FROM oauth_states WHERE state_hash = $1
             RETURNING tenant_id, workspace_id, credential_id, verifier, redirect_uri, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let Some(r) = row else { return Ok(None) };
        let expires_at: i64 = r.try_get(5).map_err(db)?;
        if expires_at < now {
            return Ok(None);
        }
        Ok(Some(OAuthState {
            scope: Scope {
                tenant: parse(r.try_get(0).map_err(db)?, "tenant id")?,
                workspace: parse(r.try_get(1).map_err(db)?, "workspace id")?,
            },
            credential: parse(r.try_get(2).map_err(db)?, "credential id")?,
            verifier: r.try_get(3).map_err(db)?,
            redirect_uri: r.try_get(4).map_err(db)?,
            expires_at,
        }))
    }

    /// Takes the right to refresh a credential until `until`, unless another process holds it.
    pub async fn lease_credential_refresh(
        &self,
        scope: Scope,
        id: CredentialId,
        until: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "UPDATE credentials SET refreshing_until = $4
             WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3
               AND (refreshing_until IS NULL OR refreshing_until < $5)",
        )
        .bind(&t)
        .bind(&w)
        .bind(id.to_string())
        .bind(until)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(n == 1)
    }

    /// Replaces a credential's sealed values (new OAuth tokens), sets it `ok` and ends any
    /// refresh lease; audited as `audit_action` when given (an authorization), not for refreshes.
    #[allow(clippy::too_many_arguments)]
    pub async fn replace_credential_values(
        &self,
        scope: Scope,
        id: CredentialId,
        sealed: SealedValues,
        fields: Vec<String>,
        audit_action: Option<&'static str>,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "UPDATE credentials SET key_id = $4, wrapped_key = $5, ciphertext = $6, fields = $7,
             status = 'ok', status_reason = NULL, auth_failures = 0, refreshing_until = NULL, updated_at = $8
             WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(id.to_string())
        .bind(&sealed.key_id)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.ciphertext)
        .bind(json!(fields).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some(action) = audit_action {
            append(
                &mut tx,
                &t,
                now,
                &Audit {
                    actor,
                    action,
                    object_kind: "credential",
                    object_id: id.to_string(),
                    workspace: Some(scope.workspace),
                    detail: json!({"fields": fields}),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }
}
