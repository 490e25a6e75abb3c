//! Connectors installed into a workspace: declarative manifests (HTTP requests described by
//! templates), their validation at install, the per-workspace catalog flows compile against,
//! version pinning at save, and the runtime that executes their actions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use weft_connectors::manifest::{self, Manifest};
use weft_connectors::{ActionError, manifest::ActionSpec};
use weft_expr::{Expr, TValue};
use weft_flow::{ActionCatalog, ActionFacts, CredentialUse, FieldError, FlowDef};
use weft_store::Actor;
use weft_types::Scope;

use crate::flows::ActionRegistry;
use crate::{Engine, EngineError, Inner};

/// Largest manifest accepted, in bytes of JSON.
pub const MAX_MANIFEST_BYTES: usize = manifest::MAX_MANIFEST_BYTES;
/// How long a workspace's catalog is trusted before it is read again (other processes install).
const CATALOG_TTL: Duration = Duration::from_secs(2);
const DEFAULT_MAX_PAGES: u32 = 10;

/// The built-in connectors plus those installed in one workspace: what its flows compile
/// against and its steps run.
#[derive(Debug, Default)]
pub struct WorkspaceCatalog {
    /// Installed manifests, every version.
    installed: Vec<Arc<Manifest>>,
}

impl WorkspaceCatalog {
    /// An installed connector at `version` (a prefix pin), or its newest version.
    pub fn installed(&self, name: &str, version: Option<&str>) -> Option<&Arc<Manifest>> {
        self.installed
            .iter()
            .filter(|m| {
                m.name == name && version.is_none_or(|v| manifest::version_matches(&m.version, v))
            })
            .max_by_key(|m| semver_key(&m.version))
    }

    /// Every installed manifest.
    pub fn all_installed(&self) -> &[Arc<Manifest>] {
        &self.installed
    }

    /// A connector by name, built in or installed (newest version), for credentials.
    pub fn connector(&self, name: &str) -> Option<Arc<Manifest>> {
        builtin_shared()
            .iter()
            .find(|m| m.name == name)
            .or_else(|| self.installed(name, None))
            .cloned()
    }
}

/// The built-in manifests, shared: opening a credential for a step must not copy its manifest.
fn builtin_shared() -> &'static [Arc<Manifest>] {
    static CELL: std::sync::OnceLock<Vec<Arc<Manifest>>> = std::sync::OnceLock::new();
    CELL.get_or_init(|| manifest::builtin().iter().cloned().map(Arc::new).collect())
}

fn semver_key(v: &str) -> (u64, u64, u64) {
    let mut it = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

fn credential_use(a: &ActionSpec) -> CredentialUse {
    match a.credential.as_str() {
        "required" => CredentialUse::Required,
        "none" => CredentialUse::None,
        _ => CredentialUse::Optional,
    }
}

impl ActionCatalog for WorkspaceCatalog {
    fn action(&self, connector: &str, action: &str, version: Option<&str>) -> Option<ActionFacts> {
        if manifest::find(connector, None).is_some() {
            return ActionRegistry.action(connector, action, version);
        }
        let m = self.installed(connector, version)?;
        Some(ActionFacts {
            credential: credential_use(m.action(action)?),
        })
    }

    fn webhook_scheme(&self, connector: &str) -> Option<String> {
        if manifest::find(connector, None).is_some() {
            return ActionRegistry.webhook_scheme(connector);
        }
        self.installed(connector, None)?
            .webhook_signature()
            .map(str::to_string)
    }

    fn webhook_connectors(&self) -> Vec<String> {
        let mut names = ActionRegistry.webhook_connectors();
        for m in &self.installed {
            if m.webhook_signature().is_some() && !names.contains(&m.name) {
                names.push(m.name.clone());
            }
        }
        names
    }

    fn webhook_hmac(&self, connector: &str) -> Option<weft_flow::HmacDef> {
        let h = self
            .installed(connector, None)?
            .webhook_trigger()?
            .hmac
            .clone()?;
        Some(weft_flow::HmacDef {
            header: h.header,
            algorithm: h.algorithm,
            encoding: h.encoding,
            prefix: h.prefix,
        })
    }

    fn poll_defaults(
        &self,
        connector: &str,
        action: &str,
        version: Option<&str>,
    ) -> Option<weft_flow::PollDefaults> {
        let m = match manifest::find(connector, None) {
            Some(m) => m,
            None => self.installed(connector, version)?,
        };
        let h = m.action(action)?.poll.clone()?;
        Some(weft_flow::PollDefaults {
            items: h.items,
            id: h.id,
            cursor: h.cursor,
        })
    }
}

/// Cached catalogs per workspace.
#[derive(Default)]
pub(crate) struct CatalogCache(std::sync::Mutex<HashMap<Scope, (Arc<WorkspaceCatalog>, Instant)>>);

impl Inner {
    /// The workspace's catalog (cached briefly; an install in this process refreshes it).
    pub(crate) async fn catalog(&self, scope: Scope) -> Result<Arc<WorkspaceCatalog>, EngineError> {
        if let Some(c) = self.catalogs.0.lock().ok().and_then(|m| {
            m.get(&scope)
                .filter(|(_, at)| at.elapsed() < CATALOG_TTL)
                .map(|(c, _)| c.clone())
        }) {
            return Ok(c);
        }
        let rows = self.opts.store.installed_connectors(scope).await?;
        let mut installed = Vec::with_capacity(rows.len());
        for r in rows {
            match serde_json::from_value::<Manifest>(r.manifest) {
                Ok(m) => installed.push(Arc::new(m)),
                Err(e) => {
                    tracing::warn!(connector = %r.name, version = %r.version, "stored manifest does not parse: {e}")
                }
            }
        }
        let c = Arc::new(WorkspaceCatalog { installed });
        if let Ok(mut m) = self.catalogs.0.lock() {
            if m.len() >= 10_000 {
                m.clear();
            }
            m.insert(scope, (c.clone(), Instant::now()));
        }
        Ok(c)
    }

    fn forget_catalog(&self, scope: Scope) {
        if let Ok(mut m) = self.catalogs.0.lock() {
            m.remove(&scope);
        }
    }
}

/// Writes the installed version into every unpinned action of an installed connector, so a
/// flow version keeps running the connector version it was saved with.
pub(crate) fn pin_actions(def: &mut FlowDef, catalog: &WorkspaceCatalog) {
    let pin = |spec: &mut String| {
        if spec.contains('@') {
            return;
        }
        let Some((connector, _)) = spec.split_once('.') else {
            return;
        };
        if manifest::find(connector, None).is_some() {
            return;
        }
        if let Some(m) = catalog.installed(connector, None) {
            *spec = format!("{spec}@{}", m.version);
        }
    };
    for s in &mut def.steps {
        if let Some(spec) = &mut s.action {
            pin(spec);
        }
    }
    if let Some(spec) = def.trigger.poll.as_mut().and_then(|p| p.action.as_mut()) {
        pin(spec);
    }
}

/// Every template and jq program of a declarative manifest compiles; paths name the field.
fn check_templates(m: &Manifest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut tv = |path: String, v: &Value| {
        if let Err(errs) = TValue::compile(v) {
            for (p, e) in errs {
                let at = format!("{path}{}", weft_flow::pointer_to_path(&p));
                errors.push(FieldError::new(
                    at,
                    format!("template does not compile: {e}"),
                ));
            }
        }
    };
    if let Some(b) = &m.base_url {
        tv("base_url".into(), &Value::String(b.clone()));
    }
    if let Some(inj) = &m.auth.inject {
        tv(
            "auth.inject.headers".into(),
            &Value::Object(inj.headers.clone()),
        );
        tv(
            "auth.inject.query".into(),
            &Value::Object(inj.query.clone()),
        );
    }
    for (i, a) in m.actions.iter().enumerate() {
        let Some(r) = &a.request else { continue };
        let p = format!("actions[{i}].request");
        tv(format!("{p}.path"), &Value::String(r.path.clone()));
        tv(format!("{p}.headers"), &Value::Object(r.headers.clone()));
        tv(format!("{p}.query"), &Value::Object(r.query.clone()));
        if let Some(b) = &r.body {
            tv(format!("{p}.body"), b);
        }
    }
    for (i, a) in m.actions.iter().enumerate() {
        let mut jq = |path: String, src: &str| {
            if let Err(e) = Expr::compile(src) {
                errors.push(FieldError::new(
                    path,
                    format!("expression does not compile: {e}"),
                ));
            }
        };
        if let Some(o) = &a.output {
            jq(format!("actions[{i}].output"), o);
        }
        if let Some(pg) = &a.pagination {
            jq(format!("actions[{i}].pagination.items"), &pg.items);
            jq(format!("actions[{i}].pagination.next"), &pg.next);
        }
        if let Some(h) = &a.poll {
            for (field, src) in [("items", &h.items), ("id", &h.id), ("cursor", &h.cursor)] {
                if let Some(src) = src {
                    jq(format!("actions[{i}].poll.{field}"), src);
                }
            }
        }
    }
    errors
}

/// Parses and checks a manifest to install; every problem is reported with its path.
pub fn check_manifest(value: Value) -> Result<Manifest, EngineError> {
    let size = value.to_string().len();
    if size > MAX_MANIFEST_BYTES {
        return Err(EngineError::BadInput(vec![FieldError::new(
            "",
            format!("the manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES}"),
        )]));
    }
    if !value.is_object() {
        return Err(EngineError::BadInput(vec![FieldError::new(
            "",
            "a manifest is an object with name, version, title, description, auth and actions",
        )]));
    }
    let m: Manifest = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        EngineError::BadInput(vec![FieldError::new(path, e.into_inner().to_string())])
    })?;
    let mut errors: Vec<FieldError> = Vec::new();
    let mut push = |r: Result<(), Vec<manifest::ManifestError>>| {
        if let Err(es) = r {
            errors.extend(es.into_iter().map(|e| FieldError::new(e.path, e.message)));
        }
    };
    push(m.validate());
    push(m.validate_declarative());
    errors.extend(check_templates(&m));
    if errors.is_empty() {
        Ok(m)
    } else {
        Err(EngineError::BadInput(errors))
    }
}

impl Engine {
    /// Installs a declarative connector version into a workspace; true when new (installing
    /// the same manifest again changes nothing; another manifest under that version is 409).
    pub async fn install_connector(
        &self,
        scope: Scope,
        value: Value,
        actor: Actor,
    ) -> Result<(Manifest, bool), EngineError> {
        let m = check_manifest(value)?;
        let stored = serde_json::to_value(&m)
            .map_err(|e| EngineError::Conflict(format!("cannot store the manifest: {e}")))?;
        let created = self
            .store()
            .install_connector(
                scope,
                &m.name,
                &m.version,
                stored,
                actor,
                self.clock().now_ms(),
            )
            .await?;
        self.inner.forget_catalog(scope);
        Ok((m, created))
    }

    /// The workspace's catalog: built-in and installed connectors.
    pub async fn catalog(&self, scope: Scope) -> Result<Arc<WorkspaceCatalog>, EngineError> {
        self.inner.catalog(scope).await
    }
}

/// What a declarative action failed with.
pub(crate) enum DeclarativeError {
    /// The provider or the network (classified as `http.request` classifies).
    Action(ActionError),
    /// A template or jq program failed: permanent.
    Expr(String),
}

fn object(v: Value, what: &str) -> Result<Map<String, Value>, DeclarativeError> {
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(DeclarativeError::Expr(format!(
            "{what} must render to an object, got {other}"
        ))),
    }
}

async fn render(
    inner: &Inner,
    v: &Value,
    ctx: &Value,
    what: &str,
) -> Result<Value, DeclarativeError> {
    let t = TValue::compile(v).map_err(|errs| {
        DeclarativeError::Expr(format!(
            "{what}: template does not compile: {}",
            errs.first().map(|(_, e)| e.to_string()).unwrap_or_default()
        ))
    })?;
    inner
        .render(&t, ctx)
        .await
        .map_err(|e| DeclarativeError::Expr(format!("{what}: {e}")))
}

async fn jq(
    inner: &Inner,
    src: &str,
    input: &Value,
    what: &str,
) -> Result<Value, DeclarativeError> {
    let e = Expr::compile(src)
        .map_err(|e| DeclarativeError::Expr(format!("{what}: expression does not compile: {e}")))?;
    inner
        .eval(&e, input)
        .await
        .map_err(|e| DeclarativeError::Expr(format!("{what}: {e}")))
}

fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => weft_expr::to_text(&other),
    }
}

/// Runs one action of a declarative connector: renders its request, sends it through the
/// guarded client with the step's idempotency key, follows pagination, maps the output.
pub(crate) async fn run_declarative(
    inner: &Inner,
    m: &Manifest,
    spec: &ActionSpec,
    input: &Value,
    credential: Option<&weft_vault::SecretValues>,
    key: &str,
) -> Result<Value, DeclarativeError> {
    let name = format!("{}.{}", m.name, spec.name);
    weft_connectors::providers::check_input(m, spec, input).map_err(DeclarativeError::Action)?;
    let Some(req) = &spec.request else {
        return Err(DeclarativeError::Expr(format!("{name} has no request")));
    };
    let mut cred = Map::new();
    if let Some(values) = credential {
        for f in values.names() {
            if let Some(v) = values.get(&f) {
                cred.insert(f, Value::String(v.expose().to_string()));
            }
        }
    }
    for f in &m.auth.fields {
        if let Some(d) = &f.default {
            cred.entry(f.name.clone())
                .or_insert_with(|| Value::String(d.clone()));
        }
    }
    let ctx = json!({"input": input, "credential": cred});
    let base = text(
        render(
            inner,
            &Value::String(m.base_url.clone().unwrap_or_default()),
            &ctx,
            &format!("{name}: base_url"),
        )
        .await?,
    );
    let path = text(
        render(
            inner,
            &Value::String(req.path.clone()),
            &ctx,
            &format!("{name}: request.path"),
        )
        .await?,
    );
    let mut headers = object(
        render(
            inner,
            &Value::Object(req.headers.clone()),
            &ctx,
            &format!("{name}: request.headers"),
        )
        .await?,
        "request.headers",
    )?;
    let mut query = object(
        render(
            inner,
            &Value::Object(req.query.clone()),
            &ctx,
            &format!("{name}: request.query"),
        )
        .await?,
        "request.query",
    )?;
    if let Some(inj) = &m.auth.inject {
        headers.extend(object(
            render(
                inner,
                &Value::Object(inj.headers.clone()),
                &ctx,
                &format!("{name}: auth.inject.headers"),
            )
            .await?,
            "auth.inject.headers",
        )?);
        query.extend(object(
            render(
                inner,
                &Value::Object(inj.query.clone()),
                &ctx,
                &format!("{name}: auth.inject.query"),
            )
            .await?,
            "auth.inject.query",
        )?);
    }
    let body = match &req.body {
        Some(b) => Some(render(inner, b, &ctx, &format!("{name}: request.body")).await?),
        None => None,
    };
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let mut request = json!({"method": req.method, "url": url, "headers": headers, "query": query});
    if let Some(b) = body {
        request["body"] = b;
    }
    let first = send(inner, &request, key, &name).await?;
    let Some(pg) = &spec.pagination else {
        return match &spec.output {
            Some(o) => jq(inner, o, &first, &format!("{name}: output")).await,
            None => Ok(first.get("body").cloned().unwrap_or(Value::Null)),
        };
    };
    let mut items = Vec::new();
    let mut page = first;
    let max = pg.max_pages.unwrap_or(DEFAULT_MAX_PAGES);
    for n in 1..=max {
        match jq(
            inner,
            &pg.items,
            &page,
            &format!("{name}: pagination.items"),
        )
        .await?
        {
            Value::Array(a) => items.extend(a),
            Value::Null => {}
            other => {
                return Err(DeclarativeError::Expr(format!(
                    "{name}: pagination.items must yield a list, got {other}"
                )));
            }
        }
        let next = jq(inner, &pg.next, &page, &format!("{name}: pagination.next")).await?;
        if n == max || matches!(&next, Value::Null) || next.as_str() == Some("") {
            break;
        }
        request["query"][pg.param.as_str()] = Value::String(text(next));
        page = send(inner, &request, key, &name).await?;
    }
    let collected = json!({"status": page["status"], "headers": page["headers"], "body": page["body"], "items": items});
    match &spec.output {
        Some(o) => jq(inner, o, &collected, &format!("{name}: output")).await,
        None => Ok(json!({"items": collected["items"]})),
    }
}

/// Sends one rendered request as `http.request` does (network guard, idempotency key).
async fn send(
    inner: &Inner,
    request: &Value,
    key: &str,
    name: &str,
) -> Result<Value, DeclarativeError> {
    weft_connectors::http_request(&inner.opts.http, request, key)
        .await
        .map_err(|e| DeclarativeError::Action(e.renamed("http.request", name)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn acme() -> Value {
        json!({
            "name": "acme", "version": "1.2.0", "title": "Acme", "description": "d",
            "base_url": "https://api.acme.test/v1",
            "auth": {"scheme": "bearer", "fields": [{"name": "token", "secret": true}],
                     "inject": {"headers": {"Authorization": "Bearer {{ .credential.token }}"}}},
            "actions": [{
                "name": "get_item", "description": "d", "credential": "required",
                "input_schema": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
                "output_schema": {"type": "object"},
                "request": {"method": "GET", "path": "/items/{{ .input.id }}"},
                "output": ".body.item"
            }]
        })
    }

    #[test]
    fn manifests_are_checked_with_paths() {
        let m = check_manifest(acme()).unwrap();
        assert_eq!(m.name, "acme");
        let bad = |f: &dyn Fn(&mut Value), want: &[&str]| {
            let mut v = acme();
            f(&mut v);
            let Err(EngineError::BadInput(errs)) = check_manifest(v) else {
                panic!("accepted")
            };
            let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, want, "{errs:?}");
        };
        bad(
            &|v| v["actions"][0]["request"]["path"] = json!("/items/{{ .input. }}"),
            &["actions[0].request.path"],
        );
        bad(
            &|v| v["actions"][0]["output"] = json!(".body | ]["),
            &["actions[0].output"],
        );
        bad(
            &|v| v["actions"][0]["input_schema"] = json!({"type": "strnig"}),
            &["actions[0].input_schema"],
        );
        bad(&|v| v["name"] = json!("github"), &["name"]);
        bad(&|v| v["version"] = json!("1.2"), &["version"]);
        bad(
            &|v| {
                v.as_object_mut().unwrap().remove("base_url");
            },
            &["base_url"],
        );
        bad(
            &|v| {
                v["actions"][0].as_object_mut().unwrap().remove("request");
            },
            &["actions[0].request"],
        );
        bad(
            &|v| v["actions"][0]["request"]["method"] = json!("FETCH"),
            &["actions[0].request.method"],
        );
        bad(&|v| v["bogus"] = json!(1), &["bogus"]);
        bad(
            &|v| v["description"] = json!("x".repeat(MAX_MANIFEST_BYTES)),
            &[""],
        );
    }

    #[test]
    fn unpinned_installed_actions_are_pinned_to_the_newest_version() {
        let mut old = acme();
        old["version"] = json!("1.10.0");
        let cat = WorkspaceCatalog {
            installed: vec![
                Arc::new(check_manifest(acme()).unwrap()),
                Arc::new(check_manifest(old).unwrap()),
            ],
        };
        let mut def = weft_flow::parse_text(
            "name: f\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    action: acme.get_item\n    credential: c\n  - id: b\n    action: acme.get_item@1.2\n    credential: c\n  - id: h\n    action: http.request\n    input: {url: 'https://x.test'}\n",
        )
        .unwrap();
        pin_actions(&mut def, &cat);
        let actions: Vec<_> = def
            .steps
            .iter()
            .map(|s| s.action.clone().unwrap())
            .collect();
        assert_eq!(
            actions,
            vec!["acme.get_item@1.10.0", "acme.get_item@1.2", "http.request"]
        );
        assert!(weft_flow::compile(&def, &cat).is_ok());
        assert!(cat.action("acme", "get_item", Some("2")).is_none());
        assert!(cat.action("acme", "nope", None).is_none());
    }
}
