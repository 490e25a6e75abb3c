//! Operating runs: signals that resume waiting steps, retry in place, replay as a new run.

use serde_json::Value;
use weft_store::{Actor, Inserted, NewRun, StoreError};
use weft_types::{RunId, RunStatus, Scope};

use crate::{Engine, EngineError};

/// Longest signal name (it travels in a URL path segment).
pub const MAX_SIGNAL_NAME: usize = 100;

/// Largest signal payload, serialized.
pub const MAX_SIGNAL_BYTES: usize = 256 * 1024;

/// Whether `name` can name a signal (it travels in a URL path segment).
pub fn valid_signal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SIGNAL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Which version a replayed run executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVersion {
    /// The version the original run was pinned to.
    Pinned,
    /// The flow's published version now.
    Latest,
}

fn run_not_found(e: StoreError) -> EngineError {
    match e {
        StoreError::NotFound => EngineError::NotFound("run"),
        other => other.into(),
    }
}

impl Engine {
    /// Delivers the signal `name` (with `payload`) to a run: an `approval` or `wait_for_event`
    /// step waiting for that name resumes with it. Single-use per run and name.
    pub async fn signal_run(
        &self,
        scope: Scope,
        run: RunId,
        name: &str,
        payload: Value,
        actor: Actor,
    ) -> Result<RunStatus, EngineError> {
        if !valid_signal_name(name) {
            return Err(EngineError::BadInput(vec![weft_flow::FieldError::new(
                "name",
                "a signal name is 1-100 characters: letters, digits, '-', '_', '.' or ':' (the id of the step it resumes)",
            )]));
        }
        let size = serde_json::to_vec(&payload).map_or(0, |v| v.len());
        if size > MAX_SIGNAL_BYTES {
            return Err(EngineError::BadInput(vec![weft_flow::FieldError::new(
                "payload",
                format!("is {size} bytes; a signal carries at most {MAX_SIGNAL_BYTES}"),
            )]));
        }
        // Only names a step of the run waits for: anything else would be stored for nothing.
        let (r, _) = self
            .inner
            .opts
            .store
            .get_run(scope, run)
            .await
            .map_err(run_not_found)?;
        if !r.status.is_terminal() {
            let flow = self
                .inner
                .compiled(scope, r.flow_id, r.flow_version)
                .await?;
            let known = flow.steps.iter().any(|s| match &s.kind {
                weft_flow::StepKind::Signal(w) => w.names.iter().any(|n| n == name),
                _ => false,
            });
            if !known {
                return Err(EngineError::Conflict(format!(
                    "no step of flow '{}' (version {}) waits for a signal named '{name}'; signals are named after the approval or wait_for_event step they resume",
                    r.flow_name, r.flow_version
                )));
            }
        }
        let status = self
            .inner
            .opts
            .store
            .signal_run(scope, run, name, payload, actor, self.inner.now())
            .await
            .map_err(run_not_found)?;
        weft_types::failpoint("signal.after_commit");
        self.wake();
        Ok(status)
    }

    /// Retries a failed run in place: completed steps keep their outputs, the failed ones run
    /// again (with their idempotency keys unchanged).
    pub async fn retry_run(
        &self,
        scope: Scope,
        run: RunId,
        actor: Actor,
    ) -> Result<(), EngineError> {
        let (_, steps) = self
            .inner
            .opts
            .store
            .get_run(scope, run)
            .await
            .map_err(run_not_found)?;
        // Completed steps are kept on a retry; after a saga undid them that would resume a run
        // whose effects were reversed.
        if steps.iter().any(|s| s.step_id.contains(".compensate.")) {
            return Err(EngineError::Conflict(
                "this run was compensated (its completed steps were undone), so it cannot resume in place; replay it as a new run".into(),
            ));
        }
        self.inner
            .opts
            .store
            .retry_run(scope, run, actor, self.inner.now())
            .await
            .map_err(run_not_found)?;
        self.wake();
        Ok(())
    }

    /// Starts a new run with the trigger event of `run`, on its pinned version or the flow's
    /// published one.
    pub async fn replay_run(
        &self,
        scope: Scope,
        run: RunId,
        version: ReplayVersion,
        actor: Actor,
    ) -> Result<Inserted, EngineError> {
        let store = &self.inner.opts.store;
        let (r, _) = store.get_run(scope, run).await.map_err(run_not_found)?;
        let flow_version = match version {
            ReplayVersion::Pinned => r.flow_version,
            ReplayVersion::Latest => {
                let flow = store
                    .get_flow(scope, &r.flow_id.to_string())
                    .await
                    .map_err(|e| match e {
                        StoreError::NotFound => EngineError::Conflict(format!(
                            "flow '{}' of this run was deleted; replay it on its pinned version",
                            r.flow_name
                        )),
                        other => other.into(),
                    })?;
                flow.published_version.ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "flow '{}' has no published version; replay on the pinned one",
                        r.flow_name
                    ))
                })?
            }
        };
        let inserted = store
            .insert_run(NewRun {
                scope,
                id: RunId::new(),
                flow_id: r.flow_id,
                flow_name: r.flow_name,
                flow_version,
                trigger: r.trigger,
                dedupe_key: None,
                dedupe_window_ms: 0,
                now: self.inner.now(),
                audit: Some(actor),
                parent: None,
                traceparent: crate::trace::current(),
            })
            .await?;
        self.wake();
        Ok(inserted)
    }
}

/// What resume-link MACs are for (the vault derives a key per purpose).
const RESUME_PURPOSE: &str = "resume-link/v1";

/// Where a resume link leads: the run and the signal it delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeTarget {
    /// The run's workspace.
    pub scope: Scope,
    /// The run.
    pub run: RunId,
    /// The signal the link delivers (the step id).
    pub name: String,
}

impl crate::Inner {
    /// The signed, single-use link that delivers signal `name` to `run` (for approve/reject
    /// buttons in emails and chat); `None` without a master key.
    pub(crate) fn resume_url(&self, scope: Scope, run: RunId, name: &str) -> Option<String> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let vault = self.opts.vault.as_ref()?;
        let payload = format!("{}:{}:{run}:{name}", scope.tenant, scope.workspace);
        let tag = vault.sign(RESUME_PURPOSE, payload.as_bytes());
        Some(format!(
            "{}/resume/{}.{}",
            self.opts.public_url.trim_end_matches('/'),
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(&tag[..16])
        ))
    }
}

impl Engine {
    /// Reads a resume link's token: what it leads to, if the instance signed it.
    pub fn open_resume_token(&self, token: &str) -> Option<ResumeTarget> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if token.len() > 1024 {
            return None;
        }
        let vault = self.inner.opts.vault.as_ref()?;
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !vault.verify(RESUME_PURPOSE, &payload, &tag) {
            return None;
        }
        let text = String::from_utf8(payload).ok()?;
        let mut parts = text.splitn(4, ':');
        let tenant = parts.next()?.parse().ok()?;
        let workspace = parts.next()?.parse().ok()?;
        let run = parts.next()?.parse().ok()?;
        let name = parts.next()?.to_string();
        Some(ResumeTarget {
            scope: Scope { tenant, workspace },
            run,
            name,
        })
    }

    /// The resume link of signal `name` of `run` (see [`Engine::open_resume_token`]).
    pub fn resume_url(&self, scope: Scope, run: RunId, name: &str) -> Option<String> {
        self.inner.resume_url(scope, run, name)
    }
}
