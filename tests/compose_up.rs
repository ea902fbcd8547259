//! End-to-end tests of `docker dso up` / `down` / `plan` (issue 4) against the real Docker
//! Engine, with compose v1 (`docker-compose`) and v2 (`docker compose`), the real `docker-dso`
//! and `dso-proxy` binaries, and the test images of `tests/support/images.rs`.
//!
//! Values are stored through `docker-dso secret set` on stdin and read back inside the
//! containers; test traffic goes to 127.0.0.1 only.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use support::docker::{self, ensure_daemon};
use support::dso::{Compose, Home, Project, container_env, rand_bytes, scan_for};
use support::images::{self, app_fingerprint};

/// The tricky values of the issue, byte for byte.
const PEM: &str = "-----BEGIN KEY-----\nMIIBdso+/=\n-----END KEY-----";
fn tricky_values() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("DOLLAR", "t/dollar", b"p$HOME#x'y\"z$$1".to_vec()),
        ("PEM", "t/pem", PEM.as_bytes().to_vec()),
        ("NEWLINE", "t/newline", b"line\n".to_vec()),
        ("UNICODE", "t/unicode", "Zażółć+<>&🔑".as_bytes().to_vec()),
        ("EMPTY", "t/empty", Vec::new()),
    ]
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Env injection delivers every tricky value byte-exact (`$`, quotes, a PEM without trailing
/// newline, a trailing newline, non-ASCII, the empty string), and `$` is not re-interpolated.
fn env_values_are_byte_exact(compose: Compose) -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(compose)?;
    let mut environment = String::from("    environment:\n");
    for (var, path, value) in tricky_values() {
        home.set_secret(path, &value)?;
        environment.push_str(&format!("      {var}: dso://{path}\n"));
    }
    home.set_secret(
        "t/json",
        br#"{"db": {"pw": "nested$1"}, "n": 1.50, "a.b": "dotted"}"#,
    )?;
    environment.push_str("      NESTED: \"dso://t/json#db.pw\"\n");
    environment.push_str("      NUMBER: \"dso://t/json#n\"\n");
    environment.push_str("      DOTTED: 'dso://t/json#a\\.b'\n");
    environment.push_str("      PLAIN: \"kept$$HOME\"\n");
    let body = format!("    image: {app}\n{environment}");
    let project = Project::new(&home, &[("app", &body)])?;

    project.run_ok("up", &["-d"])?;
    let container = project.container("app")?;
    for (var, _, value) in tricky_values() {
        let seen = container_env(&container, var)?;
        ensure!(seen == value, "{var}: got {seen:?}, want {value:?}");
    }
    ensure!(container_env(&container, "NESTED")? == b"nested$1");
    ensure!(container_env(&container, "NUMBER")? == b"1.50");
    ensure!(container_env(&container, "DOTTED")? == b"dotted");
    ensure!(container_env(&container, "PLAIN")? == b"kept$HOME");

    // The labels name references, never values.
    let labels = docker::docker(["inspect", "--format", "{{json .Config.Labels}}", &container])?;
    ensure!(labels.contains("dso://t/dollar") && labels.contains("\"dso.managed\":\"true\""));
    ensure!(!labels.contains("nested$1"), "{labels}");

    project.run_ok("down", &[])?;
    ensure!(
        project.containers()?.is_empty(),
        "containers left after down"
    );
    Ok(())
}

#[test]
fn env_values_are_byte_exact_v1() -> Result<()> {
    env_values_are_byte_exact(Compose::V1)
}

#[test]
fn env_values_are_byte_exact_v2() -> Result<()> {
    env_values_are_byte_exact(Compose::V2)
}

/// File injection: every value byte-exact in a file (SHA-256 inside the container), mode 0400
/// owned by the service's user, not in `docker inspect`, and a planted sentinel is found
/// nowhere on disk (Docker's data root, HOME, temp dirs), only on the tmpfs; `down` removes the
/// files.
#[test]
fn file_values_are_exact_and_never_on_disk_v1() -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(Compose::V1)?;
    let sentinel = format!("sentinel-{}", hex::encode(&rand_bytes()?[..12]));
    let mut values = tricky_values();
    values.push(("SENTINEL", "t/sentinel", sentinel.clone().into_bytes()));
    values.push(("BINARY", "t/binary", vec![0xff, 0x00, 0xfe, b'\n']));

    let mut environment = String::from("    environment:\n");
    for (var, path, value) in &values {
        home.set_secret(path, value)?;
        environment.push_str(&format!("      {var}: dsofile://{path}\n"));
    }
    let body = format!(
        "    image: {app}\n    user: \"1000:1000\"\n    entrypoint: [\"/bin/sleep\", \"600\"]\n    \
         stop_grace_period: 1s\n{environment}"
    );
    let project = Project::new(&home, &[("app", &body)])?;
    project.run_ok("up", &["-d"])?;
    let container = project.container("app")?;

    for (var, _, value) in &values {
        let path = container_env(&container, var)?;
        ensure!(
            path == format!("/run/secrets/dso/{var}").as_bytes(),
            "{var} -> {path:?}"
        );
        let path = String::from_utf8(path)?;
        let sum = docker::docker(["exec", &container, "sha256sum", &path])?;
        let want = hex::encode(Sha256::digest(value));
        ensure!(sum.starts_with(&want), "{var}: {sum} != {want}");
        let stat = docker::docker(["exec", &container, "stat", "-c", "%u:%g %a", &path])?;
        ensure!(stat == "1000:1000 400", "{var}: {stat}");
    }

    // Not in inspect, not on disk; but on the tmpfs (which proves the scan can find it).
    let inspect = docker::docker(["inspect", &container])?;
    ensure!(
        !inspect.contains(&sentinel),
        "docker inspect shows the value"
    );
    let root = PathBuf::from(docker::docker(["info", "-f", "{{.DockerRootDir}}"])?);
    let upper = docker::docker([
        "inspect",
        "-f",
        "{{.GraphDriver.Data.UpperDir}}",
        &container,
    ])?;
    let mut roots = vec![
        root.join("containers"),
        root.join("volumes"),
        PathBuf::from(upper),
    ];
    roots.extend(std::env::var_os("HOME").map(PathBuf::from));
    roots.push(std::env::temp_dir());
    roots.push(PathBuf::from("/var/tmp"));
    let (found, read) = scan_for(&roots, sentinel.as_bytes());
    ensure!(found.is_empty(), "sentinel on disk in {found:?}");
    ensure!(read > 10, "the scan read only {read} files");
    let (on_tmpfs, _) = scan_for(&[project.files_dir()], sentinel.as_bytes());
    ensure!(on_tmpfs.len() == 1, "sentinel on tmpfs: {on_tmpfs:?}");

    // A second `up` with the same values keeps the container (same generation directory).
    project.run_ok("up", &["-d"])?;
    ensure!(
        project.container("app")? == container,
        "unchanged up recreated the container"
    );

    project.run_ok("down", &[])?;
    ensure!(
        project.containers()?.is_empty(),
        "containers left after down"
    );
    ensure!(!project.files_dir().exists(), "files left on the tmpfs");
    Ok(())
}

/// Every kind of problem is reported at once, one line each, with no value, and nothing is
/// created.
fn refusals_create_nothing(compose: Compose) -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(compose)?;
    let sentinel = format!("sentinel-{}", hex::encode(&rand_bytes()?[..12]));
    home.set_secret("t/json", format!(r#"{{"user": "{sentinel}"}}"#).as_bytes())?;
    let mut big = sentinel.clone().into_bytes();
    big.resize(200_000, b'x');
    home.set_secret("t/big", &big)?;
    let mut binary = sentinel.clone().into_bytes();
    binary.extend_from_slice(&[0xff, 0xfe]);
    home.set_secret("t/binary", &binary)?;
    home.set_secret("t/fine", b"fine")?;

    let body = format!(
        "    image: {app}\n    environment:\n      MISSING: dso://t/nope\n      \
         NOKEY: \"dso://t/json#password\"\n      BIG: dso://t/big\n      \
         BINARY: dso://t/binary\n      FINE: dso://t/fine\n      BADREF: dso://t//x\n"
    );
    let project = Project::new(&home, &[("app", &body)])?;
    let out = project.run("up", &["-d"])?;
    let text = stderr(&out);
    ensure!(!out.status.success(), "up succeeded: {text}");
    for var in ["MISSING", "NOKEY", "BIG", "BINARY", "BADREF"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("service app, {var} = ")))
            .with_context(|| format!("no problem line for {var} in:\n{text}"))?;
        ensure!(line.contains("hint:"), "no hint: {line}");
    }
    ensure!(text.contains("no secret at t/nope"), "{text}");
    ensure!(text.contains("has no key `password`"), "{text}");
    ensure!(
        text.contains("131072") && text.contains("use dsofile://"),
        "{text}"
    );
    ensure!(text.contains("not valid UTF-8"), "{text}");
    ensure!(text.contains("5 problems"), "{text}");
    ensure!(
        !text.contains("FINE ="),
        "a fine reference was reported: {text}"
    );
    ensure!(!text.contains(&sentinel), "a value was printed");
    ensure!(!String::from_utf8_lossy(&out.stdout).contains(&sentinel));
    ensure!(project.containers()?.is_empty(), "a container was created");
    let network = docker::docker([
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name={}_", project.name),
    ])?;
    ensure!(network.is_empty(), "a network was created");
    ensure!(!project.files_dir().exists(), "files were written");
    Ok(())
}

#[test]
fn refusals_create_nothing_v1() -> Result<()> {
    refusals_create_nothing(Compose::V1)
}

#[test]
fn refusals_create_nothing_v2() -> Result<()> {
    refusals_create_nothing(Compose::V2)
}

/// `plan --json` lists each reference with its injection and status and never a value.
#[test]
fn plan_lists_references_and_never_values() -> Result<()> {
    ensure_daemon()?;
    let home = Home::new(Compose::V1)?;
    let sentinel = format!("sentinel-{}", hex::encode(&rand_bytes()?[..12]));
    home.set_secret("t/a", sentinel.as_bytes())?;
    let body = "    image: busybox-not-pulled\n    user: \"7\"\n    ports:\n      - \
                \"127.0.0.1:18431:80\"\n    environment:\n      A: dso://t/a\n      \
                B_FILE: dsofile://t/a\n      C: dso://t/missing\n    labels:\n      \
                dso.host_ports: \"true\"\n";
    let project = Project::new(&home, &[("web", body)])?;
    let out = project.run("plan", &["--json"])?;
    ensure!(
        !out.status.success(),
        "plan with a problem must exit non-zero"
    );
    let stdout = String::from_utf8(out.stdout.clone())?;
    ensure!(!stdout.contains(&sentinel) && !stderr(&out).contains(&sentinel));
    let plan: serde_json::Value = serde_json::from_str(&stdout)?;
    let refs = &plan["services"][0]["references"];
    ensure!(
        refs[0]["variable"] == "A" && refs[0]["injection"] == "env" && refs[0]["resolved"] == true
    );
    ensure!(refs[1]["injection"] == "file" && refs[1]["file"] == "/run/secrets/dso/B_FILE");
    ensure!(
        refs[2]["resolved"] == false
            && refs[2]["problem"]
                .as_str()
                .is_some_and(|p| p.contains("no secret"))
    );
    ensure!(plan["services"][0]["proxied_ports"][0]["listen"] == "127.0.0.1:18431");
    ensure!(project.containers()?.is_empty());
    Ok(())
}

/// The runtime directory must be a tmpfs for `dsofile://`.
#[test]
fn files_are_refused_outside_tmpfs() -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(Compose::V1)?;
    home.set_secret("t/a", b"x")?;
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let body = format!("    image: {app}\n    environment:\n      A: dsofile://t/a\n");
    let project = Project::new(&home, &[("app", &body)])?;
    // An existing directory on disk gets the mount hint; one that does not exist yet is
    // judged by its parent, gets the hint to pick another, and is not created.
    let missing = disk.path().join("rt");
    for (runtime, hint) in [
        (disk.path().to_owned(), "hint: mount one"),
        (missing.clone(), "does not exist and would be made"),
    ] {
        for command in ["up", "plan"] {
            let out = project
                .home
                .command([command, "-d", "-f"])
                .arg(&project.file)
                .args(["-p", &project.name])
                .env("DSO_RUNTIME_DIR", &runtime)
                .output()?;
            // `plan` prints its problems with the plan, on stdout.
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
            ensure!(!out.status.success(), "{command}: {text}");
            ensure!(
                text.contains("is not on a tmpfs") && text.contains(hint),
                "{command}: {text}"
            );
            ensure!(!missing.exists(), "{command} created the runtime directory");
        }
    }
    ensure!(project.containers()?.is_empty());
    Ok(())
}

/// `127.0.0.1:15432:5432` is served by dso-proxy on 127.0.0.1 only; Postgres (password from a
/// dsofile) answers psql through it; `down` leaves no container, route, proxy or file.
#[test]
fn postgres_through_the_proxy_on_loopback_v1() -> Result<()> {
    ensure_daemon()?;
    let image = images::postgres_image()?;
    let home = Home::new(Compose::V1)?;
    let password = "pw$x'\"y";
    home.set_secret("pg/password", password.as_bytes())?;
    let body = format!(
        "    image: {image}\n    environment:\n      POSTGRES_PASSWORD_FILE: \
         dsofile://pg/password\n    ports:\n      - \"127.0.0.1:15432:5432\"\n    labels:\n      \
         dso.host_ports: \"true\"\n"
    );
    let project = Project::new(&home, &[("db", &body)])?;
    project.run_ok("up", &["-d"])?;
    let container = project.container("db")?;
    wait_healthy(&container, Duration::from_secs(120))?;

    // Nothing is published on the host for 5432: no binding, no docker-proxy, no DNAT.
    let bindings = docker::docker([
        "inspect",
        "--format",
        "{{json .HostConfig.PortBindings}}|{{json .NetworkSettings.Ports}}",
        &container,
    ])?;
    let (configured, published) = bindings.split_once('|').context("inspect format")?;
    let configured: serde_json::Value = serde_json::from_str(configured)?;
    let published: serde_json::Value = serde_json::from_str(published)?;
    ensure!(
        configured.as_object().is_none_or(|m| m.is_empty()),
        "port bindings: {configured}"
    );
    ensure!(
        published
            .get("5432/tcp")
            .is_none_or(serde_json::Value::is_null),
        "5432 is published: {published}"
    );

    // The proxy's route listens on 127.0.0.1:15432 and dials the container's address on the
    // project's own network (compared as text; the test never dials it itself).
    let network = format!("{}_default", project.name);
    let ip = docker::docker([
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &container,
    ])?;
    ensure!(!ip.is_empty(), "no address on {network}");
    let routes = home.proxy_routes()?;
    ensure!(routes.len() == 1, "{routes:?}");
    ensure!(routes[0].local_addr == "127.0.0.1:15432", "{:?}", routes[0]);
    ensure!(
        routes[0].upstreams == [format!("{ip}:5432")],
        "upstreams {:?}, container at {ip} on {network}",
        routes[0].upstreams
    );
    let listening = docker::run(Command::new("ss").args(["-Hltn"]))?;
    let on_port: Vec<&str> = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|addr| addr.ends_with(":15432"))
        .collect();
    ensure!(
        on_port == ["127.0.0.1:15432"],
        "listeners on 15432: {on_port:?}"
    );

    // psql through the proxy, with retries while the route settles.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "15432",
                "-U",
                "postgres",
                "-tAc",
                "SELECT 40 + 2",
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "42" {
            break;
        }
        if Instant::now() > deadline {
            bail!("psql through the proxy failed: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    project.run_ok("down", &[])?;
    ensure!(project.containers()?.is_empty(), "containers left");
    ensure!(
        !home.runtime.join("proxy.sock").exists(),
        "the proxy still runs"
    );
    ensure!(!project.files_dir().exists(), "files left on the tmpfs");
    let after = docker::run(Command::new("ss").args(["-Hltn"]))?;
    ensure!(!after.contains(":15432 "), "15432 still listening");
    Ok(())
}

fn wait_healthy(container: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = docker::docker([
            "inspect",
            "--format",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
            container,
        ])?;
        if state == "running healthy" {
            return Ok(());
        }
        ensure!(state.starts_with("running"), "container is {state}");
        if Instant::now() > deadline {
            bail!("not healthy after {timeout:?}: {state}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With the project on stdin, a relative build context, bind mount and `env_file` still
/// resolve from the compose file's directory, and compose records that directory as the
/// project's working directory.
fn relative_paths_resolve_from_the_project_directory(compose: Compose) -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(compose)?;
    home.set_secret("t/a", b"from-vault")?;
    let proj = home.dir().join("proj");
    std::fs::create_dir_all(proj.join("ctx"))?;
    std::fs::create_dir_all(proj.join("data"))?;
    std::fs::write(
        proj.join("ctx/Dockerfile"),
        format!("FROM {app}\nCOPY marker /marker\n"),
    )?;
    std::fs::write(proj.join("ctx/marker"), "built")?;
    std::fs::write(proj.join("data/f"), "mounted")?;
    std::fs::write(proj.join("vars.env"), "FROM_ENV_FILE=yes\n")?;
    let tag = format!("dso-test/relpath:{}", std::process::id());
    let body = format!(
        "    image: {tag}\n    build:\n      context: ./ctx\n      labels:\n        dso.test: \
         \"1\"\n    env_file: vars.env\n    volumes:\n      - ./data:/data:ro\n    \
         environment:\n      A: dso://t/a\n"
    );
    let project = Project::new_in(&home, "proj", &[("app", &body)])?;
    let result = (|| -> Result<()> {
        project.run_ok("up", &["-d"])?;
        let container = project.container("app")?;
        ensure!(docker::docker(["exec", &container, "cat", "/marker"])? == "built");
        ensure!(docker::docker(["exec", &container, "cat", "/data/f"])? == "mounted");
        ensure!(container_env(&container, "FROM_ENV_FILE")? == b"yes");
        ensure!(container_env(&container, "A")? == b"from-vault");
        let working_dir = docker::docker([
            "inspect",
            "--format",
            "{{index .Config.Labels \"com.docker.compose.project.working_dir\"}}",
            &container,
        ])?;
        ensure!(std::path::Path::new(&working_dir) == proj, "{working_dir}");
        project.run_ok("down", &[])?;
        Ok(())
    })();
    let _ = docker::docker(["rmi", "-f", &tag]);
    result
}

#[test]
fn relative_paths_resolve_from_the_project_directory_v1() -> Result<()> {
    relative_paths_resolve_from_the_project_directory(Compose::V1)
}

#[test]
fn relative_paths_resolve_from_the_project_directory_v2() -> Result<()> {
    relative_paths_resolve_from_the_project_directory(Compose::V2)
}

/// Checks that `container` publishes nothing on the host and returns `IP:port` of its address
/// on the project's default network (as text: the test never dials it).
fn unpublished_upstream(project: &Project, container: &str, port: u16) -> Result<String> {
    let bindings = docker::docker([
        "inspect",
        "--format",
        "{{json .HostConfig.PortBindings}}",
        container,
    ])?;
    let bindings: serde_json::Value = serde_json::from_str(&bindings)?;
    ensure!(
        bindings.as_object().is_none_or(|m| m.is_empty()),
        "{container} has host port bindings: {bindings}"
    );
    project.default_network_address(container, port)
}

/// Compose features the user may combine (extends from another file, a YAML alias, `env_file`,
/// `.env` interpolation, list and map environment, an inactive profile whose reference is
/// missing, `scale`, `container_name`, a project directory with a space) with proxied ports:
/// every replica is an upstream at its own address on the project network with nothing
/// published on the host; a second `up` keeps the containers; a changed secret gives a new
/// generation and new containers that the routes follow; `down` after the proxy was killed
/// leaves no pid file, socket, container or file.
fn compose_features_behind_the_proxy(compose: Compose) -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(compose)?;
    let first = format!("first-{}", hex::encode(&rand_bytes()?[..8]));
    home.set_secret("t/a", first.as_bytes())?;
    home.set_secret("t/json", br#"{"user": "u$1"}"#)?;
    let (api_port, named_port) = (support::agent::free_port()?, support::agent::free_port()?);

    let dir = home.dir().join("proj dir");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("base.yml"),
        format!(
            "services:\n  base:\n    image: {app}\n    environment:\n      FROM_BASE: \
             dso://t/a\n"
        ),
    )?;
    std::fs::write(dir.join("vars.env"), "FROM_ENV_FILE=dso://t/json#user\n")?;
    std::fs::write(dir.join(".env"), "REFVAR=dso://t/a\n")?;
    let container_name = docker::unique_name("named");
    let api = format!(
        "    extends:\n      file: base.yml\n      service: base\n    scale: 2\n    env_file: \
         vars.env\n    environment:\n      - APP_SECRET=${{REFVAR}}\n      - \
         LISTED=dso://t/json#user\n    ports:\n      - \"127.0.0.1:{api_port}:8080\"\n    \
         stop_grace_period: &grace 1s\n    labels:\n      dso.host_ports: \"true\"\n"
    );
    let named = format!(
        "    image: {app}\n    container_name: {container_name}\n    environment:\n      \
         APP_SECRET_FILE: dsofile://t/a\n    ports:\n      - \
         \"127.0.0.1:{named_port}:8080\"\n    stop_grace_period: *grace\n    labels:\n      \
         dso.host_ports: \"true\"\n"
    );
    let prof = format!(
        "    image: {app}\n    profiles: [\"extra\"]\n    environment:\n      P: \
         dso://t/missing\n"
    );
    let project = Project::new_in(
        &home,
        "proj dir",
        &[("api", &api), ("named", &named), ("prof", &prof)],
    )?;

    // The inactive profile's missing secret is no problem; with the profile it is.
    project.run_ok("plan", &[])?;
    let out = project.run("plan", &["--profile", "extra"])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("t/missing"),
        "plan with the profile: {}",
        stderr(&out)
    );

    project.run_ok("up", &["-d"])?;
    let api_replicas = project.service_containers("api", false)?;
    ensure!(api_replicas.len() == 2, "{api_replicas:?}");
    let (_, first_api) = &api_replicas[0];
    ensure!(container_env(first_api, "FROM_BASE")? == first.as_bytes());
    ensure!(container_env(first_api, "FROM_ENV_FILE")? == b"u$1");
    ensure!(container_env(first_api, "LISTED")? == b"u$1");
    ensure!(container_env(first_api, "APP_SECRET")? == first.as_bytes());
    ensure!(
        project.containers()?.len() == 3,
        "the prof service was started"
    );

    let expect_routes = |project: &Project| -> Result<()> {
        let mut want_api = Vec::new();
        for (_, id) in project.service_containers("api", false)? {
            want_api.push(unpublished_upstream(project, &id, 8080)?);
        }
        let named_id = project.container("named")?;
        let want_named = vec![unpublished_upstream(project, &named_id, 8080)?];
        let routes = home.proxy_routes()?;
        let route = |port: u16| {
            routes
                .iter()
                .find(|r| r.local_addr == format!("127.0.0.1:{port}"))
                .with_context(|| format!("no route on {port}: {routes:?}"))
        };
        ensure!(route(api_port)?.upstreams == want_api, "{routes:?}");
        ensure!(route(named_port)?.upstreams == want_named, "{routes:?}");
        Ok(())
    };
    expect_routes(&project)?;
    let api_addr = format!("127.0.0.1:{api_port}").parse()?;
    let named_addr = format!("127.0.0.1:{named_port}").parse()?;
    support::http::wait_for_body(
        api_addr,
        "/secret-version",
        &format!("env={}", app_fingerprint(first.as_bytes())),
    )?;
    support::http::wait_for_body(
        named_addr,
        "/secret-version",
        &format!("file={}", app_fingerprint(first.as_bytes())),
    )?;

    // A second `up` with nothing changed keeps every container.
    let before = project.containers()?;
    project.run_ok("up", &["-d"])?;
    ensure!(
        project.containers()? == before,
        "an unchanged up recreated containers"
    );

    // A changed secret: a new generation, new containers, routes to them.
    let second = format!("second-{}", hex::encode(&rand_bytes()?[..8]));
    home.set_secret("t/a", second.as_bytes())?;
    project.run_ok("up", &["-d"])?;
    let generations: Vec<String> = std::fs::read_dir(project.files_dir().join("named"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    ensure!(generations == ["g2"], "generations {generations:?}");
    let named_now = project.container("named")?;
    ensure!(
        !before.iter().any(|c| named_now.starts_with(c.as_str())),
        "the named container was not recreated"
    );
    expect_routes(&project)?;
    support::http::wait_for_body(
        api_addr,
        "/secret-version",
        &format!("env={}", app_fingerprint(second.as_bytes())),
    )?;
    support::http::wait_for_body(
        named_addr,
        "/secret-version",
        &format!("file={}", app_fingerprint(second.as_bytes())),
    )?;

    // The proxy dies; `down` still cleans everything, its pid file and socket included.
    let pid = std::fs::read_to_string(home.runtime.join("proxy.pid"))?;
    docker::run(Command::new("kill").args(["-KILL", pid.trim()]))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", pid.trim())).exists() {
        ensure!(Instant::now() < deadline, "the proxy did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    project.run_ok("down", &[])?;
    ensure!(project.containers()?.is_empty(), "containers left");
    ensure!(!project.files_dir().exists(), "files left on the tmpfs");
    ensure!(!home.runtime.join("proxy.pid").exists(), "pid file left");
    ensure!(!home.runtime.join("proxy.sock").exists(), "socket left");
    Ok(())
}

#[test]
fn compose_features_behind_the_proxy_v1() -> Result<()> {
    compose_features_behind_the_proxy(Compose::V1)
}

#[test]
fn compose_features_behind_the_proxy_v2() -> Result<()> {
    compose_features_behind_the_proxy(Compose::V2)
}

/// What a hostile compose file gets refused for, all at once and before anything exists:
/// references in `command`, a label and inside a longer environment value; one host address
/// for two proxied services; `dso.host_ports` with `network_mode: host`; a listen address
/// another process holds; `dso.strategy: signal` with an environment reference (a file
/// reference of the same service is fine). `plan --json` reports the same and parses; no value
/// anywhere.
#[test]
fn hostile_projects_are_refused_before_anything_exists_v1() -> Result<()> {
    ensure_daemon()?;
    let app = images::app_image()?;
    let home = Home::new(Compose::V1)?;
    let sentinel = format!("sentinel-{}", hex::encode(&rand_bytes()?[..12]));
    home.set_secret("t/a", sentinel.as_bytes())?;
    let holder = std::net::TcpListener::bind("127.0.0.1:0")?;
    let held = holder.local_addr()?.port();
    let (shared, host_mode) = (support::agent::free_port()?, support::agent::free_port()?);

    let a = format!(
        "    image: {app}\n    command: [\"/bin/sleep\", \"dso://t/a\"]\n    environment:\n      \
         DSN: \"pg://u:dso://t/a@h\"\n      FINE: dso://t/a\n    ports:\n      - \
         \"127.0.0.1:{shared}:8080\"\n    labels:\n      note: \"dso://t/a\"\n      \
         dso.host_ports: \"true\"\n"
    );
    let b = format!(
        "    image: {app}\n    ports:\n      - \"{shared}:8080\"\n    labels:\n      \
         dso.host_ports: \"true\"\n"
    );
    let c = format!(
        "    image: {app}\n    network_mode: host\n    ports:\n      - \
         \"127.0.0.1:{host_mode}:8080\"\n    labels:\n      dso.host_ports: \"true\"\n"
    );
    let d = format!(
        "    image: {app}\n    ports:\n      - \"127.0.0.1:{held}:8080\"\n    labels:\n      \
         dso.host_ports: \"true\"\n"
    );
    let e = format!(
        "    image: {app}\n    environment:\n      TOKEN: dso://t/a\n      TOKEN_FILE: \
         dsofile://t/a\n    labels:\n      dso.strategy: signal\n"
    );
    let project = Project::new(
        &home,
        &[("a", &a), ("b", &b), ("c", &c), ("d", &d), ("e", &e)],
    )?;

    let expected = [
        "service a, command = dso://t/a".to_owned(),
        "service a, environment.DSN = pg://u:dso://t/a@h".to_owned(),
        "service a, labels.note = dso://t/a".to_owned(),
        format!("service a, ports: host address 127.0.0.1:{shared} is also proxied for service b"),
        "service c, dso.host_ports: network_mode \"host\"".to_owned(),
        format!("service d, ports: cannot listen on 127.0.0.1:{held}"),
        "service e, TOKEN = dso://t/a: strategy signal cannot deliver".to_owned(),
    ];
    let out = project.run("up", &["-d"])?;
    let text = stderr(&out);
    ensure!(!out.status.success(), "up succeeded: {text}");
    for line in &expected {
        let found = text
            .lines()
            .find(|l| l.contains(line.as_str()))
            .with_context(|| format!("no problem line `{line}` in:\n{text}"))?;
        ensure!(found.contains("hint:"), "no hint: {found}");
    }
    ensure!(text.contains("7 problems"), "{text}");
    ensure!(!text.contains(&sentinel) && !String::from_utf8_lossy(&out.stdout).contains(&sentinel));
    ensure!(project.containers()?.is_empty(), "a container was created");
    ensure!(
        !home.runtime.join("proxy.sock").exists(),
        "a proxy was started"
    );

    let out = project.run("plan", &["--json"])?;
    ensure!(!out.status.success());
    let stdout = String::from_utf8(out.stdout.clone())?;
    ensure!(!stdout.contains(&sentinel) && !stderr(&out).contains(&sentinel));
    let plan: serde_json::Value = serde_json::from_str(&stdout)?;
    ensure!(plan["problems"] == 7, "{plan}");
    ensure!(project.containers()?.is_empty());
    drop(holder);
    Ok(())
}
