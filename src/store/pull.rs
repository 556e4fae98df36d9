//! Pulling an image into the store: resolve the manifest (through an index, to the host's
//! platform), check the config, and bring each missing layer in.
//!
//! A layer is built under its own lock, so two pulls of images that share it never build it
//! twice: the second waits, then finds it published. Its bytes flow once, from the network (or
//! the archive) through a digest and size check, a copy to `blobs/`, the decompressor and the
//! diff_id hash, into `unpack`. Everything is checked before anything is renamed into place.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use flate2::bufread::MultiGzDecoder;
use futures_util::StreamExt;

use super::digest::{Digest, HashingReader, TooLong, chain_id, stat_digest};
use super::error::{PullError, StoreError};
use super::local::Local;
use super::lock::Lock;
use super::manifest::{self, Descriptor, Document, Manifest};
use super::platform::{self, Platform};
use super::progress::{LayerProgress, Progress, ProgressMode};
use super::record::{ImageRecord, LayerRecord, RuntimeConfig};
use super::registry::{self, Registry};
use super::unpack::unpack;
use super::Store;
use crate::reference::ImageSource;

/// When to reach the image's source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Only when the store lacks the image (or one of its layers).
    #[default]
    Missing,
    /// Always resolve the reference again (a tag may have moved); known layers are still reused.
    Always,
    /// Never: fail when the store lacks the image.
    Never,
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub policy: PullPolicy,
    pub progress: ProgressMode,
    /// More names to point at the image, besides the source's own (`msb load --name`).
    pub names: Vec<String>,
    /// The platform to choose from an index; the host's when `None`.
    pub platform: Option<Platform>,
}

/// How many layers are fetched and unpacked at once.
const PARALLEL_LAYERS: usize = 3;

/// Where a pull reads from.
enum Fetcher {
    Registry(Box<Registry>),
    Local(Arc<Local>),
}

impl Store {
    /// Makes `source` present in the store and returns its record.
    ///
    /// With [`PullPolicy::Missing`] and the image already present, this reads two small files
    /// and touches no network. `source`'s local paths should be absolute: its text is the name
    /// the store keeps it under.
    pub async fn pull(&self, source: &ImageSource, options: &PullOptions) -> Result<ImageRecord, PullError> {
        let name = source.to_string();
        // First, even when the store answers: a pull killed after publishing its last entry,
        // before removing that entry's lock file, leaves the lock alone in `tmp/`, and the next
        // pull of that image finds it present. Killed builds leave their folders there too.
        let store = self.clone();
        blocking(move || store.clean_tmp()).await??;
        if options.policy != PullPolicy::Always {
            if let Some(record) = self.lookup(&name)? {
                if !options.names.is_empty() {
                    let index = self.resolve(&name)?.and_then(|r| r.index_digest);
                    self.save(&record, &options.names, index.as_ref())?;
                }
                return Ok(record);
            }
            if options.policy == PullPolicy::Never {
                return Err(PullError::NotPresent { image: name });
            }
        }
        // Until the image's record is written: its layers are published first.
        let store = self.clone();
        let _publishing = blocking(move || store.publishing()).await??;
        let progress = Progress::new(options.progress);
        let mut names = vec![name.clone()];
        names.extend(options.names.iter().cloned());
        let fetcher = match source {
            ImageSource::Dir(path) => return self.save_dir(&name, path, &names),
            ImageSource::Registry(reference) => Fetcher::Registry(Box::new(Registry::connect(reference, &name).await?)),
            local => {
                let (local, image) = (local.clone(), name.clone());
                let opened = blocking(move || Local::open(&local, &image)).await??;
                names.extend(opened.tags().iter().filter(|_| options.names.is_empty()).cloned());
                Fetcher::Local(Arc::new(opened))
            }
        };
        progress.say(&format!("pulling {name}"));

        let host = options.platform.clone().unwrap_or_else(Platform::host);
        let (manifest, digest, index_digest) = resolve(&fetcher, &name, &host).await?;
        let config_bytes = fetcher.document(&manifest.config, "config").await?;
        let config = manifest::parse_config(&config_bytes).map_err(|reason| PullError::Invalid { image: name.clone(), reason })?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(PullError::Invalid {
                image: name,
                reason: format!("its manifest has {} layers but its config {} diff_ids", manifest.layers.len(), config.diff_ids.len()),
            });
        }
        let fetcher = Arc::new(fetcher);
        let jobs = manifest.layers.iter().zip(&config.diff_ids).map(|(desc, diff_id)| {
            let (store, fetcher, progress, name) = (self.clone(), fetcher.clone(), progress.clone(), name.clone());
            let (desc, diff_id) = (desc.clone(), diff_id.clone());
            async move { store.ensure_layer(&fetcher, &name, &desc, &diff_id, &progress).await }
        });
        // Every layer runs to its end (a failed one leaves nothing; a verified one is kept, as
        // it is content-addressed and a retry reuses it), then the first error is reported.
        let results: Vec<Result<(), PullError>> = futures_util::stream::iter(jobs).buffered(PARALLEL_LAYERS).collect().await;
        results.into_iter().collect::<Result<Vec<()>, PullError>>()?;

        let layers: Vec<LayerRecord> = manifest
            .layers
            .iter()
            .zip(&config.diff_ids)
            .map(|(desc, diff_id)| LayerRecord {
                blob: desc.digest.clone(),
                media_type: desc.media_type.clone(),
                size: desc.size,
                diff_id: diff_id.clone(),
            })
            .collect();
        let Some(chain) = chain_id(&config.diff_ids) else {
            return Err(PullError::Invalid { image: name, reason: "it has no layers".into() });
        };
        let record = ImageRecord {
            source: name,
            digest,
            platform: config.platform,
            config_digest: Some(manifest.config.digest.clone()),
            config: config.runtime,
            layers,
            chain_id: chain,
            rootfs_dir: None,
        };
        let (store, saved) = (self.clone(), record.clone());
        blocking(move || store.save(&saved, &names, index_digest.as_ref())).await??;
        progress.say(&format!("pulled {} ({})", record.source, record.digest));
        Ok(record)
    }

    /// [`Store::pull`] for callers without an async runtime: runs one for the pull's duration
    /// (only when the store cannot answer by itself).
    pub fn pull_blocking(&self, source: &ImageSource, options: &PullOptions) -> Result<ImageRecord, PullError> {
        if options.policy != PullPolicy::Always && options.names.is_empty()
            && let Some(record) = self.lookup(&source.to_string())? {
                // `pull` cleans `tmp/` first; so does this answer from the store (see there).
                self.clean_tmp()?;
                return Ok(record);
            }
        runtime()?.block_on(self.pull(source, options))
    }

    /// A `dir:` image: nothing to copy; the record points at the folder.
    fn save_dir(&self, name: &str, path: &Path, names: &[String]) -> Result<ImageRecord, PullError> {
        let local_error = |cause| PullError::Local { image: name.to_owned(), path: path.to_owned(), cause };
        let dir = fs::canonicalize(path).map_err(local_error)?;
        if !dir.is_dir() {
            return Err(local_error(io::Error::new(io::ErrorKind::NotADirectory, "not a folder")));
        }
        // The record is found by the folder's path; the layers built over it by what it holds
        // (its content is the user's, read-only for msb).
        let digest = Digest::of(format!("dir:{}", dir.display()).as_bytes());
        let chain_id = stat_digest(&dir).map_err(local_error)?;
        let record = ImageRecord {
            source: name.to_owned(),
            digest,
            platform: Platform::host(),
            config_digest: None,
            config: RuntimeConfig::default(),
            layers: Vec::new(),
            chain_id,
            rootfs_dir: Some(dir),
        };
        self.save(&record, names, None)?;
        Ok(record)
    }

    /// Makes the layer `diff_id` present, fetching and unpacking `desc` if needed.
    async fn ensure_layer(
        &self,
        fetcher: &Fetcher,
        image: &str,
        desc: &Descriptor,
        diff_id: &Digest,
        progress: &Progress,
    ) -> Result<(), PullError> {
        let lock_path = self.lock_path("layer", diff_id);
        let lock = blocking(move || Lock::exclusive(&lock_path).map_err(StoreError::io("lock", lock_path))).await??;
        let bar = progress.layer(&desc.digest, Some(desc.size));
        if self.layer_path(diff_id).is_dir() {
            bar.finish("already present");
            return Ok(());
        }
        let mut wait = registry::FIRST_BACKOFF;
        let mut attempt = 1;
        let result = loop {
            bar.reset();
            match self.fetch_layer(fetcher, image, desc, diff_id, &bar).await {
                Err(err) if err.is_transient() && attempt < registry::ATTEMPTS => {
                    tracing::debug!(%err, attempt, "trying the layer again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                other => break other,
            }
        };
        drop(lock);
        bar.finish(if result.is_ok() { "done" } else { "failed" });
        result
    }

    /// One try at a layer: stream, check, unpack, publish.
    async fn fetch_layer(
        &self,
        fetcher: &Fetcher,
        image: &str,
        desc: &Descriptor,
        diff_id: &Digest,
        bar: &LayerProgress,
    ) -> Result<(), PullError> {
        let blob_path = self.blob_path(&desc.digest);
        let (reader, network, keep_blob): (Box<dyn Read + Send>, _, bool) = if blob_path.is_file() {
            let file = File::open(&blob_path).map_err(StoreError::io("open", &blob_path))?;
            (Box::new(file), None, false)
        } else {
            match fetcher {
                Fetcher::Registry(registry) => {
                    let stream = registry.layer(desc).await?;
                    (stream.reader, Some((stream.failure, stream.task)), true)
                }
                Fetcher::Local(local) => {
                    let (local, desc) = (local.clone(), desc.clone());
                    (blocking(move || local.layer(&desc)).await??, None, false)
                }
            }
        };
        let job = LayerJob { image: image.to_owned(), desc: desc.clone(), diff_id: diff_id.clone(), keep_blob, bar: bar.clone() };
        let store = self.clone();
        let built = blocking(move || store.build_layer(reader, &job)).await?;
        if let Some((failure, task)) = network {
            let _ = task.await;
            // The network side's failure explains the reader's: report it (it may be retried).
            if let Some(err) = failure.lock().ok().and_then(|mut slot| slot.take())
                && built.is_err() {
                    return Err(err);
                }
        }
        built
    }

    /// Reads a layer blob through every check into a fresh folder, then publishes the blob (for
    /// registry pulls) and the folder. Blocking.
    fn build_layer(&self, raw: Box<dyn Read + Send>, job: &LayerJob) -> Result<(), PullError> {
        let layer_tmp = self.tmp_entry()?;
        fs::DirBuilder::new().mode(0o755).create(layer_tmp.path()).map_err(StoreError::io("create", layer_tmp.path()))?;
        let blob_tmp = if job.keep_blob { Some(self.tmp_entry()?) } else { None };
        let mut raw = HashingReader::new(job.bar.reader(raw)).with_limit(job.desc.size);
        if let Some(tmp) = &blob_tmp {
            let file = File::create(tmp.path()).map_err(StoreError::io("create", tmp.path()))?;
            raw = raw.with_tee(Box::new(BufWriter::with_capacity(1 << 20, file)));
        }
        let (unpacked, diff) = {
            let mut buffered = BufReader::with_capacity(1 << 20, &mut raw);
            let head = buffered.fill_buf().map(<[u8]>::to_vec).unwrap_or_default();
            let mut tar = HashingReader::new(Decoder::new(&head, buffered)?);
            let unpacked = unpack(&mut tar, layer_tmp.path());
            let drained = match &unpacked {
                Ok(_) => tar.drain(),
                Err(_) => Ok(()),
            };
            (unpacked, drained.and_then(|()| tar.finish()))
        };
        let raw_drained = raw.drain();
        let raw_error = raw_drained.as_ref().err().map(ToString::to_string);
        let hashed = raw.finish();
        let verify = |reason: String| PullError::Verify {
            image: job.image.clone(),
            what: "layer",
            digest: job.desc.digest.to_string(),
            reason,
        };
        // The compressed bytes first: a damaged blob explains whatever failed after it.
        if let Some(reason) = raw_error {
            if reason.contains("longer than") || matches!(&raw_drained, Err(e) if e.get_ref().is_some_and(|i| i.is::<TooLong>())) {
                return Err(verify(reason));
            }
            return Err(verify(format!("cannot read it: {reason}")));
        }
        let hashed = hashed.map_err(|err| verify(format!("cannot keep a copy of it: {err}")))?;
        if hashed.size != job.desc.size {
            return Err(verify(format!("it is {} bytes, the manifest says {}", hashed.size, job.desc.size)));
        }
        if hashed.digest != job.desc.digest {
            return Err(verify(format!("its content has digest {}", hashed.digest)));
        }
        let report = unpacked.map_err(|cause| PullError::Unpack { image: job.image.clone(), layer: job.desc.digest.clone(), cause })?;
        let diff = diff.map_err(|cause| PullError::Decompress { image: job.image.clone(), layer: job.desc.digest.clone(), cause })?;
        if diff.digest != job.diff_id {
            return Err(PullError::DiffId {
                image: job.image.clone(),
                layer: job.desc.digest.clone(),
                expected: job.diff_id.clone(),
                actual: diff.digest,
            });
        }
        if report.skipped_special > 0 {
            tracing::warn!(
                layer = %job.desc.digest,
                skipped = report.skipped_special,
                "device nodes and FIFOs were skipped: this process may not create them"
            );
        }
        if let Some(tmp) = blob_tmp {
            let dest = self.blob_path(&job.desc.digest);
            let _lock = Lock::exclusive(&self.lock_path("blob", &job.desc.digest)).map_err(StoreError::io("lock", &dest))?;
            if !dest.exists() {
                tmp.rename_to(&dest)?;
            }
        }
        // The caller holds the layer's lock and saw no folder there.
        layer_tmp.rename_to(&self.layer_path(&job.diff_id))?;
        Ok(())
    }
}

/// What one layer build needs to know, moved to its thread.
struct LayerJob {
    image: String,
    desc: Descriptor,
    diff_id: Digest,
    keep_blob: bool,
    bar: LayerProgress,
}

/// A layer's decompressor, chosen by the blob's first bytes rather than its media type (which
/// `docker-archive` files and some registries get wrong).
enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decoder<R> {
    fn new(head: &[u8], inner: R) -> Result<Self, PullError> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Decoder::Gzip(MultiGzDecoder::new(inner)))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            zstd::stream::read::Decoder::with_buffer(inner)
                .map(Decoder::Zstd)
                .map_err(|err| PullError::Runtime { reason: format!("cannot start a zstd decoder: {err}") })
        } else {
            Ok(Decoder::Plain(inner))
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

impl Fetcher {
    async fn top(&self) -> Result<(Vec<u8>, Digest), PullError> {
        match self {
            Fetcher::Registry(registry) => registry.top().await,
            Fetcher::Local(local) => Ok(local.top()),
        }
    }

    /// A manifest or config blob, checked against its descriptor.
    async fn document(&self, desc: &Descriptor, what: &'static str) -> Result<Vec<u8>, PullError> {
        match (self, what) {
            (Fetcher::Registry(registry), "manifest") => registry.manifest(desc).await,
            (Fetcher::Registry(registry), _) => registry.blob(desc).await,
            (Fetcher::Local(local), _) => {
                let (local, desc) = (local.clone(), desc.clone());
                blocking(move || local.document(&desc, what)).await?
            }
        }
    }
}

/// The image manifest for `host`: the source's own, or the one its index lists for the host.
async fn resolve(fetcher: &Fetcher, image: &str, host: &Platform) -> Result<(Manifest, Digest, Option<Digest>), PullError> {
    let invalid = |reason: String| PullError::Invalid { image: image.to_owned(), reason };
    let (bytes, digest) = fetcher.top().await?;
    let index = match manifest::parse_document(&bytes).map_err(invalid)? {
        Document::Manifest(manifest) => return Ok((*manifest, digest, None)),
        Document::Index(index) => index,
    };
    let platforms: Vec<Platform> = index
        .manifests
        .iter()
        .map(|m| m.platform.clone().unwrap_or(Platform { os: String::new(), architecture: String::new(), variant: None }))
        .collect();
    let chosen = match platform::select(host, &platforms) {
        Some(i) => &index.manifests[i],
        // An index of one entry without a platform is a plain pointer to its image.
        None => match index.manifests.as_slice() {
            [only] if only.platform.is_none() => only,
            _ => {
                let available: Vec<String> = platforms.iter().filter(|p| !p.os.is_empty()).map(ToString::to_string).collect();
                return Err(PullError::NoPlatform {
                    image: image.to_owned(),
                    host: host.to_string(),
                    available: if available.is_empty() { "no platform".into() } else { available.join(", ") },
                });
            }
        },
    };
    let bytes = fetcher.document(chosen, "manifest").await?;
    match manifest::parse_document(&bytes).map_err(invalid)? {
        Document::Manifest(manifest) => Ok((*manifest, chosen.digest.clone(), Some(digest))),
        Document::Index(_) => Err(invalid(format!("its index entry {} is another index, which msb does not follow", chosen.digest))),
    }
}

/// An async runtime for the length of one blocking call (a pull or a push) made from sync code.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime, PullError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| PullError::Runtime { reason: err.to_string() })
}

/// Runs blocking work (file system, locks, unpacking) off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, PullError> {
    tokio::task::spawn_blocking(work).await.map_err(|err| PullError::Runtime { reason: format!("a worker thread failed: {err}") })
}
