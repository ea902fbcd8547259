//! Many idle connections through one route of the real `dso-proxy` binary: they all stay open
//! and usable, and the proxy's resident memory per idle connection is recorded (and bounded).

mod support;

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{ProxyProcess, Server, wait_until};

/// Connections the issue asks for.
const WANTED: u64 = 10_000;
/// Descriptors kept back in each process for everything but the connections.
const FD_RESERVE: u64 = 100;
/// Upper bound asserted for the proxy's growth per idle connection (target: 16 KiB).
const PER_CONNECTION_MAX_KIB: f64 = 16.0;

/// Raises the soft descriptor limit to the hard one (children inherit it) and returns it.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_max
}

/// 10,000 concurrent idle connections (fewer only if the hard descriptor limit forbids it,
/// said in the output): all open, a sample still echoes, RSS per connection within bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections() {
    // Each proxied connection costs the proxy two descriptors (client and upstream), and the
    // test process two as well (client and in-process server side).
    let hard = raise_fd_limit();
    let fit = hard.saturating_sub(FD_RESERVE) / 2;
    let count = WANTED.min(fit);
    assert!(
        count >= 1_000,
        "RLIMIT_NOFILE hard limit {hard} allows only {count} connections; raise it \
         (`ulimit -Hn`, or LimitNOFILE= for a service) to run this test"
    );
    if count < WANTED {
        println!(
            "note: RLIMIT_NOFILE hard limit is {hard}; each process needs 2 descriptors per \
             connection, so this run uses {count} connections instead of {WANTED}"
        );
    }

    let server = Server::echo().await;
    let proxy = ProxyProcess::start(&["--connect-budget-ms", "10000"]).await;
    let listen = proxy.put("idle", "127.0.0.1:0", &[server.addr]).await;
    let rss_start = proxy.rss_kib();

    // Open the connections, 100 connects in flight at a time.
    let started = Instant::now();
    let mut streams = Vec::with_capacity(count as usize);
    let mut pending = tokio::task::JoinSet::new();
    let mut launched = 0;
    while (streams.len() as u64) < count {
        while launched < count && pending.len() < 100 {
            pending.spawn(TcpStream::connect(listen));
            launched += 1;
        }
        let Some(result) = pending.join_next().await else {
            break;
        };
        streams.push(result.unwrap().expect("connect through the proxy"));
    }
    let proxied = || server.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + support::WAIT;
    while proxied() < count && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if proxied() < count {
        let metrics = proxy.client.metrics().await.unwrap_or_default();
        let log: String = proxy
            .stderr()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n");
        panic!("only {} of {count} proxied\n{metrics}\n{log}", proxied());
    }
    let opened_in = started.elapsed();

    let health = proxy.client.health().await.unwrap();
    assert_eq!(health.active, count);
    let rss_full = proxy.rss_kib();
    let per_connection = (rss_full.saturating_sub(rss_start)) as f64 / count as f64;
    println!(
        "{count} idle connections opened in {opened_in:?}; proxy RSS {rss_start} KiB before, \
         {rss_full} KiB with them: {per_connection:.2} KiB per connection"
    );

    // A sample of the idle connections still forwards.
    for index in (0..count as usize).step_by(997) {
        let stream = &mut streams[index];
        stream.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    }

    assert!(
        rss_start <= 10 * 1024,
        "idle proxy RSS {rss_start} KiB is above 10 MiB"
    );
    assert!(
        per_connection <= PER_CONNECTION_MAX_KIB,
        "{per_connection:.2} KiB per idle connection is above {PER_CONNECTION_MAX_KIB} KiB"
    );

    drop(streams);
    wait_until("all connections ended", || async {
        proxy
            .client
            .health()
            .await
            .map(|h| h.active == 0)
            .unwrap_or(false)
    })
    .await;
}
