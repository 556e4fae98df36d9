//! Who a command runs as, from the guest's own `/etc/passwd` and `/etc/group`.
//!
//! The agent is a static binary dropped into any root: it must not load the guest's NSS modules,
//! so it reads the two files itself (missing files are empty: a busybox root may have neither).

use std::fs;

/// A resolved user: what `setgroups`, `setgid` and `setuid` are given, and `HOME`'s default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups: the primary group and every group that lists the user by name.
    pub(crate) groups: Vec<u32>,
    pub(crate) home: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum UserError {
    #[error("user `{0}` is not in the guest's /etc/passwd")]
    UnknownUser(String),
    #[error("group `{0}` is not in the guest's /etc/group")]
    UnknownGroup(String),
    #[error("`{0}` is not a user: use `name`, `uid`, `uid:gid` or `name:group`")]
    Invalid(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, uid, gid, _, home, ..] if !name.starts_with('#') => {
                Some(PasswdEntry { name, uid: uid.parse().ok()?, gid: gid.parse().ok()?, home })
            }
            _ => None,
        }
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, gid, rest @ ..] if !name.starts_with('#') => Some(GroupEntry {
                name,
                gid: gid.parse().ok()?,
                members: rest.first().map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).collect()).unwrap_or_default(),
            }),
            _ => None,
        }
    })
}

/// Resolves `spec` (`name`, `uid`, `uid:gid`, `name:group`; none or empty is root) against the
/// texts of `/etc/passwd` and `/etc/group`.
pub(crate) fn resolve(spec: Option<&str>, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("0");
    let (user, group_spec) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    if user.is_empty() || group_spec.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(UserError::Invalid(spec.to_owned()));
    }
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(passwd_entries(passwd).find(|e| e.name == user).ok_or_else(|| UserError::UnknownUser(user.to_owned()))?),
    };
    let uid = match (&entry, user.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(entry), Err(_)) => entry.uid,
        (None, Err(_)) => return Err(UserError::UnknownUser(user.to_owned())),
    };
    let gid = match group_spec {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group).find(|e| e.name == g).map(|e| e.gid).ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    // -1 means "unchanged" to the kernel's set*id calls: never a real id.
    if uid == u32::MAX || gid == u32::MAX {
        return Err(UserError::Invalid(spec.to_owned()));
    }
    let mut groups = vec![gid];
    if let Some(entry) = &entry {
        for g in group_entries(group).filter(|g| g.members.contains(&entry.name)) {
            if !groups.contains(&g.gid) && g.gid != u32::MAX {
                groups.push(g.gid);
            }
        }
    }
    let home = entry.as_ref().map(|e| e.home).filter(|h| !h.is_empty()).unwrap_or("/").to_owned();
    Ok(Identity { uid, gid, groups, home })
}

/// Resolves `spec` in the running guest.
pub(crate) fn resolve_in_guest(spec: Option<&str>) -> Result<Identity, UserError> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:100::::\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:root\nbad:x:notanumber:app\n";

    fn id(uid: u32, gid: u32, groups: &[u32], home: &str) -> Identity {
        Identity { uid, gid, groups: groups.to_vec(), home: home.into() }
    }

    #[test]
    fn users_resolve_as_docker_does() {
        let cases: &[(Option<&str>, Result<Identity, UserError>)] = &[
            (None, Ok(id(0, 0, &[0, 10], "/root"))),
            (Some(""), Ok(id(0, 0, &[0, 10], "/root"))),
            (Some("root"), Ok(id(0, 0, &[0, 10], "/root"))),
            (Some("app"), Ok(id(1000, 1000, &[1000, 50], "/home/app"))),
            (Some("1000"), Ok(id(1000, 1000, &[1000, 50], "/home/app"))),
            (Some("app:staff"), Ok(id(1000, 50, &[50], "/home/app"))),
            (Some("app:0"), Ok(id(1000, 0, &[0, 50], "/home/app"))),
            (Some("4242"), Ok(id(4242, 0, &[0], "/"))),
            (Some("4242:4343"), Ok(id(4242, 4343, &[4343], "/"))),
            (Some("nohome"), Ok(id(1001, 100, &[100], "/"))),
            (Some("bob"), Err(UserError::UnknownUser("bob".into()))),
            (Some("app:nogroup"), Err(UserError::UnknownGroup("nogroup".into()))),
            (Some(":1"), Err(UserError::Invalid(":1".into()))),
            (Some("1:"), Err(UserError::Invalid("1:".into()))),
            (Some("1:2:3"), Err(UserError::Invalid("1:2:3".into()))),
            (Some("4294967295"), Err(UserError::Invalid("4294967295".into()))),
            (Some("0:4294967295"), Err(UserError::Invalid("0:4294967295".into()))),
        ];
        for (spec, expected) in cases {
            assert_eq!(&resolve(*spec, PASSWD, GROUP), expected, "{spec:?}");
        }
    }

    #[test]
    fn a_root_without_passwd_is_root() {
        assert_eq!(resolve(None, "", ""), Ok(id(0, 0, &[0], "/")));
        assert_eq!(resolve(Some("65534:65534"), "", ""), Ok(id(65534, 65534, &[65534], "/")));
        assert_eq!(
            resolve(Some("nobody"), "", "").unwrap_err().to_string(),
            "user `nobody` is not in the guest's /etc/passwd"
        );
    }
}
