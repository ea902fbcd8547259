//! `dso-proxy`: the dso data plane as a program. Parses and validates every flag, binds every
//! listener and the control socket, then hands them to [`dataplane::run`] until SIGTERM or
//! SIGINT. Start reading here; the library's `lib.rs` maps the rest.
//!
//! Exit codes: 0 after a clean shutdown, 1 when a socket cannot be bound or the runtime
//! fails, 2 for invalid flags.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use clap::builder::TypedValueParser;
use dataplane::settings::{self, MAX_MS};
use dataplane::{
    ControlError, ControlSocket, ForwardMode, ListenError, Proxy, RouteSpec, Settings,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// Exit code for invalid flags (clap uses it too).
const EXIT_USAGE: u8 = 2;
/// Exit code for failures after validation (bind, runtime).
const EXIT_FAILURE: u8 = 1;

/// TCP proxy of dso: owns host ports and forwards them to containers, with atomic upstream
/// swaps, draining of old connections and holding of new ones.
#[derive(Debug, Parser)]
#[command(
    name = "dso-proxy",
    version,
    after_help = "\
Routes: --listen/--upstream make one route named \"default\"; --route adds more.\n\
  --route NAME=LISTEN=UPSTREAM[,UPSTREAM]   e.g. db=127.0.0.1:15432=172.17.0.2:5432\n\
  IPv6: web=[::1]:18080=[::1]:8080. An empty upstream list (db=127.0.0.1:15432=) holds.\n\
Exit codes: 0 clean shutdown, 1 bind or runtime failure, 2 invalid flags."
)]
struct Args {
    /// Listen address of the single route "default", IP:PORT ([IPv6]:PORT).
    #[arg(long, value_name = "ADDR", requires = "upstream")]
    listen: Option<String>,

    /// Upstream of the route "default", IP:PORT; repeat for fallbacks, tried in order.
    #[arg(long, value_name = "ADDR", requires = "listen")]
    upstream: Vec<String>,

    /// A named route; repeatable. See "Routes" below.
    #[arg(long = "route", value_name = "NAME=LISTEN=UPSTREAM[,UPSTREAM]")]
    routes: Vec<String>,

    /// Serve the control API on this unix socket (mode 0660).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// Default drain deadline for connections of a replaced generation.
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = ms())]
    drain_timeout_ms: u64,

    /// On SIGTERM/SIGINT: deadline for open connections before they are cut.
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = ms())]
    shutdown_drain_ms: u64,

    /// Default time a client parked in hold waits for an upstream.
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = ms())]
    hold_timeout_ms: u64,

    /// Most clients parked per route; further clients wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = settings::HOLD_MAX,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    hold_max: usize,

    /// Most open client connections per route; further clients wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = settings::MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000).map(|n| n as usize))]
    max_connections: usize,

    /// Budget for connecting to an upstream, retries over all upstreams included.
    #[arg(long, value_name = "MS", value_parser = ms(),
        default_value_t = settings::CONNECT_BUDGET.as_millis() as u64)]
    connect_budget_ms: u64,

    /// Close connections with no byte read in either direction for this long; 0 = never.
    #[arg(long, value_name = "MS", default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=MAX_MS))]
    idle_timeout_ms: u64,

    /// After one side closed: close the other after this long without a byte from it.
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = ms())]
    half_close_linger_ms: u64,

    /// Listen backlog (capped by net.core.somaxconn).
    #[arg(long, value_name = "N", default_value_t = settings::BACKLOG,
        value_parser = clap::value_parser!(i32).range(1..=65_535))]
    backlog: i32,

    /// Time a control client has to send a request's headers, then its body; slower clients
    /// (and kept-alive connections idle this long) are disconnected.
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = ms())]
    control_timeout_ms: u64,

    /// Forwarding: auto (copy small reads, splice bulk), copy, or splice.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    forwarding: ForwardMode,

    /// Size of each splice pipe in bytes, 4096 to 1048576 (the unprivileged maximum).
    #[arg(long, value_name = "BYTES", default_value_t = settings::PIPE_SIZE,
        value_parser = clap::value_parser!(u32)
            .range(settings::PIPE_SIZE_MIN as i64..=settings::PIPE_SIZE as i64)
            .map(|n| n as usize))]
    pipe_size: usize,

    /// Log filter (tracing EnvFilter syntax), e.g. info or dataplane=debug.
    #[arg(
        long,
        value_name = "FILTER",
        env = "DSO_PROXY_LOG",
        default_value = "info"
    )]
    log: String,
}

/// Millisecond flags: 1 ms to one day.
fn ms() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=MAX_MS)
}

/// Everything the proxy will do, validated, before any socket exists.
struct Plan {
    routes: Vec<RouteSpec>,
    control: Option<PathBuf>,
    settings: Settings,
    log: tracing_subscriber::EnvFilter,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = match plan(args) {
        Ok(plan) => plan,
        Err(err) => {
            eprintln!("dso-proxy: error: {err:#}");
            eprintln!("hint: see dso-proxy --help");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Plain text when stderr is a file or journald, so logs stay greppable.
    tracing_subscriber::fmt()
        .with_env_filter(plan.log.clone())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    raise_fd_limit();
    match serve(plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dso-proxy: error: {err:#}");
            let hint = err
                .downcast_ref::<ListenError>()
                .and_then(ListenError::hint)
                .or_else(|| {
                    err.downcast_ref::<ControlError>()
                        .and_then(ControlError::hint)
                });
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Validates the flags into a plan: route syntax, duplicate names and addresses, something
/// to do at all.
fn plan(args: Args) -> Result<Plan> {
    let mut routes = Vec::new();
    if let Some(listen) = &args.listen {
        let spec = RouteSpec::from_parts("default", listen, &args.upstream)
            .context("invalid --listen/--upstream")?;
        routes.push(spec);
    }
    for text in &args.routes {
        routes.push(
            RouteSpec::parse_flag(text).with_context(|| format!("invalid --route {text:?}"))?,
        );
    }
    for (index, spec) in routes.iter().enumerate() {
        for earlier in &routes[..index] {
            anyhow::ensure!(
                earlier.name != spec.name,
                "route name {:?} is given twice",
                spec.name
            );
            anyhow::ensure!(
                spec.listen.port() == 0 || earlier.listen != spec.listen,
                "listen address {} is given to both route {:?} and route {:?}",
                spec.listen,
                earlier.name,
                spec.name
            );
        }
    }
    anyhow::ensure!(
        !routes.is_empty() || args.control.is_some(),
        "nothing to do: give --listen with --upstream, --route, or --control"
    );
    if let Some(path) = &args.control {
        anyhow::ensure!(
            path.file_name().is_some(),
            "--control {} is not a socket file path",
            path.display()
        );
    }
    let log = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;

    let ms = Duration::from_millis;
    let settings = Settings {
        drain_timeout: ms(args.drain_timeout_ms),
        hold_timeout: ms(args.hold_timeout_ms),
        hold_max: args.hold_max,
        max_connections: args.max_connections,
        connect_budget: ms(args.connect_budget_ms),
        shutdown_drain: ms(args.shutdown_drain_ms),
        idle_timeout: (args.idle_timeout_ms > 0).then(|| ms(args.idle_timeout_ms)),
        half_close_linger: ms(args.half_close_linger_ms),
        backlog: args.backlog,
        forward_mode: args.forwarding,
        pipe_size: args.pipe_size,
        control_timeout: ms(args.control_timeout_ms),
    };
    Ok(Plan {
        routes,
        control: args.control,
        settings,
        log,
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit. Each proxied connection needs two
/// descriptors (four while both directions splice), and shells and many service managers
/// start programs with a soft limit of 1024, which would cap the proxy near 500 connections
/// while `--max-connections` defaults to 16,384. Raising the soft limit up to the hard one
/// needs no privilege. A failure only leaves the lower limit: logged, not fatal.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid, exclusively borrowed rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads a valid rlimit; raising the soft limit to the hard one is
    // always permitted.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        info!(
            fd_limit.from = soft,
            fd_limit.to = limit.rlim_max,
            "raised the descriptor limit"
        );
    } else {
        tracing::warn!(
            fd_limit = soft,
            error = %std::io::Error::last_os_error(),
            "could not raise the descriptor limit"
        );
    }
}

/// Binds everything, runs until a signal, drains.
fn serve(plan: Plan) -> Result<()> {
    // Step 1: bind every listener, then the control socket; any failure exits before a
    // single connection was accepted.
    let mut bound = Vec::with_capacity(plan.routes.len());
    for spec in plan.routes {
        let listener = dataplane::listener::bind(spec.listen, plan.settings.backlog)?;
        bound.push((spec, listener));
    }
    let control = match &plan.control {
        Some(path) => Some(ControlSocket::bind(path)?),
        None => None,
    };

    // Step 2: the runtime, the routes, the signal handlers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let _ = dataplane::telemetry::recorder();
        let proxy = Proxy::new(plan.settings);
        for (spec, listener) in bound {
            let name = spec.name.clone();
            proxy
                .add_route(spec, listener)
                .with_context(|| format!("starting route {name:?}"))?;
        }
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        info!(version = env!("CARGO_PKG_VERSION"), routes = proxy.routes().len(),
            control = ?control.as_ref().map(|c| c.path().display().to_string()),
            "dso-proxy started");

        let signal = async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        let report = dataplane::run(proxy, control, signal).await;
        info!(
            drain.ended = report.ended,
            drain.cut = report.cut,
            held_closed = report.held_closed,
            "dso-proxy stopped"
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("dso-proxy").chain(list.iter().copied()))
    }

    #[test]
    fn single_route_flags_make_route_default() {
        let plan = plan(
            args(&[
                "--listen",
                "127.0.0.1:15432",
                "--upstream",
                "127.0.0.1:5432",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(plan.routes.len(), 1);
        assert_eq!(plan.routes[0].name, "default");
    }

    #[test]
    fn route_flags_parse_ipv6_and_repeat() {
        let plan = plan(
            args(&[
                "--route",
                "a=[::1]:15432=[::1]:5432",
                "--route",
                "b=127.0.0.1:1=127.0.0.1:2,127.0.0.1:3",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(plan.routes[0].listen, "[::1]:15432".parse().unwrap());
        assert_eq!(plan.routes[1].upstreams.len(), 2);
    }

    #[test]
    fn listen_without_upstream_is_refused_by_clap() {
        let err = args(&["--listen", "127.0.0.1:1"]).unwrap_err();
        assert!(err.to_string().contains("--upstream"), "{err}");
    }

    #[test]
    fn duplicate_names_and_addresses_are_refused() {
        let err = plan(
            args(&[
                "--route",
                "a=127.0.0.1:1=127.0.0.1:2",
                "--route",
                "a=127.0.0.1:3=127.0.0.1:2",
            ])
            .unwrap(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("\"a\" is given twice"), "{err}");
        let err = plan(
            args(&[
                "--route",
                "a=127.0.0.1:1=127.0.0.1:2",
                "--route",
                "b=127.0.0.1:1=127.0.0.1:2",
            ])
            .unwrap(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }

    #[test]
    fn nothing_to_do_is_an_error() {
        let err = plan(args(&[]).unwrap()).err().unwrap();
        assert!(err.to_string().contains("nothing to do"), "{err}");
    }

    #[test]
    fn millisecond_flags_are_range_checked() {
        let err = args(&["--control", "/tmp/x.sock", "--drain-timeout-ms", "0"]).unwrap_err();
        assert!(err.to_string().contains("--drain-timeout-ms"), "{err}");
        assert!(args(&["--control", "/tmp/x.sock", "--idle-timeout-ms", "0"]).is_ok());
        let err = args(&["--control", "/tmp/x.sock", "--forwarding", "fast"]).unwrap_err();
        assert!(err.to_string().contains("fast"), "{err}");
    }

    #[test]
    fn pipe_size_is_bounded_and_defaults_to_one_mib() {
        let plan = plan(args(&["--control", "/tmp/x.sock"]).unwrap()).unwrap();
        assert_eq!(plan.settings.pipe_size, 1024 * 1024);
        let set = plan_of(&["--control", "/tmp/x.sock", "--pipe-size", "65536"]);
        assert_eq!(set.settings.pipe_size, 65536);
        for bad in ["4095", "1048577", "big"] {
            let err = args(&["--control", "/tmp/x.sock", "--pipe-size", bad]).unwrap_err();
            assert!(err.to_string().contains("--pipe-size"), "{bad}: {err}");
        }
    }

    fn plan_of(argv: &[&str]) -> Plan {
        plan(args(argv).unwrap()).unwrap()
    }
}
