//! The terminal paths through a real pseudo-terminal: util-linux `script` runs the binary on a
//! pty, the test types only after the prompt is on screen, and then reads the screen. Proves
//! that typed values and passphrases are not echoed and that `--non-interactive` never asks.

mod support;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::Sandbox;

/// How long a prompt or an exit may take to appear.
const DEADLINE: Duration = Duration::from_secs(30);

/// The binary on a pty, with everything it shows collected.
struct Terminal {
    child: Child,
    screen: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Terminal {
    /// Runs `docker-dso ARGS` on a fresh pty, or `None` when `script` is not installed.
    fn start(sandbox: &Sandbox, args: &str, extra_env: &[(&str, &str)]) -> Self {
        // `script` is in bsdutils, which every Debian system has; without it these
        // guarantees would go unchecked, so its absence is a failure, not a skip.
        assert!(
            Path::new("/usr/bin/script").exists(),
            "/usr/bin/script (bsdutils) is needed to drive a real terminal"
        );
        let command = format!("{} {args}", env!("CARGO_BIN_EXE_docker-dso"));
        let mut cmd = Command::new("/usr/bin/script");
        cmd.args(["-q", "-e", "-c", &command, "/dev/null"])
            .current_dir(sandbox.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SHELL", "/bin/sh")
            .env("HOME", sandbox.dir.path())
            .env("DSO_HOME", sandbox.home())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in extra_env {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().expect("spawn script");
        let mut stdout = child.stdout.take().expect("stdout");
        let screen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&screen);
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("screen").extend_from_slice(&chunk[..n]);
            }
        });
        Self {
            child,
            screen,
            reader,
        }
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().expect("screen")).into_owned()
    }

    /// Waits until the screen shows `text` `count` times.
    fn wait_for(&self, text: &str, count: usize) {
        let start = Instant::now();
        while self.screen().matches(text).count() < count {
            assert!(
                start.elapsed() < DEADLINE,
                "no {text:?} on screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("type");
        stdin.flush().expect("flush");
    }

    /// Waits for the exit, returning whether it succeeded and the whole screen.
    fn finish(mut self) -> (bool, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // The pty closes when script exits, so the reader reaches EOF with every byte.
                drop(self.child.stdin.take());
                let screen = Arc::clone(&self.screen);
                self.reader.join().expect("reader thread");
                let shown = String::from_utf8_lossy(&screen.lock().expect("screen")).into_owned();
                return (status.success(), shown);
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("still running after {DEADLINE:?}:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A value typed at the `secret set` prompt is stored exactly and never shown on screen.
#[test]
fn secret_set_prompt_does_not_echo_the_value() {
    let sandbox = Sandbox::new();
    sandbox.init();
    let mut term = Terminal::start(&sandbox, "secret set app/tty", &[]);
    term.wait_for("Value for app/tty: ", 1);
    term.type_line("tty-sentinel-51c2");
    let (ok, screen) = term.finish();
    assert!(ok, "{screen}");
    assert!(screen.contains("stored app/tty version 1"), "{screen}");
    assert!(
        !screen.contains("tty-sentinel-51c2"),
        "value echoed:\n{screen}"
    );
    assert_eq!(sandbox.get("app/tty"), b"tty-sentinel-51c2");
}

/// `init --passphrase` asks twice without echo, and a later command asks once.
#[test]
fn passphrase_prompts_do_not_echo() {
    let sandbox = Sandbox::new();
    let mut term = Terminal::start(&sandbox, "init --passphrase", &[]);
    term.wait_for("New vault passphrase: ", 1);
    term.type_line("pass-sentinel-88aa");
    term.wait_for("Repeat the passphrase: ", 1);
    term.type_line("pass-sentinel-88aa");
    let (ok, screen) = term.finish();
    assert!(ok, "{screen}");
    assert!(
        !screen.contains("pass-sentinel-88aa"),
        "passphrase echoed:\n{screen}"
    );

    let mut term = Terminal::start(&sandbox, "secret list", &[]);
    term.wait_for("Vault passphrase: ", 1);
    term.type_line("pass-sentinel-88aa");
    let (ok, screen) = term.finish();
    assert!(ok, "{screen}");
    assert!(screen.contains("no secrets"), "{screen}");
    assert!(
        !screen.contains("pass-sentinel-88aa"),
        "passphrase echoed:\n{screen}"
    );
}

/// `setup --non-interactive --passphrase` without DSO_PASSPHRASE fails at once, even with a
/// terminal, and writes nothing.
#[test]
fn setup_non_interactive_never_prompts_even_on_a_terminal() {
    let sandbox = Sandbox::new();
    let args = "setup --mode local --non-interactive --passphrase";
    let term = Terminal::start(&sandbox, args, &[]);
    let (ok, screen) = term.finish();
    assert!(!ok, "{screen}");
    assert!(!screen.contains("passphrase: "), "prompted:\n{screen}");
    assert!(screen.contains("DSO_PASSPHRASE"), "{screen}");
    assert!(
        !sandbox.home().join("dso.yaml").exists(),
        "config written without a vault"
    );
}

/// The setup question on a terminal: "n" keeps the file, "y" replaces it.
#[test]
fn setup_asks_before_replacing_the_configuration() {
    let sandbox = Sandbox::new();
    sandbox.ok(&["setup", "--mode", "local", "--non-interactive"]);
    let config = sandbox.home().join("dso.yaml");
    std::fs::write(&config, "version: 1\n# mine\n").expect("write");

    let mut term = Terminal::start(&sandbox, "setup --mode local", &[]);
    term.wait_for("Replace it? [y/N] ", 1);
    term.type_line("n");
    let (ok, screen) = term.finish();
    assert!(!ok, "{screen}");
    assert!(
        std::fs::read_to_string(&config)
            .expect("read")
            .contains("# mine")
    );

    let mut term = Terminal::start(&sandbox, "setup --mode local", &[]);
    term.wait_for("Replace it? [y/N] ", 1);
    term.type_line("y");
    let (ok, screen) = term.finish();
    assert!(ok, "{screen}");
    assert!(
        !std::fs::read_to_string(&config)
            .expect("read")
            .contains("# mine")
    );
}
