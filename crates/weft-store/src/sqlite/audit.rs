//! The audit trail on SQLite: appended inside the transaction of the change it records.

use rusqlite::{Connection, OptionalExtension, Row, params};
use weft_types::{Millis, TenantId, WorkspaceId};

use super::SqliteStore;
use crate::audit::{check_chain, entry_hash};
use crate::{Audit, AuditEntry, ChainCheck, StoreError};

/// Appends `a` to `tenant`'s chain. Runs on the writer thread, which serializes appends.
pub(super) fn append(
    c: &Connection,
    tenant: &str,
    now: Millis,
    a: &Audit,
) -> Result<(), StoreError> {
    let (seq, head): (i64, String) = c
        .prepare_cached("SELECT audit_seq, audit_head FROM tenants WHERE id = ?1")?
        .query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut e = AuditEntry {
        seq: seq + 1,
        ts: now,
        workspace_id: a.workspace.map(|w| w.to_string()),
        actor_kind: a.actor.kind.to_string(),
        actor_id: a.actor.id.clone(),
        via: a.actor.via.clone(),
        request_id: a.actor.request_id.clone(),
        action: a.action.to_string(),
        object_kind: a.object_kind.to_string(),
        object_id: a.object_id.clone(),
        detail: a.detail.to_string(),
        prev_hash: head,
        hash: String::new(),
    };
    e.hash = entry_hash(tenant, &e);
    c.prepare_cached(
        "INSERT INTO audit_log (tenant_id, seq, ts, workspace_id, actor_kind, actor_id, via, request_id, action, object_kind, object_id, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        tenant, e.seq, e.ts, e.workspace_id, e.actor_kind, e.actor_id, e.via, e.request_id,
        e.action, e.object_kind, e.object_id, e.detail, e.prev_hash, e.hash
    ])?;
    c.prepare_cached("UPDATE tenants SET audit_seq = ?2, audit_head = ?3 WHERE id = ?1")?
        .execute(params![tenant, e.seq, e.hash])?;
    Ok(())
}

const COLS: &str = "seq, ts, workspace_id, actor_kind, actor_id, via, request_id, action, object_kind, object_id, detail, prev_hash, hash";

fn read(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        ts: r.get(1)?,
        workspace_id: r.get(2)?,
        actor_kind: r.get(3)?,
        actor_id: r.get(4)?,
        via: r.get(5)?,
        request_id: r.get(6)?,
        action: r.get(7)?,
        object_kind: r.get(8)?,
        object_id: r.get(9)?,
        detail: r.get(10)?,
        prev_hash: r.get(11)?,
        hash: r.get(12)?,
    })
}

impl SqliteStore {
    /// A tenant's audit entries, newest first, before `before` (cursor); only one workspace's
    /// entries when `workspace` is given.
    pub async fn list_audit(
        &self,
        tenant: TenantId,
        workspace: Option<WorkspaceId>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {COLS} FROM audit_log WHERE tenant_id = ?1 AND (?2 IS NULL OR workspace_id = ?2)
                 AND (?3 IS NULL OR seq < ?3) ORDER BY seq DESC LIMIT ?4"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![tenant.to_string(), workspace.map(|w| w.to_string()), before, limit as i64],
                read,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Walks a tenant's whole audit chain and names the first entry that does not check.
    pub async fn verify_audit(&self, tenant: TenantId) -> Result<ChainCheck, StoreError> {
        self.read(move |c| {
            let t = tenant.to_string();
            let head: Option<(i64, String)> = c
                .prepare_cached("SELECT audit_seq, audit_head FROM tenants WHERE id = ?1")?
                .query_row([&t], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (seq, hash) = head.ok_or(StoreError::NotFound)?;
            let sql = format!("SELECT {COLS} FROM audit_log WHERE tenant_id = ?1 ORDER BY seq");
            let mut st = c.prepare_cached(&sql)?;
            let entries = st.query_map([&t], read)?.collect::<Result<Vec<_>, _>>()?;
            Ok(check_chain(&t, &entries, seq, &hash))
        })
        .await
    }
}
