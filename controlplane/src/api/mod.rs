//! The REST API on `agent.api_address` (default `127.0.0.1:8471`), documented in
//! `docs/api.md`: health, readiness, Prometheus metrics (the agent's and the proxy's), the
//! status document, the event stream, and the webhook that asks for an immediate check.
//!
//! Read-only except the webhook, which needs the bearer token from `dso.yaml` (compared in
//! constant time) and can only name a secret to check: never a file, a URL or a setting.

pub mod http;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use self::http::{Body, constant_time_eq, error, event_stream, json, read_json, text};
use crate::agent::state::Shared;

/// Metric: webhook calls by result (`accepted`, `unauthorized`, `unknown`, `disabled`).
pub const WEBHOOKS: &str = "dso_agent_webhooks_total";

/// Connections served at once.
const CONNECTIONS_MAX: usize = 128;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy may take to render its metrics.
const PROXY_METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// Body of `POST /v1/webhook`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// The secret to check: a reference (`dso://app/db_password`) or a secret path.
    pub secret: String,
}

/// Serves the REST API on `listener` until the task is dropped.
// LIMITATION: status, events and metrics need no token; anyone who can reach `api_address`
// reads them (names and hash prefixes only) — it is loopback by default; a read token would
// lift it.
pub async fn serve(listener: TcpListener, state: Shared) {
    if let Ok(address) = listener.local_addr() {
        info!(listen.addr = %address, "REST API listening");
    }
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let streams = Arc::new(Semaphore::new(http::STREAMS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                debug!(error = %err, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(client.addr = %peer, "API busy: every connection slot taken");
            tokio::spawn(http::refuse_busy(stream));
            continue;
        };
        let state = state.clone();
        let streams = streams.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let state = state.clone();
                let streams = streams.clone();
                async move { Ok::<_, Infallible>(handle(&state, &streams, request).await) }
            });
            if let Err(err) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(client.addr = %peer, error = %err, "API connection failed");
            }
        });
    }
}

async fn handle(
    state: &Shared,
    streams: &Arc<Semaphore>,
    request: Request<Incoming>,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = dispatch(state, streams, request).await;
    debug!(
        http.method = %method,
        http.path = %path,
        http.status = response.status().as_u16(),
        "API request"
    );
    response
}

async fn dispatch(
    state: &Shared,
    streams: &Arc<Semaphore>,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/health") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (Method::GET, "/ready") => {
            let ready = state.ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                &serde_json::json!({
                    "ready": ready,
                    "recovered": state.recovered.load(std::sync::atomic::Ordering::SeqCst),
                    "proxy_up": crate::agent::state::lock(&state.proxy).up,
                }),
            )
        }
        (Method::GET, "/metrics") => metrics(state).await,
        (Method::GET, "/v1/status") => json(StatusCode::OK, &state.status()),
        (Method::GET, "/v1/events") => event_stream(&state.events, streams),
        (Method::POST, "/v1/webhook") => webhook(state, request).await,
        (_, "/health" | "/ready" | "/metrics" | "/v1/status" | "/v1/events" | "/v1/webhook") => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path",
            )
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no such path {path}")),
    }
}

/// The agent's metrics followed by the proxy's (when it answers).
async fn metrics(state: &Shared) -> Response<Body> {
    let mut body = state
        .metrics
        .as_ref()
        .map(|handle| handle.render())
        .unwrap_or_default();
    match tokio::time::timeout(PROXY_METRICS_TIMEOUT, state.proxy_client.metrics()).await {
        Ok(Ok(proxy)) => {
            if !body.is_empty() && !body.ends_with('\n') {
                body.push('\n');
            }
            body.push_str(&proxy);
        }
        Ok(Err(err)) => debug!(error = %err, "proxy metrics unavailable"),
        Err(_) => debug!("proxy metrics timed out"),
    }
    text(StatusCode::OK, "text/plain; version=0.0.4", body)
}

/// `POST /v1/webhook`: bearer token, then the named secret is checked at once.
async fn webhook(state: &Shared, request: Request<Incoming>) -> Response<Body> {
    let Some(token) = &state.webhook_token else {
        metrics::counter!(WEBHOOKS, "result" => "disabled").increment(1);
        return error(
            StatusCode::NOT_FOUND,
            "the webhook is disabled; set agent.webhook.enabled and agent.webhook.token",
        );
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), token.expose()) {
        metrics::counter!(WEBHOOKS, "result" => "unauthorized").increment(1);
        warn!(
            http.path = "/v1/webhook",
            "webhook refused: wrong or missing bearer token"
        );
        let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let body: WebhookRequest = match read_json(request).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let matched = state.detector.check_now(&body.secret).await;
    if matched == 0 {
        metrics::counter!(WEBHOOKS, "result" => "unknown").increment(1);
        return error(
            StatusCode::NOT_FOUND,
            &format!("no managed service uses secret {}", body.secret),
        );
    }
    metrics::counter!(WEBHOOKS, "result" => "accepted").increment(1);
    info!(secret.ref = %body.secret, matched, "webhook: check requested");
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"secret": body.secret, "checking": matched}),
    )
}

#[cfg(test)]
mod tests;
