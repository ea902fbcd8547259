//! Change detection: which secrets the managed services use, when each is checked, what
//! counts as a change, and the hand-off of changes to rotations.
//!
//! One task ([`Detector::run`]) owns the state. It checks every watched reference on its own
//! [`schedule::Schedule`], compares the value's keyed fingerprint with the last one each
//! service got ([`seen::Seen`], persisted), gathers changes per service for a short window
//! ([`coalesce::Coalescer`]) and runs at most one rotation per service at a time
//! ([`queue::WorkQueue`]), through a [`Rotator`]. A fingerprint is committed only after the
//! rotation that delivered it succeeded, so a failed or interrupted rotation is retried on
//! the next check instead of being forgotten.
//!
//! Never holds a value longer than one fingerprint computation, and never logs one.

pub mod coalesce;
pub mod queue;
pub mod schedule;
pub mod seen;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::reference::Reference;
use crate::resolve::ValueSource;
use coalesce::Coalescer;
use queue::{Reasons, WorkQueue};
use schedule::{Outcome, Schedule};
use seen::Seen;

/// Metric: checks by outcome (`changed`, `unchanged`, `failed`).
pub const CHECKS: &str = "dso_agent_checks_total";
/// Metric: rotations the agent asked for, by result (`ok`, `failed`).
pub const ROTATIONS: &str = "dso_agent_rotations_total";
/// Metric: references being watched.
pub const WATCHED: &str = "dso_agent_watched_references";

/// A boxed rotation future: `Ok` when the service runs with the new values.
pub type RotationFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Runs one rotation of a service (`project/service`) for a reason.
pub trait Rotator: Send + Sync + 'static {
    /// Rotates `service`; the values are read when the rotation starts.
    fn rotate(&self, service: String, reason: String) -> RotationFuture;
}

/// The references each managed service (`project/service`) uses.
pub type Services = BTreeMap<String, Vec<Reference>>;

/// What the detector is asked to do.
enum Command {
    /// The managed services changed (new containers, removed projects).
    Services(Services),
    /// Check the references matching a name (reference text or secret path) now.
    CheckNow(String, oneshot::Sender<usize>),
    /// Rotate a service now, or every service using a secret.
    Rotate(Target, oneshot::Sender<Vec<String>>),
    /// A rotation ended.
    Finished {
        service: String,
        ok: bool,
        committed: Vec<(String, String)>,
    },
}

/// What a manual rotation names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One service, `project/service` (or `service` when only one project has it).
    Service(String),
    /// Every service using the secret (reference text or secret path).
    Secret(String),
}

/// Per-reference watch state.
#[derive(Debug)]
struct Watch {
    reference: Reference,
    schedule: Schedule,
    next: Instant,
    last_checked: Option<std::time::SystemTime>,
    last_error: Option<String>,
    /// Fingerprint seen at the last successful check.
    current: Option<String>,
}

/// Everything the detector task owns; the status reads it under the lock.
struct Inner {
    interval: Duration,
    seen: Seen,
    services: Services,
    watches: BTreeMap<String, Watch>,
    coalescer: Coalescer,
    queue: WorkQueue,
    /// (service, reference) → fingerprint a queued or running rotation is delivering.
    targets: BTreeMap<(String, String), String>,
    last: BTreeMap<String, LastRotation>,
}

/// The last rotation the agent ran for a service.
#[derive(Clone, Debug, Serialize)]
pub struct LastRotation {
    /// `ok` or `failed`.
    pub result: String,
    /// Why it ran.
    pub reason: String,
    /// When it ended (RFC 3339, UTC).
    pub at: String,
}

/// Status of one watched reference.
#[derive(Clone, Debug, Serialize)]
pub struct WatchStatus {
    /// Reference text.
    pub reference: String,
    /// Services using it.
    pub services: Vec<String>,
    /// First 12 hex digits of the fingerprint seen last (never the value).
    pub version: Option<String>,
    /// Seconds until the next check.
    pub next_check_in_s: f64,
    /// The current interval (after back-off), seconds.
    pub interval_s: f64,
    /// When it was last checked (RFC 3339).
    pub last_checked: Option<String>,
    /// The last provider error, if the last check failed.
    pub last_error: Option<String>,
}

/// A snapshot for `/v1/status` and `docker dso status`.
#[derive(Clone, Debug, Serialize)]
pub struct DetectStatus {
    /// Watched references.
    pub references: Vec<WatchStatus>,
    /// Services with a change inside the coalescing window.
    pub coalescing: Vec<String>,
    /// Services rotating now.
    pub rotating: Vec<String>,
    /// Services with a rotation waiting for the running one.
    pub queued: Vec<String>,
    /// The last rotation per service.
    pub last_rotations: BTreeMap<String, LastRotation>,
}

/// A rotation the detector ran, as announced to waiting callers.
#[derive(Clone, Debug)]
pub struct Finished {
    /// `project/service`.
    pub service: String,
    /// `None` on success, else the error chain (names only).
    pub error: Option<String>,
}

/// Handle to the detector task.
#[derive(Clone)]
pub struct Detector {
    inner: Arc<Mutex<Inner>>,
    commands: mpsc::UnboundedSender<Command>,
    finished: tokio::sync::broadcast::Sender<Finished>,
}

/// The receiving half, consumed by [`Detector::run`].
pub struct DetectorTask {
    commands: mpsc::UnboundedReceiver<Command>,
    sender: mpsc::UnboundedSender<Command>,
    inner: Arc<Mutex<Inner>>,
    source: Arc<dyn ValueSource>,
    rotator: Arc<dyn Rotator>,
    finished: tokio::sync::broadcast::Sender<Finished>,
}

impl Detector {
    /// A detector over `seen`, checking every `interval` (±10 %), coalescing over `window`.
    pub fn new(
        seen: Seen,
        interval: Duration,
        window: Duration,
        source: Arc<dyn ValueSource>,
        rotator: Arc<dyn Rotator>,
    ) -> (Self, DetectorTask) {
        let (sender, commands) = mpsc::unbounded_channel();
        let inner = Arc::new(Mutex::new(Inner {
            interval,
            seen,
            services: Services::new(),
            watches: BTreeMap::new(),
            coalescer: Coalescer::new(window),
            queue: WorkQueue::default(),
            targets: BTreeMap::new(),
            last: BTreeMap::new(),
        }));
        let finished = tokio::sync::broadcast::channel(256).0;
        let task = DetectorTask {
            commands,
            sender: sender.clone(),
            inner: inner.clone(),
            source,
            rotator,
            finished: finished.clone(),
        };
        (
            Self {
                inner,
                commands: sender,
                finished,
            },
            task,
        )
    }

    /// Replaces the set of managed services and their references.
    pub fn set_services(&self, services: Services) {
        let _ = self.commands.send(Command::Services(services));
    }

    /// Checks the references matching `name` (a reference text such as `dso://app/pw`, or a
    /// secret path such as `app/pw`) at once. Returns how many references matched.
    pub async fn check_now(&self, name: &str) -> usize {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::CheckNow(name.to_owned(), tx));
        rx.await.unwrap_or(0)
    }

    /// Queues a rotation now. Returns the services it applies to (empty: nothing matched).
    pub async fn rotate(&self, target: Target) -> Vec<String> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Rotate(target, tx));
        rx.await.unwrap_or_default()
    }

    /// Rotations as they end (subscribe before asking for one).
    pub fn subscribe_finished(&self) -> tokio::sync::broadcast::Receiver<Finished> {
        self.finished.subscribe()
    }

    /// Whether a service rotation runs or waits now.
    pub fn busy(&self, service: &str) -> bool {
        let inner = lock(&self.inner);
        inner.queue.is_running(service) || inner.coalescer.waiting().iter().any(|s| s == service)
    }

    /// A snapshot of the state.
    pub fn status(&self) -> DetectStatus {
        let inner = lock(&self.inner);
        let now = Instant::now();
        let references = inner
            .watches
            .iter()
            .map(|(text, watch)| WatchStatus {
                reference: text.clone(),
                services: inner
                    .services
                    .iter()
                    .filter(|(_, refs)| refs.iter().any(|r| &r.to_string() == text))
                    .map(|(s, _)| s.clone())
                    .collect(),
                version: watch
                    .current
                    .as_ref()
                    .map(|p| p[..12.min(p.len())].to_owned()),
                next_check_in_s: watch.next.saturating_duration_since(now).as_secs_f64(),
                interval_s: watch.schedule.base().as_secs_f64(),
                last_checked: watch.last_checked.map(rfc3339),
                last_error: watch.last_error.clone(),
            })
            .collect();
        DetectStatus {
            references,
            coalescing: inner.coalescer.waiting(),
            rotating: inner.queue.running(),
            queued: inner.queue.queued(),
            last_rotations: inner.last.clone(),
        }
    }
}

impl DetectorTask {
    /// Runs until every [`Detector`] handle is gone... or forever: the task holds a sender
    /// for rotation results, so the agent ends it by aborting the task at shutdown.
    pub async fn run(mut self) {
        loop {
            // 1. Sleep until the next check or the end of a coalescing window, unless asked.
            let wake = next_wake(&self.inner);
            let command = tokio::select! {
                command = self.commands.recv() => command,
                () = sleep_until(wake) => None,
            };
            if let Some(command) = command {
                self.handle(command);
            }

            // 2. Checks that are due, one at a time (a vault read takes milliseconds).
            let due: Vec<(String, Reference)> = {
                let inner = lock(&self.inner);
                let now = Instant::now();
                inner
                    .watches
                    .iter()
                    .filter(|(_, w)| w.next <= now)
                    .map(|(t, w)| (t.clone(), w.reference.clone()))
                    .collect()
            };
            for (text, reference) in due {
                self.check(&text, reference).await;
            }

            // 3. Services whose coalescing window closed go to the work queue.
            let closed = lock(&self.inner).coalescer.take_due(Instant::now());
            for due in closed {
                let reasons: Reasons = due
                    .secrets
                    .iter()
                    .map(|s| format!("{CHANGED}{s}"))
                    .collect();
                let reasons = still_needed(&lock(&self.inner), &due.service, reasons);
                if reasons.is_empty() {
                    debug!(service = %due.service, "changes delivered already; no rotation");
                    continue;
                }
                self.request(&due.service, reasons);
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Services(services) => self.set_services(services),
            Command::CheckNow(name, reply) => {
                let mut inner = lock(&self.inner);
                let now = Instant::now();
                let mut matched = 0;
                for (text, watch) in inner.watches.iter_mut() {
                    if matches_name(text, &watch.reference, &name) {
                        watch.next = now;
                        matched += 1;
                    }
                }
                debug!(secret.ref = %name, matched, "check requested");
                let _ = reply.send(matched);
            }
            Command::Rotate(target, reply) => {
                let services = {
                    let inner = lock(&self.inner);
                    resolve_target(&inner.services, &target)
                };
                for service in &services {
                    let reason = match &target {
                        Target::Service(_) => "manual".to_owned(),
                        Target::Secret(name) => format!("manual: secret {name}"),
                    };
                    self.request(service, Reasons::from([reason]));
                }
                let _ = reply.send(services);
            }
            Command::Finished {
                service,
                ok,
                committed,
            } => self.finished(service, ok, committed),
        }
    }

    fn set_services(&mut self, services: Services) {
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        let interval = inner.interval;
        let mut wanted = BTreeSet::new();
        for (service, references) in &services {
            let new_service = !inner.services.contains_key(service);
            for reference in references {
                let text = reference.to_string();
                wanted.insert(text.clone());
                // A new reference, or a new user of one, is checked at once: that sets the
                // baseline of what the new service got.
                let watch = inner.watches.entry(text).or_insert_with(|| Watch {
                    reference: reference.clone(),
                    schedule: Schedule::new(interval),
                    next: now,
                    last_checked: None,
                    last_error: None,
                    current: None,
                });
                if new_service {
                    watch.next = now;
                }
            }
        }
        inner.watches.retain(|text, _| wanted.contains(text));
        // A service in the middle of a rotation may briefly have no container listed; its
        // fingerprints stay.
        let mut keep: BTreeSet<String> = services.keys().cloned().collect();
        keep.extend(inner.queue.running());
        if let Err(err) = inner.seen.retain_services(&|s| keep.contains(s)) {
            warn!(error = %err, "could not write the fingerprint state");
        }
        metrics::gauge!(WATCHED).set(inner.watches.len() as f64);
        inner.services = services;
    }

    /// Checks one reference and records what it found.
    async fn check(&self, text: &str, reference: Reference) {
        let source = self.source.clone();
        let inner = self.inner.clone();
        let text_owned = text.to_owned();
        // The value lives only inside this blocking call: fingerprinted, then dropped.
        let result = tokio::task::spawn_blocking(move || {
            let value = source.resolve(&reference)?;
            Ok::<_, crate::resolve::ResolveError>(lock(&inner).seen.fingerprint(&value))
        })
        .await;
        let result = match result {
            Ok(result) => result.map_err(|err| crate::error_chain(&err)),
            Err(join) => Err(format!("the check task failed: {join}")),
        };

        let mut inner = lock(&self.inner);
        let now = Instant::now();
        let users: Vec<String> = inner
            .services
            .iter()
            .filter(|(_, refs)| refs.iter().any(|r| r.to_string() == text_owned))
            .map(|(s, _)| s.clone())
            .collect();
        let outcome = match result {
            Err(error) => {
                warn!(secret.ref = %text_owned, error = %error, "check failed, backing off");
                if let Some(watch) = inner.watches.get_mut(&text_owned) {
                    watch.last_error = Some(error);
                }
                Outcome::Failed
            }
            Ok(print) => {
                let mut changed = false;
                for service in &users {
                    let seen = inner.seen.get(service, &text_owned).map(str::to_owned);
                    let key = (service.clone(), text_owned.clone());
                    match seen {
                        // First sight: the running container got this value from `up`.
                        // LIMITATION: a change between `up` and the agent's first check of a
                        // reference is taken as the baseline and not rotated — a fingerprint
                        // label written by `up` would let the agent compare against what the
                        // container really got.
                        None => {
                            if let Err(err) = inner.seen.set(service, &text_owned, &print) {
                                warn!(error = %err, "could not write the fingerprint state");
                            }
                        }
                        Some(seen) if seen == print => {
                            inner.targets.remove(&key);
                        }
                        Some(_) if inner.targets.get(&key) == Some(&print) => {}
                        Some(_) => {
                            info!(
                                service = %service,
                                secret.ref = %text_owned,
                                version = %&print[..12],
                                "secret version changed"
                            );
                            inner.targets.insert(key, print.clone());
                            inner.coalescer.add(service, &text_owned, now);
                            changed = true;
                        }
                    }
                }
                if let Some(watch) = inner.watches.get_mut(&text_owned) {
                    watch.last_error = None;
                    watch.current = Some(print);
                }
                if changed {
                    Outcome::Changed
                } else {
                    Outcome::Unchanged
                }
            }
        };
        let label = match outcome {
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
        };
        metrics::counter!(CHECKS, "outcome" => label).increment(1);
        if let Some(watch) = inner.watches.get_mut(&text_owned) {
            let delay = watch.schedule.record(outcome);
            watch.next = now + Schedule::jittered(delay, schedule::random_unit());
            watch.last_checked = Some(std::time::SystemTime::now());
            debug!(
                secret.ref = %text_owned,
                outcome = label,
                delay_ms = delay.as_millis() as u64,
                "checked"
            );
        }
    }

    /// Starts a rotation of `service` now, or queues it behind the running one.
    fn request(&self, service: &str, reasons: Reasons) {
        let start = lock(&self.inner).queue.request(service, reasons);
        if let Some(reasons) = start {
            self.start(service.to_owned(), reasons);
        }
    }

    fn start(&self, service: String, reasons: Reasons) {
        // The fingerprints this rotation delivers: committed when it succeeds. Detected
        // changes carry theirs; the service's other references (all of them, for a manual
        // rotation) are fingerprinted just before it starts.
        let (mut committed, untracked): (Vec<(String, String)>, Vec<Reference>) = {
            let inner = lock(&self.inner);
            let committed: Vec<(String, String)> = inner
                .targets
                .iter()
                .filter(|((s, _), _)| *s == service)
                .map(|((_, r), p)| (r.clone(), p.clone()))
                .collect();
            let untracked = inner
                .services
                .get(&service)
                .into_iter()
                .flatten()
                .filter(|r| !committed.iter().any(|(text, _)| *text == r.to_string()))
                .cloned()
                .collect();
            (committed, untracked)
        };
        let reason = reasons.into_iter().collect::<Vec<_>>().join("; ");
        let rotator = self.rotator.clone();
        let sender = self.sender.clone();
        let inner = self.inner.clone();
        let finished = self.finished.clone();
        let source = self.source.clone();
        tokio::spawn(async move {
            // A value that changes after this is delivered too; the next check then sees a
            // difference once more and rotates again: one extra rotation, never a lost one.
            let fingerprints = {
                let inner = inner.clone();
                tokio::task::spawn_blocking(move || {
                    let mut prints = Vec::new();
                    for reference in untracked {
                        if let Ok(value) = source.resolve(&reference) {
                            let print = lock(&inner).seen.fingerprint(&value);
                            prints.push((reference.to_string(), print));
                        }
                    }
                    prints
                })
                .await
                .unwrap_or_default()
            };
            committed.extend(fingerprints);
            info!(service = %service, reason = %reason, "rotation requested");
            let result = rotator.rotate(service.clone(), reason.clone()).await;
            let ok = result.is_ok();
            if let Err(error) = &result {
                warn!(service = %service, error = %error, "rotation failed");
            }
            metrics::counter!(ROTATIONS, "result" => if ok { "ok" } else { "failed" }).increment(1);
            lock(&inner).last.insert(
                service.clone(),
                LastRotation {
                    result: if ok { "ok".into() } else { "failed".into() },
                    reason,
                    at: rfc3339(std::time::SystemTime::now()),
                },
            );
            let _ = finished.send(Finished {
                service: service.clone(),
                error: result.err(),
            });
            let _ = sender.send(Command::Finished {
                service,
                ok,
                committed,
            });
        });
    }

    fn finished(&self, service: String, ok: bool, committed: Vec<(String, String)>) {
        let next = {
            let mut inner = lock(&self.inner);
            for (reference, print) in committed {
                let key = (service.clone(), reference.clone());
                if ok {
                    if let Err(err) = inner.seen.set(&service, &reference, &print) {
                        warn!(error = %err, "could not write the fingerprint state");
                    }
                    if let Some(watch) = inner.watches.get_mut(&reference) {
                        watch.current = Some(print.clone());
                    }
                    if inner.targets.get(&key) == Some(&print) {
                        inner.targets.remove(&key);
                    }
                } else if inner.targets.get(&key) == Some(&print) {
                    // Not delivered: the next check sees the change again and retries.
                    inner.targets.remove(&key);
                }
            }
            // A queued request whose changes this rotation delivered has nothing left to do.
            match inner.queue.finish(&service) {
                Some(reasons) => {
                    let needed = still_needed(&inner, &service, reasons);
                    if needed.is_empty() {
                        inner.queue.finish(&service);
                        None
                    } else {
                        Some(needed)
                    }
                }
                None => None,
            }
        };
        if let Some(reasons) = next {
            self.start(service, reasons);
        }
    }
}

/// Prefix of the reason a detected change gives its rotation.
const CHANGED: &str = "secret changed: ";

/// The reasons of a coalesced or queued request that still need a rotation: a manual one
/// always; a changed secret only while its new fingerprint is not delivered yet (a manual
/// rotation that ran in between may have delivered it).
fn still_needed(inner: &Inner, service: &str, reasons: Reasons) -> Reasons {
    reasons
        .into_iter()
        .filter(|reason| match reason.strip_prefix(CHANGED) {
            Some(secret) => inner
                .targets
                .contains_key(&(service.to_owned(), secret.to_owned())),
            None => true,
        })
        .collect()
}

/// The services a manual rotation applies to.
fn resolve_target(services: &Services, target: &Target) -> Vec<String> {
    match target {
        Target::Service(name) if services.contains_key(name) => vec![name.clone()],
        Target::Service(name) => {
            // `service` alone is accepted when exactly one project has it.
            let found: Vec<String> = services
                .keys()
                .filter(|k| k.rsplit_once('/').is_some_and(|(_, s)| s == name))
                .cloned()
                .collect();
            if found.len() == 1 { found } else { Vec::new() }
        }
        Target::Secret(name) => services
            .iter()
            .filter(|(_, refs)| refs.iter().any(|r| matches_name(&r.to_string(), r, name)))
            .map(|(s, _)| s.clone())
            .collect(),
    }
}

/// Whether a reference matches a name given by a user: the reference text, with or without
/// the scheme, or the secret path.
fn matches_name(text: &str, reference: &Reference, name: &str) -> bool {
    let bare = text
        .strip_prefix(crate::reference::ENV_SCHEME)
        .or_else(|| text.strip_prefix(crate::reference::FILE_SCHEME))
        .unwrap_or(text);
    text == name || bare == name || reference.path.to_string() == name
}

fn next_wake(inner: &Mutex<Inner>) -> Instant {
    let inner = lock(inner);
    let checks = inner.watches.values().map(|w| w.next).min();
    let window = inner.coalescer.next_due();
    [checks, window]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
}

async fn sleep_until(when: Instant) {
    tokio::time::sleep_until(when).await;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the state itself stays consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// RFC 3339 UTC time with seconds.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests;
