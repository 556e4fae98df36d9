//! The only place in the runtime that changes mount namespaces, spawns the OCI runtime and signals
//! sandbox processes.
//!
//! crun needs the rootfs as a *path*, and on hybrid hosts must not see the cgroup2 mount. Both
//! are arranged in a private mount namespace made by a short-lived thread: the thread unshares
//! its mount namespace, makes every mount private (nothing propagates back to the host), hides
//! the cgroup2 mount, attaches the detached overlay at the rootfs path and spawns crun, which
//! inherits that namespace. The thread then ends, so the namespace lives exactly as long as crun
//! and the container: when they die, the kernel drops it and every mount in it. The host's mount
//! table never sees a sandbox mount, so a killed msb cannot leak one.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::CWD;
use rustix::mount::{MountPropagationFlags, MoveMountFlags, UnmountFlags, mount_change, move_mount, unmount};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use serde::{Deserialize, Serialize};

/// What the private mount namespace gets before the command starts.
#[derive(Debug, Default)]
pub(crate) struct Namespace<'a> {
    /// A mount to unmount in the namespace only (the hybrid host's cgroup2 mount).
    pub(crate) hide: Option<&'a Path>,
    /// A detached mount (from `sys::overlay::mount`) and the path to attach it at.
    pub(crate) attach: Option<(OwnedFd, &'a Path)>,
    /// Read-only and read-write bind mounts to make after attaching (krun, which has no OCI
    /// runtime to make them; crun's own binary, sealed read-only): `(source, target, read_only)`.
    pub(crate) binds: Vec<(PathBuf, PathBuf, bool)>,
}

/// Spawns the command `make` builds in a new private mount namespace prepared as `ns` says.
///
/// The namespace is made on a short-lived thread while `make` runs on the caller's, so the two
/// overlap (a quarter of a millisecond a boot, measured). When `make` fails nothing is spawned
/// and its error is returned; a failure to make the namespace or to spawn goes through
/// `spawn_error`.
pub(crate) fn spawn_in_private_namespace<E>(
    ns: Namespace<'_>,
    make: impl FnOnce() -> Result<Command, E>,
    spawn_error: impl FnOnce(io::Error) -> E,
) -> Result<Child, E> {
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Command>(1);
        let namespace = scope.spawn(move || {
            enter_private_mount_namespace()?;
            prepare(ns)?;
            // Nothing arrives when `make` failed: nothing to spawn, and its error is the one told.
            let mut command = receive.recv().map_err(|_| io::Error::other("no command to spawn"))?;
            command.spawn()
        });
        let made = make().map(|command| {
            // Refused only when the thread has already failed: its error follows.
            let _ = send.send(command);
        });
        // Dropped before the join, sent or not: a thread still waiting then learns there is
        // nothing to spawn.
        drop(send);
        let spawned = namespace.join().unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
        made.and_then(|()| spawned.map_err(spawn_error))
    })
}

/// Moves the calling thread (only it: its fs context is unshared too) into a new mount
/// namespace whose mounts are all private.
pub(crate) fn enter_private_mount_namespace() -> io::Result<()> {
    // CLONE_NEWNS (the kernel unshares the FS context along with it) changes only this thread's
    // mount namespace, root and cwd; no descriptor table is unshared.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)?;
    Ok(())
}

/// Applies `ns` in the calling thread's (already private) mount namespace.
pub(crate) fn prepare(ns: Namespace<'_>) -> io::Result<()> {
    if let Some(path) = ns.hide {
        match unmount(path, UnmountFlags::DETACH) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {} // not a mount here
            Err(err) => return Err(with_path(err.into(), "unmount", path)),
        }
    }
    if let Some((mount, target)) = ns.attach {
        move_mount(mount.as_fd(), "", CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
            .map_err(|err| with_path(err.into(), "attach the rootfs at", target))?;
    }
    for (source, target, read_only) in ns.binds {
        rustix::mount::mount_bind(&source, &target).map_err(|err| with_path(err.into(), "bind-mount onto", &target))?;
        if read_only {
            rustix::mount::mount_remount(
                &target,
                rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
                "",
            )
            .map_err(|err| with_path(err.into(), "make read-only", &target))?;
        }
    }
    Ok(())
}

fn with_path(err: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("cannot {op} {}: {err}", path.display()))
}

/// No pid file is there this early (crun starts PID 1 4 to 15 ms after its exec, here); a look
/// sooner only takes a CPU from crun on a small host.
const FIRST_LOOK: Duration = Duration::from_millis(3);

/// Waits until the file `path` holds a pid (crun writes its pid file once PID 1 exists), `child`
/// exits, or `timeout` passes.
///
/// It looks at once, then from [`FIRST_LOOK`] every half millisecond up to 100 ms (crun takes 4
/// to 15), then every 10 ms, and wakes at once when `child` exits (its pidfd turns readable).
/// Not inotify: closing an inotify descriptor waits for an SRCU grace period in the kernel, 5 to
/// 20 ms measured here, on the critical path of every boot; a few wake-ups cost microseconds.
pub(crate) fn wait_for_pid_file(path: &Path, child: &mut Child, timeout: Duration) -> io::Result<Option<i32>> {
    let read_pid = || fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i32>().ok());
    let pidfd = Pid::from_raw(child.id() as i32).and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok());
    let started = Instant::now();
    loop {
        if let Some(pid) = read_pid() {
            return Ok(Some(pid));
        }
        if child.try_wait()?.is_some() {
            return Ok(read_pid());
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Ok(None);
        }
        let step = if waited < FIRST_LOOK {
            FIRST_LOOK - waited
        } else if waited < Duration::from_millis(100) {
            Duration::from_micros(500)
        } else {
            Duration::from_millis(10)
        };
        match &pidfd {
            Some(pidfd) => {
                let spec = rustix::event::Timespec { tv_sec: 0, tv_nsec: i64::from(step.subsec_nanos()) };
                match poll(&mut [PollFd::new(pidfd, PollFlags::IN)], Some(&spec)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            None => std::thread::sleep(step),
        }
    }
}

/// A process named by its pid *and* its start time, so a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    /// Clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

impl ProcessRef {
    /// The live process with this pid, if any.
    pub fn of(pid: i32) -> Option<ProcessRef> {
        let (state, start_time) = stat(pid)?;
        (state != 'Z').then_some(ProcessRef { pid, start_time })
    }

    /// When the process started, on the wall clock (to the kernel's clock tick, 10 ms).
    pub fn started_at(&self) -> Option<SystemTime> {
        let since_boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let since_boot = Duration::new(u64::try_from(since_boot.tv_sec).ok()?, u32::try_from(since_boot.tv_nsec).ok()?);
        let ticks = rustix::param::clock_ticks_per_second();
        let started = Duration::from_nanos(self.start_time.checked_mul(1_000_000_000)? / ticks.max(1));
        SystemTime::now().checked_sub(since_boot.checked_sub(started)?)
    }

    /// Whether the process still runs (a zombie does not).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z')
    }

    /// A pidfd on the process, checked after opening so it cannot name a newer process.
    fn open(&self) -> Option<OwnedFd> {
        let fd = pidfd_open(Pid::from_raw(self.pid)?, PidfdFlags::empty()).ok()?;
        self.is_alive().then_some(fd)
    }

    /// Sends `signal`; `false` when the process is already gone.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        let Some(fd) = self.open() else { return Ok(false) };
        match pidfd_send_signal(&fd, signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Waits until the process exits or `timeout` passes; `true` when it is gone.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let Some(fd) = self.open() else { return true };
        let deadline = Instant::now() + timeout;
        loop {
            // A pidfd becomes readable when the process exits, even before it is reaped.
            let left = deadline.saturating_duration_since(Instant::now());
            let spec = rustix::event::Timespec { tv_sec: 0, tv_nsec: left.min(Duration::from_millis(50)).as_nanos() as i64 };
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            if matches!(poll(&mut fds, Some(&spec)), Ok(n) if n > 0) || !self.is_alive() {
                return true;
            }
            if left.is_zero() {
                return false;
            }
        }
    }
}

/// `(state, start time)` from `/proc/PID/stat`. The command name may hold spaces and parens, so
/// fields are counted after its last `)`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); start time is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_on_the_wall_clock() {
        let before = SystemTime::now();
        let mut child = Command::new("sleep").arg("5").spawn().expect("sleep");
        let after = SystemTime::now();
        let started = ProcessRef::of(child.id() as i32).and_then(|p| p.started_at()).expect("start time");
        let _ = child.kill();
        let _ = child.wait();
        // Clock ticks are 10 ms, and the two clocks are read a moment apart.
        let slack = Duration::from_millis(30);
        assert!(started + slack >= before && started <= after + slack, "{started:?} not in {before:?}..{after:?}");
    }

    #[test]
    fn process_refs_tell_live_dead_and_recycled_pids_apart() {
        let me = ProcessRef::of(std::process::id() as i32).expect("self");
        assert!(me.is_alive());
        assert!(!ProcessRef { start_time: me.start_time + 1, ..me }.is_alive());

        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let it = ProcessRef::of(child.id() as i32).expect("child");
        assert!(!it.wait_gone(Duration::from_millis(60)));
        assert!(it.signal(Signal::KILL).expect("kill"));
        assert!(it.wait_gone(Duration::from_secs(5)));
        child.wait().expect("reap");
        assert!(!it.is_alive());
        assert!(!it.signal(Signal::TERM).expect("gone"));
    }

    #[test]
    fn a_private_namespace_hides_its_mounts_from_the_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lower, empty, target) = (dir.path().join("lower"), dir.path().join("empty"), dir.path().join("root"));
        fs::create_dir(&lower).expect("lower");
        fs::create_dir(&empty).expect("empty");
        fs::create_dir(&target).expect("root");
        fs::write(lower.join("marker"), "x").expect("marker");
        let overlay = crate::sys::overlay::mount(&[&lower, &empty], None).expect("overlay");
        let mut ls = Command::new("cat");
        ls.arg(target.join("marker")).arg("/proc/self/mountinfo").stdout(std::process::Stdio::piped());
        let ns = Namespace { attach: Some((overlay, &target)), ..Default::default() };
        let out = spawn_in_private_namespace(ns, || Ok(ls), |err| err).expect("spawn").wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with('x'), "{text}");
        assert!(text.contains(&target.display().to_string()), "the child sees the mount");
        let host = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!host.contains(&target.display().to_string()), "the host does not");
    }

    #[test]
    fn a_command_that_cannot_be_made_is_not_spawned_and_its_error_is_told() {
        let ns = Namespace::default();
        let made: Result<Command, String> = Err("no bundle".into());
        let result = spawn_in_private_namespace(ns, || made, |err| format!("namespace: {err}"));
        assert_eq!(result.err().as_deref(), Some("no bundle"));
    }
}
