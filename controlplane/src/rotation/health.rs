//! When a new container counts as healthy: Docker's HEALTHCHECK status when the image (or the
//! service) defines one; otherwise a TCP connect to a proxied port; otherwise "running and
//! not restarted for a settle time". Always bounded by the health timeout.

use std::time::Duration;

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use tokio::time::Instant;

use super::container;
use crate::docker::{Docker, DockerError};

/// Pause between two looks at the container; a poll interval, not an ordering sleep.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long one TCP probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a single look at the container says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy.
    Healthy,
    /// Not yet; look again.
    Waiting,
    /// Will never become healthy (exited, restarting, unhealthy).
    Failed(String),
}

/// The verdict of Docker's own state: `Some` when it decides alone (HEALTHCHECK present, or
/// the container is not running), `None` when a probe or the settle time must decide.
pub fn docker_verdict(inspect: &ContainerInspectResponse, restarts_before: i64) -> Option<Verdict> {
    let state = inspect.state.as_ref()?;
    if state.restarting == Some(true) || inspect.restart_count.unwrap_or(0) > restarts_before {
        return Some(Verdict::Failed("the container restarted".into()));
    }
    if state.running != Some(true) {
        let code = state.exit_code.unwrap_or_default();
        return Some(Verdict::Failed(format!(
            "the container exited with code {code}"
        )));
    }
    match state.health.as_ref().and_then(|h| h.status) {
        Some(HealthStatusEnum::HEALTHY) => Some(Verdict::Healthy),
        Some(HealthStatusEnum::UNHEALTHY) => {
            Some(Verdict::Failed("its HEALTHCHECK reports unhealthy".into()))
        }
        Some(HealthStatusEnum::STARTING) => Some(Verdict::Waiting),
        _ => None,
    }
}

/// Waits until the container is healthy. `targets` are its proxied container ports (probed
/// by TCP connect when there is no HEALTHCHECK), `default_network` the project's network.
pub async fn wait_healthy(
    docker: &Docker,
    container: &str,
    targets: &[u16],
    default_network: &str,
    timeout: Duration,
    settle: Duration,
) -> Result<Result<(), String>, DockerError> {
    let deadline = Instant::now() + timeout;
    let mut restarts_before = None;
    let mut running_since: Option<Instant> = None;
    loop {
        let Some(inspect) = docker.inspect(container).await? else {
            return Ok(Err("the container disappeared".into()));
        };
        let restarts = *restarts_before.get_or_insert(inspect.restart_count.unwrap_or(0));
        let verdict = match docker_verdict(&inspect, restarts) {
            Some(verdict) => verdict,
            None if !targets.is_empty() => probe(&inspect, targets, default_network).await,
            None => {
                let since = *running_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settle {
                    Verdict::Healthy
                } else {
                    Verdict::Waiting
                }
            }
        };
        match verdict {
            Verdict::Healthy => return Ok(Ok(())),
            Verdict::Failed(reason) => return Ok(Err(reason)),
            Verdict::Waiting if Instant::now() >= deadline => {
                return Ok(Err(format!("not healthy within {timeout:?}")));
            }
            Verdict::Waiting => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// A TCP connect to every proxied port of the container.
async fn probe(inspect: &ContainerInspectResponse, targets: &[u16], network: &str) -> Verdict {
    for target in targets {
        let Some((_, address)) = container::address(inspect, None, network, *target) else {
            return Verdict::Failed("the container has no network address".into());
        };
        let connect = tokio::net::TcpStream::connect(address.as_str());
        match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
            Ok(Ok(_)) => {}
            _ => return Verdict::Waiting,
        }
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerState, Health};

    use super::*;

    fn with_state(
        running: bool,
        health: Option<HealthStatusEnum>,
        restarts: i64,
    ) -> ContainerInspectResponse {
        ContainerInspectResponse {
            restart_count: Some(restarts),
            state: Some(ContainerState {
                running: Some(running),
                exit_code: Some(3),
                health: health.map(|status| Health {
                    status: Some(status),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn docker_state_decides_when_it_can() {
        use HealthStatusEnum::*;
        assert_eq!(
            docker_verdict(&with_state(true, Some(HEALTHY), 0), 0),
            Some(Verdict::Healthy)
        );
        assert_eq!(
            docker_verdict(&with_state(true, Some(STARTING), 0), 0),
            Some(Verdict::Waiting)
        );
        assert!(matches!(
            docker_verdict(&with_state(true, Some(UNHEALTHY), 0), 0),
            Some(Verdict::Failed(_))
        ));
        assert!(matches!(
            docker_verdict(&with_state(false, None, 0), 0),
            Some(Verdict::Failed(r)) if r.contains("code 3")
        ));
        assert!(matches!(
            docker_verdict(&with_state(true, None, 1), 0),
            Some(Verdict::Failed(r)) if r.contains("restarted")
        ));
        // No HEALTHCHECK: a probe or the settle time decides.
        assert_eq!(docker_verdict(&with_state(true, None, 0), 0), None);
        assert_eq!(docker_verdict(&with_state(true, Some(NONE), 0), 0), None);
    }
}
