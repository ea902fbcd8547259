//! The compose project as compose itself normalises it (`config`), and the edits dso makes to
//! it before handing it back to compose on stdin.
//!
//! Loading runs `config` with the user's `-f`, `-p`, `--profile`, `--env-file` and
//! `--project-directory`, so extends, anchors, overrides, profiles, `env_file` and variable
//! interpolation are compose's own. The output has absolute paths (build contexts, bind
//! mounts), writes every literal `$` as `$$`, and has `environment:` as a map. The model is
//! kept as a JSON value and only the parts dso owns are touched.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

use super::ComposeError;
use super::invocation::ProjectOptions;
use super::tool::Tool;

/// A loaded project. After the plan is applied its model holds resolved secret values, so
/// its `Debug` output leaves the model out.
pub struct Project {
    /// The compose program.
    pub tool: Tool,
    /// The project name compose uses (`-p`, `COMPOSE_PROJECT_NAME`, or the directory name).
    pub name: String,
    /// The project directory: `--project-directory`, else the first file's directory, else
    /// the working directory.
    pub directory: PathBuf,
    /// The options the user gave, passed again when the project runs.
    pub options: ProjectOptions,
    /// The normalised project.
    pub model: Value,
}

impl std::fmt::Debug for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Project")
            .field("tool", &self.tool)
            .field("name", &self.name)
            .field("directory", &self.directory)
            .field("options", &self.options)
            .field("model", &"[not shown: may hold secret values]")
            .finish()
    }
}

/// A published port of a service as compose normalised it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// Host address, if one was given.
    pub host_ip: Option<String>,
    /// Published host port (may be a range or empty).
    pub published: Option<String>,
    /// Container port (may be a range).
    pub target: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

impl Project {
    /// Runs `config` and loads its output.
    pub fn load(tool: Tool, options: &ProjectOptions) -> Result<Self, ComposeError> {
        let directory = project_directory(options)?;

        let mut command = tool.command();
        add_options(&mut command, options, false);
        command.arg("config");
        if tool == Tool::V2 {
            command.args(["--format", "json"]);
        }
        let output =
            command
                .stdin(Stdio::null())
                .output()
                .map_err(|source| ComposeError::Spawn {
                    tool: tool.name(),
                    source,
                })?;
        if !output.status.success() {
            return Err(ComposeError::Config {
                tool: tool.name(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        let model: Value = match tool {
            Tool::V2 => {
                serde_json::from_slice(&output.stdout).map_err(|e| ComposeError::ConfigOutput {
                    reason: e.to_string(),
                })?
            }
            Tool::V1 => {
                let yaml: yaml_serde::Value =
                    yaml_serde::from_slice(&output.stdout).map_err(|e| {
                        ComposeError::ConfigOutput {
                            reason: e.to_string(),
                        }
                    })?;
                serde_json::to_value(yaml).map_err(|e| ComposeError::ConfigOutput {
                    reason: e.to_string(),
                })?
            }
        };
        if !model.get("services").is_some_and(Value::is_object) {
            return Err(ComposeError::ConfigOutput {
                reason: "it has no `services` mapping".into(),
            });
        }

        let name = match model.get("name").and_then(Value::as_str) {
            Some(name) => name.to_owned(),
            None => v1_project_name(options, &directory),
        };
        // The project command runs in the project directory, so a relative --env-file must be
        // made absolute against the directory it was given in.
        let mut options = options.clone();
        if let Some(env_file) = &options.env_file {
            let cwd = std::env::current_dir().map_err(ComposeError::WorkingDirectory)?;
            options.env_file = Some(cwd.join(env_file));
        }
        Ok(Self {
            tool,
            name,
            directory,
            options,
            model,
        })
    }

    /// Service names in order.
    pub fn service_names(&self) -> Vec<String> {
        self.services()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn services(&self) -> Option<&Map<String, Value>> {
        self.model.get("services").and_then(Value::as_object)
    }

    /// One service's definition.
    pub fn service(&self, name: &str) -> Option<&Map<String, Value>> {
        self.services()?.get(name)?.as_object()
    }

    /// One service's definition, for editing.
    pub fn service_mut(&mut self, name: &str) -> Option<&mut Map<String, Value>> {
        self.model
            .get_mut("services")?
            .as_object_mut()?
            .get_mut(name)?
            .as_object_mut()
    }

    /// Removes the services whose `profiles:` are all inactive, as compose v2's `config`
    /// already does and v1's does not: active are `--profile` values and `compose_profiles`
    /// (the value of `COMPOSE_PROFILES`, a comma list), `*` activates all, and a service
    /// named in `named` (the service arguments of `up`) is kept, as compose starts it anyway.
    /// Returns the removed names.
    // LIMITATION: a COMPOSE_PROFILES set only in the project's `.env` is not seen with v1 —
    // reading `.env` the way v1 does would lift it.
    pub fn drop_inactive_profiles(
        &mut self,
        named: &[String],
        compose_profiles: Option<&str>,
    ) -> Vec<String> {
        let mut active: Vec<String> = self.options.profiles.clone();
        if let Some(list) = compose_profiles {
            active.extend(list.split(',').map(|p| p.trim().to_owned()));
        }
        if active.iter().any(|p| p == "*") {
            return Vec::new();
        }
        let Some(services) = self
            .model
            .get_mut("services")
            .and_then(Value::as_object_mut)
        else {
            return Vec::new();
        };
        let inactive: Vec<String> = services
            .iter()
            .filter(|(name, service)| {
                let Some(Value::Array(profiles)) = service.get("profiles") else {
                    return false;
                };
                !profiles.is_empty()
                    && !named.contains(name)
                    && !profiles
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|p| active.iter().any(|a| a == p))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &inactive {
            services.remove(name);
        }
        inactive
    }

    /// The Docker name of the project's `default` network: `networks.default.name` when
    /// `config` gives one (v2 always does; v1 only when the file sets it), else
    /// `PROJECT_default`, the name both versions give it.
    pub fn default_network(&self) -> String {
        self.model
            .pointer("/networks/default/name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("{}_default", self.name), str::to_owned)
    }

    /// A command that runs compose on this project with the project text on stdin:
    /// `-p NAME --project-directory DIR [--profile P].. [--env-file F] -f - ARGS`, in the
    /// project directory.
    pub fn command(&self, args: &[OsString]) -> Command {
        let mut command = self.tool.command();
        // v1 records its working directory, not --project-directory, as the project's
        // working_dir label when the file comes from stdin; running in the project directory
        // makes both versions agree.
        command.current_dir(&self.directory);
        command.arg("-p").arg(&self.name);
        command.arg("--project-directory").arg(&self.directory);
        let mut options = self.options.clone();
        options.files.clear();
        options.project_name = None;
        options.project_directory = None;
        add_options(&mut command, &options, true);
        command.args(args);
        command
    }
}

/// `environment:` of a service as (name, value) pairs; `None` values are variables passed
/// through from compose's own environment.
pub fn environment(service: &Map<String, Value>) -> Vec<(String, Option<String>)> {
    match service.get("environment") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| (k.clone(), scalar_text(v)))
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (item.to_owned(), None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `labels:` of a service as a map (list form converted).
pub fn labels(service: &Map<String, Value>) -> Map<String, Value> {
    match service.get("labels") {
        Some(Value::Object(map)) => map.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), Value::String(v.to_owned()))
            })
            .collect(),
        _ => Map::new(),
    }
}

/// A label's text (compose writes `$` as `$$` there too).
pub fn label(service: &Map<String, Value>, key: &str) -> Option<String> {
    labels(service)
        .get(key)
        .and_then(scalar_text)
        .map(|text| super::render::unescape_dollars(&text))
}

/// Sets `environment.NAME` (converting a list to a map first).
pub fn set_environment(service: &mut Map<String, Value>, name: &str, value: String) {
    let mut map: Map<String, Value> = environment(service)
        .into_iter()
        .map(|(k, v)| (k, v.map_or(Value::Null, Value::String)))
        .collect();
    map.insert(name.to_owned(), Value::String(value));
    service.insert("environment".into(), Value::Object(map));
}

/// Adds labels (converting a list to a map first).
pub fn add_labels(service: &mut Map<String, Value>, added: Vec<(String, String)>) {
    let mut map = labels(service);
    for (k, v) in added {
        map.insert(k, Value::String(v));
    }
    service.insert("labels".into(), Value::Object(map));
}

/// Published ports of a service.
pub fn ports(service: &Map<String, Value>) -> Vec<(Value, Option<PortSpec>)> {
    let Some(Value::Array(items)) = service.get("ports") else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| (item.clone(), parse_port(item)))
        .collect()
}

/// Parses a short (`[IP:][HOST:]CONTAINER[/PROTO]`) or long (`target`, `published`,
/// `host_ip`, `protocol`) port entry.
pub fn parse_port(item: &Value) -> Option<PortSpec> {
    match item {
        Value::String(text) => {
            let (spec, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
            let (rest, target) = spec.rsplit_once(':').unwrap_or(("", spec));
            let (host_ip, published) = match rest.rsplit_once(':') {
                Some((ip, published)) => (Some(ip), published),
                None => (None, rest),
            };
            let host_ip = host_ip
                .map(|ip| ip.trim_start_matches('[').trim_end_matches(']').to_owned())
                .filter(|ip| !ip.is_empty());
            Some(PortSpec {
                host_ip,
                published: Some(published.to_owned()).filter(|p| !p.is_empty()),
                target: target.to_owned(),
                protocol: protocol.to_owned(),
            })
        }
        Value::Object(map) => Some(PortSpec {
            host_ip: map
                .get("host_ip")
                .and_then(scalar_text)
                .filter(|s| !s.is_empty()),
            published: map
                .get("published")
                .and_then(scalar_text)
                .filter(|s| !s.is_empty()),
            target: map.get("target").and_then(scalar_text)?,
            protocol: map
                .get("protocol")
                .and_then(scalar_text)
                .unwrap_or_else(|| "tcp".into()),
        }),
        _ => None,
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn add_options(command: &mut Command, options: &ProjectOptions, stdin: bool) {
    for file in &options.files {
        command.arg("-f").arg(file);
    }
    if stdin {
        command.args(["-f", "-"]);
    }
    if let Some(name) = &options.project_name {
        command.arg("-p").arg(name);
    }
    for profile in &options.profiles {
        command.arg("--profile").arg(profile);
    }
    if let Some(env_file) = &options.env_file {
        command.arg("--env-file").arg(env_file);
    }
    if let Some(dir) = &options.project_directory {
        command.arg("--project-directory").arg(dir);
    }
}

fn project_directory(options: &ProjectOptions) -> Result<PathBuf, ComposeError> {
    let cwd = std::env::current_dir().map_err(ComposeError::WorkingDirectory)?;
    let dir = match (&options.project_directory, options.files.first()) {
        (Some(dir), _) => cwd.join(dir),
        (None, Some(file)) if file != Path::new("-") => cwd
            .join(file)
            .parent()
            .map_or_else(|| cwd.clone(), Path::to_path_buf),
        _ => cwd,
    };
    Ok(dir)
}

/// The project name as compose v1 derives it: `-p`, else `COMPOSE_PROJECT_NAME`, else the
/// project directory's name, lower-cased, keeping only `a-z 0-9 _ -`.
// LIMITATION: a COMPOSE_PROJECT_NAME set only in the project's `.env` file is not seen with
// compose v1 (v2 reports the name itself) — reading `.env` the way v1 does would lift it.
fn v1_project_name(options: &ProjectOptions, directory: &Path) -> String {
    let raw = options
        .project_name
        .clone()
        .or_else(|| {
            std::env::var("COMPOSE_PROJECT_NAME")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| {
            directory
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    raw.to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn short_port_forms() {
        let cases = [
            (
                "127.0.0.1:15432:5432/tcp",
                Some("127.0.0.1"),
                Some("15432"),
                "5432",
                "tcp",
            ),
            ("8080:80", None, Some("8080"), "80", "tcp"),
            ("80", None, None, "80", "tcp"),
            ("127.0.0.1::80", Some("127.0.0.1"), None, "80", "tcp"),
            ("[::1]:8080:80/udp", Some("::1"), Some("8080"), "80", "udp"),
            ("8000-8001:80-81", None, Some("8000-8001"), "80-81", "tcp"),
        ];
        for (text, ip, published, target, protocol) in cases {
            let spec = parse_port(&json!(text)).unwrap();
            assert_eq!(spec.host_ip.as_deref(), ip, "{text}");
            assert_eq!(spec.published.as_deref(), published, "{text}");
            assert_eq!(spec.target, target, "{text}");
            assert_eq!(spec.protocol, protocol, "{text}");
        }
    }

    #[test]
    fn long_port_form() {
        let spec = parse_port(
            &json!({"mode": "ingress", "host_ip": "127.0.0.1", "target": 5432,
            "published": "15432", "protocol": "tcp"}),
        )
        .unwrap();
        assert_eq!(spec.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(spec.published.as_deref(), Some("15432"));
        assert_eq!(spec.target, "5432");
        let bare = parse_port(&json!({"target": 8080})).unwrap();
        assert_eq!(bare.published, None);
        assert_eq!(bare.protocol, "tcp");
    }

    #[test]
    fn environment_map_and_list() {
        let map = json!({"environment": {"A": "1", "B": null}});
        assert_eq!(
            environment(map.as_object().unwrap()),
            [("A".into(), Some("1".into())), ("B".into(), None)]
        );
        let list = json!({"environment": ["A=x=y", "B"]});
        let mut service = list.as_object().unwrap().clone();
        assert_eq!(
            environment(&service),
            [("A".into(), Some("x=y".into())), ("B".into(), None)]
        );
        set_environment(&mut service, "C", "z".into());
        assert_eq!(
            service["environment"],
            json!({"A": "x=y", "B": null, "C": "z"})
        );
    }

    #[test]
    fn inactive_profiles_are_dropped() {
        let model = json!({"services": {
            "always": {}, "empty": {"profiles": []}, "dbg": {"profiles": ["debug"]},
            "tools": {"profiles": ["tools", "x"]}, "named": {"profiles": ["n"]}}});
        let mut project = Project {
            tool: Tool::V1,
            name: "p".into(),
            directory: "/".into(),
            options: ProjectOptions {
                profiles: vec!["x".into()],
                ..ProjectOptions::default()
            },
            model,
        };
        let mut everything = Project {
            tool: Tool::V1,
            name: "p".into(),
            directory: "/".into(),
            options: ProjectOptions::default(),
            model: project.model.clone(),
        };
        let removed = project.drop_inactive_profiles(&["named".into()], Some("y, z"));
        assert_eq!(removed, ["dbg"]);
        assert_eq!(
            project.service_names(),
            ["always", "empty", "named", "tools"]
        );
        let removed = everything.drop_inactive_profiles(&[], Some("debug"));
        assert_eq!(removed, ["named", "tools"]);
        assert!(everything.drop_inactive_profiles(&[], Some("*")).is_empty());
    }

    #[test]
    fn labels_list_and_dollars() {
        let service = json!({"labels": ["a=1", "b=p$$x"]});
        let service = service.as_object().unwrap();
        assert_eq!(label(service, "b").as_deref(), Some("p$x"));
        assert_eq!(label(service, "c"), None);
    }

    #[test]
    fn v1_names_are_normalised() {
        let options = ProjectOptions {
            project_name: Some("My.Proj_1-x".into()),
            ..ProjectOptions::default()
        };
        assert_eq!(v1_project_name(&options, Path::new("/x")), "myproj_1-x");
    }
}
