//! A layer folder as an OCI layer: a tar stream in a fixed order, gzip-compressed the same way
//! every time.
//!
//! The folders are overlayfs "upper" folders (patch layers) or unpacked image layers, so their
//! whiteouts are in overlayfs's format and become OCI's here: a 0:0 character device `NAME`
//! becomes an empty `.wh.NAME`, and a folder marked `trusted.overlay.opaque=y` gets a
//! `.wh..wh..opq` entry right after its own. Other overlayfs xattrs are bookkeeping and dropped;
//! the rest (`security.capability`, `user.*`) are kept as pax `SCHILY.xattr.` records.
//!
//! Reproducible by construction: entries sorted by name bytes, numeric owners only (no user or
//! group names), the files' own mtimes (patch layers have fixed ones), hard links found by inode
//! in that order, and a gzip header with no name and mtime 0, at a fixed level.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use crate::store::Digest;

/// The media type of every layer msb makes.
pub const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
/// The mode of `.wh.` entries (their mode means nothing; a fixed one keeps digests stable).
const WHITEOUT_MODE: u32 = 0o644;
/// gzip level 6, the gzip tool's default: a fixed level, so the same tar gives the same bytes.
const LEVEL: u32 = 6;

/// A layer blob that was written: the digest of its tar (diff_id) and of its compressed bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
}

/// One entry to put in a layer that exists in memory only (the `/.msb` layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryEntry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, content: Vec<u8> },
}

/// Writes the layer of `dir` (its root entry left out) as a gzip blob into `out`.
pub fn pack_dir(dir: &Path, out: impl Write) -> io::Result<LayerBlob> {
    pack(out, |builder| write_tree(builder, dir))
}

/// Writes the tree of `dir` (its root entry left out) as an uncompressed tar into `out`, entry by
/// entry as [`pack_dir`] does: `msb export` of a merged root, a layer with nothing below it.
pub fn write_tar<W: Write>(dir: &Path, out: W) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    write_tree(&mut builder, dir)?;
    builder.into_inner()
}

/// Writes a layer of `entries` (owned by root, with mtime `mtime`) as a gzip blob into `out`.
pub fn pack_entries(entries: &[MemoryEntry], mtime: u64, out: impl Write) -> io::Result<LayerBlob> {
    pack(out, |builder| {
        for entry in entries {
            let (path, kind, mode, content): (&str, EntryType, u32, &[u8]) = match entry {
                MemoryEntry::Dir { path, mode } => (path, EntryType::Directory, *mode, &[]),
                MemoryEntry::File { path, mode, content } => (path, EntryType::Regular, *mode, content),
            };
            let mut header = header(kind, mode, 0, 0, mtime);
            header.set_size(content.len() as u64);
            builder.append_data(&mut header, path, content)?;
        }
        Ok(())
    })
}

/// The tar → diff_id hash → gzip → blob hash → `out` pipeline around `fill`.
fn pack<W: Write>(out: W, fill: impl FnOnce(&mut tar::Builder<HashWriter<flate2::write::GzEncoder<HashWriter<BufWriter<W>>>>>) -> io::Result<()>) -> io::Result<LayerBlob> {
    let blob = HashWriter::new(BufWriter::with_capacity(1 << 20, out));
    let gzip = GzBuilder::new().mtime(0).operating_system(255).write(blob, Compression::new(LEVEL));
    let mut builder = tar::Builder::new(HashWriter::new(gzip));
    fill(&mut builder)?;
    let tar = builder.into_inner()?;
    let (gzip, diff_id, _) = tar.finish();
    let blob = gzip.finish()?;
    let (mut out, digest, size) = blob.finish();
    out.flush()?;
    Ok(LayerBlob { diff_id, digest, size })
}

fn header(kind: EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode & 0o7777);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(mtime);
    header.set_size(0);
    header
}

/// Adds every entry under `root`, depth first (a folder, then everything in it), children sorted
/// by name. An explicit stack: a hostile layer's depth cannot exhaust the thread's stack.
fn write_tree<W: Write>(builder: &mut tar::Builder<W>, root: &Path) -> io::Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack: Vec<(PathBuf, std::vec::IntoIter<std::ffi::OsString>)> = vec![(PathBuf::new(), sorted_children(root)?)];
    while let Some((dir, children)) = stack.last_mut() {
        let Some(child) = children.next() else {
            stack.pop();
            continue;
        };
        let name = dir.join(child);
        if write_entry(builder, root, &name, &mut links)? {
            let children = sorted_children(&root.join(&name))?;
            stack.push((name, children));
        }
    }
    Ok(())
}

fn sorted_children(dir: &Path) -> io::Result<std::vec::IntoIter<std::ffi::OsString>> {
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names.into_iter())
}

/// Adds one entry; true when it is a folder to walk into.
///
/// Headers are made here from the entry's `lstat`, not by the tar crate's `append_path*`: those
/// read the file themselves, and (tar 0.4) fail on FIFOs and device nodes with "paths in archives
/// must be relative", write user and group names, and know nothing of xattrs or whiteouts.
fn write_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    name: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<bool> {
    let path = root.join(name);
    let meta = fs::symlink_metadata(&path)?;
    let kind = meta.file_type();
    let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
    let (mode, uid, gid) = (meta.mode(), u64::from(meta.uid()), u64::from(meta.gid()));
    if kind.is_char_device() && meta.rdev() == 0 {
        let whiteout = whiteout_name(name, None);
        let mut header = header(EntryType::Regular, WHITEOUT_MODE, 0, 0, mtime);
        builder.append_data(&mut header, whiteout, io::empty())?;
        return Ok(false);
    }
    if kind.is_socket() {
        // A tar cannot hold one; the kernel removes them with their process anyway.
        return Ok(false);
    }
    let xattrs = xattrs(&path)?;
    let opaque = kind.is_dir() && xattrs.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y");
    let kept: Vec<(String, &[u8])> = xattrs
        .iter()
        .filter(|(k, _)| !k.starts_with(OVERLAY_XATTR_PREFIX))
        .map(|(k, v)| (format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)), v.as_slice()))
        .collect();
    if !kept.is_empty() {
        builder.append_pax_extensions(kept.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    if kind.is_dir() {
        let mut header = header(EntryType::Directory, mode, uid, gid, mtime);
        builder.append_data(&mut header, name, io::empty())?;
        if opaque {
            let mut marker = self::header(EntryType::Regular, WHITEOUT_MODE, 0, 0, mtime);
            builder.append_data(&mut marker, whiteout_name(name, Some(".wh..opq")), io::empty())?;
        }
        return Ok(true);
    }
    if kind.is_symlink() {
        let target = fs::read_link(&path)?;
        let mut header = header(EntryType::Symlink, mode, uid, gid, mtime);
        builder.append_link(&mut header, name, target)?;
    } else if kind.is_file() {
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                let mut header = header(EntryType::Link, mode, uid, gid, mtime);
                builder.append_link(&mut header, name, first)?;
                return Ok(false);
            }
            links.insert((meta.dev(), meta.ino()), name.to_owned());
        }
        let mut header = header(EntryType::Regular, mode, uid, gid, mtime);
        header.set_size(meta.len());
        let file = File::open(&path)?;
        builder.append_data(&mut header, name, io::Read::take(file, meta.len()))?;
    } else {
        let entry = if kind.is_char_device() {
            EntryType::Char
        } else if kind.is_block_device() {
            EntryType::Block
        } else {
            EntryType::Fifo
        };
        let mut header = header(entry, mode, uid, gid, mtime);
        if entry != EntryType::Fifo {
            let rdev = meta.rdev();
            header.set_device_major(rustix::fs::major(rdev))?;
            header.set_device_minor(rustix::fs::minor(rdev))?;
        }
        builder.append_data(&mut header, name, io::empty())?;
    }
    Ok(false)
}

/// `a/b/NAME` → `a/b/.wh.NAME`; with `inner`, `a/b` → `a/b/.wh.<inner>` (the opaque marker).
fn whiteout_name(name: &Path, inner: Option<&str>) -> PathBuf {
    match inner {
        Some(inner) => name.join(format!(".wh.{inner}")),
        None => {
            let mut file = b".wh.".to_vec();
            file.extend_from_slice(name.file_name().map(OsStrExt::as_bytes).unwrap_or_default());
            name.with_file_name(std::ffi::OsStr::from_bytes(&file))
        }
    }
}

/// An entry's extended attributes, sorted by name.
fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(len) => {
                    value.truncate(len);
                    break;
                }
                Err(Errno::RANGE) => value.resize(value.len() * 4, 0),
                // Removed since it was listed: nothing to keep.
                Err(Errno::NODATA) => {
                    value.clear();
                    break;
                }
                Err(err) => return Err(err.into()),
            }
        }
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Hashes and counts what is written through it.
pub(crate) struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter { inner, hasher: Sha256::new(), size: 0 }
    }

    pub(crate) fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.size)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    /// One entry of a layer: name, type, mode, owner, link target, content, pax record keys.
    type Seen = (String, char, u32, u64, String, Vec<u8>, Vec<String>);

    fn entries(blob: &[u8]) -> Vec<Seen> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
        let mut out = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let pax: Vec<String> = entry
                .pax_extensions()
                .expect("pax")
                .map(|exts| exts.map(|e| e.expect("ext").key().expect("key").to_owned()).collect())
                .unwrap_or_default();
            let header = entry.header().clone();
            let name = entry.path().expect("path").display().to_string();
            let link = entry.link_name().expect("link").map(|l| l.display().to_string()).unwrap_or_default();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("read");
            let kind = match header.entry_type() {
                EntryType::Directory => 'd',
                EntryType::Symlink => 'l',
                EntryType::Link => 'h',
                EntryType::Char => 'c',
                _ => 'f',
            };
            out.push((name, kind, header.mode().expect("mode"), header.uid().expect("uid"), link, content, pax));
        }
        out
    }

    #[test]
    fn overlay_whiteouts_and_opaque_folders_become_oci_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::create_dir_all(root.join("opq/sub")).expect("mkdir");
        fs::write(root.join("etc/greeting"), "hi\n").expect("write");
        fs::set_permissions(root.join("etc/greeting"), fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(root.join("opq/new"), "n").expect("write");
        std::os::unix::fs::symlink("../etc/greeting", root.join("opq/link")).expect("symlink");
        fs::hard_link(root.join("etc/greeting"), root.join("etc/again")).expect("hardlink");
        // As root (CI), a real whiteout and opaque marker; else only what a user may make.
        let privileged = rustix::fs::mknodat(rustix::fs::CWD, root.join("etc/motd"), rustix::fs::FileType::CharacterDevice, rustix::fs::Mode::from(0o644), 0).is_ok()
            && rustix::fs::setxattr(root.join("opq"), "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).is_ok();
        let mut blob = Vec::new();
        let packed = pack_dir(root, &mut blob).expect("pack");
        assert_eq!(packed.digest, Digest::of(&blob));
        assert_eq!(packed.size, blob.len() as u64);
        let got = entries(&blob);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        if privileged {
            assert_eq!(names, ["etc", "etc/again", "etc/greeting", "etc/.wh.motd", "opq", "opq/.wh..wh..opq", "opq/link", "opq/new", "opq/sub"]);
        } else {
            assert_eq!(names, ["etc", "etc/again", "etc/greeting", "opq", "opq/link", "opq/new", "opq/sub"]);
        }
        let find = |n: &str| got.iter().find(|e| e.0 == n).expect(n);
        assert_eq!((find("etc/again").1, find("etc/again").5.as_slice()), ('f', b"hi\n".as_slice()));
        assert_eq!((find("etc/greeting").1, find("etc/greeting").4.as_str()), ('h', "etc/again"), "the second name is a hard link");
        assert_eq!(find("etc/again").2, 0o600);
        assert_eq!((find("opq/link").1, find("opq/link").4.as_str()), ('l', "../etc/greeting"));
        assert!(got.iter().all(|e| e.6.iter().all(|k| !k.contains("overlay"))), "overlay xattrs never leave the store");

        // The same folder packs to the same bytes.
        let mut again = Vec::new();
        assert_eq!(pack_dir(root, &mut again).expect("pack"), packed);
        assert_eq!(again, blob);
    }

    #[test]
    fn memory_layers_are_root_owned_and_reproducible() {
        let entries_in = [
            MemoryEntry::Dir { path: ".msb".into(), mode: 0o755 },
            MemoryEntry::File { path: ".msb/scripts/hi".into(), mode: 0o755, content: b"#!/bin/sh\necho hi\n".to_vec() },
        ];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let first = pack_entries(&entries_in, 1, &mut a).expect("pack");
        assert_eq!(first, pack_entries(&entries_in, 1, &mut b).expect("pack"));
        assert_eq!(a, b);
        let got = entries(&a);
        assert_eq!(got[1].0, ".msb/scripts/hi");
        assert_eq!((got[1].2, got[1].3), (0o755, 0));
        // The gzip header: no name, mtime 0, OS "unknown".
        assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    }
}
