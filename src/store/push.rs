//! Sending an image to a registry: its blobs, then its manifest under a tag.
//!
//! A registry that already holds a blob is never sent it again: each blob is first looked up in
//! the target repository (HEAD), then, when it comes from another repository of the same registry
//! (the base image's), mounted from there without a byte moving, and only then uploaded. Uploads
//! read the blob from the store (`blobs/sha256/`); a base layer the store has no blob for (its
//! diff_id came with another image) is fetched from the image's source first and checked. Every
//! request is tried again on transient failures, as pulls are.

use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::{Reference, RegistryOperation};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::digest::{Digest, HashingReader};
use super::error::{PullError, StoreError};
use super::local::Local;
use super::lock::Lock;
use super::manifest::Descriptor;
use super::progress::{LayerProgress, Progress, ProgressMode};
use super::registry::{Registry, registry_error, retry};
use super::Store;
use crate::reference::ImageSource;

/// How many blobs are sent at once.
const PARALLEL_BLOBS: usize = 3;
/// The size of the pieces an upload reads from its file.
const CHUNK: usize = 1 << 20;

/// One blob of an image to push. Its bytes are the store's `blobs/sha256/<digest>`, or, for a
/// base layer the store lacks, what `origin` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBlob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// The base image it belongs to: a repository to mount it from, or a source to fetch it from.
    pub origin: Option<ImageSource>,
}

/// What a push did. `uploaded` counts the blobs whose bytes were sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// The digest of the manifest, as the registry now serves it.
    pub digest: Digest,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Blobs the repository already had.
    pub present: usize,
    /// Blobs mounted from another repository of the same registry.
    pub mounted: usize,
}

/// Why an image could not be pushed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot push to `{image}`: name a tag (`NAME:TAG`), not a digest")]
    DigestTarget { image: String },
    #[error("cannot push `{image}` to {registry}: {reason}")]
    Registry { image: String, registry: String, reason: String },
    #[error("cannot push `{image}`: blob {digest} is not in the store and its base image cannot give it: {reason}")]
    MissingBlob { image: String, digest: Digest, reason: String },
    #[error(transparent)]
    Pull(PullError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PullError> for PushError {
    /// Registry failures of a push are said as such; the rest (fetching a base blob, credentials)
    /// keep their own words.
    fn from(err: PullError) -> PushError {
        match err {
            PullError::Registry { image, registry, reason, .. } => PushError::Registry { image, registry, reason },
            PullError::Store(err) => PushError::Store(err),
            other => PushError::Pull(other),
        }
    }
}

/// What happened to one blob.
enum Sent {
    Present,
    Mounted,
    Uploaded(u64),
}

impl Store {
    /// Pushes `blobs` (layers and config, in any order) and then `manifest` to `target`.
    /// Blocking: runs its own async runtime.
    pub fn push_blocking(
        &self,
        target: &Reference,
        blobs: &[PushBlob],
        manifest: &[u8],
        media_type: &str,
        progress: ProgressMode,
    ) -> Result<PushReport, PushError> {
        super::pull::runtime()?.block_on(self.push(target, blobs, manifest, media_type, progress))
    }

    /// See [`Store::push_blocking`].
    pub async fn push(
        &self,
        target: &Reference,
        blobs: &[PushBlob],
        manifest: &[u8],
        media_type: &str,
        progress: ProgressMode,
    ) -> Result<PushReport, PushError> {
        let image = target.to_string();
        if target.digest().is_some() {
            return Err(PushError::DigestTarget { image });
        }
        let progress = Progress::new(progress);
        progress.say(&format!("pushing {image}"));
        let registry = Registry::connect_for(target, &image, true).await?;
        let to_error = |err| registry_error(&registry.image, registry.reference.resolve_registry(), err);
        retry(|| registry.client.auth(&registry.reference, &registry.auth, RegistryOperation::Push), to_error).await?;

        let jobs = blobs.iter().map(|blob| self.send(&registry, blob, &progress));
        let results: Vec<Result<Sent, PushError>> = futures_util::stream::iter(jobs).buffered(PARALLEL_BLOBS).collect().await;
        let mut report = PushReport { digest: Digest::of(manifest), uploaded: 0, uploaded_bytes: 0, present: 0, mounted: 0 };
        for result in results {
            match result? {
                Sent::Present => report.present += 1,
                Sent::Mounted => report.mounted += 1,
                Sent::Uploaded(bytes) => {
                    report.uploaded += 1;
                    report.uploaded_bytes += bytes;
                }
            }
        }
        let content_type = reqwest::header::HeaderValue::from_str(media_type)
            .map_err(|err| PushError::Registry { image: image.clone(), registry: target.resolve_registry().to_owned(), reason: err.to_string() })?;
        let body = Bytes::copy_from_slice(manifest);
        retry(|| registry.client.push_manifest_raw(&registry.reference, body.clone(), content_type.clone()), to_error).await?;
        progress.say(&format!("pushed {image}@{}", report.digest));
        Ok(report)
    }

    /// Makes one blob present in the target repository, by the cheapest way that works.
    async fn send(&self, registry: &Registry, blob: &PushBlob, progress: &Progress) -> Result<Sent, PushError> {
        let to_error = |err| registry_error(&registry.image, registry.reference.resolve_registry(), err);
        let digest = blob.digest.to_string();
        let bar = progress.layer(&blob.digest, Some(blob.size));
        if retry(|| registry.client.blob_exists(&registry.reference, &digest), to_error).await? {
            bar.finish("already present");
            return Ok(Sent::Present);
        }
        if let Some(ImageSource::Registry(from)) = &blob.origin
            && from.resolve_registry() == registry.reference.resolve_registry()
            && from.repository() != registry.reference.repository()
        {
            match registry.client.mount_blob(&registry.reference, from, &digest).await {
                Ok(()) => {
                    bar.finish(&format!("mounted from {}", from.repository()));
                    return Ok(Sent::Mounted);
                }
                // Not mountable (the source lacks it, or the registry refuses): upload it.
                Err(err) => tracing::debug!(%err, digest, "cross-repository mount refused"),
            }
        }
        let path = self.blob_path(&blob.digest);
        if !path.is_file() {
            self.fetch_base_blob(&registry.image, blob).await?;
        }
        let upload = || {
            let (path, bar, digest) = (path.clone(), bar.clone(), &digest);
            bar.reset();
            async move {
                let file = tokio::fs::File::open(&path).await.map_err(OciDistributionError::IoError)?;
                registry.client.push_blob_stream(&registry.reference, file_stream(file, bar), digest, Some(blob.size)).await
            }
        };
        match retry(upload, to_error).await {
            Ok(_) => {
                bar.finish("uploaded");
                Ok(Sent::Uploaded(blob.size))
            }
            Err(err) => {
                bar.finish("failed");
                Err(err.into())
            }
        }
    }

    /// Brings a base layer's blob into the store from the image's source, checked against its
    /// digest and size.
    async fn fetch_base_blob(&self, image: &str, blob: &PushBlob) -> Result<(), PushError> {
        let missing = |reason: String| PushError::MissingBlob { image: image.to_owned(), digest: blob.digest.clone(), reason };
        let desc = Descriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        };
        let Some(origin) = &blob.origin else { return Err(missing("no base image is known for it".into())) };
        let name = origin.to_string();
        let (reader, network): (Box<dyn Read + Send>, _) = match origin {
            ImageSource::Registry(reference) => {
                let source = Registry::connect(reference, &name).await?;
                let stream = source.layer(&desc).await?;
                (stream.reader, Some((stream.failure, stream.task)))
            }
            ImageSource::Dir(_) => return Err(missing("a `dir:` image has no blobs".into())),
            local => {
                let (local, image_name, desc) = (local.clone(), name.clone(), desc.clone());
                let reader = tokio::task::spawn_blocking(move || Local::open(&local, &image_name).and_then(|l| l.layer(&desc)))
                    .await
                    .map_err(|err| missing(err.to_string()))??;
                (reader, None)
            }
        };
        let store = self.clone();
        let job_desc = desc.clone();
        let saved = tokio::task::spawn_blocking(move || store.save_blob(reader, &job_desc))
            .await
            .map_err(|err| missing(err.to_string()))?;
        if let Some((failure, task)) = network {
            let _ = task.await;
            if let Some(err) = failure.lock().ok().and_then(|mut slot| slot.take())
                && saved.is_err()
            {
                return Err(err.into());
            }
        }
        saved.map_err(|reason| match reason {
            SaveError::Store(err) => PushError::Store(err),
            SaveError::Content(reason) => missing(reason),
        })
    }

    /// Copies a blob into `blobs/sha256/` through a digest and size check. Blocking.
    fn save_blob(&self, reader: Box<dyn Read + Send>, desc: &Descriptor) -> Result<(), SaveError> {
        let tmp = self.tmp_entry()?;
        let file = File::create(tmp.path()).map_err(StoreError::io("create", tmp.path()))?;
        let mut hashing = HashingReader::new(reader).with_limit(desc.size);
        let mut out = BufWriter::with_capacity(CHUNK, file);
        io::copy(&mut hashing, &mut out).map_err(|err| SaveError::Content(format!("cannot read it: {err}")))?;
        out.into_inner().map_err(|err| StoreError::io("write", tmp.path())(err.into_error()))?;
        let hashed = hashing.finish().map_err(|err| SaveError::Content(err.to_string()))?;
        if hashed.size != desc.size || hashed.digest != desc.digest {
            return Err(SaveError::Content(format!("the source gave {} bytes with digest {}", hashed.size, hashed.digest)));
        }
        let dest: PathBuf = self.blob_path(&desc.digest);
        let _lock = Lock::exclusive(&self.lock_path("blob", &desc.digest)).map_err(StoreError::io("lock", &dest))?;
        if !dest.exists() {
            tmp.rename_to(&dest)?;
        }
        Ok(())
    }
}

enum SaveError {
    Store(StoreError),
    Content(String),
}

impl From<StoreError> for SaveError {
    fn from(err: StoreError) -> SaveError {
        SaveError::Store(err)
    }
}

/// A file as the byte stream an upload sends, counted on the blob's progress bar. Ends after the
/// first read error, which the upload then reports.
fn file_stream(
    file: tokio::fs::File,
    bar: LayerProgress,
) -> impl futures_util::Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::unfold(Some((file, bar)), |state| async move {
        let (mut file, bar) = state?;
        let mut buffer = vec![0u8; CHUNK];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                bar.inc(n as u64);
                Some((Ok(Bytes::from(buffer)), Some((file, bar))))
            }
            Err(err) => Some((Err(OciDistributionError::IoError(err)), None)),
        }
    })
}
