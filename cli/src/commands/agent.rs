//! `docker dso agent start|stop|status`, `status`, `watch` and `rotate`: the CLI's side of the
//! agent, over its IPC socket ([`controlplane::ipc::client`]).
//!
//! `agent start` runs `dso-agent run` detached (own process group, output appended to
//! `RUNTIME/agent.log`) and waits until the socket answers; `agent stop` sends SIGTERM to the
//! pid in `RUNTIME/agent.pid` (only if that process is a `dso-agent`) and waits for it to end.
//! `up` uses [`ensure_running`] to start a user-level agent when none runs.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use controlplane::agent::paths::Paths;
use controlplane::config;
use controlplane::ipc::RotateRequest;
use controlplane::ipc::client::{IpcClient, IpcClientError};

use super::CommandError;
use crate::args::{AgentCommand, RotateArgs, StatusArgs};
use crate::output::Output;

/// Environment variable naming the `dso-agent` binary to start.
pub const AGENT_BIN_ENV: &str = "DSO_AGENT_BIN";
/// How long a started agent may take until its socket answers (recovery runs before ready,
/// but the socket answers from the start).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopped agent may take to exit.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// Interval of `status --watch`.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Poll interval while waiting; not an ordering sleep.
const POLL: Duration = Duration::from_millis(50);

/// The agent's files for this user: from the configuration when one is found.
struct Target {
    config: Option<PathBuf>,
    socket: PathBuf,
    pid: PathBuf,
    log: PathBuf,
}

impl Target {
    fn find(config_path: Option<&Path>) -> anyhow::Result<Self> {
        let runtime = controlplane::files::runtime_dir()?;
        let found = config::find(config_path)?;
        let socket = match &found {
            Some(path) => {
                let loaded = config::load(path).context("loading the configuration")?;
                let state = controlplane::agent::paths::state_dir().unwrap_or_default();
                Paths::with(runtime.clone(), state, &loaded).socket
            }
            None => runtime.join("dso.sock"),
        };
        Ok(Self {
            config: found,
            socket,
            pid: runtime.join("agent.pid"),
            log: runtime.join("agent.log"),
        })
    }

    fn client(&self) -> IpcClient {
        IpcClient::new(&self.socket)
    }
}

fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(future))
}

fn agent_error(err: IpcClientError) -> anyhow::Error {
    CommandError::Agent(err).into()
}

/// `agent start|stop|status`.
pub fn agent(
    out: Output,
    config_path: Option<&Path>,
    command: &AgentCommand,
) -> anyhow::Result<()> {
    let target = Target::find(config_path)?;
    match command {
        AgentCommand::Start => {
            let (pid, started) = start(&target)?;
            out.result(
                &serde_json::json!({"started": started, "pid": pid, "socket": target.socket}),
                &if started {
                    format!(
                        "docker-dso: agent started (pid {pid}), socket {}",
                        target.socket.display()
                    )
                } else {
                    format!(
                        "docker-dso: agent already running, socket {}",
                        target.socket.display()
                    )
                },
            )?;
            Ok(())
        }
        AgentCommand::Stop => {
            let stopped = stop(&target)?;
            out.result(
                &serde_json::json!({"stopped": stopped}),
                if stopped {
                    "docker-dso: agent stopped"
                } else {
                    "docker-dso: no agent was running"
                },
            )?;
            Ok(())
        }
        AgentCommand::Status => {
            let status = block_on(target.client().status())?.map_err(agent_error)?;
            out.data(&status, |w| print_agent(w, &status))?;
            Ok(())
        }
    }
}

/// Starts the agent unless one answers. Returns its pid and whether it was started now.
fn start(target: &Target) -> anyhow::Result<(u32, bool)> {
    if let Ok(Ok(status)) = block_on(target.client().status()) {
        let pid = status["agent"]["pid"].as_u64().unwrap_or(0) as u32;
        return Ok((pid, false));
    }
    let Some(config_path) = &target.config else {
        bail!(CommandError::NoAgentConfig);
    };
    // Absolute, so the agent's status names the file wherever it is asked from.
    let config_path = std::fs::canonicalize(config_path)
        .with_context(|| format!("locating {}", config_path.display()))?;
    let binary = agent_binary();
    if let Some(dir) = target.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&target.log)
        .with_context(|| format!("opening {}", target.log.display()))?;
    let log_err = log.try_clone()?;
    // Own process group and no inherited terminal or pipes: the agent outlives this command,
    // must not keep a caller's pipe open, and must not get its Ctrl-C.
    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(&config_path)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();

    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "dso-agent exited at start ({status}): {}\n(full log: {})",
                last_line(&target.log),
                target.log.display()
            );
        }
        if let Ok(Ok(_)) = block_on(target.client().status()) {
            return Ok((pid, true));
        }
        std::thread::sleep(POLL);
    }
    bail!(
        "dso-agent (pid {pid}) did not answer on {} within {}s; see {}",
        target.socket.display(),
        START_DEADLINE.as_secs(),
        target.log.display()
    )
}

/// The last non-empty line of a log file (the agent's error on a failed start).
fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .to_owned()
}

/// Stops the agent of the pid file. Returns whether one was running.
fn stop(target: &Target) -> anyhow::Result<bool> {
    let Ok(text) = std::fs::read_to_string(&target.pid) else {
        return Ok(false);
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(false);
    };
    if !is_agent(pid) {
        let _ = std::fs::remove_file(&target.pid);
        return Ok(false);
    }
    // SAFETY: kill has no memory preconditions; pid was checked to be a dso-agent just now.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_DEADLINE;
    while is_agent(pid) {
        if Instant::now() > deadline {
            bail!(
                "dso-agent (pid {pid}) did not exit within {}s",
                STOP_DEADLINE.as_secs()
            );
        }
        std::thread::sleep(POLL);
    }
    Ok(true)
}

/// True when `pid` runs a program named `dso-agent` (and is not a zombie).
fn is_agent(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
    {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline
        .split(|&b| b == 0)
        .next()
        .is_some_and(|arg0| arg0.ends_with(b"dso-agent"))
}

fn agent_binary() -> PathBuf {
    controlplane::agent::paths::sibling_binary(AGENT_BIN_ENV, "dso-agent")
}

/// For `up`: starts a user-level agent when none answers and a configuration exists.
/// Returns a line for the user, or `None` when nothing was done.
pub fn ensure_running(config_path: Option<&Path>) -> anyhow::Result<Option<String>> {
    let target = Target::find(config_path)?;
    if target.config.is_none() {
        return Ok(None);
    }
    let (pid, started) = start(&target)?;
    Ok(started.then(|| format!("docker-dso: agent started (pid {pid})")))
}

/// How long `up` waits for a running agent to answer before it reads the vault itself.
const ANSWER_DEADLINE: Duration = Duration::from_secs(2);

/// The IPC client of this user's agent when one answers now, for `up` to resolve through;
/// `None` (read the local vault directly) when none runs or it does not answer in time.
pub fn serving_agent(config_path: Option<&Path>) -> Option<IpcClient> {
    let target = Target::find(config_path).ok()?;
    let client = target.client();
    // The timer must be made inside the runtime, so the timeout is built in the async block.
    let answered =
        block_on(async { tokio::time::timeout(ANSWER_DEADLINE, client.status()).await }).ok()?;
    let Ok(Ok(status)) = answered else {
        return None;
    };

    // An agent of another dso home (same runtime directory, other `DSO_HOME`) would answer
    // from a vault this command does not read: then the CLI reads its own.
    let ours = controlplane::vault::VaultFiles::locate()
        .ok()
        .map(|f| f.vault);
    let theirs = status["agent"]["vault"].as_str().map(PathBuf::from);
    if ours.is_some() && theirs != ours {
        eprintln!(
            "docker-dso: note: the agent at {} reads another vault ({}); reading {} directly",
            target.socket.display(),
            theirs.map_or("none".into(), |p| p.display().to_string()),
            ours.map_or("none".into(), |p| p.display().to_string()),
        );
        return None;
    }
    Some(client)
}

/// `status [--json] [--watch]`.
pub fn status(out: Output, config_path: Option<&Path>, args: &StatusArgs) -> anyhow::Result<()> {
    let target = Target::find(config_path)?;
    loop {
        let status = block_on(target.client().status())?.map_err(agent_error)?;
        if out.json && args.watch {
            // One document per line, so a script can read the stream.
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer(&mut stdout, &status)?;
            writeln!(stdout)?;
            stdout.flush()?;
        } else {
            out.data(&status, |w| print_status(w, &status))?;
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(WATCH_INTERVAL);
        if !out.json {
            println!();
        }
    }
}

/// `watch`: live events until interrupted.
pub fn watch(out: Output, config_path: Option<&Path>) -> anyhow::Result<()> {
    let target = Target::find(config_path)?;
    let socket = target.socket.display().to_string();
    let opened = move || {
        eprintln!("docker-dso: watching the events of the agent at {socket} (Ctrl-C to stop)");
    };
    let result = block_on(target.client().follow_events(opened, |event| {
        let mut stdout = std::io::stdout().lock();
        let written = if out.json {
            serde_json::to_writer(&mut stdout, &event)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(stdout))
        } else {
            writeln!(stdout, "{}", event_line(&event))
        };
        written.and_then(|()| stdout.flush()).is_ok()
    }))?;
    result.map_err(agent_error)
}

/// `rotate SERVICE | --secret NAME`.
pub fn rotate(out: Output, config_path: Option<&Path>, args: &RotateArgs) -> anyhow::Result<()> {
    let target = Target::find(config_path)?;
    let request = RotateRequest {
        service: args.service.clone(),
        secret: args.secret.clone(),
        wait: !args.no_wait,
    };
    let answer = block_on(target.client().rotate(&request))?.map_err(agent_error)?;
    let services: Vec<String> = answer["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.data(&answer, |w| {
        if args.no_wait {
            return writeln!(w, "docker-dso: rotation queued for {}", services.join(", "));
        }
        for service in &services {
            match answer["results"].get(service) {
                Some(r) if r["ok"] == serde_json::Value::Bool(true) => {
                    writeln!(w, "{service}: rotated")?
                }
                Some(r) => writeln!(
                    w,
                    "{service}: failed: {}",
                    r["error"].as_str().unwrap_or("unknown error")
                )?,
                None => writeln!(w, "{service}: no result")?,
            }
        }
        Ok(())
    })?;
    if !args.no_wait && answer["ok"] != serde_json::Value::Bool(true) {
        bail!("the rotation did not succeed for every service");
    }
    Ok(())
}

fn print_agent(w: &mut dyn Write, status: &serde_json::Value) -> std::io::Result<()> {
    let agent = &status["agent"];
    writeln!(
        w,
        "agent: running, pid {}, version {}, since {}",
        agent["pid"],
        text(&agent["version"]),
        text(&agent["started"])
    )?;
    writeln!(w, "  config: {}", text(&agent["config"]))?;
    writeln!(w, "  socket: {}", text(&agent["socket"]))?;
    writeln!(w, "  api:    {}", text(&agent["api_address"]))?;
    writeln!(w, "  ready:  {}", status["ready"])?;
    Ok(())
}

fn print_status(w: &mut dyn Write, status: &serde_json::Value) -> std::io::Result<()> {
    print_agent(w, status)?;
    let proxy = &status["proxy"];
    writeln!(
        w,
        "proxy: {} ({}), {} routes, {} connections, {} restarts, socket {}",
        if proxy["up"] == serde_json::Value::Bool(true) {
            "up"
        } else {
            "DOWN"
        },
        if proxy["adopted"] == serde_json::Value::Bool(true) {
            "adopted"
        } else {
            "started by the agent"
        },
        proxy["routes"],
        proxy["active"],
        proxy["restarts"],
        text(&proxy["socket"])
    )?;
    let providers: Vec<&str> = status["agent"]["providers"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    writeln!(
        w,
        "providers: {}",
        if providers.is_empty() {
            "local".into()
        } else {
            providers.join(", ")
        }
    )?;
    let services = status["services"].as_array().cloned().unwrap_or_default();
    writeln!(w, "services: {}", services.len())?;
    for service in &services {
        let name = text(&service["service"]);
        let last = &status["last_rotations"][name.as_str()];
        writeln!(
            w,
            "  {name}  strategy {}  containers {}  last rotation {}",
            text(&service["strategy"]),
            service["containers"].as_array().map_or(0, Vec::len),
            if last.is_null() {
                "-".to_owned()
            } else {
                format!(
                    "{} at {} ({})",
                    text(&last["result"]),
                    text(&last["at"]),
                    text(&last["reason"])
                )
            }
        )?;
        for route in service["routes"].as_array().cloned().unwrap_or_default() {
            writeln!(
                w,
                "    route {} on {}: generation {}, {} connections",
                text(&route["route"]),
                text(&route["listen"]),
                route["generation"],
                route["active"]
            )?;
        }
    }
    let references = status["references"].as_array().cloned().unwrap_or_default();
    writeln!(w, "secrets: {}", references.len())?;
    for reference in &references {
        writeln!(
            w,
            "  {}  version {}  next check in {:.0}s{}",
            text(&reference["reference"]),
            reference["version"].as_str().unwrap_or("-"),
            reference["next_check_in_s"].as_f64().unwrap_or(0.0),
            reference["last_error"]
                .as_str()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        )?;
    }
    let pending = &status["pending"];
    let list = |v: &serde_json::Value| -> String {
        let items: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        if items.is_empty() {
            "-".into()
        } else {
            items.join(", ")
        }
    };
    writeln!(
        w,
        "pending: coalescing {}; rotating {}; queued {}",
        list(&pending["coalescing"]),
        list(&pending["rotating"]),
        list(&pending["queued"])
    )?;
    Ok(())
}

/// One event as a line: time, type, then its fields.
fn event_line(event: &serde_json::Value) -> String {
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let kind = text(&event["type"]);
    let fields: Vec<String> = event
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "type")
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{time} {kind} {}", fields.join(" "))
}

fn text(value: &serde_json::Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_as_one_line_with_their_fields() {
        let line = event_line(&serde_json::json!({
            "type": "route_swapped", "route": "p.web.8080", "generation": 4
        }));
        assert!(
            line.ends_with(" route_swapped generation=4 route=p.web.8080"),
            "{line}"
        );
    }

    #[test]
    fn status_text_names_every_part() {
        let status = serde_json::json!({
            "agent": {"pid": 7, "version": "0.1.0", "started": "t", "config": "c",
                      "socket": "s", "api_address": "127.0.0.1:8471", "providers": ["local"]},
            "ready": true,
            "proxy": {"up": true, "adopted": true, "routes": 1, "active": 0, "restarts": 0,
                      "socket": "p"},
            "services": [{"service": "p/web", "strategy": "rolling", "containers": ["p-web-1"],
                          "routes": [{"route": "p.web.80", "listen": "127.0.0.1:80",
                                      "generation": 2, "active": 0}]}],
            "references": [{"reference": "dso://a/b", "version": "0123456789ab",
                            "next_check_in_s": 4.2}],
            "pending": {"coalescing": [], "rotating": ["p/web"], "queued": []},
            "last_rotations": {}
        });
        let mut text = Vec::new();
        print_status(&mut text, &status).unwrap();
        let text = String::from_utf8(text).unwrap();
        for part in [
            "pid 7",
            "proxy: up (adopted)",
            "p/web  strategy rolling",
            "generation 2",
            "dso://a/b  version 0123456789ab",
            "rotating p/web",
        ] {
            assert!(text.contains(part), "{part} missing in:\n{text}");
        }
    }
}
