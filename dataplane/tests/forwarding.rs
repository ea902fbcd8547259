//! Byte forwarding through the real `dso-proxy` binary: integrity in every forwarding mode
//! and half-close in both directions.

mod support;

use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use support::{Noise, ProxyProcess, Server};

const CHUNK: usize = 256 * 1024;

/// What one side saw: hash and length of what it sent and of what it received.
#[derive(Debug, PartialEq)]
struct Exchange {
    sent: (Vec<u8>, u64),
    received: (Vec<u8>, u64),
}

/// Sends `total` bytes of noise from `seed` while reading everything the peer sends, at once.
async fn exchange(stream: TcpStream, seed: u64, total: u64) -> Exchange {
    let (mut reader, mut writer) = stream.into_split();
    let send = tokio::spawn(async move {
        let mut noise = Noise::new(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            noise.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            writer.write_all(&buf[..n]).await.expect("write");
            left -= n as u64;
        }
        writer.shutdown().await.expect("shutdown");
        (hash.finalize().to_vec(), total)
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n as u64;
    }
    Exchange {
        sent: send.await.expect("sender"),
        received: (hash.finalize().to_vec(), got),
    }
}

/// Runs a full-duplex exchange of `total` bytes each way through a proxy started with `args`.
async fn duplex_through_proxy(args: &[&str], total: u64) {
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    let server = Server::start(move |stream| {
        let report_tx = report_tx.clone();
        async move {
            let _ = report_tx.send(exchange(stream, 2, total).await);
        }
    })
    .await;
    let proxy = ProxyProcess::start(args).await;
    let listen = proxy.put("bulk", "127.0.0.1:0", &[server.addr]).await;

    let started = Instant::now();
    let client = exchange(TcpStream::connect(listen).await.unwrap(), 1, total).await;
    let upstream = report_rx.recv().await.expect("server report");
    println!(
        "{args:?}: {} MiB each way in {:?}",
        total >> 20,
        started.elapsed()
    );

    assert_eq!(
        client.received, upstream.sent,
        "upstream → client bytes differ"
    );
    assert_eq!(
        upstream.received, client.sent,
        "client → upstream bytes differ"
    );
    let bytes_up = proxy
        .metric("dso_proxy_bytes_total", &["direction=\"to_upstream\""])
        .await;
    assert_eq!(bytes_up as u64, total, "byte counter to upstream");
}

/// 1 GiB of random bytes each way at once arrives intact (SHA-256 equal) in the default mode,
/// which splices bulk data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gib_each_way_arrives_intact() {
    duplex_through_proxy(&[], 1 << 30).await;
}

/// The copy-only and splice-only modes forward the same bytes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_splice_modes_arrive_intact() {
    duplex_through_proxy(&["--forwarding", "copy"], 64 << 20).await;
    duplex_through_proxy(&["--forwarding", "splice"], 64 << 20).await;
}

/// Many small request/response rounds keep message boundaries and order in auto mode (the
/// switch between copy and splice loses or reorders nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_sizes_keep_order() {
    let server = Server::echo().await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("echo", "127.0.0.1:0", &[server.addr]).await;
    let mut stream = TcpStream::connect(listen).await.unwrap();
    let mut noise = Noise::new(7);
    for round in 0..200usize {
        // Sizes cross the 16 KiB copy buffer both ways: 1 B .. 200 KiB.
        let size = [1, 100, 16 * 1024, 16 * 1024 + 1, 70_000, 200 * 1024][round % 6];
        let mut out = vec![0u8; size];
        noise.fill(&mut out);
        stream.write_all(&out).await.unwrap();
        let mut back = vec![0u8; size];
        stream.read_exact(&mut back).await.unwrap();
        assert!(back == out, "round {round}: echo differs");
    }
}

/// The client shuts its write side and still receives the server's full reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_still_gets_full_reply() {
    const REPLY: usize = 3 << 20;
    let server = Server::start(|mut stream| async move {
        // Read the whole request (until the client's FIN), then answer at length.
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        let mut reply = vec![0u8; REPLY];
        Noise::new(request.len() as u64).fill(&mut reply);
        stream.write_all(&reply).await.unwrap();
        stream.shutdown().await.unwrap();
    })
    .await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("half", "127.0.0.1:0", &[server.addr]).await;

    let mut stream = TcpStream::connect(listen).await.unwrap();
    stream.write_all(b"0123456789").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let mut expected = vec![0u8; REPLY];
    Noise::new(10).fill(&mut expected);
    assert_eq!(reply.len(), REPLY);
    assert!(reply == expected, "reply differs");
}

/// The server closes first: the client reads every byte, then end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_close_first_delivers_all_then_eof() {
    const SIZE: usize = 2 << 20;
    let server = Server::start(|mut stream| async move {
        let mut data = vec![0u8; SIZE];
        Noise::new(99).fill(&mut data);
        stream.write_all(&data).await.unwrap();
        stream.shutdown().await.unwrap();
        // Keep reading so the server side ends only when the client closes.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    })
    .await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("half", "127.0.0.1:0", &[server.addr]).await;

    let mut stream = TcpStream::connect(listen).await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    let mut expected = vec![0u8; SIZE];
    Noise::new(99).fill(&mut expected);
    assert!(
        got == expected,
        "data differs ({} of {SIZE} bytes)",
        got.len()
    );

    // The client can still write after the server's FIN (half-close, not a reset).
    stream.write_all(b"late bytes").await.unwrap();
    stream.shutdown().await.unwrap();
    support::wait_until("upstream_closed end reason", || async {
        proxy
            .metric(
                "dso_proxy_connections_ended_total",
                &["reason=\"upstream_closed\""],
            )
            .await
            == 1.0
    })
    .await;
}

/// The half-close linger counts from the half-close, not from the last byte before it: a
/// connection that was quiet for longer than the linger, then half-closed by the client, still
/// delivers the server's answer to that end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_after_quiet_period_still_gets_reply() {
    const LINGER_MS: u64 = 300;
    // The server answers the client's end of stream after a short think, well within the
    // linger, then closes.
    let server = Server::start(|mut stream| async move {
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
        tokio::time::sleep(std::time::Duration::from_millis(LINGER_MS / 3)).await;
        let _ = stream.write_all(b"goodbye").await;
        let _ = stream.shutdown().await;
    })
    .await;
    let linger = LINGER_MS.to_string();
    let proxy = ProxyProcess::start(&["--half-close-linger-ms", &linger]).await;
    let listen = proxy.put("quiet", "127.0.0.1:0", &[server.addr]).await;

    let mut stream = TcpStream::connect(listen).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    // The quiet period is the condition under test, not an ordering wait.
    tokio::time::sleep(std::time::Duration::from_millis(LINGER_MS * 3)).await;
    stream.shutdown().await.unwrap();

    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"goodbye", "the reply to the half-close was cut");
    support::wait_until("client_closed end reason", || async {
        proxy
            .metric(
                "dso_proxy_connections_ended_total",
                &["reason=\"client_closed\""],
            )
            .await
            == 1.0
    })
    .await;
}
