//! Pure helpers over a container's inspect result: the body of its replacement, whether it is
//! stateful, and its address for a proxied port. No Docker calls here, so each rule is
//! unit-tested on hand-made inspect data.
//!
//! An inspect result holds the container's environment, secret values included: nothing here
//! formats or logs a config.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, NetworkingConfig,
};

use crate::secret::SecretValue;

/// Label: the generation directory of the secret files on the host.
pub const FILES_DIR_LABEL: &str = "dso.files.dir";
/// Label: where the generation directory is mounted in the container.
pub const FILES_TARGET_LABEL: &str = "dso.files.target";
/// Label: the rotation that created this container (recovery finds it by this).
pub const ROTATION_LABEL: &str = "dso.rotation.id";

/// The replacement of a container, before it is created.
pub struct Replacement {
    /// The create body (with the new environment).
    pub body: ContainerCreateBody,
    /// Networks to attach after create (API 1.41 accepts one network at create time).
    pub extra_networks: Vec<(String, EndpointSettings)>,
}

/// The container's name without Docker's leading `/`.
pub fn name_of(inspect: &ContainerInspectResponse) -> String {
    inspect
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned()
}

/// The container's labels.
pub fn labels_of(inspect: &ContainerInspectResponse) -> HashMap<String, String> {
    inspect
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
}

/// Why a container must never run twice at once, if it must not: a writable named volume or a
/// writable bind mount (the generation directory of dso is read-only and does not count).
pub fn stateful_reason(inspect: &ContainerInspectResponse) -> Option<String> {
    let mounts = inspect.mounts.as_deref().unwrap_or_default();
    mounts.iter().find_map(|mount| {
        if mount.rw != Some(true) {
            return None;
        }
        let destination = mount.destination.as_deref().unwrap_or("?");
        match mount.typ.as_deref() {
            Some("volume") => Some(format!(
                "it mounts volume {} writable at {destination}",
                mount.name.as_deref().unwrap_or("?")
            )),
            Some("bind") => Some(format!(
                "it mounts {} writable at {destination}",
                mount.source.as_deref().unwrap_or("?")
            )),
            _ => None,
        }
    })
}

/// True when the container publishes host ports (compose kept them: they were not proxied).
/// Two containers cannot bind one host port, so such a container is restarted, not rolled.
pub fn publishes_host_ports(inspect: &ContainerInspectResponse) -> bool {
    inspect
        .host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref())
        .is_some_and(|bindings| {
            bindings
                .values()
                .any(|b| b.as_ref().is_some_and(|b| !b.is_empty()))
        })
}

/// The container's `IP:target` on `prefer` when attached there, else on `default_network`,
/// else on the first of its networks in name order (IPv4 first). Returns network and address.
pub fn address(
    inspect: &ContainerInspectResponse,
    prefer: Option<&str>,
    default_network: &str,
    target: u16,
) -> Option<(String, String)> {
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    let network = prefer
        .filter(|p| networks.contains_key(*p))
        .map(str::to_owned)
        .or_else(|| {
            networks
                .contains_key(default_network)
                .then(|| default_network.to_owned())
        })
        .or_else(|| networks.keys().min().cloned())?;
    let settings = networks.get(&network)?;
    let v4 = settings.ip_address.as_deref().filter(|s| !s.is_empty());
    let v6 = settings
        .global_ipv6_address
        .as_deref()
        .filter(|s| !s.is_empty());
    let address = match (v4, v6) {
        (Some(v4), _) => format!("{v4}:{target}"),
        (None, Some(v6)) => format!("[{v6}]:{target}"),
        (None, None) => return None,
    };
    Some((network, address))
}

// LIMITATION: the environment read from `docker inspect` and the one built here are plain
// `String`s inside bollard's types, not zeroized when dropped — bollard would need a config type
// holding `SecretValue`s to lift it (the values sit in the container's config on the daemon
// anyway, as env injection implies).
/// The new environment: `env` of the old container with each `(variable, value)` replaced
/// (or added). Values were checked to be UTF-8 without NUL before.
pub fn replace_env(old: &[String], values: &[(String, SecretValue)]) -> Vec<String> {
    let mut env: Vec<String> = old
        .iter()
        .filter(|entry| {
            let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
            !values.iter().any(|(variable, _)| variable == name)
        })
        .cloned()
        .collect();
    for (variable, value) in values {
        env.push(format!(
            "{variable}={}",
            String::from_utf8_lossy(value.expose())
        ));
    }
    env
}

/// The body of the replacement of `old`: the same config, host config and networks, with the
/// environment `env`, the generation directory `new_files` mounted instead of the old one, the
/// labels updated, no host port bindings when `drop_port_bindings`, and the old container's
/// anonymous and named volumes mounted again (they would otherwise be new, empty ones).
// LIMITATION: static IP addresses (ipv4_address in compose) are not copied: two containers
// cannot hold one address at once — such a service gets a new address on rotation.
pub fn replacement(
    old: &ContainerInspectResponse,
    env: Vec<String>,
    new_files: Option<&Path>,
    rotation_id: &str,
    image: String,
    drop_port_bindings: bool,
) -> Replacement {
    let config = old.config.clone().unwrap_or_default();
    let mut host = old.host_config.clone().unwrap_or_default();
    let old_id = old.id.clone().unwrap_or_default();
    let short_id: String = old_id.chars().take(12).collect();

    // Labels: the new generation directory and the rotation that made it.
    // LIMITATION: compose's `com.docker.compose.config-hash` is copied as it is, so after a
    // rotation to new values the next `docker dso up` sees a changed hash and recreates the
    // container once (compose's stop-and-start, not a rotation) — computing compose's hash of
    // the new definition (`compose config --hash`) would lift it.
    let mut labels = config.labels.clone().unwrap_or_default();
    let old_files = labels.get(FILES_DIR_LABEL).cloned();
    if let Some(dir) = new_files {
        labels.insert(FILES_DIR_LABEL.into(), dir.display().to_string());
    }
    labels.insert(ROTATION_LABEL.into(), rotation_id.to_owned());

    // Mounts: swap the generation directory; keep every volume of the old container.
    if let (Some(old_dir), Some(new_dir)) = (old_files.as_deref(), new_files) {
        let new_dir = new_dir.display().to_string();
        if let Some(binds) = host.binds.as_mut() {
            for bind in binds.iter_mut() {
                if let Some(rest) = bind.strip_prefix(old_dir).filter(|r| r.starts_with(':')) {
                    *bind = format!("{new_dir}{rest}");
                }
            }
        }
        if let Some(mounts) = host.mounts.as_mut() {
            for mount in mounts.iter_mut() {
                if mount.source.as_deref() == Some(old_dir) {
                    mount.source = Some(new_dir.clone());
                }
            }
        }
    }
    let mut covered: Vec<String> = host
        .binds
        .iter()
        .flatten()
        .filter_map(|b| b.split(':').nth(1).map(str::to_owned))
        .collect();
    covered.extend(
        host.mounts
            .iter()
            .flatten()
            .filter_map(|m| m.target.clone()),
    );
    for mount in old.mounts.iter().flatten() {
        let (Some("volume"), Some(name), Some(dest)) = (
            mount.typ.as_deref(),
            mount.name.as_deref(),
            mount.destination.as_deref(),
        ) else {
            continue;
        };
        if covered.iter().any(|c| c == dest) {
            continue;
        }
        let mode = if mount.rw == Some(false) { ":ro" } else { "" };
        host.binds
            .get_or_insert_with(Vec::new)
            .push(format!("{name}:{dest}{mode}"));
    }
    if drop_port_bindings {
        host.port_bindings = None;
        host.publish_all_ports = Some(false);
    }

    // Networks: the primary one (network mode) at create, the others attached afterwards.
    let endpoint = |settings: &EndpointSettings| EndpointSettings {
        aliases: settings.aliases.as_ref().map(|aliases| {
            aliases
                .iter()
                .filter(|a| **a != short_id && **a != old_id)
                .cloned()
                .collect()
        }),
        links: settings.links.clone(),
        driver_opts: settings.driver_opts.clone(),
        ..Default::default()
    };
    let networks = old
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let primary = host.network_mode.clone().unwrap_or_default();
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    let mut endpoints = HashMap::new();
    let mut extra_networks = Vec::new();
    for name in names {
        let settings = endpoint(&networks[name]);
        if *name == primary || (endpoints.is_empty() && !networks.contains_key(&primary)) {
            endpoints.insert(name.clone(), settings);
        } else {
            extra_networks.push((name.clone(), settings));
        }
    }

    // Docker sets the hostname to the short id when none is given; keep only a chosen one.
    let hostname = config.hostname.clone().filter(|h| *h != short_id);

    let body = ContainerCreateBody {
        hostname,
        domainname: config.domainname.clone(),
        user: config.user.clone(),
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        exposed_ports: config.exposed_ports.clone(),
        tty: config.tty,
        open_stdin: config.open_stdin,
        stdin_once: config.stdin_once,
        env: Some(env),
        cmd: config.cmd.clone(),
        healthcheck: config.healthcheck.clone(),
        args_escaped: config.args_escaped,
        image: Some(image),
        volumes: config.volumes.clone(),
        working_dir: config.working_dir.clone(),
        entrypoint: config.entrypoint.clone(),
        network_disabled: config.network_disabled,
        on_build: config.on_build.clone(),
        labels: Some(labels),
        stop_signal: config.stop_signal.clone(),
        stop_timeout: config.stop_timeout,
        shell: config.shell.clone(),
        host_config: Some(host),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
    };
    Replacement {
        body,
        extra_networks,
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, HostConfig, MountPoint, NetworkSettings, PortBinding};

    use super::*;

    fn inspect() -> ContainerInspectResponse {
        let network = |ip: &str| EndpointSettings {
            ip_address: Some(ip.into()),
            aliases: Some(vec!["web".into(), "0123456789ab".into()]),
            ..Default::default()
        };
        ContainerInspectResponse {
            id: Some("0123456789abcdef".into()),
            name: Some("/p_web_1".into()),
            config: Some(ContainerConfig {
                hostname: Some("0123456789ab".into()),
                env: Some(vec!["A=old".into(), "PLAIN=x".into()]),
                labels: Some(HashMap::from([(
                    FILES_DIR_LABEL.to_owned(),
                    "/run/dso/compose/p/web/g1".to_owned(),
                )])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some("p_default".into()),
                binds: Some(vec!["/run/dso/compose/p/web/g1:/run/secrets/dso:ro".into()]),
                port_bindings: Some(HashMap::from([(
                    "9000/tcp".to_owned(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some("9000".into()),
                    }]),
                )])),
                ..Default::default()
            }),
            mounts: Some(vec![
                MountPoint {
                    typ: Some("bind".into()),
                    source: Some("/run/dso/compose/p/web/g1".into()),
                    destination: Some("/run/secrets/dso".into()),
                    rw: Some(false),
                    ..Default::default()
                },
                MountPoint {
                    typ: Some("volume".into()),
                    name: Some("f00d".into()),
                    destination: Some("/data".into()),
                    rw: Some(true),
                    ..Default::default()
                },
            ]),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    ("p_default".to_owned(), network("172.20.0.2")),
                    ("a_other".to_owned(), network("172.21.0.2")),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_replacement_keeps_config_and_swaps_what_rotates() {
        let old = inspect();
        let env = replace_env(
            old.config.as_ref().unwrap().env.as_ref().unwrap(),
            &[("A".into(), SecretValue::from_slice(b"new"))],
        );
        assert_eq!(env, ["PLAIN=x", "A=new"]);
        let new_dir = Path::new("/run/dso/compose/p/web/g2");
        let r = replacement(&old, env, Some(new_dir), "r1", "img".into(), true);
        let host = r.body.host_config.as_ref().unwrap();
        assert_eq!(
            host.binds.as_deref().unwrap(),
            [
                "/run/dso/compose/p/web/g2:/run/secrets/dso:ro",
                "f00d:/data"
            ]
        );
        assert!(host.port_bindings.is_none());
        let labels = r.body.labels.as_ref().unwrap();
        assert_eq!(labels[FILES_DIR_LABEL], "/run/dso/compose/p/web/g2");
        assert_eq!(labels[ROTATION_LABEL], "r1");
        assert_eq!(
            r.body.hostname, None,
            "the old short id is not reused as hostname"
        );
        let endpoints = r.body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(endpoints.keys().collect::<Vec<_>>(), ["p_default"]);
        assert_eq!(endpoints["p_default"].aliases.as_deref().unwrap(), ["web"]);
        assert_eq!(r.extra_networks.len(), 1);
        assert_eq!(r.extra_networks[0].0, "a_other");
    }

    #[test]
    fn stateful_and_addresses() {
        let old = inspect();
        let reason = stateful_reason(&old).unwrap();
        assert!(
            reason.contains("f00d") && reason.contains("/data"),
            "{reason}"
        );
        assert!(publishes_host_ports(&old));
        assert_eq!(
            address(&old, None, "p_default", 80),
            Some(("p_default".into(), "172.20.0.2:80".into()))
        );
        assert_eq!(
            address(&old, Some("a_other"), "p_default", 80),
            Some(("a_other".into(), "172.21.0.2:80".into()))
        );
        assert_eq!(
            address(&old, None, "missing", 80),
            Some(("a_other".into(), "172.21.0.2:80".into()))
        );
        let mut read_only = old.clone();
        read_only.mounts.as_mut().unwrap().truncate(1);
        assert_eq!(stateful_reason(&read_only), None);
    }
}
