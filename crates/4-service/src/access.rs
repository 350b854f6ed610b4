//! Who may ask what (issue 12): root may do everything; another local user
//! may ask about the paths the configuration grants to them (by user name
//! or by a group they are in), and nothing else. Identity comes from
//! `SO_PEERCRED`; names are looked up with `getpwuid_r` and
//! `getgrouplist`, at each connection (so a grant follows group changes).

use std::ffi::{CStr, CString};

use cj_types::path::is_at_or_below;

/// Groups looked at per user, at most.
const GROUPS_MAX: usize = 1024;
/// Buffer for one passwd/group entry.
const NSS_BUFFER_BYTES: usize = 16 * 1024;

/// One `[[grant]]` of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub who: Who,
    /// Absolute paths; the grant covers each and everything below.
    pub paths: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    User(String),
    Group(String),
}

/// What one connection may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Root (the daemon's admin uid).
    All,
    /// The granted paths (none nested in another), for this user.
    Paths { user: String, paths: Vec<Vec<u8>> },
}

impl Access {
    /// Whether `path` may be shown to this client.
    pub fn sees(&self, path: &[u8]) -> bool {
        match self {
            Access::All => true,
            Access::Paths { paths, .. } => paths.iter().any(|g| is_at_or_below(path, g)),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Access::All)
    }

    /// The scopes a request covers: the requested path (which must be
    /// inside a grant), or else every granted path. `None` (root, no
    /// path): everything.
    pub fn scopes(&self, requested: Option<&[u8]>) -> Result<Option<Vec<Vec<u8>>>, String> {
        match (self, requested) {
            (Access::All, None) => Ok(None),
            (Access::All, Some(p)) => Ok(Some(vec![p.to_vec()])),
            (Access::Paths { paths, .. }, None) => Ok(Some(paths.clone())),
            (Access::Paths { user, .. }, Some(p)) => {
                if self.sees(p) {
                    Ok(Some(vec![p.to_vec()]))
                } else {
                    Err(format!(
                        "permission denied: {} is not granted to user {user} (the \
                         administrator grants paths with [[grant]] in the daemon's \
                         configuration)",
                        cj_types::log_path(p)
                    ))
                }
            }
        }
    }
}

/// The access of the peer `uid` (primary group `gid`).
pub fn of_peer(uid: u32, gid: u32, admin_uid: u32, grants: &[Grant]) -> Option<Access> {
    if uid == admin_uid {
        return Some(Access::All);
    }
    let user = user_name(uid)?;
    let groups = group_names(&user, gid);
    let mut paths: Vec<Vec<u8>> = grants
        .iter()
        .filter(|g| match &g.who {
            Who::User(u) => *u == user,
            Who::Group(name) => groups.contains(name),
        })
        .flat_map(|g| g.paths.iter().cloned())
        .collect();
    if paths.is_empty() {
        return None;
    }
    paths.sort();
    paths.dedup();
    let all = paths.clone();
    // A path below another granted one adds nothing.
    paths.retain(|p| !all.iter().any(|q| q != p && is_at_or_below(p, q)));
    Some(Access::Paths { user, paths })
}

/// The login name of `uid`, or its number.
pub fn user_name(uid: u32) -> Option<String> {
    Some(passwd_of(uid).map_or_else(|| uid.to_string(), |(name, _)| name))
}

/// The groups (numbers) user `uid` is in, primary group included; empty if
/// the user is unknown.
pub fn groups_of(uid: u32) -> Vec<u32> {
    passwd_of(uid).map_or_else(Vec::new, |(name, gid)| group_ids(&name, gid))
}

/// The login name and primary group of `uid`, if it is known.
fn passwd_of(uid: u32) -> Option<(String, u32)> {
    let mut buf = vec![0u8; NSS_BUFFER_BYTES];
    // SAFETY: passwd is plain data; getpwuid_r writes into pwd and buf.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    Some((name.to_string_lossy().into_owned(), pwd.pw_gid))
}

/// The groups `user` is in (primary group `gid` included).
fn group_ids(user: &str, gid: u32) -> Vec<u32> {
    let Ok(cuser) = CString::new(user) else {
        return vec![gid];
    };
    let mut gids = vec![0 as libc::gid_t; GROUPS_MAX];
    let mut n = GROUPS_MAX as libc::c_int;
    // SAFETY: gids has room for n entries.
    let rc = unsafe { libc::getgrouplist(cuser.as_ptr(), gid, gids.as_mut_ptr(), &mut n) };
    let n = if rc < 0 {
        GROUPS_MAX
    } else {
        n.max(0) as usize
    };
    gids.truncate(n);
    if !gids.contains(&gid) {
        gids.push(gid);
    }
    gids
}

/// The names of the groups `user` is in (primary group `gid` included).
fn group_names(user: &str, gid: u32) -> Vec<String> {
    group_ids(user, gid)
        .into_iter()
        .filter_map(group_name)
        .collect()
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; NSS_BUFFER_BYTES];
    // SAFETY: as in passwd_of.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    let rc =
        unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: gr_name points into buf, NUL-terminated.
    Some(
        unsafe { CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(who: Who, paths: &[&str]) -> Grant {
        Grant {
            who,
            paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
        }
    }

    #[test]
    fn root_sees_everything_and_a_user_only_its_grants() {
        assert_eq!(of_peer(0, 0, 0, &[]), Some(Access::All));
        // uid 0's name is "root" on every Linux; a grant to "root" for
        // another admin uid shows how names are matched.
        let grants = [
            grant(Who::User("root".into()), &["/srv/a", "/srv/a/b", "/srv/c"]),
            grant(Who::Group("nonexistent-group".into()), &["/x"]),
        ];
        let a = of_peer(0, 0, 12345, &grants).unwrap();
        let Access::Paths { user, paths } = &a else {
            panic!("{a:?}")
        };
        assert_eq!(user, "root");
        assert_eq!(paths, &vec![b"/srv/a".to_vec(), b"/srv/c".to_vec()]);
        assert!(a.sees(b"/srv/a/x") && a.sees(b"/srv/c") && !a.sees(b"/srv/ab"));
        assert!(!a.sees(b"/x"));
        assert!(a.scopes(Some(b"/srv")).is_err());
        assert_eq!(
            a.scopes(Some(b"/srv/a/q")).unwrap(),
            Some(vec![b"/srv/a/q".to_vec()])
        );
        assert_eq!(a.scopes(None).unwrap().unwrap().len(), 2);
        // No grant: no access at all.
        assert_eq!(of_peer(0, 0, 12345, &grants[1..]), None);
    }
}

/// The peer of one connection.
#[derive(Clone, Debug)]
pub struct Client {
    pub uid: u32,
    pub access: Access,
}

impl Client {
    /// Whose consumers this client may use (`None`: root, every one).
    pub fn owner_filter(&self) -> Option<u32> {
        (!self.access.is_admin()).then_some(self.uid)
    }
}
