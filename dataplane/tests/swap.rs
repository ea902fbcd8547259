//! Swaps and drains through the real `dso-proxy` binary: swaps under load lose nothing and
//! redirect new connections at once; old connections keep flowing until the drain deadline
//! and are cut there, and the drain report counts ended and cut connections.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dataplane::api::DrainRequest;
use tokio::io::BufReader;
use tokio::net::TcpStream;

use support::{ProxyProcess, Server, ask};

/// 200 clients doing request/response while the upstream alternates between two servers
/// 100 times: no client sees an error, each connection stays on one backend, and right after
/// each swap a new connection reaches the new backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_loses_nothing() {
    let a = Server::tagged("A").await;
    let b = Server::tagged("B").await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("svc", "127.0.0.1:0", &[a.addr]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for id in 0..200u64 {
        let (stop, errors, rounds) = (stop.clone(), errors.clone(), rounds.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A short-lived connection of a few requests, all on one backend.
                let Ok(stream) = TcpStream::connect(listen).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut stream = BufReader::new(stream);
                let mut backend = None;
                for _ in 0..5 {
                    n += 1;
                    let line = format!("{id}-{n}");
                    match ask(&mut stream, &line).await {
                        Ok(answer) => {
                            let tag = answer.strip_prefix(&line).map(str::to_owned);
                            let consistent = match (&backend, &tag) {
                                (_, None) => false,
                                (None, Some(_)) => true,
                                (Some(first), Some(tag)) => first == tag,
                            };
                            if !consistent {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            backend = tag;
                            rounds.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    for swap in 0..100 {
        let (target, tag) = if swap % 2 == 0 {
            (b.addr, "B")
        } else {
            (a.addr, "A")
        };
        proxy.put("svc", "127.0.0.1:0", &[target]).await;
        let mut probe = BufReader::new(TcpStream::connect(listen).await.unwrap());
        let answer = ask(&mut probe, "probe").await.unwrap();
        assert_eq!(
            answer,
            format!("probe {tag}"),
            "swap {swap}: new connection went elsewhere"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let done = rounds.load(Ordering::Relaxed);
    println!(
        "100 swaps in {:?}, {done} request/response rounds",
        started.elapsed()
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "client errors");
    assert!(
        done > 2_000,
        "load too light to mean anything: {done} rounds"
    );
    let view = proxy.client.route("svc").await.unwrap();
    assert_eq!(view.generation, 101);
}

/// A connection opened before a swap keeps exchanging data after it; one still open at the
/// drain deadline is cut at the deadline and counted as cut; one that closes before is
/// counted as ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_connections_flow_until_deadline_then_are_cut() {
    const DRAIN_MS: u64 = 1_500;
    let a = Server::tagged("A").await;
    let b = Server::tagged("B").await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("db", "127.0.0.1:0", &[a.addr]).await;

    let mut long = BufReader::new(TcpStream::connect(listen).await.unwrap());
    let mut short = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut long, "1").await.unwrap(), "1 A");
    assert_eq!(ask(&mut short, "1").await.unwrap(), "1 A");

    let swapped_at = Instant::now();
    proxy
        .put_with_drain("db", "127.0.0.1:0", &[b.addr], Some(DRAIN_MS))
        .await;

    // Old connections keep their backend; new ones get the new backend.
    assert_eq!(ask(&mut long, "2").await.unwrap(), "2 A");
    let mut fresh = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut fresh, "3").await.unwrap(), "3 B");
    drop(short);

    // Keep talking on the old connection until the proxy cuts it.
    let mut n = 0;
    let cut_after = loop {
        n += 1;
        if ask(&mut long, &n.to_string()).await.is_err() {
            break swapped_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("cut {cut_after:?} after the swap (deadline {DRAIN_MS} ms)");
    assert!(
        cut_after >= Duration::from_millis(DRAIN_MS - 50),
        "cut early: {cut_after:?}"
    );
    assert!(
        cut_after <= Duration::from_millis(DRAIN_MS + 1_000),
        "cut late: {cut_after:?}"
    );

    let report = proxy
        .client
        .drain("db", &DrainRequest::default())
        .await
        .unwrap();
    assert_eq!(report.generations.len(), 1, "{report:?}");
    assert_eq!(report.generations[0].generation, 1);
    assert_eq!(
        (report.generations[0].ended, report.generations[0].cut),
        (1, 1)
    );
    assert_eq!(
        proxy
            .metric("dso_proxy_drained_connections_total", &["outcome=\"cut\""])
            .await,
        1.0
    );
    assert_eq!(
        ask(&mut fresh, "4").await.unwrap(),
        "4 B",
        "new generation unaffected"
    );
}

/// A drain call can bring the deadline forward and reports once old generations are empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_call_shortens_deadline_and_reports() {
    let a = Server::tagged("A").await;
    let b = Server::tagged("B").await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("db", "127.0.0.1:0", &[a.addr]).await;
    let mut old = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut old, "1").await.unwrap(), "1 A");
    proxy
        .put_with_drain("db", "127.0.0.1:0", &[b.addr], Some(600_000))
        .await;

    let started = Instant::now();
    let report = proxy
        .client
        .drain(
            "db",
            &DrainRequest {
                deadline_ms: Some(200),
            },
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "deadline was not shortened"
    );
    assert_eq!(report.generations[0].cut, 1, "{report:?}");
    assert!(ask(&mut old, "2").await.is_err());
}
