//! JSON values whose strings may contain `{{ jq }}` templates.

use serde_json::{Map, Value};

use crate::{Expr, ExprError, to_text};

/// A JSON value whose strings may contain `{{ jq }}` templates, compiled once.
#[derive(Debug, Clone)]
pub enum TValue {
    /// No template inside: rendered as a plain clone.
    Const(Value),
    /// The whole string is one `{{ e }}`: rendered as e's JSON value.
    Expr(Expr),
    /// A string with interpolated expressions: rendered as text.
    Text(Vec<TextPart>),
    /// An array with templates inside.
    Array(Vec<TValue>),
    /// An object with templates inside (keys in their original order).
    Object(Vec<(String, TValue)>),
}

/// Part of an interpolated string.
#[derive(Debug, Clone)]
pub enum TextPart {
    /// Literal text.
    Lit(String),
    /// An expression whose value is inserted as text.
    Expr(Expr),
}

/// Finds the `}}` that closes a template whose expression starts at `from`,
/// skipping braces and strings that belong to the jq expression itself
/// (so `{{ {a: {b: 1}} }}` works).
fn find_close(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    // Open brackets (outside string literals) of the expression.
    let mut depth = 0usize;
    // Depth at which each open `\(` interpolation returns to its string.
    let mut interps: Vec<usize> = Vec::new();
    let mut in_str = false;
    let mut i = from;
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' if b.get(i + 1) == Some(&b'(') => {
                    in_str = false;
                    interps.push(depth);
                    depth += 1;
                    i += 1;
                }
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'(' | b'[' | b'{' => depth += 1,
                b')' if interps.last() == Some(&(depth.saturating_sub(1))) && depth > 0 => {
                    depth -= 1;
                    interps.pop();
                    in_str = true;
                }
                b'}' if depth == 0 && b.get(i + 1) == Some(&b'}') => return Some(i),
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

enum Piece<'s> {
    Lit(&'s str),
    Expr(&'s str),
}

fn split(s: &str) -> Result<Vec<Piece<'_>>, ExprError> {
    let mut pieces = Vec::new();
    let mut rest_start = 0;
    while let Some(off) = s[rest_start..].find("{{") {
        let open = rest_start + off;
        if open > rest_start {
            pieces.push(Piece::Lit(&s[rest_start..open]));
        }
        let start = open + 2;
        let close = find_close(s, start).ok_or_else(|| ExprError::BadTemplate {
            message: format!(
                "`{{{{` at byte {open} has no matching `}}}}`; close the expression with `}}}}`"
            ),
        })?;
        let expr = s[start..close].trim();
        if expr.is_empty() {
            return Err(ExprError::BadTemplate {
                message: format!(
                    "empty expression `{{{{ }}}}` at byte {open}; put a jq expression inside, e.g. `{{{{ .trigger }}}}`"
                ),
            });
        }
        pieces.push(Piece::Expr(expr));
        rest_start = close + 2;
    }
    if rest_start < s.len() {
        pieces.push(Piece::Lit(&s[rest_start..]));
    }
    Ok(pieces)
}

/// Escapes a key for a JSON-pointer-like path.
fn pointer_token(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

impl TValue {
    /// Compiles every string in `v`; on error returns every failing location
    /// as (JSON-pointer-like path relative to v, e.g. "/headers/x-id" or
    /// "/items/0", error).
    pub fn compile(v: &Value) -> Result<TValue, Vec<(String, ExprError)>> {
        let mut errs = Vec::new();
        let mut path = String::new();
        let t = Self::compile_at(v, &mut path, &mut errs);
        if errs.is_empty() { Ok(t) } else { Err(errs) }
    }

    fn compile_at(v: &Value, path: &mut String, errs: &mut Vec<(String, ExprError)>) -> TValue {
        match v {
            Value::String(s) => match Self::compile_str(s) {
                Ok(t) => t,
                Err(e) => {
                    errs.push((path.clone(), e));
                    TValue::Const(Value::Null)
                }
            },
            Value::Array(a) => {
                let items: Vec<TValue> = a
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let len = path.len();
                        path.push('/');
                        path.push_str(&i.to_string());
                        let t = Self::compile_at(x, path, errs);
                        path.truncate(len);
                        t
                    })
                    .collect();
                if items.iter().all(TValue::is_const) {
                    TValue::Const(v.clone())
                } else {
                    TValue::Array(items)
                }
            }
            Value::Object(o) => {
                let items: Vec<(String, TValue)> = o
                    .iter()
                    .map(|(k, x)| {
                        let len = path.len();
                        path.push('/');
                        path.push_str(&pointer_token(k));
                        let t = Self::compile_at(x, path, errs);
                        path.truncate(len);
                        (k.clone(), t)
                    })
                    .collect();
                if items.iter().all(|(_, t)| t.is_const()) {
                    TValue::Const(v.clone())
                } else {
                    TValue::Object(items)
                }
            }
            other => TValue::Const(other.clone()),
        }
    }

    /// Compiles one string.
    pub fn compile_str(s: &str) -> Result<TValue, ExprError> {
        if !s.contains("{{") {
            return Ok(TValue::Const(Value::String(s.to_string())));
        }
        let pieces = split(s)?;
        if let [Piece::Expr(e)] = pieces[..] {
            return Ok(TValue::Expr(Expr::compile(e)?));
        }
        let parts = pieces
            .into_iter()
            .map(|p| match p {
                Piece::Lit(l) => Ok(TextPart::Lit(l.to_string())),
                Piece::Expr(e) => Expr::compile(e).map(TextPart::Expr),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TValue::Text(parts))
    }

    /// Every expression inside, depth-first in document order (object keys in their order).
    pub fn exprs(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'t>(&'t self, out: &mut Vec<&'t Expr>) {
        match self {
            TValue::Const(_) => {}
            TValue::Expr(e) => out.push(e),
            TValue::Text(parts) => out.extend(parts.iter().filter_map(|p| match p {
                TextPart::Expr(e) => Some(e),
                TextPart::Lit(_) => None,
            })),
            TValue::Array(items) => items.iter().for_each(|t| t.collect(out)),
            TValue::Object(items) => items.iter().for_each(|(_, t)| t.collect(out)),
        }
    }

    /// Builds the value, taking one already-evaluated result per expression,
    /// in exprs() order (missing results count as null).
    pub fn render(&self, results: &mut dyn Iterator<Item = Value>) -> Value {
        match self {
            TValue::Const(v) => v.clone(),
            TValue::Expr(_) => results.next().unwrap_or(Value::Null),
            TValue::Text(parts) => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        TextPart::Lit(l) => s.push_str(l),
                        TextPart::Expr(_) => {
                            s.push_str(&to_text(&results.next().unwrap_or(Value::Null)));
                        }
                    }
                }
                Value::String(s)
            }
            TValue::Array(items) => Value::Array(items.iter().map(|t| t.render(results)).collect()),
            TValue::Object(items) => {
                let mut m = Map::new();
                for (k, t) in items {
                    m.insert(k.clone(), t.render(results));
                }
                Value::Object(m)
            }
        }
    }

    /// True if there is no expression inside (render is a plain clone).
    pub fn is_const(&self) -> bool {
        matches!(self, TValue::Const(_))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn close_finder() {
        assert_eq!(find_close("{{ .a }}", 2), Some(6));
        assert_eq!(find_close("{{ {a: {b: 1}} }}", 2), Some(15));
        assert_eq!(find_close("{{ \"}}\" }}", 2), Some(8));
        assert_eq!(find_close("{{ \"\\(\"}}\")\" }}", 2), Some(13));
        assert_eq!(find_close("{{ .a ", 2), None);
    }
}
