//! The local vault through the real `docker-dso` binary: byte-exact round trips, distinct
//! errors for damaged files (left untouched), concurrent writers, passphrase mode.

mod support;

use std::fs;

use support::{Sandbox, read, stderr};

/// Values of the issue's list, each must come back byte for byte.
fn sample_values() -> Vec<(&'static str, Vec<u8>)> {
    let pem = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n\
        BKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"
        .to_vec();
    let megabyte: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    vec![
        ("empty", Vec::new()),
        ("one-byte", b"x".to_vec()),
        ("binary", vec![0, 0xff, 0, 1, 0xfe, b'\n', 0]),
        ("pem", pem),
        (
            "shell-chars",
            br#"$HOME ${X} "double" 'single' # not a comment $$"#.to_vec(),
        ),
        ("unicode", "pässwörd 密码 🔐\u{200b}".as_bytes().to_vec()),
        ("trailing-newline", b"value\n".to_vec()),
        ("one-mebibyte", megabyte),
    ]
}

/// Every listed value survives `secret set` (stdin and --from-file) and `secret get` exactly.
#[test]
fn round_trip_is_byte_exact() {
    let sandbox = Sandbox::new();
    sandbox.init();
    for (name, value) in sample_values() {
        let path = format!("rt/{name}");
        sandbox.set(&path, &value);
        assert!(sandbox.get(&path) == value, "stdin round trip of {name}");

        let file = sandbox.dir.path().join(format!("{name}.bin"));
        fs::write(&file, &value).unwrap();
        let from_file = format!("rt/{name}-file");
        sandbox.ok(&[
            "secret",
            "set",
            &from_file,
            "--from-file",
            file.to_str().unwrap(),
        ]);
        assert!(
            sandbox.get(&from_file) == value,
            "--from-file round trip of {name}"
        );
    }
}

/// `--trim` is the only thing that changes a value.
#[test]
fn trim_strips_only_when_asked() {
    let sandbox = Sandbox::new();
    sandbox.init();
    let out = sandbox.run_with_input(&["secret", "set", "t", "--trim"], b"  padded\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sandbox.get("t"), b"padded");
}

/// One kind of damage, the message it must produce, and whether a write is attempted too.
fn assert_damage_reported(sandbox: &Sandbox, expected: &str) {
    let before = read(&sandbox.vault());
    for args in [
        &["secret", "get", "a"][..],
        &["secret", "list"],
        &["secret", "delete", "a"],
    ] {
        let out = sandbox.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err}"
        );
        assert!(err.starts_with("docker-dso: error: "), "{err}");
    }
    let out = sandbox.run_with_input(&["secret", "set", "b"], b"new");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    assert!(
        read(&sandbox.vault()) == before,
        "the damaged file was modified"
    );
}

fn damaged(change: impl FnOnce(&mut Vec<u8>)) -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.init();
    sandbox.set("a", b"value-a");
    let mut bytes = read(&sandbox.vault());
    change(&mut bytes);
    fs::write(sandbox.vault(), bytes).unwrap();
    sandbox
}

#[test]
fn tampered_ciphertext_has_its_own_error() {
    let sandbox = damaged(|b| b[100] ^= 0x01);
    assert_damage_reported(&sandbox, "encrypted contents of");
    assert_damage_reported(&sandbox, "authentication tag mismatch");
}

#[test]
fn tampered_header_has_its_own_error() {
    // Byte 45 is inside the nonce.
    let sandbox = damaged(|b| b[45] ^= 0x80);
    assert_damage_reported(&sandbox, "header checksum mismatch");
}

#[test]
fn truncated_file_has_its_own_error() {
    let sandbox = damaged(|b| b.truncate(b.len() - 7));
    assert_damage_reported(&sandbox, "is truncated");
    let sandbox = damaged(|b| b.truncate(40));
    assert_damage_reported(&sandbox, "is truncated");
}

#[test]
fn foreign_file_has_its_own_error() {
    let sandbox = damaged(|b| *b = b"{\"secrets\": {}}\n".to_vec());
    assert_damage_reported(&sandbox, "is not a dso vault");
}

#[test]
fn wrong_key_has_its_own_error() {
    let sandbox = Sandbox::new();
    sandbox.init();
    sandbox.set("a", b"value-a");
    let before = read(&sandbox.vault());

    // Another valid key in DSO_MASTER_KEY.
    let other = "ab".repeat(32);
    let out = sandbox
        .cmd(&["secret", "get", "a"])
        .env("DSO_MASTER_KEY", &other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the key in DSO_MASTER_KEY does not open") && err.contains("(wrong key)"),
        "{err}"
    );
    assert!(err.contains("hint: unset DSO_MASTER_KEY"), "{err}");

    // A replaced master.key file.
    fs::write(
        sandbox.home().join("master.key"),
        format!("{}\n", "cd".repeat(32)),
    )
    .unwrap();
    let out = sandbox.run_with_input(&["secret", "set", "b"], b"x");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("master.key does not open"),
        "{}",
        stderr(&out)
    );
    assert!(read(&sandbox.vault()) == before);

    // A malformed key is a different error again, and does not echo the text.
    let out = sandbox
        .cmd(&["secret", "list"])
        .env("DSO_MASTER_KEY", "not-hex-sentinel")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(err.contains("DSO_MASTER_KEY is malformed"), "{err}");
    assert!(!err.contains("sentinel"), "{err}");
}

/// Eight processes writing different secrets at once: every write is present afterwards.
#[test]
fn eight_concurrent_writers_lose_nothing() {
    let sandbox = Sandbox::new();
    sandbox.init();
    let children: Vec<_> = (0..8)
        .map(|i| {
            let cmd = sandbox.cmd(&["secret", "set", &format!("concurrent/s{i}")]);
            std::thread::spawn(move || {
                support::run_with_input(cmd, format!("value-{i}").as_bytes())
            })
        })
        .collect();
    for child in children {
        let out = child.join().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for i in 0..8 {
        assert_eq!(
            sandbox.get(&format!("concurrent/s{i}")),
            format!("value-{i}").as_bytes()
        );
    }
    let list = sandbox.ok(&["--json", "secret", "list"]);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 8);
}

/// Versions count up, history keeps the newest ten by default, old versions stay readable.
#[test]
fn history_keeps_the_last_ten_versions() {
    let sandbox = Sandbox::new();
    sandbox.init();
    for i in 1..=12 {
        sandbox.set("h", format!("v{i}").as_bytes());
    }
    let out = sandbox.ok(&["secret", "history", "h", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let numbers: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (3..=12).collect::<Vec<_>>());
    assert_eq!(
        sandbox.ok(&["secret", "get", "h", "--version", "5"]).stdout,
        b"v5"
    );
    let out = sandbox.run(&["secret", "get", "h", "--version", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no version 1"),
        "{}",
        stderr(&out)
    );
}

/// `history` of the local provider in dso.yaml sets how many versions are kept.
#[test]
fn history_limit_comes_from_the_configuration() {
    let sandbox = Sandbox::new();
    sandbox.init();
    fs::write(
        sandbox.work().join("dso.yaml"),
        "version: 1\nproviders:\n  local:\n    type: local\n    history: 2\n",
    )
    .unwrap();
    for i in 1..=4 {
        sandbox.set("h", format!("v{i}").as_bytes());
    }
    let out = sandbox.ok(&["secret", "history", "h", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);
}

#[test]
fn delete_removes_and_reports_missing_paths() {
    let sandbox = Sandbox::new();
    sandbox.init();
    sandbox.set("d", b"x");
    sandbox.ok(&["secret", "delete", "d"]);
    let out = sandbox.run(&["secret", "get", "d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no secret at d"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hint: `docker dso secret list`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        sandbox.run(&["secret", "delete", "d"]).status.code(),
        Some(1)
    );
}

#[test]
fn bad_paths_are_rejected_with_the_rule() {
    let sandbox = Sandbox::new();
    sandbox.init();
    for (path, rule) in [
        ("a//b", "single `/`"),
        ("../x", "`.` and `..` are not allowed"),
        ("a b", "character ' ' is not allowed"),
        ("", "must not be empty"),
    ] {
        let out = sandbox.run_with_input(&["secret", "set", path], b"v");
        assert_eq!(out.status.code(), Some(1), "{path:?}");
        assert!(stderr(&out).contains(rule), "{path:?}: {}", stderr(&out));
    }
}

#[test]
fn init_refuses_to_overwrite_and_force_replaces() {
    let sandbox = Sandbox::new();
    sandbox.init();
    sandbox.set("a", b"x");
    let before = read(&sandbox.vault());
    let out = sandbox.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hint: pass --force"),
        "{}",
        stderr(&out)
    );
    assert!(read(&sandbox.vault()) == before);

    sandbox.ok(&["init", "--force"]);
    assert_eq!(sandbox.run(&["secret", "get", "a"]).status.code(), Some(1));
}

#[test]
fn init_sets_private_permissions() {
    use std::os::unix::fs::PermissionsExt as _;
    let sandbox = Sandbox::new();
    sandbox.init();
    let mode = |p: std::path::PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(sandbox.home()), 0o700);
    assert_eq!(mode(sandbox.home().join("master.key")), 0o600);
    assert_eq!(mode(sandbox.vault()), 0o600);
    let key = fs::read_to_string(sandbox.home().join("master.key")).unwrap();
    assert_eq!(key.len(), 65);
    assert!(key.trim_end().chars().all(|c| c.is_ascii_hexdigit()));
}

/// DSO_MASTER_KEY keys a vault without any key file (CI use).
#[test]
fn master_key_from_the_environment() {
    let sandbox = Sandbox::new();
    let key = "0f".repeat(32);
    let with_key = |args: &[&str]| {
        let mut cmd = sandbox.cmd(args);
        cmd.env("DSO_MASTER_KEY", &key);
        cmd
    };
    assert!(with_key(&["init"]).output().unwrap().status.success());
    assert!(!sandbox.home().join("master.key").exists());
    let out = support::run_with_input(with_key(&["secret", "set", "ci/x"]), b"ci-value");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        with_key(&["secret", "get", "ci/x"])
            .output()
            .unwrap()
            .stdout,
        b"ci-value"
    );
    let out = sandbox.run(&["secret", "get", "ci/x"]);
    assert!(stderr(&out).contains("no master key"), "{}", stderr(&out));
}

/// Passphrase mode: Argon2id key, no key file, wrong passphrase named as such.
#[test]
fn passphrase_mode_round_trip() {
    let sandbox = Sandbox::new();
    let with = |pass: &str, args: &[&str]| {
        let mut cmd = sandbox.cmd(args);
        cmd.env("DSO_PASSPHRASE", pass);
        cmd
    };
    let out = with("correct horse battery", &["init", "--passphrase"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!sandbox.home().join("master.key").exists());
    let out = support::run_with_input(
        with("correct horse battery", &["secret", "set", "p"]),
        b"pv",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        with("correct horse battery", &["secret", "get", "p"])
            .output()
            .unwrap()
            .stdout,
        b"pv"
    );

    let out = with("wrong horse battery", &["secret", "get", "p"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("the passphrase does not open"),
        "{}",
        stderr(&out)
    );
    let out = sandbox.run(&["secret", "get", "p"]);
    assert!(
        stderr(&out).contains("protected by a passphrase and none was given"),
        "{}",
        stderr(&out)
    );
}
