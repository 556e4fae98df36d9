//! The image's two JSON documents: its config (how it starts, its layers' diff_ids) and its
//! manifest (the config and layer blobs).
//!
//! Written from plain structs, so field order is fixed, and maps are `BTreeMap`s, so keys are
//! sorted: the same image always gives the same bytes, hence the same manifest digest. The config
//! has no `created` time and no timestamps in its history, for the same reason.

use std::collections::BTreeMap;

use serde::Serialize;

use super::launch::Launch;
use crate::store::{Digest, Platform};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// A blob as a manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// One line of the image's history, one per layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct History {
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Serialize)]
struct Config<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: RunConfig<'a>,
    rootfs: RootFs<'a>,
    history: &'a [History],
}

/// The image-spec's `config` object; its keys are capitalized as the spec spells them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    env: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<&'a [String]>,
    working_dir: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_signal: Option<&'a str>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: &'a [Digest],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
}

/// The config blob's bytes.
pub fn config_json(
    platform: &Platform,
    launch: &Launch,
    labels: &BTreeMap<String, String>,
    diff_ids: &[Digest],
    history: &[History],
) -> Vec<u8> {
    let config = Config {
        architecture: &platform.architecture,
        os: &platform.os,
        variant: platform.variant.as_deref().filter(|v| !v.is_empty()),
        config: RunConfig {
            user: launch.user.as_deref(),
            env: &launch.env,
            entrypoint: launch.entrypoint.as_deref(),
            cmd: launch.cmd.as_deref(),
            working_dir: &launch.working_dir,
            labels,
            stop_signal: launch.stop_signal.as_deref(),
        },
        rootfs: RootFs { kind: "layers", diff_ids },
        history,
    };
    // Plain structs of strings and numbers: serializing cannot fail.
    serde_json::to_vec(&config).unwrap_or_default()
}

/// The manifest's bytes.
pub fn manifest_json(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let manifest = Manifest { schema_version: 2, media_type: MANIFEST_MEDIA_TYPE, config, layers };
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// A base layer's media type in an OCI manifest: Docker's names for the same bytes become OCI's.
pub fn oci_layer_type(media_type: &str) -> String {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        // Some archives leave it empty; the bytes tell, but a manifest must name something.
        "" => "application/vnd.oci.image.layer.v1.tar",
        other => other,
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_fixed_bytes_and_no_times() {
        let launch = Launch {
            entrypoint: None,
            cmd: Some(vec!["/bin/echo".into(), "hi".into()]),
            env: vec!["PATH=/bin".into()],
            working_dir: "/".into(),
            user: None,
            stop_signal: None,
            guest: None,
        };
        let platform = Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
        let labels = BTreeMap::from([("z".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())]);
        let diff = Digest::of(b"tar");
        let history = [History { created_by: "msb patch 1: text /x".into(), comment: None }];
        let config = config_json(&platform, &launch, &labels, std::slice::from_ref(&diff), &history);
        let text = String::from_utf8(config).expect("utf-8");
        assert_eq!(
            text,
            format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/echo","hi"],"WorkingDir":"/","Labels":{{"a":"2","z":"1"}}}},"rootfs":{{"type":"layers","diff_ids":["{diff}"]}},"history":[{{"created_by":"msb patch 1: text /x"}}]}}"#
            )
        );
        let desc = Descriptor { media_type: CONFIG_MEDIA_TYPE.into(), digest: Digest::of(text.as_bytes()), size: 3 };
        let manifest = String::from_utf8(manifest_json(&desc, &[])).expect("utf-8");
        assert!(manifest.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json""#), "{manifest}");
    }

    #[test]
    fn docker_layer_types_become_oci_ones() {
        assert_eq!(oci_layer_type("application/vnd.docker.image.rootfs.diff.tar.gzip"), "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_eq!(oci_layer_type("application/vnd.oci.image.layer.v1.tar+zstd"), "application/vnd.oci.image.layer.v1.tar+zstd");
    }
}
