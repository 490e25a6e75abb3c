//! Flow lifecycle (validate, save, publish, schedule) and the ways runs start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use weft_connectors::reqwest::header::HeaderMap;
use weft_connectors::webhook::{self, HmacParts, Inbound};
use weft_flow::{
    ActionCatalog, ActionFacts, CompiledFlow, CredentialUse, FlowDef, TriggerKind, WebhookVerify,
};
use weft_store::{Actor, FlowRecord, HookTarget, Inserted, NewRun, StoreError};
use weft_types::{FlowId, HookId, Millis, RunId, RunStatus, Scope, TenantId};

use crate::{Engine, EngineError, Inner, WebhookResponse};

/// The connector registry as the flow validator sees it (also used by `weft flow validate`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ActionRegistry;

impl ActionCatalog for ActionRegistry {
    fn action(&self, connector: &str, action: &str, version: Option<&str>) -> Option<ActionFacts> {
        let (_, a) = weft_connectors::find_action(connector, action, version)?;
        Some(ActionFacts {
            credential: match a.credential.as_str() {
                "required" => CredentialUse::Required,
                "none" => CredentialUse::None,
                _ => CredentialUse::Optional,
            },
        })
    }

    fn webhook_scheme(&self, connector: &str) -> Option<String> {
        weft_connectors::manifest::find(connector, None)?
            .webhook_signature()
            .map(str::to_string)
    }

    fn webhook_connectors(&self) -> Vec<String> {
        weft_connectors::manifest::builtin()
            .iter()
            .filter(|m| m.webhook_signature().is_some())
            .map(|m| m.name.clone())
            .collect()
    }
}

/// A flow named by id (`flw_…`) or by name.
pub type FlowRef = str;

/// Compiled flow versions and resolved hook ids, cached in memory.
#[derive(Default)]
pub(crate) struct FlowCache {
    compiled: Mutex<HashMap<(Scope, FlowId, i64), Arc<CompiledFlow>>>,
    hooks: Mutex<HashMap<HookId, (HookTarget, std::time::Instant)>>,
    /// Per-tenant webhook rate limiters, with the rps they were built for and when read.
    intake: Mutex<HashMap<TenantId, IntakeLimit>>,
}

/// A tenant's webhook rate limit as last read from its plan.
struct IntakeLimit {
    rps: Option<i64>,
    rule: IntakeRule,
    read_at: std::time::Instant,
}

/// What a tenant's plan says about webhook requests.
#[derive(Clone)]
enum IntakeRule {
    /// No limit.
    Open,
    /// A limit of 0: every request is refused.
    Closed,
    /// The plan's requests per second, counted in the store (shared by every process).
    Limited(weft_store::rate::Rate),
}

impl IntakeRule {
    fn of(rps: Option<i64>) -> Self {
        match rps {
            None => IntakeRule::Open,
            Some(r) => match std::num::NonZeroU32::new(r.clamp(0, u32::MAX as i64) as u32) {
                None => IntakeRule::Closed,
                Some(n) => IntakeRule::Limited(weft_store::rate::Rate::per_second(n.get())),
            },
        }
    }
}

/// How long a resolved hook id is trusted before it is read again (other processes may publish).
const HOOK_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 10_000;

/// One webhook delivery as intake received it.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The event to store: method, headers (without credentials), query, parsed body.
    pub event: Value,
    /// Every request header, for signature checks.
    pub headers: &'a HeaderMap,
    /// The body exactly as received: signatures are over these bytes.
    pub raw_body: &'a [u8],
    /// The sender's `Idempotency-Key`.
    pub dedupe_key: Option<String>,
}

/// What intake did with a delivery.
#[derive(Debug)]
pub enum Intake {
    /// Stored as a run (or absorbed as a duplicate).
    Accepted(Accepted),
    /// Verified, and answered at once without a run (Slack's `url_verification`).
    Answered(Value),
    /// Verified, and its event is not one the trigger listens for.
    Ignored {
        /// The event's name.
        event: Option<String>,
    },
}

/// A stored delivery.
#[derive(Debug)]
pub struct Accepted {
    /// The run (new, or the one that absorbed the duplicate).
    pub run_id: RunId,
    /// True when this delivery was seen before.
    pub duplicate: bool,
    /// Resolves when a `respond` step answers (only for flows that have one).
    pub respond: Option<(oneshot::Receiver<WebhookResponse>, Duration)>,
}

impl Inner {
    /// The compiled form of a flow version (compiled once, then cached).
    pub(crate) async fn compiled(
        &self,
        scope: Scope,
        flow: FlowId,
        version: i64,
    ) -> Result<Arc<CompiledFlow>, EngineError> {
        if let Some(c) = self
            .flows
            .compiled
            .lock()
            .ok()
            .and_then(|m| m.get(&(scope, flow, version)).cloned())
        {
            return Ok(c);
        }
        let v = self.opts.store.flow_version(scope, flow, version).await?;
        let def = weft_flow::from_value(v.definition)?;
        let catalog = self.catalog(scope).await?;
        let compiled = Arc::new(weft_flow::compile(&def, catalog.as_ref())?);
        if let Ok(mut m) = self.flows.compiled.lock() {
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert((scope, flow, version), compiled.clone());
        }
        Ok(compiled)
    }

    pub(crate) fn now(&self) -> Millis {
        self.opts.clock.now_ms()
    }
}

impl Engine {
    /// Creates the flow or saves a new version; publishes it unless `draft`.
    pub async fn apply_flow(
        &self,
        scope: Scope,
        mut def: FlowDef,
        draft: bool,
        actor: Actor,
    ) -> Result<FlowRecord, EngineError> {
        let catalog = self.inner.catalog(scope).await?;
        crate::connectors::pin_actions(&mut def, &catalog);
        let compiled = weft_flow::compile(&def, catalog.as_ref())?;
        let value = serde_json::to_value(&def)
            .map_err(|e| EngineError::Conflict(format!("cannot store the flow: {e}")))?;
        let now = self.inner.now();
        let rec = self
            .inner
            .opts
            .store
            .save_flow(scope, &def.name, value, !draft, actor, now)
            .await?;
        if let Ok(mut m) = self.inner.flows.compiled.lock() {
            m.insert(
                (scope, rec.id, rec.latest_version),
                Arc::new(compiled.clone()),
            );
        }
        if !draft {
            self.after_publish(scope, &rec, &compiled).await?;
        }
        Ok(rec)
    }

    /// Publishes an existing version.
    pub async fn publish(
        &self,
        scope: Scope,
        flow: &FlowRef,
        version: Option<i64>,
        actor: Actor,
    ) -> Result<FlowRecord, EngineError> {
        let rec = self.get_flow(scope, flow).await?;
        let version = version.unwrap_or(rec.latest_version);
        let compiled = self
            .inner
            .compiled(scope, rec.id, version)
            .await
            .map_err(|e| match e {
                EngineError::NotFound(_) => EngineError::NotFound("flow version"),
                other => other,
            })?;
        let rec = self
            .inner
            .opts
            .store
            .publish(scope, rec.id, version, actor, self.inner.now())
            .await
            .map_err(|e| match e {
                StoreError::NotFound => EngineError::NotFound("flow version"),
                other => other.into(),
            })?;
        self.after_publish(scope, &rec, &compiled).await?;
        Ok(rec)
    }

    async fn after_publish(
        &self,
        scope: Scope,
        rec: &FlowRecord,
        compiled: &CompiledFlow,
    ) -> Result<(), EngineError> {
        if let Ok(mut h) = self.inner.flows.hooks.lock() {
            h.remove(&rec.hook_id);
        }
        self.inner.events_cache.forget(scope);
        let next = compiled.trigger.next_tick_after(self.inner.now());
        self.inner
            .opts
            .store
            .set_schedule(scope, rec.id, next)
            .await?;
        self.inner.schedule_wake.notify_one();
        // A poll trigger polls at once (the first poll of a new one learns what exists); any
        // other trigger turns a former poll off, keeping its cursor for a comeback.
        let (poll_at, since) = match &compiled.trigger {
            weft_flow::TriggerKind::Poll(p) => (Some(self.inner.now()), p.since.clone()),
            _ => (None, None),
        };
        self.inner
            .opts
            .store
            .set_poll(scope, rec.id, poll_at, since)
            .await?;
        self.inner.poll_wake.notify_one();
        Ok(())
    }

    /// A flow by id or name.
    pub async fn get_flow(&self, scope: Scope, flow: &FlowRef) -> Result<FlowRecord, EngineError> {
        self.inner
            .opts
            .store
            .get_flow(scope, flow)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => EngineError::NotFound("flow"),
                other => other.into(),
            })
    }

    /// Deletes a flow (its runs stay in history).
    pub async fn delete_flow(
        &self,
        scope: Scope,
        flow: &FlowRef,
        actor: Actor,
    ) -> Result<(), EngineError> {
        let rec = self.get_flow(scope, flow).await?;
        self.inner
            .opts
            .store
            .delete_flow(scope, rec.id, actor, self.inner.now())
            .await?;
        if let Ok(mut h) = self.inner.flows.hooks.lock() {
            h.remove(&rec.hook_id);
        }
        self.inner.events_cache.forget(scope);
        Ok(())
    }

    /// Starts a run of the published version by hand, with `input` as the trigger body.
    pub async fn start_run(
        &self,
        scope: Scope,
        flow: &FlowRef,
        input: Value,
        dedupe_key: Option<String>,
        actor: Actor,
    ) -> Result<Inserted, EngineError> {
        let rec = self.get_flow(scope, flow).await?;
        let Some(version) = rec.published_version else {
            return Err(EngineError::Conflict(format!(
                "flow '{}' has no published version; publish one first",
                rec.name
            )));
        };
        let now = self.inner.now();
        let trigger =
            json!({"kind": "manual", "body": input, "received_at": weft_types::rfc3339(now)});
        let inserted = self
            .inner
            .opts
            .store
            .insert_run(NewRun {
                scope,
                id: RunId::new(),
                flow_id: rec.id,
                flow_name: rec.name,
                flow_version: version,
                trigger,
                dedupe_key,
                dedupe_window_ms: self.inner.opts.dedupe_window.as_millis() as i64,
                now,
                audit: Some(actor),
                parent: None,
                traceparent: crate::trace::current(),
            })
            .await?;
        self.wake();
        Ok(inserted)
    }

    /// System (intake): where a hook id leads, cached briefly.
    pub async fn resolve_hook(&self, hook: HookId) -> Result<Option<HookTarget>, EngineError> {
        if let Some((t, at)) = self
            .inner
            .flows
            .hooks
            .lock()
            .ok()
            .and_then(|m| m.get(&hook).cloned())
            && at.elapsed() < HOOK_TTL
        {
            return Ok(Some(t));
        }
        let target = self.inner.opts.store.lookup_hook(hook).await?;
        if let (Some(t), Ok(mut m)) = (&target, self.inner.flows.hooks.lock()) {
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert(hook, (t.clone(), std::time::Instant::now()));
        }
        Ok(target)
    }

    /// Intake: durably stores a webhook event as a queued run of the hook's published version.
    /// Returns only after the commit. `NotFound` for unknown or unpublished hooks.
    pub async fn accept_webhook(
        &self,
        hook: HookId,
        delivery: Delivery<'_>,
    ) -> Result<Intake, EngineError> {
        let target = self
            .resolve_hook(hook)
            .await?
            .ok_or(EngineError::NotFound("hook"))?;
        let version = target
            .published_version
            .ok_or(EngineError::NotFound("hook"))?;
        self.check_intake_rate(target.scope.tenant).await?;
        let compiled = self
            .inner
            .compiled(target.scope, target.flow_id, version)
            .await?;
        let TriggerKind::Webhook {
            respond_timeout,
            verify,
        } = &compiled.trigger
        else {
            return Err(EngineError::NotFound("hook"));
        };
        let respond_timeout = *respond_timeout;
        let Delivery {
            mut event,
            headers,
            raw_body,
            mut dedupe_key,
        } = delivery;
        if let Some(v) = verify {
            let inbound = self
                .verify_delivery(target.scope, v, headers, raw_body, &event)
                .await?;
            if let Some(answer) = inbound.immediate {
                return Ok(Intake::Answered(answer));
            }
            if !v.accepts(inbound.event.as_deref()) {
                return Ok(Intake::Ignored {
                    event: inbound.event,
                });
            }
            if let Value::Object(m) = &mut event {
                m.insert("event".into(), json!(inbound.event));
                m.insert("delivery_id".into(), json!(inbound.delivery_id));
            }
            // The provider's delivery id dedupes redeliveries; namespaced so it cannot collide
            // with a sender's own Idempotency-Key.
            if let Some(d) = inbound.delivery_id {
                dedupe_key = Some(format!("{}:{d}", v.connector));
            }
        }
        let run_id = RunId::new();
        let respond = if compiled.has_respond() {
            let (tx, rx) = oneshot::channel();
            if let Ok(mut m) = self.inner.responders.lock() {
                m.insert(run_id, tx);
            }
            Some((rx, respond_timeout))
        } else {
            None
        };
        let res = self
            .inner
            .opts
            .store
            .insert_run(NewRun {
                scope: target.scope,
                id: run_id,
                flow_id: target.flow_id,
                flow_name: target.flow_name,
                flow_version: version,
                trigger: event,
                dedupe_key,
                dedupe_window_ms: self.inner.opts.dedupe_window.as_millis() as i64,
                now: self.inner.now(),
                audit: None,
                parent: None,
                traceparent: crate::trace::current(),
            })
            .await;
        let inserted = match res {
            Ok(i) => i,
            Err(e) => {
                self.forget_responder(run_id);
                return Err(e.into());
            }
        };
        if inserted.duplicate {
            self.forget_responder(run_id);
            return Ok(Intake::Accepted(Accepted {
                run_id: inserted.run_id,
                duplicate: true,
                respond: None,
            }));
        }
        self.wake();
        Ok(Intake::Accepted(Accepted {
            run_id,
            duplicate: false,
            respond,
        }))
    }

    /// Checks a delivery's signature with the trigger's credential, before anything is stored.
    async fn verify_delivery(
        &self,
        scope: Scope,
        v: &WebhookVerify,
        headers: &HeaderMap,
        raw_body: &[u8],
        event: &Value,
    ) -> Result<Inbound, EngineError> {
        // The sender sees a generic refusal; the flow's owner finds the reason in the log.
        let unverifiable = |why: String| {
            tracing::warn!(tenant = %scope.tenant, connector = %v.connector, credential = %v.credential, "webhook cannot be verified: {why}");
            EngineError::Unavailable(
                "this hook cannot verify deliveries right now (its signing credential is missing or unreadable); nothing was stored. The flow's owner must fix the credential".into(),
            )
        };
        let cred = match self.signing_credential(scope, &v.credential).await {
            Ok(c) => c,
            Err(EngineError::NotFound(_)) => {
                return Err(unverifiable(format!(
                    "credential '{}' does not exist",
                    v.credential
                )));
            }
            Err(EngineError::Store(e)) => return Err(EngineError::Store(e)),
            Err(e) => return Err(unverifiable(e.to_string())),
        };
        if cred.manifest.name != v.connector {
            return Err(unverifiable(format!(
                "credential '{}' is a {} credential, not {}",
                v.credential, cred.manifest.name, v.connector
            )));
        }
        let field = cred.manifest.webhook_secret_field().unwrap_or("secret");
        let Some(secret) = cred.values.get(field) else {
            return Err(unverifiable(format!(
                "credential '{}' has no `{field}`",
                v.credential
            )));
        };
        let hmac = v.hmac.as_ref().map(|h| HmacParts {
            header: &h.header,
            algorithm: h.algorithm.as_deref(),
            encoding: h.encoding.as_deref(),
            prefix: h.prefix.as_deref(),
        });
        let scheme = webhook::scheme(&v.scheme, hmac)
            .ok_or_else(|| unverifiable(format!("unknown scheme {}", v.scheme)))?;
        let now = self.inner.now() / 1000;
        webhook::verify(&scheme, secret.expose(), headers, raw_body, now)
            .map_err(|e| EngineError::Unauthorized(e.to_string()))?;
        let mut inbound = webhook::inspect(
            &v.connector,
            &v.scheme,
            headers,
            event.get("body").unwrap_or(&Value::Null),
        );
        // An installed connector may name the headers carrying the event and the delivery id.
        if let Some(t) = cred.manifest.webhook_trigger() {
            let header = |name: &Option<String>| {
                let v = headers.get(name.as_deref()?)?.to_str().ok()?;
                Some(v.chars().take(200).collect::<String>())
            };
            if let Some(e) = header(&t.event_header) {
                inbound.event = Some(e);
            }
            if let Some(d) = header(&t.delivery_header) {
                inbound.delivery_id = Some(d);
            }
        }
        Ok(inbound)
    }

    /// Refuses a webhook when the tenant is over its plan's requests per second.
    async fn check_intake_rate(&self, tenant: TenantId) -> Result<(), EngineError> {
        let cached = self.inner.flows.intake.lock().ok().and_then(|m| {
            m.get(&tenant)
                .filter(|l| l.read_at.elapsed() < HOOK_TTL)
                .map(|l| l.rule.clone())
        });
        let rule = match cached {
            Some(r) => r,
            None => {
                let rps = self
                    .inner
                    .opts
                    .store
                    .get_tenant(tenant)
                    .await?
                    .limits
                    .webhook_rps;
                let mut m = self
                    .inner
                    .flows
                    .intake
                    .lock()
                    .map_err(|_| EngineError::Conflict("intake limiter poisoned".into()))?;
                if m.len() >= CACHE_MAX {
                    m.clear();
                }
                let now = std::time::Instant::now();
                let entry = m.entry(tenant).or_insert_with(|| IntakeLimit {
                    rps,
                    rule: IntakeRule::of(rps),
                    read_at: now,
                });
                // Keep the bucket's state while the limit is unchanged.
                if entry.rps != rps {
                    entry.rps = rps;
                    entry.rule = IntakeRule::of(rps);
                }
                entry.read_at = now;
                entry.rule.clone()
            }
        };
        match rule {
            IntakeRule::Open => Ok(()),
            IntakeRule::Closed => Err(EngineError::Quota {
                limit: "webhook_rps",
                detail: "the tenant's plan allows no webhook requests (webhook_rps is 0); nothing was stored".into(),
                retry_after: None,
            }),
            IntakeRule::Limited(rate) => {
                let now_us = self.inner.opts.clock.now_ms().saturating_mul(1000);
                match self
                    .inner
                    .opts
                    .store
                    .rate_take(&format!("webhook:{tenant}"), rate, now_us)
                    .await?
                {
                    weft_store::rate::RateDecision::Allowed => Ok(()),
                    weft_store::rate::RateDecision::Limited { retry_after_ms } => {
                        Err(EngineError::Quota {
                            limit: "webhook_rps",
                            detail: "the tenant is over its plan's webhook requests per second; nothing was stored. Retry after a second".into(),
                            retry_after: Some(retry_after_ms.div_ceil(1000).max(1)),
                        })
                    }
                }
            }
        }
    }

    /// Forgets cached plan limits of a tenant (after an admin changed them).
    pub fn forget_plan(&self, tenant: TenantId) {
        if let Ok(mut m) = self.inner.flows.intake.lock() {
            m.remove(&tenant);
        }
    }

    /// Drops the waiter for a run's `respond` step (intake gave up waiting).
    pub fn forget_responder(&self, run: RunId) {
        if let Ok(mut m) = self.inner.responders.lock() {
            m.remove(&run);
        }
    }

    /// Cancels a run; a run executing here is told to stop at once.
    pub async fn cancel_run(
        &self,
        scope: Scope,
        run: RunId,
        actor: Actor,
    ) -> Result<RunStatus, EngineError> {
        let status = self
            .inner
            .opts
            .store
            .cancel_run(scope, run, actor, self.inner.now())
            .await
            .map_err(|e| match e {
                StoreError::NotFound => EngineError::NotFound("run"),
                other => other.into(),
            })?;
        self.signal_cancel(run);
        // The store cancelled its unfinished sub-flow runs too; those executing here stop now.
        let mut pending = vec![run];
        let mut seen = 0;
        while let Some(r) = pending.pop() {
            seen += 1;
            if seen > 1000 {
                break;
            }
            if let Ok(children) = self.inner.opts.store.child_runs(scope, r).await {
                for c in children {
                    self.signal_cancel(c.id);
                    pending.push(c.id);
                }
            }
        }
        Ok(status)
    }

    /// Deletes a finished run with its steps, logs and payloads (a run that has not finished
    /// must be cancelled first).
    pub async fn delete_run(
        &self,
        scope: Scope,
        run: RunId,
        actor: Actor,
    ) -> Result<(), EngineError> {
        self.inner
            .opts
            .store
            .delete_run(scope, run, actor, self.inner.now())
            .await
            .map_err(|e| match e {
                StoreError::NotFound => EngineError::NotFound("run"),
                other => other.into(),
            })
    }
}
