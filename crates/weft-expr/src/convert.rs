//! Converts jaq's parse tree into the fast path's node tree, or decides that
//! the expression needs the sandbox.
//!
//! Builtins defined in jq by jaq's standard library are expanded here into
//! the same definitions (so their semantics come for free); builtins that jaq
//! implements natively map to [`Builtin`].

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Pattern, Term};
use jaq_core::ops;
use jaq_core::path::{Opt, Part as JPart, Path as JPath};
use serde_json::Value;

use crate::eval::{Builtin, Node, Part, Sel};
use crate::val::{CmpOp, Math, N};

/// Largest stack depth (in evaluator frames) a fast expression may need.
/// Deeper expressions go to the sandbox, so the fast path never overflows
/// the stack of the calling thread.
pub(crate) const MAX_FAST_STACK: usize = 96;

/// The expression needs the sandbox.
pub(crate) struct NotFast;

type T<'s> = Term<&'s str>;

/// A variable name that no source text can spell, for expansions that bind one.
const HIDDEN_VAR: &str = "$ weft";

/// Converts `t`, or returns `NotFast` if any part of it is outside the subset.
pub(crate) fn convert(t: &T) -> Result<Node, NotFast> {
    let mut c = Conv {
        vars: Vec::new(),
        depth: 0,
    };
    let node = c.conv(t)?;
    let (d, e) = stack_cost(&node);
    if d.max(e) > MAX_FAST_STACK {
        return Err(NotFast);
    }
    Ok(node)
}

struct Conv<'s> {
    vars: Vec<&'s str>,
    depth: usize,
}

fn bx(n: Node) -> Box<Node> {
    Box::new(n)
}

fn pipe<'s>(l: T<'s>, r: T<'s>) -> T<'s> {
    Term::BinOp(Box::new(l), BinaryOp::Pipe(None), Box::new(r))
}

fn call<'s>(name: &'s str, args: Vec<T<'s>>) -> T<'s> {
    Term::Call(name, args)
}

fn path<'s>(t: T<'s>, parts: Vec<JPart<T<'s>>>) -> T<'s> {
    let parts = parts.into_iter().map(|p| (p, Opt::Essential)).collect();
    Term::Path(Box::new(t), JPath(parts))
}

fn iter<'s>() -> JPart<T<'s>> {
    JPart::Range(None, None)
}

fn idx<'s>(i: isize) -> JPart<T<'s>> {
    let n = if i >= 0 {
        Term::Num(if i == 0 { "0" } else { "1" })
    } else {
        Term::Neg(Box::new(Term::Num("1")))
    };
    JPart::Index(n)
}

/// `isempty(g)` = `first((g | false), true)`.
fn isempty<'s>(g: T<'s>) -> T<'s> {
    let body = Term::BinOp(
        Box::new(pipe(g, call("false", vec![]))),
        BinaryOp::Comma,
        Box::new(call("true", vec![])),
    );
    call("first", vec![body])
}

/// `any(g; cond)` = `isempty(g | cond or empty) | not`,
/// `all(g; cond)` = `isempty(g | cond and empty)`.
fn any_all<'s>(any: bool, g: T<'s>, cond: T<'s>) -> T<'s> {
    let op = if any { BinaryOp::Or } else { BinaryOp::And };
    let inner = Term::BinOp(Box::new(cond), op, Box::new(call("empty", vec![])));
    let e = isempty(pipe(g, inner));
    if any { pipe(e, call("not", vec![])) } else { e }
}

/// The jq definition of a builtin, instantiated with its arguments.
fn expand<'s>(name: &str, mut args: Vec<T<'s>>) -> Option<T<'s>> {
    let n = args.len();
    let mut arg = || args.pop().unwrap_or_default();
    Some(match (name, n) {
        ("map", 1) => Term::Arr(Some(Box::new(pipe(path(Term::Id, vec![iter()]), arg())))),
        ("select", 1) => Term::IfThenElse(
            vec![(arg(), Term::Id)],
            Some(Box::new(call("empty", vec![]))),
        ),
        ("first", 0) => path(Term::Id, vec![idx(0)]),
        ("last", 0) => path(Term::Id, vec![idx(-1)]),
        ("isempty", 1) => isempty(arg()),
        ("any", 0) => any_all(true, path(Term::Id, vec![iter()]), Term::Id),
        ("all", 0) => any_all(false, path(Term::Id, vec![iter()]), Term::Id),
        ("any", 1) => any_all(true, path(Term::Id, vec![iter()]), arg()),
        ("all", 1) => any_all(false, path(Term::Id, vec![iter()]), arg()),
        ("any", 2) | ("all", 2) => {
            let cond = arg();
            let g = arg();
            any_all(name == "any", g, cond)
        }
        ("with_entries", 1) => pipe(
            pipe(call("to_entries", vec![]), call("map", vec![arg()])),
            call("from_entries", vec![]),
        ),
        ("in", 1) | ("inside", 1) => {
            let f = if name == "in" { "has" } else { "contains" };
            let body = pipe(arg(), call(f, vec![Term::Var(HIDDEN_VAR)]));
            Term::BinOp(
                Box::new(Term::Id),
                BinaryOp::Pipe(Some(Pattern::Var(HIDDEN_VAR))),
                Box::new(body),
            )
        }
        ("index", 1) => path(call("indices", vec![arg()]), vec![idx(0)]),
        ("rindex", 1) => path(call("indices", vec![arg()]), vec![idx(-1)]),
        ("abs", 0) => Term::IfThenElse(
            vec![(
                Term::BinOp(
                    Box::new(Term::Id),
                    BinaryOp::Cmp(ops::Cmp::Lt),
                    Box::new(Term::Num("0")),
                ),
                Term::Neg(Box::new(Term::Id)),
            )],
            None,
        ),
        ("unique", 0) => Term::Arr(Some(Box::new(pipe(
            path(call("group_by", vec![Term::Id]), vec![iter()]),
            path(Term::Id, vec![idx(0)]),
        )))),
        ("unique_by", 1) => Term::Arr(Some(Box::new(pipe(
            path(call("group_by", vec![arg()]), vec![iter()]),
            path(Term::Id, vec![idx(0)]),
        )))),
        ("keys", 0) => pipe(call("keys_unsorted", vec![]), call("sort", vec![])),
        _ => return None,
    })
}

/// Builtins implemented natively, by name and arity.
fn native(name: &str, arity: usize) -> Option<Builtin> {
    use Builtin::*;
    Some(match (name, arity) {
        ("not", 0) => Not,
        ("length", 0) => Length,
        ("utf8bytelength", 0) => Utf8ByteLength,
        ("keys_unsorted", 0) => KeysUnsorted,
        ("tostring", 0) => ToString,
        ("tojson", 0) => ToJson,
        ("fromjson", 0) => FromJson,
        ("tonumber", 0) => ToNumber,
        ("type", 0) => Type,
        ("ascii_downcase", 0) => AsciiDowncase,
        ("ascii_upcase", 0) => AsciiUpcase,
        ("floor", 0) => Floor,
        ("ceil", 0) => Ceil,
        ("round", 0) => Round,
        ("to_entries", 0) => ToEntries,
        ("from_entries", 0) => FromEntries,
        ("sort", 0) => Sort,
        ("reverse", 0) => Reverse,
        ("trim", 0) => Trim,
        ("ltrim", 0) => LTrim,
        ("rtrim", 0) => RTrim,
        ("flatten", 0) => Flatten,
        ("values", 0) => Select(Sel::Values),
        ("nulls", 0) => Select(Sel::Nulls),
        ("booleans", 0) => Select(Sel::Booleans),
        ("numbers", 0) => Select(Sel::Numbers),
        ("strings", 0) => Select(Sel::Strings),
        ("arrays", 0) => Select(Sel::Arrays),
        ("objects", 0) => Select(Sel::Objects),
        ("iterables", 0) => Select(Sel::Iterables),
        ("scalars", 0) => Select(Sel::Scalars),
        ("isboolean", 0) => Is(Sel::Booleans),
        ("isnumber", 0) => Is(Sel::Numbers),
        ("isstring", 0) => Is(Sel::Strings),
        ("isarray", 0) => Is(Sel::Arrays),
        ("isobject", 0) => Is(Sel::Objects),
        ("has", 1) => Has,
        ("contains", 1) => Contains,
        ("startswith", 1) => StartsWith,
        ("endswith", 1) => EndsWith,
        ("ltrimstr", 1) => LTrimStr,
        ("rtrimstr", 1) => RTrimStr,
        ("split", 1) => Split,
        ("join", 1) => Join,
        ("indices", 1) => Indices,
        ("first", 1) => First,
        ("last", 1) => Last,
        ("map_values", 1) => MapValues,
        ("sort_by", 1) => SortBy,
        ("group_by", 1) => GroupBy,
        ("min_by", 1) => MinBy,
        ("max_by", 1) => MaxBy,
        ("add", 1) => Add,
        _ => return None,
    })
}

/// Every builtin name and arity the fast path understands (for tests).
#[cfg(test)]
pub(crate) const FAST_BUILTINS: &[(&str, usize)] = &[
    ("empty", 0),
    ("null", 0),
    ("true", 0),
    ("false", 0),
    ("not", 0),
    ("length", 0),
    ("utf8bytelength", 0),
    ("keys_unsorted", 0),
    ("keys", 0),
    ("tostring", 0),
    ("tojson", 0),
    ("fromjson", 0),
    ("tonumber", 0),
    ("type", 0),
    ("ascii_downcase", 0),
    ("ascii_upcase", 0),
    ("floor", 0),
    ("ceil", 0),
    ("round", 0),
    ("abs", 0),
    ("to_entries", 0),
    ("from_entries", 0),
    ("with_entries", 1),
    ("sort", 0),
    ("sort_by", 1),
    ("group_by", 1),
    ("unique", 0),
    ("unique_by", 1),
    ("min", 0),
    ("max", 0),
    ("min_by", 1),
    ("max_by", 1),
    ("reverse", 0),
    ("trim", 0),
    ("ltrim", 0),
    ("rtrim", 0),
    ("flatten", 0),
    ("values", 0),
    ("nulls", 0),
    ("booleans", 0),
    ("numbers", 0),
    ("strings", 0),
    ("arrays", 0),
    ("objects", 0),
    ("iterables", 0),
    ("scalars", 0),
    ("isboolean", 0),
    ("isnumber", 0),
    ("isstring", 0),
    ("isarray", 0),
    ("isobject", 0),
    ("has", 1),
    ("contains", 1),
    ("inside", 1),
    ("in", 1),
    ("startswith", 1),
    ("endswith", 1),
    ("ltrimstr", 1),
    ("rtrimstr", 1),
    ("split", 1),
    ("join", 1),
    ("indices", 1),
    ("index", 1),
    ("rindex", 1),
    ("first", 0),
    ("last", 0),
    ("first", 1),
    ("last", 1),
    ("map", 1),
    ("map_values", 1),
    ("select", 1),
    ("isempty", 1),
    ("any", 0),
    ("all", 0),
    ("any", 1),
    ("all", 1),
    ("any", 2),
    ("all", 2),
    ("add", 0),
    ("add", 1),
];

fn math_op(op: ops::Math) -> Math {
    match op {
        ops::Math::Add => Math::Add,
        ops::Math::Sub => Math::Sub,
        ops::Math::Mul => Math::Mul,
        ops::Math::Div => Math::Div,
        ops::Math::Rem => Math::Rem,
    }
}

fn cmp_op(op: ops::Cmp) -> CmpOp {
    match op {
        ops::Cmp::Lt => CmpOp::Lt,
        ops::Cmp::Le => CmpOp::Le,
        ops::Cmp::Gt => CmpOp::Gt,
        ops::Cmp::Ge => CmpOp::Ge,
        ops::Cmp::Eq => CmpOp::Eq,
        ops::Cmp::Ne => CmpOp::Ne,
    }
}

/// A number literal, as jaq reads it: integers stay exact, decimals keep
/// their text (so `1.50` prints as `1.50`); only decimals that print the same
/// as a float are fast.
fn number(s: &str) -> Result<Value, NotFast> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return match (s.parse::<i64>(), s.parse::<u64>()) {
            (Ok(i), _) => Ok(Value::from(i)),
            (_, Ok(u)) => Ok(Value::from(u)),
            _ => Err(NotFast),
        };
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && ryu::Buffer::new().format_finite(f) == s => {
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or(NotFast)
        }
        _ => Err(NotFast),
    }
}

impl<'s> Conv<'s> {
    fn conv(&mut self, t: &T<'s>) -> Result<Node, NotFast> {
        self.depth += 1;
        if self.depth > MAX_FAST_STACK {
            return Err(NotFast);
        }
        let r = self.conv_inner(t);
        self.depth -= 1;
        r
    }

    fn var(&self, x: &str) -> Result<Node, NotFast> {
        let pos = self.vars.iter().rposition(|v| *v == x).ok_or(NotFast)?;
        Ok(Node::Var(self.vars.len() - 1 - pos))
    }

    fn conv_inner(&mut self, t: &T<'s>) -> Result<Node, NotFast> {
        Ok(match t {
            Term::Id => Node::Id,
            Term::Num(n) => Node::Lit(number(n)?),
            Term::Str(None, parts) => self.string(parts)?,
            Term::Arr(None) => Node::Lit(Value::Array(Vec::new())),
            Term::Arr(Some(t)) => Node::Arr(bx(self.conv(t)?)),
            Term::Obj(entries) if entries.is_empty() => {
                Node::Lit(Value::Object(Default::default()))
            }
            Term::Obj(entries) => {
                let mut es = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    es.push(match (k, v) {
                        // `{$x}` means `{x: $x}`.
                        (Term::Var(x), None) => {
                            let key = x.strip_prefix('$').unwrap_or(x);
                            (Node::Lit(Value::String(key.to_string())), self.var(x)?)
                        }
                        // `{k}` means `{k: .[k]}`, evaluating `k` twice like jaq.
                        (k, None) => {
                            let key = self.conv(k)?;
                            let val =
                                Node::Path(bx(Node::Id), vec![(Part::Index(self.conv(k)?), false)]);
                            (key, val)
                        }
                        (k, Some(v)) => (self.conv(k)?, self.conv(v)?),
                    });
                }
                Node::Obj(es)
            }
            Term::Neg(t) => match self.conv(t)? {
                // Fold `-1` so that `.[-1]` stays a literal path.
                Node::Lit(Value::Number(n)) => match crate::val::n_of(&n) {
                    N::F(f) => Node::Lit(Value::from(-f)),
                    other => match other.int().and_then(|i| N::from_int(-i)) {
                        Some(N::I(i)) => Node::Lit(Value::from(i)),
                        Some(N::U(u)) => Node::Lit(Value::from(u)),
                        _ => Node::Neg(bx(Node::Lit(Value::Number(n)))),
                    },
                },
                n => Node::Neg(bx(n)),
            },
            Term::BinOp(l, op, r) => match op {
                BinaryOp::Pipe(None) => Node::Pipe(bx(self.conv(l)?), bx(self.conv(r)?)),
                BinaryOp::Pipe(Some(Pattern::Var(x))) => {
                    let l = self.conv(l)?;
                    self.vars.push(x);
                    let r = self.conv(r);
                    self.vars.pop();
                    Node::Bind(bx(l), bx(r?))
                }
                BinaryOp::Comma => Node::Comma(bx(self.conv(l)?), bx(self.conv(r)?)),
                BinaryOp::Alt => Node::Alt(bx(self.conv(l)?), bx(self.conv(r)?)),
                BinaryOp::Or => Node::Logic(bx(self.conv(l)?), true, bx(self.conv(r)?)),
                BinaryOp::And => Node::Logic(bx(self.conv(l)?), false, bx(self.conv(r)?)),
                BinaryOp::Math(op) => {
                    Node::Math(bx(self.conv(l)?), math_op(*op), bx(self.conv(r)?))
                }
                BinaryOp::Cmp(op) => Node::Cmp(bx(self.conv(l)?), cmp_op(*op), bx(self.conv(r)?)),
                // Destructuring patterns and all update operators.
                _ => return Err(NotFast),
            },
            Term::TryCatch(t, c) => {
                let t = self.conv(t)?;
                let c = match c {
                    Some(c) => Some(bx(self.conv(c)?)),
                    None => None,
                };
                Node::Try(bx(t), c)
            }
            Term::IfThenElse(if_thens, else_) => {
                let mut acc = match else_ {
                    Some(e) => self.conv(e)?,
                    None => Node::Id,
                };
                for (c, t) in if_thens.iter().rev() {
                    acc = Node::Ite(bx(self.conv(c)?), bx(self.conv(t)?), bx(acc));
                }
                acc
            }
            Term::Var(x) => self.var(x)?,
            Term::Path(t, JPath(parts)) => {
                let head = self.conv(t)?;
                let mut ps = Vec::with_capacity(parts.len());
                for (p, opt) in parts {
                    let p = match p {
                        JPart::Index(i) => Part::Index(self.conv(i)?),
                        JPart::Range(None, None) => Part::Iter,
                        JPart::Range(a, b) => {
                            let a = match a {
                                Some(a) => Some(self.conv(a)?),
                                None => None,
                            };
                            let b = match b {
                                Some(b) => Some(self.conv(b)?),
                                None => None,
                            };
                            Part::Range(a, b)
                        }
                    };
                    ps.push((p, matches!(opt, Opt::Optional)));
                }
                Node::Path(bx(head), ps)
            }
            Term::Call(name, args) => self.call(name, args)?,
            // `..`, `reduce`/`foreach`, `label`/`break`, `def`, `@format "..."`.
            _ => return Err(NotFast),
        })
    }

    fn string(&mut self, parts: &[StrPart<&'s str, T<'s>>]) -> Result<Node, NotFast> {
        let mut nodes = Vec::new();
        let mut lit = String::new();
        for p in parts {
            match p {
                StrPart::Str(s) => lit.push_str(s),
                StrPart::Char(c) => lit.push(*c),
                StrPart::Term(t) => {
                    if !lit.is_empty() {
                        nodes.push(Node::Lit(Value::String(std::mem::take(&mut lit))));
                    }
                    let n = self.conv(t)?;
                    nodes.push(Node::Pipe(
                        bx(n),
                        bx(Node::Call(Builtin::ToString, Vec::new())),
                    ));
                }
            }
        }
        if nodes.is_empty() {
            return Ok(Node::Lit(Value::String(lit)));
        }
        if !lit.is_empty() {
            nodes.push(Node::Lit(Value::String(lit)));
        }
        Ok(Node::Concat(nodes))
    }

    fn call(&mut self, name: &str, args: &[T<'s>]) -> Result<Node, NotFast> {
        match (name, args.len()) {
            ("empty", 0) => return Ok(Node::Empty),
            ("null", 0) => return Ok(Node::Lit(Value::Null)),
            ("true", 0) => return Ok(Node::Lit(Value::Bool(true))),
            ("false", 0) => return Ok(Node::Lit(Value::Bool(false))),
            ("min", 0) => return Ok(Node::Call(Builtin::MinBy, vec![Node::Id])),
            ("max", 0) => return Ok(Node::Call(Builtin::MaxBy, vec![Node::Id])),
            ("add", 0) => {
                let each = Node::Path(bx(Node::Id), vec![(Part::Iter, false)]);
                return Ok(Node::Call(Builtin::Add, vec![each]));
            }
            _ => {}
        }
        if let Some(t) = expand(name, args.to_vec()) {
            return self.conv(&t);
        }
        let b = native(name, args.len()).ok_or(NotFast)?;
        let args = args
            .iter()
            .map(|a| self.conv(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Node::Call(b, args))
    }
}

/// `(d, e)`: the deepest stack (in evaluator frames) while running `n`,
/// and the depth at which `n` hands outputs to its continuation.
fn stack_cost(n: &Node) -> (usize, usize) {
    // Each level costs about three frames: `run`, a closure and a helper.
    let c = stack_cost;
    let (d, e) = match n {
        Node::Id | Node::Lit(_) | Node::Empty | Node::Var(_) => (0, 0),
        Node::Arr(f) => (c(f).0, 0),
        Node::Obj(es) => (
            es.iter()
                .map(|(k, v)| c(k).0.max(c(v).0))
                .max()
                .unwrap_or(0),
            0,
        ),
        Node::Concat(ps) => (ps.iter().map(|p| c(p).0).max().unwrap_or(0), 0),
        Node::Neg(f) => c(f),
        Node::Pipe(l, r) | Node::Bind(l, r) | Node::Logic(l, _, r) => {
            let (dl, el) = c(l);
            let (dr, er) = c(r);
            (dl.max(el + dr), el + er)
        }
        Node::Comma(l, r) | Node::Alt(l, r) => {
            let (dl, el) = c(l);
            let (dr, er) = c(r);
            (dl.max(dr), el.max(er))
        }
        Node::Math(l, _, r) | Node::Cmp(l, _, r) => {
            let (dl, el) = c(l);
            let (dr, _) = c(r);
            (dl.max(el + dr), el)
        }
        Node::Ite(x, t, f) => {
            let (dx, ex) = c(x);
            let (dt, et) = c(t);
            let (df, ef) = c(f);
            (dx.max(ex + dt.max(df)), ex + et.max(ef))
        }
        Node::Try(b, x) => {
            let (db, eb) = c(b);
            let (dx, ex) = x.as_deref().map_or((0, 0), c);
            (db.max(dx), eb.max(ex))
        }
        Node::Path(h, parts) => {
            let (dh, eh) = c(h);
            let mut di = 0;
            let mut iters = 0;
            for (p, _) in parts {
                match p {
                    Part::Index(i) => di = di.max(c(i).0),
                    Part::Iter => iters += 1,
                    Part::Range(a, b) => {
                        for x in a.iter().chain(b) {
                            di = di.max(c(x).0);
                        }
                    }
                }
            }
            (dh.max(di).max(eh + iters), eh + iters)
        }
        Node::Call(b, args) => {
            let (da, ea) = args
                .iter()
                .map(c)
                .fold((0, 0), |(d, e), (x, y)| (d.max(x), e.max(y)));
            match b {
                // `$`-arguments hand each output to the builtin, which emits.
                Builtin::Has
                | Builtin::Contains
                | Builtin::StartsWith
                | Builtin::EndsWith
                | Builtin::LTrimStr
                | Builtin::RTrimStr
                | Builtin::Split
                | Builtin::Join
                | Builtin::Indices => (da, ea),
                _ => (da, 0),
            }
        }
    };
    (d + 1, e + 1)
}
