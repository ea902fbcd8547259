//! Limits and failure handling of the real `dso-proxy` binary: the connection cap applies
//! back-pressure, upstream connects are retried within a budget and fall back in order,
//! half-open and idle connections are closed, descriptor exhaustion never spins the accept
//! loop, and SIGTERM drains then exits 0.

mod support;

use std::os::unix::process::CommandExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::{ProxyProcess, Server, ask, wait_until};

/// A free port on 127.0.0.1 that nobody listens on (bound, then released).
fn dead_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// At the connection cap the proxy stops accepting (clients wait in the backlog) instead of
/// accepting and closing; a freed place lets the next client in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_applies_back_pressure() {
    let server = Server::tagged("up").await;
    let proxy = ProxyProcess::start(&["--max-connections", "3"]).await;
    let listen = proxy.put("db", "127.0.0.1:0", &[server.addr]).await;

    let mut open = Vec::new();
    for i in 0..3 {
        let mut stream = BufReader::new(TcpStream::connect(listen).await.unwrap());
        assert_eq!(
            ask(&mut stream, &i.to_string()).await.unwrap(),
            format!("{i} up")
        );
        open.push(stream);
    }
    let waiting = tokio::spawn(async move {
        let mut stream = BufReader::new(TcpStream::connect(listen).await?);
        ask(&mut stream, "late").await
    });
    // The fourth client is connected in the kernel backlog but not accepted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    assert_eq!(
        proxy
            .metric("dso_proxy_connections_accepted_total", &[])
            .await,
        3.0
    );

    drop(open.pop());
    assert_eq!(waiting.await.unwrap().unwrap(), "late up");
    assert_eq!(
        proxy
            .metric("dso_proxy_connections_accepted_total", &[])
            .await,
        4.0
    );
}

/// Upstreams are tried in order (a dead first one falls back to the second), and a refused
/// connect is retried until the upstream comes up within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retries_within_budget_and_falls_back() {
    let server = Server::tagged("second").await;
    let proxy = ProxyProcess::start(&["--connect-budget-ms", "5000"]).await;
    let listen = proxy
        .put("fb", "127.0.0.1:0", &[dead_addr(), server.addr])
        .await;
    let mut stream = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut stream, "a").await.unwrap(), "a second");

    // The upstream is down when the client arrives and comes up while the proxy retries.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let later = reserved.local_addr().unwrap();
    drop(reserved);
    let listen = proxy.put("retry", "127.0.0.1:0", &[later]).await;
    let client = tokio::spawn(async move {
        let mut stream = BufReader::new(TcpStream::connect(listen).await?);
        ask(&mut stream, "b").await
    });
    wait_until("two refused connects", || async {
        proxy
            .metric(
                "dso_proxy_upstream_connect_errors_total",
                &["route=\"retry\"", "refused"],
            )
            .await
            >= 2.0
    })
    .await;
    let listener = tokio::net::TcpListener::bind(later)
        .await
        .expect("rebind reserved port");
    let (mut upstream, _) = listener.accept().await.unwrap();
    let mut line = [0u8; 2];
    upstream.read_exact(&mut line).await.unwrap();
    upstream.write_all(b"b up\n").await.unwrap();
    assert_eq!(client.await.unwrap().unwrap(), "b up");
}

/// With every upstream dead the client is closed after the budget and the failure counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstreams_close_client_after_budget() {
    let proxy = ProxyProcess::start(&["--connect-budget-ms", "300"]).await;
    let listen = proxy
        .put("dead", "127.0.0.1:0", &[dead_addr(), dead_addr()])
        .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(listen).await.unwrap();
    let mut buf = Vec::new();
    let read = stream.read_to_end(&mut buf).await;
    assert!(read.is_ok() && buf.is_empty(), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy
            .metric(
                "dso_proxy_connections_ended_total",
                &["reason=\"connect_failed\""]
            )
            .await,
        1.0
    );
    assert!(
        proxy
            .metric("dso_proxy_upstream_connect_errors_total", &["refused"])
            .await
            >= 4.0,
        "both upstreams, more than one round"
    );
}

/// A peer that never closes after the other side did is closed after the half-close linger
/// (no CLOSE-WAIT leak); a connection with no traffic is closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_and_idle_connections_are_closed() {
    let sink = Server::sink().await;
    let proxy =
        ProxyProcess::start(&["--half-close-linger-ms", "300", "--idle-timeout-ms", "600"]).await;
    let listen = proxy.put("sink", "127.0.0.1:0", &[sink.addr]).await;

    let mut half = TcpStream::connect(listen).await.unwrap();
    half.write_all(b"bye").await.unwrap();
    half.shutdown().await.unwrap();
    let mut buf = Vec::new();
    half.read_to_end(&mut buf).await.unwrap();
    assert_eq!(
        proxy
            .metric(
                "dso_proxy_connections_ended_total",
                &["reason=\"linger_timeout\""]
            )
            .await,
        1.0
    );

    let mut idle = TcpStream::connect(listen).await.unwrap();
    let read = idle.read_to_end(&mut buf).await;
    assert!(read.is_ok(), "{read:?}");
    assert_eq!(
        proxy
            .metric(
                "dso_proxy_connections_ended_total",
                &["reason=\"idle_timeout\""]
            )
            .await,
        1.0
    );
}

/// Out of descriptors, the accept loop backs off instead of spinning, and recovers once
/// connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_backs_off_and_recovers() {
    let server = Server::echo().await;
    let proxy = ProxyProcess::start_with(&["--connect-budget-ms", "200"], |command| {
        // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 48,
                    rlim_max: 48,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    })
    .await;
    let listen = proxy.put("fd", "127.0.0.1:0", &[server.addr]).await;

    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(TcpStream::connect(listen).await.unwrap());
    }
    // The control API needs a descriptor too, so exhaustion is watched from /proc.
    let fd_dir = format!("/proc/{}/fd", proxy.pid());
    wait_until("descriptor exhaustion", || async {
        std::fs::read_dir(&fd_dir)
            .map(|dir| dir.count())
            .unwrap_or(0)
            >= 47
    })
    .await;

    // While exhausted, the proxy must be nearly idle: 1 s of wall time, well under 0.5 s CPU.
    let before = proxy.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = proxy.cpu_ticks() - before;
    assert!(used < 50, "accept loop spins: {used} ticks in 1 s");

    drop(clients);
    wait_until("recovery", || async {
        let Ok(stream) = TcpStream::connect(listen).await else {
            return false;
        };
        let mut stream = stream;
        if stream.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    })
    .await;
    let text = proxy.client.metrics().await.unwrap();
    let exhausted = support::metric_value(
        &text,
        "dso_proxy_accept_errors_total",
        &["resources_exhausted"],
    ) + support::metric_value(
        &text,
        "dso_proxy_upstream_connect_errors_total",
        &["resources_exhausted"],
    );
    assert!(exhausted > 0.0, "the limit was never hit:\n{text}");
}

/// SIGTERM stops accepting at once, lets open connections finish within the shutdown
/// deadline, cuts the rest there, removes the control socket and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_zero() {
    let server = Server::tagged("up").await;
    let mut proxy = ProxyProcess::start(&["--shutdown-drain-ms", "1000"]).await;
    let listen = proxy.put("db", "127.0.0.1:0", &[server.addr]).await;
    let mut open = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut open, "1").await.unwrap(), "1 up");

    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    wait_until("listener closed", || async {
        TcpStream::connect(listen).await.is_err()
    })
    .await;
    assert_eq!(
        ask(&mut open, "2").await.unwrap(),
        "2 up",
        "open connection cut too early"
    );

    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let elapsed = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        elapsed >= Duration::from_millis(900),
        "exited before the deadline: {elapsed:?}"
    );
    assert!(ask(&mut open, "3").await.is_err());
    assert!(!proxy.control.exists());
    let log = proxy.stderr();
    assert!(
        log.contains("dso-proxy stopped") && log.contains("drain.cut=1"),
        "{log}"
    );
    // The probe connects above may race the listener's close; after exit none gets through.
    let upstream_seen = server.accepted.load(Ordering::Relaxed);
    assert!(TcpStream::connect(listen).await.is_err());
    assert_eq!(server.accepted.load(Ordering::Relaxed), upstream_seen);
}
