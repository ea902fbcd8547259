//! The `dso-agent` daemon: wires configuration, the proxy, the rotation engine, change
//! detection and the two surfaces (REST API, IPC socket) together, and runs them until
//! SIGTERM or SIGINT.
//!
//! Start-up order, each step before the next:
//! 1. paths (runtime and state directories), logging to stderr (journald);
//! 2. the IPC socket and the REST listener are bound, so a second agent fails fast;
//! 3. the proxy on `RUNTIME/proxy.sock` is adopted, or started when none answers;
//! 4. the rotation engine connects to Docker and finishes or undoes every rotation the
//!    journal shows unfinished ([`crate::rotation::Engine::recover`]);
//! 5. routes are reconciled with the managed containers' labels;
//! 6. change detection, Docker events and the proxy supervisor start; `READY=1` goes to
//!    systemd and `/ready` answers 200.
//!
//! The proxy is never stopped by the agent: it keeps forwarding while the agent restarts.

pub mod notify;
pub mod owner;
pub mod paths;
pub mod proxy;
pub mod state;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use self::paths::Paths;
use self::proxy::Supervisor;
use self::state::{AgentInfo, AgentState, ProxyState, Shared, lock};
use crate::config::Config;
use crate::detect::{Detector, RotationFuture, Rotator, Services, seen::Seen};
use crate::docker::Docker;
use crate::error_chain as chain;
use crate::events::{self, EventSender};
use crate::resolve::{LocalVault, ValueSource};
use crate::rotation::{Engine, EngineConfig, ManagedService, NEXT_SUFFIX, Outcome, ServiceKey};

/// How often the managed services are listed again (besides Docker events).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Metric: proxy restarts by the agent.
pub const PROXY_RESTARTS: &str = "dso_agent_proxy_restarts_total";
/// Metric: 1 while the proxy answers.
pub const PROXY_UP: &str = "dso_agent_proxy_up";

/// Flags of `dso-agent run`.
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// Coalescing window for changes of several secrets of one service, e.g. `2s`
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub coalesce: Option<Duration>,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(config_path: &Path, config: Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(config_path, config, args))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DSO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colours only on a terminal: journald and log files get plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Adapts the rotation engine to the detector.
struct EngineRotator(Arc<Engine>);

impl Rotator for EngineRotator {
    fn rotate(&self, service: String, reason: String) -> RotationFuture {
        let engine = self.0.clone();
        Box::pin(async move {
            let key: ServiceKey = service.parse().map_err(|e| chain(&e))?;
            match engine.rotate(&key, &reason).await {
                Ok(Outcome::RolledBack { reason }) => Err(format!("rolled back: {reason}")),
                Ok(_) => Ok(()),
                Err(err) => Err(chain(&err)),
            }
        })
    }
}

async fn run_async(config_path: &Path, config: Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    // 1. Paths and directories.
    let paths = Paths::decide(&config).context("deciding the agent's directories")?;
    for dir in [&paths.runtime, &paths.state, &paths.journal, &paths.detect] {
        create_private_dir(dir)?;
    }
    open_socket_dir_for_group(&paths)?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        path = %config_path.display(),
        runtime = %paths.runtime.display(),
        state = %paths.state.display(),
        "dso-agent starting"
    );

    // 2. Surfaces bound first: a second agent on the same socket or port fails here.
    let ipc_listener = crate::ipc::bind(&paths.socket)
        .with_context(|| format!("binding the IPC socket {}", paths.socket.display()))?;
    let _socket_guard = RemoveOnDrop(paths.socket.clone());
    let api_listener = tokio::net::TcpListener::bind(config.agent.api_address)
        .await
        .with_context(|| format!("binding the REST API on {}", config.agent.api_address))?;
    if !config.agent.api_address.ip().is_loopback() {
        warn!(listen.addr = %config.agent.api_address,
            "the REST API listens beyond loopback; status and metrics are readable there");
    }
    std::fs::write(&paths.pid, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", paths.pid.display()))?;
    let _pid_guard = RemoveOnDrop(paths.pid.clone());

    let metrics = PrometheusBuilder::new().install_recorder().ok();
    let events = events::channel();
    let source: Arc<dyn ValueSource> =
        Arc::new(LocalVault::from_config(&config).context("opening the local vault")?);

    // 3. The proxy: adopt or start.
    let mut supervisor = Supervisor::new(paths.clone());
    let mut proxy_state = ProxyState {
        socket: paths.proxy_socket.clone(),
        needed: true,
        ..ProxyState::default()
    };
    match supervisor.healthy().await {
        Some(health) => {
            info!(path = %paths.proxy_socket.display(), routes = health.routes, "proxy adopted");
            proxy_state.adopted = true;
            proxy_state.up = true;
            proxy_state.pid = read_pid(&paths.proxy_pid);
        }
        None => {
            let pid = supervisor.start().await?;
            proxy_state.up = true;
            proxy_state.pid = Some(pid);
        }
    }

    // 4. Engine, then recovery of unfinished rotations.
    let mut engine_config = EngineConfig::new(paths.runtime.clone(), paths.journal.clone());
    engine_config.proxy_socket = paths.proxy_socket.clone();
    engine_config.health_timeout = config.defaults.health_timeout;
    engine_config.drain_timeout = config.defaults.drain_timeout;
    engine_config.signal = config.defaults.signal.clone();
    engine_config.default_strategy = config.defaults.strategy;
    let engine = Arc::new(
        Engine::connect(engine_config, source.clone(), events.clone())
            .await
            .context("connecting the rotation engine to Docker")?,
    );
    let docker = Docker::connect().await.context("connecting to Docker")?;

    let seen = Seen::open(&paths.detect).context("opening the fingerprint state")?;
    let window = args
        .coalesce
        .unwrap_or(crate::detect::coalesce::DEFAULT_WINDOW);
    let (detector, detector_task) = Detector::new(
        seen,
        config.agent.watch_interval,
        window,
        source.clone(),
        Arc::new(EngineRotator(engine.clone())),
    );
    let webhook_token = if config.agent.webhook_enabled {
        config.agent.webhook_token.clone()
    } else {
        None
    };
    let state: Shared = Arc::new(AgentState {
        info: AgentInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            config: config_path.to_owned(),
            socket: paths.socket.clone(),
            api_address: api_listener
                .local_addr()
                .unwrap_or(config.agent.api_address),
            runtime_dir: paths.runtime.clone(),
            state_dir: paths.state.clone(),
            started: crate::detect::rfc3339(std::time::SystemTime::now()),
            watch_interval_s: config.agent.watch_interval.as_secs_f64(),
            providers: config.providers.keys().cloned().collect(),
            vault: crate::vault::VaultFiles::locate().ok().map(|f| f.vault),
        },
        events: events.clone(),
        detector: detector.clone(),
        proxy_client: dataplane::client::ProxyClient::new(&paths.proxy_socket),
        proxy: std::sync::Mutex::new(proxy_state),
        services: std::sync::Mutex::new(Vec::new()),
        recovered: std::sync::atomic::AtomicBool::new(false),
        values: source,
        webhook_token,
        metrics,
    });

    let mut tasks = JoinSet::new();
    tasks.spawn(crate::api::serve(api_listener, state.clone()));
    tasks.spawn(crate::ipc::serve(
        ipc_listener,
        paths.socket.clone(),
        state.clone(),
    ));
    tasks.spawn(log_events(events.subscribe()));

    match engine.recover().await {
        Ok(outcomes) => {
            for (service, outcome) in outcomes {
                info!(service = %service, outcome = ?outcome, "unfinished rotation recovered");
            }
        }
        Err(err) => error!(error = %chain(&err), "recovery of unfinished rotations failed"),
    }

    // 5. Routes from the labels, then detection on the managed services.
    let services = try_managed(&engine, &docker, &paths.runtime).await;
    if let Some(services) = &services {
        // Files first: after a reboot the tmpfs is empty, and a container Docker started (or
        // will start) before the agent must find its files.
        restore_all(&engine, services).await;
        if let Err(err) = proxy::reconcile(&state, &docker, services).await {
            warn!(error = %format!("{err:#}"), "route reconcile failed");
        }
        detector.set_services(references(services));
    }
    let services = services.unwrap_or_default();
    state.recovered.store(true, Ordering::SeqCst);

    // 6. Background work; then ready.
    tasks.spawn(detector_task.run());
    let (refresh_tx, refresh_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tasks.spawn(refresh_loop(
        state.clone(),
        engine.clone(),
        docker.clone(),
        refresh_rx,
    ));
    tasks.spawn(docker_events(
        state.clone(),
        engine.clone(),
        refresh_tx.clone(),
    ));
    tasks.spawn(supervise(state.clone(), engine.clone(), docker, supervisor));
    notify::notify("READY=1");
    info!(
        socket = %paths.socket.display(),
        listen.addr = %state.info.api_address,
        services = services.len(),
        "dso-agent ready"
    );

    // Run until a signal.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
        Some(ended) = tasks.join_next() => {
            error!(result = ?ended.map_err(|e| e.to_string()), "an agent task ended unexpectedly");
        }
    }
    notify::notify("STOPPING=1");
    // LIMITATION: a rotation running at SIGTERM is interrupted; its journal lets the next
    // start finish or undo it — waiting (bounded) for running rotations would avoid the
    // recovery step.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    info!("dso-agent stopped");
    Ok(ExitCode::SUCCESS)
}

/// Gives every container of the services its missing secret files, and running ones their
/// routes ([`Engine::restore`]); a failure is logged and the others go on.
async fn restore_all(engine: &Engine, services: &[ManagedService]) {
    for service in services {
        for container in &service.containers {
            if let Err(err) = engine.restore(&container.id).await {
                warn!(
                    service = %service.key,
                    container.name = %container.name,
                    error = %chain(&err),
                    "restoring a container at start-up failed"
                );
            }
        }
    }
}

/// The managed services this agent owns ([`owner`]), or `None` (logged) when Docker does not
/// answer — never an empty list in that case, which would make the detector forget every
/// fingerprint.
async fn try_managed(
    engine: &Engine,
    docker: &Docker,
    runtime: &Path,
) -> Option<Vec<ManagedService>> {
    let owned = match owner::owned_services(docker, runtime).await {
        Ok(owned) => owned,
        Err(err) => {
            warn!(error = %chain(&err), "listing managed containers failed");
            return None;
        }
    };
    match engine.managed_services().await {
        Ok(services) => Some(
            services
                .into_iter()
                .filter(|s| owned.contains(&s.key.to_string()))
                .collect(),
        ),
        Err(err) => {
            warn!(error = %chain(&err), "listing managed services failed");
            None
        }
    }
}

/// [`try_managed`], with no services when Docker does not answer.
async fn managed(engine: &Engine, docker: &Docker, runtime: &Path) -> Vec<ManagedService> {
    try_managed(engine, docker, runtime)
        .await
        .unwrap_or_default()
}

/// The references per service, for the detector.
fn references(services: &[ManagedService]) -> Services {
    services
        .iter()
        .map(|s| {
            (
                s.key.to_string(),
                s.references.iter().map(|r| r.reference.clone()).collect(),
            )
        })
        .collect()
}

/// Lists the managed services every [`REFRESH_INTERVAL`] or when asked, feeds the detector
/// and reconciles routes.
async fn refresh_loop(
    state: Shared,
    engine: Arc<Engine>,
    docker: Docker,
    mut asked: tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            got = asked.recv() => {
                if got.is_none() {
                    return;
                }
                // Several events in a burst give one refresh.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while asked.try_recv().is_ok() {}
            }
        }
        let Some(services) = try_managed(&engine, &docker, &state.info.runtime_dir).await else {
            continue;
        };
        state.detector.set_services(references(&services));
        if lock(&state.proxy).up {
            if let Err(err) = proxy::reconcile(&state, &docker, &services).await {
                debug!(error = %format!("{err:#}"), "route reconcile failed");
            }
        } else {
            // No proxy to ask (e.g. `docker dso down` stopped it): the status still follows
            // the containers, without route figures.
            *lock(&state.services) = proxy::service_views(&services, &[]);
        }
    }
}

/// Follows Docker's container events: a managed container that starts outside a rotation
/// gets its files and route back ([`Engine::restore`]); any managed start, stop or removal
/// refreshes the service list.
async fn docker_events(
    state: Shared,
    engine: Arc<Engine>,
    refresh: tokio::sync::mpsc::UnboundedSender<()>,
) {
    use bollard::query_parameters::EventsOptions;
    use std::collections::HashMap;

    loop {
        let client = match bollard::Docker::connect_with_local_defaults() {
            Ok(client) => match client.negotiate_version().await {
                Ok(client) => client,
                Err(err) => {
                    warn!(error = %err, "Docker events: version negotiation failed");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            },
            Err(err) => {
                warn!(error = %err, "Docker events: connect failed");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec!["dso.managed=true".to_owned()]),
            (
                "event".to_owned(),
                vec!["start".to_owned(), "die".to_owned(), "destroy".to_owned()],
            ),
        ]);
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let mut stream = client.events(Some(options));
        // Anything missed while disconnected is caught by a refresh.
        let _ = refresh.send(());
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    warn!(error = %err, "Docker event stream broke; reconnecting");
                    break;
                }
            };
            let action = event.action.clone().unwrap_or_default();
            let actor = event.actor.unwrap_or_default();
            let id = actor.id.unwrap_or_default();
            let attributes = actor.attributes.unwrap_or_default();
            let name = attributes.get("name").cloned().unwrap_or_default();
            let service = match (
                attributes.get(crate::rotation::PROJECT_LABEL),
                attributes.get(crate::rotation::SERVICE_LABEL),
            ) {
                (Some(p), Some(s)) => format!("{p}/{s}"),
                _ => String::new(),
            };
            let labels: HashMap<String, String> = attributes.clone().into_iter().collect();
            if !owner::owns(&labels, &state.info.runtime_dir) {
                continue;
            }
            debug!(
                container = %short(&id),
                container.name = %name,
                action = %action,
                "Docker event"
            );
            let _ = refresh.send(());
            if action != "start" || name.ends_with(NEXT_SUFFIX) || state.detector.busy(&service) {
                continue;
            }
            // A start the engine did not cause (manual `docker start`, restart policy, boot).
            let engine = engine.clone();
            tokio::spawn(async move {
                match engine.restore(&id).await {
                    Ok(()) => {
                        info!(service = %service, container.name = %name, "container restored")
                    }
                    Err(err) => warn!(
                        service = %service,
                        container.name = %name,
                        error = %chain(&err),
                        "restoring a started container failed"
                    ),
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks the proxy every [`proxy::HEALTH_INTERVAL`]; when it is gone and routes need it,
/// starts a new one and pushes every route.
async fn supervise(state: Shared, engine: Arc<Engine>, docker: Docker, mut supervisor: Supervisor) {
    let mut interval = tokio::time::interval(proxy::HEALTH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    let mut last_listed = tokio::time::Instant::now();
    loop {
        interval.tick().await;
        supervisor.reap();
        let health = supervisor.healthy().await;
        if let Some(health) = &health {
            {
                let mut proxy = lock(&state.proxy);
                proxy.up = true;
                proxy.active = health.active;
            }
            metrics::gauge!(PROXY_UP).set(1.0);
            if !was_up {
                // Someone else started a proxy (e.g. `docker dso up`): it is adopted, and
                // gets our routes.
                let services = managed(&engine, &docker, &state.info.runtime_dir).await;
                {
                    let mut proxy = lock(&state.proxy);
                    proxy.pid = read_pid(&supervisor.paths().proxy_pid);
                    proxy.adopted = true;
                    proxy.needed = proxy::needed(&services);
                }
                info!(pid = ?lock(&state.proxy).pid, "proxy adopted");
                let _ = proxy::reconcile(&state, &docker, &services).await;
            }
            was_up = true;
            continue;
        }

        if was_up {
            warn!("proxy does not answer");
        }
        was_up = false;
        lock(&state.proxy).up = false;
        metrics::gauge!(PROXY_UP).set(0.0);
        // While no service needs a proxy, Docker is asked at most once a second.
        if !lock(&state.proxy).needed && last_listed.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let services = managed(&engine, &docker, &state.info.runtime_dir).await;
        last_listed = tokio::time::Instant::now();
        let needed = proxy::needed(&services);
        lock(&state.proxy).needed = needed;
        if !needed {
            continue;
        }
        match supervisor.start().await {
            Ok(pid) => {
                {
                    let mut proxy = lock(&state.proxy);
                    proxy.up = true;
                    proxy.pid = Some(pid);
                    proxy.adopted = false;
                    proxy.restarts += 1;
                }
                metrics::counter!(PROXY_RESTARTS).increment(1);
                match proxy::reconcile(&state, &docker, &services).await {
                    Ok(changed) => info!(routes = changed, "proxy restarted, routes pushed"),
                    Err(err) => warn!(error = %format!("{err:#}"), "pushing routes failed"),
                }
                was_up = true;
            }
            Err(err) => error!(error = %format!("{err:#}"), "restarting the proxy failed"),
        }
    }
}

/// Logs each event at info (rotation steps, swaps, recoveries): names only.
async fn log_events(mut events: tokio::sync::broadcast::Receiver<events::Event>) {
    loop {
        match events.recv().await {
            Ok(event) => {
                let json = serde_json::to_string(&event).unwrap_or_default();
                info!(event = %json, "event");
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                debug!(lost = n, "event log lagged");
            }
            Err(_) => return,
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// As root with a group `dso`: members must reach the 0660 socket, so its directory gets
/// search permission for others (0711: no listing, entries are reached by name only).
fn open_socket_dir_for_group(paths: &Paths) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;

    if crate::ipc::peer::own_uid() != 0
        || crate::ipc::peer::group_id(crate::ipc::peer::GROUP).is_none()
    {
        return Ok(());
    }
    let Some(dir) = paths.socket.parent() else {
        return Ok(());
    };
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o011 != 0o011 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))
            .with_context(|| format!("letting group dso reach {}", dir.display()))?;
        info!(path = %dir.display(), "socket directory opened for search (group dso)");
    }
    Ok(())
}

/// Removes a file when dropped (the agent's socket and pid file at exit).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Keeps `EventSender` in the public surface of this module for the CLI's docs.
pub type Events = EventSender;

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn the_coalesce_flag_takes_a_duration() {
        let cli = Cli::try_parse_from(["run", "--coalesce", "500ms"]).unwrap();
        assert_eq!(cli.run.coalesce, Some(Duration::from_millis(500)));
        assert_eq!(Cli::try_parse_from(["run"]).unwrap().run.coalesce, None);
        assert!(Cli::try_parse_from(["run", "--coalesce", "soon"]).is_err());
    }

    #[test]
    fn error_chains_are_one_line() {
        let inner = std::io::Error::other("inner cause");
        let outer = crate::ipc::IpcError::Io {
            path: "/x".into(),
            step: "bind",
            source: inner,
        };
        assert_eq!(chain(&outer), "IPC socket /x: bind failed: inner cause");
    }
}
