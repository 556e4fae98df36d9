//! Digests of the host files a Sandboxfile copies into its sandboxes.
//!
//! A patch step's cache key holds the digest of its source, not its path: moving the project to
//! another folder keeps every key, and changing one byte (or one mode bit) of a copied file changes
//! the key of that step.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{HostKind, Manifest, Patch, resolve_host_path};

/// What one host source is, for the cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDigest {
    /// `sha256:…` of the content (a file) or of the listing of every entry (a folder).
    pub digest: String,
    /// Permission bits of the file or of the folder's root.
    pub mode: u32,
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("`{written}`: {message}")]
    Refused { written: String, message: String },
    #[error("cannot read `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` is a {kind}: copy_dir copies files, folders and symlinks only", path.display())]
    Special { path: PathBuf, kind: &'static str },
}

/// Host sources by the path written in the Sandboxfile.
pub type Sources = BTreeMap<String, SourceDigest>;

/// Digests every `copy_file` and `copy_dir` source of a manifest.
pub fn digest_sources(manifest: &Manifest) -> Result<Sources, SourceError> {
    let mut sources = Sources::new();
    for sandbox in manifest.file.sandbox.values() {
        for patch in &sandbox.patch {
            let (src, kind) = match patch {
                Patch::CopyFile { src, .. } => (src, HostKind::File),
                Patch::CopyDir { src, .. } => (src, HostKind::Dir),
                _ => continue,
            };
            let written = src.to_string_lossy().into_owned();
            if sources.contains_key(&written) {
                continue;
            }
            let path = resolve_host_path(&manifest.dir, &written, kind)
                .map_err(|err| SourceError::Refused { written: written.clone(), message: err.message })?;
            let digest = match kind {
                HostKind::File => digest_file(&path)?,
                HostKind::Dir => digest_tree(&path)?,
            };
            sources.insert(written, digest);
        }
    }
    Ok(sources)
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io { path: path.to_owned(), source }
}

/// A file's content digest and mode.
pub fn digest_file(path: &Path) -> Result<SourceDigest, SourceError> {
    let mut file = fs::File::open(path).map_err(io_error(path))?;
    let mode = file.metadata().map_err(io_error(path))?.permissions().mode() & 0o7777;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_error(path))?;
    Ok(SourceDigest { digest: format!("sha256:{:x}", hasher.finalize()), mode })
}

/// A folder's digest: one line per entry, sorted by path, with its kind, mode and content digest
/// (or link target). Symlinks are not followed: copy_dir copies them as links.
pub fn digest_tree(root: &Path) -> Result<SourceDigest, SourceError> {
    let mode = fs::symlink_metadata(root).map_err(io_error(root))?.mode() & 0o7777;
    let mut listing = Sha256::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|err| {
            let path = err.path().unwrap_or(root).to_owned();
            SourceError::Io { path, source: err.into() }
        })?;
        let path = entry.path();
        let meta = entry.metadata().map_err(|err| SourceError::Io { path: path.to_owned(), source: err.into() })?;
        let relative = path.strip_prefix(root).unwrap_or(path);
        let file_type = meta.file_type();
        let (kind, content) = if file_type.is_dir() {
            ("d", String::new())
        } else if file_type.is_file() {
            ("f", digest_file(path)?.digest)
        } else if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(io_error(path))?;
            ("l", target.to_string_lossy().into_owned())
        } else {
            return Err(SourceError::Special { path: path.to_owned(), kind: special_kind(&file_type) });
        };
        let line = format!("{kind} {:o} {}\0{content}\n", meta.mode() & 0o7777, relative.to_string_lossy());
        sha2::Digest::update(&mut listing, line.as_bytes());
    }
    Ok(SourceDigest { digest: format!("sha256:{:x}", listing.finalize()), mode })
}

/// What a file that is neither a file, a folder nor a symlink is, for messages.
pub(crate) fn special_kind(file_type: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "device node"
    } else {
        "special file"
    }
}
