//! A small async client of the control API, for the agent, the CLI and the tests. One
//! HTTP/1.1 connection per call over the unix socket: calls are rare, and a fresh connection
//! cannot be left in a broken state by an earlier call.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::net::UnixStream;

use crate::api::{
    DrainReport, DrainRequest, ErrorBody, Health, HoldRequest, RouteChange, RouteList,
    RouteRequest, RouteView,
};

/// Why a control call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connecting to the proxy control socket {} failed", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {uri} failed on the wire")]
    Http {
        method: Method,
        uri: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {uri} answered {status}: {}", body.error)]
    Status {
        method: Method,
        uri: String,
        status: StatusCode,
        body: ErrorBody,
    },
    #[error("{method} {uri} answered a body that does not parse")]
    Decode {
        method: Method,
        uri: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status, for errors the proxy answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Client of one proxy's control socket.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    path: PathBuf,
}

impl ProxyClient {
    pub fn new(path: impl AsRef<Path>) -> ProxyClient {
        ProxyClient {
            path: path.as_ref().to_path_buf(),
        }
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/v1/health", None::<&()>).await
    }

    pub async fn routes(&self) -> Result<Vec<RouteView>, ClientError> {
        let list: RouteList = self.call(Method::GET, "/v1/routes", None::<&()>).await?;
        Ok(list.routes)
    }

    pub async fn route(&self, name: &str) -> Result<RouteView, ClientError> {
        self.call(Method::GET, &format!("/v1/routes/{name}"), None::<&()>)
            .await
    }

    pub async fn put_route(
        &self,
        name: &str,
        request: &RouteRequest,
    ) -> Result<RouteChange, ClientError> {
        self.call(Method::PUT, &format!("/v1/routes/{name}"), Some(request))
            .await
    }

    pub async fn hold(&self, name: &str, request: &HoldRequest) -> Result<RouteView, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/routes/{name}/hold"),
            Some(request),
        )
        .await
    }

    pub async fn drain(
        &self,
        name: &str,
        request: &DrainRequest,
    ) -> Result<DrainReport, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/routes/{name}/drain"),
            Some(request),
        )
        .await
    }

    pub async fn delete_route(&self, name: &str) -> Result<DrainReport, ClientError> {
        self.call(Method::DELETE, &format!("/v1/routes/{name}"), None::<&()>)
            .await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (_, body) = self.send(Method::GET, "/metrics", Bytes::new()).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends a raw request and returns status and body, without interpreting either (tests
    /// use it for malformed input).
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let wire = |source| ClientError::Http {
            method: method.clone(),
            uri: uri.to_owned(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(wire)?;
        let driver = tokio::spawn(connection);

        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(HOST, "dso-proxy")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let Ok(request) = request else {
            // Only an invalid URI gets here; report it as a 400 would be.
            return Err(ClientError::Status {
                method,
                uri: uri.to_owned(),
                status: StatusCode::BAD_REQUEST,
                body: ErrorBody {
                    error: format!("invalid request URI {uri:?}"),
                    hint: None,
                },
            });
        };
        let response = sender.send_request(request).await.map_err(wire)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(wire)?
            .to_bytes();
        drop(sender);
        let _ = driver.await;
        Ok((status, body))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let decode = |source| ClientError::Decode {
            method: method.clone(),
            uri: uri.to_owned(),
            source,
        };
        let payload = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).map_err(decode)?),
            None => Bytes::new(),
        };
        let (status, bytes) = self.send(method.clone(), uri, payload).await?;
        if !status.is_success() {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: String::from_utf8_lossy(&bytes).into_owned(),
                hint: None,
            });
            return Err(ClientError::Status {
                method,
                uri: uri.to_owned(),
                status,
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(decode)
    }
}
