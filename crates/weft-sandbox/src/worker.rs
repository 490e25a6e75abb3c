//! The child side: read one JSON request per line (jq, or a JavaScript code step), answer one
//! JSON line.

use std::io::{BufRead, Write};

use crate::{Request, Response};

/// Largest serialized answer a worker sends back.
const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// Entry point of `weft sandbox-worker`: applies the rlimits, then serves requests on stdin/stdout until EOF.
pub fn worker_main(memory_bytes: u64) -> std::io::Result<()> {
    limit_resources(memory_bytes);
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    let mut cache = weft_expr::JaqCache::new();
    let mut line = String::new();
    let mut input = stdin.lock();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => match req.js_ms {
                Some(ms) => Response::Js(crate::eval_js(
                    &req.src,
                    &req.input,
                    crate::JsLimits {
                        // The heap cap stays well inside the process's address-space cap, so
                        // runaway allocation is a clean error rather than a dead worker.
                        memory_bytes: (memory_bytes / 4).clamp(16 << 20, 256 << 20) as usize,
                        time: std::time::Duration::from_millis(ms),
                        ..crate::JsLimits::default()
                    },
                )),
                None => match cache.eval(&req.src, &req.input) {
                    Ok(out) => Response::Ok(out),
                    Err(e) => Response::Err(e.to_string()),
                },
            },
            Err(e) => Response::Err(format!("bad sandbox request: {e}")),
        };
        let mut text = serde_json::to_string(&resp)
            .unwrap_or_else(|e| format!("{{\"err\":\"cannot encode output: {e}\"}}"));
        if text.len() > MAX_OUTPUT_BYTES {
            text = serde_json::to_string(&Response::Err(format!(
                "the expression's output is {} bytes; the limit is {MAX_OUTPUT_BYTES}",
                text.len()
            )))
            .unwrap_or_default();
        }
        stdout.write_all(text.as_bytes())?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
}

/// Caps the address space at what this child has mapped now plus `memory_bytes` (so runaway
/// allocation aborts this child, not the server) and disables core dumps. Counting from the
/// current size matters: the global allocator reserves address space up front, which an
/// absolute cap would leave the expression none of.
#[allow(unsafe_code)]
fn limit_resources(memory_bytes: u64) {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let memory_bytes = mapped_pages()
        .saturating_mul(page)
        .saturating_add(memory_bytes);
    let set = |res, soft: u64| {
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: soft as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct we pass; it affects this process alone.
        unsafe { libc::setrlimit(res, &lim) };
    };
    set(libc::RLIMIT_AS, memory_bytes);
    set(libc::RLIMIT_CORE, 0);
}

/// Pages of address space this process has mapped (Linux `/proc/self/statm`; 0 if unreadable).
fn mapped_pages() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
}
