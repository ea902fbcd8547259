//! The rotation journal: one JSON file per rotation in flight, so that an agent killed at any
//! point can finish or undo the rotation when it starts again (see `docs/rotation.md`).
//!
//! Each step is recorded *before* it is taken ([`JournalFile::record`]); recovery therefore
//! knows the furthest step that may have happened, and every step is written so that taking it
//! twice, or finding it half done, is harmless. A file holds names, ids, paths and addresses,
//! never a value. Writes are atomic: a temp file, fsync, rename, fsync of the directory.
//!
//! Test hook: when `DSO_AGENT_CRASH_AFTER` names a step, the process kills itself with SIGKILL
//! right after journaling that step (the crash tests use it; it is harmless in production,
//! where the variable is not set).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Strategy;

/// Environment variable of the crash test hook.
pub const CRASH_AFTER_ENV: &str = "DSO_AGENT_CRASH_AFTER";

/// Format version of a journal file.
pub const JOURNAL_VERSION: u32 = 1;

/// A journal operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or removing a journal file failed.
    #[error("could not {step} journal {path}")]
    Io {
        /// What was attempted.
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },

    /// A journal file does not parse.
    #[error("journal {path} is not a valid rotation journal")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The steps of a rotation, in the order of the `rolling` strategy. `restart` takes
/// `Hold` and `StopOld` before `StartNew` and has no `Drain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Rotation begun: the plan is recorded, nothing changed yet.
    Begin,
    /// Writing the next generation of secret files.
    WriteFiles,
    /// Creating the new container under the temporary name.
    Create,
    /// `restart`: the route holds new clients.
    Hold,
    /// `restart`: stopping the old container before the new one starts.
    StopOld,
    /// Starting the new container.
    StartNew,
    /// Waiting until the new container is healthy.
    WaitHealthy,
    /// Pointing the routes at the new container: the point of no return.
    SwitchRoute,
    /// `rolling`: letting connections of the old generation end.
    Drain,
    /// `rolling`: stopping the old container after the switch.
    StopOldAfter,
    /// Removing the old container.
    RemoveOld,
    /// Giving the new container the original name.
    Rename,
}

impl Step {
    /// The steps of a strategy that replaces containers, in order.
    pub fn sequence(strategy: Strategy) -> &'static [Step] {
        match strategy {
            Strategy::Restart => &[
                Step::Begin,
                Step::WriteFiles,
                Step::Create,
                Step::Hold,
                Step::StopOld,
                Step::StartNew,
                Step::WaitHealthy,
                Step::SwitchRoute,
                Step::RemoveOld,
                Step::Rename,
            ],
            _ => &[
                Step::Begin,
                Step::WriteFiles,
                Step::Create,
                Step::StartNew,
                Step::WaitHealthy,
                Step::SwitchRoute,
                Step::Drain,
                Step::StopOldAfter,
                Step::RemoveOld,
                Step::Rename,
            ],
        }
    }

    /// The step's name as journaled and as `DSO_AGENT_CRASH_AFTER` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Begin => "begin",
            Step::WriteFiles => "write_files",
            Step::Create => "create",
            Step::Hold => "hold",
            Step::StopOld => "stop_old",
            Step::StartNew => "start_new",
            Step::WaitHealthy => "wait_healthy",
            Step::SwitchRoute => "switch_route",
            Step::Drain => "drain",
            Step::StopOldAfter => "stop_old_after",
            Step::RemoveOld => "remove_old",
            Step::Rename => "rename",
        }
    }

    /// True once the routes may point at the new container: recovery completes from here on
    /// and rolls back before.
    pub fn is_committed(self) -> bool {
        self >= Step::SwitchRoute
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One proxied route of the container being replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// Route name.
    pub route: String,
    /// Listen address.
    pub listen: String,
    /// Container port.
    pub target: u16,
    /// The old container's upstream (`IP:PORT`) when the rotation began.
    pub old_upstream: Option<String>,
}

/// Everything recovery needs to know about one rotation. No values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// [`JOURNAL_VERSION`].
    pub version: u32,
    /// Rotation id (also the `dso.rotation.id` label of the new container).
    pub id: String,
    /// Compose project.
    pub project: String,
    /// Compose service.
    pub service: String,
    /// The strategy that runs.
    pub strategy: Strategy,
    /// Why the rotation runs.
    pub reason: String,
    /// Id of the container being replaced.
    pub old_id: String,
    /// Its name (without the leading `/`), which the new container gets at the end.
    pub name: String,
    /// Temporary name of the new container.
    pub next_name: String,
    /// Id of the new container, once created.
    pub new_id: Option<String>,
    /// Generation directory the old container mounts.
    pub old_files: Option<PathBuf>,
    /// Generation directory of the new container, once written.
    pub new_files: Option<PathBuf>,
    /// The routes.
    pub routes: Vec<RouteRecord>,
    /// The furthest step journaled.
    pub step: Step,
    /// Unix seconds at the start.
    pub started: u64,
}

/// A journal on disk: the record plus its path.
#[derive(Debug)]
pub struct JournalFile {
    /// Where it is written.
    pub path: PathBuf,
    /// The record as last written.
    pub journal: Journal,
}

impl JournalFile {
    /// Writes the initial record (step `Begin`) to `dir`.
    pub fn begin(dir: &Path, journal: Journal) -> Result<Self, JournalError> {
        ensure_dir(dir)?;
        let path = dir.join(file_name(&journal.project, &journal.service));
        let file = Self { path, journal };
        file.write()?;
        crash_hook(Step::Begin);
        Ok(file)
    }

    /// Records `step` as about to be taken; returns after the record is durable (and, under
    /// the test hook, does not return at all).
    pub fn record(&mut self, step: Step) -> Result<(), JournalError> {
        self.journal.step = step;
        self.write()?;
        crash_hook(step);
        Ok(())
    }

    /// Records a fact learnt while taking the current step (e.g. the new container's id).
    pub fn update(&mut self, change: impl FnOnce(&mut Journal)) -> Result<(), JournalError> {
        change(&mut self.journal);
        self.write()
    }

    /// Removes the file: the rotation is over (completed or rolled back).
    pub fn finish(self) -> Result<(), JournalError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(JournalError::Io {
                    step: "remove",
                    path: self.path,
                    source,
                });
            }
        }
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }

    fn write(&self) -> Result<(), JournalError> {
        let bytes =
            serde_json::to_vec_pretty(&self.journal).map_err(|source| JournalError::Parse {
                path: self.path.clone(),
                source,
            })?;
        crate::atomic::replace(&self.path, &bytes, 0o600).map_err(|failed| JournalError::Io {
            step: failed.step,
            path: failed.path,
            source: failed.source,
        })
    }
}

/// Every journal in `dir`, oldest rotation first. A missing directory holds none.
pub fn load_all(dir: &Path) -> Result<Vec<JournalFile>, JournalError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Io {
                step: "list",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = fs::read(&path).map_err(|source| JournalError::Io {
            step: "read",
            path: path.clone(),
            source,
        })?;
        let journal = serde_json::from_slice(&bytes).map_err(|source| JournalError::Parse {
            path: path.clone(),
            source,
        })?;
        found.push(JournalFile { path, journal });
    }
    found.sort_by_key(|f| (f.journal.started, f.path.clone()));
    Ok(found)
}

/// The journal file name of a service: readable when the names are plain, hex otherwise.
fn file_name(project: &str, service: &str) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    };
    if plain(project) && plain(service) {
        format!("{project}.{service}.json")
    } else {
        format!("x{}.json", hex::encode(format!("{project}/{service}")))
    }
}

fn ensure_dir(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| JournalError::Io {
            step: "create directory",
            path: dir.to_owned(),
            source,
        })
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| JournalError::Io {
            step: "fsync directory",
            path: dir.to_owned(),
            source,
        })
}

/// The test hook: SIGKILL ourselves right after `step` was journaled.
fn crash_hook(step: Step) {
    let wanted = std::env::var(CRASH_AFTER_ENV).ok();
    if wanted.as_deref() == Some(step.as_str()) {
        tracing::warn!(step = %step, "crash test hook: killing the agent");
        // SAFETY: kill has no memory preconditions; we signal our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Journal {
        Journal {
            version: JOURNAL_VERSION,
            id: "r1".into(),
            project: "p".into(),
            service: "s".into(),
            strategy: Strategy::Rolling,
            reason: "test".into(),
            old_id: "abc".into(),
            name: "p_s_1".into(),
            next_name: "p_s_1-dso-next".into(),
            new_id: None,
            old_files: None,
            new_files: None,
            routes: vec![RouteRecord {
                route: "p.s.80".into(),
                listen: "127.0.0.1:80".into(),
                target: 80,
                old_upstream: Some("172.18.0.2:80".into()),
            }],
            step: Step::Begin,
            started: 1,
        }
    }

    #[test]
    fn a_journal_survives_a_round_trip_and_is_removed_when_finished() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("journal");
        let mut file = JournalFile::begin(&dir, sample()).unwrap();
        file.record(Step::Create).unwrap();
        file.update(|j| j.new_id = Some("def".into())).unwrap();

        let loaded = load_all(&dir).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].journal.step, Step::Create);
        assert_eq!(loaded[0].journal.new_id.as_deref(), Some("def"));
        assert_eq!(loaded[0].path.file_name().unwrap(), "p.s.json");

        file.finish().unwrap();
        assert!(load_all(&dir).unwrap().is_empty());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "no temp file left");
    }

    #[test]
    fn sequences_order_steps_and_commit_at_the_switch() {
        for strategy in [Strategy::Rolling, Strategy::Restart] {
            let steps = Step::sequence(strategy);
            assert_eq!(steps[0], Step::Begin);
            assert!(steps.windows(2).all(|w| w[0] < w[1]), "{strategy:?}");
            let first_committed = steps.iter().position(|s| s.is_committed()).unwrap();
            assert_eq!(steps[first_committed], Step::SwitchRoute);
        }
        assert!(Step::sequence(Strategy::Restart).contains(&Step::Hold));
        assert!(!Step::sequence(Strategy::Restart).contains(&Step::Drain));
    }

    #[test]
    fn odd_names_get_a_hex_file_name() {
        assert_eq!(file_name("p", "s"), "p.s.json");
        assert!(file_name("p/x", "s").starts_with('x'));
    }
}
