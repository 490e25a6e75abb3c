//! PostgreSQL figures for `--backend postgres`: database size and claim-query statistics,
//! read with `psql` (pg_stat_statements, loaded by `scripts/pg.sh` in durable mode).

use std::process::Command;

use anyhow::{Context, bail};

/// A PostgreSQL database the benchmarked weft uses, reached as its owner.
pub struct Pg {
    url: String,
}

/// Cumulative claim-query counters from pg_stat_statements.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimStats {
    /// Claim statements executed.
    pub calls: f64,
    /// Their total execution time in ms.
    pub total_ms: f64,
    /// Runs they claimed.
    pub rows: f64,
}

impl ClaimStats {
    /// Mean ms per claim statement between `earlier` and `self`.
    pub fn mean_ms_since(&self, earlier: &ClaimStats) -> Option<f64> {
        let calls = self.calls - earlier.calls;
        (calls > 0.0).then(|| (self.total_ms - earlier.total_ms) / calls)
    }

    /// Mean runs per claim statement between `earlier` and `self`.
    pub fn batch_since(&self, earlier: &ClaimStats) -> Option<f64> {
        let calls = self.calls - earlier.calls;
        (calls > 0.0).then(|| (self.rows - earlier.rows) / calls)
    }
}

impl Pg {
    /// The database at `url` (an owner URL; needs `pg_read_all_stats` for claim stats).
    pub fn new(url: String) -> Self {
        Self { url }
    }

    fn query(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&self.url)
            .args(["-c", sql])
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Size of the current database in bytes.
    pub fn db_bytes(&self) -> anyhow::Result<u64> {
        self.query("SELECT pg_database_size(current_database())")?
            .parse()
            .context("odd pg_database_size answer")
    }

    /// Cumulative claim statistics (the `FOR UPDATE SKIP LOCKED` statements).
    pub fn claims(&self) -> anyhow::Result<ClaimStats> {
        let s = self.query(
            "SELECT coalesce(sum(calls),0) || '|' || coalesce(sum(total_exec_time),0) || '|' || coalesce(sum(rows),0)
             FROM pg_stat_statements WHERE query LIKE '%SKIP LOCKED%' AND query NOT LIKE '%pg_stat_statements%'",
        )?;
        let mut it = s.split('|').map(|x| x.trim().parse::<f64>().unwrap_or(0.0));
        Ok(ClaimStats {
            calls: it.next().unwrap_or(0.0),
            total_ms: it.next().unwrap_or(0.0),
            rows: it.next().unwrap_or(0.0),
        })
    }

    /// Dead and live tuples of the runs table (how far vacuum is behind).
    pub fn runs_tuples(&self) -> anyhow::Result<(u64, u64)> {
        let s = self.query(
            "SELECT n_live_tup || '|' || n_dead_tup FROM pg_stat_all_tables WHERE relname = 'runs' LIMIT 1",
        )?;
        let mut it = s.split('|').map(|x| x.trim().parse::<u64>().unwrap_or(0));
        Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
    }
}
