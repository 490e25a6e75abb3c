//! Data-driven validation cases: each flow text and the field paths its errors must name.
#![allow(clippy::unwrap_used)]

use weft_flow::{ActionCatalog, ActionFacts, CredentialUse, FlowError, compile, parse_text};

struct Catalog;
impl ActionCatalog for Catalog {
    fn action(&self, connector: &str, action: &str, version: Option<&str>) -> Option<ActionFacts> {
        let credential = match (connector, action) {
            ("http", "request") => CredentialUse::Optional,
            ("slack", "post_message") => CredentialUse::Required,
            _ => return None,
        };
        version
            .is_none_or(|v| v == "1.0.0")
            .then_some(ActionFacts { credential })
    }
    fn webhook_scheme(&self, connector: &str) -> Option<String> {
        match connector {
            "github" | "stripe" | "slack" => Some(connector.into()),
            "webhook" => Some("configurable".into()),
            _ => None,
        }
    }
    fn webhook_connectors(&self) -> Vec<String> {
        vec![
            "github".into(),
            "slack".into(),
            "stripe".into(),
            "webhook".into(),
        ]
    }
}

/// Asserts the flow is rejected with errors at exactly these paths (in any order).
fn check_err(text: &str, paths: &[&str]) {
    let res = parse_text(text).and_then(|d| compile(&d, &Catalog).map(|_| ()));
    let err = match res {
        Ok(()) => panic!("expected errors at {paths:?}, flow was accepted:\n{text}"),
        Err(e) => e,
    };
    let mut got: Vec<String> = err.field_errors().into_iter().map(|e| e.path).collect();
    got.sort();
    let mut want: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "errors: {err}\nflow:\n{text}");
}

fn check_ok(text: &str) -> weft_flow::CompiledFlow {
    match parse_text(text).and_then(|d| compile(&d, &Catalog)) {
        Ok(c) => c,
        Err(e) => panic!("expected valid flow, got: {e}\n{text}"),
    }
}

const HEAD: &str = "name: f\ntrigger:\n  manual: {}\n";

#[test]
fn accepts_the_product_example_shape() {
    let c = check_ok(
        "name: order-to-sink\ntrigger:\n  webhook: {}\nsteps:\n  - id: shape\n    transform: '{id: .trigger.body.id, total: (.trigger.body.price * .trigger.body.qty)}'\n  - id: send\n    action: http.request\n    input:\n      method: POST\n      url: \"http://127.0.0.1:9/x\"\n      body: \"{{ .steps.shape.output }}\"\n      headers:\n        x-who: \"n={{ .steps.shape.output.id }}\"\n    retry: { max_attempts: 5, initial: 1s, backoff: 2.0, max: 5m }\n",
    );
    assert_eq!(c.steps.len(), 2);
    assert_eq!(c.steps[1].deps, vec![0]);
    assert_eq!(c.steps[1].retry.max_attempts, 5);
}

#[test]
fn json_flows_parse_too() {
    check_ok(r#"{"name":"j","trigger":{"manual":{}},"steps":[{"id":"a","transform":"."}]}"#);
}

#[test]
fn needs_make_a_dag() {
    let c = check_ok(&format!(
        "{HEAD}steps:\n  - id: a\n    transform: '1'\n  - id: b\n    needs: []\n    transform: '2'\n  - id: c\n    needs: [a, b]\n    transform: '3'\n"
    ));
    assert_eq!(c.steps[1].deps, Vec::<usize>::new());
    assert_eq!(c.steps[2].deps, vec![0, 1]);
}

#[test]
fn schedule_next_tick_in_time_zone() {
    let c = check_ok(
        "name: s\ntrigger:\n  schedule: { cron: '0 9 * * *', timezone: Europe/Paris }\nsteps:\n  - id: a\n    transform: '.'\n",
    );
    // 2026-01-01T00:00Z -> 09:00 Paris = 08:00Z
    let next = c.trigger.next_tick_after(1_767_225_600_000).unwrap();
    assert_eq!(next, 1_767_225_600_000 + 8 * 3600 * 1000);
}

#[test]
fn rejects_with_field_paths() {
    check_err("name: [1\n", &[""]);
    check_err("{\"name\": ", &[""]);
    check_err("- 1\n- 2\n", &[""]);
    check_err(&format!("{HEAD}steps: []\nbogus: 1\n"), &["bogus"]);
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transfrom: '.'\n"),
        &["steps[0].transfrom"],
    );
    check_err(&format!("{HEAD}steps: []\n"), &["steps"]);
    check_err(
        "name: 'bad name!'\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    transform: '.'\n",
        &["name"],
    );
    check_err(
        "name: f\ntrigger: {}\nsteps:\n  - id: a\n    transform: '.'\n",
        &["trigger"],
    );
    check_err(
        "name: f\ntrigger:\n  manual: {}\n  webhook: {}\nsteps:\n  - id: a\n    transform: '.'\n",
        &["trigger"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transform: '.'\n  - id: a\n    transform: '.'\n"),
        &["steps[1].id"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    needs: [zz]\n    transform: '.'\n"),
        &["steps[0].needs[0]"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    needs: [a]\n    transform: '.'\n"),
        &["steps[0].needs[0]"],
    );
    check_err(
        &format!(
            "{HEAD}steps:\n  - id: a\n    needs: [b]\n    transform: '.'\n  - id: b\n    needs: [a]\n    transform: '.'\n"
        ),
        &["steps[0].needs"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    action: nope.thing\n"),
        &["steps[0].action"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    action: http.request@9.9.9\n"),
        &["steps[0].action"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    action: nodot\n"),
        &["steps[0].action"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transform: '.a | ('\n"),
        &["steps[0].transform"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    if: '.x =='\n    transform: '.'\n"),
        &["steps[0].if"],
    );
    check_err(
        &format!(
            "{HEAD}steps:\n  - id: a\n    action: http.request\n    input:\n      url: 'x'\n      headers:\n        h: '{{{{ .a | ( }}}}'\n"
        ),
        &["steps[0].input.headers.h"],
    );
    check_err(
        &format!(
            "{HEAD}steps:\n  - id: a\n    action: http.request\n    input:\n      url: '{{{{ .a'\n"
        ),
        &["steps[0].input.url"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transform: '.'\n    timeout: 10x\n"),
        &["steps[0].timeout"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transform: '.'\n    retry: {{ initial: soon }}\n"),
        &["steps[0].retry.initial"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transform: '.'\n    retry: {{ max_attempts: 0 }}\n"),
        &["steps[0].retry.max_attempts"],
    );
    check_err(
        &format!(
            "{HEAD}steps:\n  - id: a\n    transform: '.'\n    retry: {{ max_attempts: -1 }}\n"
        ),
        &["steps[0].retry.max_attempts"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transform: '.'\n    fail: stop\n"),
        &["steps[0]"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    name: x\n"),
        &["steps[0]"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: '1a'\n    transform: '.'\n"),
        &["steps[0].id"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transform: '.'\n    input: {{}}\n"),
        &["steps[0].input"],
    );
    check_err(
        "name: f\ntrigger:\n  schedule: { cron: 'every day' }\nsteps:\n  - id: a\n    transform: '.'\n",
        &["trigger.schedule.cron"],
    );
    check_err(
        "name: f\ntrigger:\n  schedule: { cron: '* * * * *', timezone: Mars/Olympus }\nsteps:\n  - id: a\n    transform: '.'\n",
        &["trigger.schedule.timezone"],
    );
    check_err(
        "name: f\ntrigger:\n  poll: {}\nsteps:\n  - id: a\n    transform: '.'\n",
        &["trigger.poll"],
    );
    check_err(
        "name: f\ntrigger:\n  event: {}\nsteps:\n  - id: a\n    transform: '.'\n",
        &["trigger.event"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    for_each: '.x'\n"),
        &["steps[0].steps"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    respond: {{ status: 99 }}\n"),
        &["steps[0].respond.status"],
    );
    check_err(
        &format!("{HEAD}timeout: forever\nsteps:\n  - id: a\n    transform: '.'\n"),
        &["timeout"],
    );
    // several errors at once are all reported
    check_err(
        &format!(
            "{HEAD}steps:\n  - id: a\n    transform: '('\n  - id: b\n    needs: [q]\n    transform: '.'\n"
        ),
        &["steps[0].transform", "steps[1].needs[0]"],
    );
}

#[test]
fn hostile_inputs_do_not_panic() {
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_text(&deep).is_err());
    let deep_json = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_text(&deep_json).is_err());
    let big = "a".repeat(2 * 1024 * 1024);
    assert!(matches!(parse_text(&big), Err(FlowError::TooLarge { .. })));
    let deep_expr = format!(
        "{HEAD}steps:\n  - id: a\n    transform: '{}'\n",
        "(".repeat(10_000)
    );
    assert!(
        parse_text(&deep_expr)
            .and_then(|d| compile(&d, &Catalog))
            .is_err()
    );
    // a billion-laughs style alias bomb
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    assert!(parse_text(bomb).is_err());
}

#[test]
fn committed_schema_matches_the_types() {
    let schema = serde_json::to_string_pretty(&weft_flow::json_schema()).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/flow.schema.json");
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(path, &schema).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == schema,
        "docs/flow.schema.json is out of date: run `WEFT_BLESS=1 cargo test -p weft-flow --test validate` and commit it"
    );
}

fn webhook(trigger_body: &str) -> String {
    format!("name: f\ntrigger:\n  webhook:\n{trigger_body}steps:\n  - id: a\n    transform: '.'\n")
}

#[test]
fn signed_webhooks_and_credentials() {
    // Accepted forms.
    let ok = |text: &str| {
        let d = parse_text(text).unwrap();
        compile(&d, &Catalog).unwrap()
    };
    let c = ok(&webhook(
        "    connector: github\n    credential: gh-hook\n    events: [issues.opened, push]\n",
    ));
    let weft_flow::TriggerKind::Webhook {
        verify: Some(v), ..
    } = &c.trigger
    else {
        panic!("not verified")
    };
    assert_eq!(
        (v.scheme.as_str(), v.credential.as_str()),
        ("github", "gh-hook")
    );
    assert!(v.accepts(Some("issues.opened")) && v.accepts(Some("push")));
    assert!(!v.accepts(Some("issues.closed")) && !v.accepts(None));
    let c = ok(&webhook(
        "    connector: webhook\n    credential: s\n    signature: {header: X-Sig, encoding: base64, prefix: 'sha256='}\n    events: [issues]\n",
    ));
    let weft_flow::TriggerKind::Webhook {
        verify: Some(v), ..
    } = &c.trigger
    else {
        panic!("not verified")
    };
    assert_eq!(v.scheme, "hmac");
    assert!(v.accepts(Some("issues.opened")) && v.accepts(Some("issues")));
    assert!(!v.accepts(Some("issuesx")));
    ok(&webhook(
        "    connector: webhook\n    credential: s\n    signature: standard-webhooks\n",
    ));
    ok(
        "name: f\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    action: slack.post_message\n    credential: bot\n    input: {channel: x}\n",
    );

    // Refused, each naming its field.
    check_err(
        &webhook("    connector: gitlab\n    credential: x\n"),
        &["trigger.webhook.connector"],
    );
    check_err(
        &webhook("    connector: github\n"),
        &["trigger.webhook.credential"],
    );
    check_err(
        &webhook("    credential: x\n"),
        &["trigger.webhook.credential"],
    );
    check_err(
        &webhook("    events: [push]\n"),
        &["trigger.webhook.events"],
    );
    check_err(
        &webhook("    connector: github\n    credential: 'bad name'\n"),
        &["trigger.webhook.credential"],
    );
    check_err(
        &webhook("    connector: github\n    credential: x\n    events: []\n"),
        &["trigger.webhook.events"],
    );
    check_err(
        &webhook("    connector: github\n    credential: x\n    events: ['a b']\n"),
        &["trigger.webhook.events[0]"],
    );
    check_err(
        &webhook("    connector: github\n    credential: x\n    signature: shopify\n"),
        &["trigger.webhook.signature"],
    );
    check_err(
        &webhook("    connector: webhook\n    credential: x\n"),
        &["trigger.webhook.signature"],
    );
    check_err(
        &webhook("    connector: webhook\n    credential: x\n    signature: rot13\n"),
        &["trigger.webhook.signature"],
    );
    check_err(
        &webhook(
            "    connector: webhook\n    credential: x\n    signature: {header: 'a b', algorithm: md5}\n",
        ),
        &[
            "trigger.webhook.signature.header",
            "trigger.webhook.signature.algorithm",
        ],
    );
    check_err(
        &format!(
            "{HEAD}steps:\n  - id: a\n    action: slack.post_message\n    input: {{channel: x}}\n"
        ),
        &["steps[0].credential"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    transform: '.'\n    credential: x\n"),
        &["steps[0].credential"],
    );
}

#[test]
fn step_rate_limits() {
    let ok = |rl: &str| {
        let text = format!(
            "{HEAD}steps:\n  - id: a\n    action: http.request\n    input: {{url: 'https://x.test'}}\n    rate_limit: {rl}\n"
        );
        let c = compile(&parse_text(&text).unwrap(), &Catalog).unwrap();
        match &c.steps[0].kind {
            weft_flow::StepKind::Action { rate_limit, .. } => *rate_limit,
            _ => panic!(),
        }
    };
    assert_eq!(ok("{per_second: 2}"), Some((2.0, 1)));
    assert_eq!(ok("{per_minute: 30, burst: 5}"), Some((0.5, 5)));
    let bad = |rl: &str, path: &str| {
        check_err(
            &format!(
                "{HEAD}steps:\n  - id: a\n    action: http.request\n    input: {{url: 'https://x.test'}}\n    rate_limit: {rl}\n"
            ),
            &[path],
        )
    };
    bad("{per_second: 0}", "steps[0].rate_limit");
    bad("{per_second: 1, per_minute: 1}", "steps[0].rate_limit");
    bad("{per_hour: 1}", "steps[0].rate_limit.per_hour");
    bad("{per_second: 1, burst: 0}", "steps[0].rate_limit.burst");
    check_err(
        &format!(
            "{HEAD}steps:\n  - id: a\n    transform: '.'\n    rate_limit: {{per_second: 1}}\n"
        ),
        &["steps[0].rate_limit"],
    );
}

fn poll(trigger_body: &str) -> String {
    format!(
        "name: f\ntrigger:\n  poll:\n{trigger_body}steps:\n  - id: a\n    transform: '.trigger.item'\n"
    )
}

#[test]
fn poll_triggers() {
    let c = check_ok(&poll(
        "    every: 30s\n    input: {url: 'https://api.example.com/items?since={{ .cursor }}'}\n    items: '.body.items'\n    id: '.key'\n    cursor: '[.items[].updated] | max'\n    since: '2026-01-01T00:00:00Z'\n",
    ));
    let weft_flow::TriggerKind::Poll(p) = &c.trigger else {
        panic!("not a poll trigger: {:?}", c.trigger)
    };
    assert_eq!(p.every, std::time::Duration::from_secs(30));
    assert_eq!(
        (p.connector.as_str(), p.action.as_str()),
        ("http", "request")
    );
    assert_eq!(p.id.source(), ".key");
    assert_eq!(p.since, Some(serde_json::json!("2026-01-01T00:00:00Z")));
    assert_eq!(c.trigger.name(), "poll");
    assert_eq!(c.trigger.next_tick_after(0), None);

    // Defaults: http.request, `.id`, no cursor, no since.
    let c = check_ok(&poll("    every: 5m\n"));
    let weft_flow::TriggerKind::Poll(p) = &c.trigger else {
        panic!()
    };
    assert_eq!(p.id.source(), ".id");
    assert!(p.items.is_none() && p.cursor.is_none() && p.since.is_none());

    check_err(&poll("    every: 500ms\n"), &["trigger.poll.every"]);
    check_err(&poll("    every: soon\n"), &["trigger.poll.every"]);
    check_err(&poll("    input: {}\n"), &["trigger.poll"]);
    check_err(
        &poll("    every: 1m\n    action: nope.list\n"),
        &["trigger.poll.action"],
    );
    check_err(
        &poll("    every: 1m\n    action: nodot\n"),
        &["trigger.poll.action"],
    );
    check_err(
        &poll("    every: 1m\n    action: slack.post_message\n"),
        &["trigger.poll.credential"],
    );
    check_err(
        &poll("    every: 1m\n    credential: 'bad name'\n"),
        &["trigger.poll.credential"],
    );
    check_err(
        &poll("    every: 1m\n    items: '.['\n"),
        &["trigger.poll.items"],
    );
    check_err(&poll("    every: 1m\n    id: '.['\n"), &["trigger.poll.id"]);
    check_err(
        &poll("    every: 1m\n    cursor: ')'\n"),
        &["trigger.poll.cursor"],
    );
    check_err(
        &poll("    every: 1m\n    input: {url: '{{ .x'}\n"),
        &["trigger.poll.input.url"],
    );
    check_err(&poll("    every: 1m\n    wat: 1\n"), &["trigger.poll.wat"]);
}

fn ids(c: &weft_flow::CompiledFlow, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| c.steps[i].id.clone()).collect()
}

#[test]
fn switch_cases_handlers_and_joins_imply_their_needs() {
    let c = check_ok(&format!(
        "{HEAD}steps:
  - id: pick
    switch: .trigger.body.kind
    cases:
      big: [b1, b2]
      small: s1
      default: []
  - id: b1
    transform: '1'
  - id: b2
    transform: '2'
  - id: s1
    transform: '3'
  - id: after
    transform: '4'
  - id: risky
    transform: '5'
    on_error: [cleanup]
  - id: cleanup
    transform: '6'
  - id: last
    transform: '7'
"
    ));
    // b1 follows the switch, b2 follows b1 (same case), s1 the switch (another case).
    assert_eq!(ids(&c, &c.steps[1].deps), ["pick"]);
    assert_eq!(ids(&c, &c.steps[2].deps), ["b1"]);
    assert_eq!(ids(&c, &c.steps[3].deps), ["pick"]);
    assert_eq!(c.steps[1].case_of, Some((0, "big".to_string())));
    // The step after the cases joins them all, and the switch itself, with `any`.
    assert_eq!(ids(&c, &c.steps[4].deps), ["pick", "b1", "b2", "s1"]);
    assert!(c.steps[4].join_any);
    // A handler needs what it handles; the chain skips it.
    assert_eq!(ids(&c, &c.steps[6].deps), ["risky"]);
    assert_eq!(c.steps[5].on_error, vec![6]);
    assert_eq!(ids(&c, &c.steps[7].deps), ["risky"]);
    assert!(!c.steps[7].join_any);
}

#[test]
fn waits_signals_and_loops_compile() {
    let c = check_ok(&format!(
        "{HEAD}concurrency: 4
steps:
  - id: pause
    wait: 5m
  - id: until
    wait: {{until: .trigger.body.at}}
  - id: approve
    approval: {{timeout: 2d, on_timeout: [expire], message: 'ok {{{{ .trigger.body.x }}}}?'}}
  - id: expire
    transform: '1'
  - id: hear
    wait_for_event: {{event: 'order.paid', timeout: 1h}}
  - id: loop
    for_each: .trigger.body.items
    concurrency: 5
    collect: false
    steps:
      - id: double
        transform: '.item * 2'
      - id: check
        if: '.steps.double.output > 2'
        transform: '.steps.double.output'
"
    ));
    assert_eq!(c.concurrency, Some(4));
    assert_eq!(c.steps[0].kind.name(), "wait");
    assert_eq!(c.steps[2].kind.name(), "approval");
    assert_eq!(c.steps[2].on_timeout, vec![3]);
    match &c.steps[4].kind {
        weft_flow::StepKind::Signal(s) => assert_eq!(s.names, ["hear", "order.paid"]),
        other => panic!("{other:?}"),
    }
    match &c.steps[5].kind {
        weft_flow::StepKind::ForEach(fe) => {
            assert_eq!(fe.concurrency, 5);
            assert!(!fe.collect);
            assert_eq!(fe.steps.len(), 2);
            assert_eq!(fe.steps[1].deps, vec![0]);
        }
        other => panic!("{other:?}"),
    }
    // The loop's default need skips the handler `expire`.
    assert_eq!(ids(&c, &c.steps[4].deps), ["approve"]);
}

#[test]
fn flow_control_errors_name_their_fields() {
    let one = |body: &str, paths: &[&str]| check_err(&format!("{HEAD}steps:\n{body}"), paths);
    one("  - id: s\n    switch: .x\n", &["steps[0].cases"]);
    one(
        "  - id: s\n    switch: .x\n    cases: {a: [nope]}\n",
        &["steps[0].cases.a[0]"],
    );
    one(
        "  - id: s\n    switch: .x\n    cases: {a: 3}\n",
        &["steps[0].cases.a"],
    );
    one(
        "  - id: a\n    transform: '1'\n    on_error: [a]\n",
        &["steps[0].on_error[0]"],
    );
    one(
        "  - id: a\n    transform: '1'\n    on_error: [h]\n  - id: b\n    transform: '1'\n    on_error: [h]\n  - id: h\n    transform: '1'\n",
        &["steps[1].on_error[0]"],
    );
    one(
        "  - id: a\n    transform: '1'\n    join: some\n",
        &["steps[0].join"],
    );
    one("  - id: w\n    wait: soon\n", &["steps[0].wait"]);
    one(
        "  - id: w\n    wait: {until: '('}\n",
        &["steps[0].wait.until"],
    );
    one(
        "  - id: w\n    approval: {timeout: never}\n",
        &["steps[0].approval.timeout"],
    );
    one(
        "  - id: w\n    wait_for_event: {event: 'a b'}\n",
        &["steps[0].wait_for_event.event"],
    );
    one(
        "  - id: l\n    for_each: .x\n    concurrency: 0\n    steps:\n      - id: i\n        transform: '1'\n",
        &["steps[0].concurrency"],
    );
    one(
        "  - id: l\n    for_each: .x\n    steps:\n      - id: i\n        wait: 5m\n",
        &["steps[0].steps[0].wait"],
    );
    one(
        "  - id: l\n    for_each: .x\n    steps:\n      - id: l\n        transform: '1'\n",
        &["steps[0].steps[0].id"],
    );
    one(
        "  - id: l\n    for_each: .x\n    steps:\n      - id: i\n        transform: '('\n",
        &["steps[0].steps[0].transform"],
    );
    one(
        "  - id: a\n    transform: '1'\n    collect: true\n",
        &["steps[0].steps"],
    );
    check_err(
        &format!("{HEAD}concurrency: 0\nsteps:\n  - id: a\n    transform: '1'\n"),
        &["concurrency"],
    );
    one("  - id: c\n    code: '   '\n", &["steps[0].code"]);
    one(
        &format!("  - id: c\n    code: '{}'\n", "x".repeat(70_000)),
        &["steps[0].code"],
    );
    one(
        "  - id: s\n    subflow: 'no good!'\n",
        &["steps[0].subflow"],
    );
    one(
        "  - id: s\n    transform: '1'\n    detach: true\n",
        &["steps[0].detach"],
    );
    one(
        "  - id: a\n    transform: '1'\n    compensate: []\n",
        &["steps[0].compensate"],
    );
    one(
        "  - id: a\n    transform: '1'\n    compensate:\n      - id: a\n        transform: '2'\n",
        &["steps[0].compensate[0].id"],
    );
    one(
        "  - id: a\n    transform: '1'\n    compensate:\n      - id: u\n        wait: 5m\n",
        &["steps[0].compensate[0].wait"],
    );
    one(
        "  - id: l\n    for_each: .x\n    steps:\n      - id: i\n        transform: '1'\n  - id: a\n    transform: '1'\n    compensate:\n      - id: i\n        transform: '2'\n",
        &["steps[1].compensate[0].id"],
    );
}

#[test]
fn code_subflow_and_compensation_compile() {
    let c = check_ok(&format!(
        "{HEAD}steps:\n  - id: js\n    code: 'return 1 + 1;'\n  - id: child\n    subflow: other-flow\n    input: {{x: '{{{{ .steps.js.output }}}}'}}\n  - id: pay\n    transform: '1'\n    compensate:\n      - id: refund\n        transform: '.compensating.output'\n"
    ));
    assert_eq!(c.steps[0].kind.name(), "code");
    assert_eq!(c.steps[1].kind.name(), "subflow");
    assert_eq!(c.steps[2].compensate.len(), 1);
    assert_eq!(c.steps[2].compensate[0].id, "refund");
}

#[test]
fn event_triggers_waits_and_emits_compile() {
    let c = check_ok(
        "name: f\ntrigger:\n  event: {name: order.paid}\nsteps:\n  - id: a\n    transform: '1'\n",
    );
    let weft_flow::TriggerKind::Event { names } = &c.trigger else {
        panic!("expected an event trigger, got {:?}", c.trigger)
    };
    assert_eq!(names, &["order.paid"]);
    assert_eq!(c.trigger.name(), "event");
    let c = check_ok(
        "name: f\ntrigger:\n  event: {flow: billing, status: finished}\nsteps:\n  - id: a\n    transform: '1'\n",
    );
    let weft_flow::TriggerKind::Event { names } = &c.trigger else {
        panic!("expected an event trigger")
    };
    assert_eq!(names, &["flow.billing.succeeded", "flow.billing.failed"]);
    let c = check_ok(&format!(
        "{HEAD}steps:\n  - id: w\n    wait_for_event: {{event: order.paid, key: '{{{{ .trigger.body.id }}}}', timeout: 1d}}\n  - id: e\n    needs: [w]\n    emit: {{event: order.seen, key: abc, data: {{n: '{{{{ .steps.w.output.data }}}}'}}}}\n"
    ));
    let weft_flow::StepKind::Signal(w) = &c.steps[0].kind else {
        panic!("expected a wait")
    };
    assert_eq!(w.event.as_deref(), Some("order.paid"));
    assert!(w.key.is_some());
    assert!(
        matches!(&c.steps[1].kind, weft_flow::StepKind::Emit { event, key: Some(_), .. } if event == "order.seen")
    );
}

#[test]
fn event_errors_name_their_fields() {
    let bad = [
        ("trigger:\n  event: {}", "trigger.event"),
        ("trigger:\n  event: {name: a, flow: b}", "trigger.event"),
        ("trigger:\n  event: {name: 'a b'}", "trigger.event.name"),
        (
            "trigger:\n  event: {name: a, status: failed}",
            "trigger.event.status",
        ),
        (
            "trigger:\n  event: {flow: x, status: sometimes}",
            "trigger.event.status",
        ),
        ("trigger:\n  event: {flow: self}", "trigger.event.flow"),
    ];
    for (trigger, path) in bad {
        check_err(
            &format!("name: self\n{trigger}\nsteps:\n  - id: a\n    transform: '1'\n"),
            &[path],
        );
    }
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    wait_for_event: {{key: k}}\n"),
        &["steps[0].wait_for_event.key"],
    );
    check_err(
        &format!(
            "{HEAD}steps:\n  - id: a\n    wait_for_event: {{event: e, key: '{{{{ .nope( }}}}'}}\n"
        ),
        &["steps[0].wait_for_event.key"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    emit: {{event: 'no spaces'}}\n"),
        &["steps[0].emit.event"],
    );
    check_err(
        &format!("{HEAD}steps:\n  - id: a\n    emit: {{event: e, data: '{{{{ .x | }}}}'}}\n"),
        &["steps[0].emit.data"],
    );
}

#[test]
fn a_loop_over_another_loops_outputs_needs_a_non_collecting_loop() {
    let loop_a = "  - id: a\n    for_each: '[1, 2]'\n    collect: false\n    steps:\n      - id: x\n        transform: '.item'\n";
    let c = check_ok(&format!(
        "{HEAD}steps:\n{loop_a}  - id: mid\n    transform: '1'\n  - id: b\n    needs: [mid]\n    for_each: {{outputs_of: a}}\n    steps:\n      - id: yy\n        transform: '.item'\n"
    ));
    let weft_flow::StepKind::ForEach(fe) = &c.steps[2].kind else {
        panic!("expected a loop")
    };
    assert!(matches!(&fe.list, weft_flow::ItemSource::OutputsOf { step, idx: 0 } if step == "a"));
    assert_eq!(
        c.steps[2].deps,
        vec![0, 1],
        "the source loop becomes a need"
    );
    for (src, what) in [
        ("nope", "an unknown step"),
        ("b", "itself"),
        ("t", "not a loop"),
        ("c", "a collecting loop"),
    ] {
        let text = format!(
            "{HEAD}steps:\n{loop_a}  - id: t\n    transform: '1'\n  - id: c\n    for_each: '[1]'\n    steps:\n      - id: z\n        transform: '.item'\n  - id: b\n    for_each: {{outputs_of: {src}}}\n    steps:\n      - id: yy\n        transform: '.item'\n"
        );
        check_err(&text, &["steps[3].for_each.outputs_of"]);
        let _ = what;
    }
}
