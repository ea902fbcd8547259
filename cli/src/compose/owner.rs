//! Who a service's container runs as, so its secret files can be handed to that user.
//!
//! `user:` of the service wins, else the image's `USER`, else root. Numeric `uid[:gid]` needs
//! nothing else (a missing gid is 0, as Docker does for a uid without a passwd entry). A name
//! is looked up in the image's own `/etc/passwd` and `/etc/group`, read with
//! `docker create` + `docker cp` (a tar stream on stdout) + `docker rm`, which works for any
//! image, including `FROM scratch` ones without a shell; an image without those files can only
//! use numeric users.

use std::process::{Command, Stdio};

/// A user spec that could not be turned into ids. The message is the whole reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerProblem {
    /// What went wrong.
    pub reason: String,
    /// What to do about it.
    pub hint: String,
}

/// Resolves the uid and gid of the container's user.
pub fn resolve(user: Option<&str>, image: &str) -> Result<(u32, u32), OwnerProblem> {
    let spec = match user.filter(|u| !u.is_empty()) {
        Some(user) => user.to_owned(),
        None => image_user(image)?,
    };
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.as_str(), None),
    };
    if let (Ok(uid), None | Some("")) = (user.parse::<u32>(), group) {
        return Ok((uid, 0));
    }
    if let (Ok(uid), Some(Ok(gid))) = (user.parse::<u32>(), group.map(str::parse::<u32>)) {
        return Ok((uid, gid));
    }

    // A name somewhere: the image's own account files decide.
    let passwd = read_image_file(image, "/etc/passwd")?;
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, 0),
        Err(_) => lookup_passwd(&passwd, user).ok_or_else(|| OwnerProblem {
            reason: format!("user {user:?} is not in /etc/passwd of image {image}"),
            hint: "use a numeric `user:` (uid[:gid])".into(),
        })?,
    };
    let gid = match group.filter(|g| !g.is_empty()) {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_image_file(image, "/etc/group")?;
                lookup_group(&groups, group).ok_or_else(|| OwnerProblem {
                    reason: format!("group {group:?} is not in /etc/group of image {image}"),
                    hint: "use a numeric `user:` (uid:gid)".into(),
                })?
            }
        },
    };
    Ok((uid, gid))
}

/// The image's configured `USER`.
fn image_user(image: &str) -> Result<String, OwnerProblem> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Config.User}}", image])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| OwnerProblem {
            reason: format!("running docker image inspect failed: {e}"),
            hint: "check that the docker CLI is installed".into(),
        })?;
    if !output.status.success() {
        return Err(OwnerProblem {
            reason: format!(
                "image {image} is not present, so the owner of the secret files cannot be decided"
            ),
            hint: "pull or build it first (`docker dso compose pull` or `build`), or give the \
                   service a numeric `user:`"
                .into(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// One file of an image, read through a created (never started) container.
fn read_image_file(image: &str, path: &str) -> Result<String, OwnerProblem> {
    let problem = |reason: String| OwnerProblem {
        reason,
        hint: "use a numeric `user:` (uid[:gid])".into(),
    };
    let created = Command::new("docker")
        .args([
            "create",
            "--label",
            "dso.helper=1",
            "--entrypoint",
            "/dso-never-run",
            image,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| problem(format!("running docker create failed: {e}")))?;
    if !created.status.success() {
        return Err(problem(format!(
            "cannot read {path} of image {image}: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        )));
    }
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let copied = Command::new("docker")
        .args(["cp", "-L", &format!("{id}:{path}"), "-"])
        .stdin(Stdio::null())
        .output();
    let _ = Command::new("docker")
        .args(["rm", "-f", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let copied = copied.map_err(|e| problem(format!("running docker cp failed: {e}")))?;
    if !copied.status.success() {
        return Err(problem(format!("image {image} has no {path}")));
    }
    tar_single_file(&copied.stdout)
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .ok_or_else(|| problem(format!("docker cp of {path} gave an unreadable archive")))
}

/// The contents of the first regular file in a tar archive.
fn tar_single_file(archive: &[u8]) -> Option<&[u8]> {
    let mut offset = 0;
    while offset + 512 <= archive.len() {
        let header = &archive[offset..offset + 512];
        if header.iter().all(|&b| b == 0) {
            return None;
        }
        let size_field = std::str::from_utf8(&header[124..136]).ok()?;
        let size =
            usize::from_str_radix(size_field.trim_matches(|c| c == '\0' || c == ' '), 8).ok()?;
        let kind = header[156];
        let start = offset + 512;
        if kind == b'0' || kind == 0 {
            return archive.get(start..start + size);
        }
        offset = start + size.div_ceil(512) * 512;
    }
    None
}

/// `(uid, gid)` of `name` in passwd text.
fn lookup_passwd(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// gid of `name` in group text.
fn lookup_group(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == name)
            .then(|| fields[2].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_users_need_no_image() {
        assert_eq!(resolve(Some("1000"), "no-such-image:x"), Ok((1000, 0)));
        assert_eq!(resolve(Some("1000:50"), "no-such-image:x"), Ok((1000, 50)));
        assert_eq!(resolve(Some("0:"), "no-such-image:x"), Ok((0, 0)));
    }

    #[test]
    fn passwd_and_group_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\npostgres:x:101:104::/var/lib/pg:/bin/false\n";
        assert_eq!(lookup_passwd(passwd, "postgres"), Some((101, 104)));
        assert_eq!(lookup_passwd(passwd, "post"), None);
        assert_eq!(
            lookup_group("ssl-cert:x:105:postgres\n", "ssl-cert"),
            Some(105)
        );
        assert_eq!(lookup_group("broken\n", "broken"), None);
    }

    #[test]
    fn tar_member_is_extracted() {
        let mut header = [0u8; 512];
        header[..6].copy_from_slice(b"passwd");
        header[124..135].copy_from_slice(b"00000000005");
        header[156] = b'0';
        let mut archive = header.to_vec();
        archive.extend_from_slice(b"hello");
        archive.resize(512 + 512 + 1024, 0);
        assert_eq!(tar_single_file(&archive), Some(&b"hello"[..]));
        assert_eq!(tar_single_file(&[0u8; 1024]), None);
    }
}
