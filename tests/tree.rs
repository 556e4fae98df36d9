//! Root filesystems compared entry by entry: what msb unpacks, exports or pushes against what
//! other tools (umoci) make of the same image.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// One entry of a tree, as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    size: u64,
    sha256: Option<String>,
    link: Option<PathBuf>,
    /// Devices only.
    rdev: u64,
    /// Not for folders: a folder's mtime depends on the order its children were written.
    mtime: Option<i64>,
    /// `user.` attributes.
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// What a comparison looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compare {
    /// The root folder itself is an entry (its mode and owner).
    pub(crate) root: bool,
    /// File mtimes count (`msb export` to a folder sets them; a pushed image's may be normalized).
    pub(crate) mtimes: bool,
    /// A top-level folder left out (`.msb`, which `msb export` never writes).
    pub(crate) skip: Option<&'static str>,
}

/// Every entry under `root`, by path relative to it.
pub(crate) fn tree(root: &Path, compare: Compare) -> BTreeMap<PathBuf, Entry> {
    let mut entries = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root).min_depth(usize::from(!compare.root)).follow_links(false);
    for item in walk {
        let item = item.expect("walk");
        let relative = item.path().strip_prefix(root).expect("under the root").to_owned();
        if compare.skip.is_some_and(|skip| relative.starts_with(skip)) {
            continue;
        }
        let meta = item.path().symlink_metadata().expect("lstat");
        let t = meta.file_type();
        let kind = match () {
            _ if t.is_dir() => "dir",
            _ if t.is_symlink() => "symlink",
            _ if t.is_file() => "file",
            _ if t.is_fifo() => "fifo",
            _ if t.is_char_device() => "char",
            _ if t.is_block_device() => "block",
            _ => "socket",
        };
        let sha256 = t.is_file().then(|| {
            let mut hasher = Sha256::new();
            std::io::copy(&mut fs::File::open(item.path()).expect("open"), &mut hasher).expect("read");
            hex::encode(hasher.finalize())
        });
        let entry = Entry {
            kind,
            mode: meta.mode() & 0o7777,
            owner: (meta.uid(), meta.gid()),
            size: if t.is_file() { meta.len() } else { 0 },
            sha256,
            link: t.is_symlink().then(|| fs::read_link(item.path()).expect("readlink")),
            rdev: if t.is_char_device() || t.is_block_device() { meta.rdev() } else { 0 },
            mtime: (compare.mtimes && !t.is_dir()).then(|| meta.mtime()),
            xattrs: if t.is_symlink() { BTreeMap::new() } else { user_xattrs(item.path()) },
        };
        entries.insert(relative, entry);
    }
    entries
}

fn user_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut xattrs = BTreeMap::new();
    let mut names = vec![0u8; 4096];
    if let Ok(n) = rustix::fs::listxattr(path, &mut names) {
        for name in names[..n].split(|b| *b == 0).filter(|n| n.starts_with(b"user.")) {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = vec![0u8; 4096];
            if let Ok(len) = rustix::fs::getxattr(path, name.as_str(), &mut value) {
                xattrs.insert(name, value[..len].to_vec());
            }
        }
    }
    xattrs
}

/// Asserts two trees are the same, listing every difference; `ours` and `theirs` are
/// `(label, root)`, and `theirs` must hold more than `at_least` entries (an empty comparison
/// proves nothing).
pub(crate) fn assert_same_tree(what: &str, ours: (&str, &Path), theirs: (&str, &Path), compare: Compare, at_least: usize) {
    let ((our_label, ours), (their_label, theirs)) = ((ours.0, tree(ours.1, compare)), (theirs.0, tree(theirs.1, compare)));
    let mut differences = Vec::new();
    for (path, entry) in &theirs {
        match ours.get(path) {
            None => differences.push(format!("only in {their_label}: {}", path.display())),
            Some(mine) if mine != entry => {
                differences.push(format!("{}:\n  {our_label} {mine:?}\n  {their_label} {entry:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in ours.keys().filter(|p| !theirs.contains_key(*p)) {
        differences.push(format!("only in {our_label}: {}", path.display()));
    }
    assert!(differences.is_empty(), "{what}: {} differences:\n{}", differences.len(), differences.join("\n"));
    assert!(theirs.len() > at_least, "{what}: suspiciously small tree: {theirs:?}");
}
