//! Integration tests against real loopback servers (one test binary to keep linking cheap).
#![allow(clippy::unwrap_used)]

mod action;
mod conformance;
mod email;
mod guard;
mod postgres;
mod providers;
mod signature;
mod support;
