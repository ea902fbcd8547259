//! HTTP pieces both surfaces share (REST on TCP, IPC on a unix socket): JSON and text
//! responses, bounded JSON request bodies, the server-sent event stream of the event channel,
//! and a constant-time comparison for bearer tokens.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::events::{Event, EventSender};

/// The body type of every response.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
pub const BODY_MAX: usize = 64 * 1024;

/// How long a request's body may take to arrive once its headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Event streams one surface serves at once. A stream holds its connection for as long as the
/// client likes; without this cap, streams alone could take every connection slot and leave
/// `/health`, `/ready` and the webhook unanswered.
pub const STREAMS_MAX: usize = 16;

/// How long a client that finds every connection slot taken gets to read its 503.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Comment line sent on an idle event stream so proxies and clients see it alive.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut text = serde_json::to_vec(value).unwrap_or_default();
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// `{"error": message}` with a status.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// A plain-text response.
pub fn text(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// Reads a JSON body of at most [`BODY_MAX`] bytes; the error is a ready 400/413 response.
pub async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Box<Response<Body>>> {
    let too_large = || {
        Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {BODY_MAX} bytes or could not be read"),
        ))
    };

    // A declared length over the limit is refused before anything is read.
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_MAX as u64) {
        return Err(too_large());
    }

    // The header timeout ends with the headers; a body that never comes must not hold a
    // connection slot for ever.
    let collect = Limited::new(request.into_body(), BODY_MAX).collect();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => return Err(too_large()),
        Err(_elapsed) => {
            return Err(Box::new(error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )));
        }
    };
    serde_json::from_slice(&bytes).map_err(|err| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not valid: {err}"),
        ))
    })
}

/// A `text/event-stream` response that follows the event channel until the client leaves.
/// Each event is `event: TYPE` plus `data: JSON`; a subscriber that falls behind gets a
/// `: lagged N` comment for the events it lost.
pub fn event_stream(events: &EventSender, streams: &Arc<Semaphore>) -> Response<Body> {
    let Ok(permit) = streams.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{STREAMS_MAX} event streams are open already; close one and try again"),
        );
    };
    let mut receiver = events.subscribe();
    let (sender, body) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let _permit = permit;
        let _ = sender.send(Bytes::from_static(b": dso events\n\n")).await;
        loop {
            let frame = tokio::select! {
                received = receiver.recv() => match received {
                    Ok(event) => Bytes::from(sse_frame(&event)),
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        Bytes::from(format!(": lagged {lost}\n\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keepalive\n\n"),
                () = sender.closed() => return,
            };
            if sender.send(frame).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-store")
        .body(ChannelBody(body).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// One event as a server-sent event frame.
pub fn sse_frame(event: &Event) -> String {
    let data = serde_json::to_value(event).unwrap_or_default();
    let kind = data
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("event")
        .to_owned();
    format!("event: {kind}\ndata: {data}\n\n")
}

/// A response body fed from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|b| Ok(Frame::data(b))))
    }
}

/// Compares two byte strings in time that depends only on their lengths, so a caller cannot
/// learn a token byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    let longest = a.len().max(b.len());
    for i in 0..longest {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Answers a connection that found every slot taken with a plain 503 and closes it, instead of
/// leaving it in the listen backlog where a health check would only time out.
pub async fn refuse_busy<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    const BODY: &str = "{\"error\":\"too many connections; try again shortly\"}\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Read what the client sent until it closes: closing with unread input would send a
        // reset, and the client could lose the 503 before reading it.
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abcdef0123456789", b"abcdef0123456789"));
        assert!(!constant_time_eq(b"abcdef0123456789", b"abcdef012345678"));
        assert!(!constant_time_eq(b"abcdef0123456789", b"abcdef0123456780"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn events_become_typed_sse_frames() {
        let frame = sse_frame(&Event::RouteHeld {
            route: "p.s.80".into(),
        });
        assert_eq!(
            frame,
            "event: route_held\ndata: {\"route\":\"p.s.80\",\"type\":\"route_held\"}\n\n"
        );
    }
}
