//! msb: run sandboxes described by a committed `Sandboxfile`, from the command line or from Rust.
//!
//! The SDK and the Sandboxfile are one model: a [`SandboxBuilder`] is written out as a Sandboxfile
//! table and goes through the same validation, plan, layer cache and runtime as `msb up`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), msb::Error> {
//! use msb::Sandbox;
//!
//! let sb = Sandbox::builder("worker")
//!     .image("alpine:3.20")
//!     .command(["/bin/sh", "-c", "cat /etc/greeting.txt"])
//!     .script("greet", "echo hello")
//!     .patch(|p| p
//!         .text("/etc/greeting.txt", "Hello from a patched rootfs!\n", None, false)
//!         .mkdir("/app", Some(0o755))
//!         .copy_file("./cert.pem", "/etc/ssl/cert.pem", None, false))
//!     .create()
//!     .await?;
//! println!("{}", sb.exec("greet", [] as [&str; 0]).await?.stdout);
//! # Ok(()) }
//! ```
//!
//! is the same sandbox as this Sandboxfile, run with `msb up -d worker`:
//!
//! ```toml
//! [sandbox.worker]
//! image = "alpine:3.20"
//! command = ["/bin/sh", "-c", "cat /etc/greeting.txt"]
//!
//! [sandbox.worker.scripts]
//! greet = "echo hello"
//!
//! [[sandbox.worker.patch]]
//! op = "text"
//! path = "/etc/greeting.txt"
//! content = "Hello from a patched rootfs!\n"
//!
//! [[sandbox.worker.patch]]
//! op = "mkdir"
//! path = "/app"
//! mode = "0755"
//!
//! [[sandbox.worker.patch]]
//! op = "copy_file"
//! src = "./cert.pem"
//! dst = "/etc/ssl/cert.pem"
//! ```
//!
//! The modules follow the data path: [`manifest`] (the Sandboxfile as written and checked) →
//! [`plan`] (what each sandbox needs, cached or built and why) → [`project`] and [`store`] (images
//! and layers on disk, patch layers built through [`sys`]) → [`sandbox`] and [`runtime`] (booting,
//! through crun or libkrun, with the [`agent`] as PID 1) → [`supervisor`] (foreground runs and
//! `--watch`, with [`watch`] saying what an edit changes); [`sdk`] is the Rust face of all of it.

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
pub mod sdk;
pub mod store;
pub mod supervisor;
pub mod sys;
pub mod watch;

pub use error::Error;
pub use manifest::Runtime;
pub use sdk::{Init, Output, PatchBuilder, Sandbox, SandboxBuilder};
