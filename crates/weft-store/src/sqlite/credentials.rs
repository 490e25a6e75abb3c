//! Sealed credentials on SQLite. Values arrive and leave sealed; only field names are readable.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::json;
use weft_types::{CredentialId, Millis, Scope};

use super::SqliteStore;
use super::audit::append;
use super::ops::parse;
use crate::*;

const COLS: &str = "id, name, connector, fields, status, status_reason, created_at, updated_at, key_id, wrapped_key, ciphertext, auth_failures";

fn read(r: &Row<'_>) -> Result<(CredentialRecord, SealedValues), StoreError> {
    let fields: String = r.get(3)?;
    Ok((
        CredentialRecord {
            id: parse(r.get(0)?, "credential id")?,
            name: r.get(1)?,
            connector: r.get(2)?,
            fields: crate::credential_fields(&fields)?,
            status: r.get(4)?,
            status_reason: r.get(5)?,
            auth_failures: r.get(11)?,
            created_at: r.get(6)?,
            updated_at: r.get(7)?,
        },
        SealedValues {
            key_id: r.get(8)?,
            wrapped_key: r.get(9)?,
            ciphertext: r.get(10)?,
        },
    ))
}

fn by_name(
    c: &Connection,
    scope: &Scope,
    name: &str,
) -> Result<Option<(CredentialRecord, SealedValues)>, StoreError> {
    let (t, w) = scope_strs(scope);
    let sql = format!(
        "SELECT {COLS} FROM credentials WHERE tenant_id = ?1 AND workspace_id = ?2 AND name = ?3"
    );
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(params![t, w, name])?;
    match rows.next()? {
        Some(r) => read(r).map(Some),
        None => Ok(None),
    }
}

impl SqliteStore {
    /// A credential by name, with its sealed values.
    pub async fn credential(
        &self,
        scope: Scope,
        name: &str,
    ) -> Result<Option<(CredentialRecord, SealedValues)>, StoreError> {
        let name = name.to_string();
        self.read(move |c| by_name(c, &scope, &name)).await
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
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let fields = json!(cred.fields).to_string();
            let existing: Option<String> = c
                .prepare_cached(
                    "SELECT id FROM credentials WHERE tenant_id = ?1 AND workspace_id = ?2 AND name = ?3",
                )?
                .query_row(params![t, w, cred.name], |r| r.get(0))
                .optional()?;
            let created = match existing {
                Some(id) if id == cred.id.to_string() => {
                    c.prepare_cached(
                        "UPDATE credentials SET connector = ?4, fields = ?5, key_id = ?6, wrapped_key = ?7, ciphertext = ?8,
                         status = 'ok', status_reason = NULL, auth_failures = 0, updated_at = ?9
                         WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
                    )?
                    .execute(params![t, w, id, cred.connector, fields, cred.sealed.key_id, cred.sealed.wrapped_key, cred.sealed.ciphertext, now])?;
                    false
                }
                Some(_) => return Err(crate::credential_replaced(&cred.name)),
                None => {
                    c.prepare_cached(
                        "INSERT INTO credentials (tenant_id, workspace_id, id, name, connector, fields, key_id, wrapped_key, ciphertext, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                    )?
                    .execute(params![t, w, cred.id.to_string(), cred.name, cred.connector, fields, cred.sealed.key_id, cred.sealed.wrapped_key, cred.sealed.ciphertext, now])?;
                    true
                }
            };
            append(c, &t, now, &Audit {
                actor: actor.clone(),
                action: if created { "credential.create" } else { "credential.update" },
                object_kind: "credential",
                object_id: cred.id.to_string(),
                workspace: Some(scope.workspace),
                detail: json!({"name": cred.name, "connector": cred.connector, "fields": cred.fields}),
            })?;
            let (rec, _) = by_name(c, &scope, &cred.name)?.ok_or(StoreError::NotFound)?;
            Ok((rec, created))
        })
        .await
    }

    /// The workspace's credentials, by name.
    pub async fn list_credentials(
        &self,
        scope: Scope,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let sql = format!(
                "SELECT {COLS} FROM credentials WHERE tenant_id = ?1 AND workspace_id = ?2 ORDER BY name"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![t, w])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read(r)?.0);
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a credential by name.
    pub async fn delete_credential(
        &self,
        scope: Scope,
        name: &str,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let (rec, _) = by_name(c, &scope, &name)?.ok_or(StoreError::NotFound)?;
            c.prepare_cached(
                "DELETE FROM credentials WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
            )?
            .execute(params![t, w, rec.id.to_string()])?;
            append(
                c,
                &t,
                now,
                &Audit {
                    actor: actor.clone(),
                    action: "credential.delete",
                    object_kind: "credential",
                    object_id: rec.id.to_string(),
                    workspace: Some(scope.workspace),
                    detail: json!({"name": rec.name, "connector": rec.connector}),
                },
            )?;
            Ok(())
        })
        .await
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
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n: Option<i64> = c
                .prepare_cached(
                    "UPDATE credentials SET auth_failures = auth_failures + 1,
                        status = CASE WHEN auth_failures + 1 >= ?4 THEN 'needs_reauth' ELSE status END,
                        status_reason = CASE WHEN auth_failures + 1 >= ?4 THEN ?5 ELSE status_reason END,
                        updated_at = CASE WHEN auth_failures + 1 >= ?4 THEN ?6 ELSE updated_at END
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND status = 'ok'
                     RETURNING auth_failures",
                )?
                .query_row(params![t, w, id.to_string(), threshold, reason, now], |r| r.get(0))
                .optional()?;
            Ok(n == Some(threshold))
        })
        .await
    }

    /// A credential worked: its run of authentication failures is over.
    pub async fn clear_auth_failures(
        &self,
        scope: Scope,
        id: CredentialId,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            c.prepare_cached(
                "UPDATE credentials SET auth_failures = 0
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND auth_failures > 0",
            )?
            .execute(params![t, w, id.to_string()])?;
            Ok(())
        })
        .await
    }

    /// Marks a credential `needs_reauth` (or back to `ok` with `None`).
    pub async fn set_credential_status(
        &self,
        scope: Scope,
        id: CredentialId,
        reason: Option<String>,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let status = if reason.is_some() {
                "needs_reauth"
            } else {
                "ok"
            };
            let n = c
                .prepare_cached(
                    "UPDATE credentials SET status = ?4, status_reason = ?5, updated_at = ?6, refreshing_until = NULL, auth_failures = 0
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
                )?
                .execute(params![t, w, id.to_string(), status, reason, now])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    /// System (key rotation): sealed credentials not wrapped by `key_id`, in id order after
    /// `after`.
    pub async fn credentials_to_rewrap(
        &self,
        key_id: &str,
        after: Option<(Scope, CredentialId)>,
        limit: usize,
    ) -> Result<Vec<SealedCredential>, StoreError> {
        let key_id = key_id.to_string();
        self.read(move |c| {
            let (t, w, i) = match &after {
                Some((s, id)) => (s.tenant.to_string(), s.workspace.to_string(), id.to_string()),
                None => (String::new(), String::new(), String::new()),
            };
            let mut st = c.prepare_cached(
                "SELECT tenant_id, workspace_id, id, key_id, wrapped_key, ciphertext FROM credentials
                 WHERE key_id <> ?1 AND (tenant_id, workspace_id, id) > (?2, ?3, ?4)
                 ORDER BY tenant_id, workspace_id, id LIMIT ?5",
            )?;
            let mut rows = st.query(params![key_id, t, w, i, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(SealedCredential {
                    scope: Scope {
                        tenant: parse(r.get(0)?, "tenant id")?,
                        workspace: parse(r.get(1)?, "workspace id")?,
                    },
                    id: parse(r.get(2)?, "credential id")?,
                    sealed: SealedValues {
                        key_id: r.get(3)?,
                        wrapped_key: r.get(4)?,
                        ciphertext: r.get(5)?,
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    /// Replaces a credential's wrapped data key, if it is still wrapped by `old_key_id`; false
    /// when someone changed it meanwhile (it was then sealed under the current primary key).
    pub async fn rewrap_credential(
        &self,
        scope: Scope,
        id: CredentialId,
        old_key_id: &str,
        sealed: SealedValues,
    ) -> Result<bool, StoreError> {
        let old = old_key_id.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n = c
                .prepare_cached(
                    "UPDATE credentials SET key_id = ?5, wrapped_key = ?6
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND key_id = ?4 AND ciphertext = ?7",
                )?
                .execute(params![t, w, id.to_string(), old, sealed.key_id, sealed.wrapped_key, sealed.ciphertext])?;
            Ok(n == 1)
        })
        .await
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
        let (name, version) = (name.to_string(), version.to_string());
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let text = manifest.to_string();
            let existing: Option<String> = c
                .prepare_cached(
                    "SELECT manifest FROM connectors WHERE tenant_id = ?1 AND workspace_id = ?2 AND name = ?3 AND version = ?4",
                )?
                .query_row(params![t, w, name, version], |r| r.get(0))
                .optional()?;
            if let Some(old) = existing {
                let same = serde_json::from_str::<serde_json::Value>(&old).ok() == Some(manifest.clone());
                return if same {
                    Ok(false)
                } else {
                    Err(crate::connector_version_taken(&name, &version))
                };
            }
            c.prepare_cached(
                "INSERT INTO connectors (tenant_id, workspace_id, name, version, manifest, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![t, w, name, version, text, now])?;
            append(c, &t, now, &Audit {
                actor: actor.clone(),
                action: "connector.install",
                object_kind: "connector",
                object_id: format!("{name}@{version}"),
                workspace: Some(scope.workspace),
                detail: json!({"name": name, "version": version}),
            })?;
            Ok(true)
        })
        .await
    }

    /// Every connector version installed in the workspace, by name then install order.
    pub async fn installed_connectors(
        &self,
        scope: Scope,
    ) -> Result<Vec<InstalledConnector>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT name, version, manifest, created_at FROM connectors WHERE tenant_id = ?1 AND workspace_id = ?2 ORDER BY name, created_at",
            )?;
            let mut rows = st.query(params![t, w])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let text: String = r.get(2)?;
                out.push(InstalledConnector {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    manifest: serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("connector manifest: {e}")))?,
                    created_at: r.get(3)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Records an authorization request under the hash of its `state`.
    pub async fn save_oauth_state(
        &self,
        state_hash: &str,
        st: OAuthState,
    ) -> Result<(), StoreError> {
        let h = state_hash.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&st.scope);
            // Expired requests go as new ones come: the table stays small without a sweeper.
            c.prepare_cached("DELETE FROM oauth_states WHERE expires_at < ?1")?
                .execute(params![st.expires_at - 3_600_000])?;
            c.prepare_cached(
                "INSERT INTO oauth_states (state_hash, tenant_id, workspace_id, credential_id, verifier, redirect_uri, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![h, t, w, st.credential.to_string(), st.verifier, st.redirect_uri, st.expires_at])?;
            Ok(())
        })
        .await
    }

    /// System (the callback has no tenant yet): removes and returns the authorization request
    /// with this state hash, if it exists and has not expired. A state works once.
    pub async fn take_oauth_state(
        &self,
        state_hash: &str,
        now: Millis,
    ) -> Result<Option<OAuthState>, StoreError> {
        let h = state_hash.to_string();
        self.write(move |c| {
            let row = c
                .prepare_cached(
                    "DELETE FROM oauth_states WHERE state_hash = ?1
                     RETURNING tenant_id, workspace_id, credential_id, verifier, redirect_uri, expires_at",
                )?
                .query_row(params![h], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .optional()?;
            let Some((t, w, id, verifier, redirect_uri, expires_at)) = row else {
                return Ok(None);
            };
            if expires_at < now {
                return Ok(None);
            }
            Ok(Some(OAuthState {
                scope: Scope {
                    tenant: parse(t, "tenant id")?,
                    workspace: parse(w, "workspace id")?,
                },
                credential: parse(id, "credential id")?,
                verifier,
                redirect_uri,
                expires_at,
            }))
        })
        .await
    }

    /// Takes the right to refresh a credential until `until`, unless another process holds it.
    pub async fn lease_credential_refresh(
        &self,
        scope: Scope,
        id: CredentialId,
        until: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n = c
                .prepare_cached(
                    "UPDATE credentials SET refreshing_until = ?4
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3
                       AND (refreshing_until IS NULL OR refreshing_until < ?5)",
                )?
                .execute(params![t, w, id.to_string(), until, now])?;
            Ok(n == 1)
        })
        .await
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
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n = c
                .prepare_cached(
                    "UPDATE credentials SET key_id = ?4, wrapped_key = ?5, ciphertext = ?6, fields = ?7,
                     status = 'ok', status_reason = NULL, auth_failures = 0, refreshing_until = NULL, updated_at = ?8
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
                )?
                .execute(params![t, w, id.to_string(), sealed.key_id, sealed.wrapped_key, sealed.ciphertext, json!(fields).to_string(), now])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            if let Some(action) = audit_action {
                append(c, &t, now, &Audit {
                    actor: actor.clone(),
                    action,
                    object_kind: "credential",
                    object_id: id.to_string(),
                    workspace: Some(scope.workspace),
                    detail: json!({"fields": fields}),
                })?;
            }
            Ok(())
        })
        .await
    }
}
