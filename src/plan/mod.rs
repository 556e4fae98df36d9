//! The plan: what a sandbox needs, which of it the cache already holds, and why the rest must be
//! built. Pure: the facts (image digests, source digests, what the store holds, what was built
//! last time) come in as values, so the same facts always give the same plan.
//!
//! Step *i*'s key is `sha256(canonical {materializer version, key of step i-1 or the image's
//! ChainID, the op with each host source replaced by its digest and mode})`: editing step 15 of 20
//! changes the keys of 15..20 and nothing before.

pub mod sources;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::manifest::{Patch, SandboxConfig};
use sources::Sources;

/// Bumped whenever the way a step turns into a layer changes, so old layers are never reused
/// for a new meaning.
pub const MATERIALIZER_VERSION: u32 = 1;

/// The base image as the store or the registry resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFacts {
    /// The manifest digest the reference resolved to.
    pub digest: String,
    /// OCI ChainID over the image's diff_ids: the parent of the first patch step.
    pub chain_id: String,
    /// Whether every layer of the image is already unpacked in the store.
    pub present: bool,
}

/// What a sandbox's last successful build was made of, kept by the store, so that a plan can say
/// *why* a step is rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub chain_id: String,
    pub steps: Vec<RecordStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordStep {
    pub key: String,
    /// The op as written in the Sandboxfile.
    pub op: Value,
    /// The digest of its host source, for copy ops.
    pub source: Option<String>,
}

/// A sandbox's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxPlan {
    pub name: String,
    pub image: ImagePlan,
    pub steps: Vec<StepPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImagePlan {
    pub reference: String,
    /// The resolved manifest digest, when known.
    pub digest: Option<String>,
    /// The image's ChainID, the parent of the first step, when known.
    pub chain_id: Option<String>,
    pub status: ImageStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    Cached,
    Pull,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepPlan {
    /// 1-based, as users count patches.
    pub index: usize,
    pub op: &'static str,
    /// The op in a few words: `copy_file ./cert.pem → /etc/ssl/cert.pem`.
    pub summary: String,
    /// The step's cache key; unknown until the image is resolved.
    pub key: Option<String>,
    pub status: StepStatus,
    /// Why the step is built; absent for a cached step.
    pub reason: Option<Reason>,
    /// The host source's digest, for copy ops.
    #[serde(skip)]
    source: Option<String>,
    /// The host source as written, for copy ops.
    #[serde(skip)]
    source_file: Option<String>,
    #[serde(skip)]
    written: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Cached,
    Build,
}

/// Why a step is not in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Not built before for this sandbox.
    NewStep,
    /// The op's own fields changed.
    OpChanged,
    /// The op is the same but its host source changed.
    SourceChanged { file: String },
    /// An earlier step is rebuilt, so this one sits on a new parent.
    EarlierStepChanged { step: usize },
    /// The base image resolved to different layers (or a `dir:` image's folder changed).
    ImageChanged,
    /// The image is not resolved yet (not pulled, and the registry was not asked).
    ImageNotResolved,
    /// Same inputs as last time, but the layer is gone from the cache (pruned).
    NotInCache,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NewStep => f.write_str("new step"),
            Reason::OpChanged => f.write_str("op changed"),
            Reason::SourceChanged { file } => write!(f, "source {file} changed"),
            Reason::EarlierStepChanged { step } => write!(f, "step {step} is rebuilt"),
            Reason::ImageChanged => f.write_str("image changed"),
            Reason::ImageNotResolved => f.write_str("image not pulled yet"),
            Reason::NotInCache => f.write_str("not in the cache"),
        }
    }
}

/// Plans one sandbox.
///
/// `cached(key)` says whether the store holds a layer; `previous` is the record of the last build.
pub fn plan_sandbox(
    name: &str,
    config: &SandboxConfig,
    image: Option<&ImageFacts>,
    sources: &Sources,
    cached: &dyn Fn(&str) -> bool,
    previous: Option<&Record>,
) -> SandboxPlan {
    let image_plan = ImagePlan {
        reference: config.image.to_string(),
        digest: image.map(|i| i.digest.clone()),
        chain_id: image.map(|i| i.chain_id.clone()),
        status: if image.is_some_and(|i| i.present) { ImageStatus::Cached } else { ImageStatus::Pull },
    };
    let mut parent = image.map(|i| i.chain_id.clone());
    let mut first_built: Option<usize> = None;
    let mut steps = Vec::with_capacity(config.patch.len());
    for (i, patch) in config.patch.iter().enumerate() {
        let index = i + 1;
        let written = serde_json::to_value(patch).unwrap_or(Value::Null);
        let source = source_of(patch).and_then(|src| sources.get(src)).map(|s| s.digest.clone());
        let key = parent.as_deref().map(|parent| step_key(parent, patch, sources));
        let is_cached = key.as_deref().is_some_and(cached);
        let reason = if is_cached {
            None
        } else {
            Some(reason(index, image, first_built, previous, &written, source.as_deref(), patch))
        };
        if !is_cached && first_built.is_none() {
            first_built = Some(index);
        }
        parent.clone_from(&key);
        steps.push(StepPlan {
            index,
            op: patch.op(),
            summary: summary(patch),
            key,
            status: if is_cached { StepStatus::Cached } else { StepStatus::Build },
            reason,
            source,
            source_file: source_of(patch).map(str::to_owned),
            written,
        });
    }
    SandboxPlan { name: name.to_owned(), image: image_plan, steps }
}

fn reason(
    index: usize,
    image: Option<&ImageFacts>,
    first_built: Option<usize>,
    previous: Option<&Record>,
    written: &Value,
    source: Option<&str>,
    patch: &Patch,
) -> Reason {
    let Some(image) = image else { return Reason::ImageNotResolved };
    if let Some(step) = first_built {
        return Reason::EarlierStepChanged { step };
    }
    let Some(previous) = previous else { return Reason::NewStep };
    if previous.chain_id != image.chain_id {
        return Reason::ImageChanged;
    }
    compare(previous.steps.get(index - 1), written, source, source_of(patch))
}

/// Why a step differs from what stood at its place before.
fn compare(before: Option<&RecordStep>, written: &Value, source: Option<&str>, file: Option<&str>) -> Reason {
    match before {
        None => Reason::NewStep,
        Some(before) if before.op != *written => Reason::OpChanged,
        Some(before) if before.source.as_deref() != source => {
            Reason::SourceChanged { file: file.unwrap_or_default().to_owned() }
        }
        Some(_) => Reason::NotInCache,
    }
}

impl SandboxPlan {
    /// The first step whose key differs from `before`'s (same sandbox, an earlier version of
    /// the Sandboxfile), with its 1-based index and why it changed.
    pub fn first_change_from(&self, before: &SandboxPlan) -> Option<(usize, Reason)> {
        self.steps.iter().enumerate().find_map(|(i, step)| {
            let old = before.steps.get(i);
            if old.is_some_and(|old| old.key == step.key) {
                return None;
            }
            let old = old.map(|o| RecordStep { key: o.key.clone().unwrap_or_default(), op: o.written.clone(), source: o.source.clone() });
            Some((step.index, compare(old.as_ref(), &step.written, step.source.as_deref(), step.source_file.as_deref())))
        })
    }

    /// The record to keep once every step of this plan is built.
    pub fn record(&self) -> Option<Record> {
        let chain_id = self.image.chain_id.clone()?;
        let steps = self
            .steps
            .iter()
            .map(|s| Some(RecordStep { key: s.key.clone()?, op: s.written.clone(), source: s.source.clone() }))
            .collect::<Option<Vec<_>>>()?;
        Some(Record { chain_id, steps })
    }

}

/// The written host path of a copy op.
fn source_of(patch: &Patch) -> Option<&str> {
    match patch {
        Patch::CopyFile { src, .. } | Patch::CopyDir { src, .. } => src.to_str(),
        _ => None,
    }
}

/// The cache key of a step on top of `parent`.
pub fn step_key(parent: &str, patch: &Patch, sources: &Sources) -> String {
    let mut op = serde_json::to_value(patch).unwrap_or(Value::Null);
    if let (Some(src), Some(object)) = (source_of(patch), op.as_object_mut()) {
        let source = sources.get(src);
        object.insert(
            "src".into(),
            serde_json::json!({
                "digest": source.map(|s| s.digest.as_str()),
                "mode": source.map(|s| s.mode),
            }),
        );
    }
    let input = serde_json::json!({ "materializer": MATERIALIZER_VERSION, "parent": parent, "op": op });
    format!("sha256:{:x}", Sha256::digest(canonical(&input).as_bytes()))
}

/// JSON with object keys sorted at every level, whatever order serde_json keeps them in.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// A patch in a few words, for plans and progress lines.
fn summary(patch: &Patch) -> String {
    match patch {
        Patch::Text { path, .. } | Patch::File { path, .. } | Patch::Mkdir { path, .. } => {
            format!("{} {path}", patch.op())
        }
        Patch::Append { path, .. } | Patch::Remove { path } => format!("{} {path}", patch.op()),
        Patch::CopyFile { src, dst, .. } | Patch::CopyDir { src, dst, .. } => {
            format!("{} {} → {dst}", patch.op(), src.display())
        }
        Patch::Symlink { target, link, .. } => format!("symlink {link} → {target}"),
    }
}

impl fmt::Display for SandboxPlan {
    /// The short block `msb plan` and `msb up` print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = self.image.digest.as_deref().map(short).map(|d| format!(" ({d})")).unwrap_or_default();
        let status = match self.image.status {
            ImageStatus::Cached => "cached",
            ImageStatus::Pull => "pull",
        };
        writeln!(f, "{}: image {}{digest} {status}", self.name, self.image.reference)?;
        let width = self.steps.iter().map(|s| s.summary.chars().count()).max().unwrap_or(0);
        for step in &self.steps {
            let status = match &step.reason {
                None => "cached".to_owned(),
                Some(reason) => format!("build ({reason})"),
            };
            writeln!(f, "  {:>2} {:<width$}  {status}", step.index, step.summary)?;
        }
        Ok(())
    }
}

/// `sha256:0123456789ab`: enough of a digest to recognize it.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;
    use std::path::Path;

    const SANDBOXFILE: &str = r#"
[sandbox.w]
image = "alpine:3.20"
[[sandbox.w.patch]]
op = "text"
path = "/a"
content = "a"
[[sandbox.w.patch]]
op = "copy_file"
src = "cert.pem"
dst = "/cert.pem"
[[sandbox.w.patch]]
op = "copy_dir"
src = "site"
dst = "/srv"
[[sandbox.w.patch]]
op = "mkdir"
path = "/b"
"#;

    const IMAGE: ImageFacts = ImageFacts { digest: String::new(), chain_id: String::new(), present: true };

    /// A project folder holding the Sandboxfile and its sources.
    fn project(sandboxfile: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Sandboxfile"), sandboxfile).unwrap();
        std::fs::write(dir.path().join("cert.pem"), "cert").unwrap();
        std::fs::create_dir(dir.path().join("site")).unwrap();
        std::fs::write(dir.path().join("site/index.html"), "<p>hi</p>").unwrap();
        dir
    }

    fn plan(dir: &Path, cached: &dyn Fn(&str) -> bool, previous: Option<&Record>) -> SandboxPlan {
        let manifest = manifest::load(&dir.join("Sandboxfile")).unwrap();
        let sources = sources::digest_sources(&manifest).unwrap();
        let image = ImageFacts { chain_id: "sha256:image".into(), ..IMAGE };
        let (name, config) = manifest.file.sandbox.first().unwrap();
        plan_sandbox(name.as_str(), config, Some(&image), &sources, cached, previous)
    }

    fn keys(plan: &SandboxPlan) -> Vec<String> {
        plan.steps.iter().map(|s| s.key.clone().unwrap()).collect()
    }

    #[test]
    fn keys_are_the_same_in_two_folders() {
        let (a, b) = (project(SANDBOXFILE), project(SANDBOXFILE));
        assert_eq!(keys(&plan(a.path(), &|_| false, None)), keys(&plan(b.path(), &|_| false, None)));
    }

    #[test]
    fn one_source_byte_changes_its_step_and_the_later_ones_only() {
        let dir = project(SANDBOXFILE);
        let before = keys(&plan(dir.path(), &|_| false, None));
        std::fs::write(dir.path().join("site/index.html"), "<p>hI</p>").unwrap();
        let after = keys(&plan(dir.path(), &|_| false, None));
        assert_eq!(before[..2], after[..2]);
        assert_ne!(before[2], after[2]);
        assert_ne!(before[3], after[3]);
    }

    #[test]
    fn a_source_mode_change_changes_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = project(SANDBOXFILE);
        let before = keys(&plan(dir.path(), &|_| false, None));
        std::fs::set_permissions(dir.path().join("cert.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let after = keys(&plan(dir.path(), &|_| false, None));
        assert_eq!(before[0], after[0]);
        assert_ne!(before[1], after[1]);
    }

    #[test]
    fn reasons_say_what_changed() {
        let dir = project(SANDBOXFILE);
        let first = plan(dir.path(), &|_| false, None);
        assert!(first.steps.iter().all(|s| s.status == StepStatus::Build));
        assert_eq!(first.steps[0].reason, Some(Reason::NewStep));
        assert_eq!(first.steps[1].reason, Some(Reason::EarlierStepChanged { step: 1 }));
        let record = first.record().unwrap();
        let built: Vec<String> = keys(&first);

        let is_built = |key: &str| built.iter().any(|k| k == key);
        let again = plan(dir.path(), &is_built, Some(&record));
        assert!(again.steps.iter().all(|s| s.status == StepStatus::Cached && s.reason.is_none()));

        std::fs::write(dir.path().join("cert.pem"), "new cert").unwrap();
        let edited = plan(dir.path(), &is_built, Some(&record));
        let reasons: Vec<Option<Reason>> = edited.steps.iter().map(|s| s.reason.clone()).collect();
        assert_eq!(
            reasons,
            [
                None,
                Some(Reason::SourceChanged { file: "cert.pem".into() }),
                Some(Reason::EarlierStepChanged { step: 2 }),
                Some(Reason::EarlierStepChanged { step: 2 }),
            ]
        );

        std::fs::write(dir.path().join("Sandboxfile"), SANDBOXFILE.replace("content = \"a\"", "content = \"b\"")).unwrap();
        let op_edited = plan(dir.path(), &is_built, Some(&record));
        assert_eq!(op_edited.steps[0].reason, Some(Reason::OpChanged));
    }

    #[test]
    fn without_a_resolved_image_steps_have_no_key() {
        let dir = project(SANDBOXFILE);
        let manifest = manifest::load(&dir.path().join("Sandboxfile")).unwrap();
        let sources = sources::digest_sources(&manifest).unwrap();
        let (name, config) = manifest.file.sandbox.first().unwrap();
        let plan = plan_sandbox(name.as_str(), config, None, &sources, &|_| true, None);
        assert!(plan.steps.iter().all(|s| s.key.is_none() && s.reason == Some(Reason::ImageNotResolved)));
        assert_eq!(plan.image.status, ImageStatus::Pull);
    }
}
