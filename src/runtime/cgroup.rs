//! The host's cgroup layout, probed as crun and runc probe it, and what msb does about it.
//!
//! crun 1.8 refuses a *hybrid* host (cgroup v1 controllers plus a v2 mount that lists
//! controllers): "cgroups in hybrid mode not supported, drop all controllers from cgroupv2". msb
//! then hides the v2 mount inside the private mount namespace crun runs in, so crun sees a plain
//! v1 host; the host itself is untouched. runc handles hybrid hosts as they are.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Where both runtimes look.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Only cgroup2, at `/sys/fs/cgroup`.
    Unified { controllers: Vec<String> },
    /// Only cgroup v1 hierarchies; `controllers` are those of them msb limits with.
    Legacy { controllers: Vec<String> },
    /// v1 hierarchies plus a cgroup2 one at `/sys/fs/cgroup/unified`.
    Hybrid {
        /// The v1 controllers msb limits with.
        v1_controllers: Vec<String>,
        v2_mount: PathBuf,
        /// What the v2 mount's root `cgroup.controllers` lists; crun refuses the host when it is
        /// not empty.
        v2_controllers: Vec<String>,
    },
    /// No cgroup filesystem is mounted: containers run without resource limits.
    None,
}

/// A resource msb can limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Cpu,
    Memory,
}

impl Controller {
    const ALL: [Controller; 2] = [Controller::Cpu, Controller::Memory];

    fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
        }
    }
}

/// The filesystems the probe tells apart (`statfs`'s `f_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Cgroup1,
    Cgroup2,
    Tmpfs,
    Other,
}

impl FsKind {
    fn of(magic: i64) -> FsKind {
        match magic {
            0x0027_e0eb => FsKind::Cgroup1,
            0x6367_7270 => FsKind::Cgroup2,
            0x0102_1994 => FsKind::Tmpfs,
            _ => FsKind::Other,
        }
    }
}

impl CgroupLayout {
    /// Probes this host's layout with `statfs`, by the rule crun and runc follow: a cgroup2
    /// filesystem at `/sys/fs/cgroup` is unified; a tmpfs there holds v1 hierarchies, plus a
    /// cgroup2 one at `unified` on a hybrid host. A few system calls, where reading
    /// `/proc/self/mountinfo` took a tenth of a millisecond of every boot.
    pub fn detect() -> CgroupLayout {
        let kind_of = |path: &Path| match rustix::fs::statfs(path) {
            // `f_type`'s width differs between architectures.
            #[allow(clippy::unnecessary_cast)]
            Ok(stat) => FsKind::of(stat.f_type as i64),
            Err(_) => FsKind::Other,
        };
        Self::probe(Path::new(CGROUP_ROOT), kind_of, |path| fs::read_to_string(path).unwrap_or_default())
    }

    /// The layout under `root`, given what filesystem each path is (`kind_of`) and how to read a
    /// file (`read`): parameters, so that tests need no real cgroup mounts.
    pub fn probe(root: &Path, kind_of: impl Fn(&Path) -> FsKind, read: impl Fn(&Path) -> String) -> CgroupLayout {
        let controllers = |dir: &Path| read(&dir.join("cgroup.controllers")).split_whitespace().map(str::to_owned).collect();
        match kind_of(root) {
            FsKind::Cgroup2 => CgroupLayout::Unified { controllers: controllers(root) },
            FsKind::Tmpfs => {
                let v1: Vec<String> = Controller::ALL
                    .iter()
                    .map(|c| c.name())
                    .filter(|name| kind_of(&root.join(name)) == FsKind::Cgroup1)
                    .map(str::to_owned)
                    .collect();
                let unified = root.join("unified");
                match (kind_of(&unified), v1.is_empty()) {
                    (FsKind::Cgroup2, _) => {
                        CgroupLayout::Hybrid { v1_controllers: v1, v2_controllers: controllers(&unified), v2_mount: unified }
                    }
                    (_, false) => CgroupLayout::Legacy { controllers: v1 },
                    (_, true) => CgroupLayout::None,
                }
            }
            _ => CgroupLayout::None,
        }
    }

    /// The v2 mount crun must not see: the hybrid host's v2 mount when it lists controllers.
    pub fn mount_to_hide_from_crun(&self) -> Option<&Path> {
        match self {
            CgroupLayout::Hybrid { v2_mount, v2_controllers, .. } if !v2_controllers.is_empty() => {
                Some(v2_mount)
            }
            _ => None,
        }
    }

    /// Whether crun (with the hybrid v2 mount hidden, see above) can apply a limit on this
    /// resource: the controller must be mounted (v1) or available at the root (v2).
    pub fn can_limit(&self, controller: Controller) -> bool {
        let name = controller.name();
        match self {
            CgroupLayout::Unified { controllers } | CgroupLayout::Legacy { controllers } => {
                controllers.iter().any(|c| c == name)
            }
            // crun sees only the v1 side once the v2 mount is hidden.
            CgroupLayout::Hybrid { v1_controllers, .. } => v1_controllers.iter().any(|c| c == name),
            CgroupLayout::None => false,
        }
    }

    /// One line: the layout and what msb does about it.
    pub fn summary(&self) -> String {
        match self {
            CgroupLayout::Unified { controllers } => format!(
                "cgroup v2 (unified, controllers: {}): crun manages each sandbox's cgroup as is",
                list(controllers)
            ),
            CgroupLayout::Legacy { controllers } => {
                format!("cgroup v1 (controllers: {}): crun uses the v1 hierarchies as is", list(controllers))
            }
            CgroupLayout::Hybrid { v2_mount, v2_controllers, .. } if v2_controllers.is_empty() => format!(
                "cgroup hybrid (v1 controllers plus an empty v2 mount at {}): crun accepts it as is",
                v2_mount.display()
            ),
            CgroupLayout::Hybrid { v2_mount, v2_controllers, .. } => format!(
                "cgroup hybrid (v1 controllers plus a v2 mount at {} listing {}): crun refuses hybrid \
                 hosts, so msb hides that v2 mount in crun's private mount namespace; the host is untouched",
                v2_mount.display(),
                list(v2_controllers)
            ),
            CgroupLayout::None => "no cgroup filesystem is mounted: sandboxes run without cpu or memory limits".into(),
        }
    }
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host as `probe` sees it: the filesystem kind of each path, and cgroup2's controllers.
    fn host(kinds: &[(&str, FsKind)], v2_controllers: &'static str) -> CgroupLayout {
        let kinds: Vec<(PathBuf, FsKind)> = kinds.iter().map(|(p, k)| (Path::new(CGROUP_ROOT).join(p), *k)).collect();
        CgroupLayout::probe(
            Path::new(CGROUP_ROOT),
            |path| kinds.iter().find(|(p, _)| p == path).map_or(FsKind::Other, |(_, k)| *k),
            |path| {
                assert!(path.ends_with("cgroup.controllers"), "{}", path.display());
                v2_controllers.into()
            },
        )
    }

    const HYBRID: [(&str, FsKind); 4] =
        [("", FsKind::Tmpfs), ("cpu", FsKind::Cgroup1), ("memory", FsKind::Cgroup1), ("unified", FsKind::Cgroup2)];

    #[test]
    fn hybrid_host_with_v2_controllers_is_hidden_from_crun() {
        let layout = host(&HYBRID, "hugetlb\n");
        assert_eq!(
            layout,
            CgroupLayout::Hybrid {
                v1_controllers: vec!["cpu".into(), "memory".into()],
                v2_mount: "/sys/fs/cgroup/unified".into(),
                v2_controllers: vec!["hugetlb".into()],
            }
        );
        assert_eq!(layout.mount_to_hide_from_crun(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert!(layout.can_limit(Controller::Cpu) && layout.can_limit(Controller::Memory));
        assert!(layout.summary().contains("hides that v2 mount"), "{layout}");
    }

    #[test]
    fn hybrid_host_with_an_empty_v2_mount_is_left_alone() {
        assert_eq!(host(&HYBRID, "").mount_to_hide_from_crun(), None);
    }

    #[test]
    fn unified_legacy_and_none() {
        let layout = host(&[("", FsKind::Cgroup2)], "cpuset cpu io memory pids\n");
        assert_eq!(layout, CgroupLayout::Unified { controllers: ["cpuset", "cpu", "io", "memory", "pids"].map(String::from).to_vec() });
        assert!(layout.can_limit(Controller::Memory) && layout.mount_to_hide_from_crun().is_none());

        // A v1 host without the memory controller, and `unified` an ordinary folder.
        let layout = host(&[("", FsKind::Tmpfs), ("cpu", FsKind::Cgroup1), ("unified", FsKind::Tmpfs)], "");
        assert_eq!(layout, CgroupLayout::Legacy { controllers: vec!["cpu".into()] });
        assert!(layout.can_limit(Controller::Cpu) && !layout.can_limit(Controller::Memory));

        for nothing in [&[("", FsKind::Tmpfs)][..], &[("", FsKind::Other), ("cpu", FsKind::Cgroup1)]] {
            let layout = host(nothing, "");
            assert_eq!(layout, CgroupLayout::None);
            assert!(!layout.can_limit(Controller::Cpu));
        }
    }

    #[test]
    fn filesystem_kinds_are_told_by_their_magic() {
        assert_eq!([0x27e0eb, 0x63677270, 0x01021994, 0xef53].map(FsKind::of), [FsKind::Cgroup1, FsKind::Cgroup2, FsKind::Tmpfs, FsKind::Other]);
    }

    /// This machine's layout: printed so the CI log shows what msb saw.
    #[test]
    fn this_host_layout_is_detected() {
        let layout = CgroupLayout::detect();
        println!("{layout}");
        assert!(!layout.summary().is_empty());
    }
}
