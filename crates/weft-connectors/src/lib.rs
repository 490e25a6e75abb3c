//! Weft connectors: the guarded outbound HTTP client and the built-in actions.

pub mod catalog;
pub mod error;
pub mod http;
pub mod manifest;
pub mod providers;
pub mod webhook;

pub use catalog::{ActionInfo, Credential, builtin_actions, find_action, run_action};
pub use error::ActionError;
pub use http::{GuardedClient, NetError, NetPolicy, PolicyError, http_request, is_forbidden};
pub use manifest::Manifest;

/// The reqwest version used by [`GuardedClient::execute`], for building requests.
pub use reqwest;
