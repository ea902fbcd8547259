//! End-to-end tests of the rotation engine (`dso-agent rotate` / `recover`): real Docker
//! Engine, real `dso-proxy`, projects started by `docker dso up` with compose v1, the locally
//! built test images. Needs the `docker-dso`, `dso-proxy` and `dso-agent` binaries next to the
//! test executable (see `tests/support/dso.rs`).

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use support::docker::{self, ensure_daemon};
use support::dso::{Compose, Home, Project, container_env, rand_bytes};
use support::http;
use support::images::{self, app_fingerprint};
use support::rotation_agent::{Agent, Load, outputs};

/// `dso.yaml` of the tests: tight timeouts, so a failing health check fails fast.
const DSO_YAML: &str = "version: 1\ndefaults:\n  health_timeout: 20s\n  drain_timeout: 5s\n";

fn random_value(prefix: &str) -> Result<String> {
    Ok(format!("{prefix}-{}", hex::encode(&rand_bytes()?[..8])))
}

/// The end state every rotation and every recovery promises: exactly one container of the
/// service, under `name`, running; the route points at it alone; no journal is left; and only
/// the generation directory it mounts is left on the tmpfs.
fn expect_one_serving(
    project: &Project,
    agent: &Agent,
    service: &str,
    name: &str,
    port: u16,
) -> Result<String> {
    let containers = project.service_containers(service, true)?;
    ensure!(
        containers.len() == 1 && containers[0].0 == name,
        "want exactly {name}, found {containers:?}"
    );
    let id = containers[0].1.clone();
    let state = docker::docker(["inspect", "--format", "{{.State.Status}}", &id])?;
    ensure!(state == "running", "{name} is {state}");
    let want = project.default_network_address(&id, 8080)?;
    let routes = project.home.proxy_routes()?;
    let route = routes
        .iter()
        .find(|r| r.local_addr == format!("127.0.0.1:{port}"))
        .with_context(|| format!("no route on {port}: {routes:?}"))?;
    ensure!(
        route.upstreams == [want.clone()],
        "route {:?}, container at {want}",
        route.upstreams
    );
    ensure!(!route.holding, "the route still holds");
    ensure!(
        agent.journals().is_empty(),
        "journals left: {:?}",
        agent.journals()
    );
    let files_dir = project.files_dir().join(service);
    if files_dir.exists() {
        let mounted = docker::docker([
            "inspect",
            "--format",
            "{{index .Config.Labels \"dso.files.dir\"}}",
            &id,
        ])?;
        let generations: Vec<String> = std::fs::read_dir(&files_dir)?
            .filter_map(|e| e.ok().map(|e| e.path().display().to_string()))
            .collect();
        ensure!(
            generations == [mounted.clone()],
            "generations {generations:?}, mounted {mounted}"
        );
    }
    Ok(id)
}

/// An app service behind a proxied port with the given strategy and extra compose lines.
fn app_service(app: &str, port: u16, strategy: &str, extra: &str) -> String {
    format!(
        "    image: {app}\n    environment:\n      APP_SECRET: dso://t/a\n      APP_SECRET_FILE: \
         dsofile://t/f\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n    \
         stop_grace_period: 1s\n{extra}    labels:\n      dso.host_ports: \"true\"\n      \
         dso.strategy: {strategy}\n"
    )
}

/// Rolling under continuous HTTP load through the proxy: not one request fails, each load
/// worker sees the old secret version and then only the new one, and the service ends as one
/// container under its original name with the route pointing at it.
#[test]
fn rolling_swaps_under_load_without_a_failed_request() -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(Compose::V1)?;
    let agent = Agent::new(&home, DSO_YAML)?;
    let (first, second) = (random_value("first")?, random_value("second")?);
    home.set_secret("t/a", first.as_bytes())?;
    home.set_secret("t/f", b"file-one")?;
    let port = support::agent::free_port()?;
    let project = Project::new(&home, &[("web", &app_service(&app, port, "rolling", ""))])?;
    project.run_ok("up", &["-d"])?;
    let (name, old_id) = project
        .service_containers("web", true)?
        .pop()
        .context("no container")?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    http::wait_for_body(
        addr,
        "/secret-version",
        &format!("env={}", app_fingerprint(first.as_bytes())),
    )?;

    // Change the secret, rotate, all under load.
    let load = Load::start(addr, "/secret-version", 2);
    std::thread::sleep(Duration::from_millis(300));
    home.set_secret("t/a", second.as_bytes())?;
    home.set_secret("t/f", b"file-two")?;
    let changed = Instant::now();
    let out = agent.rotate(&format!("{}/web", project.name), None)?;
    ensure!(out.status.success(), "rotate failed: {}", outputs(&out));
    std::thread::sleep(Duration::from_millis(500));
    let workers = load.stop();

    // 0 failed requests; per worker: old, then only new.
    let (old_fp, new_fp) = (
        format!("env={}", app_fingerprint(first.as_bytes())),
        format!("env={}", app_fingerprint(second.as_bytes())),
    );
    let mut total = 0;
    let mut first_new: Option<Instant> = None;
    for samples in &workers {
        let mut seen_new = false;
        for sample in samples {
            total += 1;
            let body = match &sample.result {
                Ok(body) => body,
                Err(error) => bail!("a request failed during the rotation: {error}"),
            };
            if body.contains(&new_fp) {
                seen_new = true;
                first_new = Some(first_new.map_or(sample.at, |t| t.min(sample.at)));
            } else {
                ensure!(body.contains(&old_fp), "unexpected body {body:?}");
                ensure!(!seen_new, "a worker saw the old version after the new one");
            }
        }
        ensure!(seen_new, "a worker never saw the new version");
    }
    let serving = first_new.context("nobody saw the new version")? - changed;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "rolling: {total} requests, 0 failed; change-to-serving {} ms; outcome: {}",
        serving.as_millis(),
        stdout.lines().last().unwrap_or_default()
    );
    ensure!(
        stdout.contains("\"route_swapped\"") && stdout.contains("\"drained\""),
        "{stdout}"
    );

    // The end state, and the new values inside the new container.
    let new_id = expect_one_serving(&project, &agent, "web", &name, port)?;
    ensure!(
        !old_id.starts_with(&new_id) && !new_id.starts_with(&old_id),
        "not replaced"
    );
    ensure!(container_env(&new_id, "APP_SECRET")? == second.as_bytes());
    let version = http::wait_for_body(addr, "/secret-version", &new_fp)?;
    ensure!(
        version.contains(&format!("file={}", app_fingerprint(b"file-two"))),
        "{version}"
    );

    // No value in the agent's output.
    for value in [first.as_bytes(), second.as_bytes(), b"file-two"] {
        let all = [&out.stdout[..], &out.stderr[..]].concat();
        ensure!(
            !all.windows(value.len()).any(|w| w == value),
            "a value is in the output"
        );
    }
    Ok(())
}

/// A new container whose health check never passes is rolled back: the old one keeps serving
/// the old version, the route is unchanged, and nothing of the attempt is left.
#[test]
fn unhealthy_replacement_is_rolled_back() -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(Compose::V1)?;
    let agent = Agent::new(&home, DSO_YAML)?;
    let first = random_value("first")?;
    home.set_secret("t/a", first.as_bytes())?;
    home.set_secret("t/f", b"file-one")?;
    let port = support::agent::free_port()?;
    let check = "    healthcheck:\n      test: [\"CMD-SHELL\", \
                 \"case \\\"$$APP_SECRET\\\" in bad-*) exit 1;; esac\"]\n      interval: 1s\n      \
                 retries: 1\n";
    let project = Project::new(
        &home,
        &[("web", &app_service(&app, port, "rolling", check))],
    )?;
    project.run_ok("up", &["-d"])?;
    let (name, old_id) = project
        .service_containers("web", true)?
        .pop()
        .context("no container")?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    let old_fp = format!("env={}", app_fingerprint(first.as_bytes()));
    http::wait_for_body(addr, "/secret-version", &old_fp)?;
    let routes_before = home.proxy_routes()?;

    home.set_secret("t/a", random_value("bad")?.as_bytes())?;
    let out = agent.rotate(&format!("{}/web", project.name), None)?;
    ensure!(!out.status.success(), "rotate succeeded: {}", outputs(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(stdout.contains("\"rolled_back\""), "{}", outputs(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("wait_healthy"),
        "{}",
        outputs(&out)
    );

    let id = expect_one_serving(&project, &agent, "web", &name, port)?;
    ensure!(
        id == old_id,
        "the old container {old_id} was replaced by {id}"
    );
    let after: Vec<_> = home
        .proxy_routes()?
        .into_iter()
        .map(|r| (r.name, r.upstreams))
        .collect();
    let before: Vec<_> = routes_before
        .into_iter()
        .map(|r| (r.name, r.upstreams))
        .collect();
    ensure!(after == before, "routes changed: {before:?} -> {after:?}");
    http::wait_for_body(addr, "/secret-version", &old_fp)?;
    Ok(())
}

/// The agent is killed with SIGKILL right after journaling each step of `strategy` in turn;
/// `dso-agent recover` then leaves exactly one running container under the original name,
/// the route pointing at it (not holding), no journal and no extra generation, and serving the
/// old values when the crash came before the route switch and the new ones after it.
fn recovery_after_a_crash_at_each_step(strategy: &str, steps: &[&str]) -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(Compose::V1)?;
    let agent = Agent::new(&home, DSO_YAML)?;
    let mut current = random_value("v")?;
    home.set_secret("t/a", current.as_bytes())?;
    home.set_secret("t/f", b"file")?;
    let port = support::agent::free_port()?;
    let project = Project::new(&home, &[("web", &app_service(&app, port, strategy, ""))])?;
    project.run_ok("up", &["-d"])?;
    let (name, _) = project
        .service_containers("web", true)?
        .pop()
        .context("no container")?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    http::wait_for_body(
        addr,
        "/secret-version",
        &format!("env={}", app_fingerprint(current.as_bytes())),
    )?;
    let service = format!("{}/web", project.name);

    for (index, step) in steps.iter().enumerate() {
        let next = random_value("v")?;
        home.set_secret("t/a", next.as_bytes())?;
        home.set_secret("t/f", format!("file-{index}").as_bytes())?;
        let out = agent.rotate(&service, Some(step))?;
        ensure!(
            std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(9),
            "step {step}: the agent was not killed: {}",
            outputs(&out)
        );
        let journals = agent.journals();
        ensure!(
            !journals.is_empty(),
            "step {step}: no journal left by the crash"
        );
        for journal in &journals {
            let text = std::fs::read(journal)?;
            ensure!(
                !text.windows(next.len()).any(|w| w == next.as_bytes()),
                "step {step}: the journal holds the value"
            );
        }

        let out = agent.recover()?;
        ensure!(
            out.status.success(),
            "step {step}: recover failed: {}",
            outputs(&out)
        );
        let committed = index >= steps.iter().position(|s| *s == "switch_route").unwrap_or(0);
        let want = if committed {
            next.clone()
        } else {
            current.clone()
        };
        let id = expect_one_serving(&project, &agent, "web", &name, port)
            .with_context(|| format!("after a crash at step {step}"))?;
        ensure!(
            container_env(&id, "APP_SECRET")? == want.as_bytes(),
            "step {step}: wrong value after recovery (committed: {committed})"
        );
        http::wait_for_body(
            addr,
            "/secret-version",
            &format!("env={}", app_fingerprint(want.as_bytes())),
        )
        .with_context(|| format!("after a crash at step {step}"))?;
        if committed {
            current = next;
        }
    }
    Ok(())
}

/// SIGKILL at each journaled step of `rolling`, then `recover`: one serving container.
#[test]
fn recovery_after_a_crash_at_each_rolling_step() -> Result<()> {
    recovery_after_a_crash_at_each_step(
        "rolling",
        &[
            "begin",
            "write_files",
            "create",
            "start_new",
            "wait_healthy",
            "switch_route",
            "drain",
            "stop_old_after",
            "remove_old",
            "rename",
        ],
    )
}

/// SIGKILL at each journaled step of `restart` (route held, old stopped), then `recover`: one
/// serving container and a route that no longer holds.
#[test]
fn recovery_after_a_crash_at_each_restart_step() -> Result<()> {
    recovery_after_a_crash_at_each_step(
        "restart",
        &[
            "begin",
            "write_files",
            "create",
            "hold",
            "stop_old",
            "start_new",
            "wait_healthy",
            "switch_route",
            "remove_old",
            "rename",
        ],
    )
}

/// `signal` replaces the mounted secret file in place and sends SIGHUP: the same container
/// reloads and reports the new file's fingerprint.
#[test]
fn signal_rewrites_the_files_and_reloads_in_place() -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(Compose::V1)?;
    let agent = Agent::new(&home, DSO_YAML)?;
    home.set_secret("t/f", b"file-one")?;
    let port = support::agent::free_port()?;
    let body = format!(
        "    image: {app}\n    environment:\n      APP_SECRET_FILE: dsofile://t/f\n    \
         ports:\n      \
         - \"127.0.0.1:{port}:8080\"\n    stop_grace_period: 1s\n    labels:\n      \
         dso.host_ports: \"true\"\n      dso.strategy: signal\n"
    );
    let project = Project::new(&home, &[("web", &body)])?;
    project.run_ok("up", &["-d"])?;
    let (name, id) = project
        .service_containers("web", true)?
        .pop()
        .context("no container")?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    http::wait_for_body(
        addr,
        "/secret-version",
        &format!("file={}", app_fingerprint(b"file-one")),
    )?;

    home.set_secret("t/f", b"file-two")?;
    let out = agent.rotate(&format!("{}/web", project.name), None)?;
    ensure!(out.status.success(), "rotate failed: {}", outputs(&out));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("\"signalled\""),
        "{}",
        outputs(&out)
    );
    let version = http::wait_for_body(
        addr,
        "/secret-version",
        &format!("file={}", app_fingerprint(b"file-two")),
    )?;
    ensure!(version.contains("loads=2"), "{version}");
    let same = expect_one_serving(&project, &agent, "web", &name, port)?;
    ensure!(same == id, "the container was replaced");
    Ok(())
}

/// Postgres with a writable volume asks for `rolling` but gets `restart` with hold (stateful
/// safety); `pgbench -C` (a new connection per transaction) runs through the proxy during the
/// rotation without one failed connection, and the data survives.
#[test]
fn postgres_restart_with_hold_loses_no_connection() -> Result<()> {
    ensure_daemon()?;
    let image = images::postgres_image()?;
    let home = Home::new(Compose::V1)?;
    let agent = Agent::new(&home, DSO_YAML)?;
    let password = "pw-for-pgbench";
    home.set_secret("pg/password", password.as_bytes())?;
    home.set_secret("pg/note", b"one")?;
    let port = support::agent::free_port()?;
    let body = format!(
        "    image: {image}\n    environment:\n      \
         POSTGRES_PASSWORD_FILE: dsofile://pg/password\n      \
         NOTE: dso://pg/note\n    volumes:\n      - /var/lib/postgresql/data\n    ports:\n      \
         - \"127.0.0.1:{port}:5432\"\n    labels:\n      dso.host_ports: \"true\"\n      \
         dso.strategy: rolling\n"
    );
    let project = Project::new(&home, &[("db", &body)])?;
    project.run_ok("up", &["-d"])?;
    let port_text = port.to_string();
    let pg = |program: &str, args: &[&str]| {
        let mut command = std::process::Command::new(program);
        command
            .args(["-h", "127.0.0.1", "-p", &port_text, "-U", "postgres"])
            .args(args)
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "20");
        command
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = pg("psql", &["-tAc", "SELECT 1"]).output()?;
        if out.status.success() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "postgres never answered: {}",
            outputs(&out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = pg("pgbench", &["-i", "-q", "-s", "1", "postgres"]).output()?;
    ensure!(out.status.success(), "pgbench -i: {}", outputs(&out));

    // Two clients on two threads: with one thread, pgbench's blocking connect of a parked
    // client would also stall the other client's open connection.
    let bench = pg(
        "pgbench",
        &["-C", "-S", "-c", "2", "-j", "2", "-T", "12", "postgres"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    home.set_secret("pg/note", b"two")?;
    let out = agent.rotate(&format!("{}/db", project.name), None)?;
    ensure!(out.status.success(), "rotate failed: {}", outputs(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("\"strategy_changed\"") && stdout.contains("\"route_held\""),
        "{stdout}"
    );
    // Clients really were parked: the switch released at least one (pgbench -C connects
    // continuously, so some connect during the seconds Postgres restarts).
    let released: u64 = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "route_swapped")
        .filter_map(|e| e["released"].as_u64())
        .sum();
    ensure!(
        released > 0,
        "no client was held during the restart: {stdout}"
    );
    let outcome = stdout.lines().last().unwrap_or_default().to_owned();
    let bench = bench.wait_with_output()?;
    let report = outputs(&bench);
    ensure!(bench.status.success(), "pgbench failed: {report}");
    ensure!(
        report.contains("number of failed transactions: 0") && !report.contains("aborted"),
        "pgbench saw errors: {report}"
    );
    let line = report
        .lines()
        .filter(|l| l.contains("latency average") || l.contains("transactions actually"))
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!(
        "restart with hold under pgbench -C: {line}; held clients released: {released}; \
         rotation: {outcome}"
    );

    let containers = project.service_containers("db", true)?;
    ensure!(containers.len() == 1, "{containers:?}");
    ensure!(container_env(&containers[0].1, "NOTE")? == b"two");
    let out = pg("psql", &["-tAc", "SELECT count(*) FROM pgbench_accounts"]).output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "100000",
        "data lost: {}",
        outputs(&out)
    );
    ensure!(agent.journals().is_empty(), "journal left");
    Ok(())
}
