//! The command line itself through the real binary: exit codes, the Docker plugin protocol,
//! sentinel values never leaking, broken pipes, setup and config commands.

mod support;

use std::fs;
use std::process::Stdio;

use support::{Sandbox, contains, stderr, stdout};

/// Exit code 2 for usage errors, 0 for help, 1 for failures.
#[test]
fn exit_codes_follow_the_documentation() {
    let sandbox = Sandbox::new();
    assert_eq!(sandbox.run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(sandbox.run(&["secret", "get"]).status.code(), Some(2));
    assert_eq!(
        sandbox.run(&["setup", "--mode", "cloud"]).status.code(),
        Some(2)
    );
    let help = sandbox.run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("Exit codes: 0 success, 1 failure, 2 usage error"));
    let missing = sandbox.run(&["secret", "list"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = stderr(&missing);
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("docker-dso: error:"))
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("hint: run `docker dso init`"), "{err}");
}

#[test]
fn plugin_metadata_is_what_docker_expects() {
    let sandbox = Sandbox::new();
    let out = sandbox.ok(&["docker-cli-plugin-metadata"]);
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(metadata["SchemaVersion"], "0.1.0");
    assert_eq!(metadata["Vendor"], "dso");
    assert_eq!(metadata["Version"], env!("CARGO_PKG_VERSION"));
    assert!(
        metadata["ShortDescription"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
}

/// The real Docker CLI finds the plugin in DOCKER_CONFIG/cli-plugins and runs it.
#[test]
fn docker_cli_runs_the_plugin() {
    let sandbox = Sandbox::new();
    let config = sandbox.dir.path().join("docker-config");
    let plugins = config.join("cli-plugins");
    fs::create_dir_all(&plugins).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_docker-dso"), plugins.join("docker-dso")).unwrap();

    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("DSO_HOME", sandbox.home())
            .output()
            .expect("the docker CLI must be installed for this test")
    };
    let version = docker(&["dso", "version"]);
    assert!(version.status.success(), "{}", stderr(&version));
    assert_eq!(
        stdout(&version).trim(),
        format!("docker-dso {}", env!("CARGO_PKG_VERSION"))
    );

    let help = docker(&["dso", "--help"]);
    assert!(help.status.success(), "{}", stderr(&help));
    assert!(
        stdout(&help).contains("Usage: docker dso"),
        "{}",
        stdout(&help)
    );

    let listing = docker(&["--help"]);
    assert!(
        stdout(&listing).contains("dso*") || stdout(&listing).contains("dso "),
        "{}",
        stdout(&listing)
    );

    let init = docker(&["dso", "init"]);
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(sandbox.vault().exists());
}

/// A planted value appears in no output but `secret get`'s stdout, at any log level.
#[test]
fn sentinel_value_never_leaks() {
    const SENTINEL: &[u8] = b"SENTINEL-7f3a9c-do-not-print";
    let sandbox = Sandbox::new();
    fs::write(
        sandbox.work().join("dso.yaml"),
        "version: 1\nproviders:\n  local:\n    type: local\n  v:\n    type: vault\n    \
         address: https://vault.example\n    token: ${VAULT_TOKEN}\nsecrets:\n  \
         - name: app/db\n    provider: local\n",
    )
    .unwrap();
    let mut captured: Vec<(String, Vec<u8>)> = Vec::new();
    let mut record = |label: &str, out: &std::process::Output| {
        captured.push((format!("{label} stdout"), out.stdout.clone()));
        captured.push((format!("{label} stderr"), out.stderr.clone()));
    };

    let env_run = |args: &[&str], input: &[u8]| {
        let mut cmd = sandbox.cmd(args);
        cmd.env("VAULT_TOKEN", std::str::from_utf8(SENTINEL).unwrap());
        support::run_with_input(cmd, input)
    };

    record("init", &env_run(&["-vvv", "init"], b""));
    record(
        "set",
        &env_run(&["-vvv", "secret", "set", "app/db"], SENTINEL),
    );
    record(
        "set again",
        &env_run(&["-vvv", "--json", "secret", "set", "app/db"], SENTINEL),
    );
    record("list", &env_run(&["-vvv", "secret", "list"], b""));
    record(
        "list json",
        &env_run(&["-vvv", "--json", "secret", "list"], b""),
    );
    record(
        "history",
        &env_run(&["-vvv", "secret", "history", "app/db"], b""),
    );
    record(
        "history json",
        &env_run(&["-vvv", "--json", "secret", "history", "app/db"], b""),
    );
    record("show", &env_run(&["-vvv", "config", "show"], b""));
    record(
        "show json",
        &env_run(&["-vvv", "--json", "config", "show"], b""),
    );
    record("validate", &env_run(&["-vvv", "config", "validate"], b""));
    record(
        "missing version",
        &env_run(&["-vvv", "secret", "get", "app/db", "--version", "9"], b""),
    );
    let get = env_run(&["-vvv", "secret", "get", "app/db"], b"");
    captured.push(("get stderr".into(), get.stderr.clone()));

    // The logs did run: -vvv produced log lines, so the absence of the sentinel means something.
    let set_stderr = &captured[3].1;
    assert!(
        contains(set_stderr, b"secret version stored"),
        "{}",
        String::from_utf8_lossy(set_stderr)
    );
    for (label, bytes) in &captured {
        assert!(
            !contains(bytes, SENTINEL),
            "sentinel leaked in {label}: {}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(get.stdout, SENTINEL, "secret get must print the value");
    assert!(
        !contains(&fs::read(sandbox.vault()).unwrap(), SENTINEL),
        "plaintext in vault.enc"
    );
}

/// `secret get | head -c1`: a reader that goes away is not an error.
#[test]
fn broken_pipe_is_not_an_error() {
    let sandbox = Sandbox::new();
    sandbox.init();
    let big = vec![b'z'; 1024 * 1024];
    sandbox.set("big", &big);
    let mut child = sandbox
        .cmd(&["secret", "get", "big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once: 1 MiB cannot fit a pipe buffer, so the write hits EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn setup_writes_config_and_vault_once() {
    let sandbox = Sandbox::new();
    let out = sandbox.ok(&["setup", "--mode", "local", "--non-interactive"]);
    assert!(stdout(&out).contains("wrote configuration"));
    let config = sandbox.home().join("dso.yaml");
    assert!(config.exists() && sandbox.vault().exists());

    // The config it wrote is found by the lookup and is valid.
    let validate = sandbox.ok(&["config", "validate", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&validate.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["file"], config.display().to_string());

    let again = sandbox.run(&["setup", "--mode", "local", "--non-interactive"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists") && stderr(&again).contains("--force"));

    sandbox.set("keep", b"me");
    let forced = sandbox.ok(&["setup", "--mode", "local", "--non-interactive", "--force"]);
    assert!(stdout(&forced).contains("kept existing vault"));
    assert_eq!(sandbox.get("keep"), b"me");
}

#[test]
fn config_validate_lists_problems_with_positions() {
    let sandbox = Sandbox::new();
    let file = sandbox.work().join("bad.yaml");
    fs::write(
        &file,
        "version: 1\nagent:\n  watch_interval: soon\nsecrets:\n  - name: a\n    provider: nope\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();

    let out = sandbox.run(&["config", "validate", "--config", path]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "{path}:3:19: agent.watch_interval: `soon` is not a duration"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{path}:6:15: secrets[0].provider: provider `nope`"
        )),
        "{text}"
    );

    let out = sandbox.run(&["config", "validate", "--json", "--config", path]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2);
    assert_eq!(problems[1]["line"], 6);
    assert_eq!(problems[1]["column"], 15);
    assert_eq!(problems[1]["key"], "secrets[0].provider");

    // Another command that loads the file reports the first problem with file:line:column.
    let out = sandbox.run_with_input(&["--config", path, "secret", "set", "x"], b"v");
    assert!(
        stderr(&out).contains(&format!("{path}:3:19:")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_lookup_prefers_the_working_directory() {
    let sandbox = Sandbox::new();
    fs::create_dir_all(sandbox.home()).unwrap();
    fs::write(sandbox.home().join("dso.yaml"), "version: 1\nmode: local\n").unwrap();
    fs::write(sandbox.work().join("dso.yaml"), "version: 1\nmode: agent\n").unwrap();
    let out = sandbox.ok(&["--json", "config", "show"]);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["mode"], "agent");

    fs::remove_file(sandbox.work().join("dso.yaml")).unwrap();
    let out = sandbox.ok(&["--json", "config", "show"]);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["mode"], "local");

    let out = sandbox.run(&["config", "show", "--config", "/nonexistent/dso.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/dso.yaml does not exist"));
}

#[test]
fn quiet_suppresses_confirmations_but_not_data() {
    let sandbox = Sandbox::new();
    let out = sandbox.ok(&["--quiet", "init"]);
    assert!(out.stdout.is_empty());
    sandbox.set("q", b"v");
    let out = sandbox.ok(&["-q", "secret", "list"]);
    assert!(stdout(&out).contains("q"));
}

/// `secret set` with stdin on /dev/null (or closed) refuses instead of storing an empty value.
#[test]
fn secret_set_refuses_dev_null_stdin() {
    let sandbox = Sandbox::new();
    sandbox.init();
    let out = sandbox.run(&["secret", "set", "app/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("stdin is /dev/null or closed"),
        "{}",
        stderr(&out)
    );
    let list = sandbox.ok(&["secret", "list"]);
    assert!(!stdout(&list).contains("app/x"));

    // An empty value is still possible on purpose.
    sandbox.set("app/empty", b"");
    assert_eq!(sandbox.get("app/empty"), b"");
}

/// Logs written to a pipe or file carry no terminal colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let sandbox = Sandbox::new();
    sandbox.init();
    let out = sandbox.run(&["-vv", "secret", "list"]);
    assert!(out.status.success());
    assert!(!stderr(&out).is_empty(), "expected -vv logs");
    assert!(!stderr(&out).contains('\u{1b}'), "{:?}", stderr(&out));
}

/// `up`, `down`, `plan` and `compose` answer `--help` themselves, without running compose (in
/// a directory with no compose file, where compose would fail).
#[test]
fn compose_commands_answer_help_without_compose() {
    let sandbox = Sandbox::new();
    for args in [
        &["up", "--help"][..],
        &["up", "-d", "-h"],
        &["down", "--help"],
        &["plan", "--help"],
        &["compose", "--help"],
    ] {
        let out = sandbox.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("goes to compose as given"),
            "{args:?}: {text}"
        );
        assert!(
            !stderr(&out).contains("error"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(stdout(&sandbox.run(&["up", "--help"])).contains("--no-agent"));
}

/// `docker dso compose SUBCOMMAND --help` is compose's own help, without a compose file.
#[test]
fn compose_subcommand_help_is_composes_own() {
    if !std::process::Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        panic!("docker-compose (v1) is needed; scripts/test.sh installs it");
    }
    let sandbox = Sandbox::new();
    let out = sandbox
        .cmd(&["compose", "ps", "--help"])
        .env("DSO_COMPOSE", "v1")
        .output()
        .expect("spawn docker-dso");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).to_lowercase().contains("usage"),
        "{}",
        stdout(&out)
    );
}

/// A `--config` file that does not exist is an error for every command, not ignored.
#[test]
fn a_missing_config_file_is_an_error_for_every_command() {
    let sandbox = Sandbox::new();
    sandbox.init();
    for args in [
        &["--config", "/nonexistent-dso.yaml", "secret", "list"][..],
        &["--config", "/nonexistent-dso.yaml", "config", "validate"],
    ] {
        let out = sandbox.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("/nonexistent-dso.yaml does not exist"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}
