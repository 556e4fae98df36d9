//! sha256 digests: the store's keys, and the readers that check them while bytes stream by.
//!
//! Only sha256 is accepted: a digest names a file in the store, so it must have one spelling.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` digest. One that exists is valid.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

/// Why a string is not a digest msb can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a sha256 digest (`sha256:` and 64 lowercase hex digits)")]
pub struct DigestError(pub String);

impl Digest {
    /// The digest of some bytes.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest { hex: hex::encode(Sha256::digest(bytes)) }
    }

    /// A digest from a finished hasher.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest { hex: hex::encode(hasher.finalize()) }
    }

    /// The 64 hex digits, for file names.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `docker images` shows them.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(hex) if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
                Ok(Digest { hex: hex.to_owned() })
            }
            _ => Err(DigestError(s.to_owned())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What streamed through a [`HashingReader`]: its digest and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub digest: Digest,
    pub size: u64,
}

/// Hashes and counts every byte read through it. With a limit, reading past it is an error, so a
/// registry that sends more than the descriptor's size is cut off instead of filling the disk.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    limit: Option<u64>,
    /// A copy of the bytes, written as they pass (the compressed blob kept in the store).
    tee: Option<Box<dyn Write + Send>>,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), size: 0, limit: None, tee: None }
    }

    /// Refuses to read more than `limit` bytes.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Writes every byte read to `tee` as well.
    pub fn with_tee(mut self, tee: Box<dyn Write + Send>) -> Self {
        self.tee = Some(tee);
        self
    }

    /// Reads what is left, so the digest covers the whole stream.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// The digest and size of what was read; flushes the tee.
    pub fn finish(self) -> io::Result<Hashed> {
        if let Some(mut tee) = self.tee {
            tee.flush()?;
        }
        Ok(Hashed { digest: Digest::from_hasher(self.hasher), size: self.size })
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = &buf[..n];
        self.size += n as u64;
        if let Some(limit) = self.limit
            && self.size > limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, TooLong { limit }));
            }
        self.hasher.update(chunk);
        if let Some(tee) = &mut self.tee {
            tee.write_all(chunk)?;
        }
        Ok(n)
    }
}

/// The error a [`HashingReader`] gives when the stream is longer than its limit.
#[derive(Debug, thiserror::Error)]
#[error("the blob is longer than the {limit} bytes its descriptor gives")]
pub struct TooLong {
    pub limit: u64,
}

/// A digest of the tree under `dir` (`dir` included), one line per entry in path order, each
/// written by `line` from the entry's path, its path relative to `dir` and its `lstat`.
pub(crate) fn tree_digest(
    dir: &Path,
    mut line: impl FnMut(&Path, &Path, &fs::Metadata) -> io::Result<Vec<u8>>,
) -> io::Result<Digest> {
    let mut listing = Sha256::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        listing.update(line(entry.path(), relative, &meta)?);
    }
    Ok(Digest::from_hasher(listing))
}

/// The identity of a folder used in place as an image (`dir:`): each entry's path, type, mode,
/// owner, device number, size, mtime and link target. No content is read, so it costs one walk,
/// and an edit still changes it (a write moves the mtime).
pub(crate) fn stat_digest(dir: &Path) -> io::Result<Digest> {
    tree_digest(dir, |path, relative, meta| {
        let mut line = relative.as_os_str().as_bytes().to_vec();
        let stat = format!(
            "\0{:o} {}:{} {} {} {}.{:09}\0",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.rdev(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        line.extend_from_slice(stat.as_bytes());
        if meta.is_symlink() {
            line.extend_from_slice(fs::read_link(path)?.as_os_str().as_bytes());
        }
        line.push(b'\n');
        Ok(line)
    })
}

/// OCI's ChainID over a layer stack: the first diff_id, then `sha256(parent + " " + diff_id)`.
pub fn chain_id<'a>(diff_ids: impl IntoIterator<Item = &'a Digest>) -> Option<Digest> {
    diff_ids.into_iter().fold(None, |parent, diff_id| match parent {
        None => Some(diff_id.clone()),
        Some(parent) => Some(Digest::of(format!("{parent} {diff_id}").as_bytes())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_lowercase_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(format!("sha256:{hex}").parse::<Digest>().map(|d| d.to_string()), Ok(format!("sha256:{hex}")));
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{hex}"),
            hex.clone(),
            format!("sha256:{hex}/.."),
            "sha256:".into(),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hashing_reader_checks_digest_and_size() {
        let data = b"hello world".to_vec();
        let mut reader = HashingReader::new(&data[..]).with_limit(11);
        reader.drain().expect("within the limit");
        let hashed = reader.finish().expect("finish");
        assert_eq!(hashed.digest, Digest::of(b"hello world"));
        assert_eq!(hashed.size, 11);
        assert_eq!(
            hashed.digest.to_string(),
            "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );

        let mut reader = HashingReader::new(&data[..]).with_limit(10);
        let err = reader.drain().expect_err("one byte too many");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("longer than the 10 bytes"));
    }

    #[test]
    fn chain_id_follows_the_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(chain_id([]), None);
        assert_eq!(chain_id([&a]), Some(a.clone()));
        assert_eq!(chain_id([&a, &b]), Some(Digest::of(format!("{a} {b}").as_bytes())));
    }
}
