//! Images on disk: an OCI image layout folder (`oci:`), the same in a tar (`oci-archive:`), and
//! `docker save` output (`docker-archive:`).
//!
//! Archives are read in place: one pass over the tar headers notes where each file's bytes are,
//! and blobs are then read from those offsets. Nothing is extracted, and every blob is checked
//! against its digest like a registry's. A `docker-archive` has no manifest: msb derives an OCI
//! manifest from its `manifest.json` (the layer tars, whose digests are computed), so the image
//! gets a digest like any other.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::digest::{Digest, HashingReader};
use super::error::PullError;
use super::manifest::{
    self, Descriptor, Index, MAX_DOCUMENT, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use super::registry::check_document;
use crate::reference::ImageSource;

/// The annotation an OCI layout's `index.json` names its images by.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An image in a local layout or archive, ready to be read.
pub(super) struct Local {
    image: String,
    storage: Storage,
    /// The manifest (or index) the source names, and its digest.
    top: (Vec<u8>, Digest),
    /// For `docker-archive`: which archive file holds each blob.
    names: HashMap<Digest, String>,
    /// Names the archive gives its image (`RepoTags` of a `docker save`).
    tags: Vec<String>,
}

/// Where the files of the layout are.
enum Storage {
    Dir(PathBuf),
    Tar { path: PathBuf, files: HashMap<String, Span> },
}

/// A file's bytes inside a tar.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    size: u64,
}

impl Local {
    /// Opens a local source (not `dir:`, which has nothing to read). Blocking.
    pub(super) fn open(source: &ImageSource, image: &str) -> Result<Local, PullError> {
        match source {
            ImageSource::OciLayout { dir, tag } => {
                let storage = Storage::Dir(dir.clone());
                Self::oci(image, storage, tag.as_deref())
            }
            ImageSource::OciArchive(path) => {
                let storage = Storage::Tar { path: path.clone(), files: index_tar(image, path)? };
                Self::oci(image, storage, None)
            }
            ImageSource::DockerArchive(path) => {
                let storage = Storage::Tar { path: path.clone(), files: index_tar(image, path)? };
                Self::docker(image, storage)
            }
            ImageSource::Registry(_) | ImageSource::Dir(_) => {
                Err(PullError::Invalid { image: image.to_owned(), reason: "not a local image layout or archive".into() })
            }
        }
    }

    pub(super) fn top(&self) -> (Vec<u8>, Digest) {
        self.top.clone()
    }

    pub(super) fn tags(&self) -> &[String] {
        &self.tags
    }

    /// A manifest or config, read whole and checked against its descriptor.
    pub(super) fn document(&self, desc: &Descriptor, what: &'static str) -> Result<Vec<u8>, PullError> {
        let name = self.blob_name(&desc.digest);
        let bytes = self.storage.read(&self.image, &name, desc.size.min(MAX_DOCUMENT))?;
        check_document(&self.image, what, desc, &bytes)?;
        Ok(bytes)
    }

    /// A layer blob's bytes; the caller checks them as it reads.
    pub(super) fn layer(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, PullError> {
        let name = self.blob_name(&desc.digest);
        self.storage.open(&self.image, &name)
    }

    fn blob_name(&self, digest: &Digest) -> String {
        self.names.get(digest).cloned().unwrap_or_else(|| format!("blobs/sha256/{}", digest.hex()))
    }

    /// An OCI layout: `index.json` names the images, by tag.
    fn oci(image: &str, storage: Storage, tag: Option<&str>) -> Result<Local, PullError> {
        let invalid = |reason: String| PullError::Invalid { image: image.to_owned(), reason };
        if !storage.exists("oci-layout") {
            return Err(invalid("it is not an OCI image layout: it has no `oci-layout` file".into()));
        }
        let index_bytes = storage.read(image, "index.json", MAX_DOCUMENT)?;
        let index: Index = serde_json::from_slice(&index_bytes).map_err(|e| invalid(format!("its index.json is malformed: {e}")))?;
        let tags: Vec<&str> = index.manifests.iter().filter_map(|m| m.annotations.get(REF_NAME).map(String::as_str)).collect();
        let mut local = Local { image: image.to_owned(), storage, top: (Vec::new(), Digest::of(b"")), names: HashMap::new(), tags: Vec::new() };
        let chosen = match tag {
            Some(tag) => index.manifests.iter().find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(tag)).ok_or_else(|| {
                invalid(format!("the layout has no image tagged `{tag}` (its tags: {})", list(&tags)))
            })?,
            None => match index.manifests.as_slice() {
                [only] => only,
                [] => return Err(invalid("the layout's index.json lists no image".into())),
                // A layout whose index.json is itself a multi-platform index.
                many if many.iter().all(|m| m.platform.is_some()) => {
                    let digest = Digest::of(&index_bytes);
                    local.top = (index_bytes, digest);
                    return Ok(local);
                }
                many => {
                    return Err(invalid(format!(
                        "the layout holds {} images; name one with `oci:DIR:TAG` (its tags: {})",
                        many.len(),
                        list(&tags)
                    )));
                }
            },
        };
        let bytes = local.document(chosen, "manifest")?;
        local.top = (bytes, chosen.digest.clone());
        Ok(local)
    }

    /// A `docker save` archive: `manifest.json` lists the config and layer files of its image.
    fn docker(image: &str, storage: Storage) -> Result<Local, PullError> {
        let invalid = |reason: String| PullError::Invalid { image: image.to_owned(), reason };
        let bytes = storage.read(image, "manifest.json", MAX_DOCUMENT)?;
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("its manifest.json is malformed: {e}")))?;
        let entry = match entries.as_slice() {
            [only] => only,
            [] => return Err(invalid("its manifest.json lists no image".into())),
            many => return Err(invalid(format!("it holds {} images; msb loads archives of one image", many.len()))),
        };
        let mut names = HashMap::new();
        let config_bytes = storage.read(image, &entry.config, MAX_DOCUMENT)?;
        let config_digest = Digest::of(&config_bytes);
        if let Some(named) = digest_in_name(&entry.config)
            && named != config_digest {
                return Err(PullError::Verify {
                    image: image.to_owned(),
                    what: "config",
                    digest: named.to_string(),
                    reason: format!("its content has digest {config_digest}"),
                });
            }
        let config = manifest::parse_config(&config_bytes).map_err(invalid)?;
        if config.diff_ids.len() != entry.layers.len() {
            return Err(invalid(format!(
                "its manifest.json lists {} layers but its config has {} diff_ids",
                entry.layers.len(),
                config.diff_ids.len()
            )));
        }
        names.insert(config_digest.clone(), entry.config.clone());
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(&config.diff_ids) {
            let (media_type, size) = {
                let mut reader = BufReader::new(storage.open(image, name)?);
                let head = reader.fill_buf().map_err(|e| storage.error(image, name, e))?;
                (media_type_of(head), storage.size(name).unwrap_or(0))
            };
            // Layer files are named by their digest in new archives. Old ones keep plain tars,
            // whose digest is the diff_id (checked as they are read); others are hashed first.
            let digest = match digest_in_name(name) {
                Some(digest) => digest,
                None if media_type == OCI_LAYER_TAR => diff_id.clone(),
                None => {
                    let mut hashing = HashingReader::new(storage.open(image, name)?);
                    hashing.drain().map_err(|e| storage.error(image, name, e))?;
                    hashing.finish().map_err(|e| storage.error(image, name, e))?.digest
                }
            };
            names.insert(digest.clone(), name.clone());
            layers.push(Descriptor {
                media_type: media_type.to_owned(),
                digest,
                size,
                platform: None,
                urls: Vec::new(),
                annotations: BTreeMap::new(),
            });
        }
        let manifest = manifest::Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            config: Descriptor {
                media_type: OCI_CONFIG.to_owned(),
                digest: config_digest,
                size: config_bytes.len() as u64,
                platform: None,
                urls: Vec::new(),
                annotations: BTreeMap::new(),
            },
            layers,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(e.to_string()))?;
        let digest = Digest::of(&manifest_bytes);
        let tags = entry.repo_tags.iter().filter_map(|t| t.parse::<ImageSource>().ok()).map(|s| s.to_string()).collect();
        Ok(Local { image: image.to_owned(), storage, top: (manifest_bytes, digest), names, tags })
    }
}

/// The source an archive file is, by its content: an OCI layout (`oci-layout` and `index.json`)
/// is an `oci-archive` (newer `docker save` output is one too), else `manifest.json` makes it a
/// `docker-archive`.
pub fn archive_source(path: &Path) -> Result<ImageSource, PullError> {
    let image = path.display().to_string();
    let files = index_tar(&image, path)?;
    if files.contains_key("oci-layout") && files.contains_key("index.json") {
        Ok(ImageSource::OciArchive(path.to_owned()))
    } else if files.contains_key("manifest.json") {
        Ok(ImageSource::DockerArchive(path.to_owned()))
    } else {
        Err(PullError::Invalid {
            image,
            reason: "it is neither an oci-archive (no `oci-layout`) nor a docker-archive (no `manifest.json`)".into(),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// The digest in a file name like `blobs/sha256/<hex>` or `<hex>.json`, if it has one.
fn digest_in_name(name: &str) -> Option<Digest> {
    let file = name.rsplit('/').next().unwrap_or(name);
    let hex = file.strip_suffix(".json").or_else(|| file.strip_suffix(".tar")).unwrap_or(file);
    let digest: Digest = format!("sha256:{hex}").parse().ok()?;
    // `<hex>.tar` in old archives is a layer *id*, not a digest; only blob paths and configs count.
    (name.starts_with("blobs/sha256/") || file.ends_with(".json")).then_some(digest)
}

/// The media type a layer's first bytes show.
fn media_type_of(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        OCI_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER_TAR
    }
}

fn list(tags: &[&str]) -> String {
    if tags.is_empty() {
        return "none".into();
    }
    tags.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
}

impl Storage {
    fn exists(&self, name: &str) -> bool {
        match self {
            Storage::Dir(dir) => dir.join(name).is_file(),
            Storage::Tar { files, .. } => files.contains_key(name),
        }
    }

    fn size(&self, name: &str) -> Option<u64> {
        match self {
            Storage::Dir(dir) => std::fs::metadata(dir.join(name)).ok().map(|m| m.len()),
            Storage::Tar { files, .. } => files.get(name).map(|span| span.size),
        }
    }

    fn error(&self, image: &str, name: &str, source: io::Error) -> PullError {
        let path = match self {
            Storage::Dir(dir) => dir.join(name),
            Storage::Tar { path, .. } => path.join(name),
        };
        PullError::Local { image: image.to_owned(), path, cause: source }
    }

    fn open(&self, image: &str, name: &str) -> Result<Box<dyn Read + Send>, PullError> {
        match self {
            Storage::Dir(dir) => {
                // Names come from the layout's own files: keep them inside its folder.
                if !is_plain_relative(name) {
                    return Err(self.error(image, name, io::Error::new(io::ErrorKind::InvalidInput, "the name leaves the layout")));
                }
                let file = File::open(dir.join(name)).map_err(|e| self.error(image, name, e))?;
                Ok(Box::new(file))
            }
            Storage::Tar { path, files } => {
                let span = files
                    .get(name)
                    .ok_or_else(|| self.error(image, name, io::Error::new(io::ErrorKind::NotFound, "no such file in the archive")))?;
                let mut file = File::open(path).map_err(|e| self.error(image, name, e))?;
                file.seek(SeekFrom::Start(span.offset)).map_err(|e| self.error(image, name, e))?;
                Ok(Box::new(file.take(span.size)))
            }
        }
    }

    /// Reads a whole file of at most `limit` bytes.
    fn read(&self, image: &str, name: &str, limit: u64) -> Result<Vec<u8>, PullError> {
        let mut bytes = Vec::new();
        self.open(image, name)?.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| self.error(image, name, e))?;
        if bytes.len() as u64 > limit {
            let reason = format!("it is larger than the {limit} bytes expected");
            return Err(self.error(image, name, io::Error::new(io::ErrorKind::InvalidData, reason)));
        }
        Ok(bytes)
    }
}

/// Notes where each regular file of a tar is; symlinks and hard links to them are followed.
fn index_tar(image: &str, path: &Path) -> Result<HashMap<String, Span>, PullError> {
    let error = |cause: io::Error| PullError::Local { image: image.to_owned(), path: path.to_owned(), cause };
    let file = File::open(path).map_err(error)?;
    let mut archive = tar::Archive::new(file);
    let mut files = HashMap::new();
    let mut links = Vec::new();
    let mut last: Option<String> = None;
    for entry in archive.entries_with_seek().map_err(error)? {
        // The tar crate's message quotes the bad header's bytes: say where it broke instead.
        let entry = entry.map_err(|_| PullError::Invalid {
            image: image.to_owned(),
            reason: match &last {
                None => format!("`{}` is not a tar archive", path.display()),
                Some(name) => format!("`{}` is damaged after its entry `{name}`", path.display()),
            },
        })?;
        let Some(name) = entry.path().ok().and_then(|p| normalize(&p)) else { continue };
        last = Some(name.clone());
        let kind = entry.header().entry_type();
        if kind.is_file() {
            let size = entry.header().size().map_err(error)?;
            files.insert(name, Span { offset: entry.raw_file_position(), size });
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Ok(Some(target)) = entry.link_name() else { continue };
            // A symlink is relative to its folder; a hard link names a path of the archive.
            let target = if kind.is_symlink() {
                Path::new(&name).parent().unwrap_or(Path::new("")).join(target)
            } else {
                target.into_owned()
            };
            if let Some(target) = normalize(&target) {
                links.push((name, target));
            }
        }
    }
    // Links may point at links: resolve a few rounds, as `docker save` never nests deeply.
    for _ in 0..8 {
        let mut changed = false;
        for (name, target) in &links {
            if !files.contains_key(name)
                && let Some(span) = files.get(target).copied() {
                    files.insert(name.clone(), span);
                    changed = true;
                }
        }
        if !changed {
            break;
        }
    }
    Ok(files)
}

/// A tar path as a plain relative name (`./a/../b` → `b`); `None` if it leaves the archive.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn is_plain_relative(name: &str) -> bool {
    Path::new(name).components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_inside_the_archive() {
        assert_eq!(normalize(Path::new("./blobs/sha256/x")), Some("blobs/sha256/x".into()));
        assert_eq!(normalize(Path::new("a/../b/layer.tar")), Some("b/layer.tar".into()));
        assert_eq!(normalize(Path::new("../x")), None);
        assert_eq!(normalize(Path::new("./")), None);
        assert!(!is_plain_relative("../etc/passwd"));
        assert!(!is_plain_relative("/etc/passwd"));
        assert!(is_plain_relative("blobs/sha256/ab"));
    }

    #[test]
    fn digests_are_read_from_blob_names_only() {
        let hex = "b".repeat(64);
        assert!(digest_in_name(&format!("blobs/sha256/{hex}")).is_some());
        assert!(digest_in_name(&format!("{hex}.json")).is_some());
        assert!(digest_in_name(&format!("{hex}/layer.tar")).is_none());
        assert!(digest_in_name(&format!("{hex}.tar")).is_none());
    }

    #[test]
    fn media_types_come_from_magic_bytes() {
        assert_eq!(media_type_of(&[0x1f, 0x8b, 8]), OCI_LAYER_GZIP);
        assert_eq!(media_type_of(&[0x28, 0xb5, 0x2f, 0xfd]), OCI_LAYER_ZSTD);
        assert_eq!(media_type_of(b"etc/"), OCI_LAYER_TAR);
    }
}
