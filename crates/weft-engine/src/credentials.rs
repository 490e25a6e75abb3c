//! Credentials: checked against their connector's auth fields, sealed by the vault before the
//! store sees them, opened only where a step or a signature check uses them.

use std::sync::Arc;

use serde_json::{Map, Value};
use weft_connectors::Manifest;
use weft_flow::FieldError;
use weft_store::{Actor, CredentialRecord, NewCredential, SealedValues};
use weft_types::{CredentialId, Scope};
use weft_vault::{Binding, Sealed, Secret, SecretValues, Vault, VaultError};

use crate::{Engine, EngineError};

/// How long an opened signing credential is reused by intake.
pub const SIGNING_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// Opened signing credentials by (scope, name), with when they were opened.
pub(crate) type SigningCache = std::sync::Mutex<
    std::collections::HashMap<(Scope, String), (Arc<OpenCredential>, std::time::Instant)>,
>;

/// Longest credential value, in bytes (an OAuth token or a PEM key fits comfortably).
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// A credential opened for use.
#[derive(Debug, Clone)]
pub struct OpenCredential {
    /// What the store lists about it.
    pub record: CredentialRecord,
    /// Its decrypted values.
    pub values: SecretValues,
    /// Its connector.
    pub manifest: Arc<Manifest>,
}

impl OpenCredential {
    /// The view actions take.
    pub fn as_action_credential(&self) -> weft_connectors::Credential<'_> {
        weft_connectors::Credential {
            name: &self.record.name,
            values: &self.values,
            manifest: &self.manifest,
        }
    }
}

fn binding(scope: &Scope, id: CredentialId) -> Binding {
    Binding {
        tenant: scope.tenant.to_string(),
        workspace: scope.workspace.to_string(),
        credential: id.to_string(),
    }
}

fn to_store(s: Sealed) -> SealedValues {
    SealedValues {
        key_id: s.key_id,
        wrapped_key: s.wrapped_key,
        ciphertext: s.ciphertext,
    }
}

fn from_store(s: SealedValues) -> Sealed {
    Sealed {
        key_id: s.key_id,
        wrapped_key: s.wrapped_key,
        ciphertext: s.ciphertext,
    }
}

impl From<VaultError> for EngineError {
    fn from(e: VaultError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}

/// Checks a credential's name, connector and values; returns the connector and the values.
fn check(
    name: &str,
    connector: &str,
    values: Map<String, Value>,
    catalog: &crate::WorkspaceCatalog,
) -> Result<(Arc<Manifest>, SecretValues), EngineError> {
    let mut errors = Vec::new();
    if !weft_flow::valid_name(name) {
        errors.push(FieldError::new(
            "name",
            "must be 1-100 characters: letters, digits, '-', '_' or '.', starting with a letter or digit",
        ));
    }
    let Some(manifest) = catalog.connector(connector) else {
        let known: Vec<&str> = weft_connectors::manifest::builtin()
            .iter()
            .chain(catalog.all_installed().iter().map(|m| m.as_ref()))
            .filter(|m| !m.auth.fields.is_empty())
            .map(|m| m.name.as_str())
            .collect();
        errors.push(FieldError::new(
            "connector",
            format!(
                "unknown connector '{connector}'; use one of: {}",
                known.join(", ")
            ),
        ));
        return Err(EngineError::BadInput(errors));
    };
    let fields: Vec<&str> = manifest
        .auth
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    if values.is_empty() {
        errors.push(FieldError::new(
            "values",
            format!(
                "set at least one of the {connector} fields: {}",
                fields.join(", ")
            ),
        ));
    }
    let mut out = SecretValues::new();
    for (k, v) in values {
        let path = format!("values.{k}");
        if !fields.contains(&k.as_str()) {
            errors.push(FieldError::new(
                path,
                format!(
                    "{connector} credentials have no such field; use: {}",
                    fields.join(", ")
                ),
            ));
            continue;
        }
        // Never echo the value itself: it may be a secret typed into the wrong field.
        let Value::String(s) = v else {
            errors.push(FieldError::new(path, "must be a string"));
            continue;
        };
        if s.is_empty() || s.len() > MAX_VALUE_BYTES {
            errors.push(FieldError::new(
                path,
                format!("must be 1-{MAX_VALUE_BYTES} bytes"),
            ));
            continue;
        }
        if s.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
        {
            errors.push(FieldError::new(path, "must not contain control characters"));
            continue;
        }
        out.insert(k, Secret::new(s));
    }
    if errors.is_empty() {
        Ok((manifest, out))
    } else {
        Err(EngineError::BadInput(errors))
    }
}

impl Engine {
    fn vault(&self) -> Result<&Vault, EngineError> {
        self.inner
            .opts
            .vault
            .as_deref()
            .ok_or_else(|| EngineError::Unavailable(VaultError::NoKey.to_string()))
    }

    /// Creates a credential or replaces the values of the one with the same name; true when
    /// created. Values are sealed before they reach the store.
    pub async fn set_credential(
        &self,
        scope: Scope,
        name: &str,
        connector: &str,
        values: Map<String, Value>,
        actor: Actor,
    ) -> Result<(CredentialRecord, bool), EngineError> {
        let catalog = self.inner.catalog(scope).await?;
        let (manifest, values) = check(name, connector, values, &catalog)?;
        self.forget_signing(scope, name);
        let vault = self.vault()?;
        let store = self.store();
        // Replacing keeps the id, which the sealed values are bound to; a race with another
        // writer of the same name is retried once with the id it created.
        for _ in 0..2 {
            let id = match store.credential(scope, name).await? {
                Some((rec, _)) => rec.id,
                None => CredentialId::new(),
            };
            let sealed = vault.seal(&binding(&scope, id), &values)?;
            let cred = NewCredential {
                id,
                name: name.to_string(),
                connector: manifest.name.clone(),
                fields: values.names(),
                sealed: to_store(sealed),
            };
            match store
                .put_credential(scope, cred, actor.clone(), self.clock().now_ms())
                .await
            {
                Err(weft_store::StoreError::Conflict(_)) => continue,
                Ok((mut rec, created)) => {
                    // An OAuth2 credential without tokens is not usable until authorized.
                    if manifest.auth.scheme == "oauth2" && values.get("access_token").is_none() {
                        let reason =
                            format!("not authorized yet: run `weft credentials authorize {name}`");
                        store
                            .set_credential_status(
                                scope,
                                rec.id,
                                Some(reason.clone()),
                                self.clock().now_ms(),
                            )
                            .await?;
                        rec.status = "needs_reauth".into();
                        rec.status_reason = Some(reason);
                    } else {
                        self.resume_polls(scope).await;
                    }
                    return Ok((rec, created));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict(format!(
            "credential '{name}' is being changed by another request; send yours again"
        )))
    }

    /// Polls paused on a credential that needed fixing start again (a poll whose credential
    /// is still broken pauses again at its next try).
    pub(crate) async fn resume_polls(&self, scope: Scope) {
        match self
            .store()
            .resume_polls(scope, self.clock().now_ms())
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(polls = n, "resuming paused polls after a credential change");
                self.inner.poll_wake.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "could not resume paused polls"),
        }
    }

    /// Seals values for the credential `id` of `scope`.
    pub(crate) fn seal_for(
        &self,
        scope: Scope,
        id: CredentialId,
        values: &SecretValues,
    ) -> Result<SealedValues, EngineError> {
        Ok(to_store(self.vault()?.seal(&binding(&scope, id), values)?))
    }

    /// The workspace's credentials: names, connectors and field names, never values.
    pub async fn list_credentials(
        &self,
        scope: Scope,
    ) -> Result<Vec<CredentialRecord>, EngineError> {
        Ok(self.store().list_credentials(scope).await?)
    }

    /// One credential's listing.
    pub async fn get_credential(
        &self,
        scope: Scope,
        name: &str,
    ) -> Result<CredentialRecord, EngineError> {
        match self.store().credential(scope, name).await? {
            Some((rec, _)) => Ok(rec),
            None => Err(EngineError::NotFound("credential")),
        }
    }

    /// Deletes a credential.
    pub async fn delete_credential(
        &self,
        scope: Scope,
        name: &str,
        actor: Actor,
    ) -> Result<(), EngineError> {
        self.forget_signing(scope, name);
        self.store()
            .delete_credential(scope, name, actor, self.clock().now_ms())
            .await
            .map_err(|e| match e {
                weft_store::StoreError::NotFound => EngineError::NotFound("credential"),
                other => other.into(),
            })
    }

    /// A webhook trigger's signing credential, opened at most every [`SIGNING_TTL`] per
    /// process: intake verifies every delivery, and reading and decrypting the credential each
    /// time cost a third of signed intake's throughput. A change made through this process is
    /// seen at once; one made elsewhere within the TTL.
    pub(crate) async fn signing_credential(
        &self,
        scope: Scope,
        name: &str,
    ) -> Result<Arc<OpenCredential>, EngineError> {
        let key = (scope, name.to_string());
        if let Some(c) = self.inner.signing.lock().ok().and_then(|m| {
            m.get(&key)
                .filter(|(_, at)| at.elapsed() < SIGNING_TTL)
                .map(|(c, _)| c.clone())
        }) {
            return Ok(c);
        }
        let c = Arc::new(self.open_credential(scope, name).await?);
        if let Ok(mut m) = self.inner.signing.lock() {
            if m.len() >= 10_000 {
                m.clear();
            }
            m.insert(key, (c.clone(), std::time::Instant::now()));
        }
        Ok(c)
    }

    fn forget_signing(&self, scope: Scope, name: &str) {
        if let Ok(mut m) = self.inner.signing.lock() {
            m.remove(&(scope, name.to_string()));
        }
    }

    /// Opens a credential for a step or a signature check. A missing credential is
    /// `NotFound("credential")`.
    pub async fn open_credential(
        &self,
        scope: Scope,
        name: &str,
    ) -> Result<OpenCredential, EngineError> {
        let Some((record, sealed)) = self.store().credential(scope, name).await? else {
            return Err(EngineError::NotFound("credential"));
        };
        let catalog = self.inner.catalog(scope).await?;
        let manifest = catalog.connector(&record.connector).ok_or_else(|| {
            EngineError::Rule(format!(
                "credential '{name}' belongs to connector '{}', which this build of Weft does not have",
                record.connector
            ))
        })?;
        let values = self
            .vault()?
            .open(&binding(&scope, record.id), &from_store(sealed))
            .map_err(|e| EngineError::Unavailable(format!("credential '{name}': {e}")))?;
        self.inner.metrics.vault_decrypts.inc();
        Ok(OpenCredential {
            record,
            values,
            manifest,
        })
    }
}

/// Re-wraps every credential's data key under `vault`'s primary key; returns how many were
/// re-wrapped. Safe while servers run: each row changes atomically and stays readable with
/// either key, and a credential set meanwhile is already under the new key.
pub async fn rewrap_all(store: &weft_store::Store, vault: &Vault) -> Result<usize, EngineError> {
    let primary = vault.ring().primary().id().to_string();
    let mut after = None;
    let mut done = 0;
    loop {
        let page = store.credentials_to_rewrap(&primary, after, 200).await?;
        let Some(last) = page.last() else {
            return Ok(done);
        };
        after = Some((last.scope, last.id));
        for c in page {
            let old = c.sealed.key_id.clone();
            let b = binding(&c.scope, c.id);
            if let Some(new) = vault.rewrap(&b, &from_store(c.sealed))?
                && store
                    .rewrap_credential(c.scope, c.id, &old, to_store(new))
                    .await?
            {
                done += 1;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn values_are_checked_against_the_connectors_fields_without_echoing_them() {
        let cat = crate::WorkspaceCatalog::default();
        let (m, v) = check(
            "gh",
            "github",
            obj(json!({"token": "ghp_x", "webhook_secret": "s"})),
            &cat,
        )
        .unwrap();
        assert_eq!(m.name, "github");
        assert_eq!(v.names(), vec!["token", "webhook_secret"]);
        let e = check(
            "gh",
            "github",
            obj(json!({"tokn": "canary-123", "token": 5})),
            &cat,
        )
        .unwrap_err();
        let EngineError::BadInput(errs) = e else {
            panic!()
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["values.token", "values.tokn"]);
        assert!(!format!("{errs:?}").contains("canary"));
        assert!(check("gh", "gitlab", obj(json!({"a": "b"})), &cat).is_err());
        assert!(check("bad name", "github", obj(json!({"token": "b"})), &cat).is_err());
        assert!(check("gh", "github", Map::new(), &cat).is_err());
        assert!(check("gh", "github", obj(json!({"token": "a\u{0}b"})), &cat).is_err());
    }
}
