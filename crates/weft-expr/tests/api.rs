//! Tests of the public API: compile errors, limits, templates and helpers.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_expr::{
    EvalError, Expr, ExprError, JaqCache, Limits, TValue, TextPart, eval_jaq, single, to_text,
};

fn fast(src: &str, input: Value) -> Result<Vec<Value>, EvalError> {
    let e = Expr::compile(src).unwrap();
    assert!(e.is_fast(), "{src} should be fast");
    e.eval_fast(&input, &Limits::default()).unwrap()
}

#[test]
fn compile_errors() {
    let long = format!(".a{}", " ".repeat(70_000));
    assert_eq!(
        Expr::compile(&long).unwrap_err(),
        ExprError::TooLong { max: 65536 }
    );
    let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
    assert_eq!(
        Expr::compile(&deep).unwrap_err(),
        ExprError::TooDeep { max: 64 }
    );
    let ok_deep = format!("{}1{}", "[".repeat(64), "]".repeat(64));
    assert!(Expr::compile(&ok_deep).unwrap().is_fast());
    let chain = vec!["1"; 5000].join("+");
    assert!(matches!(
        Expr::compile(&chain).unwrap_err(),
        ExprError::TooComplex { .. }
    ));

    match Expr::compile(".a |").unwrap_err() {
        ExprError::Syntax { message } => {
            assert!(message.contains("expected term"), "{message}");
            assert!(message.contains("line 1, column 5"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        Expr::compile("{a:}").unwrap_err(),
        ExprError::Syntax { .. }
    ));
    assert!(matches!(
        Expr::compile("\"abc").unwrap_err(),
        ExprError::Syntax { .. }
    ));
    assert!(matches!(
        Expr::compile(".[").unwrap_err(),
        ExprError::Syntax { .. }
    ));
    assert_eq!(
        Expr::compile("foo(1)").unwrap_err(),
        ExprError::UnknownFunction {
            name: "foo".into(),
            arity: 1
        }
    );
    assert_eq!(
        Expr::compile("map(1; 2)").unwrap_err(),
        ExprError::UnknownFunction {
            name: "map".into(),
            arity: 2
        }
    );
    assert_eq!(
        Expr::compile(".a + $nope").unwrap_err(),
        ExprError::UndefinedVariable {
            name: "$nope".into()
        }
    );
    assert!(matches!(
        Expr::compile("$__loc__").unwrap_err(),
        ExprError::UndefinedVariable { .. }
    ));
    assert!(matches!(
        Expr::compile("$ENV").unwrap_err(),
        ExprError::UndefinedVariable { .. }
    ));
    assert!(matches!(
        Expr::compile("break $x").unwrap_err(),
        ExprError::Undefined { .. }
    ));
    assert!(matches!(
        Expr::compile("import \"a\" as $a; $a").unwrap_err(),
        ExprError::Unsupported { .. }
    ));
    assert!(matches!(
        Expr::compile("include \"a\"; 1").unwrap_err(),
        ExprError::Unsupported { .. }
    ));
    // The environment of the process is not available to expressions.
    assert_eq!(
        Expr::compile("env.HOME").unwrap_err(),
        ExprError::UnknownFunction {
            name: "env".into(),
            arity: 0
        }
    );
    assert!(matches!(
        eval_jaq("env", &json!(null)),
        Err(EvalError::Compile(_))
    ));
    // Every message says what failed and what to do.
    for e in [
        Expr::compile(".a |").unwrap_err(),
        Expr::compile("foo").unwrap_err(),
        Expr::compile("$x").unwrap_err(),
        Expr::compile(&deep).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(msg.contains(';'), "{msg}");
    }
    // Compiling a complex but valid expression on the big-stack thread.
    let big = vec!["1"; 1500].join("+");
    let e = Expr::compile(&big).unwrap();
    assert!(!e.is_fast());
    assert_eq!(eval_jaq(&big, &json!(null)).unwrap(), vec![json!(1500)]);
    let big_fast = format!("[{}]", vec![".a"; 60].join(","));
    assert!(Expr::compile(&big_fast).unwrap().is_fast());
}

#[test]
fn expr_is_send_sync_and_cheap() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Expr>();
    let e = Expr::compile(".a").unwrap();
    let e2 = e.clone();
    assert_eq!(e2.source(), ".a");
    let h = std::thread::spawn(move || e2.eval_fast(&json!({"a": 1}), &Limits::default()));
    assert_eq!(h.join().unwrap().unwrap().unwrap(), vec![json!(1)]);
}

#[test]
fn string_repetition_is_refused_before_allocating() {
    let t = Instant::now();
    let r = fast(r#""x" * 1000000000"#, json!(null));
    assert_eq!(
        r,
        Err(EvalError::OutputTooLarge {
            max: 16 * 1024 * 1024
        })
    );
    let r = fast(r#""abc" * 9223372036854775807"#, json!(null));
    assert!(matches!(r, Err(EvalError::OutputTooLarge { .. })));
    let r = fast(r#". * 18446744073709551615"#, json!("ab"));
    assert!(matches!(r, Err(EvalError::OutputTooLarge { .. })));
    assert!(t.elapsed() < Duration::from_secs(1));
    // Just under the limit works.
    let small = Limits {
        fuel: 1_000_000,
        max_output_bytes: 1000,
    };
    let e = Expr::compile(r#""x" * 900"#).unwrap();
    assert_eq!(
        e.eval_fast(&json!(null), &small).unwrap().unwrap()[0]
            .as_str()
            .unwrap()
            .len(),
        900
    );
    let e = Expr::compile(r#""x" * 1001"#).unwrap();
    assert!(matches!(
        e.eval_fast(&json!(null), &small).unwrap(),
        Err(EvalError::OutputTooLarge { .. })
    ));
}

#[test]
fn growth_is_bounded() {
    let limits = Limits {
        fuel: 10_000_000,
        max_output_bytes: 1 << 20,
    };
    // Doubling a string repeatedly.
    let mut src = r#""xxxxxxxxxxxxxxxx""#.to_string();
    for _ in 0..20 {
        src = format!("({src}) as $s | $s + $s");
    }
    let e = Expr::compile(&src).unwrap();
    assert!(e.is_fast());
    assert!(matches!(
        e.eval_fast(&json!(null), &limits).unwrap(),
        Err(EvalError::OutputTooLarge { .. })
    ));
    // Many copies of a big input in the output.
    let big = json!("y".repeat(200_000));
    let e = Expr::compile("[., ., ., ., ., ., ., ., ., .]").unwrap();
    assert!(matches!(
        e.eval_fast(&big, &limits).unwrap(),
        Err(EvalError::OutputTooLarge { .. })
    ));
    // Adding up long strings.
    let arr = json!(vec!["z".repeat(100_000); 20]);
    let e = Expr::compile("add").unwrap();
    assert!(matches!(
        e.eval_fast(&arr, &limits).unwrap(),
        Err(EvalError::OutputTooLarge { .. })
    ));
    // Joining.
    let e = Expr::compile(r#"join(",")"#).unwrap();
    assert!(matches!(
        e.eval_fast(&arr, &limits).unwrap(),
        Err(EvalError::OutputTooLarge { .. })
    ));
}

#[test]
fn cartesian_explosion_runs_out_of_fuel_quickly() {
    let input = json!({"a": (0..1000).collect::<Vec<_>>()});
    let t = Instant::now();
    let r = fast("[.a[] as $x | .a[] as $y | .a[] as $z | 1]", input.clone());
    assert_eq!(r, Err(EvalError::FuelExhausted { fuel: 1_000_000 }));
    for src in [
        "[.a[] + .a[] + .a[]]",
        "[{x: .a[], y: .a[], z: .a[]}]",
        r#"["\(.a[])\(.a[])\(.a[])"]"#,
        "[.a[] as $x | [.a[] as $y | [.a[]]]] | length",
    ] {
        let r = fast(src, input.clone());
        // Building many objects may hit the memory budget first; both stop it.
        assert!(
            matches!(
                r,
                Err(EvalError::FuelExhausted { .. } | EvalError::OutputTooLarge { .. })
            ),
            "{src}: {r:?}"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn heavy_builtins_spend_fuel() {
    let limits = Limits {
        fuel: 50_000,
        max_output_bytes: 64 << 20,
    };
    let big: Vec<Value> = (0..20_000)
        .map(|i| json!({"k": i % 7, "v": [i, i]}))
        .collect();
    let input = json!(big);
    for src in [
        "sort",
        "sort_by(.k)",
        "group_by(.k)",
        "unique",
        "[.[] | tojson] | length",
        "[.[], .[], .[]] | length",
        ". == .",
        "[.[] | . as $x | $x] | length",
        "map(.v) | add | length",
        ". - .",
        "contains(.)",
        "to_entries | map(.value) | length",
        "map(tostring) | join(\",\") | length",
    ] {
        let e = Expr::compile(src).unwrap();
        assert!(e.is_fast(), "{src}");
        let t = Instant::now();
        let r = e.eval_fast(&input, &limits).unwrap();
        assert!(
            matches!(r, Err(EvalError::FuelExhausted { .. })),
            "{src}: {}",
            format!("{r:?}").chars().take(200).collect::<String>()
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{src} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn deep_fast_expressions_fit_in_a_default_thread_stack() {
    // The deepest shapes the fast path accepts must run on a 2 MiB stack
    // (the default for spawned threads), even in debug builds.
    let mut cases = Vec::new();
    for n in (1..=64).rev() {
        let src = format!("{}.{}", "first(".repeat(n), ")".repeat(n));
        if Expr::compile(&src).unwrap().is_fast() {
            cases.push(src);
            break;
        }
    }
    for n in (1..=100).rev() {
        let src = vec!["."; n].join(" | ");
        if Expr::compile(&src).unwrap().is_fast() {
            cases.push(src);
            break;
        }
    }
    for n in (1..=100).rev() {
        let src = format!("{}.{}", "if . then ".repeat(n), " else 1 end".repeat(n));
        if Expr::compile(&src).unwrap().is_fast() {
            cases.push(src);
            break;
        }
    }
    let mut v = json!(1);
    for _ in 0..100 {
        v = json!([v]);
    }
    for n in (1..=100).rev() {
        let src = format!(".{}", "[]".repeat(n));
        if Expr::compile(&src).unwrap().is_fast() {
            cases.push(src);
            break;
        }
    }
    assert_eq!(cases.len(), 4);
    let h = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for src in cases {
                let e = Expr::compile(&src).unwrap();
                assert!(e.eval_fast(&v, &Limits::default()).unwrap().is_ok());
            }
        })
        .unwrap();
    h.join().unwrap();
    // Longer chains are still valid jq, just not fast.
    let e = Expr::compile(&vec!["."; 200].join(" | ")).unwrap();
    assert!(!e.is_fast());
}

#[test]
fn borrowed_paths_do_not_clone_the_input() {
    // A large input and a path into it: must be quick (no whole-input copies).
    let items: Vec<Value> = (0..200_000)
        .map(|i| json!({"id": i, "name": "n"}))
        .collect();
    let input = json!({"trigger": {"body": {"price": 12.5, "items": items}}});
    let e = Expr::compile(".trigger.body.price").unwrap();
    let t = Instant::now();
    for _ in 0..1000 {
        assert_eq!(
            e.eval_fast(&input, &Limits::default()).unwrap().unwrap(),
            vec![json!(12.5)]
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn runtime_errors() {
    assert_eq!(
        fast(".a", json!(5)),
        Err(EvalError::Runtime("cannot index 5 with \"a\"".into()))
    );
    assert_eq!(
        fast(".[]", json!(null)),
        Err(EvalError::Runtime(
            "cannot use null as iterable (array or object)".into()
        ))
    );
    let e = fast("{} - 1", json!(null)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "jq expression failed: cannot calculate {} - 1"
    );
    let msg = EvalError::MultipleOutputs { count_at_least: 2 }.to_string();
    assert!(msg.contains("[ ... ]"), "{msg}");
    assert!(
        EvalError::FuelExhausted { fuel: 5 }
            .to_string()
            .contains("5")
    );
    // eval_jaq reports compile errors too.
    assert!(matches!(
        eval_jaq("foo", &json!(null)),
        Err(EvalError::Compile(_))
    ));
    // halt must not exit the process.
    assert!(matches!(
        eval_jaq("halt", &json!(null)),
        Err(EvalError::Runtime(_))
    ));
    assert!(matches!(
        eval_jaq("{(1): 2}", &json!(null)),
        Err(EvalError::Runtime(_))
    ));
    assert_eq!(
        eval_jaq("[1/0, -1/0, 0/0]", &json!(null)).unwrap(),
        vec![json!([f64::MAX, f64::MIN, null])]
    );
    assert_eq!(
        eval_jaq("1.50, 1e2", &json!(null)).unwrap(),
        vec![json!(1.5), json!(100.0)]
    );
    assert_eq!(
        eval_jaq("100000000000000000000", &json!(null)).unwrap(),
        vec![json!(1e20)]
    );
    assert_eq!(
        eval_jaq(". + 1", &json!(u64::MAX - 1)).unwrap(),
        vec![json!(u64::MAX)]
    );
}

#[test]
fn single_and_to_text() {
    assert_eq!(single(vec![]).unwrap(), Value::Null);
    assert_eq!(single(vec![json!(1)]).unwrap(), json!(1));
    assert_eq!(
        single(vec![json!(1), json!(2)]).unwrap_err(),
        EvalError::MultipleOutputs { count_at_least: 2 }
    );
    assert_eq!(to_text(&json!("a\"b")), "a\"b");
    assert_eq!(to_text(&json!(null)), "null");
    assert_eq!(to_text(&json!(1.0)), "1.0");
    assert_eq!(to_text(&json!(1e17)), "1e17");
    assert_eq!(
        to_text(&json!({"a": [1, "x\u{7f}"]})),
        r#"{"a":[1,"x\u007f"]}"#
    );
}

#[test]
fn jaq_cache() {
    let mut c = JaqCache::new();
    assert_eq!(c.eval(".a + 1", &json!({"a": 1})).unwrap(), vec![json!(2)]);
    assert_eq!(c.eval(".a + 1", &json!({"a": 2})).unwrap(), vec![json!(3)]);
    assert_eq!(
        c.eval("reduce .[] as $x (0; . + $x)", &json!([1, 2, 3]))
            .unwrap(),
        vec![json!(6)]
    );
    assert!(c.eval("foo", &json!(null)).is_err());
    for i in 0..1100 {
        assert_eq!(
            c.eval(&format!(". + {i}"), &json!(0)).unwrap(),
            vec![json!(i)]
        );
    }
}

fn render(t: &TValue, input: &Value) -> Value {
    let results: Vec<Value> = t
        .exprs()
        .iter()
        .map(|e| single(e.eval_fast(input, &Limits::default()).unwrap().unwrap()).unwrap())
        .collect();
    t.render(&mut results.into_iter())
}

#[test]
fn templates() {
    let input = json!({"trigger": {"n": 3, "name": "Ada", "obj": {"a": [1]}, "s": "x\"y"}});

    let t = TValue::compile_str("plain text").unwrap();
    assert!(t.is_const());
    assert_eq!(render(&t, &input), json!("plain text"));

    // A whole-string expression yields the JSON value itself.
    let t = TValue::compile_str("{{ .trigger.n }}").unwrap();
    assert!(matches!(t, TValue::Expr(_)));
    assert_eq!(render(&t, &input), json!(3));
    let t = TValue::compile_str("{{.trigger.obj}}").unwrap();
    assert_eq!(render(&t, &input), json!({"a": [1]}));
    let t = TValue::compile_str("{{ {a: {b: .trigger.n}} }}").unwrap();
    assert_eq!(render(&t, &input), json!({"a": {"b": 3}}));

    // Interpolation: strings raw, everything else compact JSON.
    let t = TValue::compile_str(
        "Hi {{ .trigger.name }} #{{ .trigger.n }} {{ .trigger.obj }} {{ .nope }} {{ .trigger.s }}",
    )
    .unwrap();
    assert!(matches!(t, TValue::Text(_)));
    assert_eq!(render(&t, &input), json!("Hi Ada #3 {\"a\":[1]} null x\"y"));
    let t = TValue::compile_str(" {{ .trigger.n }}").unwrap();
    assert_eq!(render(&t, &input), json!(" 3"));
    if let TValue::Text(parts) = &t {
        assert!(matches!(parts[0], TextPart::Lit(_)));
        assert!(matches!(parts[1], TextPart::Expr(_)));
    }
    // Braces and strings inside the expression.
    let t = TValue::compile_str(r#"{{ "}}" + .trigger.name }}!"#).unwrap();
    assert_eq!(render(&t, &input), json!("}}Ada!"));

    // Nested values, expressions in document order.
    let v = json!({
        "url": "https://x/{{ .trigger.n }}",
        "headers": {"x-id": "{{ .trigger.name }}", "const": "c"},
        "items": ["{{ .trigger.n + 1 }}", 5, "lit"],
        "n": 1
    });
    let t = TValue::compile(&v).unwrap();
    assert!(!t.is_const());
    let srcs: Vec<&str> = t.exprs().iter().map(|e| e.source()).collect();
    assert_eq!(srcs.len(), 3);
    assert!(srcs.contains(&".trigger.n + 1"));
    let out = render(&t, &input);
    assert_eq!(
        out,
        json!({
            "url": "https://x/3",
            "headers": {"x-id": "Ada", "const": "c"},
            "items": [4, 5, "lit"],
            "n": 1
        })
    );
    let c = TValue::compile(&json!({"a": [1, "b"], "c": null})).unwrap();
    assert!(c.is_const());
    assert_eq!(
        c.render(&mut std::iter::empty()),
        json!({"a": [1, "b"], "c": null})
    );

    // Errors, with their locations.
    assert!(matches!(
        TValue::compile_str("Hello {{ .name").unwrap_err(),
        ExprError::BadTemplate { .. }
    ));
    assert!(matches!(
        TValue::compile_str("{{ }}").unwrap_err(),
        ExprError::BadTemplate { .. }
    ));
    let bad = json!({
        "headers": {"x-id": "{{ .a | }}", "ok": "{{ .b }}", "a/b": "{{ foo }}"},
        "items": ["ok", "{{ .x", {"deep": ["{{ $nope }}"]}]
    });
    let mut errs = TValue::compile(&bad).unwrap_err();
    errs.sort_by(|a, b| a.0.cmp(&b.0));
    let paths: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/headers/a~1b",
            "/headers/x-id",
            "/items/1",
            "/items/2/deep/0"
        ]
    );
    assert!(matches!(errs[0].1, ExprError::UnknownFunction { .. }));
    assert!(matches!(errs[1].1, ExprError::Syntax { .. }));
    assert!(matches!(errs[2].1, ExprError::BadTemplate { .. }));
    assert!(matches!(errs[3].1, ExprError::UndefinedVariable { .. }));
    let root = TValue::compile(&json!("{{ .a |")).unwrap_err();
    assert_eq!(root[0].0, "");
}

#[test]
fn a_context_of_borrowed_parts_evaluates_like_the_built_object() {
    use weft_expr::Part;
    let trigger = json!({"body": {"items": [1, 2, 3], "name": "x"}});
    let a = json!({"status": "succeeded", "output": {"n": 2}});
    let b = json!({"status": "skipped", "output": null});
    let b2 = json!({"status": "succeeded", "output": 7});
    let vars = json!({"k": "v"});
    let parts = [
        ("vars", Part::Value(&vars)),
        ("trigger", Part::Value(&trigger)),
        // `b` appears twice: the later entry wins, as in a built object.
        (
            "steps",
            Part::Object(vec![("b", &b), ("a", &a), ("b", &b2)]),
        ),
    ];
    let built = json!({
        "trigger": trigger,
        "steps": {"a": a, "b": b2},
        "vars": vars,
    });
    for src in [
        ".",
        "keys",
        ".steps | keys",
        "to_entries | map(.key)",
        ".steps.a.output.n + .steps.b.output",
        "[.trigger.body.items[] * 2]",
        ".steps | to_entries | map(.value.status)",
        "{name: .trigger.body.name, v: .vars.k}",
        ".missing.deep",
    ] {
        let e = Expr::compile(src).unwrap();
        let l = Limits::default();
        assert_eq!(
            e.eval_fast_parts(&parts, &l).map(|r| r.unwrap()),
            e.eval_fast(&built, &l).map(|r| r.unwrap()),
            "{src}"
        );
    }
}
