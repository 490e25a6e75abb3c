//! Alerting: a workspace's rules watch for failed runs, new error groups, stuck runs and
//! credentials that need re-authorization, and notify a signed webhook, Slack or email.
//!
//! One incident (a rule and a key: the flow of a failed run, an error group, a stuck run, a
//! credential) notifies once per quiet time; further occurrences are counted and the next
//! notification says how many were held back. The decision and the queued notification are one
//! store transaction ([`weft_store::Store::raise_alert`]), so 1,000 failures at once page once.
//! Notifications leave from an outbox, retried with backoff, so a crash loses none.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weft_flow::FieldError;
use weft_store::{Actor, AlertDelivery, AlertRuleRecord, Raised, StoreError};
use weft_types::{Millis, RunId, Scope};

use crate::invoke::{ActionCall, invoke};
use crate::{Engine, EngineError, Inner};

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertOn {
    /// A run ended failed (incident: its flow).
    RunFailed,
    /// A failure of a kind never seen before opened an error group (incident: the group).
    ErrorNew,
    /// An error group failed `threshold` times within `window` (incident: the group).
    ErrorSpike,
    /// A run has been queued or running longer than `stuck_after` (incident: the run).
    RunStuck,
    /// A credential needs re-authorization (incident: the credential).
    CredentialReauth,
    /// The tenant has used `percent` of a plan limit (incident: the limit, and the month for
    /// the monthly run quota).
    QuotaNear,
}

impl AlertOn {
    fn as_str(self) -> &'static str {
        match self {
            AlertOn::RunFailed => "run_failed",
            AlertOn::ErrorNew => "error_new",
            AlertOn::ErrorSpike => "error_spike",
            AlertOn::RunStuck => "run_stuck",
            AlertOn::CredentialReauth => "credential_reauth",
            AlertOn::QuotaNear => "quota_near",
        }
    }
}

/// Where a rule notifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Notify {
    /// POST the alert as JSON, signed with Standard Webhooks when `credential` names a
    /// `webhook` credential (its `secret`).
    Webhook {
        /// Where to.
        url: String,
        /// Signing credential.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<String>,
    },
    /// Post a message to a Slack channel with a `slack` credential.
    Slack {
        /// Slack credential.
        credential: String,
        /// Channel id or name.
        channel: String,
    },
    /// Send an email with an `email` (SMTP) credential.
    Email {
        /// Email credential.
        credential: String,
        /// Recipient.
        to: String,
    },
}

/// A rule as written (`POST …/alerts`) and stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    /// What it watches.
    pub on: AlertOn,
    /// Only runs of this flow (by name), for run and error rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// For `run_stuck`: how long queued or running counts as stuck (e.g. `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_after: Option<String>,
    /// For `error_spike`: failures of one group within `window` that make a spike (2 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<i64>,
    /// For `error_spike`: the window the threshold counts in (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// For `quota_near`: the share of a plan limit, in percent, that alerts (default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// After notifying an incident, how long further occurrences are only counted (default
    /// `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet: Option<String>,
    /// Where it notifies.
    pub notify: Notify,
}

/// Quiet time when a rule does not say.
const DEFAULT_QUIET: Duration = Duration::from_secs(3600);
/// Notifications one delivery pass takes.
const BATCH: usize = 20;
/// How long a taken notification is held before another process may take it.
const LEASE_MS: i64 = 60_000;
/// Attempts before a notification is given up (its error stays listed).
const MAX_ATTEMPTS: i64 = 8;
/// Time between delivery passes when nothing wakes the deliverer.
const PASS: Duration = Duration::from_secs(5);
/// Time between scans for stuck runs.
const STUCK_SCAN: Duration = Duration::from_secs(60);

fn dur(path: &str, v: &Option<String>) -> Result<Option<Duration>, FieldError> {
    v.as_deref()
        .map(|s| {
            weft_flow::parse_duration_str(s).map_err(|m| FieldError {
                path: path.into(),
                message: m,
            })
        })
        .transpose()
}

impl AlertSpec {
    /// Reads and checks a rule; every problem names its field.
    pub fn parse(v: Value) -> Result<AlertSpec, Vec<FieldError>> {
        let spec: AlertSpec = serde_json::from_value(v).map_err(|e| {
            vec![FieldError {
                path: "spec".into(),
                message: format!(
                    "{e}; a rule is {{on: run_failed|error_new|error_spike|run_stuck|credential_reauth|quota_near, flow?, stuck_after?, threshold?, window?, percent?, quiet?, notify: {{webhook: {{url, credential?}}}} | {{slack: {{credential, channel}}}} | {{email: {{credential, to}}}}}}"
                ),
            }]
        })?;
        let mut errs = Vec::new();
        for (path, v) in [
            ("quiet", &spec.quiet),
            ("stuck_after", &spec.stuck_after),
            ("window", &spec.window),
        ] {
            if let Err(e) = dur(path, v) {
                errs.push(e);
            }
        }
        if spec.on == AlertOn::RunStuck && spec.stuck_after.is_none() {
            errs.push(FieldError {
                path: "stuck_after".into(),
                message: "a run_stuck rule needs stuck_after, e.g. 30m".into(),
            });
        }
        if spec.on != AlertOn::RunStuck && spec.stuck_after.is_some() {
            errs.push(FieldError {
                path: "stuck_after".into(),
                message: "only run_stuck rules take stuck_after".into(),
            });
        }
        let spike = spec.on == AlertOn::ErrorSpike;
        match spec.threshold {
            None if spike => errs.push(FieldError {
                path: "threshold".into(),
                message: "an error_spike rule needs threshold, the failures within window that make a spike".into(),
            }),
            Some(n) if spike && !(2..=1_000_000).contains(&n) => errs.push(FieldError {
                path: "threshold".into(),
                message: "must be between 2 and 1000000".into(),
            }),
            Some(_) if !spike => errs.push(FieldError {
                path: "threshold".into(),
                message: "only error_spike rules take threshold".into(),
            }),
            _ => {}
        }
        match spec.percent {
            Some(_) if spec.on != AlertOn::QuotaNear => errs.push(FieldError {
                path: "percent".into(),
                message: "only quota_near rules take percent".into(),
            }),
            Some(p) if !(1..=100).contains(&p) => errs.push(FieldError {
                path: "percent".into(),
                message: "must be between 1 and 100".into(),
            }),
            _ => {}
        }
        if spec.window.is_some() && !spike {
            errs.push(FieldError {
                path: "window".into(),
                message: "only error_spike rules take window".into(),
            });
        }
        match &spec.notify {
            Notify::Webhook { url, .. } => {
                let ok = url::Url::parse(url)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                if !ok {
                    errs.push(FieldError {
                        path: "notify.webhook.url".into(),
                        message: "must be an http(s) URL".into(),
                    });
                }
            }
            Notify::Slack { channel, .. } if channel.trim().is_empty() => errs.push(FieldError {
                path: "notify.slack.channel".into(),
                message: "name the channel to post to".into(),
            }),
            Notify::Email { to, .. } if !to.contains('@') => errs.push(FieldError {
                path: "notify.email.to".into(),
                message: "must be an email address".into(),
            }),
            _ => {}
        }
        if errs.is_empty() { Ok(spec) } else { Err(errs) }
    }

    fn quiet_ms(&self) -> i64 {
        dur("quiet", &self.quiet)
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_QUIET)
            .as_millis() as i64
    }

    /// For a spike rule: (failures, within ms).
    fn at_least(&self) -> Option<(i64, i64)> {
        let n = self.threshold.filter(|_| self.on == AlertOn::ErrorSpike)?;
        let window = dur("window", &self.window)
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_QUIET);
        Some((n, window.as_millis() as i64))
    }

    fn stuck_after_ms(&self) -> Option<i64> {
        dur("stuck_after", &self.stuck_after)
            .ok()
            .flatten()
            .map(|d| d.as_millis() as i64)
    }
}

/// One occurrence of something rules may watch.
pub(crate) struct Occurrence<'a> {
    pub(crate) on: AlertOn,
    /// The flow it concerns, if any (rules with `flow` match on it).
    pub(crate) flow: Option<&'a str>,
    /// What makes two occurrences one incident.
    pub(crate) incident: String,
    /// One line for people.
    pub(crate) summary: String,
    /// Facts for machines (merged into the notification).
    pub(crate) detail: Value,
}

impl Inner {
    /// Raises `o` on every rule of `scope` that watches it; failures are logged, never passed
    /// on (alerting must not fail what it watches).
    pub(crate) async fn alert(&self, scope: Scope, o: Occurrence<'_>) {
        self.alert_all(scope, std::slice::from_ref(&o)).await;
    }

    /// Raises each of `os` on the workspace's rules that watch it, reading the rules once.
    pub(crate) async fn alert_all(&self, scope: Scope, os: &[Occurrence<'_>]) {
        let rules = match self.opts.store.list_alert_rules(scope).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read alert rules");
                return;
            }
        };
        for rule in rules {
            let Ok(spec) = serde_json::from_value::<AlertSpec>(rule.spec.clone()) else {
                continue;
            };
            for o in os {
                if spec.on != o.on
                    || spec.flow.as_deref().is_some_and(|f| Some(f) != o.flow)
                    || (o.on == AlertOn::RunStuck
                        && spec
                            .stuck_after_ms()
                            .is_none_or(|ms| o.detail["stuck_ms"].as_i64().unwrap_or(0) < ms))
                {
                    continue;
                }
                self.alert_rule(scope, &rule, &spec, o).await;
            }
        }
    }

    /// Raises `o` on one rule (its quiet time and spike window apply).
    async fn alert_rule(
        &self,
        scope: Scope,
        rule: &AlertRuleRecord,
        spec: &AlertSpec,
        o: &Occurrence<'_>,
    ) {
        let now = self.now();
        let mut payload = json!({
            "type": format!("alert.{}", o.on.as_str()),
            "rule": rule.name,
            "workspace_id": scope.workspace.to_string(),
            "incident": o.incident,
            "summary": o.summary,
            "at": weft_types::rfc3339(now),
        });
        if let (Some(p), Some(d)) = (payload.as_object_mut(), o.detail.as_object()) {
            for (k, v) in d {
                p.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        match self
            .opts
            .store
            .raise_alert(
                scope,
                &rule.name,
                &o.incident,
                spec.quiet_ms(),
                spec.at_least(),
                payload,
                now,
            )
            .await
        {
            Ok(Raised::Notify { .. }) => self.alert_wake.notify_one(),
            Ok(Raised::Suppressed) | Err(StoreError::NotFound) => {}
            Err(e) => tracing::warn!(rule = %rule.name, error = %e, "could not raise an alert"),
        }
    }

    /// Delivers one notification; the failure says what to fix.
    async fn deliver(self: &Arc<Self>, d: &AlertDelivery, spec: &AlertSpec) -> Result<(), String> {
        let summary = d.payload["summary"].as_str().unwrap_or("alert").to_string();
        let held = d.payload["suppressed"].as_i64().unwrap_or(0);
        let text = if held > 0 {
            format!("[weft] {summary} ({held} more since the last alert)")
        } else {
            format!("[weft] {summary}")
        };
        let key = format!("alert:{}:{}", d.rule, d.seq);
        let action =
            |connector: &'static str, action: &'static str, input: Value, credential: String| {
                let inner = self.clone();
                let key = key.clone();
                async move {
                    invoke(
                        &inner,
                        &ActionCall {
                            scope: d.scope,
                            connector,
                            action,
                            version: None,
                            input: &input,
                            credential: Some(&credential),
                            key: &key,
                            step_limit: None,
                        },
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.message)
                }
            };
        match &spec.notify {
            Notify::Slack {
                credential,
                channel,
            } => {
                action(
                    "slack",
                    "post_message",
                    json!({"channel": channel, "text": text}),
                    credential.clone(),
                )
                .await
            }
            Notify::Email { credential, to } => {
                action(
                    "email",
                    "send",
                    json!({"to": to, "subject": text, "text": serde_json::to_string_pretty(&d.payload).unwrap_or_default()}),
                    credential.clone(),
                )
                .await
            }
            Notify::Webhook { url, credential } => {
                self.post_webhook(d, url, credential.as_deref(), &key).await
            }
        }
    }

    async fn post_webhook(
        self: &Arc<Self>,
        d: &AlertDelivery,
        url: &str,
        credential: Option<&str>,
        msg_id: &str,
    ) -> Result<(), String> {
        let body = d.payload.to_string();
        let url = url::Url::parse(url).map_err(|e| format!("bad webhook URL: {e}"))?;
        let mut req = reqwest::Request::new(reqwest::Method::POST, url);
        req.headers_mut().insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        if let Some(name) = credential {
            let engine = Engine {
                inner: self.clone(),
            };
            let open = engine
                .open_credential(d.scope, name)
                .await
                .map_err(|e| format!("signing credential '{name}': {e}"))?;
            let secret = open
                .values
                .get("secret")
                .ok_or_else(|| format!("credential '{name}' has no `secret` to sign with"))?;
            let scheme = weft_connectors::webhook::signature::Scheme::StandardWebhooks {
                tolerance_secs: 300,
            };
            let headers = weft_connectors::webhook::signature::sign(
                &scheme,
                secret.expose(),
                body.as_bytes(),
                self.now() / 1000,
                msg_id,
            )
            .map_err(|e| format!("cannot sign with credential '{name}': {e}"))?;
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                    reqwest::header::HeaderValue::from_str(&v),
                ) {
                    req.headers_mut().insert(k, v);
                }
            }
        }
        *req.timeout_mut() = Some(Duration::from_secs(10));
        *req.body_mut() = Some(body.into());
        let resp = self
            .opts
            .http
            .execute(req)
            .await
            .map_err(|e| format!("webhook: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered HTTP {}", resp.status().as_u16()))
        }
    }

    /// One delivery pass; how many notifications it delivered.
    pub(crate) async fn deliver_alerts(self: &Arc<Self>) -> Result<usize, EngineError> {
        let mut delivered = 0;
        loop {
            let now = self.now();
            let due = self
                .opts
                .store
                .claim_alert_deliveries(now, LEASE_MS, BATCH)
                .await?;
            if due.is_empty() {
                return Ok(delivered);
            }
            let mut rules: std::collections::HashMap<Scope, Vec<AlertRuleRecord>> =
                std::collections::HashMap::new();
            for d in due {
                if let std::collections::hash_map::Entry::Vacant(e) = rules.entry(d.scope) {
                    e.insert(self.opts.store.list_alert_rules(d.scope).await?);
                }
                let spec = rules
                    .get(&d.scope)
                    .and_then(|rs| rs.iter().find(|r| r.name == d.rule))
                    .and_then(|r| serde_json::from_value::<AlertSpec>(r.spec.clone()).ok());
                let outcome = match spec {
                    Some(spec) => self.deliver(&d, &spec).await,
                    None => Err("its rule was deleted".into()),
                };
                let now = self.now();
                let finish = match outcome {
                    Ok(()) => {
                        delivered += 1;
                        Ok(())
                    }
                    Err(e) => {
                        let attempts = d.attempts + 1;
                        tracing::warn!(rule = %d.rule, attempts, error = %e, "alert notification failed");
                        let retry = (attempts < MAX_ATTEMPTS)
                            .then(|| now + (30_000i64 << attempts.min(7)).min(3_600_000));
                        Err((e, retry))
                    }
                };
                self.opts
                    .store
                    .finish_alert_delivery(d.seq, finish, now)
                    .await?;
            }
        }
    }

    /// Raises `run_stuck` for runs queued or running for longer than a minute (each rule
    /// compares with its own `stuck_after`).
    pub(crate) async fn scan_stuck_runs(&self) -> Result<(), EngineError> {
        let now = self.now();
        for run in self.opts.store.stuck_runs(now - 60_000, 1_000).await? {
            let since = run.started_at.unwrap_or(run.created_at);
            let scope = run.scope;
            self.alert(
                scope,
                Occurrence {
                    on: AlertOn::RunStuck,
                    flow: Some(&run.flow_name),
                    incident: run.id.to_string(),
                    summary: format!(
                        "run {} of flow '{}' has been {} for {} s",
                        run.id,
                        run.flow_name,
                        run.status,
                        (now - since) / 1000
                    ),
                    detail: json!({"flow": run.flow_name, "run_id": run.id.to_string(), "status": run.status.as_str(), "stuck_ms": now - since}),
                },
            )
            .await;
        }
        Ok(())
    }

    /// Raises `quota_near` for every tenant with such a rule whose use of a plan limit (runs
    /// this month, stored bytes, active flows) reached the rule's percent.
    pub(crate) async fn scan_quotas(&self) -> Result<(), EngineError> {
        let store = &self.opts.store;
        let rules = store.alert_rules_on(AlertOn::QuotaNear.as_str()).await?;
        let now = self.now();
        let mut seen: std::collections::HashMap<
            weft_types::TenantId,
            Vec<(&'static str, i64, i64, String)>,
        > = std::collections::HashMap::new();
        for (scope, rule) in rules {
            let Ok(spec) = serde_json::from_value::<AlertSpec>(rule.spec.clone()) else {
                continue;
            };
            let percent = spec.percent.unwrap_or(80);
            if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(scope.tenant) {
                let t = store.get_tenant(scope.tenant).await?;
                let u = store.usage(scope.tenant, now).await?;
                let mut uses = Vec::new();
                for (name, used, limit, period) in [
                    (
                        "runs_per_month",
                        u.runs_in_month,
                        t.limits.runs_per_month,
                        u.month.clone(),
                    ),
                    (
                        "stored_bytes",
                        u.stored_bytes,
                        t.limits.stored_bytes,
                        String::new(),
                    ),
                    (
                        "active_flows",
                        u.active_flows,
                        t.limits.active_flows,
                        String::new(),
                    ),
                ] {
                    if let Some(limit) = limit.filter(|l| *l > 0) {
                        uses.push((name, used, limit, period));
                    }
                }
                e.insert(uses);
            }
            for (name, used, limit, period) in seen.get(&scope.tenant).into_iter().flatten() {
                if used * 100 < limit * percent {
                    continue;
                }
                let incident = if period.is_empty() {
                    format!("quota:{name}")
                } else {
                    format!("quota:{name}:{period}")
                };
                let o = Occurrence {
                    on: AlertOn::QuotaNear,
                    flow: None,
                    incident,
                    summary: format!(
                        "the plan's {name} is {}% used ({used} of {limit}); raise the limit or expect refusals at 100%",
                        used * 100 / limit
                    ),
                    detail: json!({"limit": name, "used": used, "of": limit}),
                };
                // Only this rule: another workspace's rule raises for itself.
                self.alert_rule(scope, &rule, &spec, &o).await;
            }
        }
        Ok(())
    }

    /// A credential needs re-authorization or was paused; `fix` says what to do.
    pub(crate) async fn alert_credential_reauth(
        &self,
        scope: Scope,
        name: &str,
        reason: &str,
        fix: &str,
    ) {
        self.alert(
            scope,
            Occurrence {
                on: AlertOn::CredentialReauth,
                flow: None,
                incident: format!("credential:{name}"),
                summary: format!("credential '{name}' cannot be used: {reason}; {fix}"),
                detail: json!({"credential": name, "reason": reason}),
            },
        )
        .await;
    }

    /// A run ended failed.
    pub(crate) async fn alert_run_failed(&self, scope: Scope, run: RunId, flow: &str, error: &str) {
        self.alert(
            scope,
            Occurrence {
                on: AlertOn::RunFailed,
                flow: Some(flow),
                incident: format!("flow:{flow}"),
                summary: format!("run {run} of flow '{flow}' failed: {error}"),
                detail: json!({"flow": flow, "run_id": run.to_string(), "error": error}),
            },
        )
        .await;
    }
}

/// The delivery task: delivers what is due when woken or every few seconds, and scans for
/// stuck runs every minute.
pub(crate) async fn deliverer(inner: Arc<Inner>) {
    let mut last_scan: Option<Millis> = None;
    loop {
        if let Err(e) = inner.deliver_alerts().await {
            tracing::warn!(error = %e, "alert delivery pass failed; it runs again shortly");
        }
        let now = inner.now();
        if last_scan.is_none_or(|t| now - t >= STUCK_SCAN.as_millis() as i64) {
            last_scan = Some(now);
            if let Err(e) = inner.scan_stuck_runs().await {
                tracing::warn!(error = %e, "stuck-run scan failed");
            }
            if let Err(e) = inner.scan_quotas().await {
                tracing::warn!(error = %e, "quota scan failed");
            }
        }
        tokio::select! {
            _ = inner.alert_wake.notified() => {}
            _ = inner.opts.clock.sleep(PASS) => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

impl Engine {
    /// Creates an alert rule after checking it (and that its flow exists).
    pub async fn create_alert_rule(
        &self,
        scope: Scope,
        name: &str,
        spec: Value,
        actor: Actor,
    ) -> Result<AlertRuleRecord, EngineError> {
        let mut errs = Vec::new();
        if !weft_flow::valid_name(name) {
            errs.push(FieldError {
                path: "name".into(),
                message: "use 1-64 letters, digits, '-' or '_', starting with a letter".into(),
            });
        }
        let spec = match AlertSpec::parse(spec) {
            Ok(s) => Some(s),
            Err(mut e) => {
                errs.append(&mut e);
                None
            }
        };
        if let Some(flow) = spec.as_ref().and_then(|s| s.flow.as_deref())
            && matches!(
                self.store().get_flow(scope, flow).await,
                Err(StoreError::NotFound)
            )
        {
            errs.push(FieldError {
                path: "flow".into(),
                message: format!("no flow named '{flow}' in this workspace"),
            });
        }
        let (Some(spec), true) = (spec, errs.is_empty()) else {
            return Err(EngineError::BadInput(errs));
        };
        let stored = serde_json::to_value(&spec)
            .map_err(|e| EngineError::Rule(format!("cannot store the rule: {e}")))?;
        Ok(self
            .store()
            .create_alert_rule(scope, name, stored, actor, self.inner.now())
            .await?)
    }

    /// Runs the periodic checks now (stuck runs, plan quotas; the delivery task runs them
    /// every minute).
    pub async fn scan_alerts(&self) -> Result<(), EngineError> {
        self.inner.scan_stuck_runs().await?;
        self.inner.scan_quotas().await
    }

    /// Delivers the notifications that are due now (the delivery task does it every few
    /// seconds and whenever an alert is raised); how many were delivered.
    pub async fn deliver_alerts(&self) -> Result<usize, EngineError> {
        self.inner.deliver_alerts().await
    }
}
