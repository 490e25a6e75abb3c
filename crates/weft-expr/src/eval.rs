//! The fast path: a push-based interpreter over an owned tree, mirroring
//! jaq's evaluation order and error behaviour for the subset it accepts.
//!
//! Every node sends its outputs to a callback. A stream ends at its first
//! error, which matches jaq because every consumer in this subset stops at
//! the first error it sees.

use std::rc::Rc;

use serde_json::Value;

use crate::val::{
    self, CmpOp, Ctx, ELEM_BYTES, K, Key, Math, N, ObjMap, R, Stop, Val, cmp, eq, err_index,
    err_math, err_msg, err_typ, show,
};

/// A compiled fast-path expression.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Id,
    Lit(Value),
    Empty,
    /// A variable, as the number of bindings between its use and its binder.
    Var(usize),
    Arr(Box<Node>),
    /// `{k1: v1, k2: v2, ...}`, which jaq evaluates as `{k1: v1} + ({k2: v2} + ...)`.
    Obj(Vec<(Node, Node)>),
    /// An interpolated string: the concatenation of parts that yield strings,
    /// evaluated like jaq's `p1 + (p2 + ...)`.
    Concat(Vec<Node>),
    Neg(Box<Node>),
    Pipe(Box<Node>, Box<Node>),
    /// `l as $x | r`.
    Bind(Box<Node>, Box<Node>),
    Comma(Box<Node>, Box<Node>),
    Alt(Box<Node>, Box<Node>),
    /// `l and r` (false) or `l or r` (true).
    Logic(Box<Node>, bool, Box<Node>),
    Math(Box<Node>, Math, Box<Node>),
    Cmp(Box<Node>, CmpOp, Box<Node>),
    Ite(Box<Node>, Box<Node>, Box<Node>),
    Try(Box<Node>, Option<Box<Node>>),
    /// `head[p1][p2]...`; the flag marks optional (`?`) parts.
    Path(Box<Node>, Vec<(Part, bool)>),
    Call(Builtin, Vec<Node>),
}

/// Part of a path.
#[derive(Debug, Clone)]
pub(crate) enum Part {
    Index(Node),
    Iter,
    Range(Option<Node>, Option<Node>),
}

/// Kinds of values, for the type selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sel {
    Values,
    Nulls,
    Booleans,
    Numbers,
    Strings,
    Arrays,
    Objects,
    Iterables,
    Scalars,
}

/// Natively implemented builtins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Not,
    Length,
    Utf8ByteLength,
    KeysUnsorted,
    ToString,
    ToJson,
    FromJson,
    ToNumber,
    Type,
    AsciiDowncase,
    AsciiUpcase,
    Floor,
    Ceil,
    Round,
    ToEntries,
    FromEntries,
    Sort,
    Reverse,
    Trim,
    LTrim,
    RTrim,
    Flatten,
    Select(Sel),
    /// `isboolean`, `isnumber`, ... (jaq extensions).
    Is(Sel),
    // One `$`-argument.
    Has,
    Contains,
    StartsWith,
    EndsWith,
    LTrimStr,
    RTrimStr,
    Split,
    Join,
    Indices,
    // One filter argument.
    First,
    Last,
    MapValues,
    SortBy,
    GroupBy,
    MinBy,
    MaxBy,
    Add,
}

impl Builtin {
    /// Whether the single argument is a `$`-argument (bound to each of its
    /// outputs in turn) rather than a filter.
    fn var_arg(self) -> bool {
        use Builtin::*;
        matches!(
            self,
            Has | Contains | StartsWith | EndsWith | LTrimStr | RTrimStr | Split | Join | Indices
        )
    }
}

/// Bound variables, innermost first.
pub(crate) enum Env<'e, 'a> {
    Nil,
    Cons(Val<'a>, &'e Env<'e, 'a>),
}

impl<'a> Env<'_, 'a> {
    fn get(&self, mut i: usize) -> Val<'a> {
        let mut e = self;
        loop {
            match e {
                Env::Cons(v, rest) => {
                    if i == 0 {
                        return v.clone();
                    }
                    i -= 1;
                    e = rest;
                }
                // The converter only emits bound indices.
                Env::Nil => return Val::Null,
            }
        }
    }
}

/// Where a node sends its outputs.
pub(crate) type Out<'o, 'a> = &'o mut dyn FnMut(Val<'a>) -> R<'a>;

/// All outputs of a stream up to its first error. The first output is
/// stored inline, so the common single-output case does not allocate.
struct Items<'a> {
    first: Option<Val<'a>>,
    rest: Vec<Val<'a>>,
    err: Option<Val<'a>>,
}

impl<'a> Items<'a> {
    fn new() -> Self {
        Items {
            first: None,
            rest: Vec::new(),
            err: None,
        }
    }

    fn push(&mut self, v: Val<'a>) {
        if self.first.is_none() {
            self.first = Some(v);
        } else {
            self.rest.push(v);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn get(&self, i: usize) -> &Val<'a> {
        match (i, &self.first) {
            (0, Some(v)) => v,
            _ => &self.rest[i - 1],
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Val<'a>> {
        self.first.iter().chain(&self.rest)
    }

    fn any(&self) -> bool {
        self.first.is_some() || self.err.is_some()
    }
}

/// Walks the product of `lists` in jaq's order for right-nested cartesian
/// operators (`l1 + (l2 + ...)`): first list outermost, and a list's error
/// comes after all its values. Callers ensure every list has an item.
fn product<'a>(cx: &Ctx, lists: &[Items<'a>], emit: &mut dyn FnMut(&[usize]) -> R<'a>) -> R<'a> {
    let n = lists.len();
    if n == 0 {
        return emit(&[]);
    }
    let mut idx = vec![0usize; n];
    let mut k = 0;
    loop {
        if k == n {
            cx.fuel(1)?;
            emit(&idx)?;
            k -= 1;
            idx[k] += 1;
            continue;
        }
        if idx[k] < lists[k].len() {
            k += 1;
            if k < n {
                idx[k] = 0;
            }
            continue;
        }
        if let Some(e) = &lists[k].err {
            return Err(Stop::Err(e.clone()));
        }
        if k == 0 {
            return Ok(());
        }
        k -= 1;
        idx[k] += 1;
    }
}

/// A path part with its indices evaluated.
enum Pv<'a> {
    Index(Val<'a>),
    Iter,
    Range(Option<Val<'a>>, Option<Val<'a>>),
}

/// A source of evaluated path parts.
trait Parts<'a> {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> (Pv<'a>, bool);
}

/// Parts whose indices are all literals.
impl<'a> Parts<'a> for &'a [(Part, bool)] {
    fn len(&self) -> usize {
        <[_]>::len(self)
    }
    fn get(&self, i: usize) -> (Pv<'a>, bool) {
        let lit = |n: &'a Node| match n {
            Node::Lit(v) => Val::J(v),
            _ => Val::Null,
        };
        let (p, opt) = &self[i];
        let pv = match p {
            Part::Index(n) => Pv::Index(lit(n)),
            Part::Iter => Pv::Iter,
            Part::Range(a, b) => Pv::Range(a.as_ref().map(lit), b.as_ref().map(lit)),
        };
        (pv, *opt)
    }
}

impl<'a> Parts<'a> for Vec<(Pv<'a>, bool)> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn get(&self, i: usize) -> (Pv<'a>, bool) {
        let (p, opt) = &self[i];
        let pv = match p {
            Pv::Index(v) => Pv::Index(v.clone()),
            Pv::Iter => Pv::Iter,
            Pv::Range(a, b) => Pv::Range(a.clone(), b.clone()),
        };
        (pv, *opt)
    }
}

fn is_lit(n: &Node) -> bool {
    matches!(n, Node::Lit(_))
}

fn static_parts(parts: &[(Part, bool)]) -> bool {
    parts.iter().all(|(p, _)| match p {
        Part::Index(n) => is_lit(n),
        Part::Iter => true,
        Part::Range(a, b) => a.iter().chain(b).all(is_lit),
    })
}

/// Applies `parts[i..]` to `y` like jaq's `Path::run`: optional parts drop
/// their own errors, everything else ends the stream.
fn apply<'a, P: Parts<'a>>(
    cx: &Ctx,
    parts: &P,
    mut i: usize,
    mut y: Val<'a>,
    out: Out<'_, 'a>,
) -> R<'a> {
    while i < parts.len() {
        cx.fuel(1)?;
        let (p, opt) = parts.get(i);
        let r = match p {
            Pv::Index(k) => val::index(cx, &y, &k),
            Pv::Range(a, b) => val::range(cx, &y, a.as_ref(), b.as_ref()),
            Pv::Iter => {
                if !matches!(y.k(), K::Arr(_) | K::Obj(_)) {
                    return if opt {
                        Ok(())
                    } else {
                        Err(err_typ(cx, &y, "iterable (array or object)"))
                    };
                }
                return val::each(cx, &y, &mut |z| {
                    cx.fuel(1)?;
                    apply(cx, parts, i + 1, z, out)
                });
            }
        };
        match r {
            Ok(z) => y = z,
            Err(Stop::Err(_) | Stop::TooLarge) if opt => return Ok(()),
            Err(e) => return Err(e),
        }
        i += 1;
    }
    out(y)
}

impl Node {
    /// Runs the node on `v`, sending every output to `out`.
    pub(crate) fn run<'a>(
        &'a self,
        cx: &Ctx,
        env: &Env<'_, 'a>,
        v: Val<'a>,
        out: Out<'_, 'a>,
    ) -> R<'a> {
        cx.fuel(1)?;
        match self {
            Node::Id => out(v),
            Node::Lit(x) => out(Val::J(x)),
            Node::Empty => Ok(()),
            Node::Var(i) => out(env.get(*i)),
            Node::Arr(f) => {
                let mut items = Vec::new();
                f.run(cx, env, v, &mut |y| {
                    cx.alloc(ELEM_BYTES)?;
                    items.push(y);
                    Ok(())
                })?;
                out(Val::arr(items))
            }
            Node::Obj(entries) => self.run_obj(cx, env, entries, v, out),
            Node::Concat(parts) => {
                let mut lists = Vec::with_capacity(parts.len());
                for p in parts {
                    let items = collect(cx, env, p, v.clone())?;
                    if !items.any() {
                        return Ok(());
                    }
                    lists.push(items);
                }
                let lists = &lists;
                product(cx, lists, &mut |idx| {
                    let mut s = String::new();
                    for (l, &i) in lists.iter().zip(idx) {
                        s.push_str(lists_str(l.get(i)));
                    }
                    cx.alloc_str(s.len())?;
                    out(Val::Str(Rc::from(s)))
                })
            }
            Node::Neg(f) => f.run(cx, env, v, &mut |y| out(val::neg(cx, y)?)),
            Node::Pipe(l, r) => l.run(cx, env, v, &mut |y| r.run(cx, env, y, out)),
            Node::Bind(l, r) => l.run(cx, env, v.clone(), &mut |y| {
                let env = Env::Cons(y, env);
                r.run(cx, &env, v.clone(), out)
            }),
            Node::Comma(l, r) => {
                l.run(cx, env, v.clone(), out)?;
                r.run(cx, env, v, out)
            }
            Node::Alt(l, r) => {
                let mut found = false;
                l.run(cx, env, v.clone(), &mut |y| {
                    if y.truthy() {
                        found = true;
                        out(y)
                    } else {
                        Ok(())
                    }
                })?;
                if found {
                    Ok(())
                } else {
                    r.run(cx, env, v, out)
                }
            }
            Node::Logic(l, stop, r) => l.run(cx, env, v.clone(), &mut |x| {
                if x.truthy() == *stop {
                    out(Val::Bool(*stop))
                } else {
                    r.run(cx, env, v.clone(), &mut |y| out(Val::Bool(y.truthy())))
                }
            }),
            Node::Math(l, op, r) => {
                cart2(cx, env, l, r, v, &mut |a, b| out(val::math(cx, *op, a, b)?))
            }
            Node::Cmp(l, op, r) => cart2(cx, env, l, r, v, &mut |a, b| {
                let y = val::compare(cx, *op, &a, &b);
                cx.check()?;
                out(y)
            }),
            Node::Ite(c, t, e) => c.run(cx, env, v.clone(), &mut |x| {
                let branch = if x.truthy() { t } else { e };
                branch.run(cx, env, v.clone(), out)
            }),
            Node::Try(body, catch) => {
                // Errors raised downstream travel wrapped, so that only the
                // body's own errors are caught.
                let r = body.run(cx, env, v.clone(), &mut |y| {
                    out(y).map_err(|e| Stop::Down(Box::new(e)))
                });
                match r {
                    Ok(()) => Ok(()),
                    Err(Stop::Err(e)) => match catch {
                        Some(c) => c.run(cx, env, e, out),
                        None => Ok(()),
                    },
                    Err(Stop::Down(e)) => Err(*e),
                    Err(e) => Err(e),
                }
            }
            Node::Path(head, parts) => self.run_path(cx, env, head, parts, v, out),
            Node::Call(b, args) => {
                if b.var_arg()
                    && let Some(arg) = args.first()
                {
                    arg.run(cx, env, v.clone(), &mut |a| {
                        call1(cx, *b, v.clone(), a, out)
                    })
                } else {
                    call(cx, env, *b, args, v, out)
                }
            }
        }
    }

    fn run_obj<'a>(
        &'a self,
        cx: &Ctx,
        env: &Env<'_, 'a>,
        entries: &'a [(Node, Node)],
        v: Val<'a>,
        out: Out<'_, 'a>,
    ) -> R<'a> {
        // `{k1: v1} + ({k2: v2} + ...)` where each `{k: v}` is the product of
        // its key and value outputs is the product of k1, v1, k2, v2, ...
        let mut lists: Vec<Items<'a>> = Vec::with_capacity(entries.len() * 2);
        for (kn, vn) in entries {
            for n in [kn, vn] {
                let items = collect(cx, env, n, v.clone())?;
                if !items.any() {
                    return Ok(());
                }
                lists.push(items);
            }
        }
        let lists = &lists;
        product(cx, lists, &mut |idx| {
            cx.alloc(entries.len() * ELEM_BYTES)?;
            let mut m = ObjMap::with_capacity_and_hasher(entries.len(), Default::default());
            for pair in idx.chunks_exact(2).zip(lists.chunks_exact(2)) {
                let ([ki, vi], [kl, vl]) = pair else {
                    continue;
                };
                // jaq allows non-string keys; JSON cannot hold them.
                let k = kl.get(*ki).as_key().ok_or(Stop::Fallback)?;
                // Later duplicates win but keep the first position, like jaq's `+`.
                m.insert(k, vl.get(*vi).clone());
            }
            out(Val::Obj(Rc::new(m)))
        })
    }

    fn run_path<'a>(
        &'a self,
        cx: &Ctx,
        env: &Env<'_, 'a>,
        head: &'a Node,
        parts: &'a [(Part, bool)],
        v: Val<'a>,
        out: Out<'_, 'a>,
    ) -> R<'a> {
        if static_parts(parts) {
            return head.run(cx, env, v, &mut |y| apply(cx, &parts, 0, y, out));
        }
        // Index expressions run on the path's input; their combinations are
        // walked with the first part outermost, as in jaq's `Path::explode`.
        let mut lists = Vec::new();
        let mut slots = Vec::new();
        for (p, _) in parts {
            let nodes: Vec<&Node> = match p {
                Part::Index(n) => vec![n],
                Part::Iter => vec![],
                Part::Range(a, b) => a.iter().chain(b).collect(),
            };
            slots.push(nodes.len());
            for n in nodes {
                let items = collect(cx, env, n, v.clone())?;
                if !items.any() {
                    // No combinations: only errors of the head remain visible.
                    return head.run(cx, env, v, &mut |_| Ok(()));
                }
                lists.push(items);
            }
        }
        let mut combos: Vec<Vec<(Pv<'a>, bool)>> = Vec::new();
        let r = product(cx, &lists, &mut |idx| {
            let mut it = idx.iter().zip(&lists).map(|(&i, l)| l.get(i).clone());
            let mut combo = Vec::with_capacity(parts.len());
            for ((p, opt), &n) in parts.iter().zip(&slots) {
                let pv = match p {
                    Part::Index(_) => Pv::Index(it.next().unwrap_or(Val::Null)),
                    Part::Iter => Pv::Iter,
                    Part::Range(a, _) => {
                        let x = if a.is_some() { it.next() } else { None };
                        let y = if n > usize::from(a.is_some()) {
                            it.next()
                        } else {
                            None
                        };
                        Pv::Range(x, y)
                    }
                };
                combo.push((pv, *opt));
            }
            cx.alloc(ELEM_BYTES * parts.len())?;
            combos.push(combo);
            Ok(())
        });
        let err = match r {
            Ok(()) => None,
            Err(Stop::Err(e)) => Some(e),
            Err(e) => return Err(e),
        };
        head.run(cx, env, v, &mut |y| {
            for c in &combos {
                apply(cx, c, 0, y.clone(), out)?;
            }
            match &err {
                Some(e) => Err(Stop::Err(e.clone())),
                None => Ok(()),
            }
        })
    }
}

/// The text a string interpolation part contributes (parts always yield strings).
fn lists_str<'v>(v: &'v Val) -> &'v str {
    v.as_str().unwrap_or("")
}

/// Runs `n` and keeps its outputs up to the first error.
fn collect<'a>(cx: &Ctx, env: &Env<'_, 'a>, n: &'a Node, v: Val<'a>) -> R<'a, Items<'a>> {
    let mut items = Items::new();
    let r = n.run(cx, env, v, &mut |y| {
        if items.first.is_some() {
            cx.alloc(ELEM_BYTES)?;
        }
        items.push(y);
        Ok(())
    });
    match r {
        Ok(()) => Ok(items),
        Err(Stop::Err(e)) => {
            items.err = Some(e);
            Ok(items)
        }
        Err(e) => Err(e),
    }
}

/// jaq's `cartesian(l, r)` for binary operators: for each output of `l`
/// (outer) and each output of `r` (inner), call `f`. An error of `l` only
/// shows if `r` has an output, exactly as in jaq's lazy product.
fn cart2<'a>(
    cx: &Ctx,
    env: &Env<'_, 'a>,
    l: &'a Node,
    r: &'a Node,
    v: Val<'a>,
    f: &mut dyn FnMut(Val<'a>, Val<'a>) -> R<'a>,
) -> R<'a> {
    // `r` is evaluated once, when `l` yields its first output.
    let mut rs: Option<(Items<'a>, bool)> = None;
    let res = l.run(cx, env, v.clone(), &mut |a| {
        if rs.is_none() {
            let items = collect(cx, env, r, v.clone())?;
            let any = items.any();
            rs = Some((items, any));
        }
        let Some((items, _)) = rs.as_mut() else {
            return Ok(());
        };
        for b in items.iter() {
            cx.fuel(1)?;
            f(a.clone(), b.clone())?;
        }
        match items.err.take() {
            Some(e) => Err(Stop::Err(e)),
            None => Ok(()),
        }
    });
    match res {
        Err(Stop::Err(e)) => {
            let r_any = match &rs {
                Some((_, any)) => *any,
                None => collect(cx, env, r, v)?.any(),
            };
            if r_any { Err(Stop::Err(e)) } else { Ok(()) }
        }
        other => other,
    }
}

/// Runs `f` on `v` and returns its first output, stopping `f` right after it.
fn first<'a>(cx: &Ctx, env: &Env<'_, 'a>, f: &'a Node, v: Val<'a>) -> R<'a, Option<Val<'a>>> {
    let mut slot = None;
    match f.run(cx, env, v, &mut |y| {
        slot = Some(y);
        Err(Stop::Break)
    }) {
        Ok(()) | Err(Stop::Break) => Ok(slot),
        Err(e) => Err(e),
    }
}

/// All outputs of `f` on `v` (errors end the evaluation).
fn all<'a>(cx: &Ctx, env: &Env<'_, 'a>, f: &'a Node, v: Val<'a>) -> R<'a, Vec<Val<'a>>> {
    let mut vals = Vec::new();
    f.run(cx, env, v, &mut |y| {
        cx.alloc(ELEM_BYTES)?;
        vals.push(y);
        Ok(())
    })?;
    Ok(vals)
}

fn into_vec<'a>(cx: &Ctx, v: &Val<'a>) -> R<'a, Vec<Val<'a>>> {
    match v.k() {
        K::Arr(a) => {
            cx.fuel(a.len() as u64)?;
            cx.alloc(a.len() * ELEM_BYTES)?;
            Ok(a.to_vec())
        }
        _ => Err(err_typ(cx, v, "array")),
    }
}

fn string<'a>(cx: &Ctx, s: String) -> R<'a, Val<'a>> {
    cx.alloc_str(s.len())?;
    Ok(Val::Str(Rc::from(s)))
}

fn sel(s: Sel, v: &Val) -> bool {
    let k = v.k();
    match s {
        Sel::Values => !matches!(k, K::Null),
        Sel::Nulls => matches!(k, K::Null),
        Sel::Booleans => matches!(k, K::Bool(_)),
        Sel::Numbers => matches!(k, K::Num(_)),
        Sel::Strings => matches!(k, K::Str(_)),
        Sel::Arrays => matches!(k, K::Arr(_)),
        Sel::Objects => matches!(k, K::Obj(_)),
        Sel::Iterables => matches!(k, K::Arr(_) | K::Obj(_)),
        Sel::Scalars => !matches!(k, K::Arr(_) | K::Obj(_)),
    }
}

/// jaq's `ValT::round` for `floor`, `ceil` and `round`.
fn round<'a>(cx: &Ctx, v: Val<'a>, f: fn(f64) -> f64) -> R<'a, Val<'a>> {
    match v.k() {
        K::Num(n) if n.int().is_some() => Ok(v),
        K::Num(n) => {
            let r = f(n.f64());
            if !r.is_finite() {
                return Err(Stop::Fallback);
            }
            if (i64::MIN as f64) <= r && r <= (i64::MAX as f64) {
                // Saturating, exactly like jaq's `f as isize`.
                Ok(Val::Num(N::I(r as i64)))
            } else {
                format!("{r:.0}")
                    .parse::<i128>()
                    .ok()
                    .and_then(Val::int)
                    .ok_or(Stop::Fallback)
            }
        }
        _ => Err(err_typ(cx, &v, "number")),
    }
}

/// jaq's `contains`; gives up once fuel is gone (callers check it).
fn contains(cx: &Ctx, a: &Val, b: &Val) -> bool {
    cx.tick(1);
    if !cx.has_fuel() {
        return true;
    }
    match (a.k(), b.k()) {
        (K::Str(l), K::Str(r)) => {
            cx.tick((l.len() / 64) as u64);
            l.contains(r)
        }
        (K::Arr(l), K::Arr(r)) => r
            .iter()
            .all(|r| l.iter().any(|l| !cx.has_fuel() || contains(cx, &l, &r))),
        (K::Obj(l), K::Obj(r)) => r
            .iter()
            .all(|(k, r)| l.get(&k).is_some_and(|l| contains(cx, &l, &r))),
        _ => eq(cx, a, b),
    }
}

/// `tonumber` on a string: only the shapes whose jaq result we can reproduce.
fn parse_number<'a>(s: &str) -> R<'a, Val<'a>> {
    let b = s.as_bytes();
    let digits = |x: &[u8]| !x.is_empty() && x.iter().all(u8::is_ascii_digit);
    let body = b
        .strip_prefix(b"+")
        .or_else(|| b.strip_prefix(b"-"))
        .unwrap_or(b);
    if digits(body) && body.len() <= 40 {
        let t = s.strip_prefix('+').unwrap_or(s);
        return t
            .parse::<i128>()
            .ok()
            .and_then(Val::int)
            .ok_or(Stop::Fallback);
    }
    // jaq keeps decimals as their text; equal to ours only when it is
    // exactly how ryu prints the parsed float.
    let (mant, exp) = match body.iter().position(|c| *c == b'e' || *c == b'E') {
        Some(p) => (&body[..p], Some(&body[p + 1..])),
        None => (body, None),
    };
    let mant_ok = match mant.iter().position(|c| *c == b'.') {
        Some(p) => digits(&mant[..p]) && digits(&mant[p + 1..]),
        None => digits(mant) && exp.is_some(),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e
            .strip_prefix(b"+")
            .or_else(|| e.strip_prefix(b"-"))
            .unwrap_or(e);
        digits(e)
    });
    if mant_ok
        && exp_ok
        && let Ok(f) = s.parse::<f64>()
        && f.is_finite()
        && ryu::Buffer::new().format_finite(f) == s
    {
        return Ok(Val::Num(N::F(f)));
    }
    Err(Stop::Fallback)
}

/// `fromjson` via serde_json, accepted only where jaq's parser would agree.
fn from_json<'a>(cx: &Ctx, s: &str) -> R<'a, Val<'a>> {
    cx.fuel(1 + (s.len() / 16) as u64)?;
    cx.alloc(s.len() * 4)?;
    let mut de = serde_json::Deserializer::from_str(s);
    match <Parsed as serde::Deserialize>::deserialize(&mut de) {
        Ok(p) if de.end().is_ok() => Ok(p.0),
        // Floats, errors, several values, comments, NaN...: the sandbox decides.
        _ => Err(Stop::Fallback),
    }
}

/// A value parsed by serde_json, with object keys in document order.
struct Parsed<'a>(Val<'a>);

impl<'de, 'a> serde::Deserialize<'de> for Parsed<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParsedVisitor(std::marker::PhantomData))
    }
}

struct ParsedVisitor<'a>(std::marker::PhantomData<Val<'a>>);

impl<'de, 'a> serde::de::Visitor<'de> for ParsedVisitor<'a> {
    type Value = Parsed<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Parsed(Val::Null))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Parsed(Val::Bool(b)))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(Parsed(Val::Num(N::I(i))))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(Parsed(Val::Num(
            N::from_int(i128::from(u)).unwrap_or(N::U(u)),
        )))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        // jaq keeps decimal text (`1.50` stays `1.50`); let the sandbox handle it.
        Err(E::custom("float"))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Parsed(Val::str(s)))
    }
    fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut v = Vec::new();
        while let Some(Parsed(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Parsed(Val::arr(v)))
    }
    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut m = ObjMap::default();
        while let Some((k, Parsed(x))) = map.next_entry::<String, Parsed>()? {
            m.insert(Key::O(Rc::from(k)), x);
        }
        Ok(Parsed(Val::Obj(Rc::new(m))))
    }
}

/// Builtins with one `$`-argument, called once per argument output.
fn call1<'a>(cx: &Ctx, b: Builtin, v: Val<'a>, a: Val<'a>, out: Out<'_, 'a>) -> R<'a> {
    let y = match b {
        Builtin::Has => Val::Bool(match (v.k(), a.k()) {
            (K::Null, _) => false,
            (K::Obj(o), K::Str(k)) => o.get(k).is_some(),
            (K::Obj(_), _) => false,
            (K::Arr(arr), K::Num(n)) if n.int().is_some() => n.int().is_some_and(|i| {
                let len = arr.len() as i128;
                let j = if i >= 0 { i } else { len + i };
                0 <= j && j < len
            }),
            (K::Arr(_), K::Arr(_)) => true,
            (K::Arr(_) | K::Str(_), K::Obj(_)) => return Err(Stop::Fallback),
            _ => return Err(err_index(cx, &v, &a)),
        }),
        Builtin::Contains => {
            let r = contains(cx, &v, &a);
            cx.check()?;
            Val::Bool(r)
        }
        Builtin::StartsWith | Builtin::EndsWith | Builtin::LTrimStr | Builtin::RTrimStr => {
            let Some(s) = v.as_str() else {
                return Err(err_typ(cx, &v, "string"));
            };
            let Some(x) = a.as_str() else {
                return Err(err_typ(cx, &a, "string"));
            };
            match b {
                Builtin::StartsWith => Val::Bool(s.starts_with(x)),
                Builtin::EndsWith => Val::Bool(s.ends_with(x)),
                Builtin::LTrimStr => match s.strip_prefix(x) {
                    Some(t) => string(cx, t.to_string())?,
                    None => v.clone(),
                },
                _ => match s.strip_suffix(x) {
                    Some(t) => string(cx, t.to_string())?,
                    None => v.clone(),
                },
            }
        }
        Builtin::Split => match (v.as_str(), a.as_str()) {
            (Some(s), Some(sep)) => val::split_str(cx, s, sep)?,
            _ => {
                return Err(err_msg(
                    cx,
                    "split input and separator must be strings".to_string(),
                ));
            }
        },
        Builtin::Join => join(cx, &v, &a)?,
        Builtin::Indices => indices(cx, &v, &a)?,
        _ => return Err(Stop::Fallback),
    };
    out(y)
}

/// jaq's `def join($s): .[] |= tostring | .[:-1][] += $s | reduce .[] as $x (""; . + $x)`.
fn join<'a>(cx: &Ctx, v: &Val<'a>, sep: &Val<'a>) -> R<'a, Val<'a>> {
    let arr = match v.k() {
        K::Arr(a) => a,
        // On objects the update steps fail with a message built from the
        // half-updated object; rare enough for the sandbox.
        K::Obj(_) => return Err(Stop::Fallback),
        _ => return Err(err_typ(cx, v, "iterable (array or object)")),
    };
    cx.fuel(arr.len() as u64)?;
    let mut parts = Vec::with_capacity(arr.len());
    for x in arr.iter() {
        parts.push(match x.k() {
            K::Str(s) => s.to_string(),
            _ => show(cx, &x)?,
        });
    }
    let sep_str = match sep.k() {
        K::Null => None,
        K::Str(s) => Some(s),
        _ => {
            if parts.len() > 1 {
                return Err(err_math(cx, &Val::str(&parts[0]), Math::Add, sep));
            }
            None
        }
    };
    let total: usize = parts.iter().map(String::len).sum::<usize>()
        + sep_str.map_or(0, str::len) * parts.len().saturating_sub(1);
    cx.alloc_str(total)?;
    let mut s = String::with_capacity(total);
    for (i, p) in parts.iter().enumerate() {
        if i > 0
            && let Some(sep) = sep_str
        {
            s.push_str(sep);
        }
        s.push_str(p);
    }
    Ok(Val::Str(Rc::from(s)))
}

/// jaq-json's `indices`.
fn indices<'a>(cx: &Ctx, v: &Val<'a>, i: &Val<'a>) -> R<'a, Val<'a>> {
    let pos = match (v.k(), i.k()) {
        (K::Str(_), K::Str("")) => Vec::new(),
        (K::Str(x), K::Str(y)) => {
            // Positions are counted in characters, matches compared as bytes;
            // each comparison costs fuel so long needles cannot go quadratic.
            let step = 1 + (y.len() / 64) as u64;
            let pos = x
                .char_indices()
                .enumerate()
                .take_while(|(_, (bi, _))| bi + y.len() <= x.len() && cx.has_fuel())
                .filter(|(_, (bi, _))| {
                    cx.tick(step);
                    x.as_bytes()[*bi..].starts_with(y.as_bytes())
                })
                .map(|(ci, _)| ci)
                .collect();
            cx.check()?;
            pos
        }
        (K::Arr(x), K::Arr(y)) => return val::indices_arr(cx, x, y),
        (K::Arr(x), _) => {
            let p: Vec<usize> = x
                .iter()
                .enumerate()
                .filter(|(_, e)| eq(cx, e, i))
                .map(|(n, _)| n)
                .collect();
            cx.fuel(x.len() as u64)?;
            p
        }
        _ => return Err(err_index(cx, v, i)),
    };
    cx.alloc(pos.len() * ELEM_BYTES)?;
    Ok(Val::arr(pos.into_iter().map(Val::usize).collect()))
}

/// Keys of `xs` under `f`: all outputs of `f` per element, in element order.
fn keys_by<'a>(
    cx: &Ctx,
    env: &Env<'_, 'a>,
    f: &'a Node,
    xs: &[Val<'a>],
) -> R<'a, Vec<Vec<Val<'a>>>> {
    xs.iter().map(|x| all(cx, env, f, x.clone())).collect()
}

fn cmp_keys(cx: &Ctx, a: &[Val], b: &[Val]) -> std::cmp::Ordering {
    if !cx.has_fuel() {
        // Fuel is gone: finish the sort cheaply, the caller reports it.
        return std::cmp::Ordering::Equal;
    }
    for (x, y) in a.iter().zip(b) {
        let o = cmp(cx, x, y);
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Accumulator for `add`, appending in place instead of copying.
enum Acc<'a> {
    V(Val<'a>),
    S(String),
    A(Vec<Val<'a>>),
    O(ObjMap<'a>),
}

impl<'a> Acc<'a> {
    fn add(&mut self, cx: &Ctx, x: Val<'a>) -> R<'a> {
        cx.fuel(1)?;
        if matches!(x.k(), K::Null) {
            return Ok(());
        }
        let cur = std::mem::replace(self, Acc::V(Val::Null));
        *self = match (cur, x.k()) {
            (Acc::V(l), K::Str(s)) if matches!(l.k(), K::Str(_)) => {
                let mut b = l.as_str().unwrap_or("").to_string();
                cx.alloc_str(b.len() + s.len())?;
                b.push_str(s);
                Acc::S(b)
            }
            (Acc::V(l), K::Arr(a)) if matches!(l.k(), K::Arr(_)) => {
                let mut v = into_vec(cx, &l)?;
                cx.fuel(a.len() as u64)?;
                cx.alloc(a.len() * ELEM_BYTES)?;
                v.extend(a.iter());
                Acc::A(v)
            }
            (Acc::V(l), K::Obj(o)) if matches!(l.k(), K::Obj(_)) => {
                let mut m = match l.k() {
                    K::Obj(lo) => lo.to_map(),
                    _ => ObjMap::default(),
                };
                cx.fuel(o.len() as u64)?;
                cx.alloc(o.len() * ELEM_BYTES)?;
                m.extend(o.iter());
                Acc::O(m)
            }
            (Acc::V(l), _) => Acc::V(val::math(cx, Math::Add, l, x)?),
            (Acc::S(mut b), K::Str(s)) => {
                if b.len() + s.len() > cx.max_bytes {
                    return Err(Stop::TooLarge);
                }
                cx.alloc_str(s.len())?;
                b.push_str(s);
                Acc::S(b)
            }
            (Acc::A(mut v), K::Arr(a)) => {
                cx.fuel(a.len() as u64)?;
                cx.alloc(a.len() * ELEM_BYTES)?;
                v.extend(a.iter());
                Acc::A(v)
            }
            (Acc::O(mut m), K::Obj(o)) => {
                cx.fuel(o.len() as u64)?;
                cx.alloc(o.len() * ELEM_BYTES)?;
                m.extend(o.iter());
                Acc::O(m)
            }
            (other, _) => return Err(err_math(cx, &other.finish(), Math::Add, &x)),
        };
        Ok(())
    }

    fn finish(self) -> Val<'a> {
        match self {
            Acc::V(v) => v,
            Acc::S(s) => Val::Str(Rc::from(s)),
            Acc::A(v) => Val::arr(v),
            Acc::O(m) => Val::Obj(Rc::new(m)),
        }
    }
}

/// Builtins without `$`-arguments.
fn call<'a>(
    cx: &Ctx,
    env: &Env<'_, 'a>,
    b: Builtin,
    args: &'a [Node],
    v: Val<'a>,
    out: Out<'_, 'a>,
) -> R<'a> {
    let arg = |i: usize| args.get(i).unwrap_or(&Node::Id);
    let y = match b {
        Builtin::Not => Val::Bool(!v.truthy()),
        Builtin::Length => match v.k() {
            K::Null => Val::usize(0),
            K::Bool(x) => return Err(err_msg(cx, format!("{x} has no length"))),
            // jaq's `isize::abs` overflows on the minimum; leave it to jaq.
            K::Num(N::I(i64::MIN)) => return Err(Stop::Fallback),
            K::Num(N::F(f)) => Val::Num(N::F(f.abs())),
            K::Num(n) => n
                .int()
                .and_then(|i| Val::int(i.abs()))
                .ok_or(Stop::Fallback)?,
            K::Str(s) => {
                cx.fuel((s.len() / 256) as u64)?;
                Val::usize(s.chars().count())
            }
            K::Arr(a) => Val::usize(a.len()),
            K::Obj(o) => Val::usize(o.len()),
        },
        Builtin::Utf8ByteLength => match v.k() {
            K::Str(s) => Val::usize(s.len()),
            _ => return Err(err_typ(cx, &v, "string")),
        },
        Builtin::KeysUnsorted => {
            let keys: Vec<Val> = match v.k() {
                K::Arr(a) => (0..a.len()).map(Val::usize).collect(),
                K::Obj(o) => o.iter().map(|(k, _)| k.val()).collect(),
                _ => return Err(err_typ(cx, &v, "iterable (array or object)")),
            };
            cx.fuel(keys.len() as u64)?;
            cx.alloc(keys.len() * ELEM_BYTES * 2)?;
            Val::arr(keys)
        }
        Builtin::ToString => match v.k() {
            K::Str(_) => v,
            _ => string(cx, show(cx, &v)?)?,
        },
        Builtin::ToJson => string(cx, show(cx, &v)?)?,
        Builtin::FromJson => match v.k() {
            K::Str(s) => from_json(cx, s)?,
            _ => return Err(err_typ(cx, &v, "string")),
        },
        Builtin::ToNumber => match v.k() {
            K::Num(_) => v,
            K::Str(s) => parse_number(s)?,
            _ => return Err(err_typ(cx, &v, "string")),
        },
        Builtin::Type => Val::S(match v.k() {
            K::Null => "null",
            K::Bool(_) => "boolean",
            K::Num(_) => "number",
            K::Str(_) => "string",
            K::Arr(_) => "array",
            K::Obj(_) => "object",
        }),
        Builtin::AsciiDowncase
        | Builtin::AsciiUpcase
        | Builtin::Trim
        | Builtin::LTrim
        | Builtin::RTrim => {
            let Some(s) = v.as_str() else {
                return Err(err_typ(cx, &v, "string"));
            };
            let t = match b {
                Builtin::AsciiDowncase => s.to_ascii_lowercase(),
                Builtin::AsciiUpcase => s.to_ascii_uppercase(),
                Builtin::Trim => s.trim().to_string(),
                Builtin::LTrim => s.trim_start().to_string(),
                _ => s.trim_end().to_string(),
            };
            string(cx, t)?
        }
        Builtin::Floor => round(cx, v, f64::floor)?,
        Builtin::Ceil => round(cx, v, f64::ceil)?,
        Builtin::Round => round(cx, v, f64::round)?,
        Builtin::ToEntries => {
            let entry = |k: Val<'a>, x: Val<'a>| {
                let mut m = ObjMap::with_capacity_and_hasher(2, Default::default());
                m.insert(Key::B("key"), k);
                m.insert(Key::B("value"), x);
                Val::Obj(Rc::new(m))
            };
            let es: Vec<Val> = match v.k() {
                K::Arr(a) => a
                    .iter()
                    .enumerate()
                    .map(|(i, x)| entry(Val::usize(i), x))
                    .collect(),
                K::Obj(o) => o.iter().map(|(k, x)| entry(k.val(), x)).collect(),
                _ => return Err(err_typ(cx, &v, "iterable (array or object)")),
            };
            cx.fuel(es.len() as u64)?;
            cx.alloc(es.len() * ELEM_BYTES * 4)?;
            Val::arr(es)
        }
        Builtin::FromEntries => {
            let mut m = ObjMap::default();
            let key = Val::S("key");
            let value = Val::S("value");
            val::each(cx, &v, &mut |e| {
                cx.fuel(1)?;
                cx.alloc(ELEM_BYTES)?;
                let k = val::index(cx, &e, &key)?;
                let x = val::index(cx, &e, &value)?;
                match k.as_key() {
                    Some(k) => {
                        m.insert(k, x);
                        Ok(())
                    }
                    // jaq builds an object with a non-string key here.
                    None => Err(Stop::Fallback),
                }
            })?;
            Val::Obj(Rc::new(m))
        }
        Builtin::Sort => {
            let mut xs = into_vec(cx, &v)?;
            cx.fuel(xs.len() as u64)?;
            xs.sort_by(|p, q| {
                if cx.has_fuel() {
                    cmp(cx, p, q)
                } else {
                    std::cmp::Ordering::Equal
                }
            });
            cx.check()?;
            Val::arr(xs)
        }
        Builtin::Reverse => {
            let mut xs = into_vec(cx, &v)?;
            xs.reverse();
            Val::arr(xs)
        }
        Builtin::Flatten => {
            // `[recurse(arrays[]) | select(isarray | not)]`, without recursion.
            let mut res = Vec::new();
            let mut stack = vec![v];
            while let Some(x) = stack.pop() {
                cx.fuel(1)?;
                match x.k() {
                    K::Arr(a) => {
                        let n = a.len();
                        stack.extend((0..n).rev().map(|i| a.get(i)));
                    }
                    _ => {
                        cx.alloc(ELEM_BYTES)?;
                        res.push(x);
                    }
                }
            }
            Val::arr(res)
        }
        Builtin::Select(s) => {
            return if sel(s, &v) { out(v) } else { Ok(()) };
        }
        Builtin::Is(s) => Val::Bool(sel(s, &v)),
        Builtin::First => match first(cx, env, arg(0), v)? {
            Some(y) => y,
            None => return Ok(()),
        },
        Builtin::Last => {
            let mut last = None;
            arg(0).run(cx, env, v, &mut |y| {
                last = Some(y);
                Ok(())
            })?;
            match last {
                Some(y) => y,
                None => return Ok(()),
            }
        }
        Builtin::MapValues => match v.k() {
            K::Arr(a) => {
                let mut res = Vec::with_capacity(a.len());
                for x in a.iter() {
                    arg(0).run(cx, env, x, &mut |y| {
                        cx.alloc(ELEM_BYTES)?;
                        res.push(y);
                        Ok(())
                    })?;
                }
                Val::arr(res)
            }
            K::Obj(o) => {
                // Objects keep only the first output per value, dropping
                // keys whose value yields nothing.
                let mut m = ObjMap::with_capacity_and_hasher(o.len(), Default::default());
                for (k, x) in o.iter() {
                    if let Some(y) = first(cx, env, arg(0), x)? {
                        cx.alloc(ELEM_BYTES)?;
                        m.insert(k, y);
                    }
                }
                Val::Obj(Rc::new(m))
            }
            _ => return Err(err_typ(cx, &v, "iterable (array or object)")),
        },
        Builtin::SortBy | Builtin::GroupBy | Builtin::MinBy | Builtin::MaxBy => {
            let xs = into_vec(cx, &v)?;
            if b == Builtin::SortBy && xs.len() < 2 {
                // jaq sorts with `sort_by_cached_key`, which returns before
                // computing any key for fewer than two elements.
                return out(Val::arr(xs));
            }
            let keys = keys_by(cx, env, arg(0), &xs)?;
            let mut pairs: Vec<(Vec<Val>, Val)> = keys.into_iter().zip(xs).collect();
            match b {
                Builtin::SortBy | Builtin::GroupBy => {
                    pairs.sort_by(|p, q| cmp_keys(cx, &p.0, &q.0));
                    cx.fuel(pairs.len() as u64)?;
                    if b == Builtin::SortBy {
                        Val::arr(pairs.into_iter().map(|p| p.1).collect())
                    } else {
                        let mut groups: Vec<Val> = Vec::new();
                        let mut cur: Vec<Val> = Vec::new();
                        let mut cur_key: Option<Vec<Val>> = None;
                        for (k, x) in pairs {
                            let same = cur_key.as_ref().is_some_and(|ck| {
                                ck.len() == k.len() && ck.iter().zip(&k).all(|(a, b)| eq(cx, a, b))
                            });
                            if !same && cur_key.is_some() {
                                groups.push(Val::arr(std::mem::take(&mut cur)));
                            }
                            if !same {
                                cur_key = Some(k);
                            }
                            cur.push(x);
                        }
                        if !cur.is_empty() {
                            groups.push(Val::arr(cur));
                        }
                        cx.check()?;
                        cx.alloc(groups.len() * ELEM_BYTES)?;
                        Val::arr(groups)
                    }
                }
                _ => {
                    let mut best: Option<(Vec<Val>, Val)> = None;
                    for (k, x) in pairs {
                        let replace = match &best {
                            None => true,
                            Some((bk, _)) => {
                                let o = cmp_keys(cx, &k, bk);
                                // min keeps the first minimum, max the last maximum.
                                if b == Builtin::MinBy {
                                    o.is_lt()
                                } else {
                                    o.is_ge()
                                }
                            }
                        };
                        if replace {
                            best = Some((k, x));
                        }
                    }
                    cx.check()?;
                    best.map_or(Val::Null, |p| p.1)
                }
            }
        }
        Builtin::Add => {
            let mut acc = Acc::V(Val::Null);
            arg(0).run(cx, env, v, &mut |x| acc.add(cx, x))?;
            acc.finish()
        }
        // `$`-argument builtins are dispatched by `call1`.
        _ => return Err(Stop::Fallback),
    };
    out(y)
}
