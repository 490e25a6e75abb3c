//! Semantic validation: every rule a parsed flow must meet, each error naming its field path.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use weft_expr::{Expr, TValue};

use crate::compiled::{
    CompiledFlow, CompiledStep, ForEachSpec, Handler, ItemSource, PollSpec, RetryPolicy,
    SignalWait, StepKind, TriggerKind, WaitSpec, WebhookVerify,
};
use crate::duration::parse_duration;
use crate::model::{DurationSpec, FlowDef, ForEachDef, PollTrigger, StepDef};
use crate::{FieldError, FlowError};

/// Most steps a flow may have.
pub const MAX_STEPS: usize = 500;

/// Largest `code` of one step, in bytes.
pub const MAX_CODE_BYTES: usize = 64 * 1024;

/// The actions a flow may call; implemented by the connector registry.
pub trait ActionCatalog {
    /// `connector.action` (at `version`, if given), if it exists.
    fn action(&self, connector: &str, action: &str, version: Option<&str>) -> Option<ActionFacts>;
    /// The signature scheme of `connector`'s webhook trigger (`configurable` when the flow
    /// chooses it); `None` when the connector does not exist or takes no webhooks.
    fn webhook_scheme(&self, connector: &str) -> Option<String>;
    /// Connectors whose webhooks can be verified, for messages.
    fn webhook_connectors(&self) -> Vec<String>;
    /// For a connector whose scheme is `hmac` (an installed one), its header, algorithm,
    /// encoding and prefix.
    fn webhook_hmac(&self, _connector: &str) -> Option<crate::model::HmacDef> {
        None
    }
    /// What a poll trigger calling this action takes when the flow does not say: the
    /// connector's `items`, `id` and `cursor` jq programs.
    fn poll_defaults(
        &self,
        _connector: &str,
        _action: &str,
        _version: Option<&str>,
    ) -> Option<PollDefaults> {
        None
    }
}

/// A listing action's defaults for poll triggers (jq programs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollDefaults {
    /// Selects the list from the output.
    pub items: Option<String>,
    /// An item's id.
    pub id: Option<String>,
    /// The next cursor, over `{output, items, cursor}`.
    pub cursor: Option<String>,
}

/// What validation needs to know about an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionFacts {
    /// Whether the step must, may or must not name a credential.
    pub credential: CredentialUse,
}

/// Whether an action takes a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialUse {
    /// It cannot run without one.
    Required,
    /// It can use one.
    Optional,
    /// It takes none.
    None,
}

/// Largest number of event names in a webhook filter.
const MAX_EVENTS: usize = 100;

/// Credential names: like flow names.
fn valid_credential_name(s: &str) -> bool {
    valid_name(s)
}

struct Ctx {
    errors: Vec<FieldError>,
}

impl Ctx {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(FieldError::new(path, msg));
    }
    fn expr(&mut self, path: &str, src: &str) -> Option<Expr> {
        match Expr::compile(src) {
            Ok(e) => Some(e),
            Err(e) => {
                self.err(path, format!("expression does not compile: {e}"));
                None
            }
        }
    }
    fn tvalue(&mut self, path: &str, v: &Value) -> Option<TValue> {
        match TValue::compile(v) {
            Ok(t) => Some(t),
            Err(errs) => {
                for (p, e) in errs {
                    self.err(
                        format!("{path}{}", pointer_to_path(&p)),
                        format!("template does not compile: {e}"),
                    );
                }
                None
            }
        }
    }
    fn duration(&mut self, path: &str, d: &DurationSpec) -> Option<Duration> {
        match parse_duration(d) {
            Ok(d) => Some(d),
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }
}

/// `/a/0/b` → `.a[0].b`.
/// A JSON pointer (`/a/0/b`) as a field path suffix (`.a[0].b`).
pub fn pointer_to_path(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.bytes().all(|b| b.is_ascii_digit()) {
                format!("[{s}]")
            } else {
                format!(".{s}")
            }
        })
        .collect()
}

/// Whether `s` is a valid flow (or credential) name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_step_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Validates `def` and compiles it; every problem found is reported, each with its path.
pub fn compile(def: &FlowDef, catalog: &dyn ActionCatalog) -> Result<CompiledFlow, FlowError> {
    let mut cx = Ctx { errors: Vec::new() };
    if !valid_name(&def.name) {
        cx.err("name", "must be 1-100 characters: letters, digits, '-', '_' or '.', starting with a letter or digit");
    }
    let trigger = compile_trigger(def, catalog, &mut cx);
    let run_timeout = def.timeout.as_ref().and_then(|t| cx.duration("timeout", t));
    if def.steps.is_empty() {
        cx.err("steps", "a flow needs at least one step");
    }
    if def.steps.len() > MAX_STEPS {
        cx.err(
            "steps",
            format!("a flow may have at most {MAX_STEPS} steps"),
        );
    }

    let steps = compile_steps("steps", &def.steps, &HashMap::new(), catalog, &mut cx);
    if let Some(f) = &def.error_flow {
        if !valid_name(f) {
            cx.err("error_flow", "must be the name of a flow in this workspace");
        } else if *f == def.name {
            cx.err("error_flow", "a flow cannot be its own error flow");
        }
    }
    let concurrency = def.concurrency.and_then(|c| {
        if (1..=1000).contains(&c) {
            Some(c as usize)
        } else {
            cx.err("concurrency", "must be between 1 and 1000");
            None
        }
    });
    if !cx.errors.is_empty() {
        return Err(FlowError::Invalid(cx.errors));
    }
    let Some(trigger) = trigger else {
        return Err(FlowError::Invalid(vec![FieldError::new(
            "trigger",
            "no usable trigger",
        )]));
    };
    Ok(CompiledFlow {
        def: def.clone(),
        trigger,
        steps,
        run_timeout,
        vars: Value::Object(def.vars.clone().unwrap_or_default()),
        concurrency,
        error_flow: def.error_flow.clone(),
    })
}

/// The role a step plays for another: a handler of its failure, or a member of a switch case.
#[derive(Default)]
struct Roles {
    /// handler index → (handled step, kind)
    handles: HashMap<usize, (usize, Handler)>,
    /// case member index → (switch index, case key)
    case_of: HashMap<usize, (usize, String)>,
}

/// Compiles one list of steps (the flow's, or a `for_each`'s at `prefix`); `outer` holds the
/// ids of the enclosing list, which nested ids must not reuse (both are in `.steps`).
fn compile_steps(
    prefix: &str,
    defs: &[StepDef],
    outer: &HashMap<&str, usize>,
    catalog: &dyn ActionCatalog,
    cx: &mut Ctx,
) -> Vec<CompiledStep> {
    let nested = !outer.is_empty() || prefix != "steps";
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in defs.iter().enumerate() {
        if !valid_step_id(&s.id) {
            cx.err(
                format!("{prefix}[{i}].id"),
                "must be 1-64 characters: letters, digits, '-' or '_', starting with a letter or '_'",
            );
        }
        if outer.contains_key(s.id.as_str()) {
            cx.err(
                format!("{prefix}[{i}].id"),
                format!(
                    "'{}' is already a step of the enclosing flow; nested steps need their own ids",
                    s.id
                ),
            );
        }
        if let Some(prev) = index.insert(s.id.as_str(), i) {
            cx.err(
                format!("{prefix}[{i}].id"),
                format!(
                    "duplicate step id '{}' (also used by {prefix}[{prev}])",
                    s.id
                ),
            );
            index.insert(s.id.as_str(), prev);
        }
    }
    let roles = collect_roles(prefix, defs, &index, cx);
    let mut steps = Vec::with_capacity(defs.len());
    for (i, s) in defs.iter().enumerate() {
        if let Some(step) = compile_step(prefix, i, s, &index, &roles, nested, catalog, cx) {
            steps.push(step);
        }
    }
    if steps.len() == defs.len() {
        let mut all = outer.clone();
        all.extend(index.iter().map(|(k, v)| (*k, *v)));
        // Nested lists may not reuse any id of the flow (all are in `.steps`), nor of each other.
        for (i, s) in defs.iter().enumerate() {
            if let StepKind::ForEach(fe) = &mut steps[i].kind {
                fe.steps = compile_steps(
                    &format!("{prefix}[{i}].steps"),
                    s.steps.as_deref().unwrap_or_default(),
                    &all,
                    catalog,
                    cx,
                );
                all.extend(fe.steps.iter().map(|n| (leak_id(defs, i, &n.id), 0)));
            }
            if let Some(list) = &s.compensate {
                if nested {
                    cx.err(
                        format!("{prefix}[{i}].compensate"),
                        "only top-level steps can declare `compensate`",
                    );
                    continue;
                }
                if list.is_empty() {
                    cx.err(
                        format!("{prefix}[{i}].compensate"),
                        "list the steps that undo this one, or leave `compensate` out",
                    );
                    continue;
                }
                if matches!(
                    steps[i].kind,
                    StepKind::ForEach(_) | StepKind::Switch { .. }
                ) {
                    cx.err(
                        format!("{prefix}[{i}].compensate"),
                        "loops and switches have nothing to undo; put `compensate` on their steps' actions",
                    );
                    continue;
                }
                steps[i].compensate = compile_steps(
                    &format!("{prefix}[{i}].compensate"),
                    list,
                    &all,
                    catalog,
                    cx,
                );
                all.extend(
                    steps[i]
                        .compensate
                        .iter()
                        .map(|n| (leak_id(defs, i, &n.id), 0)),
                );
            }
        }
        for (i, st) in steps.iter().enumerate() {
            if let StepKind::ForEach(fe) = &st.kind
                && let ItemSource::OutputsOf { step, idx } = &fe.list
                && !matches!(&steps[*idx].kind, StepKind::ForEach(src) if !src.collect)
            {
                cx.err(
                    format!("{prefix}[{i}].for_each.outputs_of"),
                    format!("'{step}' must be a for_each with `collect: false` (its item outputs are then kept in the store, not in its output)"),
                );
            }
        }
        if cx.errors.is_empty() {
            check_cycles(prefix, &steps, cx);
        }
    }
    steps
}

/// A nested step's id borrowed from the definition it came from (ids in `all` borrow `defs`).
fn leak_id<'a>(defs: &'a [StepDef], parent: usize, id: &str) -> &'a str {
    let p = &defs[parent];
    p.steps
        .iter()
        .chain(p.compensate.iter())
        .flatten()
        .find(|d| d.id == id)
        .map_or("", |d| d.id.as_str())
}

/// Reads `on_error`, `on_timeout` and `cases` lists: which steps handle or belong to which.
fn collect_roles(
    prefix: &str,
    defs: &[StepDef],
    index: &HashMap<&str, usize>,
    cx: &mut Ctx,
) -> Roles {
    let mut roles = Roles::default();
    let mut claim = |cx: &mut Ctx,
                     path: String,
                     from: usize,
                     id: &str,
                     role: Result<Handler, String>| {
        let Some(&j) = index.get(id) else {
            cx.err(path, format!("no step has the id '{id}'"));
            return;
        };
        if j == from {
            cx.err(path, "a step cannot name itself");
            return;
        }
        if roles.handles.contains_key(&j) || roles.case_of.contains_key(&j) {
            cx.err(
                path,
                format!("step '{id}' is already a handler or a case of another step; a step can have one such role"),
            );
            return;
        }
        match role {
            Ok(h) => {
                roles.handles.insert(j, (from, h));
            }
            Err(key) => {
                roles.case_of.insert(j, (from, key));
            }
        }
    };
    for (i, s) in defs.iter().enumerate() {
        let p = format!("{prefix}[{i}]");
        for (k, id) in s.on_error.iter().flatten().enumerate() {
            claim(cx, format!("{p}.on_error[{k}]"), i, id, Ok(Handler::Error));
        }
        let timeouts = [
            (
                "approval",
                s.approval.as_ref().and_then(|a| a.on_timeout.as_ref()),
            ),
            (
                "wait_for_event",
                s.wait_for_event
                    .as_ref()
                    .and_then(|a| a.on_timeout.as_ref()),
            ),
        ];
        for (kind, list) in timeouts {
            for (k, id) in list.into_iter().flatten().enumerate() {
                claim(
                    cx,
                    format!("{p}.{kind}.on_timeout[{k}]"),
                    i,
                    id,
                    Ok(Handler::Timeout),
                );
            }
        }
        if s.switch.is_some() {
            for (key, v) in s.cases.iter().flatten() {
                let ids: Vec<(String, &str)> = match v {
                    Value::String(id) => vec![(format!("{p}.cases.{key}"), id.as_str())],
                    Value::Array(list) => {
                        let mut ids = Vec::new();
                        for (k, x) in list.iter().enumerate() {
                            match x.as_str() {
                                Some(id) => ids.push((format!("{p}.cases.{key}[{k}]"), id)),
                                None => {
                                    cx.err(format!("{p}.cases.{key}[{k}]"), "must be a step id")
                                }
                            }
                        }
                        ids
                    }
                    _ => {
                        cx.err(
                            format!("{p}.cases.{key}"),
                            "must be a step id or a list of step ids",
                        );
                        Vec::new()
                    }
                };
                for (path, id) in ids {
                    claim(cx, path, i, id, Err(key.clone()));
                }
            }
        }
    }
    roles
}

fn compile_trigger(
    def: &FlowDef,
    catalog: &dyn ActionCatalog,
    cx: &mut Ctx,
) -> Option<TriggerKind> {
    let t = &def.trigger;
    let set: Vec<&str> = [
        (t.webhook.is_some(), "webhook"),
        (t.poll.is_some(), "poll"),
        (t.schedule.is_some(), "schedule"),
        (t.manual.is_some(), "manual"),
        (t.event.is_some(), "event"),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect();
    if set.len() != 1 {
        cx.err(
            "trigger",
            format!(
                "exactly one trigger form is required (webhook, poll, schedule, manual or event); found {}",
                if set.is_empty() { "none".to_string() } else { set.join(", ") }
            ),
        );
        return None;
    }
    if let Some(w) = &t.webhook {
        let verify = compile_webhook_verify(w, catalog, cx);
        let respond_timeout = match &w.respond_timeout {
            Some(d) => cx.duration("trigger.webhook.respond_timeout", d)?,
            None => Duration::from_secs(10),
        };
        if respond_timeout > Duration::from_secs(60) {
            cx.err("trigger.webhook.respond_timeout", "must be at most 60s");
        }
        return Some(TriggerKind::Webhook {
            respond_timeout,
            verify: verify.map(Box::new),
        });
    }
    if let Some(s) = &t.schedule {
        let cron = match s.cron.parse::<croner::Cron>() {
            Ok(c) => Some(c),
            Err(e) => {
                cx.err(
                    "trigger.schedule.cron",
                    format!("'{}' is not a valid cron pattern: {e}", s.cron),
                );
                None
            }
        };
        let tz = match s
            .timezone
            .as_deref()
            .unwrap_or("UTC")
            .parse::<chrono_tz::Tz>()
        {
            Ok(tz) => Some(tz),
            Err(_) => {
                cx.err(
                    "trigger.schedule.timezone",
                    format!(
                        "'{}' is not an IANA time zone (e.g. UTC, Europe/Paris)",
                        s.timezone.as_deref().unwrap_or("")
                    ),
                );
                None
            }
        };
        return Some(TriggerKind::Schedule {
            cron: Box::new(cron?),
            tz: tz?,
        });
    }
    if t.manual.is_some() {
        return Some(TriggerKind::Manual);
    }
    if let Some(p) = &t.poll {
        return compile_poll(p, catalog, cx).map(|p| TriggerKind::Poll(Box::new(p)));
    }
    let e = t.event.clone().unwrap_or_default();
    let names = match (&e.name, &e.flow) {
        (Some(n), None) => {
            if e.status.is_some() {
                cx.err(
                    "trigger.event.status",
                    "`status` belongs with `flow` (which ends of the other flow's runs count)",
                );
            }
            if !valid_event_name(n) {
                cx.err(
                    "trigger.event.name",
                    "must be 1-100 characters: letters, digits, '-', '_', '.' or ':'",
                );
                return None;
            }
            vec![n.clone()]
        }
        (None, Some(f)) => {
            if !valid_name(f) {
                cx.err(
                    "trigger.event.flow",
                    "must be the name of a flow in this workspace",
                );
                return None;
            }
            if f == &def.name {
                cx.err(
                    "trigger.event.flow",
                    "a flow cannot be started by its own runs' ends",
                );
                return None;
            }
            let ends: &[&str] = match e.status.as_deref().unwrap_or("succeeded") {
                "succeeded" => &["succeeded"],
                "failed" => &["failed"],
                "finished" => &["succeeded", "failed"],
                _ => {
                    cx.err(
                        "trigger.event.status",
                        "must be `succeeded`, `failed` or `finished`",
                    );
                    return None;
                }
            };
            ends.iter().map(|s| run_end_event(f, s)).collect()
        }
        _ => {
            cx.err(
                "trigger.event",
                "give exactly one of `name` (an event name) or `flow` (another flow whose runs' ends start this one)",
            );
            return None;
        }
    };
    Some(TriggerKind::Event { names })
}

/// The event a run of `flow` publishes when it ends with `status` (`succeeded` / `failed`).
pub fn run_end_event(flow: &str, status: &str) -> String {
    format!("flow.{flow}.{status}")
}

/// Shortest poll interval: faster than this is a load test on someone else's API.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

fn compile_poll(p: &PollTrigger, catalog: &dyn ActionCatalog, cx: &mut Ctx) -> Option<PollSpec> {
    let path = "trigger.poll";
    let every = cx.duration(&format!("{path}.every"), &p.every);
    if every.is_some_and(|d| d < MIN_POLL_INTERVAL) {
        cx.err(format!("{path}.every"), "must be at least 1s");
    }
    let spec = p.action.as_deref().unwrap_or("http.request");
    let call = compile_call(
        path,
        spec,
        p.credential.as_ref(),
        p.input.as_ref(),
        catalog,
        cx,
    );
    // What the flow leaves out, the listing action's connector may say (an installed
    // connector's `poll:` hints); errors in those point at the action.
    let defaults = call
        .as_ref()
        .and_then(|c| catalog.poll_defaults(&c.connector, &c.action, c.version.as_deref()))
        .unwrap_or_default();
    let mut pick = |field: &str, own: &Option<String>, dflt: &Option<String>| match (own, dflt) {
        (Some(src), _) => cx.expr(&format!("{path}.{field}"), src).map(Some),
        (None, Some(src)) => cx.expr(&format!("{path}.action"), src).map(Some),
        (None, None) => Some(None),
    };
    let items = pick("items", &p.items, &defaults.items)?;
    let id = pick("id", &p.id, &defaults.id)?;
    let cursor = pick("cursor", &p.cursor, &defaults.cursor)?;
    let id = match id {
        Some(id) => id,
        None => cx.expr(&format!("{path}.id"), ".id")?,
    };
    let call = call?;
    Some(PollSpec {
        every: every?,
        connector: call.connector,
        action: call.action,
        version: call.version,
        input: call.input,
        credential: call.credential,
        items,
        id,
        cursor,
        since: p.since.clone(),
    })
}

#[allow(clippy::too_many_arguments)]
fn compile_step(
    prefix: &str,
    i: usize,
    s: &StepDef,
    index: &HashMap<&str, usize>,
    roles: &Roles,
    nested: bool,
    catalog: &dyn ActionCatalog,
    cx: &mut Ctx,
) -> Option<CompiledStep> {
    let p = format!("{prefix}[{i}]");
    let before = cx.errors.len();

    let handles = roles.handles.get(&i).copied();
    let case_of = roles.case_of.get(&i).cloned();
    let mut join_any = match s.join.as_deref() {
        None | Some("all") => false,
        Some("any") => true,
        Some(_) => {
            cx.err(format!("{p}.join"), "must be `all` or `any`");
            false
        }
    };
    // What a step needs is implied by its role; otherwise the previous step (handlers are not
    // in that chain, and a step after a switch's cases joins them all).
    let implied = handles
        .map(|(t, _)| t)
        .or(case_of.as_ref().map(|(sw, _)| *sw));
    let mut deps: Vec<usize> = match &s.needs {
        None => match (&case_of, implied) {
            (Some((sw, key)), _) => match i.checked_sub(1) {
                Some(prev) if roles.case_of.get(&prev) == Some(&(*sw, key.clone())) => vec![prev],
                _ => vec![*sw],
            },
            (None, Some(t)) => vec![t],
            (None, None) => {
                let prev = (0..i).rev().find(|j| !roles.handles.contains_key(j));
                match prev.and_then(|j| roles.case_of.get(&j).map(|c| c.0)) {
                    Some(sw) => {
                        if s.join.is_none() {
                            join_any = true;
                        }
                        let members: Vec<usize> = roles
                            .case_of
                            .iter()
                            .filter(|(_, (w, _))| *w == sw)
                            .map(|(j, _)| *j)
                            .collect();
                        let mut d = vec![sw];
                        d.extend(members.into_iter().filter(|&j| j < i));
                        d
                    }
                    None => prev.into_iter().collect(),
                }
            }
        },
        Some(needs) => {
            let mut deps = Vec::new();
            for (j, n) in needs.iter().enumerate() {
                match index.get(n.as_str()) {
                    Some(&k) if k == i => {
                        cx.err(format!("{p}.needs[{j}]"), "a step cannot need itself")
                    }
                    Some(&k) => deps.push(k),
                    None => cx.err(
                        format!("{p}.needs[{j}]"),
                        format!("no step has the id '{n}'"),
                    ),
                }
            }
            deps.extend(implied);
            deps
        }
    };
    deps.sort_unstable();
    deps.dedup();
    let condition = s
        .condition
        .as_deref()
        .and_then(|c| cx.expr(&format!("{p}.if"), c));
    let timeout = s
        .timeout
        .as_ref()
        .and_then(|t| cx.duration(&format!("{p}.timeout"), t));
    if s.credential.is_some() && s.action.is_none() {
        cx.err(
            format!("{p}.credential"),
            "only `action` steps take a credential",
        );
    }
    if s.rate_limit.is_some() && s.action.is_none() {
        cx.err(
            format!("{p}.rate_limit"),
            "only `action` steps take a rate limit",
        );
    }
    let kinds = s.kinds();
    if kinds.len() != 1 {
        cx.err(
            p.clone(),
            if kinds.is_empty() {
                "a step needs exactly one kind key: transform, action, code, switch, for_each, wait, approval, wait_for_event, subflow, respond, fail or emit".to_string()
            } else {
                format!("a step has exactly one kind key; found {}", kinds.join(", "))
            },
        );
        return None;
    }
    let kind_name = kinds[0];
    if s.input.is_some() && !matches!(kind_name, "action" | "subflow") {
        cx.err(
            format!("{p}.input"),
            "`input` belongs to `action` and `subflow` steps",
        );
    }
    if s.detach.is_some() && kind_name != "subflow" {
        cx.err(format!("{p}.detach"), "`detach` belongs to `subflow` steps");
    }
    if (s.cases.is_some()) && kind_name != "switch" {
        cx.err(format!("{p}.cases"), "`cases` belongs to `switch` steps");
    }
    if (s.steps.is_some() || s.concurrency.is_some() || s.collect.is_some())
        && kind_name != "for_each"
    {
        cx.err(
            format!("{p}.steps"),
            "`steps`, `concurrency` and `collect` belong to `for_each` steps",
        );
    }
    if nested
        && matches!(
            kind_name,
            "wait" | "approval" | "wait_for_event" | "subflow" | "respond" | "for_each"
        )
    {
        cx.err(
            format!("{p}.{kind_name}"),
            format!("`{kind_name}` steps cannot run inside a for_each; put them before or after the loop"),
        );
        return None;
    }

    let mut retry = RetryPolicy::none();
    let kind = match kind_name {
        "transform" => s
            .transform
            .as_deref()
            .and_then(|t| cx.expr(&format!("{p}.transform"), t))
            .map(StepKind::Transform),
        "action" => {
            retry = RetryPolicy::action_default();
            compile_action(&p, s, catalog, cx)
        }
        "respond" => {
            let r = s.respond.clone().unwrap_or_default();
            let status = cx.tvalue(
                &format!("{p}.respond.status"),
                &r.status.unwrap_or(Value::from(200)),
            );
            if let Some(Value::Number(n)) = &s.respond.as_ref().and_then(|r| r.status.clone())
                && !n.as_u64().is_some_and(|n| (200..=599).contains(&n))
            {
                cx.err(
                    format!("{p}.respond.status"),
                    "must be an HTTP status between 200 and 599",
                );
            }
            let headers = cx.tvalue(
                &format!("{p}.respond.headers"),
                &Value::Object(r.headers.unwrap_or_default()),
            );
            let body = cx.tvalue(&format!("{p}.respond.body"), &r.body.unwrap_or(Value::Null));
            Some(StepKind::Respond {
                status: status?,
                headers: headers?,
                body: body?,
            })
        }
        "fail" => s
            .fail
            .as_deref()
            .and_then(|m| cx.tvalue(&format!("{p}.fail"), &Value::String(m.to_string())))
            .map(StepKind::Fail),
        "switch" => compile_switch(&p, s, cx),
        "subflow" => {
            let flow = s.subflow.clone().unwrap_or_default();
            if !valid_name(&flow) {
                cx.err(
                    format!("{p}.subflow"),
                    "must be the name of a flow in this workspace",
                );
            }
            let input = cx.tvalue(
                &format!("{p}.input"),
                s.input
                    .as_ref()
                    .unwrap_or(&Value::Object(Default::default())),
            );
            Some(StepKind::Subflow {
                flow,
                input: input?,
                detach: s.detach.unwrap_or(false),
            })
        }
        "code" => match s.code.as_deref() {
            Some(c) if c.trim().is_empty() => {
                cx.err(
                    format!("{p}.code"),
                    "must hold JavaScript that returns the step's output",
                );
                None
            }
            Some(c) if c.len() > MAX_CODE_BYTES => {
                cx.err(
                    format!("{p}.code"),
                    format!("is {} bytes; the limit is {MAX_CODE_BYTES}", c.len()),
                );
                None
            }
            Some(c) => Some(StepKind::Code(c.to_string())),
            None => None,
        },
        "wait" => match &s.wait {
            Some(crate::model::WaitDef::For(d)) => cx
                .duration(&format!("{p}.wait"), d)
                .map(|d| StepKind::Wait(WaitSpec::For(d))),
            Some(crate::model::WaitDef::Until { until }) => cx
                .expr(&format!("{p}.wait.until"), until)
                .map(|e| StepKind::Wait(WaitSpec::Until(e))),
            None => None,
        },
        "approval" => {
            let a = s.approval.clone().unwrap_or_default();
            let timeout = a
                .timeout
                .as_ref()
                .and_then(|t| cx.duration(&format!("{p}.approval.timeout"), t));
            let message = match &a.message {
                Some(m) => {
                    Some(cx.tvalue(&format!("{p}.approval.message"), &Value::String(m.clone()))?)
                }
                None => None,
            };
            Some(StepKind::Signal(SignalWait {
                names: vec![s.id.clone()],
                timeout,
                approval: true,
                message,
                event: None,
                key: None,
            }))
        }
        "wait_for_event" => {
            let w = s.wait_for_event.clone().unwrap_or_default();
            let timeout = w
                .timeout
                .as_ref()
                .and_then(|t| cx.duration(&format!("{p}.wait_for_event.timeout"), t));
            let mut names = vec![s.id.clone()];
            let key = match &w.key {
                Some(_) if w.event.is_none() => {
                    cx.err(
                        format!("{p}.wait_for_event.key"),
                        "`key` needs `event`: it selects which events of that name resume the step",
                    );
                    None
                }
                Some(k) => Some(cx.tvalue(
                    &format!("{p}.wait_for_event.key"),
                    &Value::String(k.clone()),
                )?),
                None => None,
            };
            if let Some(e) = &w.event {
                if valid_signal_name(e) {
                    if e != &s.id {
                        names.push(e.clone());
                    }
                } else {
                    cx.err(
                        format!("{p}.wait_for_event.event"),
                        "must be 1-100 characters: letters, digits, '-', '_', '.' or ':'",
                    );
                }
            }
            Some(StepKind::Signal(SignalWait {
                names,
                timeout,
                approval: false,
                message: None,
                event: w.event.clone().filter(|e| valid_signal_name(e)),
                key,
            }))
        }
        "emit" => {
            let e = s.emit.clone().unwrap_or_default();
            if !valid_event_name(&e.event) {
                cx.err(
                    format!("{p}.emit.event"),
                    "must be 1-100 characters: letters, digits, '-', '_', '.' or ':'",
                );
            }
            let data = cx.tvalue(&format!("{p}.emit.data"), &e.data.unwrap_or(Value::Null));
            let key = match &e.key {
                Some(k) => Some(cx.tvalue(&format!("{p}.emit.key"), &Value::String(k.clone()))?),
                None => None,
            };
            Some(StepKind::Emit {
                event: e.event,
                data: data?,
                key,
            })
        }
        "for_each" => {
            let list = match s.for_each.as_ref() {
                Some(ForEachDef::List(e)) => {
                    cx.expr(&format!("{p}.for_each"), e).map(ItemSource::List)
                }
                Some(ForEachDef::OutputsOf { outputs_of }) => {
                    match index.get(outputs_of.as_str()) {
                        Some(&k) if k != i => {
                            deps.push(k);
                            deps.sort_unstable();
                            deps.dedup();
                            Some(ItemSource::OutputsOf {
                                step: outputs_of.clone(),
                                idx: k,
                            })
                        }
                        _ => {
                            cx.err(
                            format!("{p}.for_each.outputs_of"),
                            format!("must name another for_each step of this list; '{outputs_of}' is not one"),
                        );
                            None
                        }
                    }
                }
                None => None,
            };
            let concurrency = s.concurrency.unwrap_or(1);
            if !(1..=100).contains(&concurrency) {
                cx.err(format!("{p}.concurrency"), "must be between 1 and 100");
            }
            if s.steps.as_ref().is_none_or(|v| v.is_empty()) {
                cx.err(
                    format!("{p}.steps"),
                    "a for_each needs `steps` to run for each item",
                );
            } else if s.steps.as_ref().is_some_and(|v| v.len() > MAX_STEPS) {
                cx.err(
                    format!("{p}.steps"),
                    format!("a for_each may have at most {MAX_STEPS} steps"),
                );
            }
            // The nested steps are compiled by `compile_steps` once this list compiled.
            list.map(|list| {
                StepKind::ForEach(Box::new(ForEachSpec {
                    list,
                    steps: Vec::new(),
                    concurrency: concurrency as usize,
                    collect: s.collect.unwrap_or(true),
                }))
            })
        }
        other => {
            cx.err(
                format!("{p}.{other}"),
                format!("`{other}` steps are not available in this version of Weft yet"),
            );
            None
        }
    };
    if let Some(r) = &s.retry {
        retry = compile_retry(&p, r, retry, cx);
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(CompiledStep {
        id: s.id.clone(),
        deps,
        condition,
        retry,
        timeout,
        continue_on_error: s.continue_on_error.unwrap_or(false),
        join_any,
        on_error: s
            .on_error
            .iter()
            .flatten()
            .filter_map(|id| index.get(id.as_str()).copied())
            .collect(),
        on_timeout: [
            s.approval.as_ref().and_then(|a| a.on_timeout.as_ref()),
            s.wait_for_event
                .as_ref()
                .and_then(|a| a.on_timeout.as_ref()),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|id| index.get(id.as_str()).copied())
        .collect(),
        handles,
        case_of,
        compensate: Vec::new(),
        kind: kind?,
    })
}

/// Whether `s` can name an event or a signal: 1-100 letters, digits, `-`, `_`, `.` or `:`.
pub fn valid_event_name(s: &str) -> bool {
    valid_signal_name(s)
}

/// Signal names: what `POST …/signals/{name}` can carry in a path segment.
fn valid_signal_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn compile_switch(p: &str, s: &StepDef, cx: &mut Ctx) -> Option<StepKind> {
    let expr = s
        .switch
        .as_deref()
        .and_then(|e| cx.expr(&format!("{p}.switch"), e));
    let cases: Vec<String> = s.cases.iter().flatten().map(|(k, _)| k.clone()).collect();
    if cases.is_empty() {
        cx.err(
            format!("{p}.cases"),
            "a switch needs `cases`: {value: [step ids], …, default: [step ids]}",
        );
    }
    Some(StepKind::Switch { expr: expr?, cases })
}

fn compile_action(
    p: &str,
    s: &StepDef,
    catalog: &dyn ActionCatalog,
    cx: &mut Ctx,
) -> Option<StepKind> {
    let rate_limit = s
        .rate_limit
        .as_ref()
        .and_then(|r| compile_rate_limit(&format!("{p}.rate_limit"), r, cx));
    let call = compile_call(
        p,
        s.action.as_deref().unwrap_or_default(),
        s.credential.as_ref(),
        s.input.as_ref(),
        catalog,
        cx,
    )?;
    Some(StepKind::Action {
        connector: call.connector,
        action: call.action,
        version: call.version,
        input: call.input,
        credential: call.credential,
        rate_limit,
    })
}

/// An action call as a step or a poll trigger writes it.
struct Call {
    connector: String,
    action: String,
    version: Option<String>,
    input: TValue,
    credential: Option<String>,
}

/// `action:` (`connector.action[@version]`), `credential:` and `input:` at `p`.
fn compile_call(
    p: &str,
    spec: &str,
    credential: Option<&String>,
    input: Option<&Value>,
    catalog: &dyn ActionCatalog,
    cx: &mut Ctx,
) -> Option<Call> {
    let (name, version) = match spec.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    let Some((connector, action)) = name.split_once('.') else {
        cx.err(
            format!("{p}.action"),
            format!("'{spec}' must be written connector.action, e.g. http.request"),
        );
        return None;
    };
    if let Some(v) = version
        && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    {
        cx.err(
            format!("{p}.action"),
            format!("'{v}' is not a version (use e.g. http.request@1.0.0)"),
        );
        return None;
    }
    let Some(facts) = catalog.action(connector, action, version) else {
        cx.err(
            format!("{p}.action"),
            format!(
                "unknown action '{name}'{}; `weft connectors list` shows the available ones",
                version
                    .map(|v| format!(" at version {v}"))
                    .unwrap_or_default()
            ),
        );
        return None;
    };
    let credential = credential.cloned();
    match (&credential, facts.credential) {
        (Some(c), _) if !valid_credential_name(c) => cx.err(
            format!("{p}.credential"),
            "must be a credential name: letters, digits, '-', '_' or '.'",
        ),
        (None, CredentialUse::Required) => cx.err(
            format!("{p}.credential"),
            format!("`{name}` needs a credential: name a {connector} credential (`weft credentials list` shows them)"),
        ),
        (Some(_), CredentialUse::None) => cx.err(
            format!("{p}.credential"),
            format!("`{name}` takes no credential; remove it"),
        ),
        _ => {}
    }
    let input = cx.tvalue(
        &format!("{p}.input"),
        input.unwrap_or(&Value::Object(Default::default())),
    )?;
    Some(Call {
        connector: connector.into(),
        action: action.into(),
        version: version.map(Into::into),
        input,
        credential,
    })
}

fn compile_retry(
    p: &str,
    r: &crate::model::RetryDef,
    mut base: RetryPolicy,
    cx: &mut Ctx,
) -> RetryPolicy {
    if let Some(n) = r.max_attempts {
        if n == 0 || n > 100 {
            cx.err(
                format!("{p}.retry.max_attempts"),
                "must be between 1 and 100",
            );
        }
        base.max_attempts = n;
    } else if base.max_attempts == 1 {
        base.max_attempts = 3;
    }
    if let Some(d) = &r.initial
        && let Some(d) = cx.duration(&format!("{p}.retry.initial"), d)
    {
        base.initial = d;
    }
    if let Some(b) = r.backoff {
        if !(1.0..=10.0).contains(&b) {
            cx.err(format!("{p}.retry.backoff"), "must be between 1.0 and 10.0");
        }
        base.backoff = b;
    }
    if let Some(d) = &r.max
        && let Some(d) = cx.duration(&format!("{p}.retry.max"), d)
    {
        base.max = d;
    }
    if base.max < base.initial {
        cx.err(
            format!("{p}.retry.max"),
            "must not be shorter than `initial`",
        );
    }
    base
}

/// Kahn's algorithm over `needs`; reports the steps on a cycle.
fn check_cycles(prefix: &str, steps: &[CompiledStep], cx: &mut Ctx) {
    let n = steps.len();
    let mut indegree: Vec<usize> = steps.iter().map(|s| s.deps.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in steps.iter().enumerate() {
        for &d in &s.deps {
            dependents[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut seen = 0;
    while let Some(i) = ready.pop() {
        seen += 1;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    if seen != n {
        let cyc: Vec<&str> = (0..n)
            .filter(|&i| indegree[i] > 0)
            .map(|i| steps[i].id.as_str())
            .collect();
        let first = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
        cx.err(
            format!("{prefix}[{first}].needs"),
            format!("`needs` forms a cycle through steps: {}", cyc.join(", ")),
        );
    }
}

fn compile_webhook_verify(
    w: &crate::model::WebhookTrigger,
    catalog: &dyn ActionCatalog,
    cx: &mut Ctx,
) -> Option<WebhookVerify> {
    let Some(connector) = &w.connector else {
        if w.credential.is_some() {
            cx.err("trigger.webhook.credential", "a credential verifies signatures, which needs `connector` (e.g. github, stripe, slack, webhook)");
        }
        if w.events.is_some() {
            cx.err(
                "trigger.webhook.events",
                "event filters need a `connector` that names events (e.g. github)",
            );
        }
        if w.signature.is_some() {
            cx.err(
                "trigger.webhook.signature",
                "a signature scheme needs `connector: webhook`",
            );
        }
        return None;
    };
    let Some(own) = catalog.webhook_scheme(connector) else {
        cx.err(
            "trigger.webhook.connector",
            format!(
                "'{connector}' has no webhook trigger; use one of: {}",
                catalog.webhook_connectors().join(", ")
            ),
        );
        return None;
    };
    let credential = match &w.credential {
        Some(c) if valid_credential_name(c) => Some(c.clone()),
        Some(_) => {
            cx.err(
                "trigger.webhook.credential",
                "must be a credential name: letters, digits, '-', '_' or '.'",
            );
            None
        }
        None => {
            cx.err(
                "trigger.webhook.credential",
                format!("a {connector} webhook is verified with a signing secret: name the {connector} credential that holds it"),
            );
            None
        }
    };
    let (scheme, hmac) = match (own.as_str(), &w.signature) {
        ("configurable", Some(crate::model::SignatureDef::Named(n)))
            if n == "standard-webhooks" || n == "shopify" =>
        {
            (n.clone(), None)
        }
        ("configurable", Some(crate::model::SignatureDef::Named(n))) => {
            cx.err(
                "trigger.webhook.signature",
                format!("'{n}' is not a scheme: use standard-webhooks, shopify, or {{header: …}} for a plain HMAC"),
            );
            return None;
        }
        ("configurable", Some(crate::model::SignatureDef::Hmac(h))) => {
            let mut ok = true;
            if h.header.is_empty()
                || h.header.len() > 100
                || !h
                    .header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                cx.err(
                    "trigger.webhook.signature.header",
                    "must be an HTTP header name",
                );
                ok = false;
            }
            if let Some(a) = &h.algorithm
                && !["sha256", "sha1", "sha512"].contains(&a.as_str())
            {
                cx.err(
                    "trigger.webhook.signature.algorithm",
                    "must be sha256, sha1 or sha512",
                );
                ok = false;
            }
            if let Some(e) = &h.encoding
                && !["hex", "base64"].contains(&e.as_str())
            {
                cx.err(
                    "trigger.webhook.signature.encoding",
                    "must be hex or base64",
                );
                ok = false;
            }
            if h.prefix.as_ref().is_some_and(|p| p.len() > 50) {
                cx.err(
                    "trigger.webhook.signature.prefix",
                    "must be at most 50 characters",
                );
                ok = false;
            }
            if !ok {
                return None;
            }
            ("hmac".to_string(), Some(h.clone()))
        }
        ("configurable", None) => {
            cx.err(
                "trigger.webhook.signature",
                "`connector: webhook` needs `signature`: standard-webhooks, shopify, or {header: …} for a plain HMAC",
            );
            return None;
        }
        (_, Some(_)) => {
            cx.err(
                "trigger.webhook.signature",
                format!("{connector} deliveries are always verified with {connector}'s own scheme; remove `signature`"),
            );
            return None;
        }
        ("hmac", None) => match catalog.webhook_hmac(connector) {
            Some(h) => ("hmac".to_string(), Some(h)),
            None => {
                cx.err(
                    "trigger.webhook.connector",
                    format!("'{connector}' declares an HMAC signature without describing it; reinstall it with `triggers[].hmac`"),
                );
                return None;
            }
        },
        (own, None) => (own.to_string(), None),
    };
    let mut events = Vec::new();
    if let Some(list) = &w.events {
        if list.is_empty() || list.len() > MAX_EVENTS {
            cx.err(
                "trigger.webhook.events",
                format!(
                    "list 1-{MAX_EVENTS} event names, or leave `events` out to accept every event"
                ),
            );
        }
        for (i, e) in list.iter().enumerate() {
            if e.is_empty()
                || e.len() > 100
                || !e
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-*:".contains(&b))
            {
                cx.err(
                    format!("trigger.webhook.events[{i}]"),
                    "must be an event name such as issues.opened (letters, digits, '.', '_', '-')",
                );
            } else {
                events.push(e.clone());
            }
        }
    }
    Some(WebhookVerify {
        connector: connector.clone(),
        credential: credential?,
        scheme,
        hmac,
        events,
    })
}

/// `rate_limit: {per_second | per_minute, burst}` of an action step.
fn compile_rate_limit(
    p: &str,
    r: &serde_json::Map<String, Value>,
    cx: &mut Ctx,
) -> Option<(f64, u32)> {
    if let Some(k) = r
        .keys()
        .find(|k| !["per_second", "per_minute", "burst"].contains(&k.as_str()))
    {
        cx.err(
            format!("{p}.{k}"),
            "unknown key; use per_second or per_minute, and burst",
        );
        return None;
    }
    let rate = match (r.get("per_second"), r.get("per_minute")) {
        (Some(v), None) => v.as_f64(),
        (None, Some(v)) => v.as_f64().map(|m| m / 60.0),
        _ => {
            cx.err(p, "give exactly one of per_second or per_minute");
            return None;
        }
    };
    let Some(rate) = rate.filter(|x| x.is_finite() && *x > 0.0 && *x <= 10_000.0) else {
        cx.err(
            p,
            "the rate must be a number above 0 and at most 10000 per second",
        );
        return None;
    };
    let burst = match r.get("burst") {
        None => 1,
        Some(b) => match b.as_u64().filter(|b| (1..=10_000).contains(b)) {
            Some(b) => b as u32,
            None => {
                cx.err(format!("{p}.burst"), "must be an integer from 1 to 10000");
                return None;
            }
        },
    };
    Some((rate, burst))
}
