//! Criterion benches of the data plane: the real `dso-proxy` binary against a direct connection
//! to the same loopback server, in the same run, so every proxy figure has its baseline beside
//! it.
//!
//! Two workloads:
//! - `round_trip`: one persistent connection writes a small message (64 B, 1 KiB) to an echo
//!   server and reads it back; the time per iteration is one request/response round trip.
//! - `bulk`: each iteration opens a connection to a sink server, writes 64 MiB, shuts its
//!   write side and waits for the sink to report how many bytes it read (so the time covers
//!   the last byte arriving, not only leaving).
//!
//! Each goes direct and through one `dso-proxy` per forwarding mode (`auto`, the default, plus
//! `copy` and `splice` for comparison). The proxy is found through `DSO_PROXY_BIN`, else next
//! to this bench in the target directory (release first, then debug); it is not built by
//! `cargo bench`, so build it first:
//! `CARGO_TARGET_DIR=/work/target cargo build --release -p dataplane`.
//!
//! Servers are plain threads with blocking sockets: the cheapest possible peer, so that the
//! difference between the two paths is the proxy. Run with
//! `cargo bench -p dso --bench proxy`; `cargo test --benches` runs each case once.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Sizes of the request/response messages.
const MESSAGE_SIZES: [usize; 2] = [64, 1024];
/// Bytes sent one way per bulk iteration.
const BULK_BYTES: usize = 64 * 1024 * 1024;
/// Write size of the bulk sender.
const BULK_CHUNK: usize = 1024 * 1024;
/// Forwarding modes of `dso-proxy --forwarding` that are measured.
const MODES: [&str; 3] = ["auto", "copy", "splice"];
/// How long a started proxy may take to accept on its listen addresses.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// The loopback servers every path ends at.
struct Servers {
    echo: SocketAddr,
    sink: SocketAddr,
}

/// One running `dso-proxy` with an echo route and a sink route; killed on drop, so a
/// panicking bench leaves no process behind.
struct Proxy {
    child: Child,
    echo: SocketAddr,
    sink: SocketAddr,
    // Held so the log file lives as long as the process writing to it.
    _log: tempfile::NamedTempFile,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the echo and sink servers on ephemeral loopback ports.
fn start_servers() -> Result<Servers> {
    let echo = TcpListener::bind("127.0.0.1:0").context("bind echo server")?;
    let sink = TcpListener::bind("127.0.0.1:0").context("bind sink server")?;
    let servers = Servers {
        echo: echo.local_addr()?,
        sink: sink.local_addr()?,
    };
    serve(echo, echo_connection);
    serve(sink, sink_connection);
    Ok(servers)
}

/// Accepts forever on a thread, one thread per connection. The threads end with the bench
/// process.
fn serve(listener: TcpListener, handle: fn(TcpStream) -> io::Result<()>) {
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let _ = handle(stream);
            });
        }
    });
}

/// Writes back whatever it reads until end of stream.
fn echo_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Reads until end of stream, then answers with the byte count (u64, little endian).
fn sink_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_le_bytes())
}

/// Where the `dso-proxy` binary is: `DSO_PROXY_BIN`, else the release then the debug build
/// in the target directory this bench was built into.
fn proxy_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("DSO_PROXY_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("DSO_PROXY_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }

    // The bench executable lives in TARGET/PROFILE/deps/.
    let exe = std::env::current_exe().context("locate the bench executable")?;
    let target = exe.parent().and_then(Path::parent).and_then(Path::parent);
    let candidates: Vec<PathBuf> = match target {
        Some(dir) => ["release", "debug"]
            .iter()
            .map(|p| dir.join(p).join("dso-proxy"))
            .collect(),
        None => Vec::new(),
    };
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        if found.parent().and_then(Path::file_name) == Some("debug".as_ref()) {
            eprintln!("note: benchmarking the debug build {}", found.display());
        }
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "dso-proxy binary not found (looked in: {}); hint: build it with \
         `CARGO_TARGET_DIR=/work/target cargo build --release -p dataplane` or set DSO_PROXY_BIN",
        looked.join(", ")
    )
}

/// A loopback port that was free a moment ago. The proxy binds it right after; a lost race
/// shows up as a bind error of the proxy, which `start_proxy` retries.
fn free_port() -> Result<u16> {
    let probe = TcpListener::bind("127.0.0.1:0").context("reserve a loopback port")?;
    Ok(probe.local_addr()?.port())
}

/// Starts `dso-proxy` in `mode` with routes to the echo and the sink server and waits until
/// both listeners accept.
fn start_proxy(binary: &Path, servers: &Servers, mode: &str) -> Result<Proxy> {
    let mut last_error = None;
    for _attempt in 0..3 {
        match try_start_proxy(binary, servers, mode) {
            Ok(proxy) => return Ok(proxy),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("dso-proxy did not start")))
}

fn try_start_proxy(binary: &Path, servers: &Servers, mode: &str) -> Result<Proxy> {
    let echo: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let sink: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let log = tempfile::NamedTempFile::new().context("create the proxy log file")?;
    let child = Command::new(binary)
        .arg(format!("--route=echo={echo}={}", servers.echo))
        .arg(format!("--route=sink={sink}={}", servers.sink))
        .arg(format!("--forwarding={mode}"))
        .arg("--log=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().context("open the proxy log file")?)
        .spawn()
        .with_context(|| format!("spawn {}", binary.display()))?;
    let mut proxy = Proxy {
        child,
        echo,
        sink,
        _log: log,
    };

    // Poll until both listeners accept; a proxy that exits (bind failure, bad flag) ends the
    // wait with its own message.
    let started = Instant::now();
    for addr in [echo, sink] {
        loop {
            if let Some(status) = proxy.child.try_wait().context("poll dso-proxy")? {
                let stderr = std::fs::read_to_string(proxy._log.path()).unwrap_or_default();
                bail!(
                    "dso-proxy --forwarding={mode} exited with {status}: {}",
                    stderr.trim()
                );
            }
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            if started.elapsed() > READY_DEADLINE {
                bail!("dso-proxy did not accept on {addr} within {READY_DEADLINE:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(proxy)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_nodelay(true)
        .unwrap_or_else(|e| panic!("TCP_NODELAY on {addr}: {e}"));
    stream
}

/// Everything a bench needs: the servers, the binary and one proxy per mode.
fn setup() -> (Servers, Vec<(&'static str, Proxy)>) {
    let fail = |err: anyhow::Error| -> ! { panic!("bench setup failed: {err:#}") };
    let servers = start_servers().unwrap_or_else(|e| fail(e));
    let binary = proxy_binary().unwrap_or_else(|e| fail(e));
    let proxies = MODES
        .iter()
        .map(|mode| {
            (
                *mode,
                start_proxy(&binary, &servers, mode).unwrap_or_else(|e| fail(e)),
            )
        })
        .collect();
    (servers, proxies)
}

/// The paths to measure: direct first, then each proxy, as (name, address) pairs.
fn paths(
    direct: SocketAddr,
    proxies: &[(&'static str, Proxy)],
    pick: fn(&Proxy) -> SocketAddr,
) -> Vec<(String, SocketAddr)> {
    let mut paths = vec![("direct".to_string(), direct)];
    for (mode, proxy) in proxies {
        paths.push((format!("dso-proxy-{mode}"), pick(proxy)));
    }
    paths
}

fn round_trip(c: &mut Criterion) {
    let (servers, proxies) = setup();
    let mut group = c.benchmark_group("round_trip");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));

    for size in MESSAGE_SIZES {
        group.throughput(Throughput::Elements(1));
        for (name, addr) in paths(servers.echo, &proxies, |p| p.echo) {
            let mut stream = connect(addr);
            let request = vec![0x5a_u8; size];
            let mut reply = vec![0u8; size];
            group.bench_function(BenchmarkId::new(name.as_str(), size), |b| {
                b.iter(|| {
                    stream.write_all(&request).expect("write request");
                    stream.read_exact(&mut reply).expect("read reply");
                })
            });
            assert_eq!(reply, request, "echo through {name} returned other bytes");
        }
    }
    group.finish();
}

fn bulk(c: &mut Criterion) {
    let (servers, proxies) = setup();
    let mut group = c.benchmark_group("bulk_64MiB");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(BULK_BYTES as u64));
    let chunk = vec![0xa5_u8; BULK_CHUNK];

    for (name, addr) in paths(servers.sink, &proxies, |p| p.sink) {
        group.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let mut stream = connect(addr);
                for _ in 0..BULK_BYTES / BULK_CHUNK {
                    stream.write_all(&chunk).expect("write bulk chunk");
                }
                stream
                    .shutdown(Shutdown::Write)
                    .expect("shut down the write side");
                let mut count = [0u8; 8];
                stream
                    .read_exact(&mut count)
                    .expect("read the sink's byte count");
                assert_eq!(
                    u64::from_le_bytes(count),
                    BULK_BYTES as u64,
                    "bytes lost via {name}"
                );
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip, bulk);
criterion_main!(benches);
