//! The Sandboxfile as written: plain serde + schemars types.
//!
//! These types are the contract: the JSON Schema in `schema/` is generated from them and their doc
//! comments become its descriptions, so editors show exactly what is written here. Every struct
//! refuses unknown keys: a typo is an error, never a silently ignored setting.

use std::path::PathBuf;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::values::{
    EnvName, GuestPath, ImageName, Init, LinkTarget, Memory, Mode, Network, Runtime, SandboxName, ScriptName,
};

/// A Sandboxfile: the sandboxes of a project, committed at the root of its repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Sandboxfile")]
pub struct Sandboxfile {
    /// The sandboxes, by name: `[sandbox.worker]`. Names are lowercase letters, digits, `-`, `_`
    /// and `.`, starting with a letter or digit.
    #[schemars(extend("propertyNames" = SandboxName::name_schema(), "minProperties" = 1))]
    pub sandbox: IndexMap<SandboxName, SandboxConfig>,

    /// What `msb up --watch` leaves alone.
    #[serde(default, skip_serializing_if = "Watch::is_default")]
    pub watch: Watch,
}

/// One sandbox: an image, how it starts, its scripts and the patches applied to its root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// The base image: a registry reference (`alpine:3.20`, `ghcr.io/org/app@sha256:…`; Docker Hub is
    /// implied) or a local source named with skopeo's transports: `oci:DIR[:TAG]`,
    /// `oci-archive:TAR`, `docker-archive:TAR`, `dir:ROOTFS`. Local paths are relative to the
    /// Sandboxfile.
    pub image: ImageName,

    /// What runs as PID 1: `agent` (msb's small agent, the default), `auto` (the image's own init:
    /// systemd, OpenRC, s6, runit, busybox init) or an absolute path to an init in the image.
    #[serde(default, skip_serializing_if = "Init::is_default")]
    pub init: Init,

    /// Which backend boots the sandbox: `auto` (a microVM where hardware KVM works, else
    /// namespaces), `krun` (libkrun microVM) or `oci` (crun, Linux namespaces).
    #[serde(default, skip_serializing_if = "Runtime::is_default")]
    pub runtime: Runtime,

    /// Replaces the image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minItems" = 1))]
    pub entrypoint: Option<Vec<String>>,

    /// Replaces the image's CMD (the arguments given to the entrypoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// The working directory of the command and of `msb exec`; replaces the image's WorkingDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<GuestPath>,

    /// Environment variables, added to (and overriding) the image's Env.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(extend("propertyNames" = EnvName::name_schema()))]
    pub env: IndexMap<EnvName, String>,

    /// The user the command runs as: `name`, `uid` or `uid:gid`; replaces the image's User.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user: Option<String>,

    /// Virtual CPUs (krun) or the CPU quota in whole CPUs (oci).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub cpus: Option<u8>,

    /// Memory limit, with a unit: `512MiB`, `2GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,

    /// `private` (the default: a network of its own with only loopback) or `host` (the host's
    /// network, shared).
    #[serde(default, skip_serializing_if = "Network::is_default")]
    pub network: Network,

    /// Scripts, by name, mounted at `/.msb/scripts/NAME` (on `PATH`, callable by name). A string is
    /// the script's body (`#!/bin/sh` is added when it has no shebang); `{ file = "path" }` names a
    /// file of the repository, relative to the Sandboxfile. Changing a script never rebuilds a layer.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(extend("propertyNames" = ScriptName::name_schema()))]
    pub scripts: IndexMap<ScriptName, Script>,

    /// Changes to the image's root filesystem, applied in order before boot. Each step is cached by
    /// content: editing one rebuilds it and the steps after it, never the ones before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patch: Vec<Patch>,
}

/// A script's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Script {
    /// The script's body.
    Inline(String),
    /// A file of the repository.
    File(ScriptFile),
}

/// A script kept in its own file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptFile {
    /// Path of the script on the host, relative to the Sandboxfile.
    #[schemars(length(min = 1))]
    pub file: PathBuf,
}

/// One change to the root filesystem. `op` says which; guest paths are absolute and canonical.
///
/// Writing a path that already exists (in the image or an earlier patch) is an error unless
/// `replace = true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Patch {
    /// Write a text file.
    Text {
        /// Where the file goes in the guest.
        path: GuestPath,
        /// The file's content, as UTF-8 text.
        content: String,
        /// Octal permission bits, such as `"0644"` (the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<Mode>,
        /// Allow overwriting a path that already exists.
        #[serde(default, skip_serializing_if = "is_false")]
        replace: bool,
    },
    /// Write a binary file.
    File {
        /// Where the file goes in the guest.
        path: GuestPath,
        /// The file's bytes, base64-encoded (standard alphabet, with padding).
        #[schemars(extend("contentEncoding" = "base64", "pattern" = BASE64_PATTERN))]
        content: String,
        /// Octal permission bits, such as `"0644"` (the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<Mode>,
        /// Allow overwriting a path that already exists.
        #[serde(default, skip_serializing_if = "is_false")]
        replace: bool,
    },
    /// Create a directory and its missing parents; a directory that exists is left as it is.
    Mkdir {
        /// The directory in the guest.
        path: GuestPath,
        /// Octal permission bits, such as `"0755"` (the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<Mode>,
    },
    /// Append text to a file that exists (in the image or an earlier patch).
    Append {
        /// The file in the guest.
        path: GuestPath,
        /// The text to add at the end.
        content: String,
    },
    /// Copy a file of the repository into the guest.
    CopyFile {
        /// The file on the host, relative to the Sandboxfile.
        src: HostPath,
        /// Where it goes in the guest.
        dst: GuestPath,
        /// Octal permission bits; the source's own mode when not given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<Mode>,
        /// Allow overwriting a path that already exists.
        #[serde(default, skip_serializing_if = "is_false")]
        replace: bool,
    },
    /// Copy a folder of the repository into the guest, merging with what is there. Symlinks are
    /// copied as symlinks; other special files are refused.
    CopyDir {
        /// The folder on the host, relative to the Sandboxfile.
        src: HostPath,
        /// Where it goes in the guest.
        dst: GuestPath,
        /// Allow overwriting files that already exist.
        #[serde(default, skip_serializing_if = "is_false")]
        replace: bool,
    },
    /// Create a symbolic link.
    Symlink {
        /// What the link points to (absolute, or relative to the link's folder).
        target: LinkTarget,
        /// Where the link goes in the guest.
        link: GuestPath,
        /// Allow overwriting a path that already exists.
        #[serde(default, skip_serializing_if = "is_false")]
        replace: bool,
    },
    /// Remove a path (recursively); removing a path that does not exist does nothing.
    Remove {
        /// The path in the guest.
        path: GuestPath,
    },
}

/// The `op` names, in the order of [`Patch`]'s variants (and of the schema's `oneOf`).
pub const PATCH_OPS: [&str; 8] =
    ["text", "file", "mkdir", "append", "copy_file", "copy_dir", "symlink", "remove"];

/// Standard base64 with padding; the schema says it so editors flag bad bytes too.
const BASE64_PATTERN: &str = "^[A-Za-z0-9+/]*={0,2}$";

/// A path on the host, relative to the Sandboxfile's folder and inside it.
pub(super) type HostPath = PathBuf;

/// Settings of `msb up --watch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// Glob patterns (gitignore syntax) of host paths whose changes never trigger a re-run, on top
    /// of `.git/`, `target/` and editor temporary files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

impl Watch {
    fn is_default(&self) -> bool {
        self == &Watch::default()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Patch {
    /// The `op` this patch is written with.
    pub fn op(&self) -> &'static str {
        PATCH_OPS[match self {
            Patch::Text { .. } => 0,
            Patch::File { .. } => 1,
            Patch::Mkdir { .. } => 2,
            Patch::Append { .. } => 3,
            Patch::CopyFile { .. } => 4,
            Patch::CopyDir { .. } => 5,
            Patch::Symlink { .. } => 6,
            Patch::Remove { .. } => 7,
        }]
    }
}
