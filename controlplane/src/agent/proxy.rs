//! The agent's side of `dso-proxy`: adopt the proxy on `RUNTIME/proxy.sock` or start one,
//! watch its health every 250 ms, restart it when it died while routes need it, and reconcile
//! routes both ways with what the managed containers' labels say.
//!
//! Reconcile compares, route by route, the proxy's listen address and upstreams with the
//! desired ones (each running container's address on the project's default network, else its
//! first network by name, plus the labelled container port) and changes only what differs;
//! routes the proxy holds that no managed container names any more are deleted. Services
//! with a rotation running are left alone: the rotation engine owns their routes then.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use dataplane::api::RouteRequest;
use dataplane::client::ProxyClient;
use tracing::{debug, info, warn};

use super::paths::Paths;
use super::state::{RouteStatus, ServiceView, Shared, lock};
use crate::docker::Docker;
use crate::rotation::{ManagedService, NEXT_SUFFIX};

/// Environment variable naming the `dso-proxy` binary.
pub const PROXY_BIN_ENV: &str = "DSO_PROXY_BIN";
/// Interval of the health check.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// How long one health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a started proxy may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A route as the labels want it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Listen address.
    pub listen: String,
    /// Upstreams in container-name order.
    pub upstreams: Vec<String>,
    /// `project/service` that owns it.
    pub service: String,
}

/// What a reconcile changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Routes to create or update.
    pub put: Vec<String>,
    /// Routes to delete.
    pub delete: Vec<String>,
}

/// The supervised proxy.
pub struct Supervisor {
    paths: Paths,
    client: ProxyClient,
    child: Option<Child>,
}

impl Supervisor {
    /// A supervisor of the proxy on `paths.proxy_socket`.
    pub fn new(paths: Paths) -> Self {
        let client = ProxyClient::new(&paths.proxy_socket);
        Self {
            paths,
            client,
            child: None,
        }
    }

    /// The files it manages.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Whether the proxy answers now.
    pub async fn healthy(&self) -> Option<dataplane::api::Health> {
        match tokio::time::timeout(HEALTH_TIMEOUT, self.client.health()).await {
            Ok(Ok(health)) => Some(health),
            _ => None,
        }
    }

    /// Starts a proxy and waits until it answers.
    pub async fn start(&mut self) -> anyhow::Result<u32> {
        use anyhow::Context as _;
        // Reap a child of ours that died, so it does not linger as a zombie.
        if let Some(mut child) = self.child.take() {
            let _ = child.try_wait();
        }
        let binary = proxy_binary();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.proxy_log)
            .with_context(|| format!("opening {}", self.paths.proxy_log.display()))?;
        let log_err = log.try_clone()?;
        // Own process group: the proxy outlives the agent and never gets its signals.
        let child = crate::vault::without_key_env(&mut Command::new(&binary))
            .arg("--control")
            .arg(&self.paths.proxy_socket)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        std::fs::write(&self.paths.proxy_pid, format!("{pid}\n"))
            .with_context(|| format!("writing {}", self.paths.proxy_pid.display()))?;
        self.child = Some(child);
        info!(pid, path = %self.paths.proxy_socket.display(), "proxy started");

        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        while tokio::time::Instant::now() < deadline {
            if self.healthy().await.is_some() {
                return Ok(pid);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!(
            "the proxy started as pid {pid} did not answer on {} within {}s (see {})",
            self.paths.proxy_socket.display(),
            START_DEADLINE.as_secs(),
            self.paths.proxy_log.display()
        )
    }

    /// Reaps our child if it exited.
    pub fn reap(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            warn!(pid = child.id(), status = %status, "proxy exited");
            self.child = None;
        }
    }
}

/// The `dso-proxy` binary: `DSO_PROXY_BIN`, else next to this program, else on `PATH`.
pub fn proxy_binary() -> PathBuf {
    super::paths::sibling_binary(PROXY_BIN_ENV, "dso-proxy")
}

/// The upstream of a container for `target`: its address on `default_network` when attached
/// there, else on its first network by name; IPv4 preferred.
pub fn upstream_of(
    inspect: &ContainerInspectResponse,
    default_network: &str,
    target: u16,
) -> Option<String> {
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    let name = if networks.contains_key(default_network) {
        default_network.to_owned()
    } else {
        networks.keys().min()?.clone()
    };
    let settings = networks.get(&name)?;
    let v4 = settings.ip_address.as_deref().filter(|s| !s.is_empty());
    let v6 = settings
        .global_ipv6_address
        .as_deref()
        .filter(|s| !s.is_empty());
    match (v4, v6) {
        (Some(v4), _) => Some(format!("{v4}:{target}")),
        (None, Some(v6)) => Some(format!("[{v6}]:{target}")),
        (None, None) => None,
    }
}

/// The routes the labels of `services` want, by route name, with every route name any
/// managed container labels (running or not) in the second set.
pub async fn desired_routes(
    docker: &Docker,
    services: &[ManagedService],
) -> (BTreeMap<String, Desired>, BTreeSet<String>) {
    let mut desired = BTreeMap::new();
    let mut named = BTreeSet::new();
    for service in services {
        for route in &service.routes {
            named.insert(route.route.clone());
        }
        // LIMITATION: a project whose default network has a custom `name:` is routed through
        // its first network by name — a label with the network name written by `up` would
        // lift it.
        let default_network = format!("{}_default", service.key.project);
        let mut inspected = Vec::new();
        for container in service.containers.iter().filter(|c| c.running) {
            if container.name.ends_with(NEXT_SUFFIX) {
                continue;
            }
            match docker.inspect(&container.id).await {
                Ok(Some(inspect)) => inspected.push(inspect),
                Ok(None) => {}
                Err(err) => debug!(container = %container.name, error = %err, "inspect failed"),
            }
        }
        // A service without a running container keeps whatever route it has.
        if inspected.is_empty() {
            continue;
        }
        for route in &service.routes {
            let upstreams: Vec<String> = inspected
                .iter()
                .filter_map(|i| upstream_of(i, &default_network, route.target))
                .collect();
            if upstreams.is_empty() {
                continue;
            }
            desired.insert(
                route.route.clone(),
                Desired {
                    listen: route.listen.clone(),
                    upstreams,
                    service: service.key.to_string(),
                },
            );
        }
    }
    (desired, named)
}

/// What must change so the proxy's routes match `desired`. Routes of `skip` services are left
/// alone; routes no managed container names (`named`) are deleted.
pub fn plan_changes(
    current: &[dataplane::api::RouteView],
    desired: &BTreeMap<String, Desired>,
    named: &BTreeSet<String>,
    skip: &dyn Fn(&str) -> bool,
) -> Changes {
    let mut changes = Changes::default();
    for (name, want) in desired {
        if skip(&want.service) {
            continue;
        }
        let same = current
            .iter()
            .any(|r| &r.name == name && r.listen == want.listen && r.upstreams == want.upstreams);
        if !same {
            changes.put.push(name.clone());
        }
    }
    for route in current {
        if !named.contains(&route.name) && !desired.contains_key(&route.name) {
            changes.delete.push(route.name.clone());
        }
    }
    changes
}

/// Makes the proxy's routes match the managed containers. Returns how many routes changed.
pub async fn reconcile(
    state: &Shared,
    docker: &Docker,
    services: &[ManagedService],
) -> anyhow::Result<usize> {
    let client = &state.proxy_client;
    let (desired, named) = desired_routes(docker, services).await;
    let current = client.routes().await?;
    let detector = state.detector.clone();
    let changes = plan_changes(&current, &desired, &named, &|s| detector.busy(s));

    for name in &changes.put {
        let want = &desired[name];
        // The listen address is fixed for a route's life: a different one means a new route.
        if current
            .iter()
            .any(|r| &r.name == name && r.listen != want.listen)
        {
            let _ = client.delete_route(name).await;
        }
        let request = RouteRequest {
            listen: want.listen.clone(),
            upstreams: want.upstreams.clone(),
            drain_timeout_ms: None,
        };
        match client.put_route(name, &request).await {
            Ok(change) => info!(
                route = %name,
                generation = change.generation,
                upstreams = ?want.upstreams,
                "route reconciled"
            ),
            Err(err) => warn!(route = %name, error = %err, "route reconcile failed"),
        }
    }
    for name in &changes.delete {
        match client.delete_route(name).await {
            Ok(_) => info!(route = %name, "stale route deleted"),
            Err(err) => warn!(route = %name, error = %err, "stale route delete failed"),
        }
    }

    // The status view of the services and their routes.
    let routes = client.routes().await.unwrap_or_default();
    *lock(&state.services) = service_views(services, &routes);
    let changed = changes.put.len() + changes.delete.len();
    {
        let mut proxy = lock(&state.proxy);
        proxy.routes = routes.len();
        proxy.last_reconcile_changed = changed;
    }
    Ok(changed)
}

/// The status view of `services`, with the generation and connections of each route from
/// the proxy's `routes` (empty when the proxy does not answer).
pub fn service_views(
    services: &[ManagedService],
    routes: &[dataplane::api::RouteView],
) -> Vec<ServiceView> {
    services
        .iter()
        .map(|s| ServiceView {
            service: s.key.to_string(),
            strategy: format!("{:?}", s.strategy).to_lowercase(),
            containers: s.containers.iter().map(|c| c.name.clone()).collect(),
            references: s
                .references
                .iter()
                .map(|r| r.reference.to_string())
                .collect(),
            routes: s
                .routes
                .iter()
                .map(|r| {
                    let live = routes.iter().find(|v| v.name == r.route);
                    RouteStatus {
                        route: r.route.clone(),
                        listen: r.listen.clone(),
                        generation: live.map(|v| v.generation),
                        active: live.map(|v| v.generations.iter().map(|g| g.active).sum()),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Whether any managed service has a proxied port (then the proxy must run).
pub fn needed(services: &[ManagedService]) -> bool {
    services.iter().any(|s| !s.routes.is_empty())
}

#[cfg(test)]
mod tests {
    use dataplane::api::RouteView;

    use super::*;

    fn view(name: &str, listen: &str, upstreams: &[&str]) -> RouteView {
        RouteView {
            name: name.into(),
            listen: listen.into(),
            local_addr: listen.into(),
            upstreams: upstreams.iter().map(|s| (*s).to_owned()).collect(),
            generation: 1,
            holding: false,
            held: 0,
            drain_timeout_ms: 30_000,
            generations: vec![],
        }
    }

    fn want(service: &str, listen: &str, upstreams: &[&str]) -> Desired {
        Desired {
            listen: listen.into(),
            upstreams: upstreams.iter().map(|s| (*s).to_owned()).collect(),
            service: service.into(),
        }
    }

    #[test]
    fn only_what_differs_changes() {
        let current = vec![
            view("p.a.80", "127.0.0.1:8080", &["172.18.0.2:80"]),
            view("p.b.80", "127.0.0.1:8081", &["172.18.0.3:80"]),
            view("gone.x.80", "127.0.0.1:8082", &["172.18.0.9:80"]),
            view("p.c.80", "127.0.0.1:8083", &["172.18.0.4:80"]),
        ];
        let desired = BTreeMap::from([
            (
                "p.a.80".to_owned(),
                want("p/a", "127.0.0.1:8080", &["172.18.0.2:80"]),
            ),
            (
                "p.b.80".to_owned(),
                want("p/b", "127.0.0.1:8081", &["172.18.0.7:80"]),
            ),
            (
                "p.new.80".to_owned(),
                want("p/new", "127.0.0.1:8084", &["172.18.0.8:80"]),
            ),
        ]);
        // p.c.80 belongs to a stopped service: named, not desired, kept.
        let named: BTreeSet<String> = ["p.a.80", "p.b.80", "p.c.80", "p.new.80"]
            .map(String::from)
            .into();
        let changes = plan_changes(&current, &desired, &named, &|_| false);
        assert_eq!(changes.put, ["p.b.80", "p.new.80"]);
        assert_eq!(changes.delete, ["gone.x.80"]);

        // A proxy that lost everything gets every route back.
        let all = plan_changes(&[], &desired, &named, &|_| false);
        assert_eq!(all.put.len(), 3);

        // A rotating service is the engine's business.
        let skipped = plan_changes(&current, &desired, &named, &|s| s == "p/b");
        assert_eq!(skipped.put, ["p.new.80"]);
    }

    #[test]
    fn upstreams_prefer_the_default_network() {
        let inspect: ContainerInspectResponse = serde_json::from_value(serde_json::json!({
            "NetworkSettings": {"Networks": {
                "zeta": {"IPAddress": "172.30.0.2"},
                "p_default": {"IPAddress": "172.31.0.5"},
                "alpha": {"IPAddress": "", "GlobalIPv6Address": "fd01::7"}
            }}
        }))
        .unwrap();
        assert_eq!(
            upstream_of(&inspect, "p_default", 80).as_deref(),
            Some("172.31.0.5:80")
        );
        assert_eq!(
            upstream_of(&inspect, "q_default", 80).as_deref(),
            Some("[fd01::7]:80")
        );
    }
}
