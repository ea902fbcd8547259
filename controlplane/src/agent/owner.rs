//! Which managed containers belong to this agent. One Docker daemon may serve several agents
//! (a root agent and per-user agents in local mode): each manages only the containers that
//! `docker dso up` labelled with its runtime directory (`dso.runtime`), so an agent never
//! rotates, restores or routes another user's services.
//!
//! Containers from before the label existed carry none; they belong to the root agent of
//! the default runtime directory (`/run/dso`) only.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::docker::{Docker, DockerError, MANAGED_LABEL};
use crate::files::ROOT_RUNTIME_DIR;
use crate::rotation::{PROJECT_LABEL, SERVICE_LABEL};

/// Label: the runtime directory of the `up` that created the container.
pub const RUNTIME_LABEL: &str = "dso.runtime";

/// Whether a container with `labels` belongs to the agent of `runtime`.
pub fn owns(labels: &HashMap<String, String>, runtime: &Path) -> bool {
    match labels.get(RUNTIME_LABEL) {
        Some(dir) => Path::new(dir) == runtime,
        None => runtime == Path::new(ROOT_RUNTIME_DIR),
    }
}

/// `project/service` of every managed container this agent owns.
pub async fn owned_services(
    docker: &Docker,
    runtime: &Path,
) -> Result<BTreeSet<String>, DockerError> {
    let containers = docker.list_labelled(MANAGED_LABEL, Some("true")).await?;
    Ok(containers
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            if !owns(&labels, runtime) {
                return None;
            }
            Some(format!(
                "{}/{}",
                labels.get(PROJECT_LABEL)?,
                labels.get(SERVICE_LABEL)?
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_belong_to_the_agent_of_their_runtime_directory() {
        let mine = Path::new("/run/user/1000/dso");
        let labelled = |dir: &str| HashMap::from([(RUNTIME_LABEL.to_owned(), dir.to_owned())]);
        assert!(owns(&labelled("/run/user/1000/dso"), mine));
        assert!(!owns(&labelled("/run/user/1001/dso"), mine));
        assert!(!owns(&HashMap::new(), mine), "unlabelled: root agent only");
        assert!(owns(&HashMap::new(), Path::new("/run/dso")));
        assert!(!owns(
            &labelled("/run/user/1000/dso"),
            Path::new("/run/dso")
        ));
    }
}
