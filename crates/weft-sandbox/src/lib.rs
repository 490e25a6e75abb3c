//! Sandbox worker processes for untrusted expressions and JavaScript code steps.
//!
//! jaq has no guard against runaway filters (`def f: 1+f; f` aborts the process that runs it),
//! so any filter the in-process fast path cannot prove bounded runs here: in a child process of
//! the same binary, under an address-space rlimit, killed on a wall-clock deadline and respawned.
//! A crash or kill costs only that evaluation; the server and other runs go on.

mod js;
mod pool;
mod worker;

pub use js::{JsLimits, JsOutcome, eval_js};
pub use pool::{SandboxError, SandboxOptions, SandboxPool};
pub use worker::worker_main;

/// Request line sent to a worker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Request {
    /// jq source, or JavaScript when `js` is set.
    src: String,
    /// Input document.
    input: serde_json::Value,
    /// For JavaScript: the CPU time limit in milliseconds (its presence makes `src` JS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    js_ms: Option<u64>,
}

/// Response line from a worker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    /// All outputs.
    Ok(Vec<serde_json::Value>),
    /// jq error.
    Err(String),
    /// A JavaScript evaluation's outcome.
    Js(JsOutcome),
}
