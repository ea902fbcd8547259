//! The control API: HTTP/1.1 + JSON served with hyper on a unix socket (`docs/proxy-api.md`).
//!
//! Why a unix socket: access is decided by file permissions (mode 0660, so root and the
//! socket's group), with no port to firewall. The socket is bound inside a private 0700
//! directory, given its mode, then renamed into place, so it is never reachable with a wider
//! mode. A stale socket file (no process answers) is replaced; a live one is refused.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tracing::{debug, error, info};

use crate::api::ErrorBody;
use crate::proxy::{Proxy, RouteError};
use crate::telemetry;

/// Mode of the control socket: owner and group may connect.
const SOCKET_MODE: u32 = 0o660;
/// Largest request body accepted.
const BODY_MAX: usize = 64 * 1024;
/// Control connections served at once; further clients wait in the socket backlog. Bounds
/// the descriptors and tasks a client that opens connections and never sends can take.
// LIMITATION: a local client allowed on the socket that floods it with silent connections
// delays other control clients by up to (its connections / 64) × the control timeout — the
// socket's 0660 mode is the defence [per-peer (SO_PEERCRED) quotas would lift it].
const CONNECTIONS_MAX: usize = 64;

/// Why the control socket could not be set up.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control socket directory {} does not exist", path.display())]
    NoDirectory { path: PathBuf },
    #[error("control socket {} is in use by a running process", path.display())]
    InUse { path: PathBuf },
    #[error(
        "control socket path {} exists and is not a socket; refusing to replace it",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("checking existing control socket {} failed", path.display())]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating control socket {} failed at step: {step}", path.display())]
    Create {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

impl ControlError {
    /// What to do about it, when we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            ControlError::InUse { path } => Some(format!(
                "another dso-proxy serves {}; stop it or pass a different --control path",
                path.display()
            )),
            ControlError::NotASocket { path } => Some(format!(
                "remove {} or pass a different --control path",
                path.display()
            )),
            ControlError::NoDirectory { path } => {
                Some(format!("create it first: mkdir -p {}", path.display()))
            }
            _ => None,
        }
    }
}

/// A bound control socket. Dropping it removes the socket file if it is still ours.
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
    /// (device, inode) of our socket file, so we never remove a successor's.
    identity: (u64, u64),
}

impl ControlSocket {
    /// Binds the control socket at `path` with mode 0660 (see the module docs for how).
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        let path = path.to_path_buf();
        let parent = match path.parent() {
            Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
            Some(parent) => parent,
            None => Path::new("/"),
        };
        if !parent.is_dir() {
            return Err(ControlError::NoDirectory {
                path: parent.to_path_buf(),
            });
        }

        // Step 1: an existing file must be a dead socket, or we refuse.
        // LIMITATION: two proxies started at the same moment on the same path can both see
        // no live socket; the later rename wins — a lock file would close the window.
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ControlError::NotASocket { path });
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(&path) {
                Ok(_) => return Err(ControlError::InUse { path }),
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "replacing stale control socket");
                }
                Err(source) => return Err(ControlError::Probe { path, source }),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ControlError::Probe { path, source }),
        }

        // Step 2: bind in a private directory, set the mode, rename into place.
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let private = parent.join(format!(
            ".{}.{}.tmp",
            file_name.as_deref().unwrap_or("control"),
            std::process::id()
        ));
        let create = |step: &'static str| {
            let path = path.clone();
            move |source| ControlError::Create { path, step, source }
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(create("create private directory"))?;
        let staged = private.join("sock");
        let result = (|| {
            let listener =
                std::os::unix::net::UnixListener::bind(&staged).map_err(create("bind"))?;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))
                .map_err(create("set mode 0660"))?;
            listener
                .set_nonblocking(true)
                .map_err(create("set non-blocking"))?;
            std::fs::rename(&staged, &path).map_err(create("rename into place"))?;
            Ok(listener)
        })();
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_dir(&private);
        let listener = result?;

        let meta = std::fs::metadata(&path).map_err(create("read back"))?;
        Ok(ControlSocket {
            path,
            listener: Some(listener),
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves the control API until the task is dropped (which removes the socket file).
pub async fn serve(mut socket: ControlSocket, proxy: Arc<Proxy>) {
    let Some(std_listener) = socket.listener.take() else {
        return;
    };
    let listener = match UnixListener::from_std(std_listener) {
        Ok(listener) => listener,
        Err(err) => {
            error!(path = %socket.path.display(), error = %err, "control socket lost");
            return;
        }
    };
    info!(path = %socket.path.display(), "control API listening");
    let timeout = proxy.settings().control_timeout;
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        // Why a permit before accept: over the cap, clients wait in the backlog instead of
        // each taking a descriptor from the data path.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                debug!(error = %err, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(handle(&proxy, request).await) }
            });

            // The header timeout also runs while a kept-alive connection waits for its next
            // request, so an idle or slowloris client is disconnected and frees its slot.
            if let Err(err) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %err, "control connection failed");
            }
        });
    }
}

/// Routes one request to its handler and logs the outcome.
async fn handle(proxy: &Proxy, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = dispatch(proxy, &method, &path, request).await;
    debug!(http.method = %method, http.path = %path, http.status = response.status().as_u16(),
        "control request");
    response
}

async fn dispatch(
    proxy: &Proxy,
    method: &Method,
    path: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["v1", "health"]) => json(StatusCode::OK, &proxy.health()),
        (&Method::GET, ["metrics"]) => {
            let mut text = telemetry::recorder()
                .map(|handle| handle.render())
                .unwrap_or_default();
            text.push_str(&proxy.active_metrics());
            Response::builder()
                .header(CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_default()
        }
        (&Method::GET, ["v1", "routes"]) => json(
            StatusCode::OK,
            &crate::api::RouteList {
                routes: proxy.routes(),
            },
        ),
        (&Method::GET, ["v1", "routes", name]) => outcome(proxy.route(name), StatusCode::OK),
        (&Method::PUT, ["v1", "routes", name]) => {
            match read_json::<crate::api::RouteRequest>(
                request,
                false,
                proxy.settings().control_timeout,
            )
            .await
            {
                Ok(body) => match proxy.put_route(name, &body).await {
                    Ok(change) => {
                        let status = if change.created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        json(status, &change)
                    }
                    Err(err) => route_error(&err),
                },
                Err(response) => response,
            }
        }
        (&Method::DELETE, ["v1", "routes", name]) => {
            outcome(proxy.delete_route(name).await, StatusCode::OK)
        }
        (&Method::POST, ["v1", "routes", name, "hold"]) => {
            match read_json::<crate::api::HoldRequest>(
                request,
                true,
                proxy.settings().control_timeout,
            )
            .await
            {
                Ok(body) => outcome(proxy.hold_route(name, &body).await, StatusCode::OK),
                Err(response) => response,
            }
        }
        (&Method::POST, ["v1", "routes", name, "drain"]) => {
            match read_json::<crate::api::DrainRequest>(
                request,
                true,
                proxy.settings().control_timeout,
            )
            .await
            {
                Ok(body) => outcome(proxy.drain_route(name, &body).await, StatusCode::OK),
                Err(response) => response,
            }
        }
        (_, ["v1", "health"]) | (_, ["metrics"]) | (_, ["v1", "routes"]) => {
            not_allowed(method, path, "GET")
        }
        (_, ["v1", "routes", _]) => not_allowed(method, path, "GET, PUT, DELETE"),
        (_, ["v1", "routes", _, "hold" | "drain"]) => not_allowed(method, path, "POST"),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no endpoint {path}"),
            Some("see docs/proxy-api.md for the endpoints".into()),
        ),
    }
}

/// Reads and parses a JSON body within `timeout`; `empty_ok` lets an empty body stand for
/// `{}`.
async fn read_json<T: DeserializeOwned + Default>(
    request: Request<Incoming>,
    empty_ok: bool,
    timeout: std::time::Duration,
) -> Result<T, Response<Full<Bytes>>> {
    let what = format!("{} {}", request.method(), request.uri().path());
    let collect = Limited::new(request.into_body(), BODY_MAX).collect();
    let Ok(collected) = tokio::time::timeout(timeout, collect).await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body of {what} did not arrive within {} ms",
                timeout.as_millis()
            ),
            Some("send the whole body at once".into()),
        ));
    };
    let body = match collected {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body of {what} is larger than {BODY_MAX} bytes"),
                None,
            ));
        }
        Err(err) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("reading the body of {what} failed: {err}"),
                None,
            ));
        }
    };
    if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // LIMITATION: a mistyped value is reported by line and column, not by field name —
    // serde_json does not track the path [serde_path_to_error would add it].
    serde_json::from_slice(&body).map_err(|err| {
        error(
            StatusCode::BAD_REQUEST,
            format!("body of {what} is not valid: {err}"),
            Some("see docs/proxy-api.md for the fields".into()),
        )
    })
}

fn outcome<T: Serialize>(result: Result<T, RouteError>, ok: StatusCode) -> Response<Full<Bytes>> {
    match result {
        Ok(value) => json(ok, &value),
        Err(err) => route_error(&err),
    }
}

fn route_error(err: &RouteError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, error_chain(err), err.hint())
}

/// The error and its causes on one line, `: `-separated.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn not_allowed(method: &Method, path: &str, allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}; allowed: {allow}"),
        None,
    );
    response
        .headers_mut()
        .insert(ALLOW, hyper::header::HeaderValue::from_static(allow));
    response
}

fn error(status: StatusCode, message: String, hint: Option<String>) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorBody {
            error: message,
            hint,
        },
    )
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
