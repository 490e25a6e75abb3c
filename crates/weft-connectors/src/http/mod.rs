//! Outbound HTTP: the network guard and the `http.request` action.

mod action;
mod guard;

pub use action::{
    DEFAULT_TIMEOUT, MAX_RESPONSE_BYTES, MAX_TIMEOUT, http_request, http_request_with_auth,
};
pub use guard::{
    GuardedClient, MAX_REDIRECTS, NetError, NetPolicy, PolicyError, is_forbidden, traceparent,
};
