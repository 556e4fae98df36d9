//! Turning one patch step into a layer.
//!
//! The step runs against an overlay of the layers below it, mounted detached (see
//! [`crate::sys::overlay`]), with a fresh folder as the overlay's upper. The kernel's overlayfs then
//! does what the running sandbox will see: copy-up keeps an appended file's mode and owner,
//! removing a lower path writes a whiteout, and a folder created over a removed one is opaque, so
//! the image's old content stays hidden. What the step changed is exactly the upper folder, which
//! becomes the layer. Every path goes through `guest::Guest`, so the image's symlinks resolve
//! inside the guest and never reach the host.

mod guest;

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, fchmod, fchown, openat, symlinkat};
use rustix::io::Errno;

use super::digest::HashingReader;
use crate::manifest::{GuestPath, Patch};
use crate::plan::sources::{digest_tree, special_kind};
use crate::sys::overlay::{self, Upper};
use guest::{Guest, remove_all};

/// Every entry a step writes gets this mtime (1970-01-01T00:00:01Z), so the same step gives the
/// same layer on any machine, on any day.
pub const FIXED_MTIME: i64 = 1;

/// Default permissions of what patches create.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// One step to build: the patch and, for copy ops, its host source.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// 1-based, as users count patches.
    pub index: usize,
    pub patch: &'a Patch,
    /// The host file or folder of a copy op, resolved against the Sandboxfile's folder.
    pub source: Option<&'a Path>,
    /// The digest the plan computed for that source; the copy must match it, or the layer would
    /// be cached under a key that does not describe it.
    pub source_digest: Option<&'a str>,
}

/// Why a step could not be built.
#[derive(Debug, thiserror::Error)]
#[error("patch {index} (`{op}`): {cause}")]
pub struct PatchError {
    pub index: usize,
    pub op: &'static str,
    /// Part of the message, not a separate cause: one line says it all.
    pub cause: Cause,
}

#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("`{0}` already exists in the image or an earlier patch; add `replace = true` to overwrite it")]
    Exists(String),
    #[error("`{0}` does not exist, so there is nothing to append to")]
    Missing(String),
    #[error("`{0}` exists and is not a folder")]
    NotADirectory(String),
    #[error("`{0}` is not a regular file")]
    NotAFile(String),
    #[error("`{}` is a {kind}: copy_dir copies files, folders and symlinks only", path.display())]
    Special { path: PathBuf, kind: &'static str },
    #[error("the source `{}` changed while msb was reading it; run again", path.display())]
    SourceChanged { path: PathBuf },
    #[error("no source was resolved for this copy")]
    NoSource,
    #[error("`{path}`: {error}")]
    Io { path: String, error: io::Error },
    #[error("cannot mount the layers to patch them (msb needs root and overlayfs): {0}")]
    Mount(io::Error),
}

/// Builds `step` on top of `lowers` (topmost first) into the empty folder `upper`, using `work`
/// (empty, same filesystem) as overlayfs' scratch space.
pub fn build(lowers: &[&Path], upper: &Path, work: &Path, step: Step<'_>) -> Result<(), PatchError> {
    let fail = |cause| PatchError { index: step.index, op: step.patch.op(), cause };
    {
        let root = overlay::mount(lowers, Some(Upper { upper, work })).map_err(|e| fail(Cause::Mount(e)))?;
        apply(&Guest::new(root), step).map_err(fail)?;
        // The mount goes away with its descriptor, here; only the upper folder remains.
    }
    normalize(upper).map_err(|error| fail(Cause::Io { path: upper.display().to_string(), error }))
}

fn apply(guest: &Guest, step: Step<'_>) -> Result<(), Cause> {
    match step.patch {
        Patch::Text { path, content, mode, replace } => {
            write_file(guest, path, &mut content.as_bytes(), mode_or(*mode, FILE_MODE), *replace)
        }
        Patch::File { path, content, mode, replace } => {
            use base64::Engine;
            // The manifest checked the encoding; a failure here still gets a message, not a panic.
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content)
                .map_err(|e| io_cause(path.as_str(), io::Error::new(io::ErrorKind::InvalidData, e)))?;
            write_file(guest, path, &mut bytes.as_slice(), mode_or(*mode, FILE_MODE), *replace)
        }
        Patch::Mkdir { path, mode } => mkdir(guest, path, mode_or(*mode, DIR_MODE)),
        Patch::Append { path, content } => append(guest, path, content.as_bytes()),
        Patch::CopyFile { dst, mode, replace, .. } => {
            let source = step.source.ok_or(Cause::NoSource)?;
            copy_file(guest, source, step.source_digest, dst, mode.map(|m| m.bits()), *replace)
        }
        Patch::CopyDir { dst, replace, .. } => {
            let source = step.source.ok_or(Cause::NoSource)?;
            copy_dir(guest, source, dst, *replace)?;
            match step.source_digest {
                Some(expected) if digest_tree(source).map(|d| d.digest).ok().as_deref() != Some(expected) => {
                    Err(Cause::SourceChanged { path: source.to_owned() })
                }
                _ => Ok(()),
            }
        }
        Patch::Symlink { target, link, replace } => {
            let (dir, name) = guest.parent_creating(link).map_err(|e| io_cause(link.as_str(), e))?;
            make_room(&dir, name, link, *replace)?;
            symlinkat(target.as_str(), &dir, name).map_err(|e| io_cause(link.as_str(), e.into()))?;
            rustix::fs::chownat(&dir, name, Some(root_uid()), Some(root_gid()), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_cause(link.as_str(), e.into()))
        }
        Patch::Remove { path } => match guest.parent(path) {
            Ok((dir, name)) => remove_all(&dir, name).map_err(|e| io_cause(path.as_str(), e)),
            // A missing parent, or a parent that is a file, means there is nothing to remove.
            Err(e) if errno_is(&e, Errno::NOENT) || errno_is(&e, Errno::NOTDIR) => Ok(()),
            Err(e) => Err(io_cause(path.as_str(), e)),
        },
    }
}

fn errno_is(err: &io::Error, errno: Errno) -> bool {
    err.raw_os_error() == Some(errno.raw_os_error())
}

fn mode_or(mode: Option<crate::manifest::Mode>, default: u32) -> u32 {
    mode.map_or(default, |m| m.bits())
}

fn io_cause(path: &str, source: io::Error) -> Cause {
    Cause::Io { path: path.to_owned(), error: source }
}

fn root_uid() -> rustix::fs::Uid {
    rustix::fs::Uid::ROOT
}

fn root_gid() -> rustix::fs::Gid {
    rustix::fs::Gid::ROOT
}

/// Refuses an existing `name` unless `replace`, in which case it is removed (recursively).
fn make_room(dir: &OwnedFd, name: &str, path: &GuestPath, replace: bool) -> Result<(), Cause> {
    match Guest::lstat(dir, name).map_err(|e| io_cause(path.as_str(), e))? {
        None => Ok(()),
        Some(_) if !replace => Err(Cause::Exists(path.to_string())),
        Some(_) => remove_all(dir, name).map_err(|e| io_cause(path.as_str(), e)),
    }
}

/// Creates a new file at `path` from `content`, owned by root with exactly `mode`.
fn write_file(guest: &Guest, path: &GuestPath, content: &mut dyn Read, mode: u32, replace: bool) -> Result<(), Cause> {
    let (dir, name) = guest.parent_creating(path).map_err(|e| io_cause(path.as_str(), e))?;
    make_room(&dir, name, path, replace)?;
    create_file(&dir, name, content, mode).map_err(|e| io_cause(path.as_str(), e))
}

fn create_file(dir: impl AsFd, name: &str, content: &mut dyn Read, mode: u32) -> io::Result<()> {
    let fd = openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from(mode & 0o7777),
    )?;
    // The process umask must not decide a layer's modes; chown before chmod keeps setuid bits.
    fchown(&fd, Some(root_uid()), Some(root_gid()))?;
    fchmod(&fd, Mode::from(mode & 0o7777))?;
    let mut file = std::fs::File::from(fd);
    io::copy(content, &mut file)?;
    file.flush()
}

fn mkdir(guest: &Guest, path: &GuestPath, mode: u32) -> Result<(), Cause> {
    let (dir, name) = guest.parent_creating(path).map_err(|e| io_cause(path.as_str(), e))?;
    match Guest::lstat(&dir, name).map_err(|e| io_cause(path.as_str(), e))? {
        Some(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => Ok(()),
        Some(_) => Err(Cause::NotADirectory(path.to_string())),
        None => make_dir(&dir, name, mode).map_err(|e| io_cause(path.as_str(), e)),
    }
}

fn make_dir(dir: impl AsFd, name: &str, mode: u32) -> io::Result<()> {
    let dir = dir.as_fd();
    rustix::fs::mkdirat(dir, name, Mode::from(mode & 0o7777))?;
    let fd = openat(dir, name, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    fchown(&fd, Some(root_uid()), Some(root_gid()))?;
    Ok(fchmod(&fd, Mode::from(mode & 0o7777))?)
}

fn append(guest: &Guest, path: &GuestPath, content: &[u8]) -> Result<(), Cause> {
    let fd = guest.open_append(path).map_err(|e| {
        if errno_is(&e, Errno::NOENT) {
            Cause::Missing(path.to_string())
        } else if errno_is(&e, Errno::ISDIR) {
            Cause::NotAFile(path.to_string())
        } else {
            io_cause(path.as_str(), e)
        }
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| io_cause(path.as_str(), e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(Cause::NotAFile(path.to_string()));
    }
    let mut file = std::fs::File::from(fd);
    file.write_all(content).map_err(|e| io_cause(path.as_str(), e))
}

fn copy_file(
    guest: &Guest,
    source: &Path,
    expected: Option<&str>,
    dst: &GuestPath,
    mode: Option<u32>,
    replace: bool,
) -> Result<(), Cause> {
    let host_io = |e| io_cause(&source.display().to_string(), e);
    let file = std::fs::File::open(source).map_err(host_io)?;
    let source_mode = file.metadata().map_err(host_io)?.mode() & 0o7777;
    let mut reader = HashingReader::new(file);
    write_file(guest, dst, &mut reader, mode.unwrap_or(source_mode), replace)?;
    let digest = reader.finish().map_err(host_io)?.digest.to_string();
    match expected {
        Some(expected) if expected != digest => Err(Cause::SourceChanged { path: source.to_owned() }),
        _ => Ok(()),
    }
}

/// Copies a host folder into the guest, merging with folders already there.
fn copy_dir(guest: &Guest, source: &Path, dst: &GuestPath, replace: bool) -> Result<(), Cause> {
    let host_io = |path: &Path, e: io::Error| io_cause(&path.display().to_string(), e);
    let root_mode = std::fs::symlink_metadata(source).map_err(|e| host_io(source, e))?.mode() & 0o7777;
    ensure_dir(guest, dst, root_mode, replace)?;
    for entry in walkdir::WalkDir::new(source).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(source).to_owned();
            host_io(&path, e.into())
        })?;
        let relative = entry.path().strip_prefix(source).unwrap_or(entry.path());
        let guest_path = GuestPath::parse(&format!("{dst}/{}", relative.to_string_lossy()))
            .map_err(|e| io_cause(&relative.display().to_string(), io::Error::new(io::ErrorKind::InvalidInput, e.message)))?;
        let meta = entry.metadata().map_err(|e| host_io(entry.path(), e.into()))?;
        let mode = meta.mode() & 0o7777;
        let file_type = meta.file_type();
        if file_type.is_dir() {
            ensure_dir(guest, &guest_path, mode, replace)?;
        } else if file_type.is_file() {
            let mut file = std::fs::File::open(entry.path()).map_err(|e| host_io(entry.path(), e))?;
            write_file(guest, &guest_path, &mut file, mode, replace)?;
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(|e| host_io(entry.path(), e))?;
            let (dir, name) = guest.parent(&guest_path).map_err(|e| io_cause(guest_path.as_str(), e))?;
            make_room(&dir, name, &guest_path, replace)?;
            symlinkat(target.as_os_str(), &dir, name).map_err(|e| io_cause(guest_path.as_str(), e.into()))?;
            rustix::fs::chownat(&dir, name, Some(root_uid()), Some(root_gid()), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_cause(guest_path.as_str(), e.into()))?;
        } else {
            return Err(Cause::Special { path: entry.path().to_owned(), kind: special_kind(&file_type) });
        }
    }
    Ok(())
}

/// A folder at `path`: kept when one is there (merge), created with `mode` when missing, and an
/// error when something else is there, unless `replace`.
fn ensure_dir(guest: &Guest, path: &GuestPath, mode: u32, replace: bool) -> Result<(), Cause> {
    let (dir, name) = guest.parent_creating(path).map_err(|e| io_cause(path.as_str(), e))?;
    match Guest::lstat(&dir, name).map_err(|e| io_cause(path.as_str(), e))? {
        Some(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => return Ok(()),
        Some(_) if !replace => return Err(Cause::Exists(path.to_string())),
        Some(_) => remove_all(&dir, name).map_err(|e| io_cause(path.as_str(), e))?,
        None => {}
    }
    make_dir(&dir, name, mode).map_err(|e| io_cause(path.as_str(), e))
}

/// Makes a finished upper folder reproducible: fixed mtimes everywhere, and no overlayfs
/// bookkeeping xattrs except the opaque marker, which is part of the layer's meaning.
fn normalize(upper: &Path) -> io::Result<()> {
    let fixed = Timestamps {
        last_access: Timespec { tv_sec: FIXED_MTIME, tv_nsec: 0 },
        last_modification: Timespec { tv_sec: FIXED_MTIME, tv_nsec: 0 },
    };
    for entry in walkdir::WalkDir::new(upper) {
        let entry = entry?;
        let path = entry.path();
        for name in list_xattrs(path)? {
            if name.starts_with("trusted.overlay.") && name != "trusted.overlay.opaque" {
                rustix::fs::lremovexattr(path, name.as_str())?;
            }
        }
        rustix::fs::utimensat(rustix::fs::CWD, path, &fixed, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

fn list_xattrs(path: &Path) -> io::Result<Vec<String>> {
    let mut buffer = vec![0u8; 1024];
    loop {
        match rustix::fs::llistxattr(path, &mut buffer[..]) {
            Ok(n) => {
                return Ok(buffer[..n]
                    .split(|b| *b == 0)
                    .filter(|name| !name.is_empty())
                    .map(|name| String::from_utf8_lossy(name).into_owned())
                    .collect());
            }
            Err(Errno::RANGE) => buffer.resize(buffer.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use crate::manifest::{LinkTarget, Mode as FileMode};
    use rustix::fs::ResolveFlags;

    /// An image layer and the patch layers built on it so far, each in its own folder.
    struct Stack {
        dir: tempfile::TempDir,
        layers: Vec<PathBuf>,
    }

    impl Stack {
        /// A small "image": files with owners and modes, a folder, and hostile symlinks.
        fn image() -> Stack {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join("image");
            std::fs::create_dir_all(base.join("etc")).unwrap();
            std::fs::create_dir_all(base.join("usr/share/doc/pkg")).unwrap();
            std::fs::create_dir_all(base.join("data")).unwrap();
            std::fs::write(base.join("etc/motd"), "image motd\n").unwrap();
            std::fs::set_permissions(base.join("etc/motd"), std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(base.join("etc/motd"), Some(1000), Some(1000)).unwrap();
            std::fs::write(base.join("usr/share/doc/pkg/README"), "old doc").unwrap();
            std::fs::write(base.join("data/a"), "a").unwrap();
            std::os::unix::fs::symlink("/", base.join("etc-link")).unwrap();
            std::os::unix::fs::symlink("../../..", base.join("x")).unwrap();
            Stack { dir, layers: vec![base] }
        }

        fn try_apply(&mut self, patch: Patch, source: Option<&Path>) -> Result<(), PatchError> {
            let n = self.layers.len();
            let upper = self.dir.path().join(format!("layer-{n}"));
            let work = self.dir.path().join(format!("work-{n}"));
            std::fs::create_dir(&upper).unwrap();
            std::fs::create_dir(&work).unwrap();
            let lowers: Vec<&Path> = self.layers.iter().rev().map(PathBuf::as_path).collect();
            let step = Step { index: n, patch: &patch, source, source_digest: None };
            let built = build(&lowers, &upper, &work, step);
            match built {
                Ok(()) => self.layers.push(upper),
                // As the store does with a failed build: the half-made layer is thrown away.
                Err(_) => std::fs::remove_dir_all(&upper).unwrap(),
            }
            std::fs::remove_dir_all(&work).unwrap();
            built
        }

        fn apply(&mut self, patch: Patch) {
            self.try_apply(patch, None).unwrap();
        }

        fn top(&self) -> &Path {
            self.layers.last().unwrap()
        }

        /// Reads a file of the merged view, as the sandbox would see it.
        fn read(&self, path: &str) -> Option<String> {
            let lowers: Vec<&Path> = self.layers.iter().rev().map(PathBuf::as_path).collect();
            let root = if lowers.len() == 1 {
                rustix::fs::open(lowers[0], OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap()
            } else {
                overlay::mount(&lowers, None).unwrap()
            };
            let fd = rustix::fs::openat2(&root, &path[1..], OFlags::RDONLY, Mode::empty(), ResolveFlags::IN_ROOT).ok()?;
            io::read_to_string(std::fs::File::from(fd)).ok()
        }
    }

    fn path(p: &str) -> GuestPath {
        GuestPath::parse(p).unwrap()
    }

    fn text(p: &str, content: &str, replace: bool) -> Patch {
        Patch::Text { path: path(p), content: content.into(), mode: None, replace }
    }

    fn cause(result: Result<(), PatchError>) -> Cause {
        result.unwrap_err().cause
    }

    #[test]
    fn text_writes_a_root_owned_file_with_the_default_mode_and_fixed_mtime() {
        let mut stack = Stack::image();
        stack.apply(text("/etc/greeting.txt", "hello\n", false));
        let meta = std::fs::symlink_metadata(stack.top().join("etc/greeting.txt")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid(), meta.mtime()), (0o644, 0, 0, FIXED_MTIME));
        assert_eq!(stack.read("/etc/greeting.txt").as_deref(), Some("hello\n"));
    }

    #[test]
    fn writing_an_existing_path_needs_replace() {
        let mut stack = Stack::image();
        let err = stack.try_apply(text("/etc/motd", "new", false), None).unwrap_err();
        assert!(err.to_string().contains("`/etc/motd` already exists"), "{err}");
        assert!(err.to_string().contains("replace = true"), "{err}");
        stack.apply(text("/etc/motd", "new", true));
        assert_eq!(stack.read("/etc/motd").as_deref(), Some("new"));
    }

    #[test]
    fn an_earlier_patch_counts_as_existing() {
        let mut stack = Stack::image();
        stack.apply(text("/app.conf", "1", false));
        assert!(matches!(cause(stack.try_apply(text("/app.conf", "2", false), None)), Cause::Exists(_)));
    }

    #[test]
    fn mkdir_is_idempotent_and_refuses_a_file() {
        let mut stack = Stack::image();
        stack.apply(Patch::Mkdir { path: path("/data"), mode: None });
        stack.apply(Patch::Mkdir { path: path("/srv/deep/app"), mode: Some(FileMode::parse("0750").unwrap()) });
        let meta = std::fs::metadata(stack.top().join("srv/deep/app")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o750);
        let err = cause(stack.try_apply(Patch::Mkdir { path: path("/etc/motd"), mode: None }, None));
        assert!(matches!(err, Cause::NotADirectory(ref p) if p == "/etc/motd"), "{err}");
    }

    #[test]
    fn append_copies_up_keeping_mode_and_owner() {
        let mut stack = Stack::image();
        stack.apply(Patch::Append { path: path("/etc/motd"), content: "more\n".into() });
        assert_eq!(stack.read("/etc/motd").as_deref(), Some("image motd\nmore\n"));
        let meta = std::fs::metadata(stack.top().join("etc/motd")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o600, 1000, 1000));
    }

    #[test]
    fn append_to_a_missing_file_is_an_error() {
        let mut stack = Stack::image();
        let err = cause(stack.try_apply(Patch::Append { path: path("/etc/nope"), content: "x".into() }, None));
        assert!(matches!(err, Cause::Missing(ref p) if p == "/etc/nope"), "{err}");
    }

    #[test]
    fn remove_writes_a_whiteout_and_a_missing_path_is_a_no_op() {
        let mut stack = Stack::image();
        stack.apply(Patch::Remove { path: path("/etc/motd") });
        let whiteout = std::fs::symlink_metadata(stack.top().join("etc/motd")).unwrap();
        assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
        assert_eq!(stack.read("/etc/motd"), None);
        stack.apply(Patch::Remove { path: path("/no/such/path") });
    }

    #[test]
    fn remove_then_write_the_same_path() {
        let mut stack = Stack::image();
        stack.apply(Patch::Remove { path: path("/etc/motd") });
        stack.apply(text("/etc/motd", "fresh", false));
        assert_eq!(stack.read("/etc/motd").as_deref(), Some("fresh"));
    }

    #[test]
    fn writes_under_a_removed_folder_keep_the_old_content_hidden() {
        let mut stack = Stack::image();
        stack.apply(Patch::Remove { path: path("/usr/share/doc") });
        stack.apply(text("/usr/share/doc/new", "new doc", false));
        assert_eq!(stack.read("/usr/share/doc/new").as_deref(), Some("new doc"));
        assert_eq!(stack.read("/usr/share/doc/pkg/README"), None);
    }

    #[test]
    fn copy_dir_merges_into_an_image_folder() {
        let mut stack = Stack::image();
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("b"), "b").unwrap();
        std::fs::create_dir(source.path().join("sub")).unwrap();
        std::fs::write(source.path().join("sub/c"), "c").unwrap();
        std::os::unix::fs::symlink("b", source.path().join("link")).unwrap();
        let patch = Patch::CopyDir { src: source.path().into(), dst: path("/data"), replace: false };
        stack.try_apply(patch, Some(source.path())).unwrap();
        assert_eq!(stack.read("/data/a").as_deref(), Some("a"));
        assert_eq!(stack.read("/data/sub/c").as_deref(), Some("c"));
        assert_eq!(stack.read("/data/link").as_deref(), Some("b"));
        assert_eq!(std::fs::read_link(stack.top().join("data/link")).unwrap(), Path::new("b"));
    }

    #[test]
    fn copy_dir_refuses_a_fifo_and_existing_files_without_replace() {
        let mut stack = Stack::image();
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("a"), "mine").unwrap();
        let patch = Patch::CopyDir { src: source.path().into(), dst: path("/data"), replace: false };
        assert!(matches!(cause(stack.try_apply(patch.clone(), Some(source.path()))), Cause::Exists(ref p) if p == "/data/a"));

        let fifo_dir = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, fifo_dir.path().join("pipe"), FileType::Fifo, Mode::from(0o644), 0).unwrap();
        let patch = Patch::CopyDir { src: fifo_dir.path().into(), dst: path("/srv"), replace: false };
        assert!(matches!(cause(stack.try_apply(patch, Some(fifo_dir.path()))), Cause::Special { kind: "FIFO", .. }));
    }

    #[test]
    fn a_symlink_replaces_a_folder_with_replace() {
        let mut stack = Stack::image();
        let link = |replace| Patch::Symlink { target: LinkTarget::parse("/etc").unwrap(), link: path("/data"), replace };
        assert!(matches!(cause(stack.try_apply(link(false), None)), Cause::Exists(_)));
        stack.apply(link(true));
        assert_eq!(std::fs::read_link(stack.top().join("data")).unwrap(), Path::new("/etc"));
        assert_eq!(stack.read("/data/motd").as_deref(), Some("image motd\n"));
    }

    #[test]
    fn image_symlinks_never_lead_a_patch_to_the_host() {
        let marker = format!("msb-escape-{}", std::process::id());
        let mut stack = Stack::image();
        stack.apply(text(&format!("/etc-link/tmp/{marker}"), "x", false));
        stack.apply(text(&format!("/x/tmp/{marker}-2"), "x", false));
        stack.apply(Patch::Mkdir { path: path(&format!("/x/{marker}-dir")), mode: None });
        assert!(!Path::new("/tmp").join(&marker).exists());
        assert!(!Path::new("/tmp").join(format!("{marker}-2")).exists());
        assert!(!Path::new("/").join(format!("{marker}-dir")).exists());
        // They landed inside the guest, where the sandbox will see them.
        assert_eq!(stack.read(&format!("/tmp/{marker}")).as_deref(), Some("x"));
        assert!(stack.top().join(format!("{marker}-dir")).is_dir());
    }

    #[test]
    fn copy_file_keeps_the_source_mode_and_checks_the_planned_digest() {
        let mut stack = Stack::image();
        let source = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(source.path(), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(source.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let patch = Patch::CopyFile { src: source.path().into(), dst: path("/bin/tool"), mode: None, replace: false };
        stack.try_apply(patch.clone(), Some(source.path())).unwrap();
        assert_eq!(std::fs::metadata(stack.top().join("bin/tool")).unwrap().mode() & 0o7777, 0o750);

        let n = stack.layers.len();
        let (upper, work) = (stack.dir.path().join("stale"), stack.dir.path().join("stale-work"));
        std::fs::create_dir(&upper).unwrap();
        std::fs::create_dir(&work).unwrap();
        let patch = Patch::CopyFile { src: source.path().into(), dst: path("/bin/other"), mode: None, replace: false };
        let step = Step { index: n, patch: &patch, source: Some(source.path()), source_digest: Some("sha256:stale") };
        let lowers: Vec<&Path> = stack.layers.iter().rev().map(PathBuf::as_path).collect();
        assert!(matches!(build(&lowers, &upper, &work, step).unwrap_err().cause, Cause::SourceChanged { .. }));
    }
}
