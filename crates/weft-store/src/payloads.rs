//! Large payloads: trigger events, step outputs and run outputs whose JSON is larger than a
//! threshold (default 256 KiB) live in object storage (`object_store`: a local directory, or
//! S3-compatible storage) and the database keeps a small reference in their place.
//!
//! It is transparent: [`crate::Store`] offloads on write and resolves on read, so the engine,
//! expressions and the API only ever see the value. The reference lives in the same JSON column
//! as an inline value would, so a marker tells them apart; a user value that happens to carry the
//! marker is stored wrapped as a literal, so data can never pose as a reference (see [`encode`]).
//!
//! Objects are immutable and named `{tenant}/{workspace}/{run}/{slot}-{random}.json`: a reference
//! is only followed inside the prefix of the run that holds it, and deleting a run deletes its
//! prefix. A write that did not commit (duplicate, refused, crashed) leaves at most an orphan,
//! which the store removes when it knows, and `weft admin payloads sweep` otherwise.

use std::io;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use weft_types::{Millis, RunId, Scope, TenantId, WorkspaceId};

use crate::StoreError;

/// Values whose JSON is larger than this many bytes go to object storage by default.
pub const DEFAULT_THRESHOLD: usize = 256 * 1024;

/// The key that marks a stored value as a reference or an escaped literal.
pub const MARK: &str = "$weft_payload";

/// Where one offloaded value lives, as recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Object key, under the run's prefix.
    pub key: String,
    /// Length of the stored JSON in bytes (what the tenant is charged).
    pub size: u64,
    /// SHA-256 of the stored JSON, hex; checked on every read.
    pub sha256: String,
}

/// A value as read back from a JSON column.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// The value itself.
    Inline(Value),
    /// A reference to the value in object storage.
    Blob(BlobRef),
}

/// Makes a value safe to store inline: one that carries the marker key is wrapped as a literal,
/// so only [`reference`] can produce a reference.
pub fn encode(v: Value) -> Value {
    match &v {
        Value::Object(m) if m.contains_key(MARK) => json!({ MARK: { "literal": v } }),
        _ => v,
    }
}

/// The stored form of a reference.
pub fn reference(b: &BlobRef) -> Value {
    json!({ MARK: { "blob": b } })
}

/// Reads a stored value back: the value, an unwrapped literal, or a reference.
pub fn decode(v: Value) -> Result<Decoded, StoreError> {
    let Value::Object(mut m) = v else {
        return Ok(Decoded::Inline(v));
    };
    if m.len() != 1 || !m.contains_key(MARK) {
        return Ok(Decoded::Inline(Value::Object(m)));
    }
    let inner = m.remove(MARK).unwrap_or(Value::Null);
    match inner {
        Value::Object(mut i) if i.len() == 1 && i.contains_key("literal") => {
            Ok(Decoded::Inline(i.remove("literal").unwrap_or(Value::Null)))
        }
        Value::Object(mut i) if i.len() == 1 && i.contains_key("blob") => {
            let b = i.remove("blob").unwrap_or(Value::Null);
            serde_json::from_value(b)
                .map(Decoded::Blob)
                .map_err(|e| StoreError::Corrupt(format!("a payload reference is malformed: {e}")))
        }
        _ => Err(StoreError::Corrupt(
            "a stored value carries the payload marker but is neither a literal nor a reference"
                .into(),
        )),
    }
}

/// Bytes a stored value is charged for: the offloaded size for a reference, else its JSON text.
pub fn charged_len(stored: &Value, text_len: usize) -> i64 {
    match stored {
        Value::Object(m) if m.len() == 1 => m
            .get(MARK)
            .and_then(|i| i.get("blob"))
            .and_then(|b| b.get("size"))
            .and_then(Value::as_i64)
            .unwrap_or(text_len as i64),
        _ => text_len as i64,
    }
}

/// Whether `v`'s JSON is longer than `limit` bytes; stops serializing as soon as it is.
pub fn longer_than(v: &Value, limit: usize) -> bool {
    struct Count {
        n: usize,
        limit: usize,
    }
    impl io::Write for Count {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.n += b.len();
            if self.n > self.limit {
                Err(io::Error::other("over the limit"))
            } else {
                Ok(b.len())
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Count { n: 0, limit }, v).is_err()
}

/// The prefix all of a run's objects live under.
fn run_prefix(scope: &Scope, run: RunId) -> String {
    format!("{}/{}/{}", scope.tenant, scope.workspace, run)
}

/// Object storage for large payloads (cheap to clone).
#[derive(Clone)]
pub struct Payloads {
    inner: Arc<Inner>,
}

struct Inner {
    objects: Arc<dyn ObjectStore>,
    threshold: usize,
    describe: String,
}

impl std::fmt::Debug for Payloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payloads")
            .field("at", &self.inner.describe)
            .field("threshold", &self.inner.threshold)
            .finish()
    }
}

fn unavailable(e: object_store::Error) -> StoreError {
    StoreError::Unavailable(format!("payload store: {e}"))
}

impl Payloads {
    /// Payloads in a local directory (created if missing); every object and its directory are
    /// fsynced before a write returns, as the database's commits are.
    pub fn local(dir: &std::path::Path, threshold: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the payload directory {}: {e}",
                dir.display()
            ))
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(unavailable)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(Self::new(
            Arc::new(fs),
            threshold,
            dir.display().to_string(),
        ))
    }

    /// Payloads at `url`: `s3://bucket[/prefix]` (configured by the usual `AWS_*` variables:
    /// `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP`), `file:///dir`, or a plain directory path.
    pub fn open(url: &str, threshold: usize) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::Rule(format!(
                    "the payload store URL {url} names no bucket; use s3://BUCKET[/PREFIX]"
                )));
            }
            // Intake waits on the write: fail within seconds (503) rather than the crate's default
            // of retrying for minutes.
            let retry = object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(15),
                ..Default::default()
            };
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .build()
                .map_err(|e| {
                    StoreError::Rule(format!("cannot configure the payload store {url}: {e}"))
                })?;
            let objects: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
                "" => Arc::new(s3),
                p => Arc::new(object_store::prefix::PrefixStore::new(s3, p)),
            };
            return Ok(Self::new(objects, threshold, url.to_string()));
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Self::local(std::path::Path::new(path), threshold);
        }
        if url.contains("://") {
            return Err(StoreError::Rule(format!(
                "the payload store URL {url} is not supported; use s3://BUCKET[/PREFIX], file:///DIR or a directory"
            )));
        }
        Self::local(std::path::Path::new(url), threshold)
    }

    /// Payloads in any object store (tests use an in-memory one).
    pub fn new(objects: Arc<dyn ObjectStore>, threshold: usize, describe: String) -> Self {
        Payloads {
            inner: Arc::new(Inner {
                objects,
                threshold,
                describe,
            }),
        }
    }

    /// Where the payloads live, for messages.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    /// Values whose JSON is longer than this go to object storage.
    pub fn threshold(&self) -> usize {
        self.inner.threshold
    }

    /// The stored form of `v`: `v` itself (encoded) when small, else a reference to the object
    /// just written, whose key is returned too so a write that does not commit can remove it.
    pub(crate) async fn store(
        &self,
        scope: &Scope,
        run: RunId,
        slot: &str,
        v: Value,
    ) -> Result<(Value, Option<ObjPath>), StoreError> {
        if !longer_than(&v, self.inner.threshold) {
            return Ok((encode(v), None));
        }
        let bytes = serde_json::to_vec(&v)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialize a payload: {e}")))?;
        let key = format!(
            "{}/{slot}-{}.json",
            run_prefix(scope, run),
            uuid::Uuid::new_v4().simple()
        );
        let blob = BlobRef {
            key: key.clone(),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        };
        let path = ObjPath::from(key);
        self.inner
            .objects
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(unavailable)?;
        Ok((reference(&blob), Some(path)))
    }

    /// The value a stored `v` of `run` stands for. A reference is only followed inside the run's
    /// own prefix, and the object must match its recorded size and hash.
    pub(crate) async fn load(
        &self,
        scope: &Scope,
        run: RunId,
        b: BlobRef,
    ) -> Result<Value, StoreError> {
        let prefix = format!("{}/", run_prefix(scope, run));
        let rest = b.key.strip_prefix(&prefix).unwrap_or("");
        if rest.is_empty() || rest.contains('/') || rest.contains("..") {
            return Err(StoreError::Corrupt(format!(
                "run {run} refers to a payload outside its own prefix"
            )));
        }
        let got = self.inner.objects.get(&ObjPath::from(b.key.as_str())).await;
        let bytes = match got {
            Ok(g) => g.bytes().await.map_err(unavailable)?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::Corrupt(format!(
                    "the payload {} of run {run} is missing from {}",
                    b.key, self.inner.describe
                )));
            }
            Err(e) => return Err(unavailable(e)),
        };
        if bytes.len() as u64 != b.size || hex::encode(sha2::Sha256::digest(&bytes)) != b.sha256 {
            return Err(StoreError::Corrupt(format!(
                "the payload {} of run {run} does not match its recorded size and hash",
                b.key
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("the payload {} of run {run}: {e}", b.key)))
    }

    /// Removes an object whose write did not commit; a failure only leaves an orphan for the
    /// sweep, so it is logged, not returned.
    pub(crate) async fn forget(&self, path: ObjPath) {
        if let Err(e) = self.inner.objects.delete(&path).await {
            tracing::warn!(key = %path, error = %e, "could not remove an uncommitted payload; `weft admin payloads sweep` will");
        }
    }

    /// Deletes every object of a run; returns how many.
    pub async fn delete_run(&self, scope: &Scope, run: RunId) -> Result<usize, StoreError> {
        let prefix = ObjPath::from(run_prefix(scope, run));
        let keys: Vec<ObjPath> = self
            .inner
            .objects
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(unavailable)?;
        let n = keys.len();
        let stream = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
        self.inner
            .objects
            .delete_stream(stream)
            .try_collect::<Vec<_>>()
            .await
            .map_err(unavailable)?;
        Ok(n)
    }

    /// Every run that has objects, with the time its newest object was written: what a sweep
    /// checks against the database. Keys that do not parse as `tenant/workspace/run/…` are
    /// skipped (they are not Weft's).
    pub async fn runs_with_objects(&self) -> Result<Vec<(Scope, RunId, Millis)>, StoreError> {
        let mut out: std::collections::BTreeMap<(String, String, String), (Scope, RunId, Millis)> =
            Default::default();
        let mut list = self.inner.objects.list(None);
        while let Some(m) = list.next().await {
            let m = m.map_err(unavailable)?;
            let parts: Vec<_> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
            let [t, w, r, _] = parts.as_slice() else {
                continue;
            };
            let (Ok(tenant), Ok(workspace), Ok(run)) = (
                t.parse::<TenantId>(),
                w.parse::<WorkspaceId>(),
                r.parse::<RunId>(),
            ) else {
                continue;
            };
            let at = m.last_modified.timestamp_millis();
            let e = out.entry((t.clone(), w.clone(), r.clone())).or_insert((
                Scope { tenant, workspace },
                run,
                at,
            ));
            e.2 = e.2.max(at);
        }
        Ok(out.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_stored_as_they_are() {
        for v in [
            json!(1),
            json!("x"),
            json!([1, 2]),
            json!({"a": 1}),
            Value::Null,
        ] {
            assert_eq!(encode(v.clone()), v);
            assert_eq!(decode(v.clone()).ok(), Some(Decoded::Inline(v)));
        }
    }

    #[test]
    fn a_value_that_looks_like_a_reference_stays_data() {
        let forged = json!({MARK: {"blob": {"key": "t/w/r/x.json", "size": 1, "sha256": "00"}}});
        let stored = encode(forged.clone());
        assert_ne!(stored, forged);
        assert_eq!(
            decode(stored.clone()).ok(),
            Some(Decoded::Inline(forged.clone()))
        );
        assert_eq!(charged_len(&stored, 77), 77, "a literal is charged as text");
        let mixed = json!({MARK: 1, "other": 2});
        assert_eq!(
            decode(encode(mixed.clone())).ok(),
            Some(Decoded::Inline(mixed))
        );
    }

    #[test]
    fn references_round_trip_and_are_charged_their_size() {
        let b = BlobRef {
            key: "k".into(),
            size: 300_000,
            sha256: "ab".into(),
        };
        let r = reference(&b);
        assert_eq!(decode(r.clone()).ok(), Some(Decoded::Blob(b)));
        assert_eq!(charged_len(&r, 90), 300_000);
    }

    #[test]
    fn malformed_markers_are_corrupt_not_data() {
        assert!(decode(json!({MARK: 5})).is_err());
        assert!(decode(json!({MARK: {"blob": {"key": 1}}})).is_err());
        assert!(decode(json!({MARK: {"literal": 1, "blob": 2}})).is_err());
    }

    #[test]
    fn size_check_stops_early() {
        assert!(!longer_than(&json!("abc"), 5));
        assert!(longer_than(&json!("abcd"), 5), "\"abcd\" is 6 bytes");
        let big = Value::String("x".repeat(1 << 20));
        assert!(longer_than(&big, 1024));
    }
}
