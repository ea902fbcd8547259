//! End-to-end checks of the test images in `tests/support/images.rs`: they build without a
//! registry, carry the cleanup label, and behave as the later end-to-end tests rely on (the app's
//! health and secret fingerprints, Postgres's password file, password auth and fast shutdown).
//! Needs a running Docker Engine; fails, never skips, without one.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use support::docker::{self, ContainerSpec, Network, OWNER_LABEL, TEST_LABEL};
use support::images::app_fingerprint;
use support::{http, images};

/// Upper bound for a container to come up (Postgres includes initdb).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A value that breaks naive quoting: a `$`, both quote kinds and a line break.
const AWKWARD_VALUE: &str = "p$HOME'x\"y\nline two $$1";

/// A private directory for secret fixture files, on tmpfs when the host has /dev/shm.
fn secret_dir() -> Result<tempfile::TempDir> {
    let builder = {
        let mut builder = tempfile::Builder::new();
        builder.prefix("dso-test-");
        builder
    };
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    };
    dir.context("creating a directory for secret fixtures")
}

/// Writes `bytes` by rename, as dso replaces files, so readers never see half a file.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let staged = path.with_extension("new");
    fs::write(&staged, bytes).with_context(|| format!("writing {}", staged.display()))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(mode))?;
    fs::rename(&staged, path).with_context(|| format!("renaming onto {}", path.display()))
}

/// The `key=value` lines of the app's /secret-version.
fn secret_version(addr: std::net::SocketAddr) -> Result<Vec<String>> {
    let response = http::get(addr, "/secret-version")?;
    ensure!(
        response.status == 200,
        "/secret-version answered {}",
        response.status
    );
    Ok(response.text().lines().map(str::to_owned).collect())
}

fn image_label(tag: &str, key: &str) -> Result<String> {
    docker::docker([
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels {key:?}}}}}"),
        tag,
    ])
}

#[test]
fn app_image_reports_fingerprints_and_never_the_value() -> Result<()> {
    let image = images::app_image()?;
    let secrets = secret_dir()?;
    let file_value = b"-----BEGIN KEY-----\nAAAA\n-----END KEY-----";
    replace_file(&secrets.path().join("token"), file_value, 0o400)?;

    let app = ContainerSpec::new(&image)
        .env("APP_SECRET", AWKWARD_VALUE)
        .env("APP_SECRET_FILE", "/run/secrets/dso/token")
        .mount_read_only(secrets.path(), "/run/secrets/dso")
        .publish_loopback(8080)
        .run()?;
    let addr = app.host_addr(8080)?;

    let health = http::wait_ok(addr, "/health", START_TIMEOUT)?;
    assert_eq!(health.text(), "ok\n");

    let version = secret_version(addr)?;
    assert_eq!(
        version,
        [
            format!("env={}", app_fingerprint(AWKWARD_VALUE.as_bytes())),
            format!("file={}", app_fingerprint(file_value)),
            "loads=1".to_owned(),
        ]
    );
    let raw = http::get(addr, "/secret-version")?.body;
    assert!(
        !raw.windows(5).any(|w| w == b"$HOME") && !raw.windows(4).any(|w| w == b"AAAA"),
        "/secret-version leaked a value: {:?}",
        String::from_utf8_lossy(&raw)
    );

    // The test-only endpoint hands back exactly the bytes the container received.
    let echoed = http::get(addr, "/cgi-bin/env/APP_SECRET")?;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.body, AWKWARD_VALUE.as_bytes());
    assert_eq!(
        http::get(addr, "/cgi-bin/env/NOT_SET_ANYWHERE")?.status,
        404
    );
    assert_eq!(http::get(addr, "/cgi-bin/env/bad-name")?.status, 400);

    assert_eq!(image_label(&image, "dso.test")?, "1");
    Ok(())
}

#[test]
fn app_reloads_its_secret_only_on_sighup() -> Result<()> {
    let image = images::app_image()?;
    let secrets = secret_dir()?;
    let token = secrets.path().join("token");
    replace_file(&token, b"generation one", 0o444)?;

    let app = ContainerSpec::new(&image)
        .env("APP_SECRET_ENV", "UNUSED")
        .env("APP_SECRET_FILE", "/run/secrets/dso/token")
        .mount_read_only(secrets.path(), "/run/secrets/dso")
        .publish_loopback(8080)
        .run()?;
    let addr = app.host_addr(8080)?;
    http::wait_ok(addr, "/health", START_TIMEOUT)?;
    let first = [
        "env=unset".to_owned(),
        format!("file={}", app_fingerprint(b"generation one")),
        "loads=1".to_owned(),
    ];
    assert_eq!(secret_version(addr)?, first);

    // A new file alone changes nothing: the app holds what it loaded, like a real service.
    replace_file(&token, b"generation two", 0o444)?;
    assert_eq!(secret_version(addr)?, first);

    app.signal("HUP")?;
    let second = [
        "env=unset".to_owned(),
        format!("file={}", app_fingerprint(b"generation two")),
        "loads=2".to_owned(),
    ];
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = secret_version(addr)?;
    while seen != second && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        seen = secret_version(addr)?;
    }
    assert_eq!(seen, second, "the app did not reload on SIGHUP");

    // SIGTERM ends it cleanly (exit 0), which rotations rely on for a quick stop.
    assert_eq!(app.stop(Duration::from_secs(30))?, 0);
    Ok(())
}

#[test]
fn postgres_image_takes_password_file_and_requires_it() -> Result<()> {
    let image = images::postgres_image()?;
    let psql = Path::new("/usr/bin/psql");
    ensure!(
        psql.exists(),
        "psql is missing\nhint: apt-get install -y postgresql-client"
    );

    // Root-owned 0400 read-only mount: the entrypoint must read it before dropping to postgres.
    let secrets = secret_dir()?;
    let password = "pa$s'w\"ord";
    replace_file(
        &secrets.path().join("db_password"),
        password.as_bytes(),
        0o400,
    )?;

    let network = Network::create()?;
    let db = ContainerSpec::new(&image)
        .env("POSTGRES_PASSWORD_FILE", "/run/secrets/dso/db_password")
        .mount_read_only(secrets.path(), "/run/secrets/dso")
        .network(&network)
        .publish_loopback(5432)
        .run()?;
    db.wait_healthy(START_TIMEOUT)?;
    let addr = db.host_addr(5432)?;

    let query = |password: &str| {
        let mut command = Command::new(psql);
        command
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .args([
                "-w",
                "-X",
                "-tA",
                "-h",
                &addr.ip().to_string(),
                "-p",
                &addr.port().to_string(),
            ])
            .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"]);
        command.output().context("running psql")
    };
    let good = query(password)?;
    assert!(
        good.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), "1");

    // Password auth is really on (not trust).
    let bad = query("wrong password")?;
    assert!(
        !bad.status.success(),
        "psql with a wrong password succeeded"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"));

    // docker stop sends SIGTERM; the entrypoint turns it into a fast shutdown (exit 0).
    assert_eq!(db.stop(Duration::from_secs(60))?, 0);
    let logs = db.logs()?;
    assert!(
        logs.contains("fast shutdown request"),
        "no fast shutdown in the logs:\n{logs}"
    );
    assert!(
        !logs.contains(password),
        "the password appeared in the logs"
    );
    Ok(())
}

#[test]
fn postgres_image_refuses_to_start_without_password() -> Result<()> {
    let image = images::postgres_image()?;
    let db = ContainerSpec::new(&image).run()?;

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let state = docker::docker([
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &db.id,
        ])?;
        if state.starts_with("exited") {
            assert_eq!(state, "exited 1");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "still {state} without a password"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = db.logs()?;
    assert!(
        logs.contains("set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"),
        "{logs}"
    );
    Ok(())
}

#[test]
fn images_are_labelled_with_their_input_hash() -> Result<()> {
    for tag in [images::app_image()?, images::postgres_image()?] {
        let (_, hash) = tag.split_once(':').context("tag without a version")?;
        assert_eq!(image_label(&tag, "dso.test.inputs")?, hash, "{tag}");
        assert_eq!(image_label(&tag, "dso.test")?, "1", "{tag}");

        // A second call finds the tag and builds nothing: same image id.
        let before = docker::docker(["image", "inspect", "--format", "{{.Id}}", &tag])?;
        let again = if tag.starts_with("dso-test/app") {
            images::app_image()?
        } else {
            images::postgres_image()?
        };
        assert_eq!(again, tag);
        assert_eq!(
            docker::docker(["image", "inspect", "--format", "{{.Id}}", &tag])?,
            before
        );
    }
    Ok(())
}

#[test]
fn sweep_removes_only_objects_of_dead_test_processes() -> Result<()> {
    let image = images::app_image()?;

    // A process that has exited gives a pid no live test owns.
    let mut gone = Command::new("true").spawn()?;
    gone.wait()?;
    let dead_owner = gone.id().to_string();
    let orphan = docker::unique_name("orphan");
    docker::docker([
        "create",
        "--name",
        &orphan,
        "--label",
        TEST_LABEL,
        "--label",
        &format!("{OWNER_LABEL}={dead_owner}"),
        &image,
    ])?;
    let mine = ContainerSpec::new(&image).run()?;

    docker::sweep_stale()?;

    let names = docker::docker([
        "ps",
        "-a",
        "--filter",
        &format!("label={TEST_LABEL}"),
        "--format",
        "{{.Names}}",
    ])?;
    let names: Vec<&str> = names.lines().collect();
    let orphan_left = names.contains(&orphan.as_str());
    if orphan_left {
        docker::docker(["rm", "-f", &orphan])?;
    }
    assert!(
        !orphan_left,
        "the sweep left {orphan}, owned by dead pid {dead_owner}"
    );
    assert!(
        names.contains(&mine.name.as_str()),
        "the sweep removed a live test's container"
    );
    Ok(())
}
