//! A minimal HTTP/1.0 client for tests, on std sockets only. It refuses any address that is not
//! loopback: test traffic never leaves 127.0.0.0/8 or ::1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// How long one request may take to connect, send and read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two attempts of [`wait_ok`]; a poll interval, not an ordering sleep.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Status and body of one response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy), for assertions on text endpoints.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `GET path` to `addr` and reads the whole response (the servers close after it).
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    ensure!(
        addr.ip().is_loopback(),
        "refusing test traffic to non-loopback address {addr}"
    );

    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending GET {path} to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response to GET {path} from {addr}"))?;

    parse(&raw).with_context(|| format!("parsing the response to GET {path} from {addr}"))
}

/// Polls `GET path` until it answers 200 or `timeout` passes; returns the 200 response.
pub fn wait_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match get(addr, path) {
            Ok(response) if response.status == 200 => return Ok(response),
            Ok(response) => format!("status {}", response.status),
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() >= deadline {
            bail!("GET {path} on {addr} did not answer 200 within {timeout:?} (last: {last})");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Splits a raw response into status and body.
fn parse(raw: &[u8]) -> Result<Response> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no end of headers in {} bytes", raw.len());
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    Ok(Response {
        status,
        body: raw[head_end + 4..].to_vec(),
    })
}

/// Polls `GET path` on a loopback address until a 200 answer contains `want` (30 s); returns
/// that body. The error says what was answered last.
pub fn wait_for_body(addr: SocketAddr, path: &str, want: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match get(addr, path) {
            Ok(response) if response.status == 200 && response.text().contains(want) => {
                return Ok(response.text());
            }
            Ok(response) => response.text(),
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() > deadline {
            bail!("{addr}{path} never reported {want}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_splits_status_and_body() {
        let response = parse(b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\nx\r\n\r\ny").unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.body, b"x\r\n\r\ny");
    }

    #[test]
    fn get_refuses_non_loopback() {
        let error = get("192.0.2.1:80".parse().unwrap(), "/").unwrap_err();
        assert!(error.to_string().contains("non-loopback"), "{error}");
    }
}
