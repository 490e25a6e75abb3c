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

/// CPU time of `pid` (`self` for this process) in clock ticks: utime + stime + cutime + cstime.
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after the comm: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(get(14)? + get(15)? + get(16)? + get(17)?)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// CPU use of weft and of this process over an interval, in cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub weft: f64,
    pub bench: f64,
    /// Everything else on the machine (other processes, interrupts).
    pub other: f64,
}

/// Busy clock ticks of the whole machine, from the `cpu` line of `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is included in user).
    Some(
        f.iter()
            .take(8)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, v)| v)
            .sum(),
    )
}

/// Starts measuring CPU use; `finish` gives the cores used since.
pub struct CpuMeter {
    pid: String,
    tck: u64,
    at: std::time::Instant,
    weft0: u64,
    self0: u64,
    all0: u64,
}

impl CpuMeter {
    pub fn start(pid: u32, tck: u64) -> Self {
        let pid = pid.to_string();
        let weft0 = cpu_ticks(&pid).unwrap_or(0);
        Self {
            tck,
            at: std::time::Instant::now(),
            weft0,
            self0: cpu_ticks("self").unwrap_or(0),
            all0: machine_busy_ticks().unwrap_or(0),
            pid,
        }
    }

    pub fn finish(&self) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3) * self.tck as f64;
        let weft = cpu_ticks(&self.pid)
            .unwrap_or(self.weft0)
            .saturating_sub(self.weft0);
        let me = cpu_ticks("self")
            .unwrap_or(self.self0)
            .saturating_sub(self.self0);
        let all = machine_busy_ticks()
            .unwrap_or(self.all0)
            .saturating_sub(self.all0);
        CpuUse {
            weft: weft as f64 / secs,
            bench: me as f64 / secs,
            other: all.saturating_sub(weft + me) as f64 / secs,
        }
    }
}
