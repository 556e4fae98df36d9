//! Every environment variable msb reads, declared once.

/// The store's root folder (also `--home`).
pub const MSB_HOME: &str = "MSB_HOME";
/// Registries (`host` or `host:port`, comma-separated) that msb may reach over plain HTTP, besides
/// loopback addresses.
pub const MSB_INSECURE_REGISTRIES: &str = "MSB_INSECURE_REGISTRIES";
/// Set (to a `vm.json` path) in the environment of the msb child that becomes a krun VMM.
pub const MSB_KRUN_VMM: &str = "MSB_KRUN_VMM";
/// The agent binary bound at `/.msb/agent` [default: `msb-agent` beside `msb`].
pub const MSB_AGENT: &str = "MSB_AGENT";
/// What msb logs to stderr, as `tracing` targets (`debug`, `msb::runtime=debug,warn`...);
/// default `warn`. Each line carries the time since msb started.
pub const MSB_LOG: &str = "MSB_LOG";
/// Seconds a registry may send nothing before a request to it fails as timed out (default 60).
pub const MSB_REGISTRY_TIMEOUT: &str = "MSB_REGISTRY_TIMEOUT";
/// The XDG cache folder; the store defaults to `$XDG_CACHE_HOME/msb`.
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// The user's home folder, for `~/.cache/msb` and `~/.docker/config.json`.
pub const HOME: &str = "HOME";
/// Docker's configuration folder, where `config.json` holds registry credentials.
pub const DOCKER_CONFIG: &str = "DOCKER_CONFIG";
