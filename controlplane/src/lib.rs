//! The dso control plane library: configuration (`dso.yaml`), the local encrypted vault, and,
//! in later stages, providers, change detection and rotation for the `dso-agent` binary.
//!
//! The CLI (`docker-dso`) links this library for the vault and the configuration, so the agent
//! and the CLI read the same files with the same rules.

pub mod agent;
pub mod api;
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
