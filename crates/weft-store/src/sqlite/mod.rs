//! SQLite backend: WAL, `synchronous=FULL`, one writer thread with group commit, a reader pool.
//!
//! Group commit: every write is a closure sent to the writer thread, which runs as many as are
//! waiting (up to [`MAX_BATCH`]) inside one transaction, then commits once (one fsync) and only
//! then answers every caller. A caller that got `Ok` knows its write is on disk. One failing
//! write must not undo or half-apply another: when one fails, the batch is rolled back and run
//! again with a savepoint around each write (a savepoint on every write cost a quarter of the
//! writer's time, copying each page a write touches; failures are rare).

mod alerts;
mod audit;
mod credentials;
mod errors;
mod identity;
mod ops;
mod polls;
mod waits;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::StoreError;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_identity.sql")),
    (3, include_str!("migrations/0003_usage_shard.sql")),
    (4, include_str!("migrations/0004_credentials.sql")),
    (5, include_str!("migrations/0005_connectors.sql")),
    (6, include_str!("migrations/0006_oauth.sql")),
    (7, include_str!("migrations/0007_polls.sql")),
    (8, include_str!("migrations/0008_waits.sql")),
    (9, include_str!("migrations/0009_events.sql")),
    (10, include_str!("migrations/0010_log_search.sql")),
    (11, include_str!("migrations/0011_errors.sql")),
    (12, include_str!("migrations/0012_retention.sql")),
    (13, include_str!("migrations/0013_run_events.sql")),
    (14, include_str!("migrations/0014_alerts.sql")),
    (15, include_str!("migrations/0015_auth_failures.sql")),
    (16, include_str!("migrations/0016_run_trace.sql")),
];

/// A write queued for the writer thread. It may run twice (see [`writer_loop`]): only its last
/// run counts, so it must change nothing but the database.
trait Job: Send {
    /// Runs the write; false when it failed (its changes must not stay).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller with the last run's result once the commit's outcome is known.
    fn answer(self: Box<Self>, commit: Result<(), StoreError>);
}

type WriteJob = Box<dyn Job>;

/// A caller's write and where its answer goes.
struct Pending<F, R> {
    f: F,
    out: Option<Result<R, StoreError>>,
    tx: oneshot::Sender<Result<R, StoreError>>,
}

impl<F, R> Job for Pending<F, R>
where
    F: FnMut(&Connection) -> Result<R, StoreError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let r = (self.f)(conn);
        let ok = r.is_ok();
        self.out = Some(r);
        ok
    }

    fn answer(self: Box<Self>, commit: Result<(), StoreError>) {
        let r = match self.out {
            Some(r) => commit.and(r),
            None => commit.and(Err(StoreError::Closed)),
        };
        let _ = self.tx.send(r);
    }
}

/// Options for opening the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Database file path.
    pub path: PathBuf,
    /// Reader connections.
    pub readers: usize,
}

/// The embedded store.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    commits: Arc<AtomicU64>,
    /// Rate-limit state (TAT per key): one process owns an embedded store, so memory suffices.
    rates: Mutex<std::collections::HashMap<String, i64>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Ok(mut t) = self.writer_thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies migrations, starts the writer thread.
    pub fn open(opts: SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = opts.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        }
        let writer = open_conn(&opts.path, false)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db(format!(
                "could not enable WAL mode (got {mode})"
            )));
        }
        migrate(&writer)?;
        let mut readers = Vec::new();
        for _ in 0..opts.readers.max(1) {
            readers.push(open_conn(&opts.path, true)?);
        }
        let (tx, rx) = mpsc::channel::<WriteJob>();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let thread = std::thread::Builder::new()
            .name("weft-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, &counter))
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: opts.path,
                writer: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                readers: Mutex::new(readers),
                commits,
                rates: Mutex::default(),
            }),
        })
    }

    /// Counts one request against the limit `rate` of `key` (GCRA, in memory).
    pub async fn rate_take(
        &self,
        key: &str,
        rate: crate::rate::Rate,
        now_us: i64,
    ) -> Result<crate::rate::RateDecision, StoreError> {
        let mut m = self.inner.rates.lock().map_err(|_| StoreError::Closed)?;
        if m.len() >= 100_000 {
            // Keys whose bucket is full again carry no state worth keeping.
            m.retain(|_, tat| *tat > now_us);
        }
        let (d, tat) = crate::rate::gcra(m.get(key).copied(), now_us, rate);
        if let Some(t) = tat {
            m.insert(key.to_string(), t);
        }
        Ok(d)
    }

    /// Write transactions committed so far (each may carry many writes: group commit).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` inside the next group-committed transaction; answers after the commit. `f` may
    /// run twice (the first run rolled back), so it must change nothing but the database.
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(Pending { f, out: None, tx });
        {
            let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender.send(job).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a reader connection on the blocking pool.
    pub(crate) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = {
                let mut pool = inner.readers.lock().map_err(|_| StoreError::Closed)?;
                pool.pop()
            };
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&inner.path, true)?,
            };
            let r = f(&conn);
            if let Ok(mut pool) = inner.readers.lock() {
                pool.push(conn);
            }
            r
        })
        .await
        .map_err(|e| StoreError::Db(format!("reader task failed: {e}")))?
    }

    /// The schema version the database is at; an error when it does not answer.
    pub async fn ping(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }
}

/// The newest schema version this Weft knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if let Some((latest, _)) = MIGRATIONS.last()
        && current > *latest
    {
        return Err(StoreError::Db(format!(
            "the database schema is version {current}, newer than this Weft ({latest}); upgrade Weft"
        )));
    }
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))",
            [v],
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute([])
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<WriteJob>, commits: &AtomicU64) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
            // Dropping the jobs unblocks their callers with an error; nothing was written.
            batch.clear();
            continue;
        }
        // Optimistic pass: every write straight into the transaction.
        let all_ok = batch.iter_mut().all(|job| job.run(&conn));
        let ready = if all_ok {
            Ok(())
        } else if batch.len() == 1 {
            // The only write failed: undo it; its answer is its own error.
            let _ = conn.execute_batch("ROLLBACK");
            for job in batch.drain(..) {
                job.answer(Ok(()));
            }
            continue;
        } else {
            // A write failed part-way: undo the whole pass and run every write again, each
            // under a savepoint, so the failed one leaves nothing and the others all stay.
            let _ = conn.execute_batch("ROLLBACK");
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(StoreError::from)
                .map(|()| {
                    for job in batch.iter_mut() {
                        // Cached statements: re-parsing these per write cost more than the writes.
                        let _ = exec_cached(&conn, "SAVEPOINT op");
                        if !job.run(&conn) {
                            let _ = exec_cached(&conn, "ROLLBACK TO op");
                        }
                        let _ = exec_cached(&conn, "RELEASE op");
                    }
                })
        };
        let commit = ready.and_then(|()| conn.execute_batch("COMMIT").map_err(StoreError::from));
        commits.fetch_add(1, Ordering::Relaxed);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for job in batch.drain(..) {
            job.answer(commit.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Writes that fail part-way share batches with writes that succeed: every failed write
    /// leaves nothing, every successful one stays, each caller gets its own answer, and the
    /// rerun path (a write run twice) was taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_failing_part_way_leaves_nothing_and_spares_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteOptions {
            path: dir.path().join("w.db"),
            readers: 1,
        })
        .unwrap();
        store
            .write(|c| Ok(c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")?))
            .await
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut hs = Vec::new();
        for k in 0..400i64 {
            let (store, runs) = (store.clone(), runs.clone());
            hs.push(tokio::spawn(async move {
                store
                    .write(move |c| {
                        runs.fetch_add(1, Ordering::Relaxed);
                        c.execute("INSERT INTO t (k, v) VALUES (?1, 'a')", [k])?;
                        c.execute("UPDATE t SET v = 'b' WHERE k = ?1", [k])?;
                        if k % 7 == 3 {
                            return Err(StoreError::Conflict(format!("write {k} refused")));
                        }
                        Ok(k * 2)
                    })
                    .await
            }));
        }
        for (k, h) in hs.into_iter().enumerate() {
            let k = k as i64;
            match h.await.unwrap() {
                Ok(v) => assert_eq!(v, k * 2),
                Err(StoreError::Conflict(m)) => {
                    assert_eq!(k % 7, 3);
                    assert_eq!(m, format!("write {k} refused"));
                }
                Err(e) => panic!("write {k}: {e:?}"),
            }
        }
        let rows: Vec<(i64, String)> = store
            .read(|c| {
                let mut st = c.prepare("SELECT k, v FROM t ORDER BY k")?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        let want: Vec<(i64, String)> = (0..400)
            .filter(|k| k % 7 != 3)
            .map(|k| (k, "b".to_string()))
            .collect();
        assert_eq!(rows, want);
        assert!(
            runs.load(Ordering::Relaxed) > 400,
            "no batch was rolled back and rerun ({} runs)",
            runs.load(Ordering::Relaxed)
        );
    }
}
