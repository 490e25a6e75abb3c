//! Integration tests against real loopback servers (one test binary to keep linking cheap).
#![allow(clippy::unwrap_used)]

mod action;
mod guard;
mod signature;
mod support;
