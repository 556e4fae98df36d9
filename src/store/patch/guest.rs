//! A guest root seen through one directory descriptor.
//!
//! Every path is resolved with `RESOLVE_IN_ROOT`: the kernel treats the descriptor as `/`, so
//! `..` and symlinks (`/etc -> /`, `/x -> ../../..`) resolve inside the guest exactly as they would
//! in the running sandbox, and nothing can name a file of the host.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat, mkdirat, openat2, statat, unlinkat};
use rustix::io::Errno;

use crate::manifest::GuestPath;

pub(super) struct Guest {
    root: OwnedFd,
}

impl Guest {
    pub(super) fn new(root: OwnedFd) -> Self {
        Guest { root }
    }

    /// Opens `relative` (no leading `/`) inside the root; `""` is the root itself.
    fn open(&self, relative: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let path = if relative.is_empty() { "." } else { relative };
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        // The kernel answers EAGAIN when a rename or mount anywhere on the system raced with a
        // `..` step (its check is global); the resolution is simply tried again.
        let mut attempts = 0;
        loop {
            match openat2(&self.root, path, flags | OFlags::CLOEXEC, mode, resolve) {
                Err(Errno::AGAIN) if attempts < 64 => attempts += 1,
                result => return Ok(result?),
            }
        }
    }

    /// The folder that holds `path`, and the name of `path` in it.
    pub(super) fn parent<'p>(&self, path: &'p GuestPath) -> io::Result<(OwnedFd, &'p str)> {
        let (dir, name) = split(path);
        Ok((self.open(dir, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())?, name))
    }

    /// Like [`Guest::parent`], creating missing folders (mode 0755) as `mkdir -p` would.
    pub(super) fn parent_creating<'p>(&self, path: &'p GuestPath) -> io::Result<(OwnedFd, &'p str)> {
        let (dir, name) = split(path);
        Ok((self.dir_creating(dir, Mode::from(0o755))?, name))
    }

    /// Opens the folder at `relative`, creating it and its missing parents with `mode`.
    pub(super) fn dir_creating(&self, relative: &str, mode: Mode) -> io::Result<OwnedFd> {
        let mut fd = self.open("", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())?;
        let mut prefix = String::new();
        for component in relative.split('/').filter(|c| !c.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            fd = match self.open(&prefix, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()) {
                Ok(next) => next,
                Err(err) if err.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    mkdirat(&fd, component, mode)?;
                    self.open(&prefix, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())?
                }
                Err(err) => return Err(err),
            };
        }
        Ok(fd)
    }

    /// What is at `name` in `dir`, without following a final symlink; `None` when nothing is.
    pub(super) fn lstat(dir: impl AsFd, name: &str) -> io::Result<Option<Stat>> {
        match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Opens an existing file for appending, following symlinks inside the guest.
    pub(super) fn open_append(&self, path: &GuestPath) -> io::Result<OwnedFd> {
        self.open(&path.as_str()[1..], OFlags::WRONLY | OFlags::APPEND | OFlags::NOCTTY, Mode::empty())
    }
}

fn split(path: &GuestPath) -> (&str, &str) {
    let relative = &path.as_str()[1..];
    match relative.rfind('/') {
        Some(i) => (&relative[..i], &relative[i + 1..]),
        None => ("", relative),
    }
}

/// Removes `name` from `dir`, recursively for folders, never following a symlink. In an overlay
/// this leaves whiteouts for what the lower layers had.
pub(super) fn remove_all(dir: impl AsFd, name: &str) -> io::Result<()> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    remove_entry(dir.as_fd(), &name)
}

/// Names read from a folder need not be UTF-8; they are handled as C strings throughout.
fn remove_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let stat = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Ok(unlinkat(dir, name, AtFlags::empty())?);
    }
    let child = openat2(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?;
    let mut names = Vec::new();
    for entry in Dir::read_from(&child)? {
        let entry = entry?;
        let entry_name = entry.file_name();
        if entry_name != c"." && entry_name != c".." {
            names.push(entry_name.to_owned());
        }
    }
    for entry_name in names {
        remove_entry(child.as_fd(), &entry_name)?;
    }
    Ok(unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}
