//! Built-in provider connectors: each speaks its provider's real wire format.

mod common;

pub use common::check_input;
pub mod email;
pub mod github;
pub mod postgres;
pub mod slack;
pub mod stripe;
