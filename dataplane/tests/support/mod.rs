//! Shared helpers of the dataplane integration tests: spawn the real `dso-proxy` binary with a
//! control socket in a private temp dir, real TCP peers on 127.0.0.1:0, and waiting on
//! conditions with deadlines (never sleeping for ordering).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dataplane::api::RouteRequest;
use dataplane::client::ProxyClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest wait for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `dso-proxy` process, killed on drop if still alive.
pub struct ProxyProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub control: PathBuf,
    pub client: ProxyClient,
    pub stderr_path: PathBuf,
}

impl ProxyProcess {
    /// Starts the binary with `--control` in a fresh temp dir plus `args`, and waits until
    /// the control API answers.
    pub async fn start(args: &[&str]) -> ProxyProcess {
        ProxyProcess::start_with(args, |_| {}).await
    }

    /// As [`start`], with a hook to adjust the command (e.g. resource limits).
    pub async fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let control = dir.path().join("proxy.sock");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_dso-proxy"));
        command
            .arg("--control")
            .arg(&control)
            .args(args)
            .env("DSO_PROXY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        adjust(&mut command);
        let child = command.spawn().expect("spawn dso-proxy");
        let client = ProxyClient::new(&control);
        let mut proxy = ProxyProcess {
            child,
            dir,
            control,
            client,
            stderr_path,
        };
        let started = Instant::now();
        loop {
            if proxy.client.health().await.is_ok() {
                return proxy;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("dso-proxy exited early with {status}: {}", proxy.stderr());
            }
            assert!(
                started.elapsed() < WAIT,
                "dso-proxy did not answer: {}",
                proxy.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Creates or changes a route and returns the bound listen address.
    pub async fn put(&self, name: &str, listen: &str, upstreams: &[SocketAddr]) -> SocketAddr {
        self.put_with_drain(name, listen, upstreams, None).await
    }

    pub async fn put_with_drain(
        &self,
        name: &str,
        listen: &str,
        upstreams: &[SocketAddr],
        drain_timeout_ms: Option<u64>,
    ) -> SocketAddr {
        let request = RouteRequest {
            listen: listen.to_owned(),
            upstreams: upstreams.iter().map(|a| a.to_string()).collect(),
            drain_timeout_ms,
        };
        let change = self
            .client
            .put_route(name, &request)
            .await
            .expect("PUT route");
        change.route.local_addr.parse().expect("local addr")
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, with a deadline.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "dso-proxy did not exit: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resident set size of the process in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// CPU time (user + system) of the process in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); after the name they are 11 and 12.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// The value of one metric series from `/metrics`, matched by name and label text.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.client.metrics().await.expect("metrics");
        metric_value(&text, name, labels)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS")
}

/// Sums the samples of `name` whose label set contains every text in `labels`; 0 if none.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(name)
                && matches!(line.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` until it returns true, panicking with `what` after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP server on 127.0.0.1:0 running a handler per connection; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start<F, Fut>(handler: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // A deep backlog: load tests connect thousands of clients at once.
        let socket = tokio::net::TcpSocket::new_v4().expect("server socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind server");
        let listener: TcpListener = socket.listen(4096).expect("listen");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                tokio::spawn(handler(stream));
            }
        });
        Server {
            addr,
            accepted,
            task,
        }
    }

    /// Echoes every byte back and closes after the client's end of stream.
    pub async fn echo() -> Server {
        Server::start(|mut stream| async move {
            let (mut reader, mut writer) = stream.split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
            let _ = writer.shutdown().await;
        })
        .await
    }

    /// Answers each line with the line plus ` tag`, so a client can tell backends apart.
    pub async fn tagged(tag: &'static str) -> Server {
        Server::start(move |stream| async move {
            let (reader, mut writer) = stream.into_split();
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if writer
                    .write_all(format!("{line} {tag}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
        .await
    }

    /// Accepts and holds connections open, reading and discarding, never writing.
    pub async fn sink() -> Server {
        Server::start(|mut stream| async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    // Keep the socket open: a peer that never closes its side.
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
    }
}

/// Connects, sends one line and returns the answer line (without the newline).
pub async fn ask(stream: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<String> {
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await?;
    let mut answer = String::new();
    let n = stream.read_line(&mut answer).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    Ok(answer.trim_end().to_owned())
}

/// A fast deterministic byte stream (xorshift64*), good enough as random test data.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed.max(1))
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}
