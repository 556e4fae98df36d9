//! The only place in the runtime that changes mount namespaces, spawns the OCI runtime and signals
//! sandbox processes.
//!
//! crun needs the rootfs as a *path*, and on hybrid hosts must not see the cgroup2 mount. Both
//! are arranged in a private mount namespace made by a thread of msb's: the thread unshares its
//! mount namespace, makes every mount private (nothing propagates back to the host), hides the
//! cgroup2 mount, attaches the detached overlay at the rootfs path and spawns crun, which
//! inherits that namespace. The namespace lives as long as crun, the container and that thread,
//! which msb lets go once crun has exited: then the kernel drops it and every mount in it. The
//! host's mount table never sees a sandbox mount, so a killed msb cannot leak one.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::CWD;
use rustix::mount::{MountPropagationFlags, MoveMountFlags, UnmountFlags, mount_change, move_mount, unmount};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use serde::{Deserialize, Serialize};

/// What a private mount namespace gets before a command starts there.
#[derive(Debug, Default)]
pub(crate) struct Namespace {
    /// A detached mount (from `sys::overlay::mount`) and the path to attach it at.
    pub(crate) attach: Option<(OwnedFd, PathBuf)>,
    /// Read-only and read-write bind mounts to make after attaching (krun, which has no OCI
    /// runtime to make them; crun's own binary, sealed read-only): `(source, target, read_only)`.
    pub(crate) binds: Vec<(PathBuf, PathBuf, bool)>,
}

/// A thread in a private mount namespace of its own, which spawns the OCI runtime there and
/// holds the namespace until it is let go ([`PrivateNamespace::close`]), joined or dropped.
///
/// Whoever holds a namespace last tears it down: every mount in it is unmounted, and the
/// overlay's unmount syncs the filesystem of its upper layer (about a millisecond here). When
/// crun was that holder, msb waited for all of it in crun's exit; with the thread holding on,
/// msb learns of crun's exit first and records it while the thread tears down.
pub(crate) struct PrivateNamespace {
    /// `None` once let go.
    spawns: Option<mpsc::Sender<Spawn>>,
    /// `None` once joined.
    thread: Option<JoinHandle<()>>,
}

/// A command to spawn in the namespace once prepared as said, and where the child goes.
type Spawn = (Namespace, Command, mpsc::SyncSender<io::Result<Child>>);

impl PrivateNamespace {
    /// Starts the thread, which makes the namespace and unmounts `hide` in it (the hybrid host's
    /// cgroup2 mount) while the caller goes on; a failure comes back from the first spawn.
    pub(crate) fn enter(hide: Option<PathBuf>) -> PrivateNamespace {
        let (spawns, received) = mpsc::channel::<Spawn>();
        let thread = std::thread::spawn(move || {
            let host = fs::File::open("/proc/thread-self/ns/mnt");
            let entered = match &host {
                Ok(_) => enter_private_mount_namespace().and_then(|()| unmount_if_mounted(hide.as_deref())),
                Err(err) => Err(io::Error::new(err.kind(), format!("cannot open this thread's mount namespace: {err}"))),
            };
            for (ns, mut command, child) in received {
                let spawned = match &entered {
                    Ok(()) => prepare(ns).and_then(|()| command.spawn()),
                    Err(err) => Err(io::Error::new(err.kind(), format!("cannot make a private mount namespace: {err}"))),
                };
                let _ = child.send(spawned);
            }
            // Back to the host's namespace: that drops the last hold on the private one, and the
            // kernel tears it down before setns returns. An exiting thread would do it only after
            // waking its joiner, so a boot of the same sandbox right after `join` (`--watch`,
            // the SDK) could mount its layer while the last mount of it still existed.
            if let (Ok(host), Ok(())) = (&host, &entered) {
                let _ = rustix::thread::move_into_link_name_space(host.as_fd(), Some(rustix::thread::LinkNameSpaceType::Mount));
            }
        });
        PrivateNamespace { spawns: Some(spawns), thread: Some(thread) }
    }

    /// Prepares the namespace as `ns` says and spawns `command` in it.
    pub(crate) fn spawn(&self, ns: Namespace, command: Command) -> io::Result<Child> {
        let (send, receive) = mpsc::sync_channel(1);
        let gone = || io::Error::other("the namespace thread is gone");
        self.spawns.as_ref().ok_or_else(gone)?.send((ns, command, send)).map_err(|_| gone())?;
        receive.recv().map_err(|_| io::Error::other("the namespace thread panicked"))?
    }

    /// Lets the thread go: it tears the namespace down and ends, while the caller goes on.
    pub(crate) fn close(&mut self) {
        self.spawns = None;
    }

    /// Lets the thread go and waits until it has ended: then nothing of the namespace is
    /// mounted. Dropping does the same.
    pub(crate) fn join(mut self) -> std::thread::Result<()> {
        self.close();
        self.thread.take().map_or(Ok(()), JoinHandle::join)
    }
}

/// Every way out of a boot (errors included) waits for the teardown, not only the usual ones.
impl Drop for PrivateNamespace {
    fn drop(&mut self) {
        self.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for PrivateNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateNamespace")
    }
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

/// Unmounts `path` in the calling thread's (private) mount namespace, if it is a mount there.
fn unmount_if_mounted(path: Option<&Path>) -> io::Result<()> {
    let Some(path) = path else { return Ok(()) };
    match unmount(path, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
        Err(err) => Err(with_path(err.into(), "unmount", path)),
    }
}

/// Applies `ns` in the calling thread's (already private) mount namespace.
pub(crate) fn prepare(ns: Namespace) -> io::Result<()> {
    if let Some((mount, target)) = ns.attach {
        move_mount(mount.as_fd(), "", CWD, &target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
            .map_err(|err| with_path(err.into(), "attach the rootfs at", &target))?;
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
    fn a_private_namespace_hides_its_mounts_from_the_host_and_holds_them_between_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lower, empty, target) = (dir.path().join("lower"), dir.path().join("empty"), dir.path().join("root"));
        fs::create_dir(&lower).expect("lower");
        fs::create_dir(&empty).expect("empty");
        fs::create_dir(&target).expect("root");
        fs::write(lower.join("marker"), "x").expect("marker");
        let overlay = crate::sys::overlay::mount(&[&lower, &empty], None).expect("overlay");
        let cat = |path: &Path| {
            let mut cat = Command::new("cat");
            cat.arg(path.join("marker")).arg("/proc/self/mountinfo").stdout(std::process::Stdio::piped());
            cat
        };
        let namespace = PrivateNamespace::enter(None);
        let ns = Namespace { attach: Some((overlay, target.clone())), ..Default::default() };
        let out = namespace.spawn(ns, cat(&target)).expect("spawn").wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with('x'), "{text}");
        assert!(text.contains(&target.display().to_string()), "the child sees the mount");
        let host = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!host.contains(&target.display().to_string()), "the host does not");
        // The first command has exited; the thread still holds the namespace and its mount.
        let again = namespace.spawn(Namespace::default(), cat(&target)).expect("spawn").wait_with_output().expect("wait");
        assert!(String::from_utf8_lossy(&again.stdout).starts_with('x'), "{again:?}");
        namespace.join().expect("the thread ends once let go");
    }

    #[test]
    fn once_the_namespace_thread_is_joined_its_overlay_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let [lower, upper, work, target] = ["lower", "upper", "work", "root"].map(|d| dir.path().join(d));
        for d in [&lower, &upper, &work, &target] {
            fs::create_dir(d).expect("mkdir");
        }
        for round in 0..20 {
            let upper_layer = crate::sys::overlay::Upper { upper: &upper, work: &work };
            let overlay = crate::sys::overlay::mount(&[&lower], Some(upper_layer)).expect("overlay");
            let namespace = PrivateNamespace::enter(None);
            let ns = Namespace { attach: Some((overlay, target.clone())), ..Default::default() };
            namespace.spawn(ns, Command::new("true")).expect("spawn").wait().expect("wait");
            namespace.join().expect("join");
            assert!(!crate::sys::overlay::in_use(&lower, &upper, &work), "round {round}: the layer is still mounted after the join");
            fs::remove_dir_all(work.join("work")).expect("the overlay's scratch folder");
        }
    }

    #[test]
    fn a_command_that_cannot_start_is_told_as_not_found() {
        let namespace = PrivateNamespace::enter(None);
        let err = namespace.spawn(Namespace::default(), Command::new("/nonexistent/crun")).expect_err("no such program");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        namespace.join().expect("join");
    }
}
