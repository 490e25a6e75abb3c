//! The fast path's value type and the primitive operations on it, each
//! written to behave exactly like the corresponding operation in jaq-json.

use std::borrow::Borrow;
use std::cell::Cell;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::rc::Rc;

use indexmap::IndexMap;
use serde_json::{Map as JMap, Number, Value};

/// An ordered object, like jaq's (insertion order, independent of
/// whether serde_json preserves order).
pub(crate) type ObjMap<'a> = IndexMap<Key<'a>, Val<'a>, foldhash::fast::RandomState>;

/// An object key, borrowed (from the input or a literal) where possible.
#[derive(Clone, Debug)]
pub(crate) enum Key<'a> {
    B(&'a str),
    O(Rc<str>),
}

impl Deref for Key<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Key::B(s) => s,
            Key::O(s) => s,
        }
    }
}

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Key<'_> {}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Must hash like `str` so that lookups by `&str` work.
        (**self).hash(h)
    }
}

impl Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        self
    }
}

impl<'a> Key<'a> {
    /// The key as a string value.
    pub(crate) fn val(&self) -> Val<'a> {
        match self {
            Key::B(s) => Val::S(s),
            Key::O(s) => Val::Str(s.clone()),
        }
    }
}

/// A number as jaq sees it: integers stay integers, floats stay floats.
/// Integers are restricted to the range of `i64` and `u64`; results outside
/// that range (where jaq switches to big integers) go to the sandbox.
#[derive(Clone, Copy, Debug)]
pub(crate) enum N {
    I(i64),
    /// Only for values above `i64::MAX`.
    U(u64),
    /// Always finite: non-finite results go to the sandbox.
    F(f64),
}

/// A value during fast evaluation: either borrowed JSON (from the input or
/// from a literal in the expression) or something built during evaluation.
#[derive(Clone, Debug)]
pub(crate) enum Val<'a> {
    J(&'a Value),
    Null,
    Bool(bool),
    Num(N),
    Str(Rc<str>),
    /// A borrowed string (an object key of the input or a literal).
    S(&'a str),
    Arr(Rc<Vec<Val<'a>>>),
    Obj(Rc<ObjMap<'a>>),
}

/// A view of a value's kind that treats borrowed and built values alike.
pub(crate) enum K<'v, 'a> {
    Null,
    Bool(bool),
    Num(N),
    Str(&'v str),
    Arr(A<'v, 'a>),
    Obj(O<'v, 'a>),
}

/// An array view.
#[derive(Clone, Copy)]
pub(crate) enum A<'v, 'a> {
    J(&'a [Value]),
    V(&'v [Val<'a>]),
}

/// An object view.
#[derive(Clone, Copy)]
pub(crate) enum O<'v, 'a> {
    J(&'a JMap<String, Value>),
    V(&'v ObjMap<'a>),
}

/// Why a fast evaluation stopped early.
#[derive(Debug)]
pub(crate) enum Stop<'a> {
    /// A jq error carrying its value (what `catch` sees).
    Err(Val<'a>),
    /// Anything raised downstream of a `try` body, which that `try` must not catch.
    Down(Box<Stop<'a>>),
    /// `first(f)` got its value and wants `f` to stop.
    Break,
    /// The fuel ran out.
    Fuel,
    /// Too much data was built.
    TooLarge,
    /// The fast path cannot reproduce jaq exactly here; use the sandbox.
    Fallback,
}

/// Result of a fast operation.
pub(crate) type R<'a, T = ()> = Result<T, Stop<'a>>;

/// Budgets for one evaluation.
pub(crate) struct Ctx {
    fuel: Cell<u64>,
    /// Set once any fuel request could not be met.
    out_of_fuel: Cell<bool>,
    mem: Cell<usize>,
    /// Largest single string, and the output size limit.
    pub(crate) max_bytes: usize,
}

impl Ctx {
    pub(crate) fn new(fuel: u64, max_bytes: usize) -> Self {
        Self {
            fuel: Cell::new(fuel),
            out_of_fuel: Cell::new(false),
            // Intermediate results may exceed the final output, so the
            // cumulative allocation budget is a multiple of the output limit.
            mem: Cell::new(max_bytes.saturating_mul(4)),
            max_bytes,
        }
    }

    /// Spends `n` fuel without failing (for loops that cannot stop midway,
    /// such as sorting); [`Ctx::check`] reports exhaustion afterwards.
    #[inline]
    pub(crate) fn tick(&self, n: u64) {
        let f = self.fuel.get();
        if f < n {
            self.fuel.set(0);
            self.out_of_fuel.set(true);
        } else {
            self.fuel.set(f - n);
        }
    }

    /// Fails if fuel has run out.
    #[inline]
    pub(crate) fn check(&self) -> R<'static> {
        if self.out_of_fuel.get() {
            Err(Stop::Fuel)
        } else {
            Ok(())
        }
    }

    /// Spends `n` fuel, failing when it runs out.
    #[inline]
    pub(crate) fn fuel(&self, n: u64) -> R<'static> {
        self.tick(n);
        self.check()
    }

    /// Whether fuel is left.
    #[inline]
    pub(crate) fn has_fuel(&self) -> bool {
        !self.out_of_fuel.get()
    }

    /// Accounts for `bytes` of newly built data.
    #[inline]
    pub(crate) fn alloc(&self, bytes: usize) -> R<'static> {
        let m = self.mem.get();
        if m < bytes {
            self.mem.set(0);
            return Err(Stop::TooLarge);
        }
        self.mem.set(m - bytes);
        Ok(())
    }

    /// Accounts for a new string of `len` bytes.
    pub(crate) fn alloc_str(&self, len: usize) -> R<'static> {
        if len > self.max_bytes {
            return Err(Stop::TooLarge);
        }
        self.fuel(1 + (len / 256) as u64)?;
        self.alloc(len + 16)
    }
}

/// Approximate in-memory size of one built array element or object entry.
pub(crate) const ELEM_BYTES: usize = 32;

pub(crate) fn n_of(n: &Number) -> N {
    if let Some(i) = n.as_i64() {
        N::I(i)
    } else if let Some(u) = n.as_u64() {
        N::U(u)
    } else {
        // Without serde_json's arbitrary_precision this is always Some.
        N::F(n.as_f64().unwrap_or(f64::NAN))
    }
}

impl N {
    pub(crate) fn int(self) -> Option<i128> {
        match self {
            N::I(i) => Some(i128::from(i)),
            N::U(u) => Some(i128::from(u)),
            N::F(_) => None,
        }
    }

    pub(crate) fn f64(self) -> f64 {
        match self {
            N::I(i) => i as f64,
            N::U(u) => u as f64,
            N::F(f) => f,
        }
    }

    /// An integer result, if jaq would keep it in a range we can represent.
    pub(crate) fn from_int(i: i128) -> Option<N> {
        if let Ok(i) = i64::try_from(i) {
            Some(N::I(i))
        } else {
            u64::try_from(i).ok().map(N::U)
        }
    }

    /// A float result, if finite (jaq keeps NaN and infinities, JSON cannot).
    pub(crate) fn from_f64(f: f64) -> Option<N> {
        f.is_finite().then_some(N::F(f))
    }

    fn to_number(self) -> Option<Number> {
        match self {
            N::I(i) => Some(i.into()),
            N::U(u) => Some(u.into()),
            N::F(f) => Number::from_f64(f),
        }
    }
}

fn float_cmp(l: f64, r: f64) -> Ordering {
    if l == 0.0 && r == 0.0 {
        Ordering::Equal
    } else if l.is_nan() {
        Ordering::Less
    } else if r.is_nan() {
        Ordering::Greater
    } else {
        l.total_cmp(&r)
    }
}

pub(crate) fn num_cmp(a: N, b: N) -> Ordering {
    match (a.int(), b.int()) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => float_cmp(a.f64(), b.f64()),
    }
}

fn num_eq(a: N, b: N) -> bool {
    match (a.int(), b.int()) {
        (Some(x), Some(y)) => x == y,
        (Some(_), None) => b.f64().is_finite() && float_cmp(a.f64(), b.f64()).is_eq(),
        (None, Some(_)) => a.f64().is_finite() && float_cmp(a.f64(), b.f64()).is_eq(),
        (None, None) => float_cmp(a.f64(), b.f64()).is_eq(),
    }
}

impl<'v, 'a> A<'v, 'a> {
    pub(crate) fn len(self) -> usize {
        match self {
            A::J(s) => s.len(),
            A::V(s) => s.len(),
        }
    }

    pub(crate) fn get(self, i: usize) -> Val<'a> {
        match self {
            A::J(s) => Val::J(&s[i]),
            A::V(s) => s[i].clone(),
        }
    }

    pub(crate) fn iter(self) -> impl Iterator<Item = Val<'a>> + 'v {
        let (j, v) = match self {
            A::J(s) => (s.iter(), [].iter()),
            A::V(s) => ([].iter(), s.iter()),
        };
        j.map(Val::J).chain(v.cloned())
    }

    pub(crate) fn to_vec(self) -> Vec<Val<'a>> {
        self.iter().collect()
    }
}

impl<'v, 'a> O<'v, 'a> {
    pub(crate) fn len(self) -> usize {
        match self {
            O::J(m) => m.len(),
            O::V(m) => m.len(),
        }
    }

    pub(crate) fn get(self, k: &str) -> Option<Val<'a>> {
        match self {
            O::J(m) => m.get(k).map(Val::J),
            O::V(m) => m.get(k).cloned(),
        }
    }

    pub(crate) fn iter(self) -> impl Iterator<Item = (Key<'a>, Val<'a>)> + 'v {
        let (j, v) = match self {
            O::J(m) => (Some(m.iter()), None),
            O::V(m) => (None, Some(m.iter())),
        };
        let j = j
            .into_iter()
            .flatten()
            .map(|(k, v)| (Key::B(k.as_str()), Val::J(v)));
        let v = v.into_iter().flatten().map(|(k, v)| (k.clone(), v.clone()));
        j.chain(v)
    }

    pub(crate) fn to_map(self) -> ObjMap<'a> {
        self.iter().collect()
    }
}

impl<'a> Val<'a> {
    pub(crate) fn k(&self) -> K<'_, 'a> {
        match self {
            Val::J(j) => match j {
                Value::Null => K::Null,
                Value::Bool(b) => K::Bool(*b),
                Value::Number(n) => K::Num(n_of(n)),
                Value::String(s) => K::Str(s),
                Value::Array(a) => K::Arr(A::J(a)),
                Value::Object(o) => K::Obj(O::J(o)),
            },
            Val::Null => K::Null,
            Val::Bool(b) => K::Bool(*b),
            Val::Num(n) => K::Num(*n),
            Val::Str(s) => K::Str(s),
            Val::S(s) => K::Str(s),
            Val::Arr(a) => K::Arr(A::V(a)),
            Val::Obj(o) => K::Obj(O::V(o)),
        }
    }

    pub(crate) fn str(s: &str) -> Self {
        Val::Str(Rc::from(s))
    }

    pub(crate) fn int(i: i128) -> Option<Self> {
        N::from_int(i).map(Val::Num)
    }

    pub(crate) fn usize(i: usize) -> Self {
        Val::Num(N::from_int(i as i128).unwrap_or(N::U(u64::MAX)))
    }

    pub(crate) fn truthy(&self) -> bool {
        !matches!(self.k(), K::Null | K::Bool(false))
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self.k() {
            K::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an object key, if it is a string.
    pub(crate) fn as_key(&self) -> Option<Key<'a>> {
        match self {
            Val::J(Value::String(s)) => Some(Key::B(s)),
            Val::S(s) => Some(Key::B(s)),
            Val::Str(s) => Some(Key::O(s.clone())),
            _ => None,
        }
    }

    pub(crate) fn arr(v: Vec<Val<'a>>) -> Self {
        Val::Arr(Rc::new(v))
    }

    /// Converts to JSON, spending `budget` (approximate bytes).
    pub(crate) fn to_value(&self, budget: &mut usize) -> Result<Value, ()> {
        spend(budget, 8)?;
        Ok(match self {
            Val::J(j) => clone_json(j, budget)?,
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => n.to_number().map_or(Value::Null, Value::Number),
            Val::Str(s) => {
                spend(budget, s.len())?;
                Value::String(s.to_string())
            }
            Val::S(s) => {
                spend(budget, s.len())?;
                Value::String(s.to_string())
            }
            Val::Arr(a) => Value::Array(
                a.iter()
                    .map(|x| x.to_value(budget))
                    .collect::<Result<_, _>>()?,
            ),
            Val::Obj(o) => {
                let mut m = JMap::new();
                for (k, v) in o.iter() {
                    spend(budget, k.len())?;
                    m.insert(k.to_string(), v.to_value(budget)?);
                }
                Value::Object(m)
            }
        })
    }
}

fn spend(budget: &mut usize, n: usize) -> Result<(), ()> {
    *budget = budget.checked_sub(n).ok_or(())?;
    Ok(())
}

fn clone_json(v: &Value, budget: &mut usize) -> Result<Value, ()> {
    // Measure first (cheap, stops early), then let serde_json clone in bulk.
    json_size(v, budget)?;
    Ok(v.clone())
}

fn json_size(v: &Value, budget: &mut usize) -> Result<(), ()> {
    match v {
        Value::String(s) => spend(budget, s.len()),
        Value::Array(a) => a.iter().try_for_each(|x| {
            spend(budget, 8)?;
            json_size(x, budget)
        }),
        Value::Object(o) => o.iter().try_for_each(|(k, x)| {
            spend(budget, 8 + k.len())?;
            json_size(x, budget)
        }),
        _ => Ok(()),
    }
}

fn rank(k: &K) -> u8 {
    match k {
        K::Null => 0,
        K::Bool(_) => 1,
        K::Num(_) => 2,
        K::Str(_) => 3,
        K::Arr(_) => 4,
        K::Obj(_) => 5,
    }
}

/// jaq's total order on values (null < booleans < numbers < strings < arrays < objects).
/// Spends fuel per visited node; never fails, but gives up with an arbitrary
/// answer once fuel is gone (callers check fuel afterwards).
pub(crate) fn cmp(cx: &Ctx, a: &Val, b: &Val) -> Ordering {
    cx.tick(1);
    if !cx.has_fuel() {
        return Ordering::Equal;
    }
    let (ka, kb) = (a.k(), b.k());
    let (ra, rb) = (rank(&ka), rank(&kb));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (ka, kb) {
        (K::Bool(x), K::Bool(y)) => x.cmp(&y),
        (K::Num(x), K::Num(y)) => num_cmp(x, y),
        (K::Str(x), K::Str(y)) => {
            cx.tick((x.len().min(y.len()) / 256) as u64);
            x.cmp(y)
        }
        (K::Arr(x), K::Arr(y)) => {
            for (l, r) in x.iter().zip(y.iter()) {
                let o = cmp(cx, &l, &r);
                if o.is_ne() {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (K::Obj(x), K::Obj(y)) => match (x.len(), y.len()) {
            (0, 0) => Ordering::Equal,
            (0, _) => Ordering::Less,
            (_, 0) => Ordering::Greater,
            _ => {
                let mut l: Vec<_> = x.iter().collect();
                let mut r: Vec<_> = y.iter().collect();
                cx.tick((l.len() + r.len()) as u64);
                // Keys are unique, so an unstable sort is exact; the key
                // borrows from the entry, which `sort_by_key` cannot express.
                l.sort_unstable_by(|p, q| str::cmp(&p.0, &q.0));
                r.sort_unstable_by(|p, q| str::cmp(&p.0, &q.0));
                let keys = l.iter().map(|p| &*p.0).cmp(r.iter().map(|p| &*p.0));
                keys.then_with(|| {
                    for ((_, lv), (_, rv)) in l.iter().zip(r.iter()) {
                        let o = cmp(cx, lv, rv);
                        if o.is_ne() {
                            return o;
                        }
                    }
                    Ordering::Equal
                })
            }
        },
        _ => Ordering::Equal,
    }
}

/// jaq's equality (`1 == 1.0`, objects regardless of key order).
/// Like [`cmp`], gives up once fuel is gone.
pub(crate) fn eq(cx: &Ctx, a: &Val, b: &Val) -> bool {
    cx.tick(1);
    if !cx.has_fuel() {
        return false;
    }
    match (a.k(), b.k()) {
        (K::Null, K::Null) => true,
        (K::Bool(x), K::Bool(y)) => x == y,
        (K::Num(x), K::Num(y)) => num_eq(x, y),
        (K::Str(x), K::Str(y)) => x == y,
        (K::Arr(x), K::Arr(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(l, r)| eq(cx, &l, &r))
        }
        (K::Obj(x), K::Obj(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, l)| y.get(&k).is_some_and(|r| eq(cx, &l, &r)))
        }
        _ => false,
    }
}

/// Writes `v` as compact JSON the way jaq prints values (`tojson`, `tostring`,
/// string interpolation and error messages). Fails when `buf` exceeds `max` bytes.
pub(crate) fn write_json(buf: &mut String, v: &Val, max: usize) -> Result<(), ()> {
    if buf.len() > max {
        return Err(());
    }
    match v.k() {
        K::Null => buf.push_str("null"),
        K::Bool(b) => buf.push_str(if b { "true" } else { "false" }),
        K::Num(n) => write_num(buf, n),
        K::Str(s) => write_str(buf, s),
        K::Arr(a) => {
            buf.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    buf.push(',');
                }
                write_json(buf, &x, max)?;
            }
            buf.push(']');
        }
        K::Obj(o) => {
            buf.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    buf.push(',');
                }
                write_str(buf, &k);
                buf.push(':');
                write_json(buf, &x, max)?;
            }
            buf.push('}');
        }
    }
    if buf.len() > max { Err(()) } else { Ok(()) }
}

/// Writes a JSON value the way jaq would print it.
pub(crate) fn write_value(buf: &mut String, v: &Value) {
    // Without a limit this cannot fail.
    let _ = write_json(buf, &Val::J(v), usize::MAX);
}

pub(crate) fn write_num(buf: &mut String, n: N) {
    match n {
        N::I(i) => {
            let _ = write!(buf, "{i}");
        }
        N::U(u) => {
            let _ = write!(buf, "{u}");
        }
        N::F(f) if f.is_nan() => buf.push_str("NaN"),
        N::F(f) if f.is_infinite() => buf.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
        // jaq prints floats with ryu (serde_json's own formatting differs).
        N::F(f) => buf.push_str(ryu::Buffer::new().format_finite(f)),
    }
}

/// Escapes like jaq: named escapes for `\b \f \t \n \r \\ \"`, `\u00XX` for
/// the other control characters and DEL, everything else verbatim.
pub(crate) fn write_str(buf: &mut String, s: &str) {
    buf.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\t' => Some("\\t"),
            '\r' => Some("\\r"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => Some(""),
            _ => None,
        };
        if let Some(esc) = esc {
            buf.push_str(&s[start..i]);
            if esc.is_empty() {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            } else {
                buf.push_str(esc);
            }
            start = i + c.len_utf8();
        }
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// JSON text of `v` for error messages and `tojson`, within the string limit.
pub(crate) fn show<'a>(cx: &Ctx, v: &Val) -> R<'a, String> {
    let mut buf = String::new();
    write_json(&mut buf, v, cx.max_bytes).map_err(|()| Stop::TooLarge)?;
    cx.alloc_str(buf.len())?;
    Ok(buf)
}

/// A jq error whose value is the string `msg`.
pub(crate) fn err_msg<'a>(cx: &Ctx, msg: String) -> Stop<'a> {
    match cx.alloc_str(msg.len()) {
        Ok(()) => Stop::Err(Val::Str(Rc::from(msg))),
        Err(e) => e,
    }
}

/// jaq's "cannot use X as TYPE" error.
pub(crate) fn err_typ<'a>(cx: &Ctx, v: &Val, typ: &str) -> Stop<'a> {
    match show(cx, v) {
        Ok(s) => err_msg(cx, format!("cannot use {s} as {typ}")),
        Err(e) => e,
    }
}

/// jaq's "cannot index X with Y" error.
pub(crate) fn err_index<'a>(cx: &Ctx, v: &Val, i: &Val) -> Stop<'a> {
    match (show(cx, v), show(cx, i)) {
        (Ok(v), Ok(i)) => err_msg(cx, format!("cannot index {v} with {i}")),
        (Err(e), _) | (_, Err(e)) => e,
    }
}

/// jaq's "cannot calculate X op Y" error.
pub(crate) fn err_math<'a>(cx: &Ctx, l: &Val, op: Math, r: &Val) -> Stop<'a> {
    match (show(cx, l), show(cx, r)) {
        (Ok(l), Ok(r)) => err_msg(cx, format!("cannot calculate {l} {} {r}", op.as_str())),
        (Err(e), _) | (_, Err(e)) => e,
    }
}

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Math {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl Math {
    fn as_str(self) -> &'static str {
        match self {
            Math::Add => "+",
            Math::Sub => "-",
            Math::Mul => "*",
            Math::Div => "/",
            Math::Rem => "%",
        }
    }
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

pub(crate) fn compare<'a>(cx: &Ctx, op: CmpOp, l: &Val, r: &Val) -> Val<'a> {
    Val::Bool(match op {
        CmpOp::Eq => eq(cx, l, r),
        CmpOp::Ne => !eq(cx, l, r),
        CmpOp::Lt => cmp(cx, l, r).is_lt(),
        CmpOp::Le => cmp(cx, l, r).is_le(),
        CmpOp::Gt => cmp(cx, l, r).is_gt(),
        CmpOp::Ge => cmp(cx, l, r).is_ge(),
    })
}

fn num_math(op: Math, a: N, b: N) -> Option<N> {
    if op == Math::Div {
        return N::from_f64(a.f64() / b.f64());
    }
    match (a.int(), b.int()) {
        (Some(x), Some(y)) => N::from_int(match op {
            Math::Add => x.checked_add(y)?,
            Math::Sub => x.checked_sub(y)?,
            Math::Mul => x.checked_mul(y)?,
            // `y != 0` is checked by the caller, as in jaq.
            _ => x.checked_rem(y)?,
        }),
        _ => {
            let (x, y) = (a.f64(), b.f64());
            N::from_f64(match op {
                Math::Add => x + y,
                Math::Sub => x - y,
                Math::Mul => x * y,
                _ => x % y,
            })
        }
    }
}

/// `l op r` with jaq's semantics.
pub(crate) fn math<'a>(cx: &Ctx, op: Math, l: Val<'a>, r: Val<'a>) -> R<'a, Val<'a>> {
    let (kl, kr) = (l.k(), r.k());
    let num = |x, y| num_math(op, x, y).map(Val::Num).ok_or(Stop::Fallback);
    match (op, kl, kr) {
        (Math::Add, K::Null, _) => Ok(r),
        (Math::Add, _, K::Null) => Ok(l),
        (Math::Rem, K::Num(x), K::Num(y)) if x.int().is_some() && y.int() == Some(0) => {
            Err(err_math(cx, &l, op, &r))
        }
        (_, K::Num(x), K::Num(y)) => num(x, y),
        (Math::Add, K::Str(x), K::Str(y)) => {
            cx.alloc_str(x.len() + y.len())?;
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(x);
            s.push_str(y);
            Ok(Val::Str(Rc::from(s)))
        }
        (Math::Add, K::Arr(x), K::Arr(y)) => {
            let n = x.len() + y.len();
            cx.fuel(n as u64)?;
            cx.alloc(n * ELEM_BYTES)?;
            let mut v = Vec::with_capacity(n);
            v.extend(x.iter());
            v.extend(y.iter());
            Ok(Val::arr(v))
        }
        (Math::Add, K::Obj(x), K::Obj(y)) => {
            let n = x.len() + y.len();
            cx.fuel(n as u64)?;
            cx.alloc(n * ELEM_BYTES)?;
            let mut m = x.to_map();
            m.extend(y.iter());
            Ok(Val::Obj(Rc::new(m)))
        }
        (Math::Sub, K::Arr(x), K::Arr(y)) => {
            // Like jaq's BTreeSet lookup, membership uses the total order.
            cx.fuel((x.len() + y.len()) as u64)?;
            let mut rs = y.to_vec();
            rs.sort_by(|p, q| cmp(cx, p, q));
            let keep: Vec<_> = x
                .iter()
                .filter(|e| rs.binary_search_by(|p| cmp(cx, p, e)).is_err())
                .collect();
            cx.check()?;
            cx.alloc(keep.len() * ELEM_BYTES)?;
            Ok(Val::arr(keep))
        }
        (Math::Mul, K::Str(s), K::Num(n)) | (Math::Mul, K::Num(n), K::Str(s)) => {
            let Some(i) = n.int() else {
                return Err(err_math(cx, &l, op, &r));
            };
            if i <= 0 {
                return Ok(Val::Null);
            }
            // jaq saturates big repeat counts to isize::MAX; either way the
            // size check below refuses before anything is allocated.
            let len = usize::try_from(i)
                .ok()
                .and_then(|i| s.len().checked_mul(i))
                .ok_or(Stop::TooLarge)?;
            cx.alloc_str(len)?;
            Ok(Val::Str(Rc::from(s.repeat(len / s.len().max(1)))))
        }
        (Math::Mul, K::Obj(x), K::Obj(y)) => {
            let mut m = x.to_map();
            merge(cx, &mut m, y)?;
            Ok(Val::Obj(Rc::new(m)))
        }
        (Math::Div, K::Str(x), K::Str(y)) => split_str(cx, x, y),
        _ => Err(err_math(cx, &l, op, &r)),
    }
}

/// jaq's deep object merge (`*`).
fn merge<'a>(cx: &Ctx, l: &mut ObjMap<'a>, r: O<'_, 'a>) -> R<'a> {
    cx.fuel(r.len() as u64 + 1)?;
    cx.alloc(r.len() * ELEM_BYTES)?;
    for (k, v) in r.iter() {
        let sub = match (l.get(&*k).map(Val::k), v.k()) {
            (Some(K::Obj(lo)), K::Obj(ro)) => {
                let mut m = lo.to_map();
                merge(cx, &mut m, ro)?;
                Some(m)
            }
            _ => None,
        };
        let new = match sub {
            Some(m) => Val::Obj(Rc::new(m)),
            None => v,
        };
        l.insert(k, new);
    }
    Ok(())
}

/// `"a,b" / ","` as in jaq: no parts for an empty string, characters for an
/// empty separator.
pub(crate) fn split_str<'a>(cx: &Ctx, s: &str, sep: &str) -> R<'a, Val<'a>> {
    let parts: Vec<&str> = if s.is_empty() {
        Vec::new()
    } else if sep.is_empty() {
        s.char_indices()
            .map(|(i, c)| &s[i..i + c.len_utf8()])
            .collect()
    } else {
        s.split(sep).collect()
    };
    cx.fuel(parts.len() as u64)?;
    cx.alloc(s.len() + parts.len() * (ELEM_BYTES + 16))?;
    Ok(Val::arr(parts.into_iter().map(Val::str).collect()))
}

/// `-v`.
pub(crate) fn neg<'a>(cx: &Ctx, v: Val<'a>) -> R<'a, Val<'a>> {
    match v.k() {
        K::Num(N::F(f)) => Ok(Val::Num(N::F(-f))),
        K::Num(n) => n.int().and_then(|i| Val::int(-i)).ok_or(Stop::Fallback),
        _ => Err(err_typ(cx, &v, "number")),
    }
}

/// Absolute index into a sequence of `len` elements, as jaq's `abs_index`.
fn abs_index(i: i128, len: usize) -> Option<usize> {
    let len = len as i128;
    let j = if i >= 0 { i } else { len + i };
    (0 <= j && j < len).then_some(j as usize)
}

/// `v[i]` as jaq's `Val::index`.
pub(crate) fn index<'a>(cx: &Ctx, v: &Val<'a>, i: &Val<'a>) -> R<'a, Val<'a>> {
    match (v.k(), i.k()) {
        (K::Null, _) => Ok(Val::Null),
        (K::Obj(o), K::Str(k)) => Ok(o.get(k).unwrap_or(Val::Null)),
        // jaq allows non-string keys; a JSON object can never contain them.
        (K::Obj(_), _) => Ok(Val::Null),
        (K::Arr(a), K::Num(n)) if n.int().is_some() => Ok(n
            .int()
            .and_then(|i| abs_index(i, a.len()))
            .map_or(Val::Null, |i| a.get(i))),
        (K::Arr(a), K::Arr(y)) => indices_arr(cx, a, y),
        // Slicing with a {start, end} object: rare enough for the sandbox.
        (K::Arr(_) | K::Str(_), K::Obj(_)) => Err(Stop::Fallback),
        _ => Err(err_index(cx, v, i)),
    }
}

/// Positions of the sub-array `y` in `x` (as jaq's `indices` on arrays).
pub(crate) fn indices_arr<'a>(cx: &Ctx, x: A<'_, 'a>, y: A<'_, 'a>) -> R<'a, Val<'a>> {
    if y.len() == 0 {
        return Ok(Val::arr(Vec::new()));
    }
    let (x, y) = (x.to_vec(), y.to_vec());
    cx.fuel((x.len() * y.len()) as u64 / 4 + 1)?;
    let out: Vec<_> = x
        .windows(y.len())
        .enumerate()
        .filter(|(_, w)| w.iter().zip(&y).all(|(a, b)| eq(cx, a, b)))
        .map(|(i, _)| Val::usize(i))
        .collect();
    cx.check()?;
    cx.alloc(out.len() * ELEM_BYTES)?;
    Ok(Val::arr(out))
}

/// A range bound: `None` for absent or `null`, else an integer.
fn bound<'a>(cx: &Ctx, b: Option<&Val<'a>>) -> R<'a, Option<i128>> {
    match b {
        None => Ok(None),
        Some(b) => match b.k() {
            K::Null => Ok(None),
            K::Num(n) if n.int().is_some() => Ok(n.int()),
            _ => Err(err_typ(cx, b, "integer")),
        },
    }
}

/// jaq's `abs_bound`: absolutise and clip to `0..=len`.
fn abs_bound(i: Option<i128>, len: usize, default: usize) -> usize {
    match i {
        None => default,
        Some(i) if i >= 0 => (i as u128).min(len as u128) as usize,
        Some(i) => (len as i128 + i).max(0) as usize,
    }
}

/// `v[from:upto]` as jaq's `Val::range`.
pub(crate) fn range<'a>(
    cx: &Ctx,
    v: &Val<'a>,
    from: Option<&Val<'a>>,
    upto: Option<&Val<'a>>,
) -> R<'a, Val<'a>> {
    match v.k() {
        K::Arr(a) => {
            let (f, u) = (bound(cx, from)?, bound(cx, upto)?);
            let len = a.len();
            let skip = abs_bound(f, len, 0);
            let take = abs_bound(u, len, len).saturating_sub(skip);
            cx.fuel(take as u64)?;
            cx.alloc(take * ELEM_BYTES)?;
            Ok(Val::arr((skip..skip + take).map(|i| a.get(i)).collect()))
        }
        K::Str(s) => {
            let (f, u) = (bound(cx, from)?, bound(cx, upto)?);
            // jaq counts string positions in characters.
            let byte = |i: i128| -> usize {
                if i >= 0 {
                    s.char_indices().nth(i as usize).map_or(s.len(), |p| p.0)
                } else {
                    let back = (-i) as usize;
                    s.char_indices().nth_back(back - 1).map_or(0, |p| p.0)
                }
            };
            cx.fuel(1 + (s.len() / 64) as u64)?;
            let fb = f.map_or(0, byte);
            let ub = u.map_or(s.len(), byte);
            let sub = if ub > fb { &s[fb..ub] } else { "" };
            cx.alloc_str(sub.len())?;
            Ok(Val::str(sub))
        }
        _ => Err(err_typ(cx, v, "rangeable (array or string)")),
    }
}

/// Calls `f` on each child of `v` (`.[]`), or fails for non-iterables.
pub(crate) fn each<'a>(cx: &Ctx, v: &Val<'a>, f: &mut dyn FnMut(Val<'a>) -> R<'a>) -> R<'a> {
    match v.k() {
        K::Arr(a) => a.iter().try_for_each(f),
        K::Obj(o) => o.iter().try_for_each(|(_, x)| f(x)),
        _ => Err(err_typ(cx, v, "iterable (array or object)")),
    }
}
