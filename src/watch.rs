//! What `msb up --watch` watches, and what an edit means.
//!
//! The watch set is the Sandboxfile, every script file and every `copy_file` / `copy_dir` source
//! it names, and nothing else. Folders are watched rather than files, so that editors which save
//! by writing a new file and renaming it over the old one (vim, VS Code), or a file deleted and
//! written again, keep being seen. After a change the new plans are compared with the running
//! ones: only sandboxes whose plan or settings changed restart, and a script-only edit rebuilds
//! no layer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::manifest::{Manifest, Patch, SandboxConfig, Script};
use crate::reference::ImageSource;
use crate::plan::{Reason, SandboxPlan};

/// Names that editors and tools write beside the files they work on, never the user's content.
const ALWAYS_IGNORED: &[&str] = &["**/.git/**", "**/target/**", "**/*.swp", "**/*.swx", "**/*~", "**/4913", "**/.#*"];

/// The host paths a Sandboxfile depends on.
#[derive(Debug, Clone)]
pub struct WatchSet {
    /// Files whose change matters (the Sandboxfile, scripts, copied files).
    files: BTreeSet<PathBuf>,
    /// Folders whose every descendant matters (copied folders).
    trees: BTreeSet<PathBuf>,
    ignore: GlobSet,
    base: PathBuf,
}

impl WatchSet {
    /// The watch set of a loaded Sandboxfile. Paths are made absolute against its folder.
    pub fn of(manifest: &Manifest) -> WatchSet {
        let base = std::path::absolute(&manifest.dir).unwrap_or_else(|_| manifest.dir.clone());
        let mut files = BTreeSet::from([std::path::absolute(&manifest.path).unwrap_or_else(|_| manifest.path.clone())]);
        let mut trees = BTreeSet::new();
        for sandbox in manifest.file.sandbox.values() {
            // A `dir:` image is a folder of the user's, read in place: editing it changes the
            // image (its identity is a walk of the folder's metadata).
            if let ImageSource::Dir(root) = sandbox.image.source().resolve_against(&base) {
                trees.insert(normalize(&root));
            }
            for script in sandbox.scripts.values() {
                if let Script::File(file) = script {
                    files.insert(normalize(&base.join(&file.file)));
                }
            }
            for patch in &sandbox.patch {
                match patch {
                    Patch::CopyFile { src, .. } => {
                        files.insert(normalize(&base.join(src)));
                    }
                    Patch::CopyDir { src, .. } => {
                        trees.insert(normalize(&base.join(src)));
                    }
                    _ => {}
                }
            }
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in ALWAYS_IGNORED.iter().copied().map(str::to_owned).chain(manifest.file.watch.ignore.iter().map(|g| user_glob(g))) {
            // A glob that does not compile matches nothing; the Sandboxfile's check names it.
            if let Ok(glob) = Glob::new(&pattern) {
                builder.add(glob);
            }
        }
        let ignore = builder.build().unwrap_or_else(|_| GlobSet::empty());
        WatchSet { files, trees, ignore, base }
    }

    /// Whether a change at `path` can change what msb runs.
    pub fn matters(&self, path: &Path) -> bool {
        let path = normalize(path);
        let relative = path.strip_prefix(&self.base).unwrap_or(&path);
        if self.ignore.is_match(relative) || self.ignore.is_match(&path) {
            return false;
        }
        self.files.contains(&path) || self.trees.iter().any(|tree| path.starts_with(tree))
    }

    /// The folders to give to the file watcher: each watched file's folder (not recursive) and
    /// each copied folder (recursive). A folder that does not exist yet is watched through its
    /// nearest existing parent.
    pub fn folders(&self) -> Vec<(PathBuf, bool)> {
        let mut folders: BTreeSet<(PathBuf, bool)> = BTreeSet::new();
        for file in &self.files {
            if let Some(parent) = file.parent() {
                folders.insert((existing(parent), false));
            }
        }
        for tree in &self.trees {
            let found = existing(tree);
            let recursive = found == *tree;
            folders.insert((found, recursive));
        }
        // A recursive watch covers the plain watches below it.
        let recursive: Vec<PathBuf> = folders.iter().filter(|(_, r)| *r).map(|(p, _)| p.clone()).collect();
        folders.into_iter().filter(|(p, r)| *r || !recursive.iter().any(|tree| p.starts_with(tree))).collect()
    }
}

/// A user's glob is relative to the Sandboxfile's folder, gitignore-style: `*.log` matches at any
/// depth, `tmp/` a folder and what is in it.
fn user_glob(glob: &str) -> String {
    let glob = glob.trim_start_matches("./");
    let (name, folder) = match glob.strip_suffix('/') {
        Some(name) => (name, "/**"),
        None => (glob, ""),
    };
    // As in .gitignore, a pattern without an inner `/` matches at any depth.
    let anchored = if name.contains('/') { name.trim_start_matches('/').to_owned() } else { format!("**/{name}") };
    format!("{anchored}{folder}")
}

/// `a/./b/../c` as `a/c`, without touching the disk (the path may not exist any more).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn existing(path: &Path) -> PathBuf {
    path.ancestors().find(|p| p.is_dir()).unwrap_or(Path::new("/")).to_owned()
}

/// What happens to one sandbox after an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New in the Sandboxfile.
    Start(String),
    /// Gone from the Sandboxfile.
    Stop(String),
    /// Its plan or its settings changed; `why` says what, in a few words.
    Restart { name: String, why: String },
}

/// Compares the running sandboxes with the edited Sandboxfile's, in the file's order.
pub fn changes(before: &[(SandboxConfig, SandboxPlan)], after: &[(SandboxConfig, SandboxPlan)]) -> Vec<Change> {
    let mut changes = Vec::new();
    for (config, plan) in after {
        match before.iter().find(|(_, old)| old.name == plan.name) {
            None => changes.push(Change::Start(plan.name.clone())),
            Some((old_config, old_plan)) => {
                if let Some(why) = why_restart(old_config, old_plan, config, plan) {
                    changes.push(Change::Restart { name: plan.name.clone(), why });
                }
            }
        }
    }
    for (_, plan) in before {
        if !after.iter().any(|(_, new)| new.name == plan.name) {
            changes.push(Change::Stop(plan.name.clone()));
        }
    }
    changes
}

fn why_restart(old_config: &SandboxConfig, old: &SandboxPlan, config: &SandboxConfig, new: &SandboxPlan) -> Option<String> {
    // A `dir:` image keeps its digest (its path) when its folder is edited; its chain id moves.
    if old.image.digest != new.image.digest || old.image.reference != new.image.reference || old.image.chain_id != new.image.chain_id {
        return Some("image changed".into());
    }
    if let Some((index, reason)) = new.first_change_from(old) {
        let what = match reason {
            Reason::SourceChanged { file } => format!("patch {index} source {file} changed"),
            Reason::NewStep => format!("patch {index} added"),
            _ => format!("patch {index} changed"),
        };
        return Some(format!("{what} → rebuilding {index}..{}", new.steps.len()));
    }
    if new.steps.len() < old.steps.len() {
        return Some(format!("patches {}..{} removed", new.steps.len() + 1, old.steps.len()));
    }
    let settings = |c: &SandboxConfig| SandboxConfig { patch: Vec::new(), scripts: Default::default(), ..c.clone() };
    if settings(old_config) != settings(config) {
        return Some("settings changed".into());
    }
    if old_config.scripts != config.scripts {
        return Some("scripts changed (no layer rebuilt)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, text: &str) -> Manifest {
        std::fs::write(dir.join("Sandboxfile"), text).unwrap();
        crate::manifest::load(&dir.join("Sandboxfile")).unwrap()
    }

    const TEXT: &str = "[watch]\nignore = [\"*.log\", \"cache/\"]\n[sandbox.w]\nimage = \"alpine\"\n\
        [sandbox.w.scripts]\nserve = { file = \"scripts/serve.sh\" }\n\
        [[sandbox.w.patch]]\nop = \"copy_file\"\nsrc = \"cert.pem\"\ndst = \"/c\"\n\
        [[sandbox.w.patch]]\nop = \"copy_dir\"\nsrc = \"site\"\ndst = \"/srv\"\n";

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        std::fs::create_dir_all(dir.path().join("site/cache")).unwrap();
        std::fs::write(dir.path().join("scripts/serve.sh"), "echo").unwrap();
        std::fs::write(dir.path().join("cert.pem"), "c").unwrap();
        dir
    }

    #[test]
    fn only_named_files_and_trees_matter() {
        let dir = project();
        let set = WatchSet::of(&manifest(dir.path(), TEXT));
        let root = std::path::absolute(dir.path()).unwrap();
        let cases = [
            ("Sandboxfile", true),
            ("cert.pem", true),
            ("scripts/serve.sh", true),
            ("site/index.html", true),
            ("site/deep/er/page.html", true),
            ("scripts/other.sh", false),
            ("README.md", false),
            ("site/.index.html.swp", false),
            ("site/index.html~", false),
            ("site/4913", false),
            ("site/.#index.html", false),
            ("site/.git/HEAD", false),
            ("site/debug.log", false),
            ("site/cache/x", false),
            ("target/debug/msb", false),
        ];
        for (path, expected) in cases {
            assert_eq!(set.matters(&root.join(path)), expected, "{path}");
        }
    }

    #[test]
    fn a_dir_image_folder_is_watched_and_an_edit_of_it_restarts() {
        let dir = project();
        std::fs::create_dir_all(dir.path().join("rootfs/etc")).unwrap();
        let text = "[sandbox.r]\nimage = \"dir:rootfs\"\n";
        let set = WatchSet::of(&manifest(dir.path(), text));
        let root = std::path::absolute(dir.path()).unwrap();
        assert!(set.matters(&root.join("rootfs/etc/hosts")));
        assert!(set.folders().contains(&(root.join("rootfs"), true)), "{:?}", set.folders());

        let before = planned(dir.path(), text);
        let mut after = before.clone();
        after[0].1.image.chain_id = Some("sha256:edited".into());
        assert_eq!(changes(&before, &after), [Change::Restart { name: "r".into(), why: "image changed".into() }]);
    }

    #[test]
    fn folders_are_watched_so_that_rename_saves_are_seen() {
        let dir = project();
        let set = WatchSet::of(&manifest(dir.path(), TEXT));
        let root = std::path::absolute(dir.path()).unwrap();
        let folders = set.folders();
        assert!(folders.contains(&(root.clone(), false)), "{folders:?}");
        assert!(folders.contains(&(root.join("scripts"), false)), "{folders:?}");
        assert!(folders.contains(&(root.join("site"), true)), "{folders:?}");
    }

    /// The configs and plans of a Sandboxfile, as `up --watch` keeps them for the running set.
    fn planned(dir: &Path, text: &str) -> Vec<(SandboxConfig, SandboxPlan)> {
        let manifest = manifest(dir, text);
        let sources = crate::plan::sources::digest_sources(&manifest).unwrap();
        let image = crate::plan::ImageFacts { digest: "sha256:i".into(), chain_id: "sha256:c".into(), present: true };
        manifest
            .file
            .sandbox
            .iter()
            .map(|(name, config)| {
                let plan = crate::plan::plan_sandbox(name.as_str(), config, Some(&image), &sources, &|_| true, None);
                (config.clone(), plan)
            })
            .collect()
    }

    #[test]
    fn an_edit_restarts_only_the_sandboxes_it_changes_and_says_why() {
        let dir = project();
        let two = "[sandbox.a]\nimage = \"alpine\"\ncommand = [\"serve\"]\n[sandbox.a.scripts]\nserve = \"echo 1\"\n\
            [sandbox.b]\nimage = \"alpine\"\n[[sandbox.b.patch]]\nop = \"copy_file\"\nsrc = \"cert.pem\"\ndst = \"/c\"\n\
            [[sandbox.b.patch]]\nop = \"mkdir\"\npath = \"/d\"\n";
        let before = planned(dir.path(), two);
        assert_eq!(changes(&before, &before), []);

        let script_edit = planned(dir.path(), &two.replace("echo 1", "echo 2"));
        assert_eq!(
            changes(&before, &script_edit),
            [Change::Restart { name: "a".into(), why: "scripts changed (no layer rebuilt)".into() }]
        );

        std::fs::write(dir.path().join("cert.pem"), "new").unwrap();
        let source_edit = planned(dir.path(), two);
        assert_eq!(
            changes(&before, &source_edit),
            [Change::Restart { name: "b".into(), why: "patch 1 source cert.pem changed → rebuilding 1..2".into() }]
        );

        let removed = planned(dir.path(), &two[..two.find("[sandbox.b]").unwrap()]);
        assert_eq!(changes(&before, &removed), [Change::Stop("b".into())]);
        assert_eq!(changes(&removed, &before), [Change::Start("b".into())]);
    }
}
