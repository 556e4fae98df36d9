//! The sandbox's rootfs view and the files msb lays beside it.
//!
//! The view is an overlay of the image and patch layers (read-only, shared, never copied) under
//! the sandbox's own `upper/`, plus two bind mounts: the sandbox's `guest/` folder at `/.msb`
//! (read-only: the agent binary, its configuration and the scripts) and `guest/run` at
//! `/.msb/run` (read-write: the agent's socket, reachable from the host). Booting costs one
//! overlay mount whatever the image's size. One bind for the folder rather than one per file:
//! `crun run` of the same bundle took 0.3 to 1 ms less with these two binds than with four
//! (crun 1.8, hyperfine, alternating rounds).

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, openat2, readlinkat};
use serde::Serialize;

use super::state::{SandboxDir, StopSignal, empty_dir, remove_entries, remove_file_if_present, write_if_changed};
use crate::agent::protocol::{AgentConfig, GUEST_RUN, InitMode, Listen};
use super::{Network, Pid1, RuntimeError, SandboxSpec};
use crate::manifest::Init;
use crate::sys::overlay::{self, Upper};

/// The inits `init = "auto"` recognizes, in the order it looks for them.
pub const KNOWN_INITS: [&str; 4] = ["/init", "/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd"];
/// What `auto` tries when the entrypoint is not a known init (`/init` is only taken from the
/// entrypoint: many images have an unrelated `/init`).
const AUTO_CANDIDATES: [&str; 3] = ["/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

/// Mounts the view as a detached overlay (see `sys::overlay`): nothing is visible anywhere until a
/// backend attaches it inside its own mount namespace.
pub(crate) fn mount(dir: &SandboxDir, lowers: &[PathBuf]) -> Result<OwnedFd, RuntimeError> {
    let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    let (upper, work) = (dir.upper(), dir.work());
    overlay::mount(&lowers, Some(Upper { upper: &upper, work: &work })).map_err(|cause| RuntimeError::Io {
        op: "mount the rootfs view over",
        path: lowers.first().map(|p| p.to_path_buf()).unwrap_or_default(),
        cause,
    })
}

/// Prepares the sandbox's folder for a boot: its own layer (reset when the lowers changed since
/// it was written: overlayfs does not support changing lowers under an upper), the agent, an
/// empty `run/`, the scripts, and a fresh log. What it replaces goes to the trash (see
/// [`SandboxDir::discard`]), for [`SandboxDir::empty_trash`] to remove while the sandbox runs.
pub(crate) fn prepare_dir(dir: &SandboxDir, spec: &SandboxSpec) -> Result<(), RuntimeError> {
    fs::create_dir_all(dir.path()).map_err(RuntimeError::io("create", dir.path()))?;
    let lowers_json = serde_json::to_vec(&spec.lowers).unwrap_or_default();
    let previous = fs::read(dir.lowers_file()).ok();
    if previous.as_deref() != Some(lowers_json.as_slice()) {
        if previous.is_some() {
            tracing::info!(sandbox = dir.name(), "its layers changed: starting from a fresh sandbox layer");
        }
        dir.discard(&dir.upper())?;
        dir.discard(&dir.work())?;
        fs::write(dir.lowers_file(), &lowers_json).map_err(RuntimeError::io("write", dir.lowers_file()))?;
    }
    // The overlay's scratch folder from the last mount, which the kernel would empty at mount.
    dir.discard(&dir.work().join("work"))?;
    for path in [dir.upper(), dir.work(), dir.rootfs(), dir.bundle(), dir.scripts()] {
        fs::create_dir_all(&path).map_err(RuntimeError::io("create", &path))?;
    }
    empty_dir(&dir.run_dir())?;
    place_agent(dir, &spec.pid1)?;
    sync_scripts(dir, &spec.scripts)?;
    for log in [dir.log(), dir.runtime_log()] {
        if fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
            continue;
        }
        dir.discard(&log)?;
        fs::write(&log, b"").map_err(RuntimeError::io("create", &log))?;
    }
    Ok(())
}

/// Puts the agent at `guest/agent`, where the bind of `guest/` shows it: a hard link to the
/// installed binary (a copy when `MSB_HOME` is on another filesystem), made again when that
/// binary changed. A link or copy with the binary's size and modification time is current.
fn place_agent(dir: &SandboxDir, pid1: &Pid1) -> Result<(), RuntimeError> {
    let target = dir.guest_agent();
    let Pid1::Agent { binary } = pid1 else { return remove_file_if_present(&target) };
    let source = fs::metadata(binary).map_err(RuntimeError::io("read", binary))?;
    let modified = source.modified().map_err(RuntimeError::io("read", binary))?;
    if let Ok(placed) = fs::symlink_metadata(&target)
        && placed.is_file()
        && placed.len() == source.len()
        && placed.modified().is_ok_and(|m| m == modified)
    {
        return Ok(());
    }
    let next = dir.guest().join(".agent.next");
    remove_file_if_present(&next)?;
    if fs::hard_link(binary, &next).is_err() {
        fs::copy(binary, &next).map_err(RuntimeError::io("copy the agent to", &next))?;
        let copy = fs::File::options().write(true).open(&next).map_err(RuntimeError::io("open", &next))?;
        copy.set_modified(modified).map_err(RuntimeError::io("date", &next))?;
    }
    fs::rename(&next, &target).map_err(RuntimeError::io("place the agent at", &target))
}

/// Makes `scripts/` hold exactly `scripts`, executable, leaving unchanged ones as they are.
fn sync_scripts(dir: &SandboxDir, scripts: &[(String, Vec<u8>)]) -> Result<(), RuntimeError> {
    let folder = dir.scripts();
    for (name, _) in scripts {
        if name.is_empty() || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
            return Err(RuntimeError::Invalid { name: dir.name().into(), reason: format!("`{name}` is not a script name") });
        }
    }
    remove_entries(&folder, |entry| {
        entry.file_type().is_ok_and(|t| t.is_file()) && scripts.iter().any(|(name, _)| entry.file_name() == name.as_str())
    })?;
    for (name, body) in scripts {
        let path = folder.join(name);
        write_if_changed(&path, body)?;
        let mode = fs::metadata(&path).map_err(RuntimeError::io("stat", &path))?.permissions().mode() & 0o7777;
        if mode != 0o755 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(RuntimeError::io("chmod", &path))?;
        }
    }
    Ok(())
}

/// An init chosen for a sandbox, checked in its rootfs view before boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedInit {
    /// As the guest names it (`/sbin/init`).
    pub path: String,
    /// How it is asked to power off, from what the path finally resolves to.
    pub stop_signal: StopSignal,
}

/// Resolves `init` in the view `root`: `auto` picks the entrypoint when it is a known init, else
/// the first executable candidate; a path must name an executable file. `None` for `agent`.
pub fn resolve_init(root: &OwnedFd, init: &Init, argv: &[String]) -> Result<Option<ResolvedInit>, String> {
    let path = match init {
        Init::Agent => return Ok(None),
        Init::Path(path) => {
            let path = path.as_str();
            return match inspect(root, path) {
                Ok(Found { executable: true, final_path }) => Ok(Some(resolved(path, &final_path))),
                Ok(Found { executable: false, .. }) => Err(format!("init `{path}` is not an executable file in the image")),
                Err(err) => Err(format!("init `{path}` cannot be found in the image: {err}")),
            };
        }
        Init::Auto => argv.first().filter(|first| KNOWN_INITS.contains(&first.as_str())).map(String::as_str),
    };
    let candidates = path.into_iter().chain(AUTO_CANDIDATES);
    for candidate in candidates {
        if let Ok(Found { executable: true, final_path }) = inspect(root, candidate) {
            return Ok(Some(resolved(candidate, &final_path)));
        }
    }
    Err(format!("init = \"auto\" found no init in the image (looked for {})", AUTO_CANDIDATES.join(", ")))
}

fn resolved(path: &str, final_path: &str) -> ResolvedInit {
    let name = |p: &str| p.rsplit('/').next().unwrap_or_default().to_owned();
    let stop_signal = match name(final_path).as_str() {
        "systemd" => StopSignal::SystemdPoweroff,
        "busybox" if name(path) == "init" => StopSignal::BusyboxPoweroff,
        // sysvinit ignores SIGTERM; SIGINT is Ctrl-Alt-Del, whose inittab action shuts down.
        "init" => StopSignal::CtrlAltDel,
        // runit ignores SIGTERM, and its Ctrl-Alt-Del script (Debian's) waits 14 s.
        "runit-init" => StopSignal::RunitHalt,
        _ => StopSignal::Term,
    };
    ResolvedInit { path: path.to_owned(), stop_signal }
}

struct Found {
    executable: bool,
    /// The path after following the last component's symlinks (parents are resolved by the
    /// kernel, confined to the view).
    final_path: String,
}

/// Follows `path` inside `root` (never outside it: `RESOLVE_IN_ROOT`) and tells whether it ends
/// at an executable regular file.
fn inspect(root: &OwnedFd, path: &str) -> io::Result<Found> {
    let mut path = path.to_owned();
    for _ in 0..16 {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let parent_fd = openat2(root, if parent.is_empty() { "/" } else { parent }, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::IN_ROOT)?;
        match readlinkat(&parent_fd, name, Vec::new()) {
            Ok(target) => {
                let target = target.to_string_lossy().into_owned();
                path = if target.starts_with('/') { target } else { format!("{parent}/{target}") };
            }
            Err(rustix::io::Errno::INVAL) => {
                let fd = openat2(&parent_fd, name, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::IN_ROOT)?;
                let stat = rustix::fs::fstat(&fd)?;
                let regular = rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file();
                return Ok(Found { executable: regular && stat.st_mode & 0o111 != 0, final_path: path });
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// What the agent reads from `/.msb/config.json`.
///
/// It serializes as the agent's own [`AgentConfig`] (which refuses unknown keys): `init` becomes
/// [`InitMode`], `vsock_port` becomes [`Listen`], and the host-side fields
/// (`mount_filesystems`, `network`) are not sent: the agent mounts whatever is not mounted yet,
/// and the network is the runtime's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: Option<String>,
    /// The init to hand PID 1 to, already checked in the view; none keeps the agent as PID 1.
    pub init: Option<String>,
    /// Where the agent listens: a vsock port that libkrun maps to the host socket (krun), or
    /// without one the unix socket `/.msb/run/agent.sock`, which the host reaches through the
    /// bind of `guest/run` (oci, and images published with the agent).
    pub vsock_port: Option<u32>,
    pub hostname: String,
    /// Host side only: whether the runtime leaves /proc, /sys, /dev... to the agent (krun).
    pub mount_filesystems: bool,
    /// Host side only.
    pub network: Network,
}

impl GuestConfig {
    /// The configuration for `spec`'s main command, init and hostname, listening on a vsock
    /// port or the unix socket.
    pub fn new(spec: &SandboxSpec, init: Option<ResolvedInit>, vsock_port: Option<u32>) -> GuestConfig {
        GuestConfig {
            argv: spec.process.argv.clone(),
            env: spec.process.env.clone(),
            workdir: spec.process.workdir.clone(),
            user: spec.process.user.clone(),
            init: init.map(|i| i.path),
            mount_filesystems: vsock_port.is_some(),
            vsock_port,
            hostname: spec.name.clone(),
            network: spec.network,
        }
    }
}

impl GuestConfig {
    /// The agent's own configuration, as written to `/.msb/config.json`.
    pub fn to_agent(&self) -> AgentConfig {
        let listen = match self.vsock_port {
            Some(port) => Listen::Vsock(port),
            None => Listen::Unix(format!("{GUEST_RUN}/{}", super::AGENT_SOCKET_NAME)),
        };
        AgentConfig {
            argv: self.argv.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            init: self.init.clone().map_or(InitMode::Agent, InitMode::Path),
            listen,
            hostname: Some(self.hostname.clone()),
        }
    }
}

/// Serializes as [`AgentConfig`]: the agent refuses anything else.
impl Serialize for GuestConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_agent().serialize(serializer)
    }
}

/// Writes the agent's configuration to the file bound at `/.msb/config.json`.
pub(crate) fn write_guest_config(dir: &SandboxDir, config: &GuestConfig) -> Result<(), RuntimeError> {
    let path = dir.guest_config();
    let bytes = serde_json::to_vec_pretty(config)
        .map_err(|err| RuntimeError::Io { op: "encode", path: path.clone(), cause: io::Error::other(err) })?;
    write_if_changed(&path, &bytes).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::GuestPath;
    use std::os::unix::fs::symlink;

    fn image() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let root = root.as_path();
        for d in ["sbin", "lib/systemd", "bin", "usr"] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        fs::write(root.join("lib/systemd/systemd"), "").expect("systemd");
        fs::set_permissions(root.join("lib/systemd/systemd"), fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink("../lib/systemd/systemd", root.join("sbin/init")).expect("link");
        fs::write(root.join("bin/busybox"), "").expect("busybox");
        fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink("/bin/busybox", root.join("bin/init")).expect("link");
        fs::write(root.join("bin/data"), "").expect("data");
        // An escape attempt: must resolve inside the root.
        symlink("../../../../../../bin/sh", root.join("usr/escape")).expect("link");
        // A read-only overlay needs two lowers (and layers must not overlap).
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        let fd = overlay::mount(&[root, &empty], None).expect("overlay");
        (dir, fd)
    }

    fn path(p: &str) -> Init {
        Init::Path(GuestPath::parse(p).expect("guest path"))
    }

    #[test]
    fn scripts_are_synced_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let home = tempfile::tempdir().expect("tempdir");
        let dir = SandboxDir::new(home.path(), "w");
        fs::create_dir_all(dir.scripts()).expect("mkdir");
        let script = |name: &str, body: &str| (name.to_owned(), body.as_bytes().to_vec());
        sync_scripts(&dir, &[script("keep", "#!/bin/sh\necho 1\n"), script("old", "#!/bin/sh\n")]).expect("sync");
        let inode = fs::metadata(dir.scripts().join("keep")).expect("keep").ino();
        fs::create_dir(dir.scripts().join("stray")).expect("stray folder");

        sync_scripts(&dir, &[script("keep", "#!/bin/sh\necho 1\n"), script("new", "#!/bin/sh\necho 2\n")]).expect("sync");
        let mut names: Vec<String> = fs::read_dir(dir.scripts()).expect("read").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["keep", "new"], "removed scripts and strays go");
        let keep = fs::metadata(dir.scripts().join("keep")).expect("keep");
        assert_eq!(keep.ino(), inode, "an unchanged script is left as it is");
        assert_eq!(fs::read_to_string(dir.scripts().join("new")).expect("new"), "#!/bin/sh\necho 2\n");
        assert_eq!(fs::metadata(dir.scripts().join("new")).expect("new").permissions().mode() & 0o777, 0o755);

        let err = sync_scripts(&dir, &[script("../x", "")]).unwrap_err();
        assert!(err.to_string().contains("not a script name"), "{err}");
    }

    #[test]
    fn the_agent_is_linked_into_the_guest_folder_and_kept_current() {
        use std::os::unix::fs::MetadataExt;
        let home = tempfile::tempdir().expect("tempdir");
        let dir = SandboxDir::new(home.path(), "w");
        fs::create_dir_all(dir.guest()).expect("mkdir");
        let binary = home.path().join("msb-agent");
        fs::write(&binary, "agent 1").expect("agent");
        let agent = Pid1::Agent { binary: binary.clone() };

        place_agent(&dir, &agent).expect("place");
        let ino = |path: &Path| fs::metadata(path).expect("stat").ino();
        assert_eq!(ino(&dir.guest_agent()), ino(&binary), "a hard link, not a copy");
        place_agent(&dir, &agent).expect("place again");
        assert_eq!(ino(&dir.guest_agent()), ino(&binary));

        // A new build is a new file (cargo and install(1) replace, not rewrite).
        fs::remove_file(&binary).expect("rm");
        fs::write(&binary, "agent 2, longer").expect("agent");
        place_agent(&dir, &agent).expect("place the new one");
        assert_eq!(fs::read_to_string(dir.guest_agent()).expect("read"), "agent 2, longer");
        assert!(!dir.guest().join(".agent.next").exists());

        place_agent(&dir, &Pid1::Command).expect("no agent");
        assert!(!dir.guest_agent().exists(), "a sandbox without the agent shows none");
        place_agent(&dir, &Pid1::Command).expect("still none");
    }

    #[test]
    fn the_agent_is_copied_across_filesystems() {
        use std::os::unix::fs::MetadataExt;
        // /dev/shm is a tmpfs on Linux hosts; the test needs it on another device than /tmp.
        let home = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir_in("/dev/shm").ok().filter(|shm| {
            fs::metadata(shm.path()).expect("stat").dev() != fs::metadata(home.path()).expect("stat").dev()
        });
        let Some(elsewhere) = elsewhere else {
            println!("SKIPPED cross-filesystem copy test: no /dev/shm on another filesystem than the temporary folder");
            return;
        };
        let dir = SandboxDir::new(home.path(), "w");
        fs::create_dir_all(dir.guest()).expect("mkdir");
        let binary = elsewhere.path().join("msb-agent");
        fs::write(&binary, "agent").expect("agent");
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod");
        let agent = Pid1::Agent { binary: binary.clone() };
        place_agent(&dir, &agent).expect("place");
        let copy = fs::metadata(dir.guest_agent()).expect("copied");
        assert_eq!((copy.mode() & 0o777, copy.mtime()), (0o755, fs::metadata(&binary).expect("stat").mtime()));
        let first = copy.ino();
        place_agent(&dir, &agent).expect("place again");
        assert_eq!(fs::metadata(dir.guest_agent()).expect("copied").ino(), first, "a current copy is kept");
    }

    #[test]
    fn auto_init_follows_symlinks_to_systemd() {
        let (_dir, root) = image();
        let init = resolve_init(&root, &Init::Auto, &[]).expect("found").expect("some");
        assert_eq!(init, ResolvedInit { path: "/sbin/init".into(), stop_signal: StopSignal::SystemdPoweroff });
        assert_eq!(resolve_init(&root, &Init::Agent, &[]), Ok(None));
    }

    #[test]
    fn each_init_is_stopped_with_its_own_signal() {
        let cases = [
            ("/sbin/init", "/lib/systemd/systemd", StopSignal::SystemdPoweroff),
            ("/sbin/init", "/bin/busybox", StopSignal::BusyboxPoweroff),
            ("/sbin/init", "/sbin/init", StopSignal::CtrlAltDel),
            ("/sbin/init", "/lib/runit/runit-init", StopSignal::RunitHalt),
            ("/sbin/openrc-init", "/sbin/openrc-init", StopSignal::Term),
            ("/usr/bin/s6-svscan", "/usr/bin/s6-svscan", StopSignal::Term),
            ("/bin/sh", "/bin/busybox", StopSignal::Term),
        ];
        for (path, final_path, signal) in cases {
            assert_eq!(resolved(path, final_path).stop_signal, signal, "{path} -> {final_path}");
        }
    }

    #[test]
    fn pinned_inits_are_checked_before_boot() {
        let (_dir, root) = image();
        let busybox = resolve_init(&root, &path("/bin/init"), &[]).expect("ok").expect("some");
        assert_eq!(busybox.stop_signal, StopSignal::BusyboxPoweroff);
        let err = resolve_init(&root, &path("/bin/data"), &[]).unwrap_err();
        assert!(err.contains("not an executable file"), "{err}");
        let err = resolve_init(&root, &path("/sbin/nope"), &[]).unwrap_err();
        assert!(err.contains("cannot be found"), "{err}");
        // `/usr/escape` points far above the root: it resolves inside it, where nothing is.
        assert!(resolve_init(&root, &path("/usr/escape"), &[]).is_err());
    }

    /// The agent (`agent::protocol::AgentConfig`) refuses unknown keys: this is its JSON shape.
    #[test]
    fn guest_config_speaks_the_agent_s_json() {
        let config = GuestConfig {
            argv: vec!["/app".into()],
            env: vec!["A=1".into()],
            workdir: "/".into(),
            user: None,
            init: Some("/sbin/init".into()),
            vsock_port: None,
            hostname: "worker".into(),
            mount_filesystems: false,
            network: Network::Private,
        };
        assert_eq!(
            serde_json::to_value(&config).expect("json"),
            serde_json::json!({
                "argv": ["/app"], "env": ["A=1"], "workdir": "/",
                "init": {"path": "/sbin/init"}, "listen": {"unix": "/.msb/run/agent.sock"}, "hostname": "worker"
            })
        );
        let json = serde_json::to_string(&config).expect("json");
        assert_eq!(serde_json::from_str::<AgentConfig>(&json).expect("the agent reads it"), config.to_agent());
        let config = GuestConfig { init: None, vsock_port: Some(7000), user: Some("app".into()), ..config };
        let agent: AgentConfig = serde_json::from_str(&serde_json::to_string(&config).expect("json")).expect("the agent reads it");
        assert_eq!((agent.init, agent.listen, agent.user.as_deref()), (InitMode::Agent, Listen::Vsock(7000), Some("app")));
    }

    #[test]
    fn auto_without_an_init_is_a_clear_error() {
        let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let root = overlay::mount(&[a.path(), b.path()], None).expect("overlay");
        let err = resolve_init(&root, &Init::Auto, &["/app".into()]).unwrap_err();
        assert!(err.contains("found no init") && err.contains("/sbin/init"), "{err}");
    }
}
