//! Randomized differential testing: random expressions from the fast subset
//! must give the same result on the fast path and in jaq.
//! `WEFT_EXPR_FUZZ_ITERS` sets the number of expressions (default 1500).
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use weft_expr::{EvalError, Expr, Limits, eval_jaq};

/// A small deterministic PRNG (xorshift64*), so failures are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'t>(&mut self, xs: &[&'t str]) -> &'t str {
        xs[self.below(xs.len())]
    }
}

const LEAVES: &[&str] = &[
    ".",
    ".a",
    ".b",
    ".[0]",
    ".[-1]",
    ".[]",
    ".[]?",
    ".a.b",
    ".a?",
    ".[1:]",
    ".[:-1]",
    "1",
    "0",
    "-2",
    "1.5",
    "0.5",
    "3",
    r#""a""#,
    r#""b,c""#,
    r#""""#,
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[1,2]",
    r#"{"a":1}"#,
    "empty",
    "$x",
    "length",
    "keys",
    "type",
    "tostring",
    "tojson",
    "not",
    "add",
    "sort",
    "reverse",
    "first",
    "last",
    "min",
    "max",
    "unique",
    "floor",
    "abs",
    "values",
    "to_entries",
    "ascii_downcase",
    "numbers",
    "strings",
    "arrays",
    "objects",
    "flatten",
    "keys_unsorted",
    "any",
    "all",
    "tonumber",
    "fromjson",
    ".[1.5]",
    ".[.a]",
    r#"."a""#,
    "$x.a",
    "$x[]",
    ".[]?.a?",
    "(.a?, .b?)",
    r#""é😀""#,
    "-0",
    "9007199254740993",
    "0.0025",
    ".[2:4]",
    ".[-2:]",
    "utf8bytelength",
    "ceil",
    "round",
    "join(\"-\")",
    "split(\",\")",
    "trim",
    "to_entries",
    "from_entries",
    "tojson | fromjson",
    "flatten",
    "isempty(.[])",
    "[.[]?] | sort",
    "group_by(.)",
    "unique_by(type)",
    "min_by(length)",
    "has(0)",
    "has(\"a\")",
    "indices(1)",
    "ascii_upcase",
    "ltrimstr(\"a\")",
    "endswith(\"c\")",
    "contains([1])",
    "type == \"number\"",
];

const UNARY: &[&str] = &[
    "[{}]",
    "{a: {}}",
    "{({}): 1}",
    "{a: {}, b: 2}",
    "-({})",
    "({})?",
    "try {} catch .",
    "select({})",
    "map({})",
    "map_values({})",
    "first({})",
    "last({})",
    "isempty({})",
    "any({})",
    "all({})",
    "has({})",
    "contains({})",
    "startswith({})",
    "ltrimstr({})",
    "split({})",
    "join({})",
    "index({})",
    "indices({})",
    "sort_by({})",
    "group_by({})",
    "min_by({})",
    "max_by({})",
    "unique_by({})",
    "add({})",
    "\"<\\({})>\"",
    "[{}] | length",
    "({}) as $x | $x",
    "{$x}",
    "if {} then 1 else 2 end",
    "with_entries({})",
    "inside({})",
    "{a: {}} | .a",
    "({})[]?",
    "[({})[]]",
    "({}).a",
    "({})?.b",
    "[.[] | {}]",
    "try ({}) catch [.]",
    "first(.[] | {})",
    "last(.[] | {})",
    "\"x\" * ({})",
    "{(tostring): {}}",
    "[{}] | sort_by(.)",
    "[{}] | add",
    "map_values(try {} catch 0)",
    "({}) // empty",
    "[.[]?]? // {}",
    "({} | not)",
    "[{}] | .[1:]",
    "({}) as $y | [$x, $y]",
    "[({})?]",
    "{a: ({})} | has(\"a\")",
];

const BINARY: &[&str] = &[
    "{} | {}",
    "{}, {}",
    "{} + {}",
    "{} - {}",
    "{} * {}",
    "{} / {}",
    "{} % {}",
    "{} == {}",
    "{} != {}",
    "{} < {}",
    "{} >= {}",
    "{} and {}",
    "{} or {}",
    "{} // {}",
    "if {} then {} else 0 end",
    "try {} catch {}",
    "{} as $x | {}",
    "[{}, {}]",
    "{a: {}, b: {}}",
    "{({}): {}}",
    "\"\\({})-\\({})\"",
    "any({}; {})",
    "all({}; {})",
    "({})[{}]",
    ".[{}:{}]",
    "[{}] + [{}]",
    "{a: {}} + {b: {}}",
    "{a: {}} * {a: {}}",
    "({}) as $a | {} | [$a]",
    "if {} then {} end",
    "({}) // ({}) // 0",
    "[({}), ({})] | sort",
    "try ({}) catch ({})",
    "({}) | try ({}) catch .",
    "[{}] | contains([{}])",
    "[{}] - [{}]",
    "first({}), last({})",
    "{(\"k\", \"j\"): {}, z: {}}",
    "[{}] | indices([{}])",
    "(try {} catch .) | {}",
];

fn generate(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 || rng.below(10) < 3 {
        return rng.pick(LEAVES).to_string();
    }
    if rng.below(2) == 0 {
        let t = rng.pick(UNARY);
        t.replacen("{}", &format!("({})", generate(rng, depth - 1)), 1)
    } else {
        let t = rng.pick(BINARY);
        let a = format!("({})", generate(rng, depth - 1));
        let b = format!("({})", generate(rng, depth - 1));
        t.replacen("{}", &a, 1).replacen("{}", &b, 1)
    }
}

const INPUTS: &[&str] = &[
    "null",
    "1",
    "-3.5",
    r#""a,b""#,
    "[1, 2, 3]",
    r#"[3, "x", null, [1], {"a": 1}]"#,
    r#"{"a": {"b": 2}, "b": [1, 2]}"#,
    r#"{"a": 1, "b": "xy", "c": null}"#,
    r#"[{"a": 1, "b": 2}, {"a": 0}]"#,
    r#"["a", "b,c", ""]"#,
    r#"{"a": [1, 1.0, "1"], "b": {"c": [null]}, "é": "ü😀"}"#,
    r#"[[1, [2]], [], {"a": []}]"#,
    "[0.1, 2.5, -7, 1e100, 9007199254740993]",
];

#[test]
fn random_expressions_agree() {
    let iters: usize = std::env::var("WEFT_EXPR_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = std::env::var("WEFT_EXPR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_ef01);
    let mut rng = Rng(seed);
    let limits = Limits {
        fuel: 20_000,
        max_output_bytes: 1 << 20,
    };
    let mut failures = Vec::new();
    let mut compared = 0;
    let (mut fallbacks, mut limited, mut errors) = (0, 0, 0);
    for _ in 0..iters {
        let src = format!(". as $x | {}", generate(&mut rng, 3));
        let input: Value = serde_json::from_str(INPUTS[rng.below(INPUTS.len())]).unwrap();
        let expr = match Expr::compile(&src) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("`{src}` does not compile: {e}"));
                continue;
            }
        };
        if !expr.is_fast() {
            failures.push(format!("`{src}` is not fast"));
            continue;
        }
        let fast = match expr.eval_fast(&input, &limits) {
            None => {
                fallbacks += 1;
                continue;
            }
            // Resource limits are ours, not jaq's.
            Some(Err(EvalError::FuelExhausted { .. } | EvalError::OutputTooLarge { .. })) => {
                limited += 1;
                continue;
            }
            Some(r) => r,
        };
        let jaq = eval_jaq(&src, &input);
        compared += 1;
        errors += usize::from(fast.is_err());
        let same = match (&fast, &jaq) {
            (Ok(a), Ok(b)) => {
                serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap()
            }
            (Err(EvalError::Runtime(a)), Err(EvalError::Runtime(b))) => a == b,
            _ => false,
        };
        if !same {
            failures.push(format!(
                "`{src}` on {input}:\n  fast {fast:?}\n  jaq  {jaq:?}"
            ));
        }
    }
    eprintln!("compared {compared} ({errors} errors), {fallbacks} fell back, {limited} hit limits");
    assert!(
        failures.is_empty(),
        "{} of {compared} differ:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
}
