//! JavaScript code steps, run by QuickJS inside a worker process. The code is the body of a
//! function; the context arrives as `ctx` (and as `trigger`, `steps`, `run`, `flow`, `vars`,
//! `item`, `index`); what it returns, as JSON, is the step's output. `console.log` and friends
//! are captured. QuickJS without its libc module has no file, network, process or environment
//! access; memory, stack and time are capped here, and the worker process's rlimits and the
//! pool's wall-clock kill stand behind those caps.

use std::time::{Duration, Instant};

use rquickjs::{Context, Runtime};
use serde_json::Value;

/// Limits of one code evaluation.
#[derive(Debug, Clone, Copy)]
pub struct JsLimits {
    /// Heap the code may allocate.
    pub memory_bytes: usize,
    /// Native stack the interpreter may use (deep recursion stops here).
    pub stack_bytes: usize,
    /// CPU time before the code is interrupted.
    pub time: Duration,
}

impl Default for JsLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            stack_bytes: 512 * 1024,
            time: Duration::from_secs(5),
        }
    }
}

/// What a code step produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JsOutcome {
    /// The returned value (`null` for `undefined`), or the error the code threw.
    pub result: Result<Value, String>,
    /// Lines written with `console.log`, `info`, `warn`, `error`, `debug`.
    pub logs: Vec<String>,
}

/// Most console lines kept, and most bytes of each.
const MAX_LOG_LINES: usize = 1000;
const MAX_LOG_LINE: usize = 8 * 1024;

/// The wrapper: console capture, the context's names, the user's body in its own function (so
/// it may declare any name), and JSON out. Everything returns through one JSON string.
fn program(code: &str) -> String {
    format!(
        r#"(function (__input) {{
  var __logs = [];
  var __fmt = function (x) {{
    if (typeof x === "string") return x;
    try {{ var s = JSON.stringify(x); return s === undefined ? String(x) : s; }} catch (e) {{ return String(x); }}
  }};
  var __log = function (level) {{
    return function () {{
      if (__logs.length >= {MAX_LOG_LINES}) return;
      var parts = [];
      for (var i = 0; i < arguments.length; i++) parts.push(__fmt(arguments[i]));
      var line = (level ? level + ": " : "") + parts.join(" ");
      __logs.push(line.length > {MAX_LOG_LINE} ? line.slice(0, {MAX_LOG_LINE}) + "…" : line);
    }};
  }};
  globalThis.console = {{ log: __log(""), info: __log(""), debug: __log(""), warn: __log("warn"), error: __log("error") }};
  var ctx = JSON.parse(__input);
  var __out;
  try {{
    var __r = (function (ctx, trigger, steps, run, flow, vars, item, index) {{
      return (function () {{
{code}
      }})();
    }})(ctx, ctx.trigger, ctx.steps, ctx.run, ctx.flow, ctx.vars, ctx.item, ctx.index);
    if (__r && typeof __r.then === "function") {{
      return JSON.stringify({{ error: "code steps are synchronous: return a value, not a Promise", logs: __logs }});
    }}
    __out = JSON.stringify(__r === undefined ? null : __r);
    if (__out === undefined) __out = "null";
  }} catch (e) {{
    var msg = (e && e.name ? e.name + ": " : "") + (e && e.message !== undefined ? e.message : String(e));
    return JSON.stringify({{ error: msg, logs: __logs }});
  }}
  return '{{"ok":' + __out + ',"logs":' + JSON.stringify(__logs) + '}}';
}})"#
    )
}

/// Runs `code` over `input` (the step's context) under `limits`.
pub fn eval_js(code: &str, input: &Value, limits: JsLimits) -> JsOutcome {
    let fail = |e: String| JsOutcome {
        result: Err(e),
        logs: Vec::new(),
    };
    let rt = match Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the JavaScript runtime: {e}")),
    };
    rt.set_memory_limit(limits.memory_bytes);
    rt.set_max_stack_size(limits.stack_bytes);
    let deadline = Instant::now() + limits.time;
    rt.set_interrupt_handler(Some(Box::new(move || Instant::now() > deadline)));
    let cx = match Context::full(&rt) {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the JavaScript runtime: {e}")),
    };
    let input = input.to_string();
    let answer: Result<String, String> = cx.with(|cx| {
        let run = || -> rquickjs::Result<String> {
            let f: rquickjs::Function = cx.eval(program(code))?;
            f.call((input.as_str(),))
        };
        run().map_err(|e| match e {
            rquickjs::Error::Exception => {
                let ex = cx.catch();
                ex.as_exception()
                    .map(|x| x.message().unwrap_or_else(|| "exception".to_string()))
                    .or_else(|| ex.as_string().and_then(|s| s.to_string().ok()))
                    .unwrap_or_else(|| "the code threw a non-error value".to_string())
            }
            other => other.to_string(),
        })
    });
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let e = if Instant::now() > deadline {
                format!(
                    "the code ran longer than its {:?} time limit and was stopped",
                    limits.time
                )
            } else if e.contains("out of memory") || e.contains("Allocation") {
                format!(
                    "the code exhausted its {} MiB memory limit",
                    limits.memory_bytes / (1024 * 1024)
                )
            } else if e.contains("stack overflow") {
                "the code exhausted its stack (too deep a recursion)".to_string()
            } else {
                e
            };
            return fail(e);
        }
    };
    let v: Value = match serde_json::from_str(&answer) {
        Ok(v) => v,
        Err(e) => return fail(format!("the code's result is not JSON: {e}")),
    };
    let logs = v
        .get("logs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|l| l.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let result = match v.get("error") {
        Some(e) => Err(e.as_str().unwrap_or("the code failed").to_string()),
        None => Ok(v.get("ok").cloned().unwrap_or(Value::Null)),
    };
    JsOutcome { result, logs }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(code: &str) -> JsOutcome {
        eval_js(
            code,
            &json!({"trigger": {"body": {"n": 3}}, "steps": {}, "vars": {"k": 2}}),
            JsLimits {
                time: Duration::from_millis(500),
                ..JsLimits::default()
            },
        )
    }

    #[test]
    fn returns_json_and_captures_console() {
        let o = run(
            "console.log('n is', trigger.body.n, {a: 1}); return {double: ctx.trigger.body.n * vars.k};",
        );
        assert_eq!(o.result, Ok(json!({"double": 6})));
        assert_eq!(o.logs, vec!["n is 3 {\"a\":1}".to_string()]);
        assert_eq!(
            run("const steps = 1; return steps + 1;").result,
            Ok(json!(2))
        );
        assert_eq!(run("return undefined;").result, Ok(json!(null)));
    }

    #[test]
    fn errors_and_runaways_fail_within_limits() {
        let o = run("console.warn('before'); throw new Error('boom');");
        assert_eq!(o.result, Err("Error: boom".to_string()));
        assert_eq!(o.logs, vec!["warn: before".to_string()]);
        let spin = run("while (true) {}");
        assert!(spin.result.unwrap_err().contains("time limit"));
        let deep = run("function f(n) { return f(n + 1) + 1; } return f(0);");
        assert!(deep.result.unwrap_err().contains("stack"), "deep recursion");
        let big = run("var a = []; while (true) { a.push(new Array(1e6).fill(1)); }");
        assert!(big.result.unwrap_err().contains("memory"));
        assert!(run("return (").result.is_err());
        assert!(
            run("return Promise.resolve(1);")
                .result
                .unwrap_err()
                .contains("synchronous")
        );
    }

    #[test]
    fn no_host_access() {
        for probe in [
            "typeof require",
            "typeof process",
            "typeof std",
            "typeof os",
            "typeof fetch",
        ] {
            assert_eq!(
                run(&format!("return {probe};")).result,
                Ok(json!("undefined")),
                "{probe}"
            );
        }
    }
}
