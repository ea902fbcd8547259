//! The typed, validated configuration ([`Config`]) and the step that builds it from the raw
//! file: `${VAR}` expansion, defaults, value checks and cross references.
//!
//! Resolution never stops at the first problem: it records every problem with its key path
//! and goes on, so `docker dso config validate` can list them all at once. Credentials
//! (`token`, `client_secret`) become [`SecretValue`]s right after expansion and are never
//! echoed in a problem message.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::expand::expand;
use super::locate::KeyPath;
use super::raw::{
    Inject, Mode, ProviderKind, RawAgent, RawConfig, RawDefaults, RawProvider, RawSecret, Strategy,
};
use crate::secret::SecretValue;
use crate::vault::{DEFAULT_HISTORY, SecretPath};

/// Default `agent.watch_interval`.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(300);
/// Shortest `agent.watch_interval`: polling faster only burns provider rate limits.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_secs(5);
/// Default `agent.api_address`.
pub const DEFAULT_API_ADDRESS: &str = "127.0.0.1:8471";
/// Default `agent.socket`.
pub const DEFAULT_SOCKET: &str = "/run/dso/dso.sock";
/// Default `defaults.strategy`: blue-green, which the engine itself turns into `restart` with
/// hold for a container that must not run twice (a writable volume or bind mount).
pub const DEFAULT_STRATEGY: Strategy = Strategy::Rolling;
/// Default `defaults.health_timeout`: how long a new container may take to become healthy.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `defaults.drain_timeout`: how long old connections may keep running after a swap.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest health or drain timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default signal of the `signal` strategy.
pub const DEFAULT_SIGNAL: &str = "SIGHUP";
/// Signals the `signal` strategy may send.
pub const SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGWINCH",
];
/// Shortest webhook token, in bytes.
pub const MIN_WEBHOOK_TOKEN_LEN: usize = 16;
/// Most versions a local vault may keep per secret.
pub const MAX_HISTORY: u32 = 1000;

/// A problem found while resolving, before it is given a line and column.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Where.
    pub key: KeyPath,
    /// What is wrong and what was expected.
    pub message: String,
}

/// The effective configuration.
#[derive(Debug)]
pub struct Config {
    /// Schema version (1).
    pub version: u32,
    /// `local` or `agent`.
    pub mode: Mode,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Agent settings.
    pub agent: Agent,
    /// Defaults for secrets.
    pub defaults: Defaults,
    /// Secrets with defaults applied.
    pub secrets: Vec<Secret>,
}

/// Typed settings of one provider.
#[derive(Debug)]
pub enum ProviderSettings {
    /// The local vault.
    Local {
        /// Versions kept per secret.
        history: usize,
    },
    /// HashiCorp Vault / OpenBao.
    Vault {
        /// Base URL.
        address: String,
        /// Token; when absent the agent will use `VAULT_TOKEN`.
        token: Option<SecretValue>,
        /// Mount of the KV engine.
        mount: String,
        /// KV engine version, 1 or 2.
        kv_version: u8,
        /// Enterprise namespace.
        namespace: Option<String>,
    },
    /// AWS Secrets Manager.
    Aws {
        /// Region; when absent the SDK's default chain decides.
        region: Option<String>,
        /// Endpoint URL override.
        endpoint: Option<String>,
        /// Shared-config profile.
        profile: Option<String>,
    },
    /// Azure Key Vault.
    Azure {
        /// `https://NAME.vault.azure.net`.
        vault_url: String,
        /// Tenant of the service principal.
        tenant_id: Option<String>,
        /// Client id of the service principal.
        client_id: Option<String>,
        /// Client secret of the service principal.
        client_secret: Option<SecretValue>,
    },
}

impl ProviderSettings {
    /// The `type` keyword.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Self::Local { .. } => ProviderKind::Local,
            Self::Vault { .. } => ProviderKind::Vault,
            Self::Aws { .. } => ProviderKind::Aws,
            Self::Azure { .. } => ProviderKind::Azure,
        }
    }
}

/// `agent:`.
#[derive(Debug)]
pub struct Agent {
    /// Base interval between version checks of one secret.
    pub watch_interval: Duration,
    /// Address of the REST API.
    pub api_address: SocketAddr,
    /// Path of the IPC socket for the CLI.
    pub socket: PathBuf,
    /// Whether `POST /webhook` triggers a refresh.
    pub webhook_enabled: bool,
    /// Bearer token the webhook requires.
    pub webhook_token: Option<SecretValue>,
}

/// `defaults:`.
#[derive(Debug)]
pub struct Defaults {
    /// How secrets reach containers.
    pub inject: Inject,
    /// Rotation strategy.
    pub strategy: Strategy,
    /// Signal of the `signal` strategy.
    pub signal: String,
    /// Health timeout.
    pub health_timeout: Duration,
    /// Drain timeout.
    pub drain_timeout: Duration,
}

/// One secret with every setting decided.
#[derive(Debug)]
pub struct Secret {
    /// Path of the secret in its provider.
    pub name: SecretPath,
    /// Provider name (a key of [`Config::providers`]).
    pub provider: String,
    /// How it reaches containers.
    pub inject: Inject,
    /// Target name (variable or file) → field of a JSON secret.
    pub mappings: BTreeMap<String, String>,
    /// Compose services that receive it.
    pub services: Vec<String>,
    /// Labels a container must carry to receive it.
    pub labels: BTreeMap<String, String>,
    /// Rotation strategy.
    pub strategy: Strategy,
    /// Signal of the `signal` strategy.
    pub signal: String,
    /// Health timeout.
    pub health_timeout: Duration,
    /// Drain timeout.
    pub drain_timeout: Duration,
}

/// Builds the typed configuration, or every problem found.
pub fn resolve(
    raw: RawConfig,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Finding>> {
    let mut r = Resolver {
        lookup,
        findings: Vec::new(),
        credentials: Vec::new(),
    };
    let root = KeyPath::root();

    if raw.version != 1 {
        r.problem(
            &root.key("version"),
            format!("unsupported version {}; expected 1", raw.version),
        );
    }

    // An absent `providers:` means the local vault alone, so the smallest file is `version: 1`.
    let providers = match raw.providers {
        Some(providers) => r.providers(&root.key("providers"), providers),
        None => BTreeMap::from([(
            "local".to_owned(),
            ProviderSettings::Local {
                history: DEFAULT_HISTORY,
            },
        )]),
    };
    let agent = r.agent(&root.key("agent"), raw.agent);
    let defaults = r.defaults(&root.key("defaults"), raw.defaults);

    let mut secrets = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, secret) in raw.secrets.into_iter().enumerate() {
        let at = root.key("secrets").index(index);
        if let Some(secret) = r.secret(&at, secret, &providers, &defaults) {
            if !seen.insert((secret.provider.clone(), secret.name.clone())) {
                r.problem(
                    &at.key("name"),
                    format!(
                        "secret `{}` of provider `{}` is listed twice; each may appear once",
                        secret.name, secret.provider
                    ),
                );
            }
            secrets.push(secret);
        }
    }

    if !r.findings.is_empty() {
        return Err(r.scrubbed_findings());
    }
    Ok(Config {
        version: raw.version,
        mode: raw.mode,
        providers,
        agent,
        defaults,
        secrets,
    })
}

struct Resolver<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    findings: Vec<Finding>,
    /// Every credential expanded so far. A problem found in another key may quote text that
    /// came from the same variable (`address: http://${TOKEN}…`); see
    /// [`Self::scrubbed_findings`].
    credentials: Vec<SecretValue>,
}

impl Resolver<'_> {
    /// The findings with every credential's text replaced by `[REDACTED]`, so no message
    /// quotes one, whatever key it is about.
    fn scrubbed_findings(self) -> Vec<Finding> {
        let credentials: Vec<&str> = self
            .credentials
            .iter()
            .filter_map(|c| std::str::from_utf8(c.expose()).ok())
            .filter(|c| !c.is_empty())
            .collect();
        self.findings
            .into_iter()
            .map(|mut finding| {
                for credential in &credentials {
                    if finding.message.contains(credential) {
                        finding.message = finding.message.replace(credential, "[REDACTED]");
                    }
                }
                finding
            })
            .collect()
    }

    fn problem(&mut self, key: &KeyPath, message: String) {
        self.findings.push(Finding {
            key: key.clone(),
            message,
        });
    }

    /// Expands `${VAR}` in one string value.
    fn text(&mut self, key: &KeyPath, raw: &str) -> Option<String> {
        match expand(raw, self.lookup) {
            Ok(text) => Some(text),
            Err(err) => {
                self.problem(key, err.to_string());
                None
            }
        }
    }

    fn opt_text(&mut self, key: &KeyPath, raw: Option<&String>) -> Option<String> {
        raw.and_then(|raw| self.text(key, raw))
    }

    /// A credential: expanded, non-empty, then held as a secret value.
    fn credential(&mut self, key: &KeyPath, raw: Option<&String>) -> Option<SecretValue> {
        let text = self.opt_text(key, raw)?;
        if text.is_empty() {
            self.problem(key, "is empty; remove the key or give a value".into());
            return None;
        }
        let value = SecretValue::from(text);
        self.credentials.push(value.clone());
        Some(value)
    }

    fn duration(&mut self, key: &KeyPath, raw: Option<&String>, default: Duration) -> Duration {
        let Some(text) = self.opt_text(key, raw) else {
            return default;
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => {
                self.problem(key, "must be longer than zero".into());
                default
            }
            Ok(d) => d,
            Err(err) => {
                self.problem(
                    key,
                    format!(
                        "`{text}` is not a duration ({err}); expected e.g. `30s`, `5m`, `1h 30m`"
                    ),
                );
                default
            }
        }
    }

    fn bounded_timeout(
        &mut self,
        key: &KeyPath,
        raw: Option<&String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, raw, default);
        if d > MAX_TIMEOUT {
            self.problem(
                key,
                format!(
                    "must be at most {}",
                    humantime::format_duration(MAX_TIMEOUT)
                ),
            );
        }
        d
    }

    fn signal(&mut self, key: &KeyPath, raw: Option<&String>) -> Option<String> {
        let text = self.opt_text(key, raw)?;
        let upper = text.trim().to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        if SIGNALS.contains(&name.as_str()) {
            Some(name)
        } else {
            self.problem(
                key,
                format!(
                    "`{text}` is not a supported signal; expected one of {}",
                    SIGNALS.join(", ")
                ),
            );
            None
        }
    }

    fn url(&mut self, key: &KeyPath, raw: Option<&String>, https_only: bool) -> Option<String> {
        let text = self.opt_text(key, raw)?;
        match check_url(&text, https_only) {
            Ok(()) => Some(text),
            Err(why) => {
                self.problem(key, why);
                None
            }
        }
    }

    fn providers(
        &mut self,
        at: &KeyPath,
        raw: BTreeMap<String, RawProvider>,
    ) -> BTreeMap<String, ProviderSettings> {
        if raw.is_empty() {
            self.problem(
                at,
                "lists no provider; remove the key to use the local vault alone".into(),
            );
        }
        let mut out = BTreeMap::new();
        let mut local_names = Vec::new();
        for (name, provider) in raw {
            let here = at.key(&name);
            if !is_provider_name(&name) {
                self.problem(
                    &here,
                    format!(
                        "`{name}` is not a valid provider name; use 1 to 63 of a-z 0-9 `_` `-`, \
                         starting with a letter or digit"
                    ),
                );
            }
            if provider.kind == ProviderKind::Local {
                local_names.push(name.clone());
                if local_names.len() > 1 {
                    self.problem(
                        &here.key("type"),
                        format!(
                            "only one provider may have type `local` (there is one vault per \
                             dso home); `{}` is already local",
                            local_names[0]
                        ),
                    );
                }
            }
            let settings = self.provider(&here, provider);
            out.insert(name, settings);
        }
        out
    }

    fn provider(&mut self, at: &KeyPath, p: RawProvider) -> ProviderSettings {
        // Settings of other types are mistakes, reported with the list of the right ones.
        let given: [(&str, bool); 13] = [
            ("history", p.history.is_some()),
            ("address", p.address.is_some()),
            ("token", p.token.is_some()),
            ("mount", p.mount.is_some()),
            ("kv_version", p.kv_version.is_some()),
            ("namespace", p.namespace.is_some()),
            ("region", p.region.is_some()),
            ("endpoint", p.endpoint.is_some()),
            ("profile", p.profile.is_some()),
            ("vault_url", p.vault_url.is_some()),
            ("tenant_id", p.tenant_id.is_some()),
            ("client_id", p.client_id.is_some()),
            ("client_secret", p.client_secret.is_some()),
        ];
        let (type_name, allowed): (&str, &[&str]) = match p.kind {
            ProviderKind::Local => ("local", &["history"]),
            ProviderKind::Vault => (
                "vault",
                &["address", "token", "mount", "kv_version", "namespace"],
            ),
            ProviderKind::Aws => ("aws", &["region", "endpoint", "profile"]),
            ProviderKind::Azure => (
                "azure",
                &["vault_url", "tenant_id", "client_id", "client_secret"],
            ),
        };
        for (key, present) in given {
            if present && !allowed.contains(&key) {
                self.problem(
                    &at.key(key),
                    format!(
                        "`{key}` is not a setting of a `{type_name}` provider; its settings \
                         are: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }

        match p.kind {
            ProviderKind::Local => {
                let history = p.history.unwrap_or(DEFAULT_HISTORY as u32);
                if !(1..=MAX_HISTORY).contains(&history) {
                    self.problem(
                        &at.key("history"),
                        format!("must be between 1 and {MAX_HISTORY}"),
                    );
                }
                ProviderSettings::Local {
                    history: history.clamp(1, MAX_HISTORY) as usize,
                }
            }
            ProviderKind::Vault => {
                if p.address.is_none() {
                    self.problem(
                        at,
                        "a `vault` provider needs `address` (e.g. https://vault.example.com:8200)"
                            .into(),
                    );
                }
                let address = self
                    .url(&at.key("address"), p.address.as_ref(), false)
                    .unwrap_or_default();
                let mount = self
                    .opt_text(&at.key("mount"), p.mount.as_ref())
                    .unwrap_or_else(|| "secret".into());
                if mount.is_empty() || mount.starts_with('/') || mount.ends_with('/') {
                    self.problem(
                        &at.key("mount"),
                        "must be a non-empty path without leading or trailing `/`".into(),
                    );
                }
                let kv_version = p.kv_version.unwrap_or(2);
                if !matches!(kv_version, 1 | 2) {
                    self.problem(
                        &at.key("kv_version"),
                        format!("`{kv_version}` is not a KV engine version; expected 1 or 2"),
                    );
                }
                ProviderSettings::Vault {
                    address,
                    token: self.credential(&at.key("token"), p.token.as_ref()),
                    mount,
                    kv_version,
                    namespace: self.opt_text(&at.key("namespace"), p.namespace.as_ref()),
                }
            }
            ProviderKind::Aws => ProviderSettings::Aws {
                region: self.opt_text(&at.key("region"), p.region.as_ref()),
                endpoint: self.url(&at.key("endpoint"), p.endpoint.as_ref(), false),
                profile: self.opt_text(&at.key("profile"), p.profile.as_ref()),
            },
            ProviderKind::Azure => {
                if p.vault_url.is_none() {
                    self.problem(
                        at,
                        "an `azure` provider needs `vault_url` (e.g. https://NAME.vault.azure.net)"
                            .into(),
                    );
                }
                ProviderSettings::Azure {
                    vault_url: self
                        .url(&at.key("vault_url"), p.vault_url.as_ref(), true)
                        .unwrap_or_default(),
                    tenant_id: self.opt_text(&at.key("tenant_id"), p.tenant_id.as_ref()),
                    client_id: self.opt_text(&at.key("client_id"), p.client_id.as_ref()),
                    client_secret: self
                        .credential(&at.key("client_secret"), p.client_secret.as_ref()),
                }
            }
        }
    }

    fn agent(&mut self, at: &KeyPath, raw: RawAgent) -> Agent {
        let watch_key = at.key("watch_interval");
        let watch_interval = self.duration(
            &watch_key,
            raw.watch_interval.as_ref(),
            DEFAULT_WATCH_INTERVAL,
        );
        if watch_interval < MIN_WATCH_INTERVAL {
            self.problem(
                &watch_key,
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_WATCH_INTERVAL)
                ),
            );
        }

        let api_key = at.key("api_address");
        let api_text = self
            .opt_text(&api_key, raw.api_address.as_ref())
            .unwrap_or_else(|| DEFAULT_API_ADDRESS.into());
        let api_address = match api_text.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => {
                self.problem(
                    &api_key,
                    format!(
                        "`{api_text}` is not an IP address with a port; expected e.g. \
                         `127.0.0.1:8471` or `[::1]:8471`"
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 8471))
            }
        };

        let socket_key = at.key("socket");
        let socket = self
            .opt_text(&socket_key, raw.socket.as_ref())
            .unwrap_or_else(|| DEFAULT_SOCKET.into());
        if !socket.starts_with('/') {
            self.problem(&socket_key, format!("`{socket}` is not an absolute path"));
        }

        let token_key = at.key("webhook").key("token");
        let webhook_token = self.credential(&token_key, raw.webhook.token.as_ref());
        match &webhook_token {
            None if raw.webhook.enabled => self.problem(
                &at.key("webhook").key("enabled"),
                "the webhook is enabled but has no `token`; set `token` (e.g. \
                 `${DSO_WEBHOOK_TOKEN}`)"
                    .into(),
            ),
            Some(token) if token.len() < MIN_WEBHOOK_TOKEN_LEN => self.problem(
                &token_key,
                format!(
                    "is {} bytes long; a webhook token needs at least {MIN_WEBHOOK_TOKEN_LEN}",
                    token.len()
                ),
            ),
            _ => {}
        }

        Agent {
            watch_interval,
            api_address,
            socket: PathBuf::from(socket),
            webhook_enabled: raw.webhook.enabled,
            webhook_token,
        }
    }

    fn defaults(&mut self, at: &KeyPath, raw: RawDefaults) -> Defaults {
        Defaults {
            inject: raw.inject.unwrap_or(Inject::Env),
            strategy: raw.strategy.unwrap_or(DEFAULT_STRATEGY),
            signal: self
                .signal(&at.key("signal"), raw.signal.as_ref())
                .unwrap_or_else(|| DEFAULT_SIGNAL.into()),
            health_timeout: self.bounded_timeout(
                &at.key("health_timeout"),
                raw.health_timeout.as_ref(),
                DEFAULT_HEALTH_TIMEOUT,
            ),
            drain_timeout: self.bounded_timeout(
                &at.key("drain_timeout"),
                raw.drain_timeout.as_ref(),
                DEFAULT_DRAIN_TIMEOUT,
            ),
        }
    }

    fn secret(
        &mut self,
        at: &KeyPath,
        raw: RawSecret,
        providers: &BTreeMap<String, ProviderSettings>,
        defaults: &Defaults,
    ) -> Option<Secret> {
        let name_key = at.key("name");
        let name_text = self.text(&name_key, &raw.name)?;
        let name = match SecretPath::parse(&name_text) {
            Ok(name) => Some(name),
            Err(rule) => {
                self.problem(
                    &name_key,
                    format!("`{name_text}` is not a valid secret path: {rule}"),
                );
                None
            }
        };

        let provider_key = at.key("provider");
        let provider = match self.opt_text(&provider_key, raw.provider.as_ref()) {
            Some(provider) if providers.contains_key(&provider) => Some(provider),
            Some(provider) => {
                let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                self.problem(
                    &provider_key,
                    format!(
                        "provider `{provider}` is not defined under `providers`; defined: {}",
                        known.join(", ")
                    ),
                );
                None
            }
            None if raw.provider.is_some() => None,
            None if providers.len() == 1 => providers.keys().next().cloned(),
            None => {
                let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                self.problem(
                    at,
                    format!(
                        "secret needs `provider`: there are {} providers ({})",
                        known.len(),
                        known.join(", ")
                    ),
                );
                None
            }
        };

        let inject = raw.inject.unwrap_or(defaults.inject);
        let mut mappings = BTreeMap::new();
        for (target, field) in &raw.mappings {
            let here = at.key("mappings").key(target);
            let target_ok = match inject {
                Inject::Env => is_env_name(target),
                Inject::File => is_file_name(target),
            };
            if !target_ok {
                let rule = match inject {
                    Inject::Env => {
                        "an environment variable name (letters, digits, `_`, not starting with \
                         a digit)"
                    }
                    Inject::File => "a file name (letters, digits, `_`, `-`, `.`; not `.` or `..`)",
                };
                self.problem(&here, format!("`{target}` is not {rule}"));
            }
            if let Some(field) = self.text(&here, field) {
                if field.is_empty() {
                    self.problem(
                        &here,
                        "names no field; give the JSON field of the secret to use".into(),
                    );
                }
                mappings.insert(target.clone(), field);
            }
        }

        let mut services = Vec::new();
        for (index, service) in raw.targets.services.iter().enumerate() {
            let here = at.key("targets").key("services").index(index);
            if let Some(service) = self.text(&here, service) {
                if !is_service_name(&service) {
                    self.problem(
                        &here,
                        format!(
                            "`{service}` is not a compose service name (letters, digits, `_`, \
                             `-`, `.`)"
                        ),
                    );
                }
                services.push(service);
            }
        }
        let mut labels = BTreeMap::new();
        for (label, value) in &raw.targets.labels {
            let here = at.key("targets").key("labels").key(label);
            if label.is_empty() {
                self.problem(&here, "label names must not be empty".into());
            }
            if let Some(value) = self.text(&here, value) {
                labels.insert(label.clone(), value);
            }
        }

        let rotation = at.key("rotation");
        let strategy = raw.rotation.strategy.unwrap_or(defaults.strategy);
        let signal = self.signal(&rotation.key("signal"), raw.rotation.signal.as_ref());
        if signal.is_some() && strategy != Strategy::Signal {
            self.problem(
                &rotation.key("signal"),
                "is only used by strategy `signal`; remove it or set `strategy: signal`".into(),
            );
        }
        // `signal` rewrites files in place; an environment cannot change without a new
        // container, so every rotation of an env secret would fail.
        if strategy == Strategy::Signal && inject == Inject::Env {
            let place = if raw.rotation.strategy.is_some() {
                rotation.key("strategy")
            } else {
                at.clone()
            };
            self.problem(
                &place,
                "strategy `signal` cannot change an environment value (the secret is injected \
                 as env); set `inject: file`, or use `restart` or `rolling`"
                    .into(),
            );
        }
        let health_timeout = self.bounded_timeout(
            &rotation.key("health_timeout"),
            raw.rotation.health_timeout.as_ref(),
            defaults.health_timeout,
        );
        let drain_timeout = self.bounded_timeout(
            &rotation.key("drain_timeout"),
            raw.rotation.drain_timeout.as_ref(),
            defaults.drain_timeout,
        );

        Some(Secret {
            name: name?,
            provider: provider?,
            inject,
            mappings,
            services,
            labels,
            strategy,
            signal: signal.unwrap_or_else(|| defaults.signal.clone()),
            health_timeout,
            drain_timeout,
        })
    }
}

/// Checks an `http(s)://host[:port][/path]` URL; `https_only` refuses plain http. Plain http
/// is accepted only for loopback hosts, because credentials travel over it.
fn check_url(text: &str, https_only: bool) -> Result<(), String> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| format!("`{text}` is not a URL; expected e.g. `https://host:port`"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "must not contain credentials (`user:pass@`); use the provider's credential settings"
                .into(),
        );
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() || text.chars().any(char::is_whitespace) {
        return Err(format!("`{text}` has no host or contains spaces"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if https_only => Err(format!("`{text}` must use https")),
        "http" if matches!(host, "localhost" | "127.0.0.1" | "::1") => Ok(()),
        "http" => Err(format!(
            "`{text}` must use https (plain http is allowed only for localhost, 127.0.0.1 and ::1)"
        )),
        _ => Err(format!("`{text}` has scheme `{scheme}`; expected https")),
    }
}

fn is_provider_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://vault.example.com:8200", false).is_ok());
        assert!(check_url("http://127.0.0.1:8200/", false).is_ok());
        assert!(check_url("http://[::1]:8200", false).is_ok());
        assert!(
            check_url("http://vault.example.com", false)
                .unwrap_err()
                .contains("https")
        );
        assert!(check_url("http://localhost", true).is_err());
        assert!(
            check_url("https://u:p@host", false)
                .unwrap_err()
                .contains("credentials")
        );
        assert!(
            check_url("vault.example.com", false)
                .unwrap_err()
                .contains("not a URL")
        );
        assert!(check_url("ftp://x", false).is_err());
    }

    #[test]
    fn names() {
        assert!(is_provider_name("aws-prod_2"));
        assert!(!is_provider_name("AWS"));
        assert!(!is_provider_name("-x"));
        assert!(is_env_name("_DB_PASSWORD1"));
        assert!(!is_env_name("1DB"));
        assert!(!is_env_name("DB-PASS"));
        assert!(is_file_name("tls.key"));
        assert!(!is_file_name(".."));
        assert!(!is_file_name("a/b"));
    }
}
