//! The IPC socket for the CLI: HTTP/1.1 + JSON on a unix socket (mode 0660), every peer checked
//! with SO_PEERCRED before its request is read ([`peer`]).
//!
//! Requests (all documented in `docs/api.md`): `GET /v1/status`, `GET /v1/events`,
//! `POST /v1/rotate` (a service or a secret), `POST /v1/check` (a secret), `POST /v1/resolve`
//! (references → values, for `docker dso up`). None of them names a file, a provider
//! configuration or a setting: the agent reads only its own `dso.yaml`, its own providers and
//! the containers' labels. The original dso let callers hand the agent a provider config to
//! act on; that class of request does not exist here. `resolve` is the one answer that
//! carries values: only peers that passed the check get it, and it is never logged.

pub mod client;
pub mod peer;

use std::convert::Infallible;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::agent::state::Shared;
use crate::api::http::{Body, error, event_stream, json, read_json};
use crate::detect::Target;

/// Mode of the IPC socket: owner and group.
pub const SOCKET_MODE: u32 = 0o660;
/// Metric: IPC connections refused by the peer check.
pub const REFUSED: &str = "dso_agent_ipc_refused_total";

const CONNECTIONS_MAX: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait of `POST /v1/rotate` with `wait`.
const ROTATE_WAIT: Duration = Duration::from_secs(3600);

/// Body of `POST /v1/rotate`: exactly one of `service` or `secret`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// `project/service`, or `service` when one project has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A reference or secret path: every service using it rotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Answer only when the rotations ended (with their results).
    #[serde(default)]
    pub wait: bool,
}

/// Most references one `POST /v1/resolve` may name.
pub const RESOLVE_MAX: usize = 1024;

/// Body of `POST /v1/resolve`: references as written in a compose file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `dso://…` or `dsofile://…` texts.
    pub references: Vec<String>,
}

/// Answer of `POST /v1/resolve`: per reference text, the value (hex of its exact bytes) or
/// why it could not be resolved. Deliberately no `Debug`: it holds values.
#[derive(Default, Deserialize, Serialize)]
pub struct ResolveResponse {
    /// Reference text → value bytes as lower-case hex.
    pub values: std::collections::BTreeMap<String, String>,
    /// Reference text → the problem (never a value).
    pub errors: std::collections::BTreeMap<String, ResolveProblem>,
}

/// Why the agent could not resolve one reference.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ResolveProblem {
    /// What failed.
    pub reason: String,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Body of `POST /v1/check`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// A reference or secret path.
    pub secret: String,
}

/// Why the IPC socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// Another agent answers on the socket.
    #[error("IPC socket {} is in use by a running agent", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// A file step failed.
    #[error("IPC socket {}: {step} failed", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was done.
        step: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket at `path`: inside a private 0700 directory first, mode set, then renamed
/// into place, so it is never reachable with a wider mode. As root, the group becomes `dso`
/// when that group exists. A stale socket is replaced; a live one refused.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, IpcError> {
    let io = |step: &'static str| {
        let path = path.to_owned();
        move |source| IpcError::Io { path, step, source }
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(io("create directory"))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(IpcError::InUse {
                    path: path.to_owned(),
                });
            }
            info!(path = %path.display(), "replacing stale IPC socket");
        }
        Ok(_) => {
            return Err(IpcError::Io {
                path: path.to_owned(),
                step: "check (not a socket)",
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        Err(_) => {}
    }
    let private = parent.join(format!(".dso-ipc.{}.tmp", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io("create private directory"))?;
    let staged = private.join("sock");
    let result = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged).map_err(io("bind"))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io("set mode 0660"))?;
        if peer::own_uid() == 0
            && let Some(gid) = peer::group_id(peer::GROUP)
        {
            std::os::unix::fs::chown(&staged, Some(0), Some(gid)).map_err(io("chown root:dso"))?;
        }
        listener
            .set_nonblocking(true)
            .map_err(io("set non-blocking"))?;
        std::fs::rename(&staged, path).map_err(io("rename into place"))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Serves the IPC socket until the task is dropped.
pub async fn serve(listener: std::os::unix::net::UnixListener, path: PathBuf, state: Shared) {
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            warn!(path = %path.display(), error = %err, "IPC socket lost");
            return;
        }
    };
    info!(path = %path.display(), "IPC socket listening");
    let own = peer::own_uid();
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let streams = Arc::new(Semaphore::new(crate::api::http::STREAMS_MAX));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                debug!(error = %err, "IPC accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };

        // The peer check comes before anything is read from the connection.
        let cred = match peer::peer_cred(&stream) {
            Ok(cred) => cred,
            Err(err) => {
                warn!(error = %err, "IPC peer credentials unavailable; connection refused");
                continue;
            }
        };
        let Some(why) = peer::allowed(cred, own) else {
            metrics::counter!(REFUSED).increment(1);
            warn!(
                peer.uid = cred.uid,
                peer.gid = cred.gid,
                peer.pid = cred.pid,
                "IPC connection refused: not root, not the agent's user, not in group dso"
            );
            drop(stream);
            continue;
        };
        debug!(peer.uid = cred.uid, allowed = ?why, "IPC connection");
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(peer.uid = cred.uid, "IPC busy: every connection slot taken");
            tokio::spawn(crate::api::http::refuse_busy(stream));
            continue;
        };
        let state = state.clone();
        let streams = streams.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let state = state.clone();
                let streams = streams.clone();
                async move {
                    let response = dispatch(&state, &streams, cred.uid, request).await;
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(err) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %err, "IPC connection failed");
            }
        });
    }
}

async fn dispatch(
    state: &Shared,
    streams: &Arc<Semaphore>,
    uid: u32,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    debug!(http.method = %method, http.path = %path, peer.uid = uid, "IPC request");
    match (method, path.as_str()) {
        (Method::GET, "/v1/status") => json(StatusCode::OK, &state.status()),
        (Method::GET, "/v1/events") => event_stream(&state.events, streams),
        (Method::POST, "/v1/rotate") => rotate(state, uid, request).await,
        (Method::POST, "/v1/check") => {
            let body: CheckRequest = match read_json(request).await {
                Ok(body) => body,
                Err(response) => return *response,
            };
            let matched = state.detector.check_now(&body.secret).await;
            if matched == 0 {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no managed service uses secret {}", body.secret),
                );
            }
            info!(secret.ref = %body.secret, peer.uid = uid, "check requested over IPC");
            json(
                StatusCode::ACCEPTED,
                &serde_json::json!({"secret": body.secret, "checking": matched}),
            )
        }
        (Method::POST, "/v1/resolve") => resolve(state, uid, request).await,
        (_, "/v1/status" | "/v1/events" | "/v1/rotate" | "/v1/check" | "/v1/resolve") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this path",
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no such request {path}")),
    }
}

/// `POST /v1/resolve`: the current value of each reference, through the agent's own value
/// source (the providers of its `dso.yaml`).
async fn resolve(state: &Shared, uid: u32, request: Request<Incoming>) -> Response<Body> {
    let body: ResolveRequest = match read_json(request).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    if body.references.len() > RESOLVE_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("at most {RESOLVE_MAX} references per request"),
        );
    }
    let count = body.references.len();
    let source = state.values.clone();

    // Vault reads block; the value lives in this task until it is hex-encoded.
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = ResolveResponse::default();
        let problem = |reason: String, hint: Option<String>| ResolveProblem { reason, hint };

        // 1. Parse every text; a malformed one is answered at once.
        let mut parsed = Vec::new();
        for text in body.references {
            match crate::reference::Reference::parse(&text) {
                Ok(reference) => parsed.push((text, reference)),
                Err(err) => {
                    let hint = Some("see docs/references.md".to_owned());
                    answer.errors.insert(text, problem(err.to_string(), hint));
                }
            }
        }

        // 2. One read of the store for all of them.
        let references: Vec<_> = parsed.iter().map(|(_, r)| r.clone()).collect();
        let values = source.resolve_many(&references);
        for ((text, _), value) in parsed.into_iter().zip(values) {
            match value {
                Ok(value) => {
                    answer.values.insert(text, hex::encode(value.expose()));
                }
                Err(err) => {
                    let reason = crate::error_chain(&err);
                    answer.errors.insert(text, problem(reason, err.hint()));
                }
            }
        }
        answer
    })
    .await;
    let Ok(answer) = answer else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the resolve task failed");
    };
    info!(
        peer.uid = uid,
        references = count,
        resolved = answer.values.len(),
        "references resolved over IPC"
    );
    let value = serde_json::to_value(&answer).unwrap_or_default();
    json(StatusCode::OK, &value)
}

async fn rotate(state: &Shared, uid: u32, request: Request<Incoming>) -> Response<Body> {
    let body: RotateRequest = match read_json(request).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let target = match (body.service, body.secret) {
        (Some(service), None) => Target::Service(service),
        (None, Some(secret)) => Target::Secret(secret),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "name exactly one of `service` or `secret`",
            );
        }
    };
    // LIMITATION: with `wait`, the first rotation of the service that ends after this request
    // is reported; when one was already running that is the running one, not the queued one
    // — a request id carried through the work queue would lift it.
    let mut finished = state.detector.subscribe_finished();
    let services = state.detector.rotate(target.clone()).await;
    if services.is_empty() {
        let what = match &target {
            Target::Service(s) => format!("no managed service {s} (or the name is ambiguous)"),
            Target::Secret(s) => format!("no managed service uses secret {s}"),
        };
        return error(StatusCode::NOT_FOUND, &what);
    }
    info!(peer.uid = uid, services = ?services, "rotation requested over IPC");
    if !body.wait {
        return json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"services": services}),
        );
    }

    // Wait for each service's rotation to end, collecting the results.
    let mut results = serde_json::Map::new();
    let deadline = tokio::time::Instant::now() + ROTATE_WAIT;
    while results.len() < services.len() {
        let next = tokio::time::timeout_at(deadline, finished.recv()).await;
        match next {
            Ok(Ok(done)) if services.contains(&done.service) => {
                results.insert(
                    done.service,
                    match done.error {
                        None => serde_json::json!({"ok": true}),
                        Some(error) => serde_json::json!({"ok": false, "error": error}),
                    },
                );
            }
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let ok = results.len() == services.len()
        && results
            .values()
            .all(|r| r.get("ok") == Some(&serde_json::Value::Bool(true)));
    json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        },
        &serde_json::json!({"services": services, "results": results, "ok": ok}),
    )
}

#[cfg(test)]
mod tests;
