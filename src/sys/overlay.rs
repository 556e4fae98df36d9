//! Overlay mounts that exist only as a file descriptor.
//!
//! The new mount API (`fsopen` → `fsconfig` → `fsmount`) gives a *detached* mount: it is attached
//! to no path, visible to no other process, and the kernel destroys it when its last descriptor
//! closes, including when msb is killed. Building a patch layer or exporting a root through such a
//! mount can therefore never leave a mount behind, and needs no mount namespace.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsconfig_set_string, fsmount, fsopen};

/// The writable part of an overlay: new and changed entries land in `upper`; `work` is overlayfs'
/// scratch space and must be an empty folder on the same filesystem.
#[derive(Debug, Clone, Copy)]
pub struct Upper<'a> {
    pub upper: &'a Path,
    pub work: &'a Path,
}

/// Mounts an overlay of `lowers` (topmost first) and returns the mount's root as a descriptor.
///
/// Without `upper` the mount is read-only. Features that would write overlay-private metadata
/// (index, redirects, metacopy) are turned off, so an upper folder is a plain OCI-style diff.
pub fn mount(lowers: &[&Path], upper: Option<Upper<'_>>) -> io::Result<OwnedFd> {
    if lowers.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an overlay needs at least one lower layer"));
    }
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for option in ["index", "redirect_dir", "metacopy", "xino"] {
        fsconfig_set_string(&fs, option, "off")?;
    }
    // One `lowerdir+` per layer: no limit from the one-page option string of mount(2).
    for lower in lowers {
        fsconfig_set_string(&fs, "lowerdir+", *lower)?;
    }
    let attributes = match upper {
        Some(Upper { upper, work }) => {
            fsconfig_set_string(&fs, "upperdir", upper)?;
            fsconfig_set_string(&fs, "workdir", work)?;
            MountAttrFlags::MOUNT_ATTR_NODEV
        }
        None => MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NODEV,
    };
    fsconfig_create(&fs)?;
    let mount = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attributes)?;
    Ok(mount)
}

/// Whether a live overlay uses `upper` or `work` (for tests): an overlay with `index=on` is
/// refused them then (EBUSY). It leaves an origin mark on `upper`, which `index=off` ignores.
#[cfg(test)]
pub(crate) fn in_use(lower: &Path, upper: &Path, work: &Path) -> bool {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).expect("fsopen");
    for (key, value) in [("index", Path::new("on")), ("lowerdir", lower), ("upperdir", upper), ("workdir", work)] {
        fsconfig_set_string(&fs, key, value).expect("fsconfig");
    }
    match fsconfig_create(&fs) {
        Ok(()) => false,
        Err(rustix::io::Errno::BUSY) => true,
        Err(err) => panic!("an overlay of {}: {err}", upper.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};

    fn read(root: &OwnedFd, path: &str) -> io::Result<String> {
        let fd = openat2(root, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::IN_ROOT)?;
        io::read_to_string(std::fs::File::from(fd))
    }

    #[test]
    fn detached_overlay_merges_layers_and_writes_only_the_upper() {
        let dir = tempfile::tempdir().unwrap();
        let (low, high, upper, work) =
            (dir.path().join("low"), dir.path().join("high"), dir.path().join("upper"), dir.path().join("work"));
        for d in [&low, &high, &upper, &work] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(low.join("a"), "low a").unwrap();
        std::fs::write(low.join("b"), "low b").unwrap();
        std::fs::write(high.join("a"), "high a").unwrap();
        {
            let root = mount(&[&high, &low], Some(Upper { upper: &upper, work: &work })).unwrap();
            assert_eq!(read(&root, "a").unwrap(), "high a");
            assert_eq!(read(&root, "b").unwrap(), "low b");
            let fd = openat2(&root, "c", OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC, Mode::from(0o644), ResolveFlags::IN_ROOT).unwrap();
            rustix::io::write(&fd, b"new").unwrap();
        }
        assert_eq!(std::fs::read_to_string(upper.join("c")).unwrap(), "new");
        assert!(!low.join("c").exists() && !high.join("c").exists());
    }

    #[test]
    fn read_only_overlay_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let root = mount(&[&a, &b], None).unwrap();
        let err = openat2(&root, "x", OFlags::WRONLY | OFlags::CREATE, Mode::from(0o644), ResolveFlags::IN_ROOT).unwrap_err();
        assert_eq!(err, rustix::io::Errno::ROFS);
    }
}
