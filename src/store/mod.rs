//! The content-addressed store under `$MSB_HOME` (default `$XDG_CACHE_HOME/msb`, else
//! `~/.cache/msb`), in a folder named after its format version so that a new layout never reads
//! an old one:
//!
//! ```text
//! v1/blobs/sha256/<hex>             compressed registry blobs, verified
//!    layers/sha256/<diff_id hex>/   unpacked layers, overlay-ready, read-only once published
//!    images/sha256/<hex>.json       image records (ImageRecord), by manifest digest
//!    refs/<sha256 of name>.json     names (`docker.io/library/alpine:3.20`) → manifest digest
//!    locks/                         one flock file per entry being published
//!    tmp/                           entries being built, each with its own lock file
//! ```
//!
//! Anything present under its final name is complete: entries are built in `tmp/`, synced, then
//! renamed into place while their lock is held. A process killed at any point leaves only `tmp/`
//! litter, which the next pull removes (those entries whose lock nobody holds).

pub mod cache;
pub mod digest;
mod error;
pub(crate) mod lock;
mod local;
mod manifest;
pub mod patch;
pub mod platform;
mod progress;
mod pull;
mod push;
pub mod record;
mod registry;
pub mod unpack;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use digest::Digest;
pub use local::archive_source;
pub use error::{PullError, StoreError};
use lock::Lock;
pub use platform::Platform;
pub use progress::ProgressMode;
pub use pull::{PullOptions, PullPolicy};
pub use push::{PushBlob, PushError, PushReport};
pub use record::{ImageRecord, LayerRecord, RefRecord, RuntimeConfig};

/// The store's format version, part of its path.
const FORMAT: &str = "v1";

/// The folder of the schema's remembered verdicts (see [`Store`]'s `Verdicts`).
pub(crate) const VERDICTS: &str = "verdicts";

/// A handle on the store's folder. Cheap to clone; holds no open file.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating it if needed) the store under `home`, or under the default folder: `$MSB_HOME`,
    /// else `$XDG_CACHE_HOME/msb`, else `$HOME/.cache/msb`.
    pub fn open(home: Option<&Path>) -> Result<Store, StoreError> {
        let home = match home {
            Some(home) => home.to_owned(),
            None => default_home().ok_or(StoreError::NoHome)?,
        };
        let store = Store { root: home.join(FORMAT) };
        for dir in ["blobs/sha256", "layers/sha256", "images/sha256", "refs", "locks", "tmp"] {
            let path = store.root.join(dir);
            fs::DirBuilder::new().recursive(true).mode(0o755).create(&path).map_err(StoreError::io("create", path))?;
        }
        Ok(store)
    }

    /// The versioned folder everything lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest is kept.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Where the unpacked layer with this diff_id (or patch layer with this key) is kept.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    fn record_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("images/sha256").join(format!("{}.json", digest.hex()))
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        self.root.join("refs").join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    /// Where the schema's verdict with this key is kept; `None` for a key that is not a file name.
    fn verdict_path(&self, key: &str) -> Option<PathBuf> {
        (!key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.root.join(VERDICTS).join(key))
    }

    /// The lock file of an entry, `kind` being `layer`, `blob`, `image` or `ref`.
    /// Held (shared) by whatever publishes entries and only then writes the record that keeps
    /// them, or uses them: a pull (its layers, then the image's record), a build (its patch
    /// layers, then the plan's record, then until its sandboxes have started or its export or
    /// push is done). `cache gc` takes it exclusively, so it never removes an entry a moment
    /// before it is recorded or used.
    pub(crate) fn publishing(&self) -> Result<Lock, StoreError> {
        let path = self.store_lock_path();
        Lock::shared(&path).map_err(StoreError::io("lock", path))
    }

    /// The exclusive side of [`Store::publishing`], for `cache gc` and `cache prune`.
    pub(crate) fn collecting(&self) -> Result<Lock, StoreError> {
        let path = self.store_lock_path();
        Lock::exclusive(&path).map_err(StoreError::io("lock", path))
    }

    fn store_lock_path(&self) -> PathBuf {
        self.root.join("locks/store.lock")
    }

    pub(crate) fn lock_path(&self, kind: &str, digest: &Digest) -> PathBuf {
        self.root.join("locks").join(format!("{kind}-{}.lock", digest.hex()))
    }

    /// The image's layer folders, topmost first, as overlayfs's `lowerdir` lists them.
    pub fn lowers(&self, image: &ImageRecord) -> Vec<PathBuf> {
        if let Some(dir) = &image.rootfs_dir {
            return vec![dir.clone()];
        }
        image.layers.iter().rev().map(|layer| self.layer_path(&layer.diff_id)).collect()
    }

    /// The image a name points at, when it and all its layers are present. Reads two small files
    /// and stats each layer: this is the whole cost of a warm `--pull missing`. A `dir:` image's
    /// folder can change under its path at any time, so its identity (the chain id) is taken
    /// again here, by a stat of each of its entries.
    pub fn lookup(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let Some(reference) = self.resolve(name)? else {
            return Ok(None);
        };
        let Some(mut record) = self.record(&reference.digest)? else {
            return Ok(None);
        };
        if !self.complete(&record) {
            return Ok(None);
        }
        if let Some(dir) = &record.rootfs_dir {
            record.chain_id = digest::stat_digest(dir).map_err(StoreError::io("read", dir))?;
        }
        Ok(Some(record))
    }

    /// What a name points at.
    pub fn resolve(&self, name: &str) -> Result<Option<RefRecord>, StoreError> {
        Ok(read_json::<RefRecord>(&self.ref_path(name))?.filter(|reference| reference.name == name))
    }

    /// Whether the store has this name (its image complete or not).
    pub fn has_name(&self, name: &str) -> bool {
        self.ref_path(name).is_file()
    }

    /// The image record with this manifest digest.
    pub fn record(&self, digest: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        read_json(&self.record_path(digest))
    }

    /// Whether every layer of the image is present.
    pub fn complete(&self, record: &ImageRecord) -> bool {
        match &record.rootfs_dir {
            Some(dir) => dir.is_dir(),
            None => record.layers.iter().all(|layer| self.layer_path(&layer.diff_id).is_dir()),
        }
    }

    /// Every name in the store with its image, sorted by name.
    pub fn images(&self) -> Result<Vec<(String, ImageRecord)>, StoreError> {
        let mut images = Vec::new();
        for reference in self.refs()? {
            if let Some(record) = self.record(&reference.digest)? {
                images.push((reference.name, record));
            }
        }
        images.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(images)
    }

    fn refs(&self) -> Result<Vec<RefRecord>, StoreError> {
        let dir = self.root.join("refs");
        let mut refs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io("read", &dir))? {
            let entry = entry.map_err(StoreError::io("read", &dir))?;
            if entry.path().extension() != Some(OsStr::new("json")) {
                continue;
            }
            if let Some(reference) = read_json::<RefRecord>(&entry.path())? {
                refs.push(reference);
            }
        }
        Ok(refs)
    }

    /// Removes a name; an image record no other name points at goes with it. Layers stay until
    /// a garbage collection, since other images may share them. `image` is a name, or a prefix
    /// (at least 4 hex digits) of an image's digest, which removes every name pointing at it.
    pub fn remove(&self, image: &str) -> Result<Vec<String>, StoreError> {
        let refs = self.refs()?;
        let hex = image.strip_prefix("sha256:").unwrap_or(image);
        let by_digest = hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let doomed: Vec<&RefRecord> = match refs.iter().find(|r| r.name == image) {
            Some(exact) => vec![exact],
            None if by_digest => refs.iter().filter(|r| r.digest.hex().starts_with(hex)).collect(),
            None => Vec::new(),
        };
        let digests: std::collections::BTreeSet<&Digest> = doomed.iter().map(|r| &r.digest).collect();
        if digests.len() > 1 {
            let names: Vec<&str> = doomed.iter().map(|r| r.name.as_str()).collect();
            return Err(StoreError::Damaged {
                path: self.root.join("refs"),
                reason: format!("`{image}` is ambiguous: it matches {}", names.join(", ")),
            });
        }
        if doomed.is_empty() {
            return Err(StoreError::NotFound { image: image.to_owned() });
        }
        for reference in &doomed {
            let path = self.ref_path(&reference.name);
            let _lock = Lock::exclusive(&self.lock_path("ref", &Digest::of(reference.name.as_bytes())))
                .map_err(StoreError::io("lock", &path))?;
            remove_file_if_exists(&path)?;
        }
        for digest in digests {
            let _lock = Lock::exclusive(&self.lock_path("image", digest)).map_err(StoreError::io("lock", self.record_path(digest)))?;
            if !self.refs()?.iter().any(|r| &r.digest == digest) {
                remove_file_if_exists(&self.record_path(digest))?;
            }
        }
        Ok(doomed.iter().map(|r| r.name.clone()).collect())
    }

    /// Checks the store's content against its names: every blob's digest and every record's
    /// layers. Returns one line per problem (none when the store is sound).
    pub fn verify(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(StoreError::io("read", &blobs))? {
            let entry = entry.map_err(StoreError::io("read", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut file = File::open(entry.path()).map_err(StoreError::io("open", entry.path()))?;
            let mut hasher = digest::HashingReader::new(&mut file);
            hasher.drain().map_err(StoreError::io("read", entry.path()))?;
            let hashed = hasher.finish().map_err(StoreError::io("read", entry.path()))?;
            if hashed.digest.hex() != name {
                problems.push(format!("blob {name} has digest {}", hashed.digest));
            }
        }
        for reference in self.refs()? {
            match self.record(&reference.digest)? {
                None => problems.push(format!("`{}` points at {}, which has no record", reference.name, reference.digest)),
                Some(record) => {
                    for layer in &record.layers {
                        if !self.layer_path(&layer.diff_id).is_dir() {
                            problems.push(format!("`{}`: layer {} is missing", reference.name, layer.diff_id));
                        }
                    }
                    let diff_ids: Vec<&Digest> = record.layers.iter().map(|l| &l.diff_id).collect();
                    if record.rootfs_dir.is_none() && digest::chain_id(diff_ids) != Some(record.chain_id.clone()) {
                        problems.push(format!("`{}`: the chain id does not match its layers", reference.name));
                    }
                }
            }
        }
        let tmp = self.root.join("layers/sha256");
        for entry in fs::read_dir(&tmp).map_err(StoreError::io("read", &tmp))? {
            let entry = entry.map_err(StoreError::io("read", &tmp))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if format!("sha256:{name}").parse::<Digest>().is_err() {
                problems.push(format!("layers/sha256/{name} is not named by a digest"));
            }
        }
        Ok(problems)
    }

    /// Starts a new entry in `tmp/`: its lock file is taken before the entry exists, so the
    /// cleaner never removes an entry that is being built.
    pub(crate) fn tmp_entry(&self) -> Result<TmpEntry, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!("{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = self.root.join("tmp").join(&name);
        let lock_path = self.root.join("tmp").join(format!("{name}.lock"));
        let lock = Lock::exclusive(&lock_path).map_err(StoreError::io("lock", &lock_path))?;
        Ok(TmpEntry { path, lock: Some(lock) })
    }

    /// Removes what killed pulls left in `tmp/`: the entries whose lock nobody holds.
    pub(crate) fn clean_tmp(&self) -> Result<(), StoreError> {
        let dir = self.root.join("tmp");
        for entry in fs::read_dir(&dir).map_err(StoreError::io("read", &dir))? {
            let entry = entry.map_err(StoreError::io("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let (entry_name, lock_path) = match name.strip_suffix(".lock") {
                Some(stem) => (stem.to_owned(), entry.path()),
                None => (name.clone(), dir.join(format!("{name}.lock"))),
            };
            // Held: someone is building it. Gone: another cleaner took care of it.
            let Ok(Some(lock)) = Lock::try_exclusive(&lock_path) else { continue };
            remove_all(&dir.join(&entry_name))?;
            let _ = lock.remove();
        }
        Ok(())
    }

    /// Writes `value` as the JSON file `dest`, atomically, replacing what was there.
    pub(crate) fn write_json<T: serde::Serialize>(&self, value: &T, dest: &Path) -> Result<(), StoreError> {
        let tmp = self.tmp_entry()?;
        let bytes = serde_json::to_vec_pretty(value).map_err(|err| StoreError::Damaged { path: dest.to_owned(), reason: err.to_string() })?;
        let mut file = File::create(tmp.path()).map_err(StoreError::io("create", tmp.path()))?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(StoreError::io("write", tmp.path()))?;
        tmp.rename_to(dest)
    }

    /// [`Store::write_json`], unless `dest` already holds exactly this value: then only its
    /// modification time (when it was last used, for `cache gc`) moves to now. Every warm `msb up`
    /// records its plan; rewriting it durably cost two fsyncs on the boot's critical path.
    pub(crate) fn write_json_or_touch<T: serde::Serialize>(&self, value: &T, dest: &Path) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|err| StoreError::Damaged { path: dest.to_owned(), reason: err.to_string() })?;
        if fs::read(dest).is_ok_and(|old| old == bytes) {
            let touched = File::options().write(true).open(dest).and_then(|file| file.set_modified(std::time::SystemTime::now()));
            if touched.is_ok() {
                return Ok(());
            }
        }
        self.write_json(value, dest)
    }

    /// Records an image and points `names` at it (chosen from the index `index_digest`, if any).
    pub(crate) fn save(&self, record: &ImageRecord, names: &[String], index_digest: Option<&Digest>) -> Result<(), StoreError> {
        {
            let path = self.record_path(&record.digest);
            let _lock = Lock::exclusive(&self.lock_path("image", &record.digest)).map_err(StoreError::io("lock", &path))?;
            // A record is a function of the manifest; one already there is kept as it is.
            if !path.exists() {
                self.write_json(record, &path)?;
            }
        }
        for name in names {
            let key = Digest::of(name.as_bytes());
            let path = self.ref_path(name);
            let _lock = Lock::exclusive(&self.lock_path("ref", &key)).map_err(StoreError::io("lock", &path))?;
            let reference = RefRecord { name: name.clone(), digest: record.digest.clone(), index_digest: index_digest.cloned() };
            self.write_json(&reference, &path)?;
        }
        Ok(())
    }
}

/// An entry being built in `tmp/`, removed on drop unless it was published.
pub(crate) struct TmpEntry {
    path: PathBuf,
    lock: Option<Lock>,
}

impl TmpEntry {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the entry's content durable, then renames it to `dest`, replacing a file there.
    /// The caller holds `dest`'s lock.
    pub(crate) fn rename_to(mut self, dest: &Path) -> Result<(), StoreError> {
        sync_tree(&self.path).map_err(StoreError::io("sync", &self.path))?;
        fs::rename(&self.path, dest).map_err(StoreError::io("publish", dest))?;
        if let Some(parent) = dest.parent() {
            File::open(parent).and_then(|dir| dir.sync_all()).map_err(StoreError::io("sync", parent))?;
        }
        if let Some(lock) = self.lock.take() {
            let _ = lock.remove();
        }
        Ok(())
    }
}

impl Drop for TmpEntry {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            let _ = remove_all(&self.path);
            let _ = lock.remove();
        }
    }
}

/// Makes a file, or a whole folder tree, durable before it is published: `fsync` for a file,
/// one `syncfs` for a folder (cheaper than an `fsync` per file of a layer).
fn sync_tree(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    if file.metadata()?.is_dir() {
        rustix::fs::syncfs(&file)?;
    } else {
        file.sync_all()?;
    }
    Ok(())
}

fn remove_all(path: &Path) -> Result<(), StoreError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    };
    match result {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { op: "remove", path: path.to_owned(), cause: err }),
        _ => Ok(()),
    }
}

fn remove_file_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { op: "remove", path: path.to_owned(), cause: err }),
        _ => Ok(()),
    }
}

/// Reads a JSON file of the store; a missing file is `None`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StoreError::Io { op: "read", path: path.to_owned(), cause: err }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| StoreError::Damaged { path: path.to_owned(), reason: err.to_string() })
}

/// `$MSB_HOME`, else `$XDG_CACHE_HOME/msb`, else `$HOME/.cache/msb`. Relative XDG values are
/// ignored, as the XDG spec asks.
fn default_home() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v: &std::ffi::OsString| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = var(crate::env::MSB_HOME) {
        return Some(home);
    }
    if let Some(cache) = var(crate::env::XDG_CACHE_HOME).filter(|p| p.is_absolute()) {
        return Some(cache.join("msb"));
    }
    var(crate::env::HOME).map(|home| home.join(".cache/msb"))
}

/// The Sandboxfiles the schema accepted: one empty file per document key under `verdicts/`. A
/// cache of answers that are cheap to recompute: `cache gc` and `prune` empty it.
impl crate::manifest::Verdicts for Store {
    fn accepted(&self, key: &str) -> bool {
        self.verdict_path(key).is_some_and(|path| path.exists())
    }

    fn remember(&self, key: &str) {
        let Some(path) = self.verdict_path(key) else { return };
        // Creating an empty file is atomic: a reader sees it or not, never half of it.
        let _ = fs::create_dir_all(self.root.join(VERDICTS)).and_then(|()| File::create(&path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn killed_builds_are_cleaned_but_live_ones_kept() {
        let home = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(home.path())).expect("open");
        let live = store.tmp_entry().expect("tmp");
        fs::create_dir(live.path()).expect("mkdir");
        // A killed build: its entry is there, its lock file is not held.
        let dead = store.root().join("tmp/1-2-3");
        fs::create_dir_all(dead.join("usr")).expect("mkdir");
        fs::write(store.root().join("tmp/1-2-3.lock"), "").expect("lock file");
        store.clean_tmp().expect("clean");
        assert!(live.path().is_dir());
        assert!(!dead.exists());
        assert!(!store.root().join("tmp/1-2-3.lock").exists());
        drop(live);
        let left: Vec<_> = fs::read_dir(store.root().join("tmp")).expect("read").collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn an_unchanged_record_is_touched_not_rewritten() {
        let home = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(home.path())).expect("open");
        let path = store.root().join("plans/p.json");
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).expect("mtime");
        let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);

        store.write_json_or_touch(&serde_json::json!({"steps": [1]}), &path).expect("write");
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).expect("meta"));
        File::options().write(true).open(&path).and_then(|f| f.set_modified(long_ago)).expect("age it");
        store.write_json_or_touch(&serde_json::json!({"steps": [1]}), &path).expect("touch");
        assert!(modified(&path) > long_ago, "its last use moved to now");
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).expect("meta")), inode, "same file, not replaced");

        store.write_json_or_touch(&serde_json::json!({"steps": [2]}), &path).expect("rewrite");
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(json["steps"][0], 2);
    }

    #[test]
    fn refs_point_at_records() {
        let home = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(home.path())).expect("open");
        let layer = Digest::of(b"layer");
        let record = ImageRecord {
            source: "docker.io/library/x:1".into(),
            digest: Digest::of(b"manifest"),
            platform: Platform::host(),
            config_digest: None,
            config: RuntimeConfig::default(),
            layers: vec![LayerRecord { blob: Digest::of(b"blob"), media_type: "t".into(), size: 5, diff_id: layer.clone() }],
            chain_id: layer.clone(),
            rootfs_dir: None,
        };
        store.save(&record, &["a:1".into(), "b:2".into()], None).expect("save");
        assert_eq!(store.lookup("a:1").expect("lookup"), None, "a layer is missing");
        fs::create_dir(store.layer_path(&layer)).expect("layer");
        assert_eq!(store.lookup("a:1").expect("lookup"), Some(record.clone()));
        assert_eq!(store.images().expect("list").len(), 2);
        assert!(store.verify().expect("verify").is_empty());
        assert_eq!(store.remove("a:1").expect("rmi"), vec!["a:1".to_owned()]);
        assert!(store.record(&record.digest).expect("record").is_some(), "b:2 still points at it");
        assert_eq!(store.remove(&record.digest.hex()[..8]).expect("rmi"), vec!["b:2".to_owned()]);
        assert!(store.record(&record.digest).expect("record").is_none());
        assert!(matches!(store.remove("zzz"), Err(StoreError::NotFound { .. })));
    }
}
