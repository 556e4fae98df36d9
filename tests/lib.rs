//! End-to-end tests of the `msb` command. One binary; each module a feature.

mod test;
mod validate;
