//! The host's cgroup layout, read from `/proc/self/mountinfo`, and what msb does about it.
//!
//! crun 1.8 refuses a *hybrid* host (cgroup v1 controllers plus a v2 mount that lists
//! controllers): "cgroups in hybrid mode not supported, drop all controllers from cgroupv2". msb
//! then hides the v2 mount inside the private mount namespace crun runs in, so crun sees a plain
//! v1 host; the host itself is untouched. runc handles hybrid hosts as they are.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Only cgroup2, at `/sys/fs/cgroup`.
    Unified { controllers: Vec<String> },
    /// Only cgroup v1 hierarchies.
    Legacy { controllers: Vec<String> },
    /// v1 hierarchies plus a cgroup2 mount (usually `/sys/fs/cgroup/unified`).
    Hybrid {
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
    fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
        }
    }
}

impl CgroupLayout {
    /// Reads the layout of the calling process's mount namespace.
    pub fn detect() -> CgroupLayout {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::from_mountinfo(&mountinfo, |path| {
            fs::read_to_string(path.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// The layout described by a mountinfo text; `controllers_of` reads a v2 mount's root
    /// `cgroup.controllers` (a parameter so tests need no real mount).
    pub fn from_mountinfo(mountinfo: &str, controllers_of: impl Fn(&Path) -> String) -> CgroupLayout {
        let mut v1 = Vec::new();
        let mut v2: Option<PathBuf> = None;
        for line in mountinfo.lines() {
            // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`
            let Some((before, after)) = line.split_once(" - ") else { continue };
            let mount_point = before.split(' ').nth(4).map(unescape_mountinfo);
            let mut after = after.split(' ');
            let (fstype, super_options) = (after.next(), after.nth(1).unwrap_or(""));
            match (fstype, mount_point) {
                (Some("cgroup"), Some(_)) => v1.extend(
                    super_options.split(',').filter(|o| is_v1_controller(o)).map(str::to_owned),
                ),
                (Some("cgroup2"), Some(mp)) if v2.is_none() => v2 = Some(PathBuf::from(mp)),
                _ => {}
            }
        }
        v1.sort();
        v1.dedup();
        let split = |text: String| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        match (v1.is_empty(), v2) {
            (true, Some(mount)) => CgroupLayout::Unified { controllers: split(controllers_of(&mount)) },
            (false, Some(mount)) => CgroupLayout::Hybrid {
                v1_controllers: v1,
                v2_controllers: split(controllers_of(&mount)),
                v2_mount: mount,
            },
            (false, None) => CgroupLayout::Legacy { controllers: v1 },
            (true, None) => CgroupLayout::None,
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

/// v1 super options mix controllers with flags (`rw`, `name=systemd`, `clone_children`...).
fn is_v1_controller(option: &str) -> bool {
    !matches!(option, "rw" | "ro" | "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode" | "")
        && !option.contains('=')
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_with_v2_controllers_is_hidden_from_crun() {
        let layout = CgroupLayout::from_mountinfo(HYBRID, |_| "hugetlb\n".into());
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
        let layout = CgroupLayout::from_mountinfo(HYBRID, |_| String::new());
        assert_eq!(layout.mount_to_hide_from_crun(), None);
    }

    #[test]
    fn unified_legacy_and_none() {
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = CgroupLayout::from_mountinfo(unified, |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup"));
            "cpuset cpu io memory pids\n".into()
        });
        assert!(matches!(layout, CgroupLayout::Unified { .. }));
        assert!(layout.can_limit(Controller::Memory) && layout.mount_to_hide_from_crun().is_none());

        let legacy: String = HYBRID.lines().filter(|l| !l.contains("cgroup2")).map(|l| format!("{l}\n")).collect();
        let layout = CgroupLayout::from_mountinfo(&legacy, |_| unreachable!());
        assert_eq!(layout, CgroupLayout::Legacy { controllers: vec!["cpu".into(), "memory".into()] });

        let layout = CgroupLayout::from_mountinfo("25 30 0:23 / /sys rw - sysfs sysfs rw\n", |_| unreachable!());
        assert_eq!(layout, CgroupLayout::None);
        assert!(!layout.can_limit(Controller::Cpu));
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\09"), r"/plain\09");
    }

    /// This machine's layout: printed so the CI log shows what msb saw.
    #[test]
    fn this_host_layout_is_detected() {
        let layout = CgroupLayout::detect();
        println!("{layout}");
        assert!(!layout.summary().is_empty());
    }
}
