//! Glue to full jaq: compiling with the standard library, running, and
//! converting values and errors.

use std::sync::OnceLock;

use jaq_core::compile::Undefined;
use jaq_core::data::JustLut;
use jaq_core::load::parse::Def;
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jaq_json::{Num, Val};
use serde_json::{Map, Number, Value};

use crate::{EvalError, ExprError};

/// A compiled jaq filter.
pub(crate) type Filter = jaq_core::Filter<JustLut<Val>>;

/// jaq's standard definitions, parsed once (parsing them takes longer than
/// compiling a typical expression).
fn defs() -> impl Iterator<Item = Def<&'static str>> {
    static DEFS: OnceLock<Vec<Def<&'static str>>> = OnceLock::new();
    DEFS.get_or_init(|| {
        jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .collect()
    })
    .iter()
    .cloned()
}

/// 1-based line and column (in characters) of byte offset `pos` in `src`.
fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let before = &src[..pos.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn describe_found(found: &str) -> String {
    if found.is_empty() {
        return "the end of the expression".to_string();
    }
    let mut s: String = found.chars().take(20).collect();
    if s.len() < found.len() {
        s.push('…');
    }
    format!("`{s}`")
}

fn load_error(src: &str, errs: load::Errors<&str, ()>) -> ExprError {
    let mut msgs = Vec::new();
    for (_file, err) in errs {
        match err {
            load::Error::Lex(es) => {
                for (expect, found) in es {
                    let (l, c) = line_col(src, load::span(src, found).start);
                    msgs.push(format!(
                        "expected {} at line {l}, column {c}, found {}",
                        expect.as_str(),
                        describe_found(found)
                    ));
                }
            }
            load::Error::Parse(es) => {
                for (expect, found) in es {
                    let (l, c) = line_col(src, load::span(src, found).start);
                    msgs.push(format!(
                        "expected {} at line {l}, column {c}, found {}",
                        expect.as_str(),
                        describe_found(found)
                    ));
                }
            }
            load::Error::Io(es) => {
                let paths: Vec<String> = es.iter().map(|(path, _)| format!("`{path}`")).collect();
                return ExprError::Unsupported {
                    message: format!(
                        "modules cannot be loaded (tried {}); inline the definitions you need instead of `include`/`import`",
                        paths.join(", ")
                    ),
                };
            }
        }
    }
    if msgs.is_empty() {
        msgs.push("the expression could not be parsed".to_string());
    }
    ExprError::Syntax {
        message: msgs.join("; "),
    }
}

fn compile_error(errs: jaq_core::compile::Errors<&str, ()>) -> ExprError {
    let first = errs.into_iter().flat_map(|(_file, es)| es).next();
    match first {
        Some((name, Undefined::Filter(arity))) => ExprError::UnknownFunction {
            name: name.to_string(),
            arity,
        },
        Some((name, Undefined::Var)) => ExprError::UndefinedVariable {
            name: name.to_string(),
        },
        Some((name, undef)) => ExprError::Undefined {
            kind: undef.as_str().to_string(),
            name: name.to_string(),
        },
        None => ExprError::Syntax {
            message: "the expression could not be compiled".to_string(),
        },
    }
}

/// Parses and compiles `src` with jaq's standard library.
pub(crate) fn compile(src: &str) -> Result<Filter, ExprError> {
    // `env` would expose the worker's environment (possibly secrets), so it
    // is left out and compiles as an unknown function.
    let funs = jaq_core::funs::<JustLut<Val>>()
        .chain(jaq_std::funs().filter(|(name, _, _)| *name != "env"))
        .chain(jaq_json::funs());
    let loader = Loader::new(defs());
    let arena = Arena::default();
    let modules = loader
        .load(
            &arena,
            File {
                code: src,
                path: (),
            },
        )
        .map_err(|e| load_error(src, e))?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(compile_error)
}

/// Converts JSON into a jaq value.
pub(crate) fn to_jaq(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Val::Num(Num::from_integral(i))
            } else if let Some(u) = n.as_u64() {
                Val::Num(Num::from_integral(u))
            } else {
                Val::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => a.iter().map(to_jaq).collect(),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::from(k.clone()), to_jaq(v)))
                .collect(),
        ),
    }
}

/// JSON for a float; like jq, NaN becomes null and infinities the largest floats.
fn float(f: f64) -> Value {
    let f = if f.is_infinite() {
        f64::MAX.copysign(f)
    } else {
        f
    };
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn bytes_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Converts a jaq value into JSON.
pub(crate) fn from_jaq(v: &Val) -> Result<Value, EvalError> {
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        Val::Num(Num::Float(f)) => float(*f),
        Val::Num(n) => {
            // Big integers and decimal literals: exact when they fit JSON
            // integers, else the nearest float.
            let s = n.to_string();
            if let Ok(i) = s.parse::<i64>() {
                Value::from(i)
            } else if let Ok(u) = s.parse::<u64>() {
                Value::from(u)
            } else {
                float(s.parse::<f64>().unwrap_or(f64::NAN))
            }
        }
        Val::TStr(b) | Val::BStr(b) => Value::String(bytes_str(b)),
        Val::Arr(a) => Value::Array(a.iter().map(from_jaq).collect::<Result<_, _>>()?),
        Val::Obj(o) => {
            let mut m = Map::new();
            for (k, x) in o.iter() {
                let key = match k {
                    Val::TStr(b) | Val::BStr(b) => bytes_str(b),
                    other => {
                        return Err(EvalError::Runtime(format!(
                            "object key {other} is not a string; JSON objects need string keys, so convert the key with `tostring`"
                        )));
                    }
                };
                m.insert(key, from_jaq(x)?);
            }
            Value::Object(m)
        }
    })
}

/// Text of a jaq error: string error values verbatim, other values as JSON
/// (what `try ... catch .` would see, rendered).
fn error_text(e: jaq_core::Error<Val>) -> String {
    match e.into_val() {
        Val::TStr(b) | Val::BStr(b) => bytes_str(&b),
        other => other.to_string(),
    }
}

/// Runs a compiled filter and collects its outputs up to the first error.
pub(crate) fn run(f: &Filter, input: &Value) -> Result<Vec<Value>, EvalError> {
    let ctx = Ctx::<JustLut<Val>>::new(&f.lut, Vars::new([]));
    let mut outs = Vec::new();
    for r in f.id.run((ctx, to_jaq(input))) {
        match r {
            Ok(v) => outs.push(from_jaq(&v)?),
            Err(exn) => {
                // `halt` must not exit the process here, unlike jaq's CLI.
                return Err(match exn.get_err() {
                    Ok(e) => EvalError::Runtime(error_text(e)),
                    Err(exn) => match exn.get_halt() {
                        Ok(code) => EvalError::Runtime(format!(
                            "the expression called halt (exit code {code}); remove the halt call"
                        )),
                        Err(_) => EvalError::Runtime(
                            "jaq stopped with an internal control-flow error".to_string(),
                        ),
                    },
                });
            }
        }
    }
    Ok(outs)
}
