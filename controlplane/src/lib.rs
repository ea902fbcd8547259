//! The dso control plane library: configuration (`dso.yaml`), the local encrypted vault, the
//! reference grammar, and the agent's parts (change detection, the rotation engine and its
//! journal, the REST API and the IPC socket) for the `dso-agent` binary.
//!
//! The CLI (`docker-dso`) links this library for the vault, the configuration, the secret
//! files and the agent's IPC client, so the agent and the CLI read the same files with the
//! same rules.

pub mod agent;
pub mod api;
pub mod atomic;
pub mod config;
pub mod detect;
pub mod docker;
pub mod events;
pub mod files;
pub mod home;
pub mod ipc;
pub mod journal;
pub mod reference;
pub mod resolve;
pub mod rotation;
pub mod secret;
pub mod vault;

/// An error and its causes on one line, `: `-separated: the form of every `error` log field
/// and of rotation failure reasons.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
