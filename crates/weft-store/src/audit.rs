//! The audit chain's hash: the same on every backend, so a chain can be checked anywhere.

use sha2::Digest;

use crate::AuditEntry;

/// The hash of `e`, chained to `e.prev_hash`: SHA-256 over a JSON array of every field but the
/// hash itself (an array, so the encoding has one fixed field order).
pub fn entry_hash(tenant: &str, e: &AuditEntry) -> String {
    let fields = serde_json::json!([
        tenant,
        e.seq,
        e.ts,
        e.workspace_id,
        e.actor_kind,
        e.actor_id,
        e.via,
        e.request_id,
        e.action,
        e.object_kind,
        e.object_id,
        e.detail,
        e.prev_hash,
    ]);
    hex::encode(sha2::Sha256::digest(fields.to_string().as_bytes()))
}

/// Checks a tenant's entries (in `seq` order) against each other and against the chain head
/// recorded with the tenant; names the first entry that was edited, removed or inserted.
pub fn check_chain(
    tenant: &str,
    entries: &[AuditEntry],
    head_seq: i64,
    head_hash: &str,
) -> crate::ChainCheck {
    let mut prev = String::new();
    let mut expected_seq = 1;
    for e in entries {
        let broken = if e.seq != expected_seq {
            Some(format!(
                "entry {expected_seq} is missing (the next stored entry is {})",
                e.seq
            ))
        } else if e.prev_hash != prev {
            Some(format!(
                "entry {} does not follow entry {}: it was inserted, or its predecessor was edited",
                e.seq,
                e.seq - 1
            ))
        } else if entry_hash(tenant, e) != e.hash {
            Some(format!(
                "entry {} was edited: its content does not match its hash",
                e.seq
            ))
        } else {
            None
        };
        if let Some(why) = broken {
            return crate::ChainCheck {
                entries: entries.len() as i64,
                broken: Some((e.seq.min(expected_seq), why)),
            };
        }
        prev = e.hash.clone();
        expected_seq += 1;
    }
    let last = expected_seq - 1;
    let broken = if last != head_seq {
        Some((
            last + 1,
            format!(
                "the chain ends at entry {last} but {head_seq} were written: entries after {last} were deleted"
            ),
        ))
    } else if prev != head_hash {
        Some((
            last,
            format!("entry {last} does not match the recorded chain head"),
        ))
    } else {
        None
    };
    crate::ChainCheck {
        entries: entries.len() as i64,
        broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for seq in 1..=n {
            let mut e = AuditEntry {
                seq,
                ts: seq * 10,
                workspace_id: Some("wsp_1".into()),
                actor_kind: "key".into(),
                actor_id: "key_1".into(),
                via: None,
                request_id: Some(format!("req{seq}")),
                action: "flow.create".into(),
                object_kind: "flow".into(),
                object_id: format!("flw_{seq}"),
                detail: "{}".into(),
                prev_hash: out.last().map(|p| p.hash.clone()).unwrap_or_default(),
                hash: String::new(),
            };
            e.hash = entry_hash("ten_1", &e);
            out.push(e);
        }
        out
    }

    #[test]
    fn intact_chain_checks() {
        let c = chain(5);
        let head = c[4].hash.clone();
        assert_eq!(check_chain("ten_1", &c, 5, &head).broken, None);
        assert_eq!(check_chain("ten_1", &[], 0, "").broken, None);
    }

    #[test]
    fn edits_deletions_and_truncation_are_named() {
        let c = chain(5);
        let head = c[4].hash.clone();
        let mut edited = c.clone();
        edited[2].object_id = "flw_other".into();
        assert_eq!(
            check_chain("ten_1", &edited, 5, &head).broken.map(|b| b.0),
            Some(3)
        );
        let mut deleted = c.clone();
        deleted.remove(1);
        assert_eq!(
            check_chain("ten_1", &deleted, 5, &head).broken.map(|b| b.0),
            Some(2)
        );
        let truncated = c[..4].to_vec();
        assert_eq!(
            check_chain("ten_1", &truncated, 5, &head)
                .broken
                .map(|b| b.0),
            Some(5)
        );
        // Another tenant's chain does not verify as this one.
        assert!(check_chain("ten_2", &c, 5, &head).broken.is_some());
    }
}
