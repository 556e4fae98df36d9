//! End-to-end tests of the `msb` command. One binary; each module a feature.

mod agent;
mod build;
mod cache;
mod fake_registry;
mod faults;
mod images;
mod init;
mod publish;
mod sdk;
mod test;
mod tree;
mod up;
mod validate;
mod watch;
