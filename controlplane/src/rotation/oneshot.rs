//! `dso-agent rotate PROJECT/SERVICE` and `dso-agent recover`: the rotation engine in the
//! foreground, for operators and tests. Each prints the engine's events as JSON lines on
//! stdout while it runs (names only, never values), then exits 0 on success.
//!
//! The journal lives in `$DSO_HOME/journal` when `DSO_HOME` is set, else `/var/lib/dso/journal`
//! for root and `~/.dso/journal` for other users; the runtime directory (generation
//! directories and the proxy socket) is the one `docker dso up` uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::{Engine, EngineConfig, Outcome, ServiceKey};
use crate::config::Config;
use crate::events::{self, Event};
use crate::resolve::LocalVault;

/// Journal directory of root.
pub const ROOT_JOURNAL_DIR: &str = "/var/lib/dso/journal";

/// Flags of `dso-agent rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The service, as PROJECT/SERVICE.
    pub service: String,

    /// Why (shown in events).
    #[arg(long, default_value = "manual")]
    pub reason: String,
}

/// Flags of `dso-agent recover`.
#[derive(Debug, Default, clap::Args)]
pub struct RecoverArgs {}

/// The journal directory of this user (see the module docs).
pub fn journal_dir() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os(crate::home::HOME_ENV).filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("journal"));
    }
    if crate::files::is_root() {
        return Ok(PathBuf::from(ROOT_JOURNAL_DIR));
    }
    crate::home::dso_home()
        .map(|home| home.join("journal"))
        .context("neither DSO_HOME nor HOME is set, so the journal has no place")
}

/// The engine settings from `dso.yaml` and the environment.
pub fn engine_config(config: &Config) -> anyhow::Result<EngineConfig> {
    let runtime = crate::files::runtime_dir().context("finding the runtime directory")?;
    let mut settings = EngineConfig::new(runtime, journal_dir()?);
    settings.health_timeout = config.defaults.health_timeout;
    settings.drain_timeout = config.defaults.drain_timeout;
    settings.signal = config.defaults.signal.clone();
    settings.default_strategy = config.defaults.strategy;
    Ok(settings)
}

/// Rotates one service in the foreground.
pub fn rotate(_config_path: &Path, config: Config, args: RotateArgs) -> anyhow::Result<ExitCode> {
    let key: ServiceKey = args.service.parse()?;
    run(&config, |engine| async move {
        let outcome = engine.rotate(&key, &args.reason).await?;
        print_outcome(&key, &outcome);
        Ok(())
    })
}

/// Runs the crash recovery in the foreground.
pub fn recover(
    _config_path: &Path,
    config: Config,
    _args: RecoverArgs,
) -> anyhow::Result<ExitCode> {
    run(&config, |engine| async move {
        let outcomes = engine.recover().await?;
        for (key, outcome) in &outcomes {
            print_outcome(key, outcome);
        }
        if outcomes.is_empty() {
            println!("{}", serde_json::json!({"type": "nothing_to_recover"}));
        }
        Ok(())
    })
}

fn run<F, Fut>(config: &Config, work: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Arc<Engine>) -> Fut,
    Fut: std::future::Future<Output = Result<(), super::RotationError>>,
{
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let settings = engine_config(config)?;
    let values = Arc::new(LocalVault::from_config(config).context("locating the local vault")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let events = events::channel();
        let mut receiver = events.subscribe();
        let printer = tokio::spawn(async move {
            while let Ok(event) = receiver.recv().await {
                print_event(&event);
            }
        });
        let engine = Arc::new(Engine::connect(settings, values, events).await?);
        let result = work(engine.clone()).await;
        drop(engine);
        let _ = printer.await;
        match result {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                let hint = error.hint();
                let error = anyhow::Error::from(error);
                match hint {
                    Some(hint) => Err(error.context(format!("(hint: {hint})"))),
                    None => Err(error),
                }
            }
        }
    })
}

fn print_event(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        println!("{line}");
    }
}

fn print_outcome(key: &ServiceKey, outcome: &Outcome) {
    let line = match outcome {
        Outcome::Rotated {
            strategy,
            containers,
            millis,
        } => serde_json::json!({"type": "outcome", "service": key.to_string(),
            "outcome": "rotated", "strategy": strategy, "containers": containers,
            "millis": millis}),
        Outcome::Signalled { containers } => serde_json::json!({"type": "outcome",
            "service": key.to_string(), "outcome": "signalled", "containers": containers}),
        Outcome::Unchanged => serde_json::json!({"type": "outcome", "service": key.to_string(),
            "outcome": "unchanged"}),
        Outcome::Completed => serde_json::json!({"type": "outcome", "service": key.to_string(),
            "outcome": "completed"}),
        Outcome::RolledBack { reason } => serde_json::json!({"type": "outcome",
            "service": key.to_string(), "outcome": "rolled_back", "reason": reason}),
    };
    println!("{line}");
}
