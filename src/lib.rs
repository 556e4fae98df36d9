//! msb: run sandboxes described by a committed `Sandboxfile`.
//!
//! The modules follow the data path: [`manifest`] (the Sandboxfile as written and checked) →
//! [`store`] (images and layers on disk).

pub mod cli;
pub mod env;
pub mod error;
pub mod manifest;
pub mod plan;
pub mod project;
pub mod reference;
pub mod store;
pub mod sys;
pub mod watch;
