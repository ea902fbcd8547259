//! Test support shared by the end-to-end tests of the root package: the Docker CLI wrapper with
//! labelled, self-removing containers and networks ([`docker`]), the locally built test images
//! ([`images`]) and a loopback-only HTTP client ([`http`]). See `tests/README.md`.
//!
//! Each test binary includes this module with `mod support;` and uses a different part of it,
//! hence the `dead_code` allowance.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the support layer"
)]

pub mod agent;
pub mod docker;
pub mod dso;
pub mod http;
pub mod images;
pub mod rotation_agent;
