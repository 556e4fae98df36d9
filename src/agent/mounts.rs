//! The filesystems a process expects, mounted by PID 1 where nobody did.
//!
//! Under crun most are mounted before the agent starts (the runtime's config lists them); in a
//! krun VM or a bare namespace (the tests) none are. Each one is mounted only when its path is not a mount
//! point yet, and a refusal (EBUSY, EPERM: the runtime owns it) is not an error: the agent runs
//! with what it has, and says so in the log when something it needs is missing.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
use rustix::io::Errno;
use rustix::mount::{MountFlags, mount, mount_bind};

/// One filesystem PID 1 provides.
struct Filesystem {
    target: &'static str,
    fstype: &'static str,
    source: &'static str,
    flags: MountFlags,
    data: &'static CStr,
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV).union(MountFlags::NOEXEC);

/// In mount order: parents before children.
const FILESYSTEMS: [Filesystem; 7] = [
    Filesystem { target: "/proc", fstype: "proc", source: "proc", flags: NOSUID_NODEV_NOEXEC, data: c"" },
    Filesystem { target: "/sys", fstype: "sysfs", source: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: c"" },
    // A VM's init mounts [`DEVTMPFS`] instead: its own devices.
    Filesystem { target: "/dev", fstype: "tmpfs", source: "tmpfs", flags: MountFlags::NOSUID, data: c"mode=0755,size=65536k" },
    Filesystem {
        target: "/dev/pts",
        fstype: "devpts",
        source: "devpts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: c"newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    Filesystem { target: "/dev/shm", fstype: "tmpfs", source: "shm", flags: NOSUID_NODEV_NOEXEC, data: c"mode=1777,size=65536k" },
    Filesystem { target: "/run", fstype: "tmpfs", source: "tmpfs", flags: MountFlags::NOSUID.union(MountFlags::NODEV), data: c"mode=0755" },
    Filesystem { target: "/tmp", fstype: "tmpfs", source: "tmpfs", flags: MountFlags::NOSUID.union(MountFlags::NODEV), data: c"mode=1777" },
];

/// `/dev` of the kernel's own init. Anywhere else devtmpfs would be the host's `/dev` (one
/// instance per kernel): a tmpfs filled with [`DEVICES`] instead.
const DEVTMPFS: Filesystem =
    Filesystem { target: "/dev", fstype: "devtmpfs", source: "devtmpfs", flags: MountFlags::NOSUID, data: c"mode=0755" };

/// The inode of the initial PID namespace (the kernel's `PROC_PID_INIT_INO`).
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// The nodes of a tmpfs `/dev`: name, major, minor.
const DEVICES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
/// The links a `/dev` has (devtmpfs has none of them).
const DEV_LINKS: [(&str, &str); 4] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// Whether `path` is the root of a mount: a different device than its parent's.
fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(this), Ok(parent)) => this.dev() != parent.dev(),
        _ => false,
    }
}

/// Mounts `fs` unless its path is a mount point already. `Ok(false)` when there was nothing
/// to do, or the runtime keeps it to itself (EBUSY, EPERM).
fn mount_missing(fs: &Filesystem) -> io::Result<bool> {
    let target = Path::new(fs.target);
    if is_mount_point(target) {
        return Ok(false);
    }
    fs::create_dir_all(target)?;
    match mount(fs.source, fs.target, fs.fstype, fs.flags, fs.data) {
        Ok(()) => Ok(true),
        Err(Errno::BUSY | Errno::PERM | Errno::ACCESS) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Whether this is the kernel's own init (a VM), not the PID 1 of a namespace (a container).
fn kernel_init() -> bool {
    fs::metadata("/proc/self/ns/pid").is_ok_and(|ns| ns.ino() == INITIAL_PID_NAMESPACE)
}

/// Mounts whatever of [`FILESYSTEMS`] is missing, and completes a `/dev` it mounted.
pub(crate) fn setup() {
    let mut mounted = Vec::new();
    for fs in &FILESYSTEMS {
        let result = if fs.target == "/dev" { mount_dev(fs) } else { mount_missing(fs) };
        match result {
            Ok(true) => mounted.push(fs.target),
            Ok(false) => {}
            Err(err) => eprintln!("msb-agent: cannot mount {} on `{}`: {err}", fs.fstype, fs.target),
        }
    }
    if mounted.contains(&"/dev") {
        for (target, link) in DEV_LINKS {
            let _ = symlink(target, link);
        }
    }
    if mounted.contains(&"/dev/pts") {
        // A new devpts instance: `/dev/ptmx` must open it, not the instance `/dev` came with.
        match fs::symlink_metadata("/dev/ptmx") {
            Err(_) => {
                let _ = symlink("pts/ptmx", "/dev/ptmx");
            }
            Ok(meta) if !meta.file_type().is_symlink() => {
                if let Err(err) = mount_bind("/dev/pts/ptmx", "/dev/ptmx") {
                    eprintln!("msb-agent: cannot bind /dev/pts/ptmx on /dev/ptmx: {err}");
                }
            }
            Ok(_) => {}
        }
    }
    // Some programs expect it (systemd makes it itself).
    if mounted.contains(&"/run") {
        let _ = fs::create_dir("/run/lock");
        let _ = fs::set_permissions("/run/lock", fs::Permissions::from_mode(0o1777));
    }
}

/// Mounts `/dev` if it is missing: devtmpfs in a VM, else `tmpfs` with [`DEVICES`].
fn mount_dev(tmpfs: &Filesystem) -> io::Result<bool> {
    // /proc is mounted by now: the namespace can be told.
    if kernel_init()
        && let Ok(done) = mount_missing(&DEVTMPFS)
    {
        return Ok(done);
    }
    let done = mount_missing(tmpfs)?;
    if done {
        make_devices();
    }
    Ok(done)
}

/// The nodes of a tmpfs `/dev`.
fn make_devices() {
    for (name, major, minor) in DEVICES {
        let path = format!("/dev/{name}");
        let made = mknodat(CWD, &path, FileType::CharacterDevice, Mode::from_raw_mode(0o666), makedev(major, minor));
        // The umask applied to mknod.
        if let Err(err) = made.map_err(io::Error::from).and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o666))) {
            eprintln!("msb-agent: cannot create `{path}`: {err}");
        }
    }
}

/// Names the UTS namespace after the sandbox. Refused where the runtime owns the namespace; the
/// runtime has set the name there.
pub(crate) fn set_hostname(name: &str) {
    match rustix::system::sethostname(name.as_bytes()) {
        Ok(()) | Err(Errno::PERM) => {}
        Err(err) => eprintln!("msb-agent: cannot set the hostname to `{name}`: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_mounted_before_children() {
        for (i, fs) in FILESYSTEMS.iter().enumerate() {
            for later in &FILESYSTEMS[i + 1..] {
                assert!(!fs.target.starts_with(&format!("{}/", later.target)), "{} before {}", later.target, fs.target);
            }
        }
    }

    #[test]
    fn mount_points_are_told_apart_from_folders() {
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).expect("mkdir");
        assert!(!is_mount_point(&sub));
        assert!(!is_mount_point(&dir.path().join("missing")));
    }
}
