//! `dso.yaml` as written: serde structs that mirror the file one to one.
//!
//! These types catch unknown keys (`deny_unknown_fields`), wrong YAML types and unknown
//! keywords, with the parser's line and column. Free-form strings stay strings here: `${VAR}`
//! expansion and checks of durations, addresses and references happen in `model`, which turns
//! this into the typed [`super::Config`]. Every key is documented in `docs/configuration.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: u32,
    #[serde(default)]
    pub mode: Mode,
    pub providers: Option<BTreeMap<String, RawProvider>>,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub secrets: Vec<RawSecret>,
}

/// How dso runs on this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The CLI resolves secrets itself; no agent.
    #[default]
    Local,
    /// A `dso-agent` service resolves and rotates secrets.
    Agent,
}

/// The kind of secret store behind a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The local encrypted vault.
    Local,
    /// HashiCorp Vault or OpenBao, KV v1 or v2.
    Vault,
    /// AWS Secrets Manager.
    Aws,
    /// Azure Key Vault.
    Azure,
}

/// One provider with the settings of every type; `model` checks which belong to its type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    // local
    pub history: Option<u32>,
    // vault
    pub address: Option<String>,
    pub token: Option<String>,
    pub mount: Option<String>,
    pub kv_version: Option<u8>,
    pub namespace: Option<String>,
    // aws
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    // azure
    pub vault_url: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// `agent:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub watch_interval: Option<String>,
    pub api_address: Option<String>,
    pub socket: Option<String>,
    #[serde(default)]
    pub webhook: RawWebhook,
}

/// `agent.webhook:`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    #[serde(default)]
    pub enabled: bool,
    pub token: Option<String>,
}

/// How a secret reaches a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Inject {
    /// An environment variable.
    Env,
    /// A file on tmpfs.
    File,
}

/// How containers are replaced when a secret changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Start new, health-check, switch traffic, drain, stop old.
    Rolling,
    /// Stop old, start new, while the proxy holds new connections.
    Restart,
    /// Rewrite the files, then send a signal.
    Signal,
    /// Update the cache only.
    None,
}

/// `defaults:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub inject: Option<Inject>,
    pub strategy: Option<Strategy>,
    pub signal: Option<String>,
    pub health_timeout: Option<String>,
    pub drain_timeout: Option<String>,
}

/// One entry of `secrets:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub name: String,
    pub provider: Option<String>,
    pub inject: Option<Inject>,
    #[serde(default)]
    pub mappings: BTreeMap<String, String>,
    #[serde(default)]
    pub targets: RawTargets,
    #[serde(default)]
    pub rotation: RawRotation,
}

/// `secrets[].targets:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargets {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `secrets[].rotation:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRotation {
    pub strategy: Option<Strategy>,
    pub signal: Option<String>,
    pub health_timeout: Option<String>,
    pub drain_timeout: Option<String>,
}

/// Shown for a credential in `Debug` output: raw credentials may be literal values.
const HIDDEN: &str = "[REDACTED]";

fn hidden(value: &Option<String>) -> Option<&'static str> {
    value.as_ref().map(|_| HIDDEN)
}

impl std::fmt::Debug for RawProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawProvider")
            .field("kind", &self.kind)
            .field("history", &self.history)
            .field("address", &self.address)
            .field("token", &hidden(&self.token))
            .field("mount", &self.mount)
            .field("kv_version", &self.kv_version)
            .field("namespace", &self.namespace)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("vault_url", &self.vault_url)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &hidden(&self.client_secret))
            .finish()
    }
}

impl std::fmt::Debug for RawWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWebhook")
            .field("enabled", &self.enabled)
            .field("token", &hidden(&self.token))
            .finish()
    }
}
