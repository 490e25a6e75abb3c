//! Crash-test failpoints: `WEFT_FAILPOINTS=name[,name…]` makes the process abort (as abruptly as
//! `kill -9`: no destructors, no flush) when it reaches a named point. Unset, a check is one
//! pointer comparison.

use std::sync::OnceLock;

static ACTIVE: OnceLock<Vec<String>> = OnceLock::new();

/// Aborts the process if the failpoint `name` is active.
pub fn failpoint(name: &str) {
    failpoint_at(name, "");
}

/// Aborts the process if the failpoint `{name}:{target}` (or `name` when `target` is empty) is
/// active; builds no string unless failpoints are set.
pub fn failpoint_at(name: &str, target: &str) {
    let active = ACTIVE.get_or_init(|| {
        std::env::var("WEFT_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    });
    if active.is_empty() {
        return;
    }
    let full = if target.is_empty() {
        name.to_string()
    } else {
        format!("{name}:{target}")
    };
    if active.contains(&full) {
        eprintln!("failpoint {full} hit: aborting");
        std::process::abort();
    }
}
