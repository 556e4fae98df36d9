//! End-to-end tests of the `msb` command. One binary; each module a feature.

mod build;
mod cache;
mod images;
mod test;
mod validate;
