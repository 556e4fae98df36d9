//! Publishing a sandbox as an OCI image, and describing it to Kubernetes.
//!
//! The image is the sandbox exactly as `msb up` boots it, made of what the store already holds:
//!
//! 1. the base image's layers, by their registry digests (never re-packed, so a registry that has
//!    them is sent nothing: see `store::push`);
//! 2. one layer per patch step, packed from the step's overlay folder ([`layer`]) once and
//!    remembered by the step's cache key (`publish/layers/<key>.json` in the store);
//! 3. one layer of msb's own files: `/.msb/scripts/NAME` and, with the agent, `/.msb/agent` and
//!    the `/.msb/config.json` it reads;
//!
//! and a config saying how it starts ([`launch`], [`image`]). Nothing in it depends on the time
//! or the machine, so building twice gives the same manifest digest.

pub mod agent;
pub mod image;
pub mod k8s;
pub mod launch;
pub mod layer;
pub mod yaml;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, SandboxConfig};
use crate::project::{self, Built};
use crate::reference::ImageSource;
use crate::runtime::ProcessSpec;
use crate::runtime::view::resolve_init;
use crate::store::lock::Lock;
use crate::store::patch::FIXED_MTIME;
use crate::store::{Digest, ProgressMode, PushBlob, PushError, PushReport, Store, StoreError};
use image::{CONFIG_MEDIA_TYPE, Descriptor, History, MANIFEST_MEDIA_TYPE};
use layer::{LayerBlob, MemoryEntry};

/// Which agent the image carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Agent {
    /// `msb-agent` next to the running `msb` (where cargo builds both).
    #[default]
    BesideMsb,
    /// This binary (a static executable for the image's architecture).
    Path(PathBuf),
    /// None: the image runs the sandbox's command, or its init, directly.
    Without,
}

/// Why a sandbox could not be published.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PublishError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Project(#[from] project::ProjectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Boxed: registry errors are large, and every command's error holds this one.
    #[error(transparent)]
    Push(Box<PushError>),
    #[error("the guest agent is not at `{}`", path.display())]
    #[diagnostic(help(
        "build it (`cargo build --release --bin msb-agent`, next to msb), name it with `--agent PATH`, or publish without it with `--no-agent` (the image then runs the sandbox's command, or its init, as PID 1, and serves no `msb exec`)"
    ))]
    NoAgent { path: PathBuf },
    #[error("the guest agent `{}` cannot run in the image: {reason}", path.display())]
    #[diagnostic(help(
        "build it static for the image's architecture: `cargo rustc --release --bin msb-agent -- -C target-feature=+crt-static`, then pass `--agent target/release/msb-agent`"
    ))]
    UnfitAgent { path: PathBuf, reason: String },
    #[error("sandbox `{sandbox}`: {reason}")]
    Init { sandbox: String, reason: String },
    #[error(transparent)]
    Launch(#[from] launch::LaunchError),
    #[error("cannot {op} `{}`: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{reference}` is not a registry reference to push to: {reason}")]
    #[diagnostic(help("write `REGISTRY/REPOSITORY[:TAG]`, e.g. `ghcr.io/org/worker:1.0` or `127.0.0.1:5000/team/worker`"))]
    Target { reference: String, reason: String },
    #[error("`--push` publishes one sandbox, and {count} are selected")]
    #[diagnostic(help("name the sandbox: `msb build NAME --push REF`"))]
    OneSandbox { count: usize },
    #[error("sandbox `{sandbox}` has not been pushed from this Sandboxfile")]
    #[diagnostic(help("push it first with `msb build {sandbox} --push REF`, or name the image with `--image REF`"))]
    NotPushed { sandbox: String },
    #[error("`{class}` cannot name a RuntimeClass: lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit")]
    RuntimeClass { class: String },
}

impl From<PushError> for PublishError {
    fn from(err: PushError) -> PublishError {
        PublishError::Push(Box::new(err))
    }
}

impl PublishError {
    fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PublishError {
        let path = path.into();
        move |source| PublishError::Io { op, path, source }
    }
}

/// An image ready to push: its blobs are in the store.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub sandbox: String,
    /// The manifest's bytes and digest.
    pub manifest: Vec<u8>,
    pub digest: Digest,
    /// Every layer (bottom first), then the config.
    pub blobs: Vec<PushBlob>,
}

/// Where a sandbox was last pushed to, for `msb export k8s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    pub sandbox: String,
    /// As given to `--push`, normalized (`docker.io/...:latest`).
    pub reference: String,
    pub digest: Digest,
}

impl Pushed {
    /// `REF@DIGEST`: the image exactly as pushed, whatever the tag points at later.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.reference, self.digest)
    }
}

/// Makes the image of a built sandbox: its blobs in the store, its manifest in memory.
pub fn assemble(manifest: &Manifest, store: &Store, built: &Built, agent: &Agent) -> Result<Assembled, PublishError> {
    let name = built.name.as_str();
    let config = sandbox_config(manifest, built)?;
    let agent_binary = match agent {
        Agent::Without => None,
        Agent::Path(path) => Some(checked_agent(path, &built.image.platform.architecture)?),
        Agent::BesideMsb => Some(checked_agent(&crate::agent::installed(), &built.image.platform.architecture)?),
    };
    let init = if launch::needs_root(&config.init) {
        let argv = ProcessSpec::merge(&built.image.config, config).argv;
        let root = open_root(&built.lowers).map_err(PublishError::io("mount the root of", name))?;
        resolve_init(&root, &config.init, &argv).map_err(|reason| PublishError::Init { sandbox: name.to_owned(), reason })?
    } else {
        None
    };
    let launch = launch::launch(name, config, &built.image.config, init.as_ref(), agent_binary.is_some())?;

    let mut layers: Vec<(Descriptor, Digest, Option<ImageSource>, History)> = Vec::new();
    let image = &built.image;
    match &image.rootfs_dir {
        Some(dir) => {
            let blob = pack_into_store(store, |out| layer::pack_dir(dir, out))?;
            let history = History { created_by: format!("msb: the root folder {}", config.image.as_str()), comment: None };
            layers.push((gzip_descriptor(&blob), blob.diff_id, None, history));
        }
        None => {
            let origin: Option<ImageSource> = image.source.parse().ok();
            for layer in &image.layers {
                let desc = Descriptor { media_type: image::oci_layer_type(&layer.media_type), digest: layer.blob.clone(), size: layer.size };
                let history = History { created_by: format!("msb: base image {}", config.image.as_str()), comment: None };
                layers.push((desc, layer.diff_id.clone(), origin.clone(), history));
            }
        }
    }
    for step in &built.plan.steps {
        let key: Digest = step.key.as_deref().and_then(|k| k.parse().ok()).ok_or_else(|| StoreError::Damaged {
            path: PathBuf::from("plan"),
            reason: format!("step {} has no cache key", step.index),
        })?;
        let blob = patch_layer_blob(store, &key)?;
        let history = History { created_by: format!("msb patch {}: {}", step.index, step.summary), comment: None };
        layers.push((gzip_descriptor(&blob), blob.diff_id, None, history));
    }
    let own = msb_layer(manifest, config, &launch, agent_binary.as_deref())?;
    let blob = pack_into_store(store, |out| layer::pack_entries(&own, FIXED_MTIME as u64, out))?;
    let history = History { created_by: "msb: /.msb (scripts, agent)".into(), comment: None };
    layers.push((gzip_descriptor(&blob), blob.diff_id, None, history));

    let mut labels = BTreeMap::from([
        ("dev.msb.sandbox".to_owned(), name.to_owned()),
        ("org.opencontainers.image.base.name".to_owned(), config.image.as_str().to_owned()),
    ]);
    if image.rootfs_dir.is_none() {
        labels.insert("org.opencontainers.image.base.digest".into(), image.digest.to_string());
    }
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.1.clone()).collect();
    let history: Vec<History> = layers.iter().map(|l| l.3.clone()).collect();
    let config_bytes = image::config_json(&image.platform, &launch, &labels, &diff_ids, &history);
    let config_blob = put_blob(store, &config_bytes)?;
    let config_desc = Descriptor { media_type: CONFIG_MEDIA_TYPE.into(), digest: config_blob, size: config_bytes.len() as u64 };
    let descriptors: Vec<Descriptor> = layers.iter().map(|l| l.0.clone()).collect();
    let manifest_bytes = image::manifest_json(&config_desc, &descriptors);

    let mut blobs: Vec<PushBlob> = layers
        .into_iter()
        .map(|(desc, _, origin, _)| PushBlob { media_type: desc.media_type, digest: desc.digest, size: desc.size, origin })
        .collect();
    blobs.push(PushBlob { media_type: config_desc.media_type, digest: config_desc.digest, size: config_desc.size, origin: None });
    Ok(Assembled { sandbox: name.to_owned(), digest: Digest::of(&manifest_bytes), manifest: manifest_bytes, blobs })
}

/// Pushes an assembled image to `target` and remembers it for `msb export k8s`.
pub fn push(
    manifest: &Manifest,
    store: &Store,
    assembled: &Assembled,
    target: &str,
    progress: ProgressMode,
) -> Result<PushReport, PublishError> {
    let reference = match target.parse::<ImageSource>() {
        Ok(ImageSource::Registry(reference)) => reference,
        Ok(_) => return Err(PublishError::Target { reference: target.to_owned(), reason: "it names a local path".into() }),
        Err(err) => return Err(PublishError::Target { reference: target.to_owned(), reason: err.to_string() }),
    };
    let report = store.push_blocking(&reference, &assembled.blobs, &assembled.manifest, MANIFEST_MEDIA_TYPE, progress)?;
    let pushed = Pushed { sandbox: assembled.sandbox.clone(), reference: reference.to_string(), digest: report.digest.clone() };
    let path = pushed_path(manifest, store, &assembled.sandbox);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(StoreError::io("create", dir))?;
    }
    store.write_json(&pushed, &path)?;
    Ok(report)
}

/// Where sandbox `name` of this Sandboxfile was last pushed.
pub fn last_pushed(manifest: &Manifest, store: &Store, name: &str) -> Option<Pushed> {
    let bytes = fs::read(pushed_path(manifest, store, name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn pushed_path(manifest: &Manifest, store: &Store, name: &str) -> PathBuf {
    let path = manifest.path.canonicalize().unwrap_or_else(|_| manifest.path.clone());
    let id = Digest::of(format!("{}\0{name}", path.display()).as_bytes());
    store.root().join("publish/pushed").join(format!("{}.json", id.hex()))
}

fn sandbox_config<'a>(manifest: &'a Manifest, built: &Built) -> Result<&'a SandboxConfig, PublishError> {
    manifest.file.sandbox.get(&built.name).ok_or_else(|| {
        PublishError::Project(project::ProjectError::UnknownSandbox {
            name: built.name.to_string(),
            sandboxfile: manifest.path.clone(),
            known: String::new(),
        })
    })
}

fn checked_agent(path: &Path, architecture: &str) -> Result<PathBuf, PublishError> {
    match agent::check(path, architecture) {
        Ok(()) => Ok(path.to_owned()),
        Err(agent::Unfit::Missing) => Err(PublishError::NoAgent { path: path.to_owned() }),
        Err(agent::Unfit::Wrong(reason)) => Err(PublishError::UnfitAgent { path: path.to_owned(), reason }),
    }
}

/// The sandbox's root, read-only, to look an init up in.
fn open_root(lowers: &[PathBuf]) -> io::Result<OwnedFd> {
    let refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    match refs.as_slice() {
        [only] => Ok(rustix::fs::open(*only, rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())?),
        many => crate::sys::overlay::mount(many, None),
    }
}

/// The entries of the `/.msb` layer: scripts always, the agent and its config when baked.
fn msb_layer(
    manifest: &Manifest,
    config: &SandboxConfig,
    launch: &launch::Launch,
    agent: Option<&Path>,
) -> Result<Vec<MemoryEntry>, PublishError> {
    let mut scripts = project::scripts(manifest, config).map_err(PublishError::io("read the scripts of", &manifest.path))?;
    scripts.sort();
    let mut entries = vec![MemoryEntry::Dir { path: ".msb".into(), mode: 0o755 }];
    if let (Some(agent), Some(guest)) = (agent, &launch.guest) {
        let content = fs::read(agent).map_err(PublishError::io("read", agent))?;
        entries.push(MemoryEntry::File { path: ".msb/agent".into(), mode: 0o755, content });
        let mut json = serde_json::to_vec_pretty(guest).unwrap_or_default();
        json.push(b'\n');
        entries.push(MemoryEntry::File { path: ".msb/config.json".into(), mode: 0o644, content: json });
        entries.push(MemoryEntry::Dir { path: ".msb/run".into(), mode: 0o755 });
    }
    entries.push(MemoryEntry::Dir { path: ".msb/scripts".into(), mode: 0o755 });
    for (name, content) in scripts {
        entries.push(MemoryEntry::File { path: format!(".msb/scripts/{name}"), mode: 0o755, content });
    }
    Ok(entries)
}

fn gzip_descriptor(blob: &LayerBlob) -> Descriptor {
    Descriptor { media_type: layer::MEDIA_TYPE.into(), digest: blob.digest.clone(), size: blob.size }
}

/// The blob of a patch layer: packed once, then found again by the step's key.
fn patch_layer_blob(store: &Store, key: &Digest) -> Result<LayerBlob, PublishError> {
    let index = store.root().join("publish/layers").join(format!("{}.json", key.hex()));
    let known: Option<LayerBlob> = fs::read(&index).ok().and_then(|b| serde_json::from_slice(&b).ok());
    // A blob that `cache gc` removed is packed again: the same folder gives the same bytes.
    if let Some(blob) = known.filter(|b| fs::metadata(store.blob_path(&b.digest)).is_ok_and(|m| m.len() == b.size)) {
        return Ok(blob);
    }
    let dir = store.layer_path(key);
    let blob = pack_into_store(store, |out| layer::pack_dir(&dir, out))?;
    fs::create_dir_all(index.parent().unwrap_or(store.root())).map_err(StoreError::io("create", &index))?;
    store.write_json(&blob, &index)?;
    Ok(blob)
}

/// Packs a layer into a temporary file, then publishes it as the store's blob of its digest.
fn pack_into_store(store: &Store, pack: impl FnOnce(&mut File) -> io::Result<LayerBlob>) -> Result<LayerBlob, PublishError> {
    let tmp = store.tmp_entry()?;
    let mut file = File::create(tmp.path()).map_err(StoreError::io("create", tmp.path()))?;
    let blob = pack(&mut file).map_err(PublishError::io("pack a layer into", tmp.path()))?;
    drop(file);
    publish_blob(store, tmp, &blob.digest)?;
    Ok(blob)
}

/// Writes small bytes (the config) as a blob of the store.
fn put_blob(store: &Store, bytes: &[u8]) -> Result<Digest, PublishError> {
    let digest = Digest::of(bytes);
    if store.blob_path(&digest).is_file() {
        return Ok(digest);
    }
    let tmp = store.tmp_entry()?;
    fs::write(tmp.path(), bytes).map_err(StoreError::io("write", tmp.path()))?;
    publish_blob(store, tmp, &digest)?;
    Ok(digest)
}

fn publish_blob(store: &Store, tmp: crate::store::TmpEntry, digest: &Digest) -> Result<(), PublishError> {
    let dest = store.blob_path(digest);
    let _lock = Lock::exclusive(&store.lock_path("blob", digest)).map_err(StoreError::io("lock", &dest))?;
    if !dest.exists() {
        tmp.rename_to(&dest)?;
    }
    Ok(())
}
