//! Unpacking one layer tar stream into an overlay "upper"-style folder, confined to that folder.
//!
//! A layer is untrusted input: its names, its link targets and the symlinks it creates along the
//! way must never make a write land outside the folder, on the host. So a name with a `..`
//! component is refused outright, every parent path is opened from a descriptor of the folder
//! without traversing any symlink (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or an
//! `O_NOFOLLOW` walk, one component at a time, where `openat2` is missing), and the last component
//! is created with `*at` calls relative to its parent's descriptor. Symlinks are stored verbatim:
//! they are only ever resolved later, inside the sandbox's own root.
//!
//! The output keeps overlayfs's on-disk format, so layers stack as overlay lower dirs without a
//! copy: a `.wh.NAME` entry becomes a 0:0 character device and `.wh..wh..opq` becomes
//! `trusted.overlay.opaque=y` on its directory.
//!
//! Creating files is what an unpack costs, so the parent directory of the previous entry is kept
//! open (tar streams list a directory's entries together), and ownership, mode and xattr calls are
//! only made when the kernel's defaults would not already give the entry's values.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

/// What one unpack did, for progress lines and the one warning about skipped device nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Tar entries applied (whiteouts and skipped special files included, pax/GNU name headers not).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Device nodes and FIFOs that could not be created because this process may not `mknod`.
    pub skipped_special: u64,
}

/// Why a layer could not be unpacked; each names the tar entry as it is written in the tar.
///
/// Any of these means the folder is incomplete and must be thrown away, never published.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open the layer folder `{path}`: {source}")]
    Dest { path: String, source: io::Error },
    #[error("cannot read the layer's tar stream {}: {source}", after_entry(.after.as_deref()))]
    Stream {
        /// The last entry read whole, if any: a malformed header has no name of its own.
        after: Option<String>,
        source: io::Error,
    },
    #[error("entry `{entry}` has a malformed header: {source}")]
    Header { entry: String, source: io::Error },
    #[error("entry `{entry}` escapes the layer: {reason}")]
    Escape { entry: String, reason: &'static str },
    #[error("entry `{entry}` has an invalid name: {reason}")]
    InvalidName { entry: String, reason: &'static str },
    #[error("entry `{entry}` writes through symlink `{symlink}`")]
    ThroughSymlink { entry: String, symlink: String },
    #[error(
        "entry `{entry}` needs `{parent}` to be a directory, but an earlier entry made it something else"
    )]
    NotADirectory { entry: String, parent: String },
    #[error("entry `{entry}` links to `{target}`, which is refused: {reason}")]
    LinkTarget {
        entry: String,
        target: String,
        reason: String,
    },
    #[error("entry `{entry}` is not a valid whiteout: {reason}")]
    Whiteout { entry: String, reason: &'static str },
    #[error(
        "entry `{entry}` sets the extended attribute `{name}`, which only whiteout entries may set"
    )]
    ForbiddenXattr { entry: String, name: String },
    #[error(
        "entry `{entry}` needs an overlay whiteout (a 0:0 character device), which this process may not create (it needs root): {source}"
    )]
    WhiteoutNotPermitted { entry: String, source: io::Error },
    #[error("entry `{entry}` has an unsupported type `{kind}`")]
    Unsupported { entry: String, kind: String },
    #[error("entry `{entry}`: cannot {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
}

fn after_entry(after: Option<&str>) -> String {
    match after {
        Some(entry) => format!("after entry `{entry}`"),
        None => "before its first entry".to_owned(),
    }
}

/// Unpacks one *decompressed* layer tar stream into `dest`, an existing empty folder.
///
/// The stream is read to its very end, past the end-of-archive blocks, because the caller hashes
/// every byte of it to check the layer's diff_id. Device nodes and FIFOs this process may not
/// create are skipped and counted; whiteouts are not optional, so failing to create one is an
/// error.
pub fn unpack(reader: impl Read, dest: &Path) -> Result<UnpackReport, UnpackError> {
    unpack_with(reader, dest, true)
}

/// [`unpack`], with the `openat2` fast path optional so the fallback walk is tested too.
fn unpack_with(
    reader: impl Read,
    dest: &Path,
    use_openat2: bool,
) -> Result<UnpackReport, UnpackError> {
    let dest_error = |source: io::Error| UnpackError::Dest {
        path: dest.display().to_string(),
        source,
    };
    let root =
        rustix::fs::open(dest, DIR_FLAGS, Mode::empty()).map_err(|e| dest_error(e.into()))?;
    let root = DirFd::new(root).map_err(|e| dest_error(e.into()))?;
    let mut unpacker = Unpacker::new(root);
    unpacker.use_openat2 = use_openat2;

    let mut archive = tar::Archive::new(BufReader::with_capacity(READ_BUF, reader));
    let mut last: Option<Vec<u8>> = None;
    let stream_error = |last: &Option<Vec<u8>>, source| UnpackError::Stream {
        after: last.as_deref().map(display_name),
        source,
    };
    for entry in archive.entries().map_err(|e| stream_error(&last, e))? {
        let mut entry = entry.map_err(|e| stream_error(&last, e))?;
        let raw = entry.path_bytes().into_owned();
        unpacker.entry(&mut entry, &raw)?;
        last = Some(raw);
    }
    unpacker.finish_dirs()?;

    // The tar reader stops at the first zero block; the rest still counts for the diff_id.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| stream_error(&last, e))?;
    Ok(unpacker.report)
}

/// Large enough that tar's 512-byte header reads do not each become a read of the (decompressing,
/// hashing) source.
const READ_BUF: usize = 64 * 1024;
/// Larger than [`READ_BUF`] so big file contents bypass the `BufReader` copy.
const COPY_BUF: usize = 256 * 1024;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// What follows [`WHITEOUT_PREFIX`] in `.wh..wh..opq`.
const OPAQUE_SUFFIX: &[u8] = b".wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Overlay reads these as its own bookkeeping (redirects, metacopy, opaque...); a layer that sets
/// them could make a lower layer's files reappear or point elsewhere.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
/// Error messages quote entry names; a hostile name should not flood a terminal.
const MAX_DISPLAY_CHARS: usize = 1024;

/// Renders an entry name as written in the tar, with control characters escaped.
fn display_name(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_DISPLAY_CHARS));
    for (i, c) in String::from_utf8_lossy(raw).chars().enumerate() {
        if i == MAX_DISPLAY_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

enum NameError {
    DotDot,
    Nul,
}

/// Makes a tar name relative to the layer root: leading `/`, `.` and empty components go (tools
/// write `./a` and `/a` for the same entry); `..` anywhere is refused rather than resolved.
fn normalize(raw: &[u8]) -> Result<Vec<u8>, NameError> {
    if raw.contains(&0) {
        return Err(NameError::Nul);
    }
    let mut out = Vec::with_capacity(raw.len());
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(NameError::DotDot),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok(out)
}

/// Splits a normalized path into its parent path and last component.
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (
            path.get(..i).unwrap_or_default(),
            path.get(i + 1..).unwrap_or_default(),
        ),
        None => (&[], path),
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        out.extend_from_slice(parent);
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

fn depth(path: &[u8]) -> usize {
    if path.is_empty() {
        0
    } else {
        1 + path.iter().filter(|b| **b == b'/').count()
    }
}

fn io_error(raw: &[u8], op: &'static str, source: impl Into<io::Error>) -> UnpackError {
    UnpackError::Io {
        entry: display_name(raw),
        op,
        source: source.into(),
    }
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

/// An open directory of the layer, with what a file created in it inherits.
#[derive(Clone)]
struct DirFd {
    fd: Rc<OwnedFd>,
    setgid: bool,
    gid: u32,
}

impl DirFd {
    fn new(fd: OwnedFd) -> rustix::io::Result<Self> {
        let stat = rustix::fs::fstat(&fd)?;
        Ok(Self {
            setgid: stat.st_mode & 0o2000 != 0,
            gid: stat.st_gid,
            fd: Rc::new(fd),
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The group a new entry gets without a chown: the directory's if it is setgid.
    fn new_gid(&self, egid: u32) -> u32 {
        if self.setgid { self.gid } else { egid }
    }

    /// A path that names `name` inside this directory for the calls that have no `*at` form
    /// (`lsetxattr`); the `/proc` magic link is the directory itself, so nothing is resolved
    /// anew.
    fn proc_path(&self, name: &[u8]) -> Vec<u8> {
        let mut path = format!("/proc/self/fd/{}/", self.fd.as_raw_fd()).into_bytes();
        path.extend_from_slice(name);
        path
    }
}

/// Why a directory path of the layer could not be opened.
enum Resolve {
    Symlink(Vec<u8>),
    NotDir(Vec<u8>),
    Missing,
    Io(io::Error),
}

impl Resolve {
    fn into_error(self, entry: String, op: &'static str) -> UnpackError {
        match self {
            Resolve::Symlink(at) => UnpackError::ThroughSymlink {
                entry,
                symlink: display_name(&at),
            },
            Resolve::NotDir(at) => UnpackError::NotADirectory {
                entry,
                parent: display_name(&at),
            },
            Resolve::Missing => UnpackError::Io {
                entry,
                op,
                source: Errno::NOENT.into(),
            },
            Resolve::Io(source) => UnpackError::Io { entry, op, source },
        }
    }
}

/// What an entry's header and pax records say about the node it creates.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta, UnpackError> {
    let header_error = |source: io::Error| UnpackError::Header {
        entry: display_name(raw),
        source,
    };
    let out_of_range = |what: &str| {
        header_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} is out of range"),
        ))
    };
    let header = entry.header();
    let mode = header.mode().map_err(header_error)? & 0o7777;
    let uid =
        u32::try_from(header.uid().map_err(header_error)?).map_err(|_| out_of_range("uid"))?;
    let gid =
        u32::try_from(header.gid().map_err(header_error)?).map_err(|_| out_of_range("gid"))?;
    let secs = header.mtime().map_err(header_error)?;
    let mut mtime = Timespec {
        tv_sec: i64::try_from(secs).map_err(|_| out_of_range("mtime"))?,
        tv_nsec: 0,
    };
    let mut xattrs = Vec::new();
    if let Some(records) = entry.pax_extensions().map_err(header_error)? {
        for record in records {
            let record = record.map_err(header_error)?;
            let key = record.key_bytes();
            if key == b"mtime" {
                mtime = parse_pax_time(record.value_bytes()).ok_or_else(|| {
                    header_error(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed pax mtime",
                    ))
                })?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p)) {
                    return Err(UnpackError::ForbiddenXattr {
                        entry: display_name(raw),
                        name: display_name(name),
                    });
                }
                xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

fn device_number<R: Read>(
    entry: &tar::Entry<'_, R>,
    raw: &[u8],
) -> Result<rustix::fs::Dev, UnpackError> {
    let header = entry.header();
    let header_error = |source| UnpackError::Header {
        entry: display_name(raw),
        source,
    };
    let major = header.device_major().map_err(header_error)?.unwrap_or(0);
    let minor = header.device_minor().map_err(header_error)?.unwrap_or(0);
    Ok(rustix::fs::makedev(major, minor))
}

/// Parses a pax time (`1700000000.123456789`, possibly negative), which carries the sub-second
/// part the octal header field cannot.
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let value = std::str::from_utf8(value).ok()?;
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let negative = secs.starts_with('-');
    let mut sec: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nsec: i64 = 0;
    for digit in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nsec = nsec * 10 + i64::from(digit - b'0');
    }
    if negative && nsec != 0 {
        sec = sec.checked_sub(1)?;
        nsec = 1_000_000_000 - nsec;
    }
    Some(Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    })
}

/// Work left for the end: a directory's mtime changes with every child written into it.
struct DirFinish {
    entry: String,
    mtime: Timespec,
    /// The tar's mode, when it was widened so that a non-root process could fill the directory.
    mode: Option<u32>,
}

struct Unpacker {
    root: DirFd,
    is_root: bool,
    egid: u32,
    umask: u32,
    use_openat2: bool,
    /// The last parent directory opened, by normalized path.
    cache: Option<(Vec<u8>, DirFd)>,
    dirs: BTreeMap<Vec<u8>, DirFinish>,
    buf: Vec<u8>,
    report: UnpackReport,
}

impl Unpacker {
    fn new(root: DirFd) -> Self {
        Self {
            root,
            is_root: rustix::process::geteuid().is_root(),
            egid: rustix::process::getegid().as_raw(),
            umask: process_umask(),
            use_openat2: true,
            cache: None,
            dirs: BTreeMap::new(),
            buf: vec![0; COPY_BUF],
            report: UnpackReport::default(),
        }
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        self.report.entries = self.report.entries.saturating_add(1);
        let path = normalize(raw).map_err(|e| match e {
            NameError::DotDot => UnpackError::Escape {
                entry: display_name(raw),
                reason: "`..` component",
            },
            NameError::Nul => UnpackError::InvalidName {
                entry: display_name(raw),
                reason: "it contains a NUL byte",
            },
        })?;
        let (parent, name) = split_parent(&path);
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(raw, parent, hidden);
        }
        let meta = read_meta(entry, raw)?;
        let is_dir = kind == EntryType::Directory
            || (matches!(kind, EntryType::Regular | EntryType::Continuous) && raw.ends_with(b"/"));
        if path.is_empty() {
            if is_dir {
                return self.root_dir(raw, &meta);
            }
            return Err(UnpackError::InvalidName {
                entry: display_name(raw),
                reason: "it names the layer root but is not a directory",
            });
        }
        match kind {
            _ if is_dir => self.dir(raw, &path, parent, name, &meta),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, raw, &path, parent, name, &meta)
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(Cow::into_owned);
                self.symlink(raw, &path, parent, name, target, &meta)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(Cow::into_owned);
                self.hardlink(raw, &path, parent, name, target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    EntryType::Char => (FileType::CharacterDevice, device_number(entry, raw)?),
                    EntryType::Block => (FileType::BlockDevice, device_number(entry, raw)?),
                    // Writers leave a FIFO's device fields empty.
                    _ => (FileType::Fifo, 0),
                };
                self.special(raw, &path, parent, name, file_type, dev, &meta)
            }
            other => Err(UnpackError::Unsupported {
                entry: display_name(raw),
                kind: [other.as_byte()].escape_ascii().to_string(),
            }),
        }
    }

    /// Opens (creating missing ones, 0755 root) the directory an entry is written into.
    fn parent_dir(&mut self, raw: &[u8], parent: &[u8]) -> Result<DirFd, UnpackError> {
        if parent.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((path, dir)) = &self.cache
            && path.as_slice() == parent
        {
            return Ok(dir.clone());
        }
        let dir = self
            .resolve_dir(parent, true)
            .map_err(|e| e.into_error(display_name(raw), "open its parent directory"))?;
        self.cache = Some((parent.to_vec(), dir.clone()));
        Ok(dir)
    }

    /// Opens a directory of the layer by its normalized path without following any symlink.
    fn resolve_dir(&mut self, path: &[u8], create: bool) -> Result<DirFd, Resolve> {
        if path.is_empty() {
            return Ok(self.root.clone());
        }
        if self.use_openat2 {
            match rustix::fs::openat2(self.root.fd(), path, DIR_FLAGS, Mode::empty(), RESOLVE) {
                Ok(fd) => return DirFd::new(fd).map_err(|e| Resolve::Io(e.into())),
                // Kernels before 5.6, or a seccomp filter that does not know the call.
                Err(Errno::NOSYS) => self.use_openat2 = false,
                // Missing parents, symlinks and non-directories: the walk says which component.
                Err(_) => {}
            }
        }
        self.walk(path, create)
    }

    /// Opens `path` one component at a time with `O_NOFOLLOW`, so the component that is a symlink
    /// or not a directory can be named, and missing ones created.
    fn walk(&self, path: &[u8], create: bool) -> Result<DirFd, Resolve> {
        let flags = DIR_FLAGS | OFlags::NOFOLLOW;
        let mut current: Option<OwnedFd> = None;
        let mut end = 0;
        for part in path.split(|b| *b == b'/') {
            end = if end == 0 {
                part.len()
            } else {
                end + 1 + part.len()
            };
            let prefix = || path.get(..end).unwrap_or(path).to_vec();
            let at = current.as_ref().map_or(self.root.fd(), |fd| fd.as_fd());
            let fd = match rustix::fs::openat(at, part, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(at, part, Mode::from_bits_truncate(0o755))
                        .map_err(|e| Resolve::Io(e.into()))?;
                    let fd = rustix::fs::openat(at, part, flags, Mode::empty())
                        .map_err(|e| Resolve::Io(e.into()))?;
                    self.fix_implicit_dir(&fd)
                        .map_err(|e| Resolve::Io(e.into()))?;
                    fd
                }
                Err(Errno::NOENT) => return Err(Resolve::Missing),
                // `O_DIRECTORY` is checked before `O_NOFOLLOW`: a symlink to a directory gives
                // ENOTDIR, not ELOOP.
                Err(Errno::LOOP) => return Err(Resolve::Symlink(prefix())),
                Err(Errno::NOTDIR) => {
                    let is_symlink = rustix::fs::statat(at, part, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                    return Err(if is_symlink {
                        Resolve::Symlink(prefix())
                    } else {
                        Resolve::NotDir(prefix())
                    });
                }
                Err(e) => return Err(Resolve::Io(e.into())),
            };
            current = Some(fd);
        }
        match current {
            Some(fd) => DirFd::new(fd).map_err(|e| Resolve::Io(e.into())),
            None => Ok(self.root.clone()),
        }
    }

    /// Makes an implied directory exactly 0755 root, whatever the umask or a setgid parent gave.
    fn fix_implicit_dir(&self, fd: &OwnedFd) -> rustix::io::Result<()> {
        let stat = rustix::fs::fstat(fd)?;
        if self.is_root && (stat.st_uid != 0 || stat.st_gid != 0) {
            rustix::fs::fchown(fd, Some(rustix::fs::Uid::ROOT), Some(rustix::fs::Gid::ROOT))?;
        }
        if stat.st_mode & 0o7777 != 0o755 {
            rustix::fs::fchmod(fd, Mode::from_bits_truncate(0o755))?;
        }
        Ok(())
    }

    /// Removes whatever `name` is in `dir` (a directory with all it holds) so a later entry can
    /// take its place; symlinks are removed, never followed.
    fn remove_existing(
        &mut self,
        raw: &[u8],
        dir: &DirFd,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), UnpackError> {
        match rustix::fs::unlinkat(dir.fd(), name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => {
                self.forget_dirs(path);
                remove_tree(dir.fd(), name)
                    .map_err(|e| io_error(raw, "remove the directory it replaces", e))
            }
            Err(e) => Err(io_error(raw, "remove the entry it replaces", e)),
        }
    }

    /// Drops what is known about a removed directory and everything below it.
    fn forget_dirs(&mut self, path: &[u8]) {
        self.cache = None;
        self.dirs.remove(path);
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        let below: Vec<Vec<u8>> = self
            .dirs
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(key, _)| key.clone())
            .collect();
        for key in below {
            self.dirs.remove(&key);
        }
    }

    /// A chown is needed unless the kernel's default owner (us, or a setgid parent's group) is
    /// already the entry's.
    fn needs_chown(&self, dir: &DirFd, meta: &Meta) -> bool {
        self.is_root && (meta.uid != 0 || meta.gid != dir.new_gid(self.egid))
    }

    /// A chmod is needed when the umask took bits away, for setuid/setgid/sticky bits (which
    /// create calls and chown drop), and after a chown.
    fn needs_chmod(&self, mode: u32, chowned: bool) -> bool {
        chowned || mode & (self.umask | 0o7000) != 0
    }

    fn set_xattrs(
        &self,
        raw: &[u8],
        meta: &Meta,
        strict: bool,
        set: impl Fn(&[u8], &[u8]) -> rustix::io::Result<()>,
    ) -> Result<(), UnpackError> {
        for (name, value) in &meta.xattrs {
            if let Err(e) = set(name, value) {
                // `user.*` is the layer's own data; `security.*`/`trusted.*` belong to the host's
                // policy (SELinux labels, capabilities) and may rightly be refused here.
                if strict && name.starts_with(b"user.") {
                    return Err(io_error(raw, "set an extended attribute", e));
                }
                tracing::debug!(
                    entry = %display_name(raw),
                    xattr = %display_name(name),
                    error = %e,
                    "skipping an extended attribute that cannot be set here"
                );
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, raw: &[u8], parent: &[u8], hidden: &[u8]) -> Result<(), UnpackError> {
        if hidden == OPAQUE_SUFFIX {
            let dir = self.parent_dir(raw, parent)?;
            return rustix::fs::fsetxattr(dir.fd(), OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| {
                    io_error(
                        raw,
                        "mark its directory opaque (setting trusted.overlay.opaque needs root)",
                        e,
                    )
                });
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            tracing::debug!(entry = %display_name(raw), "skipping aufs metadata");
            return Ok(());
        }
        let reason = match hidden {
            b"" => Some("it hides an empty name"),
            b"." => Some("it hides `.`"),
            b".." => Some("it hides `..`"),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(UnpackError::Whiteout {
                entry: display_name(raw),
                reason,
            });
        }
        let dir = self.parent_dir(raw, parent)?;
        self.remove_existing(raw, &dir, hidden, &join(parent, hidden))?;
        rustix::fs::mknodat(
            dir.fd(),
            hidden,
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .map_err(|e| match e {
            Errno::PERM | Errno::ACCESS => UnpackError::WhiteoutNotPermitted {
                entry: display_name(raw),
                source: e.into(),
            },
            _ => io_error(raw, "create the whiteout", e),
        })
    }

    fn root_dir(&mut self, raw: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        let root = self.root.clone();
        if self.is_root {
            rustix::fs::fchown(
                root.fd(),
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| io_error(raw, "set the layer root's owner", e))?;
        }
        let now = self.dir_mode_now(meta.mode);
        rustix::fs::fchmod(root.fd(), Mode::from_bits_truncate(now))
            .map_err(|e| io_error(raw, "set the layer root's mode", e))?;
        self.set_xattrs(raw, meta, true, |name, value| {
            rustix::fs::fsetxattr(root.fd(), name, value, XattrFlags::empty())
        })?;
        self.dirs.insert(
            Vec::new(),
            DirFinish {
                entry: display_name(raw),
                mtime: meta.mtime,
                mode: (now != meta.mode).then_some(meta.mode),
            },
        );
        Ok(())
    }

    /// Without root, a directory must stay writable and searchable until its children are in.
    fn dir_mode_now(&self, mode: u32) -> u32 {
        if self.is_root { mode } else { mode | 0o700 }
    }

    fn dir(
        &mut self,
        raw: &[u8],
        path: &[u8],
        parent: &[u8],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let dir = self.parent_dir(raw, parent)?;
        let now = self.dir_mode_now(meta.mode);
        let mode = Mode::from_bits_truncate(now);
        let created = match rustix::fs::mkdirat(dir.fd(), name, mode) {
            Ok(()) => true,
            Err(Errno::EXIST) => {
                let stat = rustix::fs::statat(dir.fd(), name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_error(raw, "inspect the entry it replaces", e))?;
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                    false
                } else {
                    self.remove_existing(raw, &dir, name, path)?;
                    rustix::fs::mkdirat(dir.fd(), name, mode)
                        .map_err(|e| io_error(raw, "create the directory", e))?;
                    true
                }
            }
            Err(e) => return Err(io_error(raw, "create the directory", e)),
        };
        let chown = self.is_root && (!created || self.needs_chown(&dir, meta));
        if chown {
            rustix::fs::chownat(
                dir.fd(),
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_error(raw, "set the directory's owner", e))?;
        }
        // A setgid parent makes a new directory setgid too; only the tar's mode is wanted.
        if !created || dir.setgid || self.needs_chmod(now, chown) {
            // Not a symlink: it was just created or checked, and nothing else writes here.
            rustix::fs::chmodat(dir.fd(), name, mode, AtFlags::empty())
                .map_err(|e| io_error(raw, "set the directory's mode", e))?;
        }
        if !meta.xattrs.is_empty() {
            let fd =
                rustix::fs::openat(dir.fd(), name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                    .map_err(|e| io_error(raw, "open the directory", e))?;
            self.set_xattrs(raw, meta, true, |name, value| {
                rustix::fs::fsetxattr(&fd, name, value, XattrFlags::empty())
            })?;
        }
        self.dirs.insert(
            path.to_vec(),
            DirFinish {
                entry: display_name(raw),
                mtime: meta.mtime,
                mode: (now != meta.mode).then_some(meta.mode),
            },
        );
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        path: &[u8],
        parent: &[u8],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let dir = self.parent_dir(raw, parent)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_bits_truncate(meta.mode);
        let fd = match rustix::fs::openat(dir.fd(), name, flags, mode) {
            Err(Errno::EXIST) => {
                self.remove_existing(raw, &dir, name, path)?;
                rustix::fs::openat(dir.fd(), name, flags, mode)
            }
            other => other,
        }
        .map_err(|e| io_error(raw, "create the file", e))?;
        let mut file = File::from(fd);

        let mut written: u64 = 0;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(raw, "read its content from the stream", e)),
            };
            let chunk = self.buf.get(..n).unwrap_or_default();
            file.write_all(chunk)
                .map_err(|e| io_error(raw, "write the file", e))?;
            written = written.saturating_add(n as u64);
        }
        self.report.bytes = self.report.bytes.saturating_add(written);

        // Ownership first: chown drops setuid/setgid bits and file capabilities.
        let chown = self.needs_chown(&dir, meta);
        if chown {
            rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| io_error(raw, "set the file's owner", e))?;
        }
        if self.needs_chmod(meta.mode, chown) {
            rustix::fs::fchmod(&file, mode).map_err(|e| io_error(raw, "set the file's mode", e))?;
        }
        self.set_xattrs(raw, meta, true, |name, value| {
            rustix::fs::fsetxattr(&file, name, value, XattrFlags::empty())
        })?;
        rustix::fs::futimens(&file, &times(meta.mtime))
            .map_err(|e| io_error(raw, "set the file's mtime", e))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        raw: &[u8],
        path: &[u8],
        parent: &[u8],
        name: &[u8],
        target: Option<Vec<u8>>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let refuse = |target: &[u8], reason: &str| UnpackError::LinkTarget {
            entry: display_name(raw),
            target: display_name(target),
            reason: reason.to_owned(),
        };
        let target = match target {
            Some(target) if !target.is_empty() => target,
            _ => return Err(refuse(b"", "a symlink needs a target")),
        };
        if target.contains(&0) {
            return Err(refuse(&target, "the target contains a NUL byte"));
        }
        let dir = self.parent_dir(raw, parent)?;
        match rustix::fs::symlinkat(target.as_slice(), dir.fd(), name) {
            Err(Errno::EXIST) => {
                self.remove_existing(raw, &dir, name, path)?;
                rustix::fs::symlinkat(target.as_slice(), dir.fd(), name)
            }
            other => other,
        }
        .map_err(|e| io_error(raw, "create the symlink", e))?;
        self.name_meta(raw, &dir, name, meta, false)
    }

    /// Owner, xattrs and times of a node that cannot be opened (symlink, device, FIFO).
    fn name_meta(
        &self,
        raw: &[u8],
        dir: &DirFd,
        name: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), UnpackError> {
        let chown = self.needs_chown(dir, meta);
        if chown {
            rustix::fs::chownat(
                dir.fd(),
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_error(raw, "set its owner", e))?;
        }
        if chmod && self.needs_chmod(meta.mode, chown) {
            // Only for devices and FIFOs, which chmod changes without opening.
            rustix::fs::chmodat(
                dir.fd(),
                name,
                Mode::from_bits_truncate(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| io_error(raw, "set its mode", e))?;
        }
        if !meta.xattrs.is_empty() {
            let path = dir.proc_path(name);
            // Symlinks cannot hold `user.*` attributes at all, so none of these is fatal.
            self.set_xattrs(raw, meta, false, |name, value| {
                rustix::fs::lsetxattr(path.as_slice(), name, value, XattrFlags::empty())
            })?;
        }
        rustix::fs::utimensat(
            dir.fd(),
            name,
            &times(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_error(raw, "set its mtime", e))
    }

    fn hardlink(
        &mut self,
        raw: &[u8],
        path: &[u8],
        parent: &[u8],
        name: &[u8],
        target: Option<Vec<u8>>,
    ) -> Result<(), UnpackError> {
        let target_raw = target.unwrap_or_default();
        let refuse = |reason: String| UnpackError::LinkTarget {
            entry: display_name(raw),
            target: display_name(&target_raw),
            reason,
        };
        let target = match normalize(&target_raw) {
            Ok(target) if target.is_empty() => {
                return Err(refuse("the target names the layer root".into()));
            }
            Ok(target) => target,
            Err(NameError::DotDot) => {
                return Err(refuse(
                    "the target escapes the layer: `..` component".into(),
                ));
            }
            Err(NameError::Nul) => return Err(refuse("the target contains a NUL byte".into())),
        };
        let (target_parent, target_name) = split_parent(&target);
        let target_dir = match self.resolve_dir(target_parent, false) {
            Ok(dir) => dir,
            Err(Resolve::Symlink(at)) => {
                return Err(refuse(format!(
                    "the target's path goes through symlink `{}`",
                    display_name(&at)
                )));
            }
            Err(Resolve::Missing | Resolve::NotDir(_)) => {
                return Err(refuse("the target does not exist in this layer".into()));
            }
            Err(Resolve::Io(e)) => return Err(refuse(format!("cannot open its directory: {e}"))),
        };
        match rustix::fs::statat(target_dir.fd(), target_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => {}
                FileType::Symlink => return Err(refuse("the target is a symlink".into())),
                _ => return Err(refuse("the target is not a regular file".into())),
            },
            Err(Errno::NOENT) => {
                return Err(refuse("the target does not exist in this layer".into()));
            }
            Err(e) => return Err(refuse(format!("cannot inspect the target: {e}"))),
        }
        if target == path {
            return Ok(());
        }
        let dir = self.parent_dir(raw, parent)?;
        let link = || {
            rustix::fs::linkat(
                target_dir.fd(),
                target_name,
                dir.fd(),
                name,
                AtFlags::empty(),
            )
        };
        match link() {
            Err(Errno::EXIST) => {
                self.remove_existing(raw, &dir, name, path)?;
                link()
            }
            other => other,
        }
        .map_err(|e| io_error(raw, "create the hard link", e))
    }

    #[allow(clippy::too_many_arguments)]
    fn special(
        &mut self,
        raw: &[u8],
        path: &[u8],
        parent: &[u8],
        name: &[u8],
        file_type: FileType,
        dev: rustix::fs::Dev,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let dir = self.parent_dir(raw, parent)?;
        let mode = Mode::from_bits_truncate(meta.mode);
        let make = || rustix::fs::mknodat(dir.fd(), name, file_type, mode, dev);
        let made = match make() {
            Err(Errno::EXIST) => {
                self.remove_existing(raw, &dir, name, path)?;
                make()
            }
            other => other,
        };
        match made {
            Ok(()) => {}
            Err(Errno::PERM) => {
                tracing::debug!(entry = %display_name(raw), "no permission to create a device node; skipped");
                self.report.skipped_special = self.report.skipped_special.saturating_add(1);
                return Ok(());
            }
            Err(e) => return Err(io_error(raw, "create the special file", e)),
        }
        self.name_meta(raw, &dir, name, meta, true)
    }

    /// Sets directory mtimes (and deferred modes) once every child is written, deepest first.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let mut dirs: Vec<(Vec<u8>, DirFinish)> =
            std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(path, _)| Reverse(depth(path)));
        self.cache = None;
        for (path, finish) in dirs {
            let dir = self
                .resolve_dir(&path, false)
                .map_err(|e| e.into_error(finish.entry.clone(), "open the directory"))?;
            if let Some(mode) = finish.mode {
                rustix::fs::fchmod(dir.fd(), Mode::from_bits_truncate(mode)).map_err(|e| {
                    UnpackError::Io {
                        entry: finish.entry.clone(),
                        op: "set the directory's mode",
                        source: e.into(),
                    }
                })?;
            }
            rustix::fs::futimens(dir.fd(), &times(finish.mtime)).map_err(|e| UnpackError::Io {
                entry: finish.entry,
                op: "set the directory's mtime",
                source: e.into(),
            })?;
        }
        Ok(())
    }
}

/// Removes a directory tree below `parent` without following symlinks, iteratively so a deep
/// tree cannot exhaust the stack.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    let flags = DIR_FLAGS | OFlags::NOFOLLOW;
    let top = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    let top_name = CString::new(name).map_err(|_| Errno::INVAL)?;
    let mut stack: Vec<(Dir, CString)> = vec![(Dir::new(top)?, top_name)];
    loop {
        let Some((dir, _)) = stack.last_mut() else {
            return Ok(());
        };
        match dir.read() {
            Some(entry) => {
                let entry = entry?;
                let child = entry.file_name();
                if child == c"." || child == c".." {
                    continue;
                }
                let at = dir.fd()?;
                let is_dir = match entry.file_type() {
                    FileType::Directory => true,
                    FileType::Unknown => {
                        let stat = rustix::fs::statat(at, child, AtFlags::SYMLINK_NOFOLLOW)?;
                        FileType::from_raw_mode(stat.st_mode) == FileType::Directory
                    }
                    _ => false,
                };
                if is_dir {
                    let fd = rustix::fs::openat(at, child, flags, Mode::empty())?;
                    let child = child.to_owned();
                    stack.push((Dir::new(fd)?, child));
                } else {
                    rustix::fs::unlinkat(at, child, AtFlags::empty())?;
                }
            }
            None => {
                let Some((done, done_name)) = stack.pop() else {
                    return Ok(());
                };
                drop(done);
                match stack.last() {
                    Some((up, _)) => {
                        rustix::fs::unlinkat(up.fd()?, &done_name, AtFlags::REMOVEDIR)?
                    }
                    None => rustix::fs::unlinkat(parent, &done_name, AtFlags::REMOVEDIR)?,
                }
            }
        }
    }
}

/// The umask, read without changing it (`umask(2)` can only be read by setting it, which would
/// race with threads creating files); when unknown, assume every bit is masked so modes are
/// always set explicitly.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::PathBuf;

    use proptest::prelude::*;
    use tar::{Builder, Header};

    const MTIME: u64 = 1_600_000_000;

    /// A layer written entry by entry with raw headers, so names the tar crate's own setters
    /// refuse (`..`, NUL) can be written as a hostile tool would.
    struct Layer {
        builder: Builder<Vec<u8>>,
    }

    fn header(kind: EntryType, name: &[u8], link: &[u8], mode: u32) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        let gnu = header.as_gnu_mut().expect("gnu header");
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        header
    }

    impl Layer {
        fn new() -> Self {
            Self {
                builder: Builder::new(Vec::new()),
            }
        }

        fn push(&mut self, mut header: Header, data: &[u8]) -> &mut Self {
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.builder.append(&header, data).expect("append");
            self
        }

        fn raw(&mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> &mut Self {
            let mode = match kind {
                EntryType::Directory => 0o755,
                EntryType::Symlink => 0o777,
                _ => 0o644,
            };
            self.push(header(kind, name, link, mode), data)
        }

        fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.raw(EntryType::Regular, name.as_bytes(), b"", data)
        }

        fn file_mode(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
            self.push(header(EntryType::Regular, name.as_bytes(), b"", mode), data)
        }

        fn dir(&mut self, name: &str) -> &mut Self {
            self.raw(EntryType::Directory, name.as_bytes(), b"", b"")
        }

        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(EntryType::Symlink, name.as_bytes(), target.as_bytes(), b"")
        }

        fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(EntryType::Link, name.as_bytes(), target.as_bytes(), b"")
        }

        fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Self {
            let mut header = header(kind, name.as_bytes(), b"", 0o620);
            header.set_device_major(major).expect("major");
            header.set_device_minor(minor).expect("minor");
            self.push(header, b"")
        }

        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            self.builder
                .append_pax_extensions(records.iter().copied())
                .expect("pax");
            self
        }

        fn gnu_long(&mut self, kind: EntryType, value: &[u8]) -> &mut Self {
            let mut data = value.to_vec();
            data.push(0);
            self.raw(kind, b"././@LongLink", b"", &data)
        }

        fn bytes(self) -> Vec<u8> {
            self.builder.into_inner().expect("finish")
        }
    }

    /// A layer folder nested a few levels down next to an `outside` folder, so escapes of any
    /// depth land somewhere the snapshot sees.
    struct Fixture {
        _tmp: tempfile::TempDir,
        top: PathBuf,
        dest: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let top = tmp.path().to_path_buf();
        let outside = top.join("outside");
        std::fs::create_dir_all(outside.join("dir")).expect("mkdir");
        std::fs::write(outside.join("file"), "outside\n").expect("write");
        std::fs::write(outside.join("dir/inner"), "inner\n").expect("write");
        let dest = top.join("l1/l2/l3/dest");
        std::fs::create_dir_all(&dest).expect("mkdir");
        Fixture {
            _tmp: tmp,
            top,
            dest,
            outside,
        }
    }

    impl Fixture {
        fn outside_str(&self) -> String {
            self.outside.to_str().expect("utf-8 tempdir").to_owned()
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dest.join(rel)
        }

        fn meta(&self, rel: &str) -> std::fs::Metadata {
            std::fs::symlink_metadata(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
        }
    }

    /// Everything under `top` except `skip`: type, mode, owner, size, links, mtime and content.
    fn snapshot(top: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![top.to_path_buf()];
        while let Some(path) = todo.pop() {
            if path == skip {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let content = if meta.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(&path).expect("readlink"))
            } else if meta.is_file() {
                format!("{:?}", std::fs::read(&path).expect("read"))
            } else {
                String::new()
            };
            let xattr = {
                let mut buf = [0u8; 64];
                rustix::fs::lgetxattr(&path, OPAQUE_XATTR, &mut buf).is_ok()
            };
            out.insert(
                path.clone(),
                format!(
                    "{:?} {:o} {}:{} size={} nlink={} mtime={}.{} opaque={xattr} {content}",
                    meta.file_type(),
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.size(),
                    meta.nlink(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                ),
            );
            if meta.is_dir() {
                for child in std::fs::read_dir(&path).expect("readdir") {
                    todo.push(child.expect("dirent").path());
                }
            }
        }
        out
    }

    fn unpack_ok(fixture: &Fixture, layer: Layer) -> UnpackReport {
        let bytes = layer.bytes();
        unpack(bytes.as_slice(), &fixture.dest).unwrap_or_else(|e| panic!("unpack failed: {e}"))
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn is_whiteout(meta: &std::fs::Metadata) -> bool {
        meta.file_type().is_char_device() && meta.rdev() == 0
    }

    struct Evil {
        name: &'static str,
        /// A fragment of the expected message, besides the entry's name.
        says: &'static str,
        /// Writes the layer; returns the entry the error must name.
        build: fn(&mut Layer, &str) -> String,
    }

    fn evil_cases() -> Vec<Evil> {
        vec![
            Evil {
                name: "parent of the root",
                says: "escapes the layer: `..` component",
                build: |l, _| {
                    l.raw(EntryType::Regular, b"../x", b"", b"pwned");
                    "../x".into()
                },
            },
            Evil {
                name: "dotdot after a component",
                says: "escapes the layer",
                build: |l, _| {
                    l.raw(EntryType::Regular, b"a/../../x", b"", b"pwned");
                    "a/../../x".into()
                },
            },
            Evil {
                name: "absolute dotdot",
                says: "escapes the layer",
                build: |l, _| {
                    l.raw(EntryType::Regular, b"/../x", b"", b"pwned");
                    "/../x".into()
                },
            },
            Evil {
                name: "dot slash dotdot",
                says: "escapes the layer",
                build: |l, _| {
                    l.raw(EntryType::Regular, b"./../x", b"", b"pwned");
                    "./../x".into()
                },
            },
            Evil {
                name: "dotdot directory entry",
                says: "escapes the layer",
                build: |l, _| {
                    l.raw(EntryType::Directory, b"../d/", b"", b"");
                    "../d/".into()
                },
            },
            Evil {
                name: "trailing dotdot",
                says: "escapes the layer",
                build: |l, _| {
                    l.raw(EntryType::Directory, b"a/..", b"", b"");
                    "a/..".into()
                },
            },
            Evil {
                name: "symlink to / then a write under it",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    let name = format!("a{outside}/file");
                    l.symlink("a", "/").file(&name, b"pwned");
                    name
                },
            },
            Evil {
                name: "symlink to ../.. then a write under it",
                says: "writes through symlink `a`",
                build: |l, _| {
                    l.symlink("a", "../..").file("a/x", b"pwned");
                    "a/x".into()
                },
            },
            Evil {
                name: "symlink chain to ..",
                says: "writes through symlink `a`",
                build: |l, _| {
                    l.symlink("a", "b").symlink("b", "..").file("a/x", b"pwned");
                    "a/x".into()
                },
            },
            Evil {
                name: "symlink chain to the outside folder",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", "b")
                        .symlink("b", outside)
                        .file("a/file", b"pwned");
                    "a/file".into()
                },
            },
            Evil {
                name: "hard link placed through a symlinked dir",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside).file("f", b"x").hardlink("a/h", "f");
                    "a/h".into()
                },
            },
            Evil {
                name: "hard link target through a symlinked dir",
                says: "goes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside).hardlink("h", "a/file");
                    "h".into()
                },
            },
            Evil {
                name: "hard link to ../outside/file",
                says: "the target escapes the layer",
                build: |l, _| {
                    l.hardlink("h", "../outside/file");
                    "h".into()
                },
            },
            Evil {
                name: "hard link to /etc/passwd",
                says: "does not exist in this layer",
                build: |l, _| {
                    l.hardlink("h", "/etc/passwd");
                    "h".into()
                },
            },
            Evil {
                name: "hard link to the absolute path of an outside file",
                says: "does not exist in this layer",
                build: |l, outside| {
                    l.hardlink("h", &format!("{outside}/file"));
                    "h".into()
                },
            },
            Evil {
                name: "hard link to a symlink that points outside",
                says: "the target is a symlink",
                build: |l, outside| {
                    l.symlink("s", &format!("{outside}/file"))
                        .hardlink("h", "s");
                    "h".into()
                },
            },
            Evil {
                name: "hard link to a directory",
                says: "not a regular file",
                build: |l, _| {
                    l.dir("d/").hardlink("h", "d");
                    "h".into()
                },
            },
            Evil {
                name: "hard link to a whiteout",
                says: "not a regular file",
                build: |l, _| {
                    l.file(".wh.x", b"").hardlink("h", "x");
                    "h".into()
                },
            },
            Evil {
                name: "whiteout of ..",
                says: "hides `..`",
                build: |l, _| {
                    l.file(".wh...", b"");
                    ".wh...".into()
                },
            },
            Evil {
                name: "nested whiteout of ..",
                says: "hides `..`",
                build: |l, _| {
                    l.dir("a/").file("a/.wh...", b"");
                    "a/.wh...".into()
                },
            },
            Evil {
                name: "whiteout of .",
                says: "hides `.`",
                build: |l, _| {
                    l.file(".wh..", b"");
                    ".wh..".into()
                },
            },
            Evil {
                name: "whiteout of nothing",
                says: "hides an empty name",
                build: |l, _| {
                    l.file("a/.wh.", b"");
                    "a/.wh.".into()
                },
            },
            Evil {
                name: "opaque whiteout in a symlinked dir",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside).file("a/.wh..wh..opq", b"");
                    "a/.wh..wh..opq".into()
                },
            },
            Evil {
                name: "whiteout through a symlinked dir",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside).file("a/.wh.file", b"");
                    "a/.wh.file".into()
                },
            },
            Evil {
                name: "symlink replaces a written dir, then a write under it",
                says: "writes through symlink `d`",
                build: |l, outside| {
                    l.file("d/f", b"x")
                        .symlink("d", outside)
                        .file("d/g", b"pwned");
                    "d/g".into()
                },
            },
            Evil {
                name: "symlink named like an existing dir, then entries in it",
                says: "writes through symlink `etc`",
                build: |l, outside| {
                    l.dir("etc/")
                        .file("etc/hosts", b"x")
                        .symlink("etc", outside)
                        .file("etc/file", b"pwned");
                    "etc/file".into()
                },
            },
            Evil {
                name: "NUL in a pax path",
                says: "contains a NUL byte",
                build: |l, _| {
                    l.pax(&[("path", b"a\0/../../x")]).file("placeholder", b"");
                    "a\\u{0}/../../x".into()
                },
            },
            Evil {
                name: "NUL in a GNU long name",
                says: "contains a NUL byte",
                build: |l, _| {
                    l.gnu_long(EntryType::GNULongName, b"a\0b")
                        .file("placeholder", b"");
                    "a\\u{0}b".into()
                },
            },
            Evil {
                name: "trusted.overlay.opaque injected by xattr",
                says: "sets the extended attribute `trusted.overlay.opaque`",
                build: |l, _| {
                    l.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
                        .dir("d/");
                    "d/".into()
                },
            },
            Evil {
                name: "trusted.overlay.redirect injected by xattr",
                says: "sets the extended attribute `trusted.overlay.redirect`",
                build: |l, _| {
                    l.pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
                        .file("f", b"");
                    "f".into()
                },
            },
            Evil {
                name: "user.overlay.opaque injected by xattr",
                says: "sets the extended attribute `user.overlay.opaque`",
                build: |l, _| {
                    l.pax(&[("SCHILY.xattr.user.overlay.opaque", b"y")])
                        .dir("d/");
                    "d/".into()
                },
            },
            Evil {
                name: "device node through a symlink",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside)
                        .device(EntryType::Char, "a/null", 1, 3);
                    "a/null".into()
                },
            },
            Evil {
                name: "fifo through a symlink",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside).device(EntryType::Fifo, "a/p", 0, 0);
                    "a/p".into()
                },
            },
            Evil {
                name: "directory through a symlink",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside).dir("a/newdir/");
                    "a/newdir/".into()
                },
            },
            Evil {
                name: "symlink through a symlink",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside).symlink("a/s", "/");
                    "a/s".into()
                },
            },
            Evil {
                name: "implicit parents below a symlink",
                says: "writes through symlink `a`",
                build: |l, outside| {
                    l.symlink("a", outside).file("a/b/c/file", b"pwned");
                    "a/b/c/file".into()
                },
            },
            Evil {
                name: "deep symlink",
                says: "writes through symlink `a/b/c`",
                build: |l, outside| {
                    l.dir("a/")
                        .dir("a/b/")
                        .symlink("a/b/c", outside)
                        .file("a/b/c/d/e", b"pwned");
                    "a/b/c/d/e".into()
                },
            },
            Evil {
                name: "pax long name with ..",
                says: "escapes the layer",
                build: |l, _| {
                    let name = format!("{}/../../../../../../x", "y".repeat(150));
                    l.pax(&[("path", name.as_bytes())])
                        .file("placeholder", b"pwned");
                    name
                },
            },
            Evil {
                name: "GNU long name with ..",
                says: "escapes the layer",
                build: |l, _| {
                    let name = format!("{}/../../../../x", "y".repeat(150));
                    l.gnu_long(EntryType::GNULongName, name.as_bytes())
                        .file("placeholder", b"pwned");
                    name
                },
            },
            Evil {
                name: "pax long link name with ..",
                says: "the target escapes the layer",
                build: |l, _| {
                    let target = format!("{}outside/file", "../".repeat(40));
                    l.pax(&[("linkpath", target.as_bytes())])
                        .hardlink("h", "placeholder");
                    "h".into()
                },
            },
            Evil {
                name: "GNU long link name with .. on a hard link",
                says: "the target escapes the layer",
                build: |l, _| {
                    let target = format!("{}/../../../outside/file", "z".repeat(120));
                    l.gnu_long(EntryType::GNULongLink, target.as_bytes())
                        .hardlink("h", "x");
                    "h".into()
                },
            },
            Evil {
                name: "layer root as a file",
                says: "names the layer root",
                build: |l, _| {
                    l.file(".", b"x");
                    ".".into()
                },
            },
            Evil {
                name: "write below a file",
                says: "needs `f` to be a directory",
                build: |l, _| {
                    l.file("f", b"x").file("f/g", b"pwned");
                    "f/g".into()
                },
            },
        ]
    }

    #[test]
    fn malicious_layers_are_refused_without_a_write_outside() {
        refuses_every_malicious_layer(true);
    }

    #[test]
    fn malicious_layers_are_refused_by_the_walk_without_openat2() {
        refuses_every_malicious_layer(false);
    }

    fn refuses_every_malicious_layer(use_openat2: bool) {
        let cases = evil_cases();
        assert!(cases.len() >= 20);
        for case in cases {
            let fixture = fixture();
            let mut layer = Layer::new();
            let entry = (case.build)(&mut layer, &fixture.outside_str());
            let bytes = layer.bytes();
            let before = snapshot(&fixture.top, &fixture.dest);
            let result = unpack_with(bytes.as_slice(), &fixture.dest, use_openat2);
            assert_eq!(
                before,
                snapshot(&fixture.top, &fixture.dest),
                "{}: something outside the layer changed",
                case.name
            );
            let message = match result {
                Ok(report) => panic!("{}: unpacked ({report:?}) instead of refusing", case.name),
                Err(e) => e.to_string(),
            };
            assert!(
                message.contains(&format!("`{entry}`")),
                "{}: the error does not name `{entry}`: {message}",
                case.name
            );
            assert!(
                message.contains(case.says),
                "{}: the error does not say {:?}: {message}",
                case.name,
                case.says
            );
        }
    }

    #[test]
    fn whiteout_removes_earlier_entries_and_leaves_a_char_device() {
        let f = fixture();
        let mut l = Layer::new();
        l.dir("a/")
            .file("a/x", b"x")
            .dir("a/d/")
            .file("a/d/y", b"y")
            .file("a/.wh.x", b"")
            .file("a/.wh.d", b"")
            .file("a/b/.wh.gone", b"");
        let report = unpack_ok(&f, l);
        assert!(is_whiteout(&f.meta("a/x")));
        assert!(is_whiteout(&f.meta("a/d")));
        assert!(is_whiteout(&f.meta("a/b/gone")));
        assert_eq!(report.entries, 7);
    }

    #[test]
    fn whiteout_of_a_symlink_removes_the_link_not_its_target() {
        let f = fixture();
        let mut l = Layer::new();
        l.symlink("a", &format!("{}/file", f.outside_str()))
            .file(".wh.a", b"");
        let before = snapshot(&f.top, &f.dest);
        unpack_ok(&f, l);
        assert_eq!(before, snapshot(&f.top, &f.dest));
        assert!(is_whiteout(&f.meta("a")));
    }

    #[test]
    fn opaque_marker_after_new_files_keeps_them() {
        let f = fixture();
        let mut l = Layer::new();
        l.dir("d/")
            .file("d/new", b"new")
            .file("d/.wh..wh..opq", b"");
        unpack_ok(&f, l);
        assert_eq!(std::fs::read(f.path("d/new")).expect("read"), b"new");
        assert_eq!(
            xattr(&f.path("d"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert!(!f.path("d/.wh..wh..opq").exists());
    }

    #[test]
    fn opaque_marker_creates_its_missing_directory() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("x/y/.wh..wh..opq", b"");
        unpack_ok(&f, l);
        let meta = f.meta("x/y");
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert_eq!(
            xattr(&f.path("x/y"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(xattr(&f.path("x"), OPAQUE_XATTR), None);
    }

    #[test]
    fn opaque_marker_at_the_root_marks_the_layer_folder() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("./.wh..wh..opq", b"");
        unpack_ok(&f, l);
        assert_eq!(xattr(&f.dest, OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn file_becomes_a_directory_and_back() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("p", b"1")
            .dir("p/")
            .file("p/c", b"c")
            .file("q", b"1")
            .dir("q/");
        l.file("q/c", b"c").file("q", b"2");
        unpack_ok(&f, l);
        assert!(f.meta("p").is_dir());
        assert_eq!(std::fs::read(f.path("p/c")).expect("read"), b"c");
        assert!(f.meta("q").is_file());
        assert_eq!(std::fs::read(f.path("q")).expect("read"), b"2");
    }

    #[test]
    fn hard_links_share_an_inode() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("f", b"data")
            .hardlink("d/h", "./f")
            .hardlink("d/h2", "/f");
        unpack_ok(&f, l);
        let (a, b, c) = (f.meta("f"), f.meta("d/h"), f.meta("d/h2"));
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.ino(), c.ino());
        assert_eq!(a.nlink(), 3);
    }

    #[test]
    fn later_file_replaces_an_earlier_one_without_touching_its_hard_links() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("f", b"1")
            .hardlink("h", "f")
            .file("f", b"2")
            .hardlink("h", "h");
        unpack_ok(&f, l);
        assert_eq!(std::fs::read(f.path("f")).expect("read"), b"2");
        assert_eq!(std::fs::read(f.path("h")).expect("read"), b"1");
    }

    #[test]
    fn symlink_targets_are_stored_verbatim() {
        let f = fixture();
        let targets = ["/etc/passwd", "../../..", "dangling", "a b/../c", "/"];
        let mut l = Layer::new();
        for (i, target) in targets.iter().enumerate() {
            l.symlink(&format!("s{i}"), target);
        }
        l.symlink("s0", "/replaced");
        unpack_ok(&f, l);
        for (i, target) in targets.iter().enumerate().skip(1) {
            let link = std::fs::read_link(f.path(&format!("s{i}"))).expect("readlink");
            assert_eq!(link, Path::new(target));
        }
        assert_eq!(
            std::fs::read_link(f.path("s0")).expect("readlink"),
            Path::new("/replaced")
        );
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_kept() {
        let f = fixture();
        let mut l = Layer::new();
        l.file_mode("suid", 0o4755, b"x");
        let mut owned = header(EntryType::Regular, b"sgid", b"", 0o2755);
        owned.set_uid(1000);
        owned.set_gid(1000);
        l.push(owned, b"x");
        l.push(header(EntryType::Directory, b"tmp/", b"", 0o1777), b"");
        l.push(header(EntryType::Directory, b"shared/", b"", 0o2775), b"");
        l.file("shared/f", b"x").dir("shared/sub/");
        unpack_ok(&f, l);
        assert_eq!(f.meta("suid").mode() & 0o7777, 0o4755);
        assert_eq!(f.meta("sgid").mode() & 0o7777, 0o2755);
        assert_eq!(f.meta("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(f.meta("shared").mode() & 0o7777, 0o2775);
        // The tar says 0755 for the child directory; the setgid parent must not add its bit.
        assert_eq!(f.meta("shared/sub").mode() & 0o7777, 0o755);
    }

    #[test]
    fn umask_does_not_narrow_modes() {
        let f = fixture();
        let mut l = Layer::new();
        l.file_mode("f", 0o777, b"x");
        l.push(header(EntryType::Directory, b"d/", b"", 0o777), b"");
        unpack_ok(&f, l);
        assert_eq!(f.meta("f").mode() & 0o7777, 0o777);
        assert_eq!(f.meta("d").mode() & 0o7777, 0o777);
    }

    #[test]
    fn xattrs_from_pax_records_are_set() {
        let f = fixture();
        let mut l = Layer::new();
        l.pax(&[("SCHILY.xattr.user.test", b"file")])
            .file("f", b"x");
        l.pax(&[("SCHILY.xattr.user.test", b"dir")]).dir("d/");
        // Symlinks cannot hold user.* attributes: skipped, not fatal.
        l.pax(&[("SCHILY.xattr.user.test", b"link")])
            .symlink("s", "f");
        l.pax(&[("SCHILY.xattr.security.capability", b"not a real capability")]);
        l.file("caps", b"x");
        unpack_ok(&f, l);
        assert_eq!(
            xattr(&f.path("f"), "user.test").as_deref(),
            Some(&b"file"[..])
        );
        assert_eq!(
            xattr(&f.path("d"), "user.test").as_deref(),
            Some(&b"dir"[..])
        );
        assert!(f.meta("s").file_type().is_symlink());
    }

    #[test]
    fn ownership_is_set_when_root() {
        assert!(rustix::process::geteuid().is_root(), "this test needs root");
        let f = fixture();
        let mut l = Layer::new();
        for (kind, name, link) in [
            (EntryType::Regular, &b"f"[..], &b""[..]),
            (EntryType::Directory, b"d/", b""),
            (EntryType::Symlink, b"s", b"/nowhere"),
            (EntryType::Fifo, b"p", b""),
        ] {
            let mut h = header(kind, name, link, 0o640);
            h.set_uid(1234);
            h.set_gid(5678);
            l.push(h, b"");
        }
        unpack_ok(&f, l);
        for name in ["f", "d", "s", "p"] {
            let meta = f.meta(name);
            assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "{name}");
        }
        assert_eq!(f.meta("f").mode() & 0o7777, 0o640);
    }

    #[test]
    fn fifos_and_device_nodes_are_created_when_permitted() {
        let f = fixture();
        let mut l = Layer::new();
        l.device(EntryType::Fifo, "dev/p", 0, 0)
            .device(EntryType::Char, "dev/null", 1, 3)
            .device(EntryType::Block, "dev/loop0", 7, 0);
        let report = unpack_ok(&f, l);
        assert!(f.meta("dev/p").file_type().is_fifo());
        let null = f.meta("dev/null");
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o620);
        let loop0 = f.meta("dev/loop0");
        assert!(loop0.file_type().is_block_device());
        assert_eq!(loop0.rdev(), rustix::fs::makedev(7, 0));
        assert_eq!(report.skipped_special, 0);
    }

    #[test]
    fn directory_mtimes_survive_children_written_after_them() {
        let f = fixture();
        let mut l = Layer::new();
        l.dir("./")
            .dir("d/")
            .dir("d/e/")
            .file("d/e/f", b"x")
            .file("d/g", b"x");
        l.file("d/e/.wh.gone", b"").file("top", b"x");
        unpack_ok(&f, l);
        for dir in ["d", "d/e"] {
            assert_eq!(f.meta(dir).mtime(), MTIME as i64, "{dir}");
        }
        let root = std::fs::metadata(&f.dest).expect("stat");
        assert_eq!(root.mtime(), MTIME as i64);
    }

    #[test]
    fn file_and_symlink_mtimes_are_set_with_pax_fractions() {
        let f = fixture();
        let mut l = Layer::new();
        l.pax(&[("mtime", b"1600000000.5")]).file("f", b"x");
        l.pax(&[("mtime", b"-1.25")]).file("old", b"x");
        l.symlink("s", "f");
        unpack_ok(&f, l);
        let file = f.meta("f");
        assert_eq!(
            (file.mtime(), file.mtime_nsec()),
            (1_600_000_000, 500_000_000)
        );
        let old = f.meta("old");
        assert_eq!((old.mtime(), old.mtime_nsec()), (-2, 750_000_000));
        assert_eq!(f.meta("s").mtime(), MTIME as i64);
    }

    struct Counting<R> {
        inner: R,
        count: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.count += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn stream_is_read_to_its_end_including_zero_blocks() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("a", &[7u8; 1000]).dir("d/");
        let mut bytes = l.bytes();
        // GNU tar pads to 10 KiB records; all of it is hashed into the diff_id.
        bytes.resize(bytes.len() + 9 * 512, 0);
        let mut reader = Counting {
            inner: bytes.as_slice(),
            count: 0,
        };
        let report = unpack(&mut reader, &f.dest).expect("unpack");
        assert_eq!(reader.count, bytes.len() as u64);
        assert_eq!(
            report,
            UnpackReport {
                entries: 2,
                bytes: 1000,
                skipped_special: 0
            }
        );
    }

    #[test]
    fn leading_slash_and_dot_slash_are_relative_to_the_layer_root() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("/abs", b"a")
            .file("./rel", b"r")
            .file(".//x/./y", b"y")
            .file("//z", b"z");
        unpack_ok(&f, l);
        for (name, data) in [("abs", "a"), ("rel", "r"), ("x/y", "y"), ("z", "z")] {
            assert_eq!(std::fs::read_to_string(f.path(name)).expect("read"), data);
        }
    }

    #[test]
    fn root_entry_sets_the_layer_folder_metadata() {
        let f = fixture();
        let mut l = Layer::new();
        l.push(header(EntryType::Directory, b"./", b"", 0o751), b"");
        unpack_ok(&f, l);
        let root = std::fs::metadata(&f.dest).expect("stat");
        assert_eq!(root.mode() & 0o7777, 0o751);
        assert_eq!(root.mtime(), MTIME as i64);
    }

    #[test]
    fn implicit_parents_are_0755_root() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("a/b/c", b"x");
        unpack_ok(&f, l);
        for dir in ["a", "a/b"] {
            let meta = f.meta(dir);
            assert!(meta.is_dir());
            assert_eq!(meta.mode() & 0o7777, 0o755, "{dir}");
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{dir}");
        }
    }

    #[test]
    fn dir_entry_for_an_existing_dir_updates_its_metadata() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("d/f", b"x").dir("d/");
        let mut again = header(EntryType::Directory, b"d/", b"", 0o700);
        again.set_uid(5);
        again.set_gid(6);
        l.push(again, b"");
        unpack_ok(&f, l);
        let meta = f.meta("d");
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert_eq!((meta.uid(), meta.gid()), (5, 6));
        assert!(f.path("d/f").exists());
    }

    #[test]
    fn entries_replacing_symlinks_do_not_follow_them() {
        let f = fixture();
        let outside = f.outside_str();
        let mut l = Layer::new();
        l.symlink("a", &format!("{outside}/file"))
            .file("a", b"mine");
        l.symlink("d", &format!("{outside}/dir"))
            .dir("d/")
            .file("d/inner", b"mine");
        l.symlink("h", &format!("{outside}/file"))
            .file("t", b"t")
            .hardlink("h", "t");
        l.symlink("n", &format!("{outside}/file"));
        l.device(EntryType::Fifo, "n", 0, 0);
        let before = snapshot(&f.top, &f.dest);
        unpack_ok(&f, l);
        assert_eq!(before, snapshot(&f.top, &f.dest));
        assert_eq!(std::fs::read(f.path("a")).expect("read"), b"mine");
        assert_eq!(std::fs::read(f.path("d/inner")).expect("read"), b"mine");
        assert_eq!(f.meta("h").ino(), f.meta("t").ino());
        assert!(f.meta("n").file_type().is_fifo());
    }

    #[test]
    fn long_names_from_pax_and_gnu_headers() {
        let f = fixture();
        let pax_name = format!("{}/{}", "p".repeat(120), "q".repeat(120));
        let gnu_name = format!("{}/{}", "g".repeat(80), "h".repeat(80));
        let gnu_target = format!("/{}", "t".repeat(200));
        let mut l = Layer::new();
        l.pax(&[("path", pax_name.as_bytes())])
            .file("placeholder", b"pax");
        l.gnu_long(EntryType::GNULongName, gnu_name.as_bytes())
            .file("placeholder2", b"gnu");
        l.gnu_long(EntryType::GNULongLink, gnu_target.as_bytes())
            .symlink("s", "x");
        unpack_ok(&f, l);
        assert_eq!(std::fs::read(f.path(&pax_name)).expect("read"), b"pax");
        assert_eq!(std::fs::read(f.path(&gnu_name)).expect("read"), b"gnu");
        assert_eq!(
            std::fs::read_link(f.path("s")).expect("readlink"),
            Path::new(&gnu_target)
        );
        assert!(!f.path("placeholder").exists());
    }

    #[test]
    fn old_style_trailing_slash_regular_entry_is_a_directory() {
        let f = fixture();
        let mut l = Layer::new();
        l.raw(EntryType::Regular, b"v7dir/", b"", b"")
            .file("v7dir/f", b"x");
        unpack_ok(&f, l);
        assert!(f.meta("v7dir").is_dir());
    }

    #[test]
    fn stream_errors_name_the_last_good_entry() {
        let f = fixture();
        let mut l = Layer::new();
        l.file("good", b"x").file("bad", b"y");
        let mut bytes = l.bytes();
        // Corrupt the second header's checksum: it starts after one header and one data block.
        bytes[1024 + 148] ^= 1;
        let message = unpack(bytes.as_slice(), &f.dest)
            .expect_err("corrupt")
            .to_string();
        assert!(message.contains("after entry `good`"), "{message}");
        let message = unpack(&b"\x01"[..], &f.dest)
            .expect_err("short")
            .to_string();
        assert!(message.contains("before its first entry"), "{message}");
    }

    /// The pieces random layers are made of: hostile and ordinary names, every entry type.
    const PARTS: [&str; 9] = [
        "a",
        "b",
        "..",
        ".",
        "",
        ".wh.a",
        ".wh..wh..opq",
        ".wh...",
        "/",
    ];
    const KINDS: [u8; 7] = [b'0', b'5', b'2', b'1', b'6', b'3', b'V'];

    fn random_name(parts: &[usize]) -> String {
        parts
            .iter()
            .map(|i| PARTS[i % PARTS.len()])
            .collect::<Vec<_>>()
            .join("/")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_entry_sequences_never_panic_or_write_outside(
            entries in proptest::collection::vec(
                (0..KINDS.len(), proptest::collection::vec(0..PARTS.len(), 1..4),
                 proptest::collection::vec(0..PARTS.len() + 2, 1..4)),
                1..12,
            )
        ) {
            let f = fixture();
            let outside = f.outside_str();
            let mut l = Layer::new();
            for (kind, name, target) in &entries {
                let kind = EntryType::new(KINDS[*kind]);
                let target = match target.first() {
                    Some(&i) if i == PARTS.len() => outside.clone(),
                    Some(&i) if i == PARTS.len() + 1 => format!("{outside}/file"),
                    _ => random_name(target),
                };
                let name = random_name(name);
                l.raw(kind, name.as_bytes(), target.as_bytes(), b"data");
            }
            let bytes = l.bytes();
            let before = snapshot(&f.top, &f.dest);
            let _ = unpack(bytes.as_slice(), &f.dest);
            prop_assert_eq!(before, snapshot(&f.top, &f.dest));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let f = fixture();
            let _ = unpack(bytes.as_slice(), &f.dest);
        }

        #[test]
        fn mutated_headers_never_panic_or_write_outside(
            mutations in proptest::collection::vec((any::<usize>(), 0..512usize, any::<u8>()), 1..6)
        ) {
            let f = fixture();
            let mut l = Layer::new();
            l.dir("d/").file("d/f", b"content").symlink("s", "d").hardlink("h", "d/f");
            l.pax(&[("path", b"p/long"), ("SCHILY.xattr.user.x", b"v"), ("mtime", b"1.5")]);
            l.file("x", b"x").device(EntryType::Fifo, "p", 0, 0).file(".wh.gone", b"");
            let mut bytes = l.bytes();
            let headers: Vec<usize> = {
                let mut archive = tar::Archive::new(bytes.as_slice());
                archive
                    .entries()
                    .expect("entries")
                    .raw(true)
                    .map(|e| e.expect("entry").raw_header_position() as usize)
                    .collect()
            };
            for (which, offset, value) in mutations {
                let start = headers[which % headers.len()];
                bytes[start + offset] = value;
                // Keep the checksum right so the mutation reaches the unpacker.
                let block: &mut [u8; 512] = (&mut bytes[start..start + 512]).try_into().expect("block");
                let mut h = Header::new_old();
                h.as_mut_bytes().copy_from_slice(block);
                h.set_cksum();
                block.copy_from_slice(h.as_bytes());
            }
            let before = snapshot(&f.top, &f.dest);
            let _ = unpack(bytes.as_slice(), &f.dest);
            prop_assert_eq!(before, snapshot(&f.top, &f.dest));
        }
    }
}
