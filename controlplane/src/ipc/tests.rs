//! The IPC socket end to end inside one process: a real unix socket bound by [`bind`] (mode
//! 0660), served by [`serve`] with the peer check (this process's own uid is allowed), and the
//! CLI's [`client::IpcClient`]. No Docker: the rotator records its calls.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::client::{IpcClient, IpcClientError};
use super::*;
use crate::agent::state::{AgentInfo, AgentState, ProxyState};
use crate::detect::{Detector, RotationFuture, Rotator, seen::Seen};
use crate::events;
use crate::reference::Reference;
use crate::resolve::{ResolveError, ValueSource};
use crate::secret::SecretValue;

struct Fixed;

impl ValueSource for Fixed {
    fn resolve(&self, _: &Reference) -> Result<SecretValue, ResolveError> {
        Ok(SecretValue::from_slice(b"v"))
    }
}

/// Byte-exact values for `POST /v1/resolve`: one secret, everything else missing.
struct Table;

/// Binary bytes, `$` and a quote: must arrive exactly.
const TABLE_VALUE: &[u8] = b"p$w\"\x00\xffend";

impl ValueSource for Table {
    fn resolve(&self, reference: &Reference) -> Result<SecretValue, ResolveError> {
        if reference.path.to_string() == "app/pw" {
            Ok(SecretValue::from_slice(TABLE_VALUE))
        } else {
            Err(ResolveError::Missing {
                reference: reference.to_string(),
            })
        }
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String)>>);

impl Rotator for Arc<Recorder> {
    fn rotate(&self, service: String, reason: String) -> RotationFuture {
        self.0.lock().unwrap().push((service.clone(), reason));
        Box::pin(async move {
            if service == "p/broken" {
                Err("health check failed".to_owned())
            } else {
                Ok(())
            }
        })
    }
}

async fn serve_ipc() -> (IpcClient, Arc<Recorder>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::default());
    let seen = Seen::open(dir.path()).unwrap();
    let (detector, task) = Detector::new(
        seen,
        Duration::from_secs(60),
        Duration::from_millis(100),
        Arc::new(Fixed),
        Arc::new(recorder.clone()),
    );
    tokio::spawn(task.run());
    detector.set_services(
        [
            (
                "p/app".to_owned(),
                vec![Reference::parse("dso://app/pw").unwrap()],
            ),
            (
                "p/broken".to_owned(),
                vec![Reference::parse("dso://app/other").unwrap()],
            ),
        ]
        .into(),
    );
    let path = dir.path().join("run").join("dso.sock");
    let listener = bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, SOCKET_MODE);
    let state: Shared = Arc::new(AgentState {
        info: AgentInfo {
            version: "test".into(),
            pid: 1,
            config: "dso.yaml".into(),
            socket: path.clone(),
            api_address: "127.0.0.1:1".parse().unwrap(),
            runtime_dir: dir.path().into(),
            state_dir: dir.path().into(),
            started: "now".into(),
            watch_interval_s: 60.0,
            providers: vec![],
            vault: None,
        },
        events: events::channel(),
        detector,
        proxy_client: dataplane::client::ProxyClient::new(dir.path().join("no-proxy.sock")),
        proxy: Mutex::new(ProxyState::default()),
        services: Mutex::new(Vec::new()),
        recovered: AtomicBool::new(true),
        values: Arc::new(Table),
        webhook_token: None,
        metrics: None,
    });
    tokio::spawn(serve(listener, path.clone(), state));
    (IpcClient::new(&path), recorder, dir)
}

#[tokio::test]
async fn status_check_and_rotate_over_the_socket() {
    let (client, recorder, _dir) = serve_ipc().await;
    let status = client.status().await.unwrap();
    assert_eq!(status["agent"]["version"], "test");

    let checked = client.check("app/pw").await.unwrap();
    assert_eq!(checked["checking"], 1);

    let answer = client
        .rotate(&RotateRequest {
            service: Some("app".into()),
            secret: None,
            wait: true,
        })
        .await
        .unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["results"]["p/app"]["ok"], true);

    let failed = client
        .rotate(&RotateRequest {
            service: None,
            secret: Some("dso://app/other".into()),
            wait: true,
        })
        .await
        .unwrap();
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(
        failed["results"]["p/broken"]["error"],
        "health check failed"
    );
    assert_eq!(
        *recorder.0.lock().unwrap(),
        vec![
            ("p/app".to_owned(), "manual".to_owned()),
            (
                "p/broken".to_owned(),
                "manual: secret dso://app/other".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason() {
    let (client, recorder, _dir) = serve_ipc().await;
    let both = RotateRequest {
        service: Some("p/app".into()),
        secret: Some("app/pw".into()),
        wait: false,
    };
    match client.rotate(&both).await {
        Err(IpcClientError::Status { status, message }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(message.contains("exactly one"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let unknown = RotateRequest {
        service: Some("q/none".into()),
        ..RotateRequest::default()
    };
    assert!(matches!(
        client.rotate(&unknown).await,
        Err(IpcClientError::Status {
            status: StatusCode::NOT_FOUND,
            ..
        })
    ));
    assert!(matches!(
        client.check("nothing/here").await,
        Err(IpcClientError::Status {
            status: StatusCode::NOT_FOUND,
            ..
        })
    ));
    assert!(recorder.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_second_agent_cannot_take_a_live_socket() {
    let (client, _recorder, _dir) = serve_ipc().await;
    match bind(client.path()) {
        Err(IpcError::InUse { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn resolve_returns_exact_values_and_named_problems() {
    let (client, _recorder, _dir) = serve_ipc().await;
    let references = vec![
        "dso://app/pw".to_owned(),
        "dsofile://app/pw".to_owned(),
        "dso://app/missing".to_owned(),
        "dso://bad path".to_owned(),
    ];
    let answer = client.resolve(&references).await.unwrap();
    assert_eq!(answer.values.len(), 2);
    for text in &references[..2] {
        assert_eq!(hex::decode(&answer.values[text]).unwrap(), TABLE_VALUE);
    }
    let missing = &answer.errors["dso://app/missing"];
    assert!(missing.reason.contains("no secret"), "{missing:?}");
    assert!(missing.hint.is_some());
    assert!(answer.errors.contains_key("dso://bad path"));

    // Bounded and strict: too many references, or an unknown field, is a 400.
    let many = vec!["dso://app/pw".to_owned(); RESOLVE_MAX + 1];
    let err = client.resolve(&many).await.err().expect("refused");
    assert!(err.to_string().contains("400"), "{err}");
}
