//! End-to-end tests of `dso-agent` (issue 5, "Running the agent" and "Change detection"): the
//! real agent, proxy and CLI binaries against the real Docker Engine, with the app image of
//! `tests/support/images.rs` behind a proxied port.
//!
//! Each test starts its own agent (own runtime directory, own state, own free API port) with
//! `docker dso agent start`; `Home`'s drop stops it. Test traffic goes to 127.0.0.1 only.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use support::agent::{self, AgentConfig, TOKEN, request, wait_for};
use support::docker::ensure_daemon;
use support::dso::{Compose, Home, Project, rand_bytes};
use support::images::app_fingerprint;
use support::{http, images};

/// A home with a secret, a project with one proxied app service, `up -d` (which starts the
/// proxy, not the agent), and the agent's config. Returns the proxied address too.
fn project_up<'a>(
    home: &'a Home,
    strategy: &str,
    value: &[u8],
) -> Result<(Project<'a>, std::net::SocketAddr)> {
    let app = images::app_image()?;
    home.set_secret("t/pw", value)?;
    let port = agent::free_port()?;
    let body = format!(
        "    image: {app}\n    environment:\n      APP_SECRET: dso://t/pw\n    ports:\n      - \
         \"127.0.0.1:{port}:8080\"\n    labels:\n      dso.host_ports: \"true\"\n      \
         dso.strategy: {strategy}\n"
    );
    let project = Project::new(home, &[("web", &body)])?;
    project.run_ok("up", &["-d"])?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    http::wait_ok(addr, "/health", Duration::from_secs(30))?;
    Ok((project, addr))
}

fn service_key(project: &Project) -> String {
    format!("{}/web", project.name)
}

fn rotations_of(status: &serde_json::Value, service: &str) -> Option<serde_json::Value> {
    status["last_rotations"].get(service).cloned()
}

/// The agent adopts the proxy `up` started, serves /health, /ready, /metrics and /v1/status,
/// guards the webhook with its token, and a restart with nothing changed rotates nothing.
#[test]
fn agent_adopts_the_proxy_serves_its_api_and_restarts_without_rotating() -> Result<()> {
    ensure_daemon()?;
    let home = Home::new(Compose::V2)?;
    let sentinel = format!("sentinel-{}", hex::encode(&rand_bytes()?[..12]));
    let (project, addr) = project_up(&home, "rolling", sentinel.as_bytes())?;
    let config = agent::write_config(&home, "5s")?;
    let proxy_pid = std::fs::read_to_string(home.runtime.join("proxy.pid"))?;
    let container = project.container("web")?;

    // 1. Start: the proxy of `up` is adopted, not replaced.
    agent::start(&home, &config)?;
    let status = agent::status(&home)?;
    ensure!(
        status["proxy"]["adopted"] == true,
        "proxy not adopted: {}",
        status["proxy"]
    );
    ensure!(
        status["proxy"]["pid"].as_u64() == proxy_pid.trim().parse().ok(),
        "{}",
        status["proxy"]
    );
    ensure!(status["ready"] == true);
    let service = service_key(&project);
    let services = status["services"].as_array().context("services")?;
    ensure!(
        services.iter().any(|s| s["service"] == service.as_str()),
        "service {service} missing: {services:?}"
    );

    // 2. REST surfaces.
    let (code, body) = request(config.api, "GET", "/health", &[], b"")?;
    ensure!(code == 200 && body.contains("ok"), "{code} {body}");
    let (code, _) = request(config.api, "GET", "/ready", &[], b"")?;
    ensure!(code == 200);
    let (code, body) = request(config.api, "GET", "/v1/status", &[], b"")?;
    ensure!(code == 200 && body.contains(&service), "{code} {body}");
    let (code, metrics) = request(config.api, "GET", "/metrics", &[], b"")?;
    ensure!(code == 200, "{code}");
    ensure!(
        metrics.contains("dso_proxy_"),
        "proxy metrics missing:\n{metrics}"
    );
    ensure!(
        metrics.contains("dso_agent_"),
        "agent metrics missing:\n{metrics}"
    );

    // 3. The webhook: a wrong token is refused, the right one triggers a check.
    let body = br#"{"secret": "t/pw"}"#;
    let (code, _) = request(
        config.api,
        "POST",
        "/v1/webhook",
        &[("Authorization", "Bearer wrong-token-wrong-token")],
        body,
    )?;
    ensure!(code == 401, "wrong token gave {code}");
    let (code, _) = request(config.api, "POST", "/v1/webhook", &[], body)?;
    ensure!(code == 401, "no token gave {code}");
    let bearer = format!("Bearer {TOKEN}");
    let (code, answer) = request(
        config.api,
        "POST",
        "/v1/webhook",
        &[("Authorization", &bearer)],
        body,
    )?;
    ensure!(
        code == 202 && answer.contains("\"checking\":1"),
        "{code} {answer}"
    );
    wait_for("the webhook's check", Duration::from_secs(10), || {
        let status = agent::status(&home).ok()?;
        let reference = status["references"].as_array()?.first()?.clone();
        reference["last_checked"].is_string().then_some(())
    })?;

    // 4. Restart with nothing changed: a check runs, nothing rotates, the container stays.
    agent::dso_ok(&home, &["agent", "stop"])?;
    ensure!(
        !home.runtime.join("agent.pid").exists(),
        "pid file left behind"
    );
    agent::start(&home, &config)?;
    let (code, _) = request(
        config.api,
        "POST",
        "/v1/webhook",
        &[("Authorization", &bearer)],
        body,
    )?;
    ensure!(code == 202);
    let status = wait_for("a check after the restart", Duration::from_secs(10), || {
        let status = agent::status(&home).ok()?;
        let checked = status["references"][0]["last_checked"].is_string();
        checked.then_some(status)
    })?;
    // The coalescing window (2 s) would have closed by now for any change found.
    std::thread::sleep(Duration::from_millis(2500));
    let status = agent::status(&home).unwrap_or(status);
    ensure!(
        rotations_of(&status, &service).is_none(),
        "a restart with nothing changed rotated: {}",
        status["last_rotations"]
    );
    ensure!(
        status["pending"]["rotating"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    ensure!(
        project.container("web")? == container,
        "the container was replaced"
    );
    http::wait_ok(addr, "/health", Duration::from_secs(5))?;

    // 5. The secret never reached the agent's log, state or runtime files.
    let log = agent::log(&home);
    ensure!(!log.contains(&sentinel), "the value is in the agent log");
    ensure!(log.contains("proxy adopted"), "log:\n{log}");
    let roots = [home.dir().to_owned(), home.runtime.clone()];
    let (found, _) = support::dso::scan_for(&roots, sentinel.as_bytes());
    ensure!(found.is_empty(), "value found in {found:?}");
    Ok(())
}

/// A proxy killed with SIGKILL is restarted by the agent and gets every route back within 1 s
/// of answering again.
#[test]
fn a_killed_proxy_is_restarted_with_its_routes() -> Result<()> {
    ensure_daemon()?;
    let home = Home::new(Compose::V2)?;
    let (_project, addr) = project_up(&home, "rolling", b"value-1")?;
    let config = agent::write_config(&home, "5s")?;
    agent::start(&home, &config)?;
    let before = agent::status(&home)?;
    let pid = before["proxy"]["pid"].as_u64().context("proxy pid")?;

    let killed = Instant::now();
    let ok = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    ensure!(ok.success());

    // The new proxy answering is its restart; the route must follow within a second.
    let client = dataplane::client::ProxyClient::new(home.runtime.join("proxy.sock"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let restarted = wait_for("a new proxy", Duration::from_secs(15), || {
        let health = runtime.block_on(client.health()).ok()?;
        let status = agent::status(&home).ok()?;
        (status["proxy"]["pid"].as_u64() != Some(pid)).then_some(health)
    });
    let restarted = restarted?;
    let up_at = Instant::now();
    let served = wait_for(
        "the route on the new proxy",
        Duration::from_secs(10),
        || http::get(addr, "/health").ok().filter(|r| r.status == 200),
    );
    served?;
    let route_after = up_at.elapsed();
    eprintln!(
        "proxy killed → route served after {:?} (new proxy answered with {} routes after {:?})",
        killed.elapsed(),
        restarted.routes,
        up_at - killed
    );
    ensure!(
        route_after <= Duration::from_secs(1),
        "routes came back {route_after:?} after the new proxy answered; the promise is 1 s"
    );
    let after = agent::status(&home)?;
    ensure!(after["proxy"]["restarts"] == 1, "{}", after["proxy"]);
    Ok(())
}

/// A user who is neither root, nor the agent's user, nor in group `dso` is refused by the
/// SO_PEERCRED check even when the socket file itself would let them connect.
#[test]
fn the_ipc_socket_refuses_users_outside_group_dso() -> Result<()> {
    ensure_daemon()?;
    ensure!(
        Command::new("setpriv").arg("--version").output().is_ok(),
        "setpriv (util-linux) is needed to run a client as another user"
    );
    let home = Home::new(Compose::V2)?;
    let config = agent::write_config(&home, "5s")?;
    agent::start(&home, &config)?;
    let socket = home.runtime.join("dso.sock");

    // Open the way through the file system on purpose, so only the peer check is left.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&home.runtime, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;

    let curl = |as_nobody: bool| -> Result<std::process::Output> {
        let mut command = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]);
            c
        } else {
            Command::new("curl")
        };
        command
            .args(["-sS", "--max-time", "5", "--unix-socket"])
            .arg(&socket)
            .arg("http://agent/v1/status")
            .current_dir("/");
        Ok(command.output()?)
    };

    // The agent's own user (root here) is served.
    let own = curl(false)?;
    ensure!(
        own.status.success(),
        "root refused: {}",
        String::from_utf8_lossy(&own.stderr)
    );
    ensure!(String::from_utf8_lossy(&own.stdout).contains("\"agent\""));

    // nobody connects, but gets no answer.
    let nobody = curl(true)?;
    ensure!(!nobody.status.success(), "nobody was served");
    ensure!(
        nobody.stdout.is_empty(),
        "nobody got {:?}",
        String::from_utf8_lossy(&nobody.stdout)
    );
    let log = wait_for("the refusal in the log", Duration::from_secs(5), || {
        let log = agent::log(&home);
        log.contains("IPC connection refused").then_some(log)
    })?;
    ensure!(
        log.contains("65534"),
        "the refusal does not name the uid:\n{log}"
    );
    Ok(())
}

/// A secret changed in the vault is found by polling (the shortest interval, 5 s, no
/// webhook) and the service is rotated through the engine: the app serves the new value.
#[test]
fn a_changed_secret_is_detected_by_polling_and_rotated() -> Result<()> {
    ensure_daemon()?;
    let home = Home::new(Compose::V2)?;
    let (project, addr) = project_up(&home, "rolling", b"first-value")?;
    let config: AgentConfig = agent::write_config(&home, "5s")?;
    agent::start(&home, &config)?;
    let service = service_key(&project);
    let old = project.container("web")?;
    let version = http::get(addr, "/secret-version")?.text();
    ensure!(
        version.contains(&app_fingerprint(b"first-value")),
        "{version}"
    );

    // The baseline check runs at start; then the vault changes behind the agent's back.
    wait_for("the baseline check", Duration::from_secs(10), || {
        let status = agent::status(&home).ok()?;
        status["references"][0]["version"].is_string().then_some(())
    })?;
    let changed = Instant::now();
    home.set_secret("t/pw", b"second-value")?;

    let new = app_fingerprint(b"second-value");
    wait_for(
        "the new value behind the proxy",
        Duration::from_secs(90),
        || {
            let text = http::get(addr, "/secret-version").ok()?.text();
            text.contains(&new).then_some(())
        },
    )?;
    eprintln!("change → serving the new value: {:?}", changed.elapsed());
    let status = wait_for("the rotation result", Duration::from_secs(30), || {
        let status = agent::status(&home).ok()?;
        rotations_of(&status, &service).is_some().then_some(status)
    })?;
    let last = rotations_of(&status, &service).context("last rotation")?;
    ensure!(last["result"] == "ok", "{last}");
    ensure!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("dso://t/pw")),
        "{last}"
    );
    ensure!(
        project.container("web")? != old,
        "the container was not replaced"
    );
    Ok(())
}

/// Kills a child process when dropped (the endless `watch`).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `up` starts an agent when none runs; `docker dso rotate` rotates through it and `docker dso
/// watch` shows the steps; two secrets changed inside the coalescing window rotate the service
/// once, with both new values.
#[test]
fn up_starts_an_agent_that_rotates_on_request_and_coalesces_changes() -> Result<()> {
    use std::io::BufRead as _;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};

    ensure_daemon()?;
    let mut home = Home::new(Compose::V2)?;
    home.agent_on_up = true;
    let config = agent::write_config(&home, "5s")?;
    let app = images::app_image()?;
    home.set_secret("t/user", b"user-1")?;
    home.set_secret("t/pw", b"pw-1")?;
    let port = agent::free_port()?;
    let body = format!(
        "    image: {app}\n    environment:\n      APP_SECRET: dso://t/pw\n      APP_USER: \
         dso://t/user\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n    labels:\n      \
         dso.host_ports: \"true\"\n      dso.strategy: rolling\n"
    );
    let project = Project::new(&home, &[("web", &body)])?;
    let out = project.run_ok("up", &["-d"])?;
    ensure!(
        out.contains("agent started"),
        "up did not start the agent: {out}"
    );
    agent::wait_ready(config.api, Duration::from_secs(60))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let service = service_key(&project);

    // `watch` announces on stderr once it is subscribed; from then on no event is missed.
    let mut child = home
        .command(["watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("watch stdout")?;
    let stderr = child.stderr.take().context("watch stderr")?;
    let _watch = KillOnDrop(child);
    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(event) = serde_json::from_str(&line) {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(event);
            }
        }
    });
    let mut stderr = std::io::BufReader::new(stderr);
    let mut first = String::new();
    stderr.read_line(&mut first)?;
    ensure!(first.contains("watching the events"), "watch said: {first}");
    let events_of = |kind: &str| -> usize {
        lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e["type"] == kind && e["service"] == service.as_str())
            .count()
    };

    // 1. A manual rotation through the CLI, seen step by step by `watch`.
    let answer = agent::dso_ok(&home, &["rotate", &service])?;
    ensure!(answer.contains("rotated"), "rotate said: {answer}");
    wait_for("the rotation events", Duration::from_secs(10), || {
        (events_of("rotation_started") == 1 && events_of("rotation_finished") == 1).then_some(())
    })?;
    ensure!(events_of("rotation_step") > 0, "no steps were shown");

    // 2. Both secrets change; the webhook asks for both checks within the 2 s window.
    home.set_secret("t/user", b"user-2")?;
    home.set_secret("t/pw", b"pw-2")?;
    let bearer = format!("Bearer {TOKEN}");
    for secret in ["t/user", "t/pw"] {
        let body = format!("{{\"secret\": \"{secret}\"}}");
        let (code, answer) = request(
            config.api,
            "POST",
            "/v1/webhook",
            &[("Authorization", &bearer)],
            body.as_bytes(),
        )?;
        ensure!(code == 202, "webhook {secret}: {code} {answer}");
    }
    wait_for(
        "both new values behind the proxy",
        Duration::from_secs(60),
        || {
            let user = http::get(addr, "/cgi-bin/env/APP_USER").ok()?.body;
            let pw = http::get(addr, "/cgi-bin/env/APP_SECRET").ok()?.body;
            (user == b"user-2" && pw == b"pw-2").then_some(())
        },
    )?;
    wait_for(
        "the second rotation to finish",
        Duration::from_secs(30),
        || (events_of("rotation_finished") == 2).then_some(()),
    )?;
    ensure!(
        events_of("rotation_started") == 2,
        "two changes in the window must give one rotation, got {} in total",
        events_of("rotation_started")
    );
    let status = agent::status(&home)?;
    let last = rotations_of(&status, &service).context("last rotation")?;
    let reason = last["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("dso://t/user") && reason.contains("dso://t/pw"),
        "one rotation for both secrets: {last}"
    );
    Ok(())
}

/// A managed container started outside a rotation (`docker start`, here after another
/// container took its address) gets its route back at its new address.
#[test]
fn a_restarted_container_gets_its_route_back() -> Result<()> {
    ensure_daemon()?;
    let home = Home::new(Compose::V2)?;
    let (project, addr) = project_up(&home, "rolling", b"value-1")?;
    let config = agent::write_config(&home, "5s")?;
    agent::start(&home, &config)?;
    let container = project.container("web")?;
    let network = format!("{}_default", project.name);
    let ip = |id: &str| {
        support::docker::docker([
            "inspect",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            id,
        ])
    };
    let before = ip(&container)?;

    support::docker::docker(["stop", "-t", "2", &container])?;
    // Another container on the network may take the freed address.
    let app = images::app_image()?;
    let _other = support::docker::ContainerSpec::new(&app)
        .option(&format!("--network={network}"))
        .option("--entrypoint=/bin/sleep")
        .command(&["300"])
        .run()?;
    support::docker::docker(["start", &container])?;
    let after = ip(&container)?;
    eprintln!("address before {before}, after {after}");

    let client = dataplane::client::ProxyClient::new(home.runtime.join("proxy.sock"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let want = vec![format!("{after}:8080")];
    wait_for(
        "the route at the new address",
        Duration::from_secs(20),
        || {
            let routes = runtime.block_on(client.routes()).ok()?;
            routes.iter().any(|r| r.upstreams == want).then_some(())
        },
    )?;
    let response = http::wait_ok(addr, "/health", Duration::from_secs(10))?;
    ensure!(response.text().contains("ok"));
    let log = agent::log(&home);
    ensure!(
        log.contains("container restored") || log.contains("route reconciled"),
        "neither restore nor reconcile is in the log:\n{log}"
    );

    // Regression (found by a new user): after `down` stopped the proxy too, the status still
    // follows the containers and lists no service.
    project.run_ok("down", &[])?;
    wait_for("an empty service list", Duration::from_secs(30), || {
        let status = agent::status(&home).ok()?;
        status["services"]
            .as_array()
            .is_some_and(|s| s.is_empty())
            .then_some(())
    })?;
    Ok(())
}

/// Secret files lost from the tmpfs (a reboot) come back: a container started without them is
/// given them and restarted so it loads them, and an agent that starts next to a stopped
/// container writes them before the container's next start.
#[test]
fn lost_secret_files_are_written_again() -> Result<()> {
    ensure_daemon()?;
    let home = Home::new(Compose::V2)?;
    let app = images::app_image()?;
    let value = rand_bytes()?;
    home.set_secret("t/f", &value)?;
    let port = agent::free_port()?;
    let body = format!(
        "    image: {app}\n    environment:\n      APP_SECRET_FILE: dsofile://t/f\n    \
         ports:\n      \
         - \"127.0.0.1:{port}:8080\"\n    stop_grace_period: 1s\n    labels:\n      \
         dso.host_ports: \"true\"\n      dso.strategy: rolling\n"
    );
    let project = Project::new(&home, &[("web", &body)])?;
    project.run_ok("up", &["-d", "--no-agent"])?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let want = format!("file={}", app_fingerprint(&value));
    let serves = |what: &str| {
        wait_for(what, Duration::from_secs(30), || {
            let response = http::get(addr, "/secret-version").ok()?;
            response.text().contains(&want).then_some(())
        })
    };
    serves("the file's fingerprint after up")?;
    let config = agent::write_config(&home, "5s")?;
    agent::start(&home, &config)?;
    let container = project.container("web")?;
    let dir = support::docker::docker([
        "inspect",
        "--format",
        "{{index .Config.Labels \"dso.files.dir\"}}",
        &container,
    ])?;
    let dir = std::path::PathBuf::from(dir.trim());
    ensure!(dir.join("APP_SECRET_FILE").is_file(), "{}", dir.display());

    // 1. Lost while stopped, then `docker start`: Docker recreates the bind source empty and
    //    the app starts without its file; the agent writes it and restarts the container.
    support::docker::docker(["stop", "-t", "2", &container])?;
    std::fs::remove_dir_all(&dir)?;
    support::docker::docker(["start", &container])?;
    serves("the file's fingerprint after a start without the file")?;
    ensure!(dir.join("APP_SECRET_FILE").is_file());
    ensure!(
        agent::log(&home).contains("started without its secret files"),
        "no restart for the missing file in the log"
    );

    // 2. Lost while neither the agent nor the container ran: the agent's start writes it.
    agent::dso_ok(&home, &["agent", "stop"])?;
    support::docker::docker(["stop", "-t", "2", &container])?;
    std::fs::remove_dir_all(&dir)?;
    agent::start(&home, &config)?;
    ensure!(
        dir.join("APP_SECRET_FILE").is_file(),
        "the agent's start did not write the lost file"
    );
    support::docker::docker(["start", &container])?;
    serves("the file's fingerprint after a start with the rewritten file")?;
    ensure!(
        std::fs::read(dir.join("APP_SECRET_FILE"))? == value,
        "the rewritten file differs"
    );
    Ok(())
}

/// With an agent running, `up` resolves through it (`POST /v1/resolve` on the IPC socket):
/// here the CLI holds a wrong master key, so only the agent, which opened the vault with the
/// right one, can read the values; with `--no-agent` the same `up` fails on the vault. No value
/// appears in any output or log.
#[test]
fn up_resolves_through_a_running_agent() -> Result<()> {
    ensure_daemon()?;
    let home = Home::new(Compose::V2)?;
    let (_first, _addr) = project_up(&home, "rolling", b"value-1")?;
    let config = agent::write_config(&home, "5s")?;
    agent::start(&home, &config)?;
    // The agent opens the vault for its first check of the first project's reference.
    wait_for("the agent's first check", Duration::from_secs(30), || {
        let status = agent::status(&home).ok()?;
        let references = status["references"].as_array()?.clone();
        references
            .iter()
            .any(|r| r["version"].is_string())
            .then_some(())
    })?;

    let value = format!("through-agent-{}", hex::encode(rand_bytes()?));
    home.set_secret("t/other", value.as_bytes())?;
    let app = images::app_image()?;
    let body = format!(
        "    image: {app}\n    environment:\n      OTHER: dso://t/other\n      OTHER_FILE: \
         dsofile://t/other\n"
    );
    let second = Project::new(&home, &[("api", &body)])?;
    let wrong_key = hex::encode(rand_bytes()?);
    let up = |extra: &[&str]| {
        home.command(["up", "-d"])
            .args(extra)
            .arg("-f")
            .arg(&second.file)
            .args(["-p", &second.name])
            .env("DSO_MASTER_KEY", &wrong_key)
            .output()
    };

    // 1. Without the agent the CLI's own (wrong) key cannot open the vault.
    let refused = up(&["--no-agent"])?;
    let text = both(&refused);
    ensure!(!refused.status.success(), "up --no-agent succeeded: {text}");
    ensure!(text.contains("vault"), "{text}");
    ensure!(second.containers()?.is_empty(), "a container was created");

    // 2. Through the agent it works, byte-exact, env and file.
    let out = up(&[])?;
    let text = both(&out);
    ensure!(out.status.success(), "up through the agent failed: {text}");
    ensure!(text.contains("resolving through the agent"), "{text}");
    let container = second.container("api")?;
    ensure!(support::dso::container_env(&container, "OTHER")? == value.as_bytes());
    let path = support::dso::container_env(&container, "OTHER_FILE")?;
    let path = String::from_utf8(path)?;
    let inside = support::docker::docker(["exec", &container, "cat", &path])?;
    ensure!(inside.as_bytes() == value.as_bytes(), "the file differs");

    // 3. A CLI of another dso home (same runtime directory) does not take this agent's
    //    values: it says so and reads its own vault (none here).
    let other_home = tempfile::tempdir()?;
    let out = home
        .command(["plan", "-f"])
        .arg(&second.file)
        .args(["-p", &second.name])
        .env("DSO_HOME", other_home.path())
        .output()?;
    let other = both(&out);
    ensure!(!out.status.success(), "{other}");
    ensure!(other.contains("reads another vault"), "{other}");
    ensure!(!other.contains(&value), "the value is in plan's output");

    // 4. The value is in no output and not in the agent's log.
    ensure!(!text.contains(&value), "the value is in up's output");
    ensure!(
        !agent::log(&home).contains(&value),
        "the value is in the agent's log"
    );
    ensure!(
        agent::log(&home).contains("references resolved over IPC"),
        "the agent did not resolve"
    );
    Ok(())
}

/// The daemon itself SIGKILLed at a journaled step of a `rolling` rotation it runs (before and
/// after the route switch) and started again: its start-up recovery leaves exactly one
/// container under the original name, serving, with no journal left; detection then delivers
/// the new value.
#[test]
fn the_daemon_recovers_a_rotation_it_was_killed_in() -> Result<()> {
    ensure_daemon()?;
    let home = Home::new(Compose::V2)?;
    let (project, addr) = project_up(&home, "rolling", b"value-0")?;
    let config = agent::write_config(&home, "5s")?;
    let service = service_key(&project);
    let original = project.service_containers("web", true)?;
    ensure!(original.len() == 1, "{original:?}");
    let name = original[0].0.clone();
    let journal_dir = home.dso_home_path().join("journal");

    for (index, step) in ["start_new", "switch_route"].iter().enumerate() {
        // 1. An agent that kills itself right after journaling `step`.
        let out = home
            .command(["agent", "start"])
            .env("DSO_AGENT_CRASH_AFTER", step)
            .output()?;
        ensure!(
            out.status.success(),
            "agent start: {}",
            support::rotation_agent::outputs(&out)
        );
        agent::wait_ready(config.api, Duration::from_secs(60))?;
        let value = format!("value-{}", index + 1);
        home.set_secret("t/pw", value.as_bytes())?;
        let _ = home.command(["rotate", &service]).output()?;
        wait_for("the agent to die", Duration::from_secs(60), || {
            agent::request(config.api, "GET", "/health", &[], b"")
                .is_err()
                .then_some(())
        })?;
        let journals = std::fs::read_dir(&journal_dir)
            .map(|d| d.count())
            .unwrap_or(0);
        ensure!(journals > 0, "step {step}: no journal left by the crash");

        // 2. A normal start recovers before it is ready.
        agent::start(&home, &config)?;
        ensure!(
            agent::log(&home)
                .matches("unfinished rotation recovered")
                .count()
                == index + 1,
            "step {step}: no recovery in the log:\n{}",
            agent::log(&home)
        );
        let now = project.service_containers("web", true)?;
        ensure!(
            now.len() == 1 && now[0].0 == name,
            "step {step}: after recovery {now:?}"
        );
        let left = std::fs::read_dir(&journal_dir)
            .map(|d| d.count())
            .unwrap_or(0);
        ensure!(left == 0, "step {step}: {left} journal(s) left");

        // 3. Whatever recovery decided, detection delivers the new value.
        http::wait_for_body(
            addr,
            "/secret-version",
            &format!("env={}", app_fingerprint(value.as_bytes())),
        )
        .with_context(|| format!("after a crash at step {step}"))?;

        // 4. Stop only once that rotation has finished: a SIGTERM in the middle of one would
        //    leave a journal of its own for the next start to recover.
        wait_for("the rotation to finish", Duration::from_secs(60), || {
            let status = agent::status(&home).ok()?;
            let pending = &status["pending"];
            let idle = ["rotating", "queued", "coalescing"]
                .iter()
                .all(|k| pending[k].as_array().is_some_and(|a| a.is_empty()));
            let journals = std::fs::read_dir(&journal_dir)
                .map(|d| d.count())
                .unwrap_or(0);
            (idle && journals == 0).then_some(())
        })?;
        agent::dso_ok(&home, &["agent", "stop"])?;
    }
    Ok(())
}

/// Stdout and stderr of a command as one text, for searching both.
fn both(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
