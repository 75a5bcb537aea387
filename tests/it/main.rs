//! Integration tests: the real binary on port 0 against mock upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod agents;
mod aliases;
mod anthropic;
mod auth;
mod config_check;
mod dashboard;
mod durability;
mod first_run;
mod hardening;
mod health;
mod layout;
mod limits;
mod oauth;
mod operations;
mod presets;
mod readme;
mod replicas;
mod responses;
mod retention;
mod routing;
mod smoke;
mod ui;
mod wire;
