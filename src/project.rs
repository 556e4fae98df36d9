//! A loaded Sandboxfile together with the store: what its sandboxes need (the plan), getting it
//! (pull and build the missing steps), and looking at the result (export).
//!
//! This is where the data path meets the disk: [`crate::plan`] decides, [`crate::store`] holds,
//! and nothing here decides anything the plan did not.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::manifest::{HostKind, Manifest, Patch, SandboxConfig, SandboxName, resolve_host_path};
use crate::plan::sources::{SourceError, Sources, digest_sources};
use crate::plan::{self, ImageFacts, Record, SandboxPlan, StepStatus};
use crate::reference::ImageSource;
use crate::store::cache;
use crate::store::lock::Lock;
use crate::store::patch::{self, PatchError};
use crate::store::{Digest, ImageRecord, PullError, PullOptions, Store, StoreError};

/// Why planning, building or exporting stopped.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ProjectError {
    #[error("no sandbox named `{name}` in `{}`", sandboxfile.display())]
    #[diagnostic(help("the sandboxes are: {known}"))]
    UnknownSandbox { name: String, sandboxfile: PathBuf, known: String },
    #[error("cannot read a patch source")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("sandbox `{sandbox}`: {error}")]
    Patch { sandbox: String, error: PatchError },
    #[error("cannot export to `{}`", path.display())]
    Export {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot export to `{}`: it is inside `{}`, {what}", dest.display(), folder.display())]
    #[diagnostic(help("export somewhere else: an export into what it reads would copy itself until the disk is full"))]
    ExportInside { dest: PathBuf, folder: PathBuf, what: &'static str },
}

/// A sandbox whose image is present and whose patch layers are all built.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: SandboxName,
    pub plan: SandboxPlan,
    pub image: ImageRecord,
    /// Every layer of its root, topmost first: patch layers, then the image's.
    pub lowers: Vec<PathBuf>,
}

/// What [`Project::build`] made. It holds the store's publishing lock (shared) until dropped, and
/// `cache gc` and `cache prune` wait for that lock: keep it while the layers are used without a
/// record that keeps them, that is until the sandboxes booting on them have started (from then
/// on their `lowers.json` keeps them), or until an export or a push has read them.
pub struct Builds {
    built: Vec<Built>,
    _publishing: Lock,
}

impl std::ops::Deref for Builds {
    type Target = [Built];
    fn deref(&self) -> &[Built] {
        &self.built
    }
}

impl<'a> IntoIterator for &'a Builds {
    type Item = &'a Built;
    type IntoIter = std::slice::Iter<'a, Built>;
    fn into_iter(self) -> Self::IntoIter {
        self.built.iter()
    }
}

/// A Sandboxfile and the store it builds into.
pub struct Project<'a> {
    pub manifest: &'a Manifest,
    pub store: &'a Store,
}

impl Project<'_> {
    /// The sandboxes named (all of them when `names` is empty), in the file's order.
    pub fn select(&self, names: &[String]) -> Result<Vec<(&SandboxName, &SandboxConfig)>, ProjectError> {
        let all = &self.manifest.file.sandbox;
        if let Some(unknown) = names.iter().find(|n| !all.keys().any(|k| k.as_str() == n.as_str())) {
            let known: Vec<String> = all.keys().map(|k| format!("`{k}`")).collect();
            return Err(ProjectError::UnknownSandbox {
                name: unknown.clone(),
                sandboxfile: self.manifest.path.clone(),
                known: known.join(", "),
            });
        }
        Ok(all.iter().filter(|(k, _)| names.is_empty() || names.iter().any(|n| n == k.as_str())).collect())
    }

    /// Plans the sandboxes with what the store already knows: no network, nothing built.
    pub fn plan(&self, names: &[String]) -> Result<Vec<SandboxPlan>, ProjectError> {
        let sources = digest_sources(self.manifest)?;
        self.select(names)?
            .into_iter()
            .map(|(name, config)| {
                let image = self.store.lookup(&self.image_source(config).to_string())?;
                Ok(self.plan_one(name, config, image.as_ref(), &sources))
            })
            .collect()
    }

    /// Pulls what is missing and builds every step the plan says to build.
    ///
    /// `on_plan` sees each sandbox's plan before its steps are built, so the caller can show
    /// what is about to happen.
    pub fn build(&self, names: &[String], pull: &PullOptions, on_plan: &mut dyn FnMut(&SandboxPlan)) -> Result<Builds, ProjectError> {
        let sources = digest_sources(self.manifest)?;
        // The patch layers are published before the plan records that keep them are written,
        // and booted on after (see `Builds`).
        let publishing = self.store.publishing()?;
        // What killed builds left in `tmp/` is cleaned by the pull of each sandbox's image.
        let mut built = Vec::new();
        for (name, config) in self.select(names)? {
            let image = self.store.pull_blocking(&self.image_source(config), pull)?;
            let plan = self.plan_one(name, config, Some(&image), &sources);
            on_plan(&plan);
            let mut lowers: Vec<PathBuf> = self.store.lowers(&image);
            for (step, patch) in plan.steps.iter().zip(&config.patch) {
                let key = layer_key(step.key.as_deref())?;
                let layer = self.store.layer_path(&key);
                if step.status == StepStatus::Build {
                    self.build_step(name, step.index, patch, &sources, &lowers, &key)?;
                }
                lowers.insert(0, layer);
            }
            if let Some(record) = plan.record() {
                let path = self.record_path(name);
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(StoreError::io("create", dir))?;
                }
                self.store.write_json_or_touch(&record, &path)?;
            }
            tracing::debug!(sandbox = %name, "layers ready");
            built.push(Built { name: name.clone(), plan, image, lowers });
        }
        Ok(Builds { built, _publishing: publishing })
    }

    fn plan_one(&self, name: &SandboxName, config: &SandboxConfig, image: Option<&ImageRecord>, sources: &Sources) -> SandboxPlan {
        let facts = image.map(|image| ImageFacts {
            digest: image.digest.to_string(),
            chain_id: image.chain_id.to_string(),
            present: self.store.complete(image),
        });
        let store = self.store;
        let cached = |key: &str| key.parse::<Digest>().is_ok_and(|d| store.layer_path(&d).is_dir());
        let previous = read_record(&self.record_path(name));
        plan::plan_sandbox(name.as_str(), config, facts.as_ref(), sources, &cached, previous.as_ref())
    }

    /// Builds one step into a temporary folder and publishes it as the layer `key`.
    fn build_step(
        &self,
        name: &SandboxName,
        index: usize,
        patch: &Patch,
        sources: &Sources,
        lowers: &[PathBuf],
        key: &Digest,
    ) -> Result<(), ProjectError> {
        let (source, source_digest) = match patch {
            Patch::CopyFile { src, .. } | Patch::CopyDir { src, .. } => {
                let written = src.to_string_lossy();
                let kind = if matches!(patch, Patch::CopyDir { .. }) { HostKind::Dir } else { HostKind::File };
                let path = resolve_host_path(&self.manifest.dir, &written, kind)
                    .map_err(|err| SourceError::Refused { written: written.to_string(), message: err.message })?;
                (Some(path), sources.get(written.as_ref()).map(|s| s.digest.clone()))
            }
            _ => (None, None),
        };
        let upper = self.store.tmp_entry()?;
        let work = self.store.tmp_entry()?;
        for dir in [upper.path(), work.path()] {
            fs::create_dir(dir).map_err(StoreError::io("create", dir))?;
        }
        let lower_refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        let step = patch::Step { index, patch, source: source.as_deref(), source_digest: source_digest.as_deref() };
        patch::build(&lower_refs, upper.path(), work.path(), step)
            .map_err(|error| ProjectError::Patch { sandbox: name.to_string(), error })?;

        let destination = self.store.layer_path(key);
        let lock_path = self.store.lock_path("layer", key);
        let _lock = Lock::exclusive(&lock_path).map_err(StoreError::io("lock", &lock_path))?;
        // Someone else built the same step meanwhile: theirs is as good as ours.
        if !destination.is_dir() {
            let sum = cache::layer_sum(upper.path()).map_err(StoreError::io("read", upper.path()))?;
            // The checksum first: a layer is never present without it, wherever msb is killed.
            // A checksum without its layer is harmless; the next build of the step replaces it.
            cache::record_sum(self.store, key, &sum)?;
            upper.rename_to(&destination)?;
        }
        Ok(())
    }

    /// Where local image paths in the Sandboxfile point, resolved against its folder.
    fn image_source(&self, config: &SandboxConfig) -> ImageSource {
        config.image.source().resolve_against(&self.manifest.dir)
    }

    /// The last build's record of a sandbox of this Sandboxfile.
    fn record_path(&self, name: &SandboxName) -> PathBuf {
        let path = self.manifest.path.canonicalize().unwrap_or_else(|_| self.manifest.path.clone());
        let id = Digest::of(format!("{}\0{name}", path.display()).as_bytes());
        self.store.root().join("plans").join(format!("{}.json", id.hex()))
    }
}

fn layer_key(key: Option<&str>) -> Result<Digest, ProjectError> {
    // A built image always gives every step a key; a missing one is a bug, reported as such.
    key.and_then(|k| k.parse().ok()).ok_or_else(|| {
        ProjectError::Store(StoreError::Damaged { path: PathBuf::from("plan"), reason: "a step has no cache key".into() })
    })
}

fn read_record(path: &Path) -> Option<Record> {
    fs::read(path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// Writes the merged root of `lowers` (topmost first) as a tar stream: the files a user of the
/// sandbox would see, whiteouts applied, each entry as an OCI layer holds it (special files, hard
/// links, owners, modes, mtimes, xattrs).
pub fn export_tar(lowers: &[PathBuf], out: impl Write) -> io::Result<()> {
    // Even a lone layer is read through overlayfs, so that what is seen is what the sandbox
    // sees (its whiteouts and overlay xattrs hidden); without an upper folder overlayfs wants
    // two lower ones, so an empty one goes under it.
    let empty = tempfile::tempdir()?;
    let mut refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    if refs.len() == 1 {
        refs.push(empty.path());
    }
    let root = crate::sys::overlay::mount(&refs, None)?;
    // The detached mount has no path; the descriptor's magic link names its root.
    let base = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&root)));
    crate::publish::layer::write_tar(&base, out)?.flush()
}

/// Writes the merged root of `sandbox` into `dest`: a folder (created; must not exist or be
/// empty) or, when the name ends in `.tar`, a tar file.
pub fn export(store: &Store, sandbox: &Built, dest: &Path) -> Result<(), ProjectError> {
    check_export_destination(store, sandbox, dest)?;
    let fail = |source| ProjectError::Export { path: dest.to_owned(), source };
    let lowers = &sandbox.lowers;
    if dest.extension().is_some_and(|e| e == "tar") {
        let file = fs::File::create(dest).map_err(fail)?;
        return export_tar(lowers, io::BufWriter::new(file)).map_err(fail);
    }
    fs::create_dir_all(dest).map_err(fail)?;
    if fs::read_dir(dest).map_err(fail)?.next().is_some() {
        return Err(fail(io::Error::new(io::ErrorKind::AlreadyExists, "the folder is not empty")));
    }
    // The tar stream goes through the same confined unpacker as image layers.
    let (reader, writer) = io::pipe().map_err(fail)?;
    let lowers = lowers.to_vec();
    let producer = std::thread::spawn(move || export_tar(&lowers, writer));
    let unpacked = crate::store::unpack::unpack(reader, dest).map_err(|e| fail(io::Error::other(e.to_string())));
    let produced = producer.join().unwrap_or_else(|_| Err(io::Error::other("the export thread panicked")));
    unpacked?;
    produced.map_err(fail)
}

/// Refuses a destination inside a folder the export reads (a layer of the root, a `dir:` image's
/// folder) or inside the store: a copy into its own source grows until the disk is full.
fn check_export_destination(store: &Store, sandbox: &Built, dest: &Path) -> Result<(), ProjectError> {
    let fail = |source| ProjectError::Export { path: dest.to_owned(), source };
    let target = resolve_as_created(dest).map_err(fail)?;
    let lowers = sandbox.lowers.iter().map(|lower| {
        let what = if sandbox.image.rootfs_dir.as_ref() == Some(lower) {
            "the folder of the sandbox's `dir:` image"
        } else {
            "a layer of the sandbox's root"
        };
        (lower.as_path(), what)
    });
    for (folder, what) in lowers.chain([(store.root(), "msb's store")]) {
        let folder = fs::canonicalize(folder).unwrap_or_else(|_| folder.to_owned());
        if target.starts_with(&folder) {
            return Err(ProjectError::ExportInside { dest: dest.to_owned(), folder, what });
        }
    }
    Ok(())
}

/// The absolute path `path` will name once its missing folders are created: each part that
/// exists with its symlinks resolved, as the kernel will resolve them, the rest as written.
fn resolve_as_created(path: &Path) -> io::Result<PathBuf> {
    use std::path::Component;
    let mut resolved = PathBuf::from("/");
    for component in std::path::absolute(path)?.components() {
        match component {
            Component::Normal(name) => {
                resolved.push(name);
                if let Ok(real) = fs::canonicalize(&resolved) {
                    resolved = real;
                }
            }
            Component::ParentDir => {
                resolved.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(resolved)
}

/// A sandbox's scripts as the guest sees them at `/.msb/scripts/NAME`: name and body, `#!/bin/sh`
/// added to bodies without a shebang. The runtime mounts them; scripts never enter a layer, so
/// changing one never rebuilds anything.
pub fn scripts(manifest: &Manifest, config: &SandboxConfig) -> io::Result<Vec<(String, Vec<u8>)>> {
    config
        .scripts
        .iter()
        .map(|(name, script)| {
            let body = match script {
                crate::manifest::Script::Inline(body) => body.clone().into_bytes(),
                crate::manifest::Script::File(file) => {
                    let written = file.file.to_string_lossy();
                    let path = resolve_host_path(&manifest.dir, &written, HostKind::File)
                        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.message))?;
                    fs::read(&path).map_err(|err| io::Error::new(err.kind(), format!("script `{name}` (`{}`): {err}", path.display())))?
                }
            };
            let mut content = Vec::with_capacity(body.len() + 10);
            if !body.starts_with(b"#!") {
                content.extend_from_slice(b"#!/bin/sh\n");
            }
            content.extend_from_slice(&body);
            Ok((name.as_str().to_owned(), content))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_waits_until_the_built_layers_are_let_go() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rootfs/etc")).unwrap();
        let text = "[sandbox.w]\nimage = \"dir:rootfs\"\n[[sandbox.w.patch]]\nop = \"text\"\npath = \"/etc/a\"\ncontent = \"a\"\n";
        fs::write(dir.path().join("Sandboxfile"), text).unwrap();
        let manifest = crate::manifest::load(&dir.path().join("Sandboxfile")).unwrap();
        let store = Store::open(Some(&dir.path().join("home"))).unwrap();
        let builds = Project { manifest: &manifest, store: &store }.build(&[], &PullOptions::default(), &mut |_| {}).unwrap();
        let layer = builds[0].lowers[0].clone();
        let (began, collector) = {
            let (began, store) = (std::sync::mpsc::channel(), store.clone());
            let collector = std::thread::spawn(move || {
                let collection = cache::Collection::begin(&store)?;
                let _ = began.0.send(());
                // What a prune would keep once the sandbox had recorded its layers: nothing.
                collection.collect(None, &[])
            });
            (began.1, collector)
        };
        assert!(began.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "a prune waits while a boot may still need the layers");
        assert!(layer.is_dir());
        drop(builds);
        began.recv_timeout(std::time::Duration::from_secs(10)).expect("the prune begins once they are let go");
        let removed = collector.join().unwrap().unwrap();
        assert!(removed.iter().any(|entry| layer.ends_with(entry.digest.hex())), "{removed:?}");
    }

    #[test]
    fn scripts_get_a_shebang_when_they_lack_one() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("serve.sh"), "#!/usr/bin/env python3\nprint(1)\n").unwrap();
        let text = "[sandbox.w]\nimage = \"alpine\"\n[sandbox.w.scripts]\nhi = \"echo hi\"\nserve = { file = \"serve.sh\" }\n";
        fs::write(dir.path().join("Sandboxfile"), text).unwrap();
        let manifest = crate::manifest::load(&dir.path().join("Sandboxfile")).unwrap();
        let config = manifest.file.sandbox.values().next().unwrap();
        let scripts = scripts(&manifest, config).unwrap();
        assert_eq!(
            scripts,
            [("hi".to_owned(), b"#!/bin/sh\necho hi".to_vec()), ("serve".to_owned(), b"#!/usr/bin/env python3\nprint(1)\n".to_vec())]
        );
    }
}
