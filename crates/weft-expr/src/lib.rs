//! Weft's expression language: jq.
//!
//! Expressions are validated with jaq's real parser. Those inside a safe
//! subset of jq run in-process on a fast path ([`Expr::eval_fast`]) with fuel
//! and size limits, so nothing they do can hang, overflow the stack or
//! exhaust memory. Everything else must run in a sandbox worker process
//! through [`eval_jaq`], which is plain, unguarded jaq.
//!
//! String templates (`"Hello {{ .trigger.body.name }}"`) are handled by
//! [`TValue`].

mod convert;
mod eval;
mod jaq;
mod scan;
mod template;
mod val;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

pub use template::{TValue, TextPart};

/// Limits for one in-process evaluation.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Evaluation steps allowed; every step, produced element and unit of
    /// data work costs fuel.
    pub fuel: u64,
    /// Largest total size of the outputs and of any single string built, in
    /// bytes (approximate for non-strings); intermediate data may use four
    /// times this much in total.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 1_000_000,
            max_output_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why an expression failed to compile.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ExprError {
    /// jaq could not parse the expression.
    #[error("jq syntax error: {message}; check brackets, quotes and operators")]
    Syntax {
        /// What the parser expected and where.
        message: String,
    },
    /// The source is longer than allowed.
    #[error("expression is longer than {max} bytes; shorten it or split it into several steps")]
    TooLong {
        /// Maximum length in bytes.
        max: usize,
    },
    /// Brackets, parentheses, braces or string interpolations nest too deeply.
    #[error(
        "expression nests brackets, braces, parentheses or interpolations more than {max} levels deep; flatten it or split it into several steps"
    )]
    TooDeep {
        /// Maximum nesting depth.
        max: usize,
    },
    /// Too many operators are chained together.
    #[error(
        "expression chains more than {max} operators and keywords; split it into several steps or pass large constant lists as data"
    )]
    TooComplex {
        /// Maximum complexity.
        max: usize,
    },
    /// A function that jaq does not define with this number of arguments.
    #[error(
        "unknown jq function `{name}/{arity}`; check its spelling and number of arguments (arguments are separated by `;`)"
    )]
    UnknownFunction {
        /// Function name.
        name: String,
        /// Number of arguments.
        arity: usize,
    },
    /// A variable that is not bound.
    #[error("undefined variable `{name}`; bind it first, for example `.x as {name} | ...`")]
    UndefinedVariable {
        /// Variable name, including the `$`.
        name: String,
    },
    /// Another undefined name (label or module).
    #[error("undefined {kind} `{name}`; define it before using it")]
    Undefined {
        /// What kind of name.
        kind: String,
        /// The name.
        name: String,
    },
    /// Valid jq that Weft does not support.
    #[error("{message}")]
    Unsupported {
        /// What is unsupported and what to do instead.
        message: String,
    },
    /// A malformed `{{ ... }}` template.
    #[error("invalid template: {message}")]
    BadTemplate {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The compiler failed unexpectedly.
    #[error("internal error while compiling the expression: {message}; please report this")]
    Internal {
        /// What happened.
        message: String,
    },
}

/// Why an evaluation failed at run time.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EvalError {
    /// A jq error (the error value's text, e.g. `cannot index 1 with "a"`).
    #[error("jq expression failed: {0}")]
    Runtime(String),
    /// The evaluation used up its fuel.
    #[error(
        "expression exceeded its budget of {fuel} evaluation steps; simplify it or give it less data"
    )]
    FuelExhausted {
        /// The fuel it started with.
        fuel: u64,
    },
    /// The evaluation built more data than allowed.
    #[error("expression built more than {max} bytes of data; make it produce less")]
    OutputTooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// More than one output where exactly one was expected.
    #[error(
        "expression produced {count_at_least} or more values where one was expected; wrap it in [ ... ] to collect them into a list, or use first(...)"
    )]
    MultipleOutputs {
        /// How many outputs were seen (at least).
        count_at_least: usize,
    },
    /// The expression did not compile.
    #[error(transparent)]
    Compile(#[from] ExprError),
}

/// Complexity up to which compiling runs on the caller's stack.
const INLINE_COMPLEXITY: usize = 64;
/// Stack for compiling more complex expressions: jaq's parser and compiler
/// recurse once per chained operator, with large frames in debug builds.
const BIG_STACK: usize = 64 * 1024 * 1024;

/// Runs `f` where jaq's recursion over a source of this complexity is safe.
fn with_stack<T: Send>(complexity: usize, f: impl FnOnce() -> T + Send) -> Result<T, ExprError> {
    if complexity <= INLINE_COMPLEXITY {
        return Ok(f());
    }
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("weft-expr-compile".to_string())
            .stack_size(BIG_STACK)
            .spawn_scoped(s, f)
            .map_err(|e| ExprError::Internal {
                message: format!("cannot start the compiler thread: {e}"),
            })?;
        handle.join().map_err(|_| ExprError::Internal {
            message: "the jq compiler panicked".to_string(),
        })
    })
}

#[derive(Debug)]
struct Inner {
    source: String,
    fast: Option<eval::Node>,
}

/// One field of a context evaluated with [`Expr::eval_fast_parts`].
#[derive(Debug, Clone)]
pub enum Part<'a> {
    /// A whole value.
    Value(&'a Value),
    /// An object with these entries (a later entry replaces an earlier one of the same key).
    Object(Vec<(&'a str, &'a Value)>),
}

/// A compiled jq expression; cheap to clone (Arc inside), Send + Sync.
#[derive(Debug, Clone)]
pub struct Expr {
    inner: Arc<Inner>,
}

fn unsupported_modules() -> ExprError {
    ExprError::Unsupported {
        message: "`module`, `import` and `include` directives are not supported; inline the definitions you need".to_string(),
    }
}

impl Expr {
    /// Parses and compiles `source` (validated with jaq's real parser and,
    /// unless it runs on the fast path, jaq's compiler with the standard
    /// library); rejects sources longer than 64 KiB (TooLong), nesting deeper
    /// than 64 (TooDeep) and overly long operator chains (TooComplex) before
    /// parsing, because jaq's parser recurses. Decides whether the fast path
    /// can run it.
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        let scan = scan::scan(source)?;
        let fast = with_stack(scan.complexity, || -> Result<_, ExprError> {
            let Some(term) = jaq_core::load::parse(source, |p| p.term()) else {
                // jaq's loader gives the detailed error, or accepts module
                // directives that a bare term cannot contain.
                jaq::compile(source)?;
                return Err(unsupported_modules());
            };
            let fast = convert::convert(&term).ok();
            if fast.is_none() {
                // The fast converter only accepts known builtins and bound
                // variables, so only other expressions need jaq's compiler.
                jaq::compile(source)?;
            }
            Ok(fast)
        })??;
        Ok(Expr {
            inner: Arc::new(Inner {
                source: source.to_string(),
                fast,
            }),
        })
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Whether it runs in-process on the fast path.
    pub fn is_fast(&self) -> bool {
        self.inner.fast.is_some()
    }

    /// Whether evaluating it again on the same input gives the same outputs and does nothing
    /// else: true on the fast path, whose builtins are all pure (no `now`, `input`, `debug`).
    pub fn is_pure(&self) -> bool {
        self.is_fast()
    }

    /// Evaluates on the fast path and returns all outputs; None when this
    /// expression needs the sandbox. That is always the case when
    /// [`Expr::is_fast`] is false, and rarely also for a fast expression on
    /// an input where jaq's exact result cannot be reproduced in-process
    /// (integers beyond 64 bits, NaN or infinities, non-string object keys,
    /// decimal literals parsed by `fromjson`/`tonumber`): then run it with
    /// [`eval_jaq`] in the sandbox.
    pub fn eval_fast(
        &self,
        input: &Value,
        limits: &Limits,
    ) -> Option<Result<Vec<Value>, EvalError>> {
        self.run_fast(val::Val::J(input), limits)
    }

    /// [`Expr::eval_fast`] over the object `{name: part, …}`, which is never built: its parts
    /// are borrowed, so a large trigger or step output costs nothing per evaluation. Keys
    /// are ordered as in a `serde_json` object (sorted), so the result is the same as over
    /// the built object.
    pub fn eval_fast_parts(
        &self,
        parts: &[(&str, Part<'_>)],
        limits: &Limits,
    ) -> Option<Result<Vec<Value>, EvalError>> {
        self.inner.fast.as_ref()?;
        let mut fields: Vec<(&str, val::Val<'_>)> = parts
            .iter()
            .map(|(k, p)| {
                let v = match p {
                    Part::Value(v) => val::Val::J(v),
                    Part::Object(entries) => {
                        let mut es: Vec<(&str, &Value)> = entries.clone();
                        // Later entries win, as inserting into an object would.
                        es.reverse();
                        es.sort_by(|a, b| a.0.cmp(b.0));
                        es.dedup_by(|a, b| a.0 == b.0);
                        let mut m = val::ObjMap::default();
                        for (k, v) in es {
                            m.insert(val::Key::B(k), val::Val::J(v));
                        }
                        val::Val::Obj(std::rc::Rc::new(m))
                    }
                };
                (*k, v)
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let mut m = val::ObjMap::default();
        for (k, v) in fields {
            m.insert(val::Key::B(k), v);
        }
        self.run_fast(val::Val::Obj(std::rc::Rc::new(m)), limits)
    }

    fn run_fast<'a>(
        &self,
        input: val::Val<'a>,
        limits: &Limits,
    ) -> Option<Result<Vec<Value>, EvalError>> {
        let node = self.inner.fast.as_ref()?;
        let cx = val::Ctx::new(limits.fuel, limits.max_output_bytes);
        let mut outs = Vec::new();
        let mut budget = limits.max_output_bytes;
        let r = node.run(&cx, &eval::Env::Nil, input, &mut |y| {
            let v = y.to_value(&mut budget).map_err(|()| val::Stop::TooLarge)?;
            outs.push(v);
            Ok(())
        });
        let mut stop = match r {
            Ok(()) => return Some(Ok(outs)),
            Err(s) => s,
        };
        while let val::Stop::Down(inner) = stop {
            stop = *inner;
        }
        Some(Err(match stop {
            val::Stop::Err(e) => EvalError::Runtime(match e.as_str() {
                Some(s) => s.to_string(),
                None => {
                    let mut s = String::new();
                    let _ = val::write_json(&mut s, &e, usize::MAX);
                    s
                }
            }),
            val::Stop::Fuel => EvalError::FuelExhausted { fuel: limits.fuel },
            val::Stop::TooLarge => EvalError::OutputTooLarge {
                max: limits.max_output_bytes,
            },
            val::Stop::Fallback => return None,
            // `first` always catches its own break; treat a stray one as an
            // internal inconsistency that the sandbox can resolve.
            val::Stop::Break | val::Stop::Down(_) => return None,
        }))
    }
}

/// A jaq filter compiled for [`eval_jaq`].
struct Compiled {
    filter: jaq::Filter,
    /// Complexity of the source: jaq's evaluator recurses over the same
    /// tree as its compiler, so complex filters also run on a big stack.
    complexity: usize,
}

/// Compiles `source` for [`eval_jaq`], with the same checks as [`Expr::compile`].
fn compile_jaq(source: &str) -> Result<Compiled, ExprError> {
    let scan = scan::scan(source)?;
    let filter = with_stack(scan.complexity, || {
        if jaq_core::load::parse(source, |p| p.term()).is_none() {
            jaq::compile(source)?;
            return Err(unsupported_modules());
        }
        jaq::compile(source)
    })??;
    Ok(Compiled {
        filter,
        complexity: scan.complexity,
    })
}

fn run_jaq(c: &Compiled, input: &Value) -> Result<Vec<Value>, EvalError> {
    with_stack(c.complexity, || jaq::run(&c.filter, input))?
}

/// Runs full jaq (jaq_core + jaq_std + jaq_json defs and funs) on `input` and
/// returns all outputs. UNGUARDED: only the sandbox worker process (and
/// tests) may call it.
pub fn eval_jaq(source: &str, input: &Value) -> Result<Vec<Value>, EvalError> {
    run_jaq(&compile_jaq(source)?, input)
}

/// A compile cache for eval_jaq in the long-lived sandbox worker (source -> compiled filter), bounded.
pub struct JaqCache {
    filters: HashMap<String, Arc<Compiled>>,
}

/// Entries kept before the cache is cleared.
const JAQ_CACHE_CAPACITY: usize = 1024;

impl Default for JaqCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for JaqCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JaqCache")
            .field("entries", &self.filters.len())
            .finish()
    }
}

impl JaqCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            filters: HashMap::new(),
        }
    }

    /// Like [`eval_jaq`], compiling each distinct source only once.
    pub fn eval(&mut self, source: &str, input: &Value) -> Result<Vec<Value>, EvalError> {
        let c = match self.filters.get(source) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(compile_jaq(source)?);
                if self.filters.len() >= JAQ_CACHE_CAPACITY {
                    // Simple and bounded: a worker rarely sees this many sources.
                    self.filters.clear();
                }
                self.filters.insert(source.to_string(), c.clone());
                c
            }
        };
        run_jaq(&c, input)
    }
}

/// Reduces an expression's outputs to one value: exactly one → it; none →
/// null; more than one → MultipleOutputs.
pub fn single(outputs: Vec<Value>) -> Result<Value, EvalError> {
    let n = outputs.len();
    let mut it = outputs.into_iter();
    match (it.next(), n) {
        (None, _) => Ok(Value::Null),
        (Some(v), 1) => Ok(v),
        _ => Err(EvalError::MultipleOutputs { count_at_least: n }),
    }
}

/// Text of a value as interpolated into a template string: strings raw,
/// everything else compact JSON (formatted like jq's `"\(x)"` in jaq).
pub fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => {
            let mut s = String::new();
            val::write_value(&mut s, other);
            s
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fast_builtins_exist_in_jaq() {
        for (name, arity) in convert::FAST_BUILTINS {
            let args = vec!["."; *arity].join("; ");
            let src = if *arity == 0 {
                name.to_string()
            } else {
                format!("{name}({args})")
            };
            assert!(jaq::compile(&src).is_ok(), "jaq does not define {src}");
            let e = Expr::compile(&src).unwrap();
            assert!(e.is_fast(), "{src} should be fast");
        }
    }

    #[test]
    fn only_expressions_without_effects_or_clock_are_pure() {
        for src in ["now", "now | floor", "debug", "{t: now}"] {
            let e = Expr::compile(src).unwrap();
            assert!(!e.is_pure(), "{src} must not count as pure");
        }
        // Refused outright (no input stream), so never in a flow.
        for src in ["input", "[inputs]"] {
            assert!(Expr::compile(src).is_err(), "{src}");
        }
        let shape = "{id: .trigger.body.id, total: (.trigger.body.price * .trigger.body.qty), customer: (.trigger.body.name | ascii_upcase)}";
        assert!(Expr::compile(shape).unwrap().is_pure());
    }
}
