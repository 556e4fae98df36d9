//! msb: run sandboxes described by a committed `Sandboxfile`.
//!
//! The modules follow the data path: [`manifest`] (the Sandboxfile as written and checked) →
//! [`plan`] (what each sandbox needs, cached or built and why) → [`project`] and [`store`] (images
//! and layers on disk, patch layers built through [`sys`]); [`watch`] says what an edit changes.

pub mod agent;
pub mod cli;
pub mod env;
pub mod error;
pub mod manifest;
pub mod plan;
pub mod project;
pub mod publish;
pub mod reference;
pub mod runtime;
pub mod sandbox;
pub mod store;
pub mod supervisor;
pub mod sys;
pub mod watch;
