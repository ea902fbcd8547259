//! The `dso-proxy` command line: bad flags exit 2 with a message naming the flag, bind
//! failures exit 1 naming the address and the cause (with a hint), nothing is bound before
//! all flags are valid, and IPv6 listen addresses work.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use tokio::io::BufReader;
use tokio::net::TcpStream;

use support::{ProxyProcess, Server, ask};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dso-proxy"))
        .args(args)
        .output()
        .expect("run dso-proxy")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Each invalid command line exits 2 and says what is wrong with which flag.
#[test]
fn invalid_flags_exit_2_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "nothing to do"),
        (&["--listen", "127.0.0.1:15432"], "--upstream"),
        (&["--upstream", "127.0.0.1:5432"], "--listen"),
        (
            &[
                "--listen",
                "localhost:15432",
                "--upstream",
                "127.0.0.1:5432",
            ],
            "\"localhost:15432\"",
        ),
        (
            &["--listen", "127.0.0.1:15432", "--upstream", "127.0.0.1"],
            "\"127.0.0.1\"",
        ),
        (&["--route", "db"], "NAME=LISTEN=UPSTREAM"),
        (&["--route", "db=127.0.0.1:1=nope"], "\"nope\""),
        (
            &["--route", "bad name=127.0.0.1:1=127.0.0.1:2"],
            "route name \"bad name\"",
        ),
        (
            &[
                "--route",
                "a=127.0.0.1:1=127.0.0.1:2",
                "--route",
                "a=127.0.0.1:3=127.0.0.1:2",
            ],
            "given twice",
        ),
        (
            &[
                "--route",
                "a=127.0.0.1:1=127.0.0.1:2",
                "--route",
                "b=127.0.0.1:1=127.0.0.1:2",
            ],
            "127.0.0.1:1",
        ),
        (
            &[
                "--route",
                "a=127.0.0.1:1=127.0.0.1:2",
                "--drain-timeout-ms",
                "0",
            ],
            "--drain-timeout-ms",
        ),
        (
            &[
                "--route",
                "a=127.0.0.1:1=127.0.0.1:2",
                "--forwarding",
                "fast",
            ],
            "fast",
        ),
        (
            &[
                "--route",
                "a=127.0.0.1:1=127.0.0.1:2",
                "--max-connections",
                "0",
            ],
            "--max-connections",
        ),
        (
            &["--route", "a=127.0.0.1:1=127.0.0.1:2", "--log", "[["],
            "--log",
        ),
        (&["--bogus"], "--bogus"),
    ];
    for (args, needle) in cases {
        let output = run(args);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text} lacks {needle:?}");
    }
}

/// A bad flag after valid ones binds nothing: the control socket is never created.
#[test]
fn nothing_is_bound_before_all_flags_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("proxy.sock");
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let route = format!("a={free}=127.0.0.1:9");
    let control_arg = control.display().to_string();
    let output = run(&[
        "--control",
        &control_arg,
        "--route",
        &route,
        "--route",
        "b=oops",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(!control.exists(), "control socket was created");
    std::net::TcpListener::bind(free).expect("listen address must still be free");
}

/// An address in use exits 1 naming the address and the cause, with a hint.
#[test]
fn address_in_use_exits_1_with_hint() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(&["--listen", &addr, "--upstream", "127.0.0.1:9"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&addr), "{text}");
    assert!(text.contains("Address already in use"), "{text}");
    assert!(
        text.contains("hint:") && text.contains("ss -ltnp"),
        "{text}"
    );
}

/// A privileged port without the capability exits 1 with the CAP_NET_BIND_SERVICE hint.
#[test]
fn privileged_port_without_capability_names_the_capability() {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024);
    if start <= 1 {
        println!(
            "skipped: net.ipv4.ip_unprivileged_port_start={start}, every port is unprivileged"
        );
        return;
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_dso-proxy"));
    command.args(["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:9"]);
    // SAFETY: prctl is async-signal-safe; dropping CAP_NET_BIND_SERVICE from the bounding set
    // before exec makes even root lose it in the new program. Failure (no CAP_SETPCAP) is
    // fine for a non-root user, who lacks the capability anyway.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                10, /* CAP_NET_BIND_SERVICE */
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let output = command.output().unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("127.0.0.1:1") && text.contains("Permission denied"),
        "{text}"
    );
    assert!(text.contains("CAP_NET_BIND_SERVICE"), "{text}");
}

/// `--route` with IPv6 addresses listens on ::1 only and forwards.
#[tokio::test]
async fn ipv6_route_flag_listens_and_forwards() {
    let Ok(upstream) = tokio::net::TcpListener::bind("[::1]:0").await else {
        println!("skipped: no IPv6 loopback on this host");
        return;
    };
    let upstream_addr = upstream.local_addr().unwrap();
    drop(upstream);
    let server = Server::tagged("six").await;
    let route = format!(
        "v6=[::1]:0=[{}]:{},{}",
        upstream_addr.ip(),
        upstream_addr.port(),
        server.addr
    );
    let proxy = ProxyProcess::start(&["--route", &route]).await;
    let view = proxy.client.route("v6").await.unwrap();
    let listen: std::net::SocketAddr = view.local_addr.parse().unwrap();
    assert!(listen.is_ipv6() && listen.ip().is_loopback(), "{listen}");
    assert_eq!(view.upstreams.len(), 2);

    // The first upstream (the dropped IPv6 port) refuses; the proxy falls back to the second.
    let mut stream = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut stream, "hello").await.unwrap(), "hello six");
}

/// `--listen/--upstream` forward on the route named "default".
#[tokio::test]
async fn single_route_flags_forward() {
    let server = Server::tagged("one").await;
    let upstream = server.addr.to_string();
    let proxy = ProxyProcess::start(&["--listen", "127.0.0.1:0", "--upstream", &upstream]).await;
    let view = proxy.client.route("default").await.unwrap();
    let mut stream = BufReader::new(TcpStream::connect(&view.local_addr).await.unwrap());
    assert_eq!(ask(&mut stream, "x").await.unwrap(), "x one");
}

/// Started with a low soft descriptor limit (as from a shell: 1024 or less), the proxy raises
/// it to the hard limit, so the default connection cap is not silently cut to a few hundred.
#[tokio::test]
async fn soft_descriptor_limit_is_raised_to_the_hard_limit() {
    const SOFT: u64 = 256;
    const HARD: u64 = 4096;
    let proxy = ProxyProcess::start_with(&[], |command| {
        // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limits.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: SOFT,
                    rlim_max: HARD,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("Max open files line")
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[3..5],
        [HARD.to_string(), HARD.to_string()],
        "{limits}"
    );
    assert!(
        proxy.stderr().contains("raised the descriptor limit"),
        "{}",
        proxy.stderr()
    );
}
