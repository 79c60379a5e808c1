//! # marketgov-core
//!
//! The pure domain core of marketgov: the eight governors (typed state machines), the orchestrator
//! that routes each customer event through them and resolves their conflicts, the workflow case
//! specs of marketplace agents, and the per-(agent, region) sequence rules.
//!
//! **What it owns:** every decision. A decision is a pure function of (state, input, time): the
//! caller passes the instant and the event's id; the core returns the next state with the effects
//! and timers to carry out, as data.
//!
//! **What it must not know:** storage, the network, threads, async runtimes, the clock, random
//! numbers. It has no such dependency (a CI check keeps it so). The engine feeds it inputs, commits
//! what it decides and carries out the effects.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod breaker;
pub mod cases;
pub mod customer;
pub mod diagram;
pub mod governor;
pub mod governors;
pub mod ids;
pub mod input;
pub mod money;
pub mod orchestrator;
pub mod sequence;
pub mod timeline;
pub mod timers;

pub use customer::Customer;
pub use governor::{EffectKind, GovernorKind, Rejection};
pub use input::{CatalogCommand, CustomerEvent, EventKind, Input, InputError};
pub use orchestrator::{decide_catalog, decide_event, EventContext, EventResult, EventStatus};
