//! Helpers for tests that drive the real `docker-dso` binary: a private dso home and HOME per
//! test, a command builder, and output capture.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A sandbox: temporary HOME, DSO_HOME inside it, and a working directory without dso.yaml.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("dsohome")
    }

    pub fn vault(&self) -> PathBuf {
        self.home().join("vault.enc")
    }

    pub fn work(&self) -> PathBuf {
        let work = self.dir.path().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        work
    }

    /// `docker-dso ARGS` with a clean environment pointing at this sandbox.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_docker-dso"));
        cmd.args(args)
            .current_dir(self.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("DSO_HOME", self.home())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs with `stdin` as input and returns the output.
    pub fn run_with_input(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_input(self.cmd(args), stdin)
    }

    /// Runs with empty stdin.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn docker-dso")
    }

    /// Runs, asserting success.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_success(&out, args);
        out
    }

    pub fn init(&self) {
        self.ok(&["init"]);
    }

    pub fn set(&self, path: &str, value: &[u8]) {
        let out = self.run_with_input(&["secret", "set", path], value);
        assert_success(&out, &["secret", "set", path]);
    }

    pub fn get(&self, path: &str) -> Vec<u8> {
        self.ok(&["secret", "get", path]).stdout
    }
}

pub fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn docker-dso");
    let mut pipe = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait docker-dso");
    writer.join().expect("stdin writer");
    out
}

pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "docker-dso {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}
