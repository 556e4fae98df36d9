//! The image documents msb reads: OCI and Docker schema2 manifests, OCI indexes and Docker
//! manifest lists, and image configs.
//!
//! They come from registries and archives, so they are untrusted: only the fields msb uses are
//! read (unknown ones are ignored, as the specs ask), every digest must parse, and a size over
//! [`MAX_DOCUMENT`] is refused before it is read into memory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::platform::Platform;
use super::record::RuntimeConfig;

/// The largest manifest, index or config msb reads (registries cap manifests at 4 MiB).
pub(crate) const MAX_DOCUMENT: u64 = 16 << 20;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Every manifest media type msb asks registries for.
pub(crate) const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Layer media types msb can unpack. Compression is recognized from the bytes themselves, so
/// these only keep out what is not a layer tar at all (encrypted layers, artifacts).
const LAYER_TYPES: &[&str] = &[
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// A content descriptor: what a manifest or index says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema2: the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    pub(crate) config: Descriptor,
    pub(crate) layers: Vec<Descriptor>,
}

/// An OCI index or a Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    pub(crate) manifests: Vec<Descriptor>,
}

/// A manifest-like document: which of the two it is.
#[derive(Debug)]
pub(crate) enum Document {
    Manifest(Box<Manifest>),
    Index(Index),
}

/// The fields every manifest-like document has, read first to know which one it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

/// Parses a manifest or an index; the reason is a sentence for [`super::PullError::Invalid`].
pub(crate) fn parse_document(bytes: &[u8]) -> Result<Document, String> {
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|err| format!("its manifest is not valid JSON: {err}"))?;
    match envelope.schema_version {
        Some(2) => {}
        Some(1) => return Err("it has a Docker schema 1 manifest, which msb does not support".into()),
        Some(other) => return Err(format!("its manifest has schemaVersion {other}, not 2")),
        None => return Err("its manifest has no schemaVersion".into()),
    }
    let is_index = match envelope.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("its manifest has the unsupported media type `{other}`")),
        None => envelope.manifests.is_some(),
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Document::Index)
            .map_err(|err| format!("its index is malformed: {err}"))
    } else {
        let manifest: Box<Manifest> =
            serde_json::from_slice(bytes).map_err(|err| format!("its manifest is malformed: {err}"))?;
        for layer in &manifest.layers {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(format!(
                    "layer {} has the media type `{}`, which is not a layer msb can unpack",
                    layer.digest, layer.media_type
                ));
            }
        }
        Ok(Document::Manifest(manifest))
    }
}

/// What msb keeps from an image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) platform: Platform,
    pub(crate) diff_ids: Vec<Digest>,
    pub(crate) runtime: RuntimeConfig,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RawRuntime>,
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRuntime {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<Digest>,
}

/// Parses an image config (OCI or Docker: the same fields).
pub(crate) fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|err| format!("its config is malformed: {err}"))?;
    if raw.rootfs.kind != "layers" {
        return Err(format!("its config has rootfs type `{}`, not `layers`", raw.rootfs.kind));
    }
    let runtime = raw.config.map(|c| RuntimeConfig {
        entrypoint: c.entrypoint,
        cmd: c.cmd,
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
    });
    Ok(Config {
        platform: Platform { os: raw.os, architecture: raw.architecture, variant: raw.variant.filter(|v| !v.is_empty()) },
        diff_ids: raw.rootfs.diff_ids,
        runtime: runtime.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn tells_manifests_from_indexes() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{A}","size":1}},
               "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{A}","size":2}}]}}"#
        );
        assert!(matches!(parse_document(manifest.as_bytes()), Ok(Document::Manifest(m)) if m.layers.len() == 1));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{A}","size":3,
               "platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#
        );
        match parse_document(index.as_bytes()) {
            Ok(Document::Index(index)) => {
                assert_eq!(index.manifests[0].platform.as_ref().map(|p| p.to_string()), Some("linux/arm/v7".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let cases = [
            (r#"{"schemaVersion":1}"#.to_owned(), "Docker schema 1"),
            ("[]".to_owned(), "not valid JSON"),
            (r#"{"schemaVersion":2,"mediaType":"text/plain"}"#.to_owned(), "unsupported media type"),
            (
                format!(r#"{{"schemaVersion":2,"config":{{"digest":"{A}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip+encrypted","digest":"{A}","size":1}}]}}"#),
                "not a layer msb can unpack",
            ),
            (r#"{"schemaVersion":2,"config":{"digest":"sha256:../../etc","size":1},"layers":[]}"#.to_owned(), "malformed"),
        ];
        for (doc, expected) in cases {
            match parse_document(doc.as_bytes()) {
                Err(reason) => assert!(reason.contains(expected), "{doc}: {reason}"),
                Ok(parsed) => panic!("{doc}: accepted as {parsed:?}"),
            }
        }
    }

    #[test]
    fn reads_the_runtime_config() {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/init"],"Cmd":["sh"],"Env":["A=1"],"WorkingDir":"/w","User":""}},
               "rootfs":{{"type":"layers","diff_ids":["{A}"]}},"history":[]}}"#
        );
        let parsed = parse_config(config.as_bytes()).expect("valid");
        assert_eq!(parsed.diff_ids.len(), 1);
        assert_eq!(parsed.runtime.entrypoint, Some(vec!["/init".to_owned()]));
        assert_eq!(parsed.runtime.working_dir.as_deref(), Some("/w"));
        assert_eq!(parsed.runtime.user, None);
        assert_eq!(parsed.platform.to_string(), "linux/amd64");
    }
}
