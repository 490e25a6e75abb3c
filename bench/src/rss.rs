//! Memory of the `weft` process (and of its process tree: sandbox workers) from `/proc`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
pub fn status_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Sum of `VmRSS` (KiB) over `pid` and all its descendants (shared pages are counted once per
/// process, so this is an upper bound).
pub fn tree_rss_kib(pid: u32) -> u64 {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...; comm may contain spaces and parentheses.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok())
            {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += status_kib(p).map(|(rss, _)| rss).unwrap_or(0);
        if let Some(c) = children.get(&p) {
            stack.extend(c);
        }
    }
    total
}

/// Samples the RSS every 100 ms on a thread and keeps the peaks since the last reset.
pub struct Monitor {
    pid: u32,
    peak: AtomicU64,
    peak_tree: AtomicU64,
    stop: AtomicBool,
}

impl Monitor {
    pub fn start(pid: u32) -> Arc<Self> {
        let m = Arc::new(Self {
            pid,
            peak: AtomicU64::new(0),
            peak_tree: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let mm = m.clone();
        std::thread::spawn(move || {
            while !mm.stop.load(Ordering::Relaxed) {
                mm.sample();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        m
    }

    fn sample(&self) -> (u64, u64) {
        let rss = status_kib(self.pid).map(|(r, _)| r).unwrap_or(0);
        let tree = tree_rss_kib(self.pid);
        self.peak.fetch_max(rss, Ordering::Relaxed);
        self.peak_tree.fetch_max(tree, Ordering::Relaxed);
        (rss, tree)
    }

    /// Current (RSS, tree RSS) in KiB.
    pub fn now(&self) -> (u64, u64) {
        self.sample()
    }

    /// Starts a new peak window.
    pub fn reset(&self) {
        self.peak.store(0, Ordering::Relaxed);
        self.peak_tree.store(0, Ordering::Relaxed);
        self.sample();
    }

    /// Peaks (RSS, tree RSS) in KiB since the last reset.
    pub fn peak(&self) -> (u64, u64) {
        self.sample();
        (
            self.peak.load(Ordering::Relaxed),
            self.peak_tree.load(Ordering::Relaxed),
        )
    }

    /// `VmHWM` of the process in KiB.
    pub fn hwm(&self) -> u64 {
        status_kib(self.pid).map(|(_, h)| h).unwrap_or(0)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
