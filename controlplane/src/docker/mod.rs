//! The Docker Engine as the rotation engine uses it: a thin wrapper over bollard that names
//! the step and the container in every error and turns "no such container" into `None`.
//!
//! The daemon here speaks API 1.41 while bollard 0.21 defaults to 1.53, so [`Docker::connect`]
//! negotiates the version once. Inspect results hold the containers' environments, which may
//! contain secret values: nothing here logs or formats a container config.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EndpointSettings,
    NetworkConnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
    RenameContainerOptions, StopContainerOptions,
};

/// Label every container `docker dso up` manages carries.
pub const MANAGED_LABEL: &str = "dso.managed";

/// A Docker call that failed. Names the step and the container, never a config value.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The daemon could not be reached or its version negotiated.
    #[error("connecting to the Docker daemon failed")]
    Connect(#[source] BollardError),

    /// One call failed.
    #[error("docker {step} of {container} failed")]
    Call {
        /// What was attempted (`inspect`, `create`, `start`, ...).
        step: &'static str,
        /// Container id or name.
        container: String,
        /// Cause.
        #[source]
        source: BollardError,
    },
}

/// A connected Docker client.
#[derive(Clone, Debug)]
pub struct Docker {
    inner: bollard::Docker,
}

fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Docker {
    /// Connects to the local daemon (`DOCKER_HOST` or `/var/run/docker.sock`) and negotiates
    /// the API version.
    pub async fn connect() -> Result<Self, DockerError> {
        let inner = bollard::Docker::connect_with_local_defaults()
            .map_err(DockerError::Connect)?
            .negotiate_version()
            .await
            .map_err(DockerError::Connect)?;
        Ok(Self { inner })
    }

    fn call(step: &'static str, container: &str) -> impl FnOnce(BollardError) -> DockerError {
        let container = container.to_owned();
        move |source| DockerError::Call {
            step,
            container,
            source,
        }
    }

    /// Every container (running or not) with `label=value` (or just `label` when `value` is
    /// `None`).
    pub async fn list_labelled(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filter = match value {
            Some(value) => format!("{label}={value}"),
            None => label.to_owned(),
        };
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), vec![filter])])),
            ..Default::default()
        };
        self.inner
            .list_containers(Some(options))
            .await
            .map_err(Self::call("list", label))
    }

    /// The container's inspect result, or `None` when it does not exist.
    pub async fn inspect(
        &self,
        container: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self.inner.inspect_container(container, None).await {
            Ok(found) => Ok(Some(found)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(Self::call("inspect", container)(error)),
        }
    }

    /// The id of an image by name or id, or `None` when the daemon does not have it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        match self.inner.inspect_image(image).await {
            Ok(found) => Ok(found.id),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(Self::call("image inspect", image)(error)),
        }
    }

    /// Creates a container named `name`; returns its id.
    pub async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let created = self
            .inner
            .create_container(Some(options), body)
            .await
            .map_err(Self::call("create", name))?;
        Ok(created.id)
    }

    /// Attaches a (created) container to a further network.
    pub async fn connect_network(
        &self,
        network: &str,
        container: &str,
        endpoint: EndpointSettings,
    ) -> Result<(), DockerError> {
        let request = NetworkConnectRequest {
            container: container.to_owned(),
            endpoint_config: Some(endpoint),
        };
        self.inner
            .connect_network(network, request)
            .await
            .map_err(Self::call("network connect", container))
    }

    /// Starts a container (a running one is fine).
    pub async fn start(&self, container: &str) -> Result<(), DockerError> {
        match self.inner.start_container(container, None).await {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(error) => Err(Self::call("start", container)(error)),
        }
    }

    /// Stops a container, waiting up to `timeout_secs` before SIGKILL (`None`: the
    /// container's own stop timeout). A stopped or missing container is fine.
    pub async fn stop(
        &self,
        container: &str,
        timeout_secs: Option<i64>,
    ) -> Result<(), DockerError> {
        let options = StopContainerOptions {
            t: timeout_secs.map(|t| t.clamp(0, i64::from(i32::MAX)) as i32),
            ..Default::default()
        };
        match self.inner.stop_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(error) => Err(Self::call("stop", container)(error)),
        }
    }

    /// Removes a container (forcing a running one), with its anonymous volumes when
    /// `volumes`. A missing container is fine.
    pub async fn remove(&self, container: &str, volumes: bool) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: volumes,
            ..Default::default()
        };
        match self.inner.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(Self::call("remove", container)(error)),
        }
    }

    /// Renames a container.
    pub async fn rename(&self, container: &str, name: &str) -> Result<(), DockerError> {
        let options = RenameContainerOptions {
            name: name.to_owned(),
        };
        self.inner
            .rename_container(container, options)
            .await
            .map_err(Self::call("rename", container))
    }

    /// Sends `signal` (e.g. `SIGHUP`) to the container's main process.
    pub async fn kill(&self, container: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptions {
            signal: signal.to_owned(),
        };
        self.inner
            .kill_container(container, Some(options))
            .await
            .map_err(Self::call("kill", container))
    }
}
