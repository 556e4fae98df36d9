//! The few kernel facilities msb builds on, each behind a small safe API.

pub mod overlay;
