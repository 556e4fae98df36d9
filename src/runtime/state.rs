//! A sandbox's folder under `<MSB_HOME>/v1/sandboxes/<name>/` and its `state.json`.
//!
//! ```text
//! sandboxes/<name>/state.json      what runs: backend, pids (with start times), mode, stop signal
//!                  state.json.next the previous state, rewritten by the next write
//!                  lock            held while starting, stopping or cleaning up
//!                  supervisor.lock held for its whole life by a foreground msb: free = msb died
//!                  console.log     the guest's stdout and stderr (this boot)
//!                  runtime.log     crun's (or runc's) own messages
//!                  guest/          bind-mounted read-only at /.msb:
//!                      agent       the agent binary (a hard link to the installed one, or a copy)
//!                      config.json the agent's configuration
//!                      scripts/    the sandbox's scripts
//!                      run/        bind-mounted read-write at /.msb/run: the agent's socket
//!                  upper/ work/    the sandbox's own overlay layer, kept until `rm`
//!                  rootfs/         mount point of the rootfs view (mounted only in crun's namespace)
//!                  bundle/         the OCI bundle's config.json
//!                  trash/          what boots replaced, removed while the next boot runs
//!                  lowers.json     the lowers `upper/` was written against
//!                  sandboxfile     the Sandboxfile it belongs to: another one may not boot it
//! ```

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::RuntimeError;
use super::sys::ProcessRef;

/// The paths of one sandbox's folder. Holds nothing open.
#[derive(Debug, Clone)]
pub struct SandboxDir {
    root: PathBuf,
    name: String,
}

impl SandboxDir {
    /// The folder of sandbox `name` under `msb_root` (the store's versioned folder,
    /// `Store::root()`, i.e. `<MSB_HOME>/v1`).
    pub fn new(msb_root: &Path, name: &str) -> SandboxDir {
        SandboxDir { root: msb_root.join("sandboxes").join(name), name: name.to_owned() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> &Path {
        &self.root
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("console.log")
    }
    pub fn runtime_log(&self) -> PathBuf {
        self.root.join("runtime.log")
    }
    /// What the guest sees at `/.msb`.
    pub fn guest(&self) -> PathBuf {
        self.root.join("guest")
    }
    pub fn guest_agent(&self) -> PathBuf {
        self.guest().join("agent")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.guest().join("run")
    }
    /// The host side of the agent's socket (`/.msb/run/agent.sock` in the guest).
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir().join(super::AGENT_SOCKET_NAME)
    }
    pub fn upper(&self) -> PathBuf {
        self.root.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.root.join("rootfs")
    }
    pub fn scripts(&self) -> PathBuf {
        self.guest().join("scripts")
    }
    pub fn guest_config(&self) -> PathBuf {
        self.guest().join("config.json")
    }
    pub fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("init.pid")
    }
    pub(crate) fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub(crate) fn supervisor_lock_file(&self) -> PathBuf {
        self.root.join("supervisor.lock")
    }
    pub(crate) fn lowers_file(&self) -> PathBuf {
        self.root.join("lowers.json")
    }
    /// The Sandboxfile the sandbox belongs to (its path, one line).
    pub(crate) fn owner_file(&self) -> PathBuf {
        self.root.join("sandboxfile")
    }
    fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }

    /// Moves `path` (if it exists) into `trash/`, which [`SandboxDir::empty_trash`] empties.
    ///
    /// Freeing the blocks of a file that reached the disk is synchronous I/O on a filesystem
    /// mounted with `discard`: 0.1 to 0.3 ms a file on the machines msb is measured on, more
    /// under load, and each boot replaces a few (the overlay's scratch folder, the logs, the pid
    /// file; the overlay's unmount syncs them all to disk). A rename frees nothing: a boot moves
    /// what it replaces and removes it while the sandbox runs.
    pub(crate) fn discard(&self, path: &Path) -> Result<(), RuntimeError> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut made_trash = false;
        // Names are unique by time (boots of a sandbox hold its lock); a clash only retries.
        for attempt in 0..8 {
            let target = self.trash().join(format!("{stamp}.{attempt}.{name}"));
            match renameat_with(CWD, path, CWD, &target, RenameFlags::NOREPLACE) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(rustix::io::Errno::NOENT) if !made_trash && fs::symlink_metadata(path).is_ok() => {
                    fs::create_dir_all(self.trash()).map_err(RuntimeError::io("create", self.trash()))?;
                    made_trash = true;
                }
                Err(rustix::io::Errno::NOENT) => return Ok(()),
                Err(err) => return Err(RuntimeError::Io { op: "move aside", path: path.to_owned(), cause: err.into() }),
            }
        }
        Err(RuntimeError::Io { op: "move aside", path: path.to_owned(), cause: io::ErrorKind::AlreadyExists.into() })
    }

    /// Removes what [`SandboxDir::discard`] moved aside.
    pub(crate) fn empty_trash(&self) -> Result<(), RuntimeError> {
        match remove_entries(&self.trash(), |_| false) {
            Err(RuntimeError::Io { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => Ok(()),
            done => done,
        }
    }

    /// The OCI container id: the name plus a hash of this folder, so two `MSB_HOME`s running a
    /// sandbox of the same name never share a container id or a cgroup.
    pub fn container_id(&self) -> String {
        let hash = Sha256::digest(self.root.as_os_str().as_encoded_bytes());
        format!("msb-{}-{}", self.name, hex::encode(&hash[..4]))
    }

    /// Reads `state.json`; `None` when the sandbox has never started or was cleaned up.
    pub fn read_state(&self) -> Result<Option<State>, RuntimeError> {
        let path = self.state_file();
        // A reader that opened the file just before one swap of `write_state` and read it
        // while the next write rewrote that same file could see a mix of two states: such a
        // read is made once more, and only a file that fails twice counts as damaged.
        let mut retried = false;
        loop {
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(cause) => return Err(RuntimeError::Io { op: "read", path, cause }),
            };
            match serde_json::from_slice(&bytes) {
                Ok(state) => return Ok(Some(state)),
                Err(_) if !retried => retried = true,
                Err(err) => return Err(RuntimeError::Damaged { name: self.name.clone(), path, reason: err.to_string() }),
            }
        }
    }

    /// Replaces `state.json` atomically, so a reader never sees half a file: the new state is
    /// written into `state.json.next`, which then trades places with `state.json`
    /// (`RENAME_EXCHANGE`); the old file becomes the next write's `state.json.next` and is
    /// rewritten in place. Renaming a new file over the old one would free the old one's blocks
    /// on every write, and on a filesystem mounted with `discard` each free waits for a discard
    /// of the disk: about 0.3 ms each, three writes a boot, on the machines of DESIGN.md.
    pub fn write_state(&self, state: &State) -> Result<(), RuntimeError> {
        let path = self.state_file();
        let next = self.root.join("state.json.next");
        let bytes = serde_json::to_vec_pretty(state).map_err(|err| RuntimeError::Io {
            op: "encode",
            path: path.clone(),
            cause: io::Error::other(err),
        })?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&next)
            .map_err(RuntimeError::io("write", &next))?;
        file.write_all(&bytes).and_then(|()| file.set_len(bytes.len() as u64)).map_err(RuntimeError::io("write", &next))?;
        drop(file);
        match rustix::fs::renameat_with(rustix::fs::CWD, &next, rustix::fs::CWD, &path, rustix::fs::RenameFlags::EXCHANGE) {
            Ok(()) => Ok(()),
            // The first write (nothing to trade places with), or a filesystem without exchange.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                fs::rename(&next, &path).map_err(RuntimeError::io("replace", &path))
            }
            Err(errno) => Err(RuntimeError::Io { op: "replace", path, cause: errno.into() }),
        }
    }
}

/// Which backend runs a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Oci,
    Krun,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Oci => "oci",
            BackendKind::Krun => "krun",
        })
    }
}

/// How PID 1 is asked to stop before it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopSignal {
    /// SIGTERM: the agent, and inits without a poweroff signal of their own.
    Term,
    /// SIGRTMIN+4: systemd's poweroff.
    SystemdPoweroff,
    /// SIGUSR2: busybox init's poweroff.
    BusyboxPoweroff,
    /// SIGINT: Ctrl-Alt-Del, which sysvinit answers by running its inittab's shutdown.
    CtrlAltDel,
    /// `INIT 0` run through the exec server: runit's `runit-init 0` raises runit's halt flag
    /// and sends PID 1 SIGCONT (a signal alone does not halt runit).
    RunitHalt,
}

impl StopSignal {
    /// The signal as `kill(1)`, crun and runc take it: glibc's SIGRTMIN is 34, so SIGRTMIN+4 is 38.
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Term => 15,
            StopSignal::SystemdPoweroff => 38,
            StopSignal::BusyboxPoweroff => 12,
            StopSignal::CtrlAltDel => 2,
            // SIGCONT, which halts runit once its flag is raised (the image config's best word).
            StopSignal::RunitHalt => 18,
        }
    }
}

/// What `state.json` records about a started sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub name: String,
    pub backend: BackendKind,
    /// The OCI runtime binary (crun or runc); none for krun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_runtime: Option<PathBuf>,
    pub container_id: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Started with `-d`: nobody supervises it, it runs until stopped.
    pub detached: bool,
    /// The sandbox's PID 1, as the host sees it (none until the runtime reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<ProcessRef>,
    /// The foreground `crun run`, or the krun VMM process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_process: Option<ProcessRef>,
    /// The msb process that supervises a foreground sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<ProcessRef>,
    pub stop_signal: StopSignal,
    /// The init PID 1 was handed to, as the guest names it (`/sbin/init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_path: Option<String>,
    /// Set once it has stopped, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stopped: bool,
    /// What it was booted from ([`super::SandboxSpec::digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
}

/// What a sandbox is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Never started, or removed.
    Absent,
    /// Another msb holds its lock: it is starting or stopping.
    Busy,
    Running { init: Option<ProcessRef>, backend: BackendKind },
    /// Stopped cleanly; `exit_code` when known.
    Exited { exit_code: Option<i32> },
    /// Its processes or its supervising msb are gone but its state was not cleaned up: what a
    /// killed msb leaves. The next command cleans it.
    Stale { reason: String },
}

/// Removes every entry of `dir` (the folder stays); a missing folder is created.
///
/// The folder itself stays: removing and making it again costs two more journaled metadata
/// operations on every boot, for a folder that is usually empty already.
pub(crate) fn empty_dir(dir: &Path) -> Result<(), RuntimeError> {
    match fs::metadata(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir).map_err(RuntimeError::io("create", dir)),
        _ => remove_entries(dir, |_| false),
    }
}

/// Removes the file `path`; one that is not there is removed already.
pub(crate) fn remove_file_if_present(path: &Path) -> Result<(), RuntimeError> {
    match fs::remove_file(path) {
        Err(cause) if cause.kind() != io::ErrorKind::NotFound => Err(RuntimeError::Io { op: "remove", path: path.to_owned(), cause }),
        _ => Ok(()),
    }
}

/// Removes the entries of `dir` that `keep` does not want: files, links (not what they point
/// at) and whole folders.
pub(crate) fn remove_entries(dir: &Path, keep: impl Fn(&fs::DirEntry) -> bool) -> Result<(), RuntimeError> {
    for entry in fs::read_dir(dir).map_err(RuntimeError::io("read", dir))? {
        let entry = entry.map_err(RuntimeError::io("read", dir))?;
        if keep(&entry) {
            continue;
        }
        let path = entry.path();
        // `file_type` does not follow symlinks: a link to a folder is removed, not its target.
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match removed {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(cause) => return Err(RuntimeError::Io { op: "remove", path, cause }),
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` unless it holds them already (a boot rewrites the same configuration
/// files and scripts each time; an unchanged file is then only read). `true` when it wrote.
pub(crate) fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool, RuntimeError> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    fs::write(path, bytes).map_err(RuntimeError::io("write", path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptying_a_folder_keeps_it_and_does_not_follow_links() {
        let home = tempfile::tempdir().expect("tempdir");
        let (dir, outside) = (home.path().join("run"), home.path().join("outside"));
        fs::create_dir_all(dir.join("sub/deeper")).expect("mkdir");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("kept"), "x").expect("write");
        fs::write(dir.join("agent.sock"), "").expect("write");
        std::os::unix::fs::symlink(&outside, dir.join("link")).expect("symlink");
        empty_dir(&dir).expect("empty");
        assert!(dir.is_dir());
        assert_eq!(fs::read_dir(&dir).expect("read").count(), 0);
        assert!(outside.join("kept").exists(), "a link's target is not the folder's content");
        empty_dir(&home.path().join("new")).expect("create");
        assert!(home.path().join("new").is_dir());
    }

    #[test]
    fn discarded_paths_wait_in_the_trash_until_it_is_emptied() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().expect("tempdir");
        let sandbox = SandboxDir::new(home.path(), "worker");
        fs::create_dir_all(sandbox.work().join("work/left")).expect("mkdir");
        // The overlay makes its scratch folder with mode 0.
        fs::set_permissions(sandbox.work().join("work"), fs::Permissions::from_mode(0o000)).expect("chmod");
        fs::write(sandbox.log(), "boot 1\n").expect("log");

        sandbox.discard(&sandbox.work().join("work")).expect("discard a folder");
        sandbox.discard(&sandbox.log()).expect("discard a file");
        fs::write(sandbox.log(), "boot 2\n").expect("log");
        sandbox.discard(&sandbox.log()).expect("the same name again");
        sandbox.discard(&sandbox.pid_file()).expect("nothing to discard");
        assert!(!sandbox.work().join("work").exists() && !sandbox.log().exists());
        let mut trash: Vec<String> = fs::read_dir(sandbox.trash()).expect("trash").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        trash.sort();
        assert_eq!(trash.len(), 3, "nothing overwritten: {trash:?}");
        let logs: Vec<String> = trash.iter().filter(|n| n.ends_with(".console.log")).map(|n| fs::read_to_string(sandbox.trash().join(n)).expect("log")).collect();
        assert_eq!(logs.len(), 2);
        assert!(logs.contains(&"boot 1\n".to_owned()) && logs.contains(&"boot 2\n".to_owned()));

        sandbox.empty_trash().expect("empty");
        assert_eq!(fs::read_dir(sandbox.trash()).expect("trash").count(), 0);
        assert!(sandbox.work().is_dir(), "only what was discarded goes");
        fs::remove_dir(sandbox.trash()).expect("rmdir");
        sandbox.empty_trash().expect("no trash is an empty trash");
    }

    #[test]
    fn state_round_trips_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = SandboxDir::new(dir.path(), "worker");
        fs::create_dir_all(sandbox.path()).expect("mkdir");
        assert_eq!(sandbox.read_state().expect("read"), None);
        let state = State {
            name: "worker".into(),
            backend: BackendKind::Oci,
            oci_runtime: Some("crun".into()),
            container_id: sandbox.container_id(),
            started_at: 1,
            detached: true,
            init: Some(ProcessRef { pid: 42, start_time: 7 }),
            runtime_process: None,
            supervisor: None,
            stop_signal: StopSignal::SystemdPoweroff,
            init_path: Some("/sbin/init".into()),
            exit_code: None,
            stopped: false,
            spec_digest: Some("sha256:0123".into()),
        };
        sandbox.write_state(&state).expect("write");
        assert_eq!(sandbox.read_state().expect("read"), Some(state));
        fs::write(sandbox.state_file(), r#"{"name":"worker","surprise":1}"#).expect("write");
        assert!(matches!(sandbox.read_state(), Err(RuntimeError::Damaged { .. })));
    }

    #[test]
    fn state_writes_reuse_two_files_and_keep_the_last_state() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = SandboxDir::new(dir.path(), "worker");
        fs::create_dir_all(sandbox.path()).expect("mkdir");
        let mut state = State {
            name: "worker".into(),
            backend: BackendKind::Oci,
            oci_runtime: Some("crun".into()),
            container_id: sandbox.container_id(),
            started_at: 1,
            detached: false,
            init: None,
            runtime_process: None,
            supervisor: None,
            stop_signal: StopSignal::Term,
            init_path: Some("/a/long/path/to/an/init/that/makes/the/first/state/longer".into()),
            exit_code: None,
            stopped: false,
            spec_digest: None,
        };
        let inode = |path: &Path| fs::metadata(path).expect("stat").ino();
        sandbox.write_state(&state).expect("write");
        sandbox.write_state(&state).expect("write");
        let files = [inode(&sandbox.state_file()), inode(&sandbox.path().join("state.json.next"))];
        for code in 0..4 {
            // Shorter each time: a rewritten file keeps none of its longer past.
            state.init_path = None;
            state.exit_code = Some(code);
            state.stopped = code % 2 == 1;
            sandbox.write_state(&state).expect("write");
            assert_eq!(sandbox.read_state().expect("read"), Some(state.clone()));
            let mut now = [inode(&sandbox.state_file()), inode(&sandbox.path().join("state.json.next"))];
            now.sort();
            let mut before = files;
            before.sort();
            assert_eq!(now, before, "no new file is made (a replaced file's blocks would be freed)");
        }
    }

    #[test]
    fn container_ids_differ_between_homes() {
        let a = SandboxDir::new(Path::new("/a/v1"), "worker").container_id();
        let b = SandboxDir::new(Path::new("/b/v1"), "worker").container_id();
        assert!(a.starts_with("msb-worker-") && a.len() == "msb-worker-".len() + 8, "{a}");
        assert_ne!(a, b);
    }
}
