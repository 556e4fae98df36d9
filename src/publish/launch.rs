//! How a published image starts: the image config's Entrypoint, Cmd, Env, WorkingDir, User and
//! StopSignal, and, with the agent, the `/.msb/config.json` it reads.
//!
//! With the agent (the default), the image starts as `msb up` boots a sandbox: the agent is the
//! entrypoint and PID 1, running as root, and reads the sandbox's command, env, workdir, user and
//! init from the baked `/.msb/config.json`, the same document the runtime binds there. The image's
//! Env and WorkingDir repeat the sandbox's, so `kubectl exec` lands where the command runs.
//!
//! Without it (`--no-agent`), the image runs what the agent would have started, directly: the
//! merged entrypoint and command (Docker's rules, as `runtime::ProcessSpec::merge`), or the
//! chosen init as PID 1. Nothing then serves `msb exec`; scripts are still on `PATH`.

use crate::manifest::{Init, SandboxConfig};
use crate::agent::protocol::{GUEST_AGENT, GUEST_SCRIPTS};
use crate::runtime::{GuestConfig, ProcessSpec, ResolvedInit, StopSignal};
use crate::store::RuntimeConfig;

/// `PATH` when neither the image nor the Sandboxfile sets one (the OCI runtimes' default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the image runs, as its config says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// None is root.
    pub user: Option<String>,
    /// The init's own poweroff signal, when it has one (`SIGRTMIN+4` for systemd).
    pub stop_signal: Option<String>,
    /// With the agent: what it reads from `/.msb/config.json`.
    pub guest: Option<GuestConfig>,
}

/// Why the image cannot be given a way to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error("sandbox `{0}` has nothing to run without the agent: neither the image nor the Sandboxfile gives an entrypoint or a command; set `command`, or publish with the agent")]
    NothingToRun(String),
}

/// The image's way to start, for `sandbox` on `image` with `init` already resolved in its root
/// (`None` for `init = "agent"`). `agent` says whether the agent is baked in.
pub fn launch(
    name: &str,
    sandbox: &SandboxConfig,
    image: &RuntimeConfig,
    init: Option<&ResolvedInit>,
    agent: bool,
) -> Result<Launch, LaunchError> {
    let process = ProcessSpec::merge(image, sandbox);
    let env = with_scripts_on_path(&process.env);
    // As the runtime's bundle: PID 1 (systemd especially) reads `container` to know it is in one.
    let mut pid1_env: Vec<String> = env.iter().filter(|e| !e.starts_with("container=")).cloned().collect();
    pid1_env.push("container=msb".into());
    let stop_signal = init.and_then(|i| signal_name(i.stop_signal)).map(str::to_owned);

    if agent {
        let guest = GuestConfig {
            argv: process.argv.clone(),
            env: env.clone(),
            workdir: process.workdir.clone(),
            user: process.user.clone(),
            init: init.map(|i| i.path.clone()),
            vsock_port: None,
            hostname: name.to_owned(),
            // Every OCI runtime (runc, crun, Kata) mounts /proc, /sys and /dev itself.
            mount_filesystems: false,
            network: sandbox.network,
        };
        return Ok(Launch {
            entrypoint: Some(vec![GUEST_AGENT.to_owned()]),
            cmd: None,
            env: pid1_env,
            working_dir: process.workdir,
            // The agent needs root to set up; it switches to the sandbox's user for the command.
            user: None,
            stop_signal,
            guest: Some(guest),
        });
    }
    if let Some(init) = init {
        let args: Vec<String> = match process.argv.split_first() {
            Some((first, rest)) if *first == init.path => rest.to_vec(),
            _ => Vec::new(),
        };
        return Ok(Launch {
            entrypoint: Some(vec![init.path.clone()]),
            cmd: (!args.is_empty()).then_some(args),
            env: pid1_env,
            working_dir: process.workdir,
            user: None,
            stop_signal,
            guest: None,
        });
    }
    if process.argv.is_empty() {
        return Err(LaunchError::NothingToRun(name.to_owned()));
    }
    // Entrypoint and Cmd kept apart, so a Pod's `args` replaces the command as users expect.
    let entrypoint = sandbox.entrypoint.as_ref().or(image.entrypoint.as_ref()).cloned().filter(|e| !e.is_empty());
    let cmd = match (&sandbox.command, &sandbox.entrypoint) {
        (Some(command), _) => Some(command.clone()),
        (None, Some(_)) => None,
        (None, None) => image.cmd.clone(),
    };
    Ok(Launch {
        entrypoint,
        cmd: cmd.filter(|c| !c.is_empty()),
        env: pid1_env,
        working_dir: process.workdir,
        user: process.user,
        stop_signal: None,
        guest: None,
    })
}

/// `PATH` with `/.msb/scripts` first, as the agent puts it for every command it runs, so
/// scripts are callable by name the same way with or without the agent (and in `kubectl exec`).
fn with_scripts_on_path(env: &[String]) -> Vec<String> {
    let mut env = env.to_vec();
    match env.iter_mut().find(|e| e.starts_with("PATH=")) {
        Some(path) => {
            let rest: Vec<&str> = path["PATH=".len()..].split(':').filter(|p| !p.is_empty() && *p != GUEST_SCRIPTS).collect();
            *path = format!("PATH={}", std::iter::once(GUEST_SCRIPTS).chain(rest).collect::<Vec<_>>().join(":"));
        }
        None => env.push(format!("PATH={GUEST_SCRIPTS}:{DEFAULT_PATH}")),
    }
    env
}

/// The signal as an image config names it.
fn signal_name(signal: StopSignal) -> Option<&'static str> {
    match signal {
        StopSignal::Term => None,
        StopSignal::SystemdPoweroff => Some("SIGRTMIN+4"),
        StopSignal::BusyboxPoweroff => Some("SIGUSR2"),
        StopSignal::CtrlAltDel => Some("SIGINT"),
        // An image config can only name a signal; runit's halt flag is not raised by one.
        StopSignal::RunitHalt => None,
    }
}

/// Whether `init` needs looking up in the image's root before the config can be written.
pub fn needs_root(init: &Init) -> bool {
    !matches!(init, Init::Agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(toml: &str) -> SandboxConfig {
        toml::from_str(&format!("image = \"alpine\"\n{toml}")).expect("sandbox config")
    }

    fn busybox() -> RuntimeConfig {
        RuntimeConfig { cmd: Some(vec!["/bin/sh".into()]), env: vec!["PATH=/usr/bin:/bin".into()], ..RuntimeConfig::default() }
    }

    #[test]
    fn without_the_agent_the_merged_command_is_the_entrypoint() {
        let config = sandbox("command = [\"/bin/echo\", \"hi\"]\nworkdir = \"/app\"\nuser = \"1000:1000\"\nenv = { A = \"1\" }");
        let launch = launch("w", &config, &busybox(), None, false).expect("launch");
        assert_eq!(launch.entrypoint, None);
        assert_eq!(launch.cmd, Some(vec!["/bin/echo".into(), "hi".into()]));
        assert_eq!(launch.env, ["PATH=/.msb/scripts:/usr/bin:/bin", "A=1", "container=msb"]);
        assert_eq!((launch.working_dir.as_str(), launch.user.as_deref()), ("/app", Some("1000:1000")));
        assert_eq!(launch.guest, None);
    }

    #[test]
    fn an_entrypoint_of_the_sandboxfile_drops_the_image_command() {
        let image = RuntimeConfig { entrypoint: Some(vec!["/init".into()]), cmd: Some(vec!["--x".into()]), ..RuntimeConfig::default() };
        let launch = launch("w", &sandbox("entrypoint = [\"/app/run\"]"), &image, None, false).expect("launch");
        assert_eq!((launch.entrypoint, launch.cmd), (Some(vec!["/app/run".into()]), None));
        assert!(launch.env.iter().any(|e| e == "PATH=/.msb/scripts:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    }

    #[test]
    fn with_the_agent_it_is_pid_1_as_root_and_the_command_is_its_config() {
        let config = sandbox("command = [\"/bin/echo\", \"hi\"]\nuser = \"nobody\"");
        let launch = launch("worker", &config, &busybox(), None, true).expect("launch");
        assert_eq!((launch.entrypoint.as_deref(), launch.cmd.as_deref(), launch.user.as_deref()), (Some(&["/.msb/agent".to_owned()][..]), None, None));
        let guest = launch.guest.expect("guest config");
        assert_eq!(guest.argv, ["/bin/echo", "hi"]);
        assert_eq!(guest.user.as_deref(), Some("nobody"));
        assert_eq!(guest.to_agent().listen, crate::agent::protocol::Listen::Unix("/.msb/run/agent.sock".into()));
        assert!(!guest.mount_filesystems);
        assert!(!guest.env.iter().any(|e| e.starts_with("container=")));
    }

    #[test]
    fn an_init_is_pid_1_with_its_poweroff_signal() {
        let systemd = ResolvedInit { path: "/sbin/init".into(), stop_signal: StopSignal::SystemdPoweroff };
        let launch_direct = launch("w", &sandbox("init = \"auto\""), &busybox(), Some(&systemd), false).expect("launch");
        assert_eq!(launch_direct.entrypoint, Some(vec!["/sbin/init".into()]));
        assert_eq!((launch_direct.cmd, launch_direct.user), (None, None));
        assert_eq!(launch_direct.stop_signal.as_deref(), Some("SIGRTMIN+4"));
        let with_agent = launch("w", &sandbox("init = \"auto\""), &busybox(), Some(&systemd), true).expect("launch");
        assert_eq!(with_agent.guest.and_then(|g| g.init).as_deref(), Some("/sbin/init"));
    }

    #[test]
    fn nothing_to_run_is_an_error_without_the_agent() {
        let err = launch("w", &sandbox(""), &RuntimeConfig::default(), None, false).unwrap_err();
        assert!(err.to_string().contains("nothing to run"), "{err}");
        assert!(launch("w", &sandbox(""), &RuntimeConfig::default(), None, true).is_ok(), "the agent alone serves exec");
    }
}
