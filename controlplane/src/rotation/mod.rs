//! The rotation engine: replaces the containers of a managed service so that they get the
//! newest secret values, without clients of its proxied ports noticing.
//!
//! The Docker Engine is the source of truth for what is managed: `docker dso up` labels each
//! container (`dso.managed`, `dso.strategy`, `dso.references`, `dso.files.dir`,
//! `dso.proxy.routes`, plus compose's project and service labels), and [`Engine`] reads those
//! labels, never a file a caller names. Strategies (see `docs/rotation.md`):
//! - `rolling`: new container beside the old one, health check, route switch, drain, old one
//!   stopped and removed, new one renamed to the old name;
//! - `restart`: the route holds new clients while the old container stops and the new starts;
//! - `signal`: the mounted secret files are replaced in place, then a signal is sent;
//! - `none`: an event only.
//!
//! Every replacement is journaled ([`crate::journal`]) step by step before each step is
//! taken, so [`Engine::recover`] can finish or undo it after a crash. Rotations of one service
//! are serialised by a per-service async mutex; values are resolved after the mutex is taken,
//! so a rotation that waited runs with the newest values.
//!
//! Values never leave [`SecretValue`]s except into the new container's environment and the
//! tmpfs files; no event, error or log line carries one.

pub mod oneshot;

mod container;
mod health;
mod recover;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{ContainerInspectResponse, ContainerSummaryStateEnum};
use dataplane::api::{DrainRequest, HoldRequest, RouteRequest};
use dataplane::client::{ClientError, ProxyClient};
use serde::Deserialize;
use tracing::{error, info, warn};

pub use self::container::{FILES_DIR_LABEL, FILES_TARGET_LABEL, ROTATION_LABEL};
pub use self::recover::{Decision, decide};
use crate::config::Strategy;
use crate::docker::{Docker, DockerError, MANAGED_LABEL};
use crate::events::{Event, EventSender, emit};
use crate::files::{self, FilesError};
use crate::journal::{self, Journal, JournalError, JournalFile, RouteRecord, Step};
use crate::reference::{Injection, Reference};
use crate::resolve::{ResolveError, ValueSource};
use crate::secret::SecretValue;

/// Label: the rotation strategy.
pub const STRATEGY_LABEL: &str = "dso.strategy";
/// Label: JSON `{"env": {VAR: ref}, "file": {VAR: ref}}`.
pub const REFERENCES_LABEL: &str = "dso.references";
/// Label: JSON `[{"route", "listen", "target"}]`.
pub const ROUTES_LABEL: &str = "dso.proxy.routes";
/// Label: signal of the `signal` strategy (default from the configuration).
pub const SIGNAL_LABEL: &str = "dso.signal";
/// Compose's project label.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose's service label.
pub const SERVICE_LABEL: &str = "com.docker.compose.service";

/// Suffix of the temporary name of a new container.
pub const NEXT_SUFFIX: &str = "-dso-next";

/// `project/service`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Compose project name.
    pub project: String,
    /// Compose service name.
    pub service: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.project, self.service)
    }
}

impl std::str::FromStr for ServiceKey {
    type Err = RotationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((project, service))
                if !project.is_empty() && !service.is_empty() && !service.contains('/') =>
            {
                Ok(Self {
                    project: project.to_owned(),
                    service: service.to_owned(),
                })
            }
            _ => Err(RotationError::BadServiceKey {
                text: text.to_owned(),
            }),
        }
    }
}

/// One container of a managed service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    /// Full id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// True when it runs.
    pub running: bool,
}

/// One reference a service uses, from `dso.references`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceReference {
    /// The environment variable (also the file name for file references).
    pub variable: String,
    /// The parsed reference (its `Display` is the text).
    pub reference: Reference,
}

/// One proxied port, from `dso.proxy.routes`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RouteLabel {
    /// Proxy route name.
    pub route: String,
    /// Listen address.
    pub listen: String,
    /// Container port.
    pub target: u16,
}

/// A managed compose service as its containers' labels describe it.
#[derive(Clone, Debug)]
pub struct ManagedService {
    /// `project/service`.
    pub key: ServiceKey,
    /// Its containers (running or not), in name order.
    pub containers: Vec<ContainerRef>,
    /// The labelled strategy.
    pub strategy: Strategy,
    /// Its references, env and file.
    pub references: Vec<ServiceReference>,
    /// Its proxied ports.
    pub routes: Vec<RouteLabel>,
    /// Generation directory of the first container, when it has secret files.
    pub files_dir: Option<PathBuf>,
}

/// Settings of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The runtime directory (tmpfs) holding the generation directories.
    pub runtime_dir: PathBuf,
    /// Where rotation journals are written.
    pub journal_dir: PathBuf,
    /// The proxy's control socket.
    pub proxy_socket: PathBuf,
    /// Longest wait for a new container to become healthy.
    pub health_timeout: Duration,
    /// Longest time connections of the old generation may keep running after a switch.
    pub drain_timeout: Duration,
    /// How long a container without HEALTHCHECK and proxied port must run to count healthy.
    pub settle: Duration,
    /// Default signal of the `signal` strategy.
    pub signal: String,
    /// Strategy when a container has no `dso.strategy` label.
    pub default_strategy: Strategy,
}

impl EngineConfig {
    /// Settings for a runtime and a journal directory with the defaults of `dso.yaml`.
    pub fn new(runtime_dir: PathBuf, journal_dir: PathBuf) -> Self {
        Self {
            proxy_socket: runtime_dir.join("proxy.sock"),
            runtime_dir,
            journal_dir,
            health_timeout: crate::config::DEFAULT_HEALTH_TIMEOUT,
            drain_timeout: crate::config::DEFAULT_DRAIN_TIMEOUT,
            settle: Duration::from_secs(2),
            signal: crate::config::DEFAULT_SIGNAL.into(),
            default_strategy: crate::config::DEFAULT_STRATEGY,
        }
    }
}

/// How a rotation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Containers were replaced.
    Rotated {
        /// The strategy that ran (after stateful safety).
        strategy: Strategy,
        /// Containers replaced.
        containers: usize,
        /// From start to end.
        millis: u64,
    },
    /// Files were rewritten and the containers signalled.
    Signalled {
        /// Containers signalled.
        containers: usize,
    },
    /// Strategy `none`: nothing was changed.
    Unchanged,
    /// Recovery completed an interrupted rotation.
    Completed,
    /// Recovery (or a failed rotation) went back to the old container.
    RolledBack {
        /// Why.
        reason: String,
    },
}

/// Why a rotation did not happen or did not complete. Names only, never values.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A `project/service` text is malformed.
    #[error("{text:?} is not PROJECT/SERVICE")]
    BadServiceKey {
        /// The text.
        text: String,
    },

    /// No managed container belongs to the service.
    #[error("no managed container belongs to {service}")]
    NotManaged {
        /// `project/service`.
        service: String,
    },

    /// A dso label of a container cannot be read.
    #[error("label {label} of container {container} is invalid: {reason}")]
    Label {
        /// Container name.
        container: String,
        /// Label key.
        label: &'static str,
        /// Why.
        reason: String,
    },

    /// The strategy cannot serve this service.
    #[error("{service}: {reason}")]
    Refused {
        /// `project/service`.
        service: String,
        /// Why.
        reason: String,
    },

    /// A value could not be resolved; nothing was changed.
    #[error("resolving the values of {service} failed")]
    Resolve {
        /// `project/service`.
        service: String,
        /// Cause.
        #[source]
        source: ResolveError,
    },

    /// A Docker call failed.
    #[error(transparent)]
    Docker(#[from] DockerError),

    /// The journal could not be written or read.
    #[error(transparent)]
    Journal(#[from] JournalError),

    /// Secret files could not be written.
    #[error(transparent)]
    Files(#[from] FilesError),

    /// A proxy call failed.
    #[error("proxy route {route}: {step} failed")]
    Proxy {
        /// Route name.
        route: String,
        /// What was attempted.
        step: &'static str,
        /// Cause (boxed: the proxy's error body is large).
        #[source]
        source: Box<ClientError>,
    },

    /// A rotation step failed; the rotation was rolled back (or, after the switch, completed
    /// as far as possible).
    #[error("{service}: step {step} failed: {reason}")]
    Failed {
        /// `project/service`.
        service: String,
        /// The step.
        step: Step,
        /// Why (names only).
        reason: String,
    },
}

impl RotationError {
    /// What to do about it, when we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotManaged { .. } => {
                Some("start the project with `docker dso up -d`; `docker ps` shows it".into())
            }
            Self::BadServiceKey { .. } => Some("write e.g. myproject/web".into()),
            Self::Resolve { source, .. } => source.hint(),
            Self::Proxy { .. } => Some("is dso-proxy running? `docker dso up -d` starts it".into()),
            _ => None,
        }
    }
}

/// The rotation engine. Cheap to share behind an `Arc`.
pub struct Engine {
    config: EngineConfig,
    docker: Docker,
    proxy: ProxyClient,
    values: Arc<dyn ValueSource>,
    events: EventSender,
    /// One async mutex per service: rotations of a service never interleave. A tokio mutex,
    /// because it is held across awaits for the whole rotation.
    // LIMITATION: the lock is per process; a one-shot `dso-agent rotate` run beside the daemon
    // is not serialised with the daemon's rotations — a flock on the journal file would lift
    // it.
    locks: std::sync::Mutex<HashMap<ServiceKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// A rotation in progress, for the steps of one container.
struct Run<'a> {
    service: &'a ManagedService,
    journal: JournalFile,
    old: ContainerInspectResponse,
    default_network: String,
}

impl Engine {
    /// Connects to Docker; the proxy is reached on `config.proxy_socket` when needed.
    pub async fn connect(
        config: EngineConfig,
        values: Arc<dyn ValueSource>,
        events: EventSender,
    ) -> Result<Engine, RotationError> {
        let docker = Docker::connect().await?;
        let proxy = ProxyClient::new(&config.proxy_socket);
        Ok(Engine {
            config,
            docker,
            proxy,
            values,
            events,
            locks: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Every managed service, from the labels of the containers (running or not). Containers
    /// with the temporary name of a rotation in flight are left out.
    pub async fn managed_services(&self) -> Result<Vec<ManagedService>, RotationError> {
        let summaries = self
            .docker
            .list_labelled(MANAGED_LABEL, Some("true"))
            .await?;
        let mut services: BTreeMap<ServiceKey, ManagedService> = BTreeMap::new();
        for summary in summaries {
            let labels = summary.labels.clone().unwrap_or_default();
            let name = summary
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default();
            let (Some(project), Some(service)) =
                (labels.get(PROJECT_LABEL), labels.get(SERVICE_LABEL))
            else {
                continue;
            };
            if name.ends_with(NEXT_SUFFIX) {
                continue;
            }
            let container = ContainerRef {
                id: summary.id.clone().unwrap_or_default(),
                name: name.clone(),
                running: summary.state == Some(ContainerSummaryStateEnum::RUNNING),
            };
            let key = ServiceKey {
                project: project.clone(),
                service: service.clone(),
            };
            if let Some(found) = services.get_mut(&key) {
                found.containers.push(container);
                continue;
            }
            let described = describe(&key, &name, &labels, self.config.default_strategy)?;
            services.insert(
                key.clone(),
                ManagedService {
                    containers: vec![container],
                    ..described
                },
            );
        }
        let mut list: Vec<ManagedService> = services.into_values().collect();
        for service in &mut list {
            service.containers.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(list)
    }

    async fn service(&self, key: &ServiceKey) -> Result<ManagedService, RotationError> {
        self.managed_services()
            .await?
            .into_iter()
            .find(|s| s.key == *key)
            .ok_or_else(|| RotationError::NotManaged {
                service: key.to_string(),
            })
    }

    fn lock_of(&self, key: &ServiceKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }

    /// Rotates one service with its labelled strategy. A second call for the same service
    /// waits for the first and then runs with the values current at that time.
    pub async fn rotate(&self, key: &ServiceKey, reason: &str) -> Result<Outcome, RotationError> {
        let lock = self.lock_of(key);
        let _guard = lock.lock().await;
        let started = Instant::now();

        // 1. What the labels say, and the newest values, before anything changes.
        let service = self.service(key).await?;
        let values = self.resolve_all(&service)?;
        let has_env = service
            .references
            .iter()
            .any(|r| r.reference.injection == Injection::Env);

        // 2. The strategies that change nothing about the containers.
        match service.strategy {
            Strategy::None => {
                info!(project = %key.project, service = %key.service, strategy = "none",
                    "rotation skipped by strategy");
                emit(
                    &self.events,
                    Event::NothingToDo {
                        service: key.to_string(),
                        reason: format!("strategy none ({reason})"),
                    },
                );
                return Ok(Outcome::Unchanged);
            }
            Strategy::Signal if has_env => {
                return Err(RotationError::Refused {
                    service: key.to_string(),
                    reason: "strategy signal cannot change environment values; use rolling or \
                             restart, or dsofile:// references"
                        .into(),
                });
            }
            Strategy::Signal => return self.signal(&service, &values, reason).await,
            Strategy::Rolling | Strategy::Restart => {}
        }

        // 3. Replace each container in turn; the first failure stops (and was rolled back).
        // LIMITATION: replicas are replaced one after another; when a later one fails, the
        // earlier ones keep the new values (the error names the failed step) — a two-phase
        // switch over all replicas would lift it.
        let mut last_strategy = service.strategy;
        let mut replaced = 0;
        for container in &service.containers {
            last_strategy = self
                .replace(&service, &container.id, &values, reason)
                .await?;
            replaced += 1;
        }
        self.clean_generations(&service).await;

        let millis = started.elapsed().as_millis() as u64;
        Ok(Outcome::Rotated {
            strategy: last_strategy,
            containers: replaced,
            millis,
        })
    }

    /// Resolves every reference of the service: `(variable, value, injection)`.
    fn resolve_all(
        &self,
        service: &ManagedService,
    ) -> Result<Vec<(String, SecretValue, Injection)>, RotationError> {
        let mut values = Vec::new();
        for reference in &service.references {
            let value = self
                .values
                .resolve(&reference.reference)
                .map_err(|source| RotationError::Resolve {
                    service: service.key.to_string(),
                    source,
                })?;
            if reference.reference.injection == Injection::Env {
                let bytes = value.expose();
                if std::str::from_utf8(bytes).is_err() || bytes.contains(&0) {
                    return Err(RotationError::Refused {
                        service: service.key.to_string(),
                        reason: format!(
                            "the value of {} ({}) is not UTF-8 text without NUL, which an \
                             environment variable must be; use dsofile://",
                            reference.variable, reference.reference
                        ),
                    });
                }
            }
            values.push((
                reference.variable.clone(),
                value,
                reference.reference.injection,
            ));
        }
        Ok(values)
    }

    /// `signal`: rewrite the mounted files in place, then signal every running container.
    async fn signal(
        &self,
        service: &ManagedService,
        values: &[(String, SecretValue, Injection)],
        reason: &str,
    ) -> Result<Outcome, RotationError> {
        let key = service.key.to_string();
        emit(
            &self.events,
            Event::RotationStarted {
                service: key.clone(),
                reason: reason.to_owned(),
                strategy: "signal".into(),
            },
        );
        let started = Instant::now();
        let files: Vec<(String, SecretValue)> = values
            .iter()
            .filter(|(_, _, i)| *i == Injection::File)
            .map(|(v, value, _)| (v.clone(), value.clone()))
            .collect();
        let mut signalled = 0;
        for container in service.containers.iter().filter(|c| c.running) {
            let Some(inspect) = self.docker.inspect(&container.id).await? else {
                continue;
            };
            let labels = container::labels_of(&inspect);
            if let Some(dir) = labels.get(FILES_DIR_LABEL).map(PathBuf::from) {
                files::check_tmpfs(&dir)?;
                files::rewrite_generation(&dir, &files, files::owner_of_generation(&dir))?;
            }
            let signal = labels
                .get(SIGNAL_LABEL)
                .cloned()
                .unwrap_or_else(|| self.config.signal.clone());
            self.docker.kill(&container.id, &signal).await?;
            info!(project = %service.key.project, service = %service.key.service,
                container.name = %container.name, signal = %signal, "container signalled");
            emit(
                &self.events,
                Event::Signalled {
                    service: key.clone(),
                    container: container.name.clone(),
                    signal,
                },
            );
            signalled += 1;
        }
        emit(
            &self.events,
            Event::RotationFinished {
                service: key,
                strategy: "signal".into(),
                millis: started.elapsed().as_millis() as u64,
            },
        );
        Ok(Outcome::Signalled {
            containers: signalled,
        })
    }

    /// Replaces one container with `rolling` or `restart`; returns the strategy used.
    async fn replace(
        &self,
        service: &ManagedService,
        old_id: &str,
        values: &[(String, SecretValue, Injection)],
        reason: &str,
    ) -> Result<Strategy, RotationError> {
        let key = service.key.to_string();
        let Some(old) = self.docker.inspect(old_id).await? else {
            return Err(RotationError::NotManaged { service: key });
        };
        let name = container::name_of(&old);

        // 1. Stateful safety, and host ports that two containers cannot share.
        let mut strategy = service.strategy;
        if strategy == Strategy::Rolling {
            let why = container::stateful_reason(&old).or_else(|| {
                container::publishes_host_ports(&old)
                    .then(|| "it publishes host ports that compose kept".to_owned())
            });
            if let Some(why) = why {
                warn!(project = %service.key.project, service = %service.key.service,
                    reason = %why, "rolling refused, restart with hold used");
                emit(
                    &self.events,
                    Event::StrategyChanged {
                        service: key.clone(),
                        from: "rolling".into(),
                        to: "restart".into(),
                        reason: format!("rolling refused: {why}; restart with hold used"),
                    },
                );
                strategy = Strategy::Restart;
            }
        }
        emit(
            &self.events,
            Event::RotationStarted {
                service: key.clone(),
                reason: reason.to_owned(),
                strategy: strategy_name(strategy).into(),
            },
        );
        info!(project = %service.key.project, service = %service.key.service,
            container.name = %name, strategy = strategy_name(strategy), "rotation started");
        let started = Instant::now();

        // 2. The journal, before anything changes.
        let default_network = default_network(&service.key.project);
        let routes = service
            .routes
            .iter()
            .map(|r| RouteRecord {
                route: r.route.clone(),
                listen: r.listen.clone(),
                target: r.target,
                old_upstream: container::address(&old, None, &default_network, r.target)
                    .map(|(_, a)| a),
            })
            .collect();
        let old_files = container::labels_of(&old)
            .get(FILES_DIR_LABEL)
            .map(PathBuf::from);
        let journal = Journal {
            version: journal::JOURNAL_VERSION,
            id: rotation_id(),
            project: service.key.project.clone(),
            service: service.key.service.clone(),
            strategy,
            reason: reason.to_owned(),
            old_id: old.id.clone().unwrap_or_default(),
            name: name.clone(),
            next_name: format!("{name}{NEXT_SUFFIX}"),
            new_id: None,
            old_files,
            new_files: None,
            routes,
            step: Step::Begin,
            started: unix_now(),
        };
        let journal = JournalFile::begin(&self.config.journal_dir, journal)?;
        let mut run = Run {
            service,
            journal,
            old,
            default_network,
        };

        // 3. The steps; any failure before the switch is rolled back.
        match self.steps(&mut run, values).await {
            Ok(()) => {
                run.journal.finish()?;
                let millis = started.elapsed().as_millis() as u64;
                info!(project = %service.key.project, service = %service.key.service,
                    strategy = strategy_name(strategy), elapsed_ms = millis, "rotation finished");
                emit(
                    &self.events,
                    Event::RotationFinished {
                        service: key,
                        strategy: strategy_name(strategy).into(),
                        millis,
                    },
                );
                Ok(strategy)
            }
            Err((step, failure)) => {
                let text = crate::error_chain(&failure);
                error!(project = %service.key.project, service = %service.key.service,
                    step = %step, error = %text, "rotation failed");
                emit(
                    &self.events,
                    Event::RotationFailed {
                        service: key.clone(),
                        step: step.to_string(),
                        error: text.clone(),
                    },
                );
                if !step.is_committed() {
                    let journal = run.journal.journal.clone();
                    self.roll_back(&journal).await?;
                    run.journal.finish()?;
                    emit(
                        &self.events,
                        Event::RolledBack {
                            service: key.clone(),
                            reason: format!("step {step} failed: {text}"),
                        },
                    );
                }
                Err(RotationError::Failed {
                    service: key,
                    step,
                    reason: text,
                })
            }
        }
    }

    /// The journaled steps of a replacement.
    async fn steps(
        &self,
        run: &mut Run<'_>,
        values: &[(String, SecretValue, Injection)],
    ) -> Result<(), (Step, RotationError)> {
        let strategy = run.journal.journal.strategy;
        let sequence = Step::sequence(strategy);
        for &step in &sequence[1..] {
            run.journal.record(step).map_err(|e| (step, e.into()))?;
            emit(
                &self.events,
                Event::RotationStep {
                    service: run.service.key.to_string(),
                    step: step.to_string(),
                },
            );
            info!(project = %run.service.key.project, service = %run.service.key.service,
                rotation.id = %run.journal.journal.id, step = %step, "rotation step");
            self.step(run, step, values).await.map_err(|e| (step, e))?;
        }
        Ok(())
    }

    async fn step(
        &self,
        run: &mut Run<'_>,
        step: Step,
        values: &[(String, SecretValue, Injection)],
    ) -> Result<(), RotationError> {
        let key = run.service.key.to_string();
        let failed = |reason: String| RotationError::Failed {
            service: key.clone(),
            step,
            reason,
        };
        match step {
            Step::Begin => Ok(()),
            Step::WriteFiles => {
                let files: Vec<(String, SecretValue)> = values
                    .iter()
                    .filter(|(_, _, i)| *i == Injection::File)
                    .map(|(v, value, _)| (v.clone(), value.clone()))
                    .collect();
                let Some(old_dir) = run.journal.journal.old_files.clone() else {
                    return Ok(());
                };
                let service_dir = old_dir
                    .parent()
                    .ok_or_else(|| failed(format!("{} has no parent", old_dir.display())))?
                    .to_owned();
                files::check_tmpfs(&service_dir)?;
                let owner = files::owner_of_generation(&old_dir);
                let (dir, _) = files::write_generation(&service_dir, &files, owner)?;
                run.journal.update(|j| j.new_files = Some(dir))?;
                Ok(())
            }
            Step::Create => {
                let journal = run.journal.journal.clone();
                // A leftover of an earlier attempt under the temporary name is ours to remove.
                self.docker.remove(&journal.next_name, false).await?;
                let env_values: Vec<(String, SecretValue)> = values
                    .iter()
                    .filter(|(_, _, i)| *i == Injection::Env)
                    .map(|(v, value, _)| (v.clone(), value.clone()))
                    .collect();
                let old_env = run
                    .old
                    .config
                    .as_ref()
                    .and_then(|c| c.env.clone())
                    .unwrap_or_default();
                let env = container::replace_env(&old_env, &env_values);
                let image = self.image_of(&run.old).await?;
                let replacement = container::replacement(
                    &run.old,
                    env,
                    journal.new_files.as_deref(),
                    &journal.id,
                    image,
                    journal.strategy == Strategy::Rolling,
                );
                let id = self
                    .docker
                    .create(&journal.next_name, replacement.body)
                    .await?;
                run.journal.update(|j| j.new_id = Some(id.clone()))?;
                for (network, endpoint) in replacement.extra_networks {
                    self.docker.connect_network(&network, &id, endpoint).await?;
                }
                Ok(())
            }
            Step::Hold => {
                // Parked clients wait for the quiesce below, the old container's stop, the new
                // one's start and its health check: the hold outlasts all of them.
                let hold = HoldRequest {
                    timeout_ms: Some(
                        millis(self.config.health_timeout) + millis(QUIESCE_MAX) + HOLD_SLACK_MS,
                    ),
                };
                for route in &run.journal.journal.routes {
                    self.proxy
                        .hold(&route.route, &hold)
                        .await
                        .map_err(proxy_error(&route.route, "hold"))?;
                    emit(
                        &self.events,
                        Event::RouteHeld {
                            route: route.route.clone(),
                        },
                    );
                }

                // Connections accepted before the hold are still talking to the old
                // container; stopping it now would cut a client in the middle of its
                // handshake or transaction. Let them end first, for at most QUIESCE_MAX.
                for route in &run.journal.journal.routes {
                    self.quiesce(&route.route).await?;
                }
                Ok(())
            }
            Step::StopOld => {
                let old = &run.journal.journal.old_id;
                self.docker.stop(old, stop_timeout(&run.old)).await?;
                Ok(())
            }
            Step::StartNew => {
                let id = new_id(&run.journal.journal)?;
                self.docker.start(&id).await?;
                Ok(())
            }
            Step::WaitHealthy => {
                let id = new_id(&run.journal.journal)?;
                let targets: Vec<u16> = run
                    .journal
                    .journal
                    .routes
                    .iter()
                    .map(|r| r.target)
                    .collect();
                health::wait_healthy(
                    &self.docker,
                    &id,
                    &targets,
                    &run.default_network,
                    self.config.health_timeout,
                    self.config.settle,
                )
                .await?
                .map_err(failed)
            }
            Step::SwitchRoute => {
                let id = new_id(&run.journal.journal)?;
                self.route_to(&run.journal.journal, &id, &run.default_network)
                    .await
            }
            Step::Drain => {
                let request = DrainRequest {
                    deadline_ms: Some(millis(self.config.drain_timeout)),
                };
                for route in &run.journal.journal.routes {
                    let report = self
                        .proxy
                        .drain(&route.route, &request)
                        .await
                        .map_err(proxy_error(&route.route, "drain"))?;
                    let (ended, cut) = report
                        .generations
                        .iter()
                        .fold((0, 0), |(e, c), g| (e + g.ended, c + g.cut));
                    info!(route = %route.route, drain.ended = ended, drain.cut = cut, "drained");
                    emit(
                        &self.events,
                        Event::Drained {
                            route: route.route.clone(),
                            ended,
                            cut,
                        },
                    );
                }
                Ok(())
            }
            Step::StopOldAfter | Step::RemoveOld => {
                // After the switch: a failure here does not undo the swap.
                let old = run.journal.journal.old_id.clone();
                let result = if step == Step::StopOldAfter {
                    self.docker.stop(&old, stop_timeout(&run.old)).await
                } else {
                    self.docker.remove(&old, false).await
                };
                if let Err(failure) = result {
                    let text = crate::error_chain(&failure);
                    warn!(container = %short(&old), step = %step, error = %text,
                        "old container cleanup failed; the swap stands");
                    emit(
                        &self.events,
                        Event::CleanupFailed {
                            service: key.clone(),
                            container: run.journal.journal.name.clone(),
                            error: text,
                        },
                    );
                }
                Ok(())
            }
            Step::Rename => {
                let journal = &run.journal.journal;
                let id = new_id(journal)?;
                self.docker.rename(&id, &journal.name).await?;
                Ok(())
            }
        }
    }

    /// The image for the replacement: the old one's image name when it still names the same
    /// image, else the image id (a tag moved since: the service keeps running what it ran).
    async fn image_of(&self, old: &ContainerInspectResponse) -> Result<String, RotationError> {
        let id = old.image.clone().unwrap_or_default();
        let name = old.config.as_ref().and_then(|c| c.image.clone());
        if let Some(name) = name
            && self.docker.image_id(&name).await?.as_deref() == Some(id.as_str())
        {
            return Ok(name);
        }
        Ok(id)
    }

    /// Waits until a held route has no open connection left, at most [`QUIESCE_MAX`] (or the
    /// drain timeout when shorter).
    ///
    /// Only new clients are parked by a hold; the ones accepted before it still talk to the
    /// old container. Short exchanges (a handshake, a transaction) end within the bound;
    /// pooled connections that stay open would only delay every parked client, and the old
    /// container's stop closes them anyway. Reports how many ended on their own and how many
    /// were still open when the wait gave up.
    async fn quiesce(&self, route: &str) -> Result<(), RotationError> {
        let open = |view: &dataplane::api::RouteView| -> u64 {
            view.generations.iter().map(|g| g.active).sum()
        };
        let bound = self.config.drain_timeout.min(QUIESCE_MAX);
        let deadline = tokio::time::Instant::now() + bound;
        let first = self
            .proxy
            .route(route)
            .await
            .map_err(proxy_error(route, "quiesce"))?;
        let at_start = open(&first);
        let mut left = at_start;
        while left > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(QUIESCE_POLL).await;
            let view = self
                .proxy
                .route(route)
                .await
                .map_err(proxy_error(route, "quiesce"))?;
            left = open(&view);
        }

        let ended = at_start.saturating_sub(left);
        info!(route = %route, drain.ended = ended, drain.cut = left, "held route quiesced");
        emit(
            &self.events,
            Event::Drained {
                route: route.to_owned(),
                ended,
                cut: left,
            },
        );
        Ok(())
    }

    /// Points every route of the journal at `container` (replacing the old upstream, or
    /// setting it alone when the route lost it).
    async fn route_to(
        &self,
        journal: &Journal,
        container: &str,
        default_network: &str,
    ) -> Result<(), RotationError> {
        if journal.routes.is_empty() {
            return Ok(());
        }
        let Some(inspect) = self.docker.inspect(container).await? else {
            return Err(RotationError::Failed {
                service: format!("{}/{}", journal.project, journal.service),
                step: Step::SwitchRoute,
                reason: format!("container {} is gone", short(container)),
            });
        };
        for route in &journal.routes {
            let Some((_, address)) =
                container::address(&inspect, None, default_network, route.target)
            else {
                return Err(RotationError::Failed {
                    service: format!("{}/{}", journal.project, journal.service),
                    step: Step::SwitchRoute,
                    reason: format!("container {} has no network address", short(container)),
                });
            };
            let current = match self.proxy.route(&route.route).await {
                Ok(view) => view.upstreams,
                Err(error) if error.status().is_some_and(|s| s.as_u16() == 404) => Vec::new(),
                Err(error) => return Err(proxy_error(&route.route, "read")(error)),
            };
            let upstreams = replace_upstream(&current, route.old_upstream.as_deref(), &address);
            let request = RouteRequest {
                listen: route.listen.clone(),
                upstreams,
                drain_timeout_ms: Some(millis(self.config.drain_timeout)),
            };
            let change = self
                .proxy
                .put_route(&route.route, &request)
                .await
                .map_err(proxy_error(&route.route, "switch"))?;
            info!(route = %route.route, generation = change.generation,
                upstream.addr = %address, released = change.released, "route switched");
            emit(
                &self.events,
                Event::RouteSwapped {
                    route: route.route.clone(),
                    generation: change.generation,
                    released: change.released,
                },
            );
        }
        Ok(())
    }

    /// Undoes a rotation that did not reach the switch: the new container goes, the old one
    /// runs and the routes point at it (after `restart`, its address may be new).
    async fn roll_back(&self, journal: &Journal) -> Result<(), RotationError> {
        if let Some(new) = self.find_new(journal).await? {
            self.docker.remove(&new, false).await?;
        }
        if let Some(dir) = &journal.new_files
            && journal.old_files.as_ref() != Some(dir)
        {
            files::remove_tree(dir)?;
        }
        if self.docker.inspect(&journal.old_id).await?.is_some() {
            self.docker.start(&journal.old_id).await?;
            let network = default_network(&journal.project);
            if journal.strategy == Strategy::Restart || journal.step >= Step::SwitchRoute {
                // The routes were held (or switched): point them back at the old container.
                let back = Journal {
                    routes: journal
                        .routes
                        .iter()
                        .map(|r| RouteRecord {
                            old_upstream: None,
                            ..r.clone()
                        })
                        .collect(),
                    ..journal.clone()
                };
                self.route_to_replacing_all(&back, &journal.old_id, &network)
                    .await?;
            }
        }
        info!(project = %journal.project, service = %journal.service,
            rotation.id = %journal.id, step = %journal.step, "rotation rolled back");
        Ok(())
    }

    /// Like [`Self::route_to`], but the old upstream of the journal and the addresses of the
    /// journal's two containers are all replaced by `container`'s address.
    async fn route_to_replacing_all(
        &self,
        journal: &Journal,
        container: &str,
        default_network: &str,
    ) -> Result<(), RotationError> {
        // Which addresses belong to this rotation: the recorded old one and whatever the
        // routes hold that no other replica of the service has.
        let others = self
            .replica_addresses(journal, container, default_network)
            .await?;
        let mut rebuilt = journal.clone();
        for route in &mut rebuilt.routes {
            let current = match self.proxy.route(&route.route).await {
                Ok(view) => view.upstreams,
                Err(_) => Vec::new(),
            };
            let mine: Vec<&String> = current
                .iter()
                .filter(|u| !others.iter().any(|(t, a)| *t == route.target && a == *u))
                .collect();
            route.old_upstream = mine.first().map(|s| (*s).clone());
        }
        self.route_to(&rebuilt, container, default_network).await
    }

    /// Addresses (per target port) of the service's other running containers.
    async fn replica_addresses(
        &self,
        journal: &Journal,
        except: &str,
        default_network: &str,
    ) -> Result<Vec<(u16, String)>, RotationError> {
        let key = ServiceKey {
            project: journal.project.clone(),
            service: journal.service.clone(),
        };
        let mut found = Vec::new();
        let Ok(service) = self.service(&key).await else {
            return Ok(found);
        };
        for replica in service.containers.iter().filter(|c| c.running) {
            if replica.id == except
                || replica.id == journal.old_id
                || Some(&replica.id) == journal.new_id.as_ref()
            {
                continue;
            }
            if let Some(inspect) = self.docker.inspect(&replica.id).await? {
                for route in &journal.routes {
                    if let Some((_, a)) =
                        container::address(&inspect, None, default_network, route.target)
                    {
                        found.push((route.target, a));
                    }
                }
            }
        }
        Ok(found)
    }

    /// The new container of a journal: by id, else by the temporary name, else by the label.
    async fn find_new(&self, journal: &Journal) -> Result<Option<String>, RotationError> {
        if let Some(id) = &journal.new_id
            && let Some(found) = self.docker.inspect(id).await?
        {
            return Ok(found.id);
        }
        if let Some(found) = self.docker.inspect(&journal.next_name).await?
            && container::labels_of(&found).get(ROTATION_LABEL) == Some(&journal.id)
        {
            return Ok(found.id);
        }
        let labelled = self
            .docker
            .list_labelled(ROTATION_LABEL, Some(&journal.id))
            .await?;
        Ok(labelled.into_iter().find_map(|s| s.id))
    }

    /// Finishes or undoes every rotation left in the journal directory (after a crash).
    pub async fn recover(&self) -> Result<Vec<(ServiceKey, Outcome)>, RotationError> {
        let mut outcomes = Vec::new();
        for file in journal::load_all(&self.config.journal_dir)? {
            let journal = file.journal.clone();
            let key = ServiceKey {
                project: journal.project.clone(),
                service: journal.service.clone(),
            };
            let lock = self.lock_of(&key);
            let _guard = lock.lock().await;

            let old_exists = self.docker.inspect(&journal.old_id).await?.is_some();
            let new = self.find_new(&journal).await?;
            let decision = decide(journal.step, old_exists, new.is_some());
            info!(project = %key.project, service = %key.service, rotation.id = %journal.id,
                step = %journal.step, decision = ?decision, "recovering rotation");
            let outcome = match (decision, new) {
                (Decision::Complete, Some(new)) => {
                    self.complete(&journal, &new).await?;
                    Outcome::Completed
                }
                (Decision::RollBack, _) => {
                    self.roll_back(&journal).await?;
                    Outcome::RolledBack {
                        reason: format!("interrupted at step {}", journal.step),
                    }
                }
                _ => {
                    file.finish()?;
                    return Err(RotationError::Failed {
                        service: key.to_string(),
                        step: journal.step,
                        reason: "neither the old nor the new container exists any more".into(),
                    });
                }
            };
            file.finish()?;
            if let Ok(service) = self.service(&key).await {
                self.clean_generations(&service).await;
            }
            emit(
                &self.events,
                Event::Recovered {
                    service: key.to_string(),
                    outcome: match outcome {
                        Outcome::Completed => "completed".into(),
                        _ => "rolled back".into(),
                    },
                    step: journal.step.to_string(),
                },
            );
            outcomes.push((key, outcome));
        }
        Ok(outcomes)
    }

    /// Completes a rotation past its switch: the new container runs, the routes point at it,
    /// the old one is gone and the new one has the original name.
    async fn complete(&self, journal: &Journal, new: &str) -> Result<(), RotationError> {
        let network = default_network(&journal.project);
        self.docker.start(new).await?;
        let targets: Vec<u16> = journal.routes.iter().map(|r| r.target).collect();
        let health = health::wait_healthy(
            &self.docker,
            new,
            &targets,
            &network,
            self.config.health_timeout,
            self.config.settle,
        )
        .await?;
        if let Err(reason) = health {
            // Past the switch the new container is the one that serves; keep going forward.
            warn!(container = %short(new), reason = %reason,
                "recovered container is not healthy yet");
        }
        self.route_to_replacing_all(journal, new, &network).await?;
        if journal.old_id != new {
            let old = self.docker.inspect(&journal.old_id).await?;
            if let Some(old) = old {
                self.docker
                    .stop(&journal.old_id, stop_timeout(&old))
                    .await?;
                self.docker.remove(&journal.old_id, false).await?;
            }
        }
        let current = self.docker.inspect(new).await?;
        if current.as_ref().map(container::name_of).as_deref() != Some(journal.name.as_str()) {
            self.docker.rename(new, &journal.name).await?;
        }
        Ok(())
    }

    /// A managed container (re)appeared (manual start, host reboot), or the agent starts
    /// next to it: its secret files are written again when any is missing (a running
    /// container that started without them is restarted), and when it runs its routes point
    /// at its current address. A stopped container gets its files only, ready for its start.
    pub async fn restore(&self, container_id: &str) -> Result<(), RotationError> {
        let Some(inspect) = self.docker.inspect(container_id).await? else {
            return Ok(());
        };
        let labels = container::labels_of(&inspect);
        let name = container::name_of(&inspect);
        if labels.get(MANAGED_LABEL).map(String::as_str) != Some("true")
            || name.ends_with(NEXT_SUFFIX)
        {
            return Ok(());
        }
        let (Some(project), Some(service)) = (labels.get(PROJECT_LABEL), labels.get(SERVICE_LABEL))
        else {
            return Ok(());
        };
        let key = ServiceKey {
            project: project.clone(),
            service: service.clone(),
        };
        // A rotation of the service in flight finishes first; its containers are then final.
        let lock = self.lock_of(&key);
        let _guard = lock.lock().await;
        let described = describe(&key, &name, &labels, self.config.default_strategy)?;

        // 1. Files, when any is missing: a tmpfs does not survive a reboot, and Docker
        //    recreates a lost bind source as an empty directory before the start event.
        let running = inspect.state.as_ref().and_then(|s| s.running) == Some(true);
        let file_variables: Vec<&str> = described
            .references
            .iter()
            .filter(|r| r.reference.injection == Injection::File)
            .map(|r| r.variable.as_str())
            .collect();
        let mut rewritten = false;
        if let Some(dir) = labels.get(FILES_DIR_LABEL).map(PathBuf::from)
            && file_variables.iter().any(|v| !dir.join(v).is_file())
        {
            let service_view = ManagedService {
                containers: Vec::new(),
                ..described.clone()
            };
            let values = self.resolve_all(&service_view)?;
            let files: Vec<(String, SecretValue)> = values
                .into_iter()
                .filter(|(_, _, i)| *i == Injection::File)
                .map(|(v, value, _)| (v, value))
                .collect();
            if let Some(parent) = dir.parent() {
                files::ensure_dir(parent)?;
                files::check_tmpfs(parent)?;
            }
            files::ensure_dir(&dir)?;
            // LIMITATION: the owner of the lost files is unknown, so they are written 0444
            // without chown — recording the owner in a label at `up` would lift it.
            files::rewrite_generation(&dir, &files, files::Owner { ids: None })?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(
                |source| FilesError::Io {
                    step: "chmod directory",
                    path: dir.clone(),
                    source,
                },
            )?;
            rewritten = true;
        }

        // A container that already runs started without its files (it may have read them at
        // start and failed, or cached "missing"): restart it so it starts with them. Its own
        // start event comes back here, finds the files and goes on to the routes.
        if rewritten && running {
            warn!(service = %key, container.name = %name,
                "container started without its secret files; restarting it with them");
            self.docker
                .stop(container_id, stop_timeout(&inspect))
                .await?;
            self.docker.start(container_id).await?;
        }

        // 2. Routes: every running replica of the service, in name order.
        if running && !described.routes.is_empty() {
            let network = default_network(&key.project);
            let service = self.service(&key).await?;
            for route in &described.routes {
                let mut upstreams = Vec::new();
                for replica in service.containers.iter().filter(|c| c.running) {
                    if let Some(found) = self.docker.inspect(&replica.id).await?
                        && let Some((_, a)) =
                            container::address(&found, None, &network, route.target)
                    {
                        upstreams.push(a);
                    }
                }
                let request = RouteRequest {
                    listen: route.listen.clone(),
                    upstreams,
                    drain_timeout_ms: Some(millis(self.config.drain_timeout)),
                };
                self.proxy
                    .put_route(&route.route, &request)
                    .await
                    .map_err(proxy_error(&route.route, "restore"))?;
            }
        }
        emit(
            &self.events,
            Event::ContainerRestored {
                service: key.to_string(),
                container: name,
            },
        );
        Ok(())
    }

    /// Removes generation directories of the service that no container mounts any more.
    async fn clean_generations(&self, service: &ManagedService) {
        let Ok(summaries) = self
            .docker
            .list_labelled(PROJECT_LABEL, Some(&service.key.project))
            .await
        else {
            return;
        };
        let in_use: Vec<PathBuf> = summaries
            .iter()
            .filter_map(|s| s.labels.as_ref()?.get(FILES_DIR_LABEL).map(PathBuf::from))
            .collect();
        let Some(service_dir) = in_use
            .iter()
            .filter_map(|d| d.parent())
            .find(|p| p.ends_with(&service.key.service))
            .map(PathBuf::from)
        else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&service_dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let is_generation = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with('g') && n[1..].parse::<u64>().is_ok());
            if is_generation && !in_use.contains(&path) {
                let _ = files::remove_tree(&path);
            }
        }
    }
}

/// A service as one container's labels describe it (no containers filled in).
fn describe(
    key: &ServiceKey,
    container: &str,
    labels: &HashMap<String, String>,
    default_strategy: Strategy,
) -> Result<ManagedService, RotationError> {
    let label_error = |label, reason: String| RotationError::Label {
        container: container.to_owned(),
        label,
        reason,
    };
    let strategy = match labels.get(STRATEGY_LABEL).map(String::as_str) {
        None => default_strategy,
        Some("rolling") => Strategy::Rolling,
        Some("restart") => Strategy::Restart,
        Some("signal") => Strategy::Signal,
        Some("none") => Strategy::None,
        Some(other) => {
            return Err(label_error(
                STRATEGY_LABEL,
                format!("unknown strategy {other:?}"),
            ));
        }
    };

    #[derive(Default, Deserialize)]
    struct References {
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        file: BTreeMap<String, String>,
    }
    let parsed: References = match labels.get(REFERENCES_LABEL) {
        None => References::default(),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| label_error(REFERENCES_LABEL, e.to_string()))?
        }
    };
    let mut references = Vec::new();
    for (variable, text) in parsed.env.iter().chain(parsed.file.iter()) {
        let reference = Reference::parse(text)
            .map_err(|e| label_error(REFERENCES_LABEL, format!("{variable}: {e}")))?;
        references.push(ServiceReference {
            variable: variable.clone(),
            reference,
        });
    }

    let routes: Vec<RouteLabel> = match labels.get(ROUTES_LABEL) {
        None => Vec::new(),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| label_error(ROUTES_LABEL, e.to_string()))?
        }
    };
    Ok(ManagedService {
        key: key.clone(),
        containers: Vec::new(),
        strategy,
        references,
        routes,
        files_dir: labels.get(FILES_DIR_LABEL).map(PathBuf::from),
    })
}

/// `current` with `old` replaced by `new` (order kept); when `old` is absent or not there,
/// `new` is added. `new` is never listed twice.
pub fn replace_upstream(current: &[String], old: Option<&str>, new: &str) -> Vec<String> {
    let mut upstreams: Vec<String> = Vec::new();
    let mut replaced = false;
    for upstream in current {
        let upstream = if Some(upstream.as_str()) == old {
            replaced = true;
            new.to_owned()
        } else {
            upstream.clone()
        };
        if !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    if !replaced && !upstreams.iter().any(|u| u == new) {
        upstreams.push(new.to_owned());
    }
    upstreams
}

/// Compose's default network of a project.
// LIMITATION: a project whose default network has a custom `name:` is not found by this name;
// the container's first network in name order is used then — labelling the network in `up`
// would lift it.
fn default_network(project: &str) -> String {
    format!("{project}_default")
}

fn new_id(journal: &Journal) -> Result<String, RotationError> {
    journal.new_id.clone().ok_or_else(|| RotationError::Failed {
        service: format!("{}/{}", journal.project, journal.service),
        step: journal.step,
        reason: "the new container was not created".into(),
    })
}

fn stop_timeout(container: &ContainerInspectResponse) -> Option<i64> {
    container.config.as_ref().and_then(|c| c.stop_timeout)
}

fn proxy_error(route: &str, step: &'static str) -> impl FnOnce(ClientError) -> RotationError {
    let route = route.to_owned();
    move |source| RotationError::Proxy {
        route,
        step,
        source: Box::new(source),
    }
}

fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Rolling => "rolling",
        Strategy::Restart => "restart",
        Strategy::Signal => "signal",
        Strategy::None => "none",
    }
}

/// How much longer than the rotation's own bounds a `restart` hold lasts: time for the stop,
/// the start and the route switch themselves.
const HOLD_SLACK_MS: u64 = 10_000;

/// Longest wait of a `restart` for the connections accepted before its hold: enough for
/// in-flight handshakes and transactions; a pooled connection that stays open longer is
/// closed by the old container's stop, and its pool reconnects into the hold.
pub const QUIESCE_MAX: Duration = Duration::from_secs(2);

/// How often a `restart` asks the proxy whether the held route's connections have ended.
const QUIESCE_POLL: Duration = Duration::from_millis(20);

fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u128::from(u64::MAX)) as u64
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh rotation id: time plus randomness, hex.
fn rotation_id() -> String {
    let mut random = [0u8; 6];
    let _ = getrandom::fill(&mut random);
    format!("{:x}-{}", unix_now(), hex::encode(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_keys_parse_and_print() {
        let key: ServiceKey = "shop/db".parse().unwrap();
        assert_eq!(key.project, "shop");
        assert_eq!(key.to_string(), "shop/db");
        for bad in ["shop", "/db", "shop/", "a/b/c", ""] {
            assert!(bad.parse::<ServiceKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams_are_replaced_in_place() {
        let current = vec!["a:1".to_owned(), "b:1".to_owned()];
        assert_eq!(
            replace_upstream(&current, Some("a:1"), "c:1"),
            ["c:1", "b:1"]
        );
        assert_eq!(
            replace_upstream(&current, Some("x:1"), "c:1"),
            ["a:1", "b:1", "c:1"]
        );
        assert_eq!(replace_upstream(&current, None, "b:1"), ["a:1", "b:1"]);
        assert_eq!(replace_upstream(&[], None, "c:1"), ["c:1"]);
    }

    #[test]
    fn labels_describe_a_service() {
        let key: ServiceKey = "p/s".parse().unwrap();
        let labels = HashMap::from([
            (STRATEGY_LABEL.to_owned(), "rolling".to_owned()),
            (
                REFERENCES_LABEL.to_owned(),
                r#"{"env":{"A":"dso://t/a"},"file":{"F":"dsofile://t/f#k"}}"#.to_owned(),
            ),
            (
                ROUTES_LABEL.to_owned(),
                r#"[{"route":"p.s.80","listen":"127.0.0.1:80","target":8080}]"#.to_owned(),
            ),
        ]);
        let service = describe(&key, "p_s_1", &labels, Strategy::Restart).unwrap();
        assert_eq!(service.strategy, Strategy::Rolling);
        assert_eq!(service.references.len(), 2);
        assert_eq!(
            service.references[1].reference.to_string(),
            "dsofile://t/f#k"
        );
        assert_eq!(service.routes[0].target, 8080);

        let bad = HashMap::from([(STRATEGY_LABEL.to_owned(), "blue".to_owned())]);
        let error = describe(&key, "p_s_1", &bad, Strategy::Restart).unwrap_err();
        assert!(error.to_string().contains("dso.strategy"), "{error}");
        let none = describe(&key, "p_s_1", &HashMap::new(), Strategy::Restart).unwrap();
        assert_eq!(none.strategy, Strategy::Restart);
    }
}
