//! Hold through the real `dso-proxy` binary: clients that arrive while a route has no upstream
//! are parked and connected when one arrives; on hold timeout they see a clean close.

mod support;

use std::time::Duration;

use dataplane::api::{HoldRequest, RouteRequest};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::TcpStream;

use support::{ProxyProcess, Server, ask, wait_until};

/// 50 clients connect while the route has no upstream; the upstream arrives 500 ms later;
/// all 50 complete their request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_clients_complete_when_upstream_arrives() {
    let server = Server::tagged("late").await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("db", "127.0.0.1:0", &[]).await;
    assert!(proxy.client.route("db").await.unwrap().holding);

    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(tokio::spawn(async move {
            let mut stream = BufReader::new(TcpStream::connect(listen).await?);
            ask(&mut stream, &format!("q{i}")).await
        }));
    }
    wait_until("50 parked clients", || async {
        proxy
            .client
            .route("db")
            .await
            .map(|r| r.held == 50)
            .unwrap_or(false)
    })
    .await;

    // The scenario of the issue: the upstream shows up half a second later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let change = proxy
        .client
        .put_route(
            "db",
            &RouteRequest {
                listen: "127.0.0.1:0".into(),
                upstreams: vec![server.addr.to_string()],
                drain_timeout_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(change.released, 50);
    for (i, client) in clients.into_iter().enumerate() {
        assert_eq!(client.await.unwrap().unwrap(), format!("q{i} late"));
    }
    assert_eq!(proxy.client.route("db").await.unwrap().held, 0);
}

/// Clients parked past the hold timeout are closed cleanly (end of stream, no reset) and
/// counted; an explicit hold on a route with an upstream parks too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_timeout_closes_cleanly_and_counts() {
    let server = Server::tagged("up").await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("db", "127.0.0.1:0", &[server.addr]).await;
    let view = proxy
        .client
        .hold(
            "db",
            &HoldRequest {
                timeout_ms: Some(300),
            },
        )
        .await
        .unwrap();
    assert!(view.holding);
    assert_eq!(view.generation, 1);

    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(listen).await?;
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await.map(|_| buf.len())
        }));
    }
    for client in clients {
        let read = client.await.unwrap();
        assert_eq!(read.expect("clean end of stream, not a reset"), 0);
    }
    assert_eq!(
        proxy
            .metric("dso_proxy_hold_timeouts_total", &["route=\"db\""])
            .await,
        10.0
    );
    assert_eq!(
        proxy
            .metric(
                "dso_proxy_connections_ended_total",
                &["reason=\"hold_timeout\""]
            )
            .await,
        10.0
    );
    assert_eq!(
        server.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // A PUT with the same upstream ends the hold without a new generation.
    let after = proxy.put("db", "127.0.0.1:0", &[server.addr]).await;
    assert_eq!(after, listen);
    let view = proxy.client.route("db").await.unwrap();
    assert!(!view.holding);
    assert_eq!(view.generation, 1);
    let mut stream = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut stream, "x").await.unwrap(), "x up");
}

/// The hold queue is bounded: with --hold-max 3, further clients wait in the backlog (not
/// accepted) and are served once the upstream arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_queue_is_bounded_by_back_pressure() {
    let server = Server::tagged("up").await;
    let proxy = ProxyProcess::start(&["--hold-max", "3"]).await;
    let listen = proxy.put("db", "127.0.0.1:0", &[]).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(tokio::spawn(async move {
            let mut stream = BufReader::new(TcpStream::connect(listen).await?);
            ask(&mut stream, &format!("q{i}")).await
        }));
    }
    wait_until("3 parked clients", || async {
        proxy
            .client
            .route("db")
            .await
            .map(|r| r.held == 3)
            .unwrap_or(false)
    })
    .await;
    // The other three are in the kernel backlog, not accepted: the count stays at 3.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(proxy.client.route("db").await.unwrap().held, 3);
    assert_eq!(
        proxy
            .metric("dso_proxy_connections_accepted_total", &["route=\"db\""])
            .await,
        3.0
    );

    proxy.put("db", "127.0.0.1:0", &[server.addr]).await;
    for client in clients {
        assert!(client.await.unwrap().unwrap().ends_with(" up"));
    }
}
