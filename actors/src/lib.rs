//! Switchyard's actors: profile health, the router, usage recording and the sled store. No web dependency.
#![forbid(unsafe_code)]

pub mod clock;
pub mod health;
pub mod highwater;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod profile;
pub mod recorder;
pub mod retention;
pub mod router;
pub mod store;
