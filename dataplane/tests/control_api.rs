//! The control API of the real `dso-proxy` binary: socket permissions and stale sockets,
//! every bad-input case, conflicts that leave nothing half-applied, and the route views.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use dataplane::api::{DrainRequest, RouteRequest};
use dataplane::client::ProxyClient;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::BufReader;
use tokio::net::TcpStream;

use support::{ProxyProcess, Server, ask, wait_until};

/// The inode of the listening socket on `port`, from /proc/PID/net/tcp.
fn listen_inode(pid: i32, port: u16) -> Option<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let wanted = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[1].ends_with(&wanted) && fields[3] == "0A").then(|| fields[9].to_owned())
    })
}

async fn send(client: &ProxyClient, method: Method, uri: &str, body: &str) -> (StatusCode, String) {
    let (status, bytes) = client
        .send(method, uri, Bytes::from(body.to_owned()))
        .await
        .expect("control call");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The control socket has mode 0660 and disappears when the proxy stops.
#[tokio::test]
async fn control_socket_is_0660_and_removed_on_exit() {
    let mut proxy = ProxyProcess::start(&[]).await;
    let meta = std::fs::symlink_metadata(&proxy.control).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // No private staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(proxy.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit(support::WAIT).await.success());
    assert!(!proxy.control.exists(), "socket file left behind");
}

/// A stale socket file (nobody listening) is replaced; a live one is refused and kept.
#[tokio::test]
async fn stale_socket_is_replaced_and_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let live = ProxyProcess::start(&[]).await;
    let output = Command::new(env!("CARGO_BIN_EXE_dso-proxy"))
        .arg("--control")
        .arg(&live.control)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use by a running process"), "{stderr}");
    assert!(
        stderr.contains(&live.control.display().to_string()),
        "{stderr}"
    );
    live.client
        .health()
        .await
        .expect("first proxy still answers");

    // The stale file from above: a proxy started on it comes up.
    let mut child = Command::new(env!("CARGO_BIN_EXE_dso-proxy"))
        .arg("--control")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = ProxyClient::new(&path);
    wait_until("proxy on the stale path", || async {
        client.health().await.is_ok()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A path that is not a socket is never replaced.
#[tokio::test]
async fn regular_file_at_control_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dso-proxy"))
        .arg("--control")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

/// Every malformed request gets a 4xx naming what is wrong, and changes nothing.
#[tokio::test]
async fn bad_requests_get_4xx_with_reason() {
    let proxy = ProxyProcess::start(&[]).await;
    let client = &proxy.client;
    let cases: &[(Method, &str, &str, u16, &str)] = &[
        (Method::PUT, "/v1/routes/db", "{not json", 400, "not valid"),
        (Method::PUT, "/v1/routes/db", "", 400, "EOF"),
        (
            Method::PUT,
            "/v1/routes/db",
            r#"{"listen":"127.0.0.1:0","upstreams":[],"x":1}"#,
            400,
            "unknown field `x`",
        ),
        (
            Method::PUT,
            "/v1/routes/db",
            r#"{"upstreams":[]}"#,
            400,
            "missing field `listen`",
        ),
        (
            Method::PUT,
            "/v1/routes/db",
            r#"{"listen":"db.local:5432","upstreams":[]}"#,
            400,
            "\"db.local:5432\"",
        ),
        (
            Method::PUT,
            "/v1/routes/db",
            r#"{"listen":"127.0.0.1:0","upstreams":["10.0.0.1"]}"#,
            400,
            "\"10.0.0.1\"",
        ),
        (
            Method::PUT,
            "/v1/routes/db",
            r#"{"listen":"127.0.0.1:0","upstreams":["10.0.0.1:0"]}"#,
            400,
            "port 0",
        ),
        (
            Method::PUT,
            "/v1/routes/db",
            r#"{"listen":"127.0.0.1:0","upstreams":[],"drain_timeout_ms":0}"#,
            400,
            "drain_timeout_ms",
        ),
        (
            Method::PUT,
            "/v1/routes/db~1",
            r#"{"listen":"127.0.0.1:0","upstreams":[]}"#,
            400,
            "route name",
        ),
        (
            Method::PUT,
            "/v1/routes/db",
            r#"{"listen":"192.0.2.1:5432","upstreams":[]}"#,
            400,
            "192.0.2.1:5432",
        ),
        (
            Method::GET,
            "/v1/routes/nope",
            "",
            404,
            "\"nope\" does not exist",
        ),
        (Method::DELETE, "/v1/routes/nope", "", 404, "does not exist"),
        (
            Method::POST,
            "/v1/routes/nope/hold",
            "",
            404,
            "does not exist",
        ),
        (
            Method::POST,
            "/v1/routes/nope/drain",
            "",
            404,
            "does not exist",
        ),
        (
            Method::POST,
            "/v1/routes/nope/hold",
            r#"{"timeout_ms":"soon"}"#,
            400,
            "expected u64 at line 1",
        ),
        (
            Method::GET,
            "/v2/whatever",
            "",
            404,
            "no endpoint /v2/whatever",
        ),
        (Method::POST, "/v1/routes", "", 405, "allowed: GET"),
        (Method::PATCH, "/v1/routes/db", "", 405, "GET, PUT, DELETE"),
    ];
    for (method, uri, body, status, needle) in cases {
        let (got, text) = send(client, method.clone(), uri, body).await;
        assert_eq!(got.as_u16(), *status, "{method} {uri} {body}: {text}");
        let parsed: dataplane::api::ErrorBody = serde_json::from_str(&text).expect("error body");
        assert!(
            parsed.error.contains(needle),
            "{method} {uri} {body}: {text} lacks {needle:?}"
        );
    }

    let huge = format!(
        r#"{{"listen":"127.0.0.1:0","upstreams":["{}"]}}"#,
        "1".repeat(70_000)
    );
    let (got, text) = send(client, Method::PUT, "/v1/routes/db", &huge).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{text}");

    assert!(
        client.routes().await.unwrap().is_empty(),
        "a bad request created a route"
    );
}

/// Listen conflicts answer 409 and apply nothing: another route's address, an address held
/// by another process, and changing an existing route's address.
#[tokio::test]
async fn listen_conflicts_are_409_and_change_nothing() {
    let server = Server::echo().await;
    let proxy = ProxyProcess::start(&[]).await;
    let client = &proxy.client;
    let first = proxy.put("first", "127.0.0.1:0", &[server.addr]).await;

    let request = |listen: String| RouteRequest {
        listen,
        upstreams: vec![server.addr.to_string()],
        drain_timeout_ms: None,
    };
    let err = client
        .put_route("second", &request(first.to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert!(err.to_string().contains("route \"first\""), "{err}");

    let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = outside.local_addr().unwrap();
    let err = client
        .put_route("third", &request(taken.to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    let text = format!("{err:?}");
    assert!(
        text.contains(&taken.to_string()) && text.contains("ss -ltnp"),
        "{text}"
    );

    let err = client
        .put_route("first", &request("127.0.0.1:1".into()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert!(err.to_string().contains("cannot change"), "{err}");

    let routes = client.routes().await.unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].local_addr, first.to_string());
    assert_eq!(routes[0].upstreams, vec![server.addr.to_string()]);
    assert_eq!(routes[0].generation, 1);
}

/// Changing only the upstreams keeps the very same listening socket (same inode) and an
/// open connection keeps working; the views show generations and counts.
#[tokio::test]
async fn upstream_change_keeps_listener_and_reports_generations() {
    let a = Server::tagged("A").await;
    let b = Server::tagged("B").await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("web", "127.0.0.1:0", &[a.addr]).await;
    let inode = listen_inode(proxy.pid(), listen.port()).expect("listening socket");

    let mut old = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut old, "1").await.unwrap(), "1 A");

    let change = proxy
        .client
        .put_route(
            "web",
            &RouteRequest {
                listen: "127.0.0.1:0".into(),
                upstreams: vec![b.addr.to_string()],
                drain_timeout_ms: Some(60_000),
            },
        )
        .await
        .unwrap();
    assert!(change.swapped && !change.created);
    assert_eq!(change.generation, 2);
    assert_eq!(change.route.local_addr, listen.to_string());
    let old_generation = change
        .route
        .generations
        .iter()
        .find(|g| g.generation == 1)
        .unwrap();
    assert!(old_generation.draining);
    assert_eq!(old_generation.active, 1);
    assert!(old_generation.deadline_in_ms.unwrap() > 50_000);
    assert_eq!(
        listen_inode(proxy.pid(), listen.port()),
        Some(inode),
        "listener was rebound"
    );

    // The same PUT again is a no-op: no new generation.
    let again = proxy
        .put_with_drain("web", "127.0.0.1:0", &[b.addr], Some(60_000))
        .await;
    assert_eq!(again, listen);
    assert_eq!(proxy.client.route("web").await.unwrap().generation, 2);

    assert_eq!(ask(&mut old, "2").await.unwrap(), "2 A");
    let mut new = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut new, "3").await.unwrap(), "3 B");

    let view = proxy.client.route("web").await.unwrap();
    assert_eq!(view.upstreams, vec![b.addr.to_string()]);
    let active: Vec<(u64, u64)> = view
        .generations
        .iter()
        .map(|g| (g.generation, g.active))
        .collect();
    assert_eq!(active, vec![(2, 1), (1, 1)]);

    // Closing the old connection ends it on its own: the drain reports it as ended.
    drop(old);
    let report = proxy
        .client
        .drain("web", &DrainRequest::default())
        .await
        .unwrap();
    assert_eq!(report.generations.len(), 1);
    assert_eq!(
        (report.generations[0].ended, report.generations[0].cut),
        (1, 0)
    );
}

/// DELETE drains the route's connections, cutting them at its drain deadline, then the
/// address is free and can be used again.
#[tokio::test]
async fn delete_drains_then_frees_the_address() {
    let server = Server::tagged("A").await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy
        .put_with_drain("db", "127.0.0.1:0", &[server.addr], Some(300))
        .await;
    let mut open = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut open, "x").await.unwrap(), "x A");

    let report = proxy.client.delete_route("db").await.unwrap();
    assert_eq!(report.generations.len(), 1);
    assert_eq!(report.generations[0].cut, 1, "{report:?}");
    assert!(
        ask(&mut open, "y").await.is_err(),
        "connection survived DELETE"
    );
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "listener still open"
    );

    let again = proxy.put("db", &listen.to_string(), &[server.addr]).await;
    assert_eq!(again, listen);
    assert_eq!(proxy.client.health().await.unwrap().routes, 1);
}

/// `/metrics` serves Prometheus text with the documented names, and every name the code
/// defines is listed in docs/proxy-api.md.
#[tokio::test]
async fn metrics_are_served_and_documented() {
    let server = Server::tagged("A").await;
    let proxy = ProxyProcess::start(&[]).await;
    let listen = proxy.put("m", "127.0.0.1:0", &[server.addr]).await;
    let mut stream = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut stream, "hi").await.unwrap(), "hi A");
    drop(stream);
    wait_until("connection end counted", || async {
        proxy
            .metric("dso_proxy_connections_ended_total", &["route=\"m\""])
            .await
            == 1.0
    })
    .await;

    let text = proxy.client.metrics().await.unwrap();
    for name in [
        "dso_proxy_connections_accepted_total",
        "dso_proxy_connections_active",
        "dso_proxy_bytes_total",
        "dso_proxy_upstream_connect_seconds_bucket",
        "dso_proxy_route_generation",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert_eq!(
        support::metric_value(&text, "dso_proxy_bytes_total", &["to_upstream"]),
        3.0
    );
    assert_eq!(
        support::metric_value(&text, "dso_proxy_bytes_total", &["to_client"]),
        5.0
    );

    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/proxy-api.md"))
            .expect("docs/proxy-api.md");
    for name in dataplane::telemetry::ALL {
        assert!(
            docs.contains(name),
            "{name} is not documented in docs/proxy-api.md"
        );
    }
    for reason in dataplane::EndReason::ALL {
        assert!(
            docs.contains(reason.as_str()),
            "end reason {reason} is not documented"
        );
    }
}

/// A wildcard address on a port another route holds is refused naming that route, and a
/// route created on port 0 may be PUT again with the address it got (that is no change).
#[tokio::test]
async fn wildcard_overlap_names_the_route_and_bound_address_is_no_change() {
    let server = Server::echo().await;
    let proxy = ProxyProcess::start(&[]).await;
    let client = &proxy.client;
    let bound = proxy.put("zero", "127.0.0.1:0", &[server.addr]).await;
    let request = |listen: String| RouteRequest {
        listen,
        upstreams: vec![server.addr.to_string()],
        drain_timeout_ms: None,
    };

    let err = client
        .put_route("any", &request(format!("0.0.0.0:{}", bound.port())))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert!(err.to_string().contains("route \"zero\""), "{err}");

    let change = client
        .put_route("zero", &request(bound.to_string()))
        .await
        .expect("PUT with the bound address");
    assert!(!change.created && !change.swapped, "{change:?}");
    assert_eq!(change.route.local_addr, bound.to_string());
    assert_eq!(client.routes().await.unwrap().len(), 1);
}

/// 1,000 swaps leave the metrics output bounded: the active-connection series are the
/// generations a route still lists, not one per generation ever created.
#[tokio::test]
async fn swap_storm_does_not_grow_metric_series() {
    let a = Server::echo().await;
    let b = Server::echo().await;
    let proxy = ProxyProcess::start(&[]).await;
    proxy.put("storm", "127.0.0.1:0", &[a.addr]).await;
    let series = |text: &str| {
        text.lines()
            .filter(|line| line.starts_with("dso_proxy_connections_active{"))
            .count()
    };
    for round in 0..1000u64 {
        let upstream = if round % 2 == 0 { b.addr } else { a.addr };
        proxy
            .put_with_drain("storm", "127.0.0.1:0", &[upstream], Some(1))
            .await;
    }
    let view = proxy.client.route("storm").await.unwrap();
    assert_eq!(view.generation, 1001);

    let text = proxy.client.metrics().await.unwrap();
    assert_eq!(series(&text), view.generations.len(), "{text}");
    assert!(series(&text) <= 9, "{} active series", series(&text));
    assert!(
        text.contains("dso_proxy_connections_active{route=\"storm\",generation=\"1001\"} 0"),
        "{text}"
    );

    proxy.client.delete_route("storm").await.unwrap();
    let text = proxy.client.metrics().await.unwrap();
    assert_eq!(series(&text), 0, "a deleted route keeps series:\n{text}");
}

/// A control client that connects and never sends, or sends half a request, is disconnected
/// after the control timeout, and while it waits other control clients and the data path are
/// served.
#[tokio::test]
async fn silent_control_clients_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::tagged("A").await;
    let proxy = ProxyProcess::start(&["--control-timeout-ms", "300"]).await;
    let listen = proxy.put("ctl", "127.0.0.1:0", &[server.addr]).await;

    // More silent clients than the proxy serves at once.
    let mut silent = Vec::new();
    for index in 0..100 {
        let mut stream = tokio::net::UnixStream::connect(&proxy.control)
            .await
            .unwrap();
        if index % 2 == 1 {
            stream
                .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        silent.push(stream);
    }
    let mut stream = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(ask(&mut stream, "1").await.unwrap(), "1 A");
    proxy
        .client
        .health()
        .await
        .expect("health while silent clients wait");

    // Every silent client is closed by the proxy (end of stream, or a 408 then end).
    for stream in &mut silent {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(support::WAIT, stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "silent client not closed: {read:?}"
        );
    }

    // A body that never completes gets 408.
    let mut slow = tokio::net::UnixStream::connect(&proxy.control)
        .await
        .unwrap();
    slow.write_all(b"PUT /v1/routes/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(support::WAIT, slow.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(_))), "{read:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 300 ms"), "{answer}");
}
