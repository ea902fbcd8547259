//! Who is on the other end of the IPC socket, and whether they may talk to the agent.
//!
//! The kernel reports the peer's uid, gid and pid (SO_PEERCRED) at connect time; nothing the
//! client sends can change them. Allowed: root, the agent's own uid, and members of group
//! `dso` (primary group, or a supplementary group as the user database lists it). Everyone
//! else is refused before a byte of the request is read.

use std::ffi::{CStr, CString};
use std::os::fd::AsRawFd;

/// The group whose members may use the agent.
pub const GROUP: &str = "dso";

/// Credentials of a connected peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// The peer credentials of a connected unix socket.
pub fn peer_cred(socket: &impl AsRawFd) -> std::io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` its size; the fd is a live socket owned by
    // the caller for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Why a peer is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// uid 0.
    Root,
    /// The agent's own uid.
    Owner,
    /// A member of group `dso`.
    Group,
}

/// The access rule, with the group lookup supplied so it can be tested.
pub fn decide(
    peer: PeerCred,
    own_uid: u32,
    dso_gid: Option<u32>,
    groups_of: impl Fn(u32, u32) -> Vec<u32>,
) -> Option<Allowed> {
    if peer.uid == 0 {
        return Some(Allowed::Root);
    }
    if peer.uid == own_uid {
        return Some(Allowed::Owner);
    }
    let gid = dso_gid?;
    if peer.gid == gid || groups_of(peer.uid, peer.gid).contains(&gid) {
        return Some(Allowed::Group);
    }
    None
}

/// Whether `peer` may use an agent running as `own_uid`, looking group `dso` up on the host.
pub fn allowed(peer: PeerCred, own_uid: u32) -> Option<Allowed> {
    decide(peer, own_uid, group_id(GROUP), supplementary_groups)
}

/// The gid of a group by name, or `None` when it does not exist.
pub fn group_id(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    let mut group: libc::group = unsafe_zeroed_group();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live, writable local of the right type and size;
    // getgrnam_r writes strings only into `buffer`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}

/// The groups of uid `uid` with primary group `gid`, from the user database.
pub fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Some(name) = user_name(uid) else {
        return vec![gid];
    };
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let before = count;
        // SAFETY: `name` is NUL-terminated and `groups` holds `count` writable gids.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        // Too small: `count` now holds the size needed (guard against a non-growing answer).
        if count <= before {
            count = before * 2;
        }
        if count > 65_536 {
            return vec![gid];
        }
    }
}

fn user_name(uid: u32) -> Option<CString> {
    // SAFETY: an all-zero passwd is a valid value of this plain C struct.
    let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: pointers refer to live, writable locals; strings go into `buffer` only.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut passwd,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || passwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name points to a NUL-terminated string in `buffer`,
    // which is still alive here.
    Some(unsafe { CStr::from_ptr(passwd.pw_name) }.to_owned())
}

fn unsafe_zeroed_group() -> libc::group {
    // SAFETY: an all-zero group is a valid value of this plain C struct.
    unsafe { std::mem::zeroed() }
}

/// This process's effective uid.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerCred {
        PeerCred { pid: 1, uid, gid }
    }

    #[test]
    fn root_owner_and_group_members_are_allowed_others_not() {
        let groups = |uid: u32, gid: u32| {
            if uid == 1002 {
                vec![gid, 900]
            } else {
                vec![gid]
            }
        };
        assert_eq!(
            decide(peer(0, 0), 1000, Some(900), groups),
            Some(Allowed::Root)
        );
        assert_eq!(
            decide(peer(1000, 1000), 1000, Some(900), groups),
            Some(Allowed::Owner)
        );
        assert_eq!(
            decide(peer(1001, 900), 1000, Some(900), groups),
            Some(Allowed::Group)
        );
        assert_eq!(
            decide(peer(1002, 1002), 1000, Some(900), groups),
            Some(Allowed::Group)
        );
        assert_eq!(decide(peer(1003, 1003), 1000, Some(900), groups), None);
        assert_eq!(
            decide(peer(1002, 1002), 1000, None, groups),
            None,
            "no group dso"
        );
    }

    #[test]
    fn the_user_database_answers_for_root() {
        assert_eq!(group_id("root"), Some(0));
        assert!(group_id("no-such-group-dso-test").is_none());
        assert!(supplementary_groups(0, 0).contains(&0));
    }

    #[test]
    fn peer_credentials_of_a_socket_pair_are_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = peer_cred(&a).unwrap();
        assert_eq!(cred.uid, own_uid());
        assert_eq!(cred.pid, std::process::id() as i32);
    }
}
