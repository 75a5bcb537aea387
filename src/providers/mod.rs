//! Translations between the OpenAI Chat Completions wire format (what Switchyard speaks) and other
//! providers' native APIs. Pure functions and small state machines over bytes: no I/O, no config.

pub mod anthropic;
