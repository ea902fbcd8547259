//! The REST API on a real TCP listener (port 0) with an agent state that has no Docker and no
//! proxy: status codes of every path, the webhook's token and body checks, and the event
//! stream delivering an emitted event.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::agent::state::{AgentInfo, AgentState, ProxyState};
use crate::detect::{Detector, RotationFuture, Rotator, seen::Seen};
use crate::events::{self, Event};
use crate::reference::Reference;
use crate::resolve::{ResolveError, ValueSource};
use crate::secret::SecretValue;

const TOKEN: &str = "unit-test-token-0123456789";

struct Fixed;

impl ValueSource for Fixed {
    fn resolve(&self, _: &Reference) -> Result<SecretValue, ResolveError> {
        Ok(SecretValue::from_slice(b"v"))
    }
}

struct Never;

impl Rotator for Never {
    fn rotate(&self, _: String, _: String) -> RotationFuture {
        Box::pin(async { Err("not in this test".to_owned()) })
    }
}

async fn serve_api(token: Option<&str>) -> (SocketAddr, Shared, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let seen = Seen::open(dir.path()).unwrap();
    let (detector, task) = Detector::new(
        seen,
        Duration::from_secs(60),
        Duration::from_millis(100),
        Arc::new(Fixed),
        Arc::new(Never),
    );
    tokio::spawn(task.run());
    detector.set_services(
        [(
            "p/app".to_owned(),
            vec![Reference::parse("dso://app/pw").unwrap()],
        )]
        .into(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state: Shared = Arc::new(AgentState {
        info: AgentInfo {
            version: "test".into(),
            pid: 1,
            config: "dso.yaml".into(),
            socket: dir.path().join("dso.sock"),
            api_address: address,
            runtime_dir: dir.path().into(),
            state_dir: dir.path().into(),
            started: "now".into(),
            watch_interval_s: 60.0,
            providers: vec!["local".into()],
            vault: None,
        },
        events: events::channel(),
        detector,
        proxy_client: dataplane::client::ProxyClient::new(dir.path().join("no-proxy.sock")),
        proxy: Mutex::new(ProxyState {
            needed: true,
            ..ProxyState::default()
        }),
        services: Mutex::new(Vec::new()),
        recovered: AtomicBool::new(true),
        values: Arc::new(Fixed),
        webhook_token: token.map(|t| SecretValue::from_slice(t.as_bytes())),
        metrics: None,
    });
    tokio::spawn(serve(listener, state.clone()));
    (address, state, dir)
}

/// One request on a blocking socket (in a blocking task); returns status and body.
async fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn every_path_answers_with_its_status() {
    let (address, state, _dir) = serve_api(Some(TOKEN)).await;
    assert_eq!(call(address, "GET", "/health", "", "").await.0, 200);
    assert_eq!(
        call(address, "GET", "/ready", "", "").await.0,
        503,
        "proxy down"
    );
    state.proxy.lock().unwrap().up = true;
    assert_eq!(call(address, "GET", "/ready", "", "").await.0, 200);
    let (code, body) = call(address, "GET", "/v1/status", "", "").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["agent"]["version"], "test");
    assert_eq!(status["ready"], true);
    assert_eq!(call(address, "GET", "/metrics", "", "").await.0, 200);
    assert_eq!(call(address, "POST", "/health", "", "").await.0, 405);
    assert_eq!(call(address, "GET", "/v1/webhook", "", "").await.0, 405);
    assert_eq!(call(address, "GET", "/etc/passwd", "", "").await.0, 404);
}

#[tokio::test]
async fn the_webhook_checks_token_then_body_then_secret() {
    let (address, _state, _dir) = serve_api(Some(TOKEN)).await;
    let good = format!("Authorization: Bearer {TOKEN}\r\n");
    let body = r#"{"secret": "app/pw"}"#;
    assert_eq!(call(address, "POST", "/v1/webhook", "", body).await.0, 401);
    let wrong = "Authorization: Bearer unit-test-token-0123456780\r\n";
    assert_eq!(
        call(address, "POST", "/v1/webhook", wrong, body).await.0,
        401
    );
    let (code, answer) = call(address, "POST", "/v1/webhook", &good, body).await;
    assert_eq!(code, 202, "{answer}");
    assert!(answer.contains("\"checking\":1"), "{answer}");
    let unknown = r#"{"secret": "other/pw"}"#;
    assert_eq!(
        call(address, "POST", "/v1/webhook", &good, unknown).await.0,
        404
    );
    // Only a secret may be named: a path or a setting is an unknown field.
    let sneaky = r#"{"secret": "app/pw", "file": "/etc/shadow"}"#;
    assert_eq!(
        call(address, "POST", "/v1/webhook", &good, sneaky).await.0,
        400
    );
    assert_eq!(
        call(address, "POST", "/v1/webhook", &good, "{").await.0,
        400
    );
    let huge = format!(r#"{{"secret": "{}"}}"#, "x".repeat(70 * 1024));
    assert_eq!(
        call(address, "POST", "/v1/webhook", &good, &huge).await.0,
        413
    );
}

#[tokio::test]
async fn a_disabled_webhook_is_not_found() {
    let (address, _state, _dir) = serve_api(None).await;
    let body = r#"{"secret": "app/pw"}"#;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(
        call(address, "POST", "/v1/webhook", &auth, body).await.0,
        404
    );
}

#[tokio::test]
async fn the_event_stream_delivers_emitted_events() {
    let (address, state, _dir) = serve_api(None).await;
    let reader = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = String::new();
        let mut buffer = [0u8; 4096];
        while !seen.contains("event: route_held") {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        seen
    });
    // Emit until the subscriber is there (it subscribes when its request arrives).
    let text = loop {
        events::emit(
            &state.events,
            Event::RouteHeld {
                route: "p.app.80".into(),
            },
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        if reader.is_finished() {
            break reader.await.unwrap();
        }
    };
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(
        text.contains(r#"data: {"route":"p.app.80","type":"route_held"}"#),
        "{text}"
    );
}

/// Opens a connection, sends `request` and reads until the response head has arrived.
fn open_with(address: SocketAddr, request: &[u8]) -> (std::net::TcpStream, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = String::new();
    let mut buffer = [0u8; 1024];
    while !head.contains("\r\n\r\n") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "closed before a response: {head}");
        head.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    (stream, head)
}

#[tokio::test]
async fn event_streams_cannot_starve_health_checks() {
    let (address, _state, _dir) = serve_api(None).await;
    let (streams, extra) = tokio::task::spawn_blocking(move || {
        let request = b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n";
        let streams: Vec<_> = (0..http::STREAMS_MAX)
            .map(|_| open_with(address, request))
            .collect();
        for (_, head) in &streams {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        let (_, extra) = open_with(address, request);
        (streams, extra)
    })
    .await
    .unwrap();
    assert!(extra.starts_with("HTTP/1.1 503"), "{extra}");
    assert_eq!(call(address, "GET", "/health", "", "").await.0, 200);
    drop(streams);
}

#[tokio::test]
async fn a_full_server_answers_503_at_once() {
    let (address, _state, _dir) = serve_api(None).await;
    // Idle connections take every slot (each sends nothing, so it holds its slot until the
    // header timeout).
    let idle: Vec<_> = (0..CONNECTIONS_MAX)
        .map(|_| std::net::TcpStream::connect(address).unwrap())
        .collect();
    // The accept loop hands out the slots as it gets to the connections.
    let (mut code, mut body) = (0, String::new());
    for _ in 0..250 {
        (code, body) = call(address, "GET", "/health", "", "").await;
        if code == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too many connections"), "{body}");
    drop(idle);
    // Slots come back as the idle connections close.
    let mut code = 0;
    for _ in 0..100 {
        code = call(address, "GET", "/health", "", "").await.0;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_body_that_never_comes_times_out_and_a_huge_one_is_refused_at_once() {
    let (address, _state, _dir) = serve_api(Some(TOKEN)).await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (huge, stalled) = tokio::task::spawn_blocking(move || {
        // Declared far over the limit: 413 before any body byte is read.
        let huge = format!(
            "POST /v1/webhook HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 99999999999\r\n\r\n{{}}"
        );
        let (_stream, huge) = open_with(address, huge.as_bytes());
        // Declared 10 bytes, none sent: answered at the body timeout, the slot freed.
        let stalled =
            format!("POST /v1/webhook HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 10\r\n\r\n");
        let started = std::time::Instant::now();
        let (_stream, stalled) = open_with(address, stalled.as_bytes());
        (huge, (stalled, started.elapsed()))
    })
    .await
    .unwrap();
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
    let (stalled, waited) = stalled;
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(waited >= http::BODY_TIMEOUT, "answered after {waited:?}");
}
