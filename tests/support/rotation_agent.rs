//! Running `dso-agent` one-shot commands (`rotate`, `recover`) against a [`Home`], and a small
//! bounded HTTP load generator for the rotation tests.
//!
//! The agent gets exactly the environment `docker-dso` gets from the home (dso home, master
//! key, runtime directory), so both read the same vault and the same proxy socket. Its
//! journal is `$DSO_HOME/journal`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::dso::{Home, binary};
use super::http;

/// Pause between two requests of one load worker: keeps the load bounded on a shared machine.
const LOAD_PAUSE: Duration = Duration::from_millis(5);

/// Most requests one load worker sends, whatever happens.
const LOAD_MAX_REQUESTS: usize = 20_000;

/// `dso-agent` bound to a home.
pub struct Agent {
    binary: PathBuf,
    envs: Vec<(OsString, OsString)>,
    dir: PathBuf,
    /// `$DSO_HOME`.
    pub dso_home: PathBuf,
}

impl Agent {
    /// Writes `dso_yaml` as the home's `dso.yaml` and returns the agent for it.
    pub fn new(home: &Home, dso_yaml: &str) -> Result<Self> {
        let binary = binary("dso-agent")?;
        let template = home.command(["version"]);
        let envs: Vec<(OsString, OsString)> = template
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        let dso_home = envs
            .iter()
            .find(|(k, _)| k == "DSO_HOME")
            .map(|(_, v)| PathBuf::from(v))
            .context("the home sets no DSO_HOME")?;
        std::fs::write(dso_home.join("dso.yaml"), dso_yaml)?;
        Ok(Self {
            binary,
            envs,
            dir: home.dir().to_owned(),
            dso_home,
        })
    }

    /// `dso-agent ARGS` with the home's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .current_dir(&self.dir)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env_remove("DSO_AGENT_CRASH_AFTER")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        command
    }

    /// `dso-agent rotate SERVICE`, killed right after journaling `crash_after` when given.
    pub fn rotate(&self, service: &str, crash_after: Option<&str>) -> Result<Output> {
        let mut command = self.command(&["rotate", service]);
        if let Some(step) = crash_after {
            command.env("DSO_AGENT_CRASH_AFTER", step);
        }
        command.output().context("running dso-agent rotate")
    }

    /// `dso-agent recover`.
    pub fn recover(&self) -> Result<Output> {
        self.command(&["recover"])
            .output()
            .context("running dso-agent recover")
    }

    /// Journal files left in `$DSO_HOME/journal`.
    pub fn journals(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dso_home.join("journal"))
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

/// Both output streams of a command, for failure messages.
pub fn outputs(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One request of the load: when it ended and its body, or the error.
#[derive(Debug)]
pub struct Sample {
    pub at: Instant,
    pub result: Result<String, String>,
}

/// A running load: `workers` threads each sending `GET path` one after another.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts the load on a loopback address.
    pub fn start(addr: SocketAddr, path: &'static str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) && samples.len() < LOAD_MAX_REQUESTS {
                        let result = match http::get(addr, path) {
                            Ok(r) if r.status == 200 => Ok(r.text()),
                            Ok(r) => Err(format!("status {}", r.status)),
                            Err(e) => Err(format!("{e:#}")),
                        };
                        samples.push(Sample {
                            at: Instant::now(),
                            result,
                        });
                        std::thread::sleep(LOAD_PAUSE);
                    }
                    samples
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the load and returns each worker's samples in order.
    pub fn stop(self) -> Vec<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        self.workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    }
}
