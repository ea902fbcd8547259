//! The CLI's client of the agent's IPC socket: status, rotate, check and the event stream.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::{CheckRequest, ResolveRequest, ResolveResponse, RotateRequest};

/// How long a request may take until its whole answer is in (status, check, resolve).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long `rotate` may take: with `wait`, the agent answers when the rotations ended.
const ROTATE_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3700);
/// Largest answer accepted: values of `resolve` (hex) included.
const ANSWER_MAX: usize = 64 * 1024 * 1024;

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcClientError {
    /// Nothing answers on the socket (or it may not be opened).
    #[error("cannot connect to the agent at {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("{method} {uri} to the agent failed")]
    Http {
        /// Method.
        method: Method,
        /// Path.
        uri: String,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The agent answered with an error.
    #[error("the agent answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The agent's `error` text.
        message: String,
    },
    /// The agent closed the connection without answering (e.g. refused by the peer check).
    #[error("the agent at {} closed the connection without answering", path.display())]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// The agent did not answer in time.
    #[error("the agent did not answer {uri} within {} s", waited.as_secs())]
    Timeout {
        /// Path.
        uri: String,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// The answer was larger than a client accepts.
    #[error("the agent's answer to {uri} is larger than {limit} bytes")]
    TooLarge {
        /// Path.
        uri: String,
        /// The limit.
        limit: usize,
    },
    /// The answer was not JSON.
    #[error("the agent's answer to {uri} is not JSON")]
    Decode {
        /// Path.
        uri: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl IpcClientError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some("the socket is for root and group dso; ask to be added to group dso".into())
            }
            Self::Connect { .. } => Some("start it with `docker dso agent start`".into()),
            Self::Timeout { .. } => Some(
                "the agent is busy or stuck; `docker dso agent status`, or restart it with \
                 `docker dso agent stop` and `start`"
                    .into(),
            ),
            Self::Closed { .. } => Some(
                "the agent refuses users that are not root, its own user or in group dso".into(),
            ),
            _ => None,
        }
    }
}

/// Client of one agent's IPC socket.
#[derive(Clone, Debug)]
pub struct IpcClient {
    path: PathBuf,
}

impl IpcClient {
    /// A client of the socket at `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<serde_json::Value, IpcClientError> {
        self.call(Method::GET, "/v1/status", Bytes::new()).await
    }

    /// `POST /v1/rotate`.
    pub async fn rotate(
        &self,
        request: &RotateRequest,
    ) -> Result<serde_json::Value, IpcClientError> {
        let body = serde_json::to_vec(request).unwrap_or_default();
        self.call(Method::POST, "/v1/rotate", Bytes::from(body))
            .await
    }

    /// `POST /v1/check`.
    pub async fn check(&self, secret: &str) -> Result<serde_json::Value, IpcClientError> {
        let body = serde_json::to_vec(&CheckRequest {
            secret: secret.to_owned(),
        })
        .unwrap_or_default();
        self.call(Method::POST, "/v1/check", Bytes::from(body))
            .await
    }

    /// `POST /v1/resolve`: the values of `references` through the agent's providers.
    // LIMITATION: the response passes through hyper's and serde's buffers, which are not
    // wiped; the values are wiped once they are `SecretValue`s — a zeroizing body collector
    // would lift it.
    pub async fn resolve(&self, references: &[String]) -> Result<ResolveResponse, IpcClientError> {
        let uri = "/v1/resolve";
        let body = serde_json::to_vec(&ResolveRequest {
            references: references.to_vec(),
        })
        .unwrap_or_default();
        let value = self.call(Method::POST, uri, Bytes::from(body)).await?;
        serde_json::from_value(value).map_err(|source| IpcClientError::Decode {
            uri: uri.into(),
            source,
        })
    }

    /// `GET /v1/events`: calls `on_open` once the agent has subscribed this client (no event
    /// after that moment is missed), then `on_event` with each event's JSON until it returns
    /// false or the agent goes away.
    pub async fn follow_events(
        &self,
        on_open: impl FnOnce(),
        mut on_event: impl FnMut(serde_json::Value) -> bool,
    ) -> Result<(), IpcClientError> {
        let uri = "/v1/events";
        let (status, mut body) = self.open(Method::GET, uri, Bytes::new()).await?;
        if !status.is_success() {
            return Err(IpcClientError::Status {
                status,
                message: "the event stream was refused".into(),
            });
        }
        on_open();
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| IpcClientError::Http {
                method: Method::GET,
                uri: uri.into(),
                source,
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                for line in block.lines() {
                    if let Some(json) = line.strip_prefix("data: ")
                        && let Ok(value) = serde_json::from_str(json)
                        && !on_event(value)
                    {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// One request with a bounded wait and a bounded answer. `rotate` answers 500 with the
    /// per-service results, so only there a 500 is an answer rather than an error.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<serde_json::Value, IpcClientError> {
        let wait = if uri == "/v1/rotate" {
            ROTATE_ANSWER_TIMEOUT
        } else {
            ANSWER_TIMEOUT
        };
        let exchange = async {
            let (status, response) = self.open(method.clone(), uri, body).await?;
            let bytes = Limited::new(response, ANSWER_MAX)
                .collect()
                .await
                .map_err(|_| IpcClientError::TooLarge {
                    uri: uri.into(),
                    limit: ANSWER_MAX,
                })?
                .to_bytes();
            Ok::<_, IpcClientError>((status, bytes))
        };
        let (status, bytes) =
            tokio::time::timeout(wait, exchange)
                .await
                .map_err(|_| IpcClientError::Timeout {
                    uri: uri.into(),
                    waited: wait,
                })??;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| IpcClientError::Decode {
                uri: uri.into(),
                source,
            })?;
        let answered_500 = uri == "/v1/rotate" && status == StatusCode::INTERNAL_SERVER_ERROR;
        if !status.is_success() && !answered_500 {
            let message = value
                .get("error")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("no message")
                .to_owned();
            return Err(IpcClientError::Status { status, message });
        }
        Ok(value)
    }

    async fn open(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<(StatusCode, hyper::body::Incoming), IpcClientError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| IpcClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let wire = |source: hyper::Error| {
            if source.is_incomplete_message() || source.is_canceled() || source.is_closed() {
                IpcClientError::Closed {
                    path: self.path.clone(),
                }
            } else {
                IpcClientError::Http {
                    method: method.clone(),
                    uri: uri.to_owned(),
                    source,
                }
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(wire)?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(HOST, "dso-agent")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|_| IpcClientError::Closed {
                path: self.path.clone(),
            })?;
        let response = sender.send_request(request).await.map_err(wire)?;
        let status = response.status();
        Ok((status, response.into_body()))
    }
}
