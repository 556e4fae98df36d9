//! What the store holds, whether it is intact, what still uses it, and removing the rest.
//!
//! Patch layers get a checksum when they are published (`sums/<key hex>`): a digest of every
//! entry's path, type, mode, owner, device number, opaque marker and content, which `verify`
//! computes again. Image layers are checked through their registry blobs, which the store keeps.
//!
//! The roots are the images that have a name (`msb pull`, `msb load`; `msb rmi` drops one) and
//! the plan records that `msb build` and `msb up` leave for each sandbox of each Sandboxfile:
//! a record is a use, and its file's mtime is when it was last used. `gc` keeps what a recent
//! record or a name reaches; `prune` keeps only what a name reaches.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Digest, ImageRecord, Store, StoreError};
use crate::plan::Record;

/// One entry of the store, as `msb cache ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub kind: Kind,
    pub digest: Digest,
    pub bytes: u64,
    /// When a plan record last used it; `None` for what only a name keeps.
    pub last_used: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A compressed blob as the registry served it.
    Blob,
    /// An unpacked image layer, by diff_id (also one that no image record names yet: a pull
    /// publishes its layers before the image's record, and may be stopped in between).
    ImageLayer,
    /// A built patch step, by chain key.
    PatchLayer,
}

/// What the plan records reach, and when each was last used.
struct Uses {
    records: Vec<(Record, SystemTime)>,
}

impl Uses {
    fn read(store: &Store) -> Result<Uses, StoreError> {
        let dir = store.root().join("plans");
        let mut records = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(Uses { records }) };
        for entry in entries {
            let path = entry.map_err(StoreError::io("read", &dir))?.path();
            let modified = fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            // A record that does not parse is a use nobody can claim: it keeps nothing.
            if let Some(record) = fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok()) {
                records.push((record, modified));
            }
        }
        Ok(Uses { records })
    }

    /// The latest use of a patch layer or of an image (by chain id).
    fn last_use(&self, key: &str) -> Option<SystemTime> {
        self.records
            .iter()
            .filter(|(record, _)| record.chain_id == key || record.steps.iter().any(|s| s.key == key))
            .map(|(_, when)| *when)
            .max()
    }
}

/// Every blob and layer in the store.
pub fn list(store: &Store) -> Result<Vec<Entry>, StoreError> {
    let uses = Uses::read(store)?;
    let images = image_records(store)?;
    let image_layers: BTreeSet<&Digest> = images.iter().flat_map(|i| i.layers.iter().map(|l| &l.diff_id)).collect();
    let planned: BTreeSet<&str> = uses.records.iter().flat_map(|(r, _)| r.steps.iter().map(|s| s.key.as_str())).collect();
    let mut entries = Vec::new();
    for (digest, path) in digests_in(&store.root().join("blobs/sha256"))? {
        entries.push(Entry { kind: Kind::Blob, bytes: size_of(&path), last_used: None, digest });
    }
    for (digest, path) in digests_in(&store.root().join("layers/sha256"))? {
        // A patch layer always has its checksum (written before the layer) or a plan naming it;
        // a layer with neither comes from a pull that stopped before saving the image's record.
        let kind = if image_layers.contains(&digest) {
            Kind::ImageLayer
        } else if sum_path(store, &digest).exists() || planned.contains(digest.to_string().as_str()) {
            Kind::PatchLayer
        } else {
            Kind::ImageLayer
        };
        let last_used = match kind {
            Kind::PatchLayer => uses.last_use(&digest.to_string()),
            _ => images
                .iter()
                .filter(|i| i.layers.iter().any(|l| l.diff_id == digest))
                .filter_map(|i| uses.last_use(&i.chain_id.to_string()))
                .max(),
        };
        entries.push(Entry { kind, bytes: size_of(&path), last_used, digest });
    }
    entries.sort_by(|a, b| (a.kind, &a.digest).cmp(&(b.kind, &b.digest)));
    Ok(entries)
}

/// The store held still for `cache gc` and `cache prune`: it waits for the pulls and builds in
/// flight and for what holds a build's layers before a record keeps them (see
/// `project::Builds`), and keeps new ones off until dropped. What else keeps entries (the
/// layers sandboxes boot on) is to be read once it has begun: a boot records its layers before
/// its build lets go of them.
pub struct Collection<'a> {
    store: &'a Store,
    _collecting: super::lock::Lock,
}

impl<'a> Collection<'a> {
    pub fn begin(store: &'a Store) -> Result<Collection<'a>, StoreError> {
        Ok(Collection { store, _collecting: store.collecting()? })
    }

    /// Removes what neither a name, a plan record used within `keep_for` (`None`: only names
    /// count, which is `prune`), nor `in_use` (the layers that existing sandboxes boot on)
    /// reaches. Returns what was removed.
    pub fn collect(&self, keep_for: Option<Duration>, in_use: &[PathBuf]) -> Result<Vec<Entry>, StoreError> {
        let store = self.store;
        let now = SystemTime::now();
        let uses = Uses::read(store)?;
        let recent: Vec<&Record> = uses
            .records
            .iter()
            .filter(|(_, when)| keep_for.is_some_and(|age| now.duration_since(*when).map_or(true, |d| d <= age)))
            .map(|(record, _)| record)
            .collect();
        let mut keep: BTreeSet<String> = recent.iter().flat_map(|r| r.steps.iter().map(|s| s.key.clone())).collect();
        let layers = store.root().join("layers/sha256");
        for path in in_use {
            if let Some(hex) = path.strip_prefix(&layers).ok().and_then(|rest| rest.to_str()) {
                keep.insert(format!("sha256:{hex}"));
            }
        }
        let used_chains: BTreeSet<&str> = recent.iter().map(|r| r.chain_id.as_str()).collect();
        let named: BTreeSet<Digest> = store.images()?.into_iter().map(|(_, image)| image.digest).collect();
        for image in image_records(store)? {
            if named.contains(&image.digest) || used_chains.contains(image.chain_id.to_string().as_str()) {
                for layer in &image.layers {
                    keep.insert(layer.diff_id.to_string());
                    keep.insert(layer.blob.to_string());
                }
            }
        }
        // Verdicts are recomputed at the next load; emptying them keeps the folder from growing.
        let _ = fs::remove_dir_all(store.root().join(super::VERDICTS));
        let mut removed = Vec::new();
        for entry in list(store)? {
            if keep.contains(&entry.digest.to_string()) {
                continue;
            }
            let path = match entry.kind {
                Kind::Blob => store.blob_path(&entry.digest),
                _ => store.layer_path(&entry.digest),
            };
            remove(store, &entry, &path)?;
            if entry.kind == Kind::PatchLayer {
                let _ = fs::remove_file(sum_path(store, &entry.digest));
            }
            removed.push(entry);
        }
        Ok(removed)
    }
}

/// Takes an entry out of its final name first (a rename is atomic), then deletes it, so no
/// reader ever sees half an entry.
fn remove(store: &Store, entry: &Entry, path: &Path) -> Result<(), StoreError> {
    let kind = if entry.kind == Kind::Blob { "blob" } else { "layer" };
    let lock_path = store.lock_path(kind, &entry.digest);
    let _lock = super::lock::Lock::exclusive(&lock_path).map_err(StoreError::io("lock", &lock_path))?;
    let doomed = store.tmp_entry()?;
    fs::rename(path, doomed.path()).map_err(StoreError::io("remove", path))?;
    drop(doomed);
    Ok(())
}

fn image_records(store: &Store) -> Result<Vec<ImageRecord>, StoreError> {
    let mut records = Vec::new();
    for (digest, _) in digests_with_suffix(&store.root().join("images/sha256"), ".json")? {
        if let Some(record) = store.record(&digest)? {
            records.push(record);
        }
    }
    Ok(records)
}

fn digests_in(dir: &Path) -> Result<Vec<(Digest, PathBuf)>, StoreError> {
    digests_with_suffix(dir, "")
}

/// The entries of `dir` named `<hex><suffix>`, with their digests; anything else is skipped.
fn digests_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<(Digest, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(StoreError::io("read", dir))? {
        let entry = entry.map_err(StoreError::io("read", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(suffix) else { continue };
        if let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() {
            found.push((digest, entry.path()));
        }
    }
    Ok(found)
}

/// Apparent size of a file or a folder tree, not following symlinks.
fn size_of(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The checksum of a layer folder: one line per entry, sorted by path.
pub fn layer_sum(dir: &Path) -> std::io::Result<Digest> {
    use sha2::Digest as _;
    use std::os::unix::fs::MetadataExt;
    super::digest::tree_digest(dir, |path, relative, meta| {
        let content = if meta.is_file() {
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut fs::File::open(path)?, &mut hasher)?;
            hex::encode(hasher.finalize())
        } else if meta.is_symlink() {
            fs::read_link(path)?.display().to_string()
        } else {
            String::new()
        };
        let opaque = rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut [0u8; 8][..]).is_ok();
        let line = format!(
            "{} {:o} {}:{} {} {opaque} {content}\n",
            relative.display(),
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.rdev()
        );
        Ok(line.into_bytes())
    })
}

/// Where a patch layer's checksum is kept.
fn sum_path(store: &Store, key: &Digest) -> PathBuf {
    store.root().join("sums").join(key.hex())
}

/// Records a patch layer's checksum; called once the layer is published.
pub fn record_sum(store: &Store, key: &Digest, sum: &Digest) -> Result<(), StoreError> {
    let path = sum_path(store, key);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(StoreError::io("create", dir))?;
    }
    let tmp = store.tmp_entry()?;
    fs::write(tmp.path(), sum.to_string()).map_err(StoreError::io("write", tmp.path()))?;
    tmp.rename_to(&path)
}

/// Checks the whole store: blobs, image records and every patch layer's checksum. One line per
/// problem; none when the store is sound.
pub fn verify(store: &Store) -> Result<Vec<String>, StoreError> {
    let mut problems = store.verify()?;
    for entry in list(store)?.into_iter().filter(|e| e.kind == Kind::PatchLayer) {
        let recorded = fs::read_to_string(sum_path(store, &entry.digest)).ok().and_then(|s| s.trim().parse::<Digest>().ok());
        let Some(recorded) = recorded else {
            problems.push(format!("patch layer {} has no recorded checksum", entry.digest));
            continue;
        };
        match layer_sum(&store.layer_path(&entry.digest)) {
            Ok(sum) if sum == recorded => {}
            Ok(_) => problems.push(format!("patch layer {} is damaged: its content changed", entry.digest)),
            Err(err) => problems.push(format!("patch layer {} cannot be read: {err}", entry.digest)),
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RecordStep;

    #[test]
    fn gc_waits_for_a_build_to_record_the_layer_it_published() {
        let home = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(home.path())).expect("store");
        let publishing = store.publishing().expect("publishing");
        // A build has published a patch layer and not yet written the plan record that keeps it.
        let key = Digest::of(b"a patch step");
        fs::create_dir_all(store.layer_path(&key).join("etc")).expect("layer");
        let collector = {
            let store = store.clone();
            std::thread::spawn(move || Collection::begin(&store)?.collect(Some(Duration::from_secs(86_400)), &[]))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!collector.is_finished(), "gc waits while a build publishes");
        let record = Record {
            chain_id: "sha256:image".into(),
            steps: vec![RecordStep { key: key.to_string(), op: serde_json::json!("text"), source: None }],
        };
        fs::create_dir_all(store.root().join("plans")).expect("plans");
        fs::write(store.root().join("plans/w.json"), serde_json::to_vec(&record).expect("json")).expect("record");
        drop(publishing);
        let removed = collector.join().expect("the gc thread").expect("gc");
        assert!(removed.is_empty(), "{removed:?}");
        assert!(store.layer_path(&key).is_dir());
    }
}
