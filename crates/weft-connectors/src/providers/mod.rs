//! Built-in provider connectors: each speaks its provider's real wire format.

mod common;
pub mod github;
pub mod slack;
pub mod stripe;
