//! Differential tests: the fast path must agree with full jaq on everything it
//! accepts (same outputs, or the same error).
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use weft_expr::{EvalError, Expr, Limits, eval_jaq};

/// Checks that `filter` is fast and that the fast path and jaq agree on `input`.
fn try_check(filter: &str, input: &str) -> Result<(), String> {
    let input: Value =
        serde_json::from_str(input).map_err(|e| format!("bad input {input}: {e}"))?;
    let expr = Expr::compile(filter).map_err(|e| format!("`{filter}`: {e}"))?;
    if !expr.is_fast() {
        return Err(format!("`{filter}` should run on the fast path"));
    }
    let fast = expr
        .eval_fast(&input, &Limits::default())
        .ok_or_else(|| format!("`{filter}` on {input} unexpectedly needs the sandbox"))?;
    let jaq = eval_jaq(filter, &input);
    match (&fast, &jaq) {
        (Ok(a), Ok(b)) => {
            // Compare the text too: it shows integer/float and key order.
            let (ta, tb) = (
                serde_json::to_string(a).unwrap(),
                serde_json::to_string(b).unwrap(),
            );
            if a != b || ta != tb {
                return Err(format!("`{filter}` on {input}: fast {ta} but jaq {tb}"));
            }
        }
        (Err(EvalError::Runtime(a)), Err(EvalError::Runtime(b))) if a == b => {}
        _ => {
            return Err(format!(
                "`{filter}` on {input}: fast {fast:?} but jaq {jaq:?}"
            ));
        }
    }
    Ok(())
}

/// Asserts that `filter` is fast but falls back to the sandbox on `input`,
/// and that jaq itself handles it.
fn check_fallback(filter: &str, input: &str) {
    let input: Value = serde_json::from_str(input).unwrap();
    let expr = Expr::compile(filter).unwrap();
    assert!(expr.is_fast(), "`{filter}` should be fast");
    assert!(
        expr.eval_fast(&input, &Limits::default()).is_none(),
        "`{filter}` on {input} should fall back to the sandbox"
    );
    let _ = eval_jaq(filter, &input);
}

const N: &str = "null";

/// (filter, input) pairs covering the fast subset.
const CASES: &[(&str, &str)] = &[
    // Identity, literals, paths.
    (".", r#"{"a":1,"b":[1,2]}"#),
    (".a", r#"{"a":1}"#),
    (".a.b", r#"{"a":{"b":"x"}}"#),
    (".a.b", r#"{"a":null}"#),
    (".a.b", r#"{"a":1}"#),
    (".a", "5"),
    (".a", r#""s""#),
    (".a", "[1]"),
    (".a", N),
    (r#"."a b""#, r#"{"a b":1}"#),
    (r#"."a"."b""#, r#"{"a":{"b":2}}"#),
    (r#".["a"]"#, r#"{"a":1}"#),
    (r#".["a"]"#, "[1]"),
    (".[0]", "[1,2]"),
    (".[-1]", "[1,2]"),
    (".[-3]", "[1,2]"),
    (".[5]", "[1,2]"),
    (".[0]", r#"{"a":1}"#),
    (".[0]", r#""abc""#),
    (".[0]", N),
    (".[1.5]", "[1,2]"),
    (".[1.0]", "[1,2]"),
    (".[.i]", r#"{"i":"i"}"#),
    (".a[.i]", r#"{"i":"x","a":{"x":7}}"#),
    (".[(0,1)]", "[5,6]"),
    (r#".["a","b"]"#, r#"{"a":1,"b":2}"#),
    (".[.a]", r#"{"a":[1]}"#),
    (".[[1,2]]", "[0,1,2,1,2]"),
    (".[]", "[1,2,3]"),
    (".[]", r#"{"b":1,"a":2}"#),
    (".[]", N),
    (".[]", "5"),
    (".[]?", "5"),
    ("[.[]?]", r#""x""#),
    ("[.[].a?]", r#"[1,{"a":2},null]"#),
    ("[.[]?.a]", r#"[1,{"a":2}]"#),
    (".a?", "1"),
    (".a?.b", r#"{"a":1}"#),
    (".a.b?", r#"{"a":[1]}"#),
    ("[.[][]]", "[[1,2],[3]]"),
    ("[.[][]]", "[[1],2]"),
    (".[2:5]", "[0,1,2,3,4,5,6]"),
    (".[2:]", "[0,1,2,3]"),
    (".[:2]", "[0,1,2,3]"),
    (".[-2:]", "[1,2,3]"),
    (".[:-1]", "[1,2,3]"),
    (".[-5:2]", "[1,2,3]"),
    (".[2:1]", "[1,2,3]"),
    (".[1:null]", "[1,2,3]"),
    (".[null:2]", "[1,2,3]"),
    (".[:1.5]", "[1,2,3]"),
    (".[1:3]", r#""aé😀b""#),
    (".[-2:]", r#""héllo""#),
    (".[5:]", r#""abc""#),
    (".[2:5]", N),
    (".[1:2]", r#"{"a":1}"#),
    (".[.a:.b]", r#"[0,1,2,3]"#),
    (".[1:(2,3)]", "[0,1,2,3]"),
    ("[.[] | .x]", r#"[{"x":1},{"x":2}]"#),
    ("(.a, .b).c", r#"{"a":{"c":1},"b":{"c":2}}"#),
    // Literals.
    ("1", N),
    ("-1", N),
    ("1.5", N),
    ("-0", N),
    ("-0.0", N),
    ("0.1", N),
    ("3.14159", N),
    ("18446744073709551615", N),
    (r#""a\tb\u00e9\n""#, N),
    ("null, true, false", N),
    ("[]", N),
    ("{}", N),
    ("[1, [2], {}]", N),
    // Arithmetic.
    ("3 * 2", N),
    ("1.5 * 2", N),
    ("7 / 2", N),
    ("4 / 2", N),
    ("1 / 3", N),
    ("10 / 4", N),
    ("2 / 0.5", N),
    ("5 % 2", N),
    ("-5 % 3", N),
    ("5 % -2", N),
    ("-5 % -2", N),
    ("5 % 0", N),
    ("5.5 % 2", N),
    ("5 % 2.5", N),
    ("1 % 0.4", N),
    ("0.1 + 0.2", N),
    ("1e17 + 1", N),
    ("100 * 1.1", N),
    ("9223372036854775807 + 1", N),
    ("-9223372036854775807 - 1", N),
    ("9223372036854775807 % -1", N),
    (". + 1", "9223372036854775807"),
    (". - 1", "18446744073709551615"),
    (". % 2", "18446744073709551615"),
    (". / 2", "18446744073709551615"),
    (". + 0.5", "18446744073709551615"),
    (". * 2", "4611686018427387904"),
    (".a + .b", r#"{"a":1,"b":2.5}"#),
    (".a - .b", r#"{"a":1.5,"b":1}"#),
    ("null + 1", N),
    ("1 + null", N),
    ("null + null", N),
    ("null - null", N),
    ("{} + {}", N),
    (r#"{"a":1} + {"b":2, "a":3}"#, N),
    (r#"{"a":1} + null"#, N),
    ("[1] + [2]", N),
    (r#""a" + "b""#, N),
    (r#""a" + 1"#, N),
    ("1 + true", N),
    (r#"1 - "a""#, N),
    ("[1,2,3,2] - [2]", N),
    ("[1,[2]] - [[2]]", N),
    ("[1, 1.0, 2] - [1]", N),
    ("[] - [1]", N),
    ("{} - {}", N),
    (r#""a,b" / ",""#, N),
    (r#""a,b,,c," / ",""#, N),
    (r#""abc" / """#, N),
    (r#""" / """#, N),
    (r#""abc" / 1"#, N),
    (r#""x" * 3"#, N),
    (r#"3 * "x""#, N),
    (r#""x" * 0"#, N),
    (r#""x" * -1"#, N),
    (r#""x" * 1.5"#, N),
    (r#""x" * 0.5"#, N),
    (r#""" * 5"#, N),
    (r#"{"a":{"b":1,"c":2}} * {"a":{"b":3},"d":4}"#, N),
    (r#"{"a":1} * {"a":{"b":2}}"#, N),
    ("[3] * 2", N),
    (r#""a" * {}"#, N),
    ("-(1, 2)", N),
    (r#"-"a""#, N),
    ("[-.[]]", "[1, -2.5, 0]"),
    ("-.", "-9223372036854775807"),
    ("(1,2) + (10,20)", N),
    ("(1,2) * (3,4) - (5,6)", N),
    ("empty + 1", N),
    ("1 + empty", N),
    // Comparisons and ordering.
    ("1 == 1.0", N),
    ("1.0 == 1", N),
    ("1 == 1.5", N),
    (r#""1" == 1"#, N),
    ("null == false", N),
    ("[1,2] == [1,2]", N),
    (r#"{"a":1,"b":2} == {"b":2,"a":1}"#, N),
    (r#"{"a":[1,{"b":null}]} == {"a":[1,{"b":null}]}"#, N),
    ("1 != 2", N),
    ("null < false", N),
    ("false < true", N),
    ("true < 0", N),
    (r#"1 < "a""#, N),
    (r#""b" < "a""#, N),
    (r#""B" < "a""#, N),
    (r#""é" > "z""#, N),
    ("[1] < [1, 0]", N),
    ("[2] > [1, 5]", N),
    (r#"{"a":1} < {"a":2}"#, N),
    (r#"{"a":2} < {"b":1}"#, N),
    (r#"{} < {"a":1}"#, N),
    ("1 < 1.5", N),
    ("1 <= 1.0", N),
    ("2 >= 3", N),
    (". == 9007199254740993", "9007199254740992.0"),
    ("(1,2) < (2,1)", N),
    ("[.[] | . > 1]", "[0, 1, 2, null]"),
    // Logic and alternatives.
    ("true and false", N),
    ("(true, false) and (true, false)", N),
    ("(true, false) or (true, false)", N),
    ("false and .a.b", r#"{"a":1}"#),
    ("true or .a.b", r#"{"a":1}"#),
    ("null or 0", N),
    ("1 and []", N),
    ("not", N),
    ("[.[] | not]", r#"[null, false, 0, "", [], {}]"#),
    (r#".a // "d""#, r#"{"a":false}"#),
    (r#".a // "d""#, r#"{"a":0}"#),
    (r#".a // "d""#, r#"{}"#),
    (r#"(.a, .b) // "d""#, r#"{"a":null,"b":2}"#),
    ("[.[] // 5]", "[null, false]"),
    (r#"[(.[] | select(. > 5)) // "none"]"#, "[1, 2]"),
    ("(null, 1, null, 2) // 3", N),
    ("empty // 2", N),
    ("empty // empty", N),
    (".a.b // 1", r#"{"a":5}"#),
    (".a // .b.c", r#"{"b":5}"#),
    // Conditionals.
    ("if . then 1 else 2 end", "true"),
    ("if . then 1 else 2 end", N),
    ("if . then 1 end", "false"),
    (
        "if .a then .b elif .c then .d else .e end",
        r#"{"c":1,"d":2,"e":3}"#,
    ),
    (
        "[.[] | if . then 1 elif . == null then 2 else 3 end]",
        "[true, null, false]",
    ),
    ("if empty then 1 else 2 end", N),
    ("if (true, false) then 1 else 2 end", N),
    ("if .a.b then 1 else 2 end", r#"{"a":3}"#),
    // try / catch.
    ("try .a catch .", "1"),
    ("try .a", "1"),
    ("(.a)?", "1"),
    ("[.[] | try .a catch .]", r#"[1, {"a":2}, "x"]"#),
    ("try (1, .a, 3)", "5"),
    ("[try (1, 2, .a, 3) catch 10]", "5"),
    ("try empty catch 1", N),
    ("(try .a catch .) + \"!\"", "1"),
    ("try (try .a catch (.b)) catch .", "1"),
    ("try (1 / .) catch .", r#""x""#),
    ("try (.a | .b) catch length", r#"{"a":"s"}"#),
    ("(try (1,2)) | . * 10", N),
    ("try ((1,2) | .a) catch \"caught\"", N),
    (
        "[(1,2) | try (if . == 2 then .a else . end) catch \"c\"]",
        N,
    ),
    ("first(try (1, .a) catch 5)", "3"),
    // Variables.
    (". as $x | [$x, .]", "5"),
    (r#""a" as $x | "b" as $y | [$x, $y, $x]"#, N),
    ("[(1,2) as $x | $x * 10]", N),
    ("[.[] as $x | $x + 1]", "[1,2]"),
    (".a as $v | {$v}", r#"{"a":1}"#),
    (". as $x | .a | . as $y | [$x.b, $y]", r#"{"a":1,"b":2}"#),
    ("[.[] as $x | .[] as $y | [$x, $y]]", "[1,2]"),
    (". as $x | $x.a[0]", r#"{"a":[9]}"#),
    ("(.a as $x | $x) + 1", r#"{"a":1}"#),
    // Arrays and objects.
    ("[.[] * 2]", "[1, 1.5]"),
    ("[.a, .b]", r#"{"a":1}"#),
    ("[empty]", N),
    ("[.[] | select(. > 1)]", "[1,2,3]"),
    ("{a: 1, b: .x}", r#"{"x":2}"#),
    ("{a}", r#"{"a":1}"#),
    ("{a, b}", r#"{"a":1}"#),
    (r#"{"a b"}"#, r#"{"a b":1}"#),
    ("{(.k): .v}", r#"{"k":"x","v":1}"#),
    ("{a: (1,2), b: (3,4)}", N),
    ("{(\"a\",\"b\"): (1,2)}", N),
    ("{a: 1, a: 2}", N),
    ("{b: 1, a: 2} | keys_unsorted", N),
    ("{a: empty, b: 1}", N),
    ("{a: .x.y, b: 1}", r#"{"x":1}"#),
    ("{a: 1, b: .x.y}", r#"{"x":1}"#),
    ("{a: (1, .x.y), b: 2}", r#"{"x":1}"#),
    ("{(.a): 1}", r#"{"a":"k"}"#),
    ("{if: 1, then: 2, end: 3}", N),
    ("{\"x\\(1+1)\": 3}", N),
    (
        "[.[] | {name, n: (.v + 1)}]",
        r#"[{"name":"a","v":1},{"name":"b","v":2}]"#,
    ),
    ("{a: {b: {c: .}}}", "1"),
    ("{a: [.[] | . * 2]}", "[1,2]"),
    ("{(.[]): 1}", r#"["a","b"]"#),
    // String interpolation.
    (r#""x\(1 + 2)y\("s")z\(null)""#, N),
    (r#""\(.)""#, r#"{"b":1,"a":[1,"x"]}"#),
    (r#""\(1,2)-\(3,4)""#, N),
    (r#""a\(.a)b""#, r#"{"a":1.5}"#),
    (r#""\(.a)""#, r#"{"a":"q\"uote"}"#),
    (r#""\(.[])""#, "[1, 2]"),
    (r#""\(empty)x""#, N),
    (r#""\(.a.b)""#, r#"{"a":1}"#),
    (r#""\("\("nested")")""#, N),
    // Builtins.
    ("length", r#"[1,2]"#),
    ("length", r#"{"a":1}"#),
    ("length", r#""héllo""#),
    ("length", N),
    ("length", "true"),
    ("length", "-5"),
    ("length", "-5.5"),
    ("length", "18446744073709551615"),
    ("utf8bytelength", r#""é""#),
    ("utf8bytelength", "1"),
    ("keys", r#"{"b":1,"a":2,"c":{}}"#),
    ("keys", "[5,6]"),
    ("keys", N),
    ("keys", r#""abc""#),
    ("keys_unsorted", r#"{"b":1,"a":2}"#),
    ("[.[] | keys]", r#"[{"b":1},[0]]"#),
    ("values", N),
    ("[.[] | values]", "[1, null, false]"),
    ("[.[] | nulls]", "[1, null]"),
    ("[.[] | numbers]", r#"[1, "a", null, 2.5]"#),
    ("[.[] | strings]", r#"[1, "a"]"#),
    ("[.[] | booleans]", "[true, 1, false]"),
    ("[.[] | arrays]", r#"[[], {}, 1]"#),
    ("[.[] | objects]", r#"[[], {}, 1]"#),
    ("[.[] | iterables]", r#"[[], {}, 1]"#),
    ("[.[] | scalars]", r#"[[], {}, 1, null]"#),
    (
        "[.[] | isnumber, isstring, isboolean, isarray, isobject]",
        r#"[1, "a"]"#,
    ),
    ("tostring", r#""a""#),
    (
        "[.[] | tostring]",
        r#"[1, 1.0, 1.5, "a", null, true, {"a":[1,"x\u007f"]}]"#,
    ),
    (
        "[.[] | tostring]",
        "[1e100, 1.5e-7, 123456789012, 0.1, -0.0, 1e-5, 1e16, 1e17, 1e21]",
    ),
    (
        "[.[] | tojson]",
        r#"[1e100, 1.5e-7, 3.0, "x", null, [1, {"b":2}]]"#,
    ),
    ("tojson", r#""a\u0000\u001f\u007f\b\f\n\r\t\"\\/é""#),
    ("tojson", r#"{"b":1,"a":2}"#),
    ("fromjson", r#""{\"a\":[1,2,{\"b\":null}],\"c\":\"x\"}""#),
    ("fromjson", r#""{\"b\":1,\"a\":2,\"b\":3}""#),
    (
        "fromjson",
        r#""[true, false, null, -5, 18446744073709551615]""#,
    ),
    ("fromjson", "1"),
    ("fromjson", N),
    ("tonumber", r#""12""#),
    ("tonumber", r#""-3""#),
    ("tonumber", r#""4.5""#),
    ("tonumber", r#""0.1""#),
    ("tonumber", r#""012""#),
    ("tonumber", r#""+5""#),
    ("tonumber", r#""-0""#),
    ("tonumber", "1"),
    ("tonumber", "1.5"),
    ("tonumber", N),
    ("tonumber", "[1]"),
    ("type", "1.5"),
    ("[.[] | type]", r#"[null, true, 1, "a", [], {}]"#),
    ("ascii_downcase", r#""ABCé""#),
    ("ascii_upcase", r#""aBc""#),
    ("ascii_downcase", "1"),
    ("[.[] | floor]", "[1.5, -1.5, 2, 1e19, -0.5, 9.3e18]"),
    ("[.[] | ceil]", "[1.5, -1.5, 2, -0.5]"),
    (
        "[.[] | round]",
        "[1.5, -1.5, 2.5, -2.5, 0.49999999999999994, 4503599627370497]",
    ),
    ("floor", r#""a""#),
    ("floor", N),
    ("round", "9223372036854775807"),
    ("[.[] | abs]", r#"[-1, 1.5, 0, -0.0, "x", [1]]"#),
    ("abs", N),
    ("to_entries", r#"{"a":1,"b":[2]}"#),
    ("to_entries", "[5,6]"),
    ("to_entries", N),
    ("from_entries", r#"[{"key":"a","value":1},{"key":"b"}]"#),
    (
        "from_entries",
        r#"[{"key":"a","value":1},{"key":"a","value":2}]"#,
    ),
    ("from_entries", r#"{"x":{"key":"k","value":1}}"#),
    ("from_entries", "[1]"),
    ("from_entries", "[[1]]"),
    ("from_entries", N),
    ("from_entries", "{}"),
    (
        "with_entries({key: (.value | tostring), value: .key})",
        r#"{"a":1,"b":2}"#,
    ),
    ("with_entries(select(.value > 1))", r#"{"a":1,"b":2}"#),
    ("with_entries(.)", r#"{"a":1,"b":null}"#),
    (
        "sort",
        r#"[3, 1, null, "b", "a", [2], [1, 2], {"b":1}, {"a":2}, true, false, 1.5]"#,
    ),
    (
        "sort",
        r#"[{"a":1}, {"a":1,"b":0}, {"b":0}, {}, {"b":1,"a":2}, {"a":2,"b":0}]"#,
    ),
    ("sort", "[1.0, 1, 0.5]"),
    ("sort", r#""abc""#),
    ("sort", N),
    ("sort_by(.a)", r#"[{"a":2},{"a":1},{"a":2,"b":1}]"#),
    (
        "sort_by(.a, .b)",
        r#"[{"a":2,"b":1},{"a":1,"b":2},{"a":1,"b":1}]"#,
    ),
    ("sort_by(-.)", "[1, 3, 2]"),
    ("sort_by(.a)", r#"[{"a":1}, 5]"#),
    // jaq never evaluates the key for fewer than two elements.
    ("sort_by(.a)", "[5]"),
    ("sort_by(.a.b)", "[]"),
    ("group_by(.a)", "[5]"),
    ("min_by(.a)", "[5]"),
    ("group_by(.a)", r#"[{"a":2},{"a":1},{"a":2,"b":1}]"#),
    ("group_by(. % 2)", "[1,2,3,4,5]"),
    ("group_by(.)", r#"[1, 1.0, 2]"#),
    ("unique", "[3, 1, 1.0, 2, 1, 3]"),
    ("unique", "[1.0, 1, 2]"),
    ("unique", "[]"),
    (r#"unique_by(length)"#, r#"["a","bb","c"]"#),
    ("min", "[3,1,2]"),
    ("max", "[3,1,2]"),
    ("min", "[]"),
    ("max", "[1, 1.0]"),
    ("min", "[1.0, 1]"),
    ("max", r#"["b","a"]"#),
    ("min", r#"{"a":1}"#),
    ("min_by(.a)", r#"[{"a":2},{"a":1},{"a":1,"b":1}]"#),
    ("max_by(.a)", r#"[{"a":2},{"a":1},{"a":2,"b":1}]"#),
    ("reverse", "[1,2,3]"),
    ("reverse", r#""abc""#),
    ("reverse", N),
    ("reverse", "[]"),
    ("add", "[1,2,3]"),
    ("add", "[]"),
    ("add", r#"{"a":1,"b":2}"#),
    ("add", r#"["a",null,"b"]"#),
    ("add", r#"[[1],[2],null,[3]]"#),
    ("add", r#"[{"a":1},{"b":2},{"a":3}]"#),
    ("add", r#"[1, [2]]"#),
    ("add", r#"["a", 1]"#),
    ("add", r#"[null, "a", "b"]"#),
    ("add", N),
    ("add(.[].a)", r#"[{"a":1},{"a":2}]"#),
    ("add(empty)", N),
    ("has(\"a\")", r#"{"a":null}"#),
    ("has(\"b\")", r#"{"a":1}"#),
    ("has(\"a\")", N),
    ("has(0)", "[1]"),
    ("has(-1)", "[1]"),
    ("has(1)", "[1]"),
    ("has(1)", r#"{"1":2}"#),
    ("has(\"a\")", r#""abc""#),
    ("has(0.5)", "[1]"),
    ("has([1])", "[1]"),
    ("has(\"a\", \"b\")", r#"{"a":1}"#),
    ("contains(\"b\")", r#""abc""#),
    ("contains([1])", "[1,2]"),
    ("contains([1], [4])", "[1,2,3]"),
    (r#"contains({"a":[1]})"#, r#"{"a":[1,2],"b":3}"#),
    (r#"contains({"a":"bar"})"#, r#"{"a":"foobar"}"#),
    (r#"contains([["a"]])"#, r#"[["ab"]]"#),
    (r#"contains("a")"#, "1"),
    ("contains(1)", "1"),
    ("contains(1.0)", "1"),
    ("contains(null)", N),
    ("inside([1,2,3])", "[1]"),
    (r#"in({"a":1})"#, r#""a""#),
    (r#"startswith("ab", "x")"#, r#""abc""#),
    (r#"endswith("bc")"#, r#""abc""#),
    (r#"startswith("a")"#, "1"),
    ("startswith(1)", r#""a""#),
    (r#"ltrimstr("a")"#, r#""abc""#),
    (r#"ltrimstr("x")"#, r#""abc""#),
    (r#"ltrimstr("")"#, r#""abc""#),
    (r#"rtrimstr("bc")"#, r#""abc""#),
    (r#"ltrimstr("a")"#, "1"),
    ("ltrimstr(1)", r#""a""#),
    (r#"ltrimstr("a")"#, N),
    (r#"ltrimstr("x", "a")"#, r#""abc""#),
    (r#"split(",")"#, r#""a,b,,c,""#),
    (r#"split("")"#, r#""abc""#),
    (r#"split(",")"#, r#""""#),
    (r#"split(", ")"#, r#""a, b, c""#),
    ("split(1)", r#""a""#),
    (r#"split(",")"#, "1"),
    (r#"split(",", "b")"#, r#""a,b""#),
    (r#"join(",")"#, r#"["a", 1, null, true, {"a":1}, [2]]"#),
    (r#"join(", ")"#, r#"["a","b"]"#),
    (r#"join(",")"#, "[]"),
    ("join(1)", r#"["a","b"]"#),
    ("join(1)", "[]"),
    ("join(1)", r#"["a"]"#),
    ("join(null)", r#"["a","b"]"#),
    (r#"join(",")"#, N),
    (r#"join(",")"#, r#""abc""#),
    (r#"join(",", ";")"#, r#"["a","b"]"#),
    (r#"index(",")"#, r#""a,b, c""#),
    (r#"rindex(",")"#, r#""a,b, c""#),
    (r#"index(",")"#, r#""abc""#),
    (r#"index("é")"#, r#""aéb""#),
    (r#"indices(",")"#, r#""a,b""#),
    (r#"indices("aa")"#, r#""aaaa""#),
    (r#"indices("")"#, r#""abc""#),
    ("indices(1)", "[0,1,2,1]"),
    ("indices([1,2])", "[0,1,2,1,2]"),
    ("indices([])", "[1]"),
    (r#"indices("a")"#, N),
    ("index(1)", "[0, 1, 1.0]"),
    ("trim, ltrim, rtrim", r#""  a b \n""#),
    ("trim", "1"),
    ("flatten", "[1, [2, [3, [4]]], [], {}]"),
    ("flatten", r#"{"a":1}"#),
    ("flatten", N),
    ("map(. + 1)", "[1,2]"),
    ("map(. + 1)", r#"{"a":1}"#),
    ("map(.)", N),
    ("map(.a)", r#"[{"a":1}, 2]"#),
    ("map(empty)", "[1,2]"),
    ("map(., .)", "[1,2]"),
    ("map_values(. + 1)", "[1,2]"),
    ("map_values(empty)", "[1,2]"),
    ("map_values(., .)", "[1,2]"),
    ("map_values(., .)", r#"{"a":1}"#),
    ("map_values(empty)", r#"{"a":1,"b":2}"#),
    ("map_values(. * 10)", r#"{"a":1,"b":2}"#),
    ("map_values(select(. > 1))", r#"{"a":1,"b":2}"#),
    ("map_values(.)", N),
    ("select(. > 1)", "2"),
    ("select(true, true)", N),
    ("select(.a)", r#"{"a":false}"#),
    ("first", "[]"),
    ("first", N),
    ("first", r#"{"a":1}"#),
    ("last", "[1,2]"),
    ("last", r#""ab""#),
    ("first(.[])", "[1,2]"),
    ("first(empty)", N),
    ("first(1, .a)", "5"),
    ("first(.a, 1)", "5"),
    ("last(1, 2, 3)", N),
    ("last(empty)", N),
    ("last(.[])", "[1, 2]"),
    ("last(1, .a)", "5"),
    ("[first(.[] | select(. > 1))]", "[1, 2, 3]"),
    ("isempty(empty)", N),
    ("isempty(.[])", "[]"),
    ("isempty(1, .a)", "5"),
    ("isempty(.a)", "5"),
    ("any", "[false, 1]"),
    ("any", "[]"),
    ("all", "[]"),
    ("all", "[true, null]"),
    ("any(. > 1)", "[1, 2]"),
    ("all(. > 0)", r#"{"a":1}"#),
    ("any", "5"),
    ("any(.[]; . > 5)", "[1, 2]"),
    ("all(.[]; . > 0)", "[1, 2]"),
    ("any(.a; .)", "5"),
    ("all(1, .a; . > 5)", "5"),
    ("any(1, .a; . > 0)", "5"),
    ("not", "false"),
    ("null, true, false | not", N),
    // Pipes, commas, composition.
    (".a | .b", r#"{"a":{"b":1}}"#),
    (
        ".[] | select(.ok) | .name",
        r#"[{"ok":true,"name":"a"},{"ok":false,"name":"b"}]"#,
    ),
    ("1, 2 | . * 10", N),
    ("(1, 2) | (., . + 1)", N),
    ("[.[] | . as $x | [$x, ($x | tostring)]]", "[1, 2]"),
    (
        "{title: .trigger.body.issue.title, n: (.steps.a.output.items | length)}",
        r#"{"trigger":{"body":{"issue":{"title":"Bug"}}},"steps":{"a":{"output":{"items":[1,2,3]}}}}"#,
    ),
    (
        ".steps.a.output.ok",
        r#"{"steps":{"a":{"output":{"ok":true}}}}"#,
    ),
    (
        "[.items[] | select(.price > 10) | {id, total: (.price * .qty)}]",
        r#"{"items":[{"id":1,"price":5,"qty":2},{"id":2,"price":20,"qty":3},{"id":3,"price":12.5,"qty":2}]}"#,
    ),
    (
        r#".users | map(select(.email | endswith("@example.com")) | .name | ascii_downcase)"#,
        r#"{"users":[{"name":"A","email":"a@example.com"},{"name":"B","email":"b@other.org"}]}"#,
    ),
    (r#"(.tags // []) | join(",")"#, r#"{"tags":["x","y"]}"#),
    (r#"(.tags // []) | join(",")"#, r#"{}"#),
    (r#".a as $a | .b | map(. + $a)"#, r#"{"a":10,"b":[1,2]}"#),
];

#[test]
fn differential() {
    let mut n = 0;
    let mut failures = Vec::new();
    for (f, i) in CASES {
        if let Err(e) = try_check(f, i) {
            failures.push(e);
        }
        n += 1;
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(n >= 150, "only {n} differential cases");
}

#[test]
fn falls_back_where_jaq_differs_from_json() {
    // Results jaq keeps as big integers, NaN/infinity or decimal text.
    check_fallback("9223372036854775807 * 9223372036854775807", N);
    check_fallback("1 / 0", N);
    check_fallback("0 / 0 | . == .", N);
    check_fallback(". % 0.0", "5");
    check_fallback("-.", "18446744073709551615");
    // (jaq itself panics on this one in debug builds: `isize::abs` overflows.)
    let e = Expr::compile("length").unwrap();
    assert!(e.eval_fast(&json!(i64::MIN), &Limits::default()).is_none());
    check_fallback("{(.a): 1}", r#"{"a":null}"#);
    check_fallback("{(1): 2}", N);
    check_fallback("{(null): 2} | length", N);
    check_fallback(r#"[{"key":1,"value":1}] | from_entries"#, N);
    check_fallback("tonumber", r#""1.50""#);
    check_fallback("tonumber", r#""1e2""#);
    check_fallback("tonumber", r#""abc""#);
    check_fallback("tonumber", r#"" 12 ""#);
    check_fallback("fromjson", r#""[1.5]""#);
    check_fallback("fromjson", r#""1 2""#);
    check_fallback("fromjson", r#""""#);
    check_fallback("fromjson", r#""NaN""#);
    check_fallback(r#"join(",")"#, r#"{"a":1}"#);
    check_fallback(".[{\"start\":1}]", "[1,2,3]");
    check_fallback("floor", "1e30");
}

/// Expressions that compile but must run in the sandbox.
#[test]
fn sandbox_only() {
    for src in [
        "def f: 1+f; f",
        "[range(1e9)]",
        "repeat(1)",
        "last(range(1e12))",
        ".. | numbers",
        "reduce .[] as $x (0; .+$x)",
        "foreach .[] as $x (0; .+$x)",
        "limit(2; .[])",
        "label $out | 1, break $out",
        ".a = 1",
        ".a |= 1",
        ".a += 1",
        "@base64",
        "@json \"x\\(.)\"",
        "test(\"a\")",
        "now",
        "error(\"x\")",
        "recurse",
        "path(.a)",
        "getpath([\"a\"])",
        ". as [$a, $b] | $a",
        ". as {a: $x} | $x",
        "1.50",
        "1e2",
        "100000000000000000000",
        "input_line_number? // 1",
        "splits(\",\")",
        "tostream? // 1",
        "infinite",
        "nan",
        "ascii_downcase as $x | $x | debug",
        "halt",
    ] {
        match Expr::compile(src) {
            Ok(e) => assert!(!e.is_fast(), "`{src}` must not be fast"),
            // A few are not defined by jaq at all; that is fine too.
            Err(err) => assert!(
                matches!(err, weft_expr::ExprError::UnknownFunction { .. }),
                "`{src}`: {err}"
            ),
        }
    }
    // These jaq-valid expressions compile and are sent to the sandbox.
    for src in [
        "def f: 1+f; f",
        "[range(1e9)]",
        "repeat(1)",
        "last(range(1e12))",
        ".. | numbers",
        "reduce .[] as $x (0; .+$x)",
    ] {
        let e = Expr::compile(src).unwrap();
        assert!(!e.is_fast());
        assert!(e.eval_fast(&json!(null), &Limits::default()).is_none());
    }
    // jaq itself runs the terminating ones.
    assert_eq!(
        eval_jaq("reduce .[] as $x (0; .+$x)", &json!([1, 2, 3])).unwrap(),
        vec![json!(6)]
    );
    assert_eq!(
        eval_jaq("[.. | numbers]", &json!([1, [2]])).unwrap(),
        vec![json!([1, 2])]
    );
}
