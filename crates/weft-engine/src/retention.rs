//! Retention: finished runs older than their workspace's `retention_days` are deleted, with
//! their steps, logs and stored payloads, by a cleanup task every [`INTERVAL`] (in every
//! worker process; two deleting the same run is harmless: the second finds nothing).

use std::sync::Arc;
use std::time::Duration;

use weft_store::{Actor, StoreError};

use crate::{Engine, EngineError, Inner};

/// Time between cleanup passes.
pub const INTERVAL: Duration = Duration::from_secs(600);
/// Runs deleted per store read.
const BATCH: usize = 200;
/// Most runs one pass deletes (the next pass goes on), so a first pass over a large backlog
/// does not hold the store for long.
const MAX_PER_PASS: usize = 20_000;

impl Inner {
    /// One pass: deletes what has expired; how many runs.
    pub(crate) async fn enforce_retention(&self) -> Result<usize, EngineError> {
        let store = &self.opts.store;
        let mut deleted = 0;
        while deleted < MAX_PER_PASS {
            let now = self.now();
            let expired = store.expired_runs(now, BATCH).await?;
            if expired.is_empty() {
                break;
            }
            let mut progressed = false;
            for (scope, run) in expired {
                match store
                    .delete_run(scope, run, Actor::system("retention"), now)
                    .await
                {
                    Ok(()) => {
                        deleted += 1;
                        progressed = true;
                    }
                    // Deleted meanwhile by another process.
                    Err(StoreError::NotFound) => progressed = true,
                    Err(e) => return Err(e.into()),
                }
            }
            if !progressed {
                break;
            }
        }
        if deleted > 0 {
            tracing::info!(
                runs = deleted,
                "deleted finished runs past their workspace's retention"
            );
        }
        Ok(deleted)
    }
}

/// The cleanup task.
pub(crate) async fn cleaner(inner: Arc<Inner>) {
    loop {
        if let Err(e) = inner.enforce_retention().await {
            tracing::warn!(error = %e, "retention cleanup failed; it runs again later");
        }
        tokio::select! {
            _ = inner.opts.clock.sleep(INTERVAL) => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

impl Engine {
    /// Deletes the finished runs past their workspace's retention now (the cleanup task does
    /// it every ten minutes); how many.
    pub async fn enforce_retention(&self) -> Result<usize, EngineError> {
        self.inner.enforce_retention().await
    }
}
