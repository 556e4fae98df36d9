//! What the store knows about an image once it is pulled: everything a sandbox needs from it,
//! so that starting one never reads a manifest or a config again.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::platform::Platform;

/// One pulled image, stored as `images/sha256/<manifest digest>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// Where it was first pulled from, as msb writes the source (`docker.io/library/alpine:3.20`,
    /// `oci-archive:/abs/img.tar`). A record is shared by every name that resolves to the same
    /// manifest; the names are in `refs/`.
    pub source: String,
    /// The digest of the image manifest (for `docker-archive:`, of the OCI manifest msb derives
    /// from `manifest.json`; for `dir:`, of the folder's path).
    pub digest: Digest,
    pub platform: Platform,
    /// The config blob's digest (none for `dir:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Digest>,
    pub config: RuntimeConfig,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<LayerRecord>,
    /// OCI ChainID over the diff_ids (for `dir:`, a digest of a stat of each entry of the folder,
    /// taken again at each lookup): the parent of the first patch layer.
    pub chain_id: Digest,
    /// For `dir:`, the folder used as the only, read-only, lower layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_dir: Option<PathBuf>,
}

/// The parts of an image config that decide how a sandbox starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecord {
    /// The (usually compressed) blob's digest, as in the manifest.
    pub blob: Digest,
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// The digest of the uncompressed tar: the layer's key in `layers/sha256/`.
    pub diff_id: Digest,
}

impl ImageRecord {
    /// The sum of the layer blobs' sizes, as `msb images` shows it.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|layer| layer.size).sum()
    }
}

/// A name (`refs/`) pointing at an image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefRecord {
    pub name: String,
    /// The image manifest's digest: the key of its record.
    pub digest: Digest,
    /// The index (manifest list) the name resolved to, when the manifest was chosen from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
}
