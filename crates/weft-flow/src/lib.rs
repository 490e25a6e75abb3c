//! Flow model: parsing YAML/JSON flow files, strict validation that names the field path of
//! every error, and compilation into the form the engine executes. Pure: no I/O.

mod compiled;
mod duration;
mod model;
mod validate;

pub use compiled::{
    CompiledFlow, CompiledStep, ForEachSpec, Handler, ItemSource, PollSpec, RetryPolicy,
    SignalWait, StepKind, TriggerKind, WaitSpec, WebhookVerify,
};
pub use duration::{MAX_DURATION, parse_duration, parse_duration_str};
pub use model::{
    ApprovalDef, DurationSpec, EmitDef, EventTrigger, FlowDef, ForEachDef, HmacDef, ManualTrigger,
    PollTrigger, RespondDef, RetryDef, ScheduleTrigger, SignatureDef, StepDef, TriggerDef, WaitDef,
    WaitForEventDef, WebhookTrigger,
};
pub use validate::{
    ActionCatalog, ActionFacts, CredentialUse, MIN_POLL_INTERVAL, PollDefaults, compile,
    pointer_to_path, run_end_event, valid_event_name, valid_name,
};

use serde::Serialize;

/// Largest flow file accepted, in bytes.
pub const MAX_FLOW_BYTES: usize = 1024 * 1024;

/// One problem in a flow, located by its field path (e.g. `steps[1].retry.initial`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where: `name`, `trigger.schedule.cron`, `steps[2].needs[0]`…
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    /// A new error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why a flow was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlowError {
    /// The file is not valid YAML/JSON.
    #[error("the flow file is not valid {format}: {message}")]
    Syntax {
        /// `YAML` or `JSON`.
        format: &'static str,
        /// Parser message with position.
        message: String,
    },
    /// The file is too large.
    #[error("the flow file is {size} bytes; the limit is {max} bytes")]
    TooLarge {
        /// Actual size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The document parsed but breaks the flow rules.
    #[error("the flow is invalid: {}", summary(.0))]
    Invalid(Vec<FieldError>),
}

impl FlowError {
    /// Every field error (one entry for syntax errors, at path ``).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            FlowError::Invalid(v) => v.clone(),
            other => vec![FieldError::new("", other.to_string())],
        }
    }
}

fn summary(errors: &[FieldError]) -> String {
    let mut s = errors
        .iter()
        .take(5)
        .map(|e| {
            if e.path.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.path, e.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > 5 {
        s.push_str(&format!(" (and {} more)", errors.len() - 5));
    }
    s
}

/// Parses flow text; JSON if it starts with `{`, YAML otherwise.
pub fn parse_text(text: &str) -> Result<FlowDef, FlowError> {
    if text.len() > MAX_FLOW_BYTES {
        return Err(FlowError::TooLarge {
            size: text.len(),
            max: MAX_FLOW_BYTES,
        });
    }
    from_value(parse_document(text)?)
}

/// Parses a YAML or JSON document (a flow, a connector manifest) with depth and size budgets.
pub fn parse_document(text: &str) -> Result<serde_json::Value, FlowError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| FlowError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })
    } else {
        let opts = serde_saphyr::options! { budget: serde_saphyr::budget! { max_depth: 64, max_nodes: 200_000 } };
        serde_saphyr::from_str_with_options(text, opts).map_err(|e| FlowError::Syntax {
            format: "YAML",
            message: one_line(&e.to_string()),
        })
    }
}

/// Builds the typed definition from a JSON value, naming the path of the first type error.
pub fn from_value(value: serde_json::Value) -> Result<FlowDef, FlowError> {
    if !value.is_object() {
        return Err(FlowError::Invalid(vec![FieldError::new(
            "",
            "a flow must be an object with `name`, `trigger` and `steps`",
        )]));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        FlowError::Invalid(vec![FieldError::new(path, e.into_inner().to_string())])
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The JSON Schema of a flow file.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(FlowDef)).unwrap_or_default()
}
