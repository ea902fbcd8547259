//! The plan of `up`: every reference of every service, resolved or not (and why), how it is
//! injected, the strategy and the proxied ports, plus every problem found. Building the plan
//! touches nothing: no file, no container, no route. `up` proceeds only with an empty problem
//! list; `up --dry-run` and `plan` print it.
//!
//! The resolved values live only in [`Plan::values`] (as [`SecretValue`]s); everything else in
//! a plan is names, so the plan itself may be printed.

use std::collections::BTreeMap;

use anyhow::Context as _;
use controlplane::config::{Config, ProviderSettings};
use controlplane::ipc::client::IpcClient;
use controlplane::reference::{self, Injection, Reference};
use controlplane::secret::SecretValue;
use controlplane::vault::Contents;
use serde_json::{Value, json};

use super::owner;
use super::project::{self, Project};
use super::proxy::route_name;
use super::render::{escape_dollars, unescape_dollars};

/// The kernel's limit on one argument or environment string, terminating NUL included
/// (`MAX_ARG_STRLEN` = 32 pages of 4 KiB, checked by execve(2)).
pub const MAX_ENV_STRING: usize = 131_072;

/// Service label: mark published ports for the proxy (`true`, or a comma list of host ports).
pub const HOST_PORTS_LABEL: &str = "dso.host_ports";

/// Service label: rotation strategy (`rolling`, `restart`, `signal`, `none`).
pub const STRATEGY_LABEL: &str = "dso.strategy";

/// Service label: where the secret files appear in the container.
pub const SECRETS_DIR_LABEL: &str = "dso.secrets_dir";

/// Default directory of the secret files in the container.
pub const DEFAULT_SECRETS_DIR: &str = "/run/secrets/dso";

/// One problem: where, what and what to do. Never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Service name.
    pub service: String,
    /// Environment variable, label or `ports`, when the problem has one.
    pub variable: Option<String>,
    /// Reference text, when the problem is about one.
    pub reference: Option<String>,
    /// Why.
    pub reason: String,
    /// What to do.
    pub hint: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {}", self.service)?;
        if let Some(variable) = &self.variable {
            write!(f, ", {variable}")?;
        }
        if let Some(reference) = &self.reference {
            write!(f, " = {reference}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// One reference of a service.
#[derive(Clone, Debug)]
pub struct ReferencePlan {
    /// The environment variable.
    pub variable: String,
    /// The reference text as written.
    pub text: String,
    /// Env or file.
    pub injection: Injection,
    /// The provider that resolves it.
    pub provider: String,
    /// Path of the file inside the container (file injection).
    pub container_path: Option<String>,
    /// `None` when resolved; otherwise the problem.
    pub problem: Option<Problem>,
}

/// A published port handed to the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedPort {
    /// The proxy's listen address, `IP:PORT`.
    pub listen: String,
    /// Published host port.
    pub published: u16,
    /// Container port.
    pub target: u16,
    /// Proxy route name.
    pub route: String,
}

/// What happens to one service.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    /// Service name.
    pub name: String,
    /// References, in variable order.
    pub references: Vec<ReferencePlan>,
    /// Strategy label value.
    pub strategy: String,
    /// Ports moved to the proxy.
    pub proxied: Vec<ProxiedPort>,
    /// Where secret files appear in the container.
    pub secrets_dir: String,
    /// uid and gid owning the files (root only, file references only).
    pub owner: Option<(u32, u32)>,
}

impl ServicePlan {
    /// True when dso changes anything about the service.
    pub fn is_managed(&self) -> bool {
        !self.references.is_empty() || !self.proxied.is_empty()
    }

    /// True when the service gets secret files.
    pub fn has_files(&self) -> bool {
        self.references
            .iter()
            .any(|r| r.injection == Injection::File)
    }
}

/// The plan of a project.
pub struct Plan {
    /// Per service, in name order.
    pub services: Vec<ServicePlan>,
    /// Every problem, also those of references.
    pub problems: Vec<Problem>,
    /// Resolved values by (service, variable).
    pub values: BTreeMap<(String, String), SecretValue>,
}

/// Where values come from: a running agent when one serves this user (its providers), else
/// the local vault (opened on first use); `dso.yaml` names the providers.
pub struct Resolver<'a> {
    config: Option<&'a Config>,
    open_vault: Box<dyn FnMut() -> anyhow::Result<Contents> + 'a>,
    vault: Option<Result<Contents, String>>,
    agent: Option<AgentValues>,
}

/// Values through the agent's `POST /v1/resolve`: every reference of the project in one
/// request ([`Resolver::prefetch`]), any other one on its own.
struct AgentValues {
    client: IpcClient,
    runtime: tokio::runtime::Runtime,
    /// Answers of the prefetch, by reference text.
    answers: BTreeMap<String, Result<SecretValue, (String, Option<String>)>>,
}

impl AgentValues {
    /// Asks the agent for `texts` and keeps each answer.
    fn fetch(&mut self, texts: Vec<String>) -> Result<(), (String, Option<String>)> {
        let answer = self
            .runtime
            .block_on(self.client.resolve(&texts))
            .map_err(|e| (format!("the agent could not be asked: {e}"), e.hint()))?;
        for text in texts {
            let result = if let Some(problem) = answer.errors.get(&text) {
                Err((problem.reason.clone(), problem.hint.clone()))
            } else if let Some(hex_value) = answer.values.get(&text) {
                hex::decode(hex_value)
                    .map(|bytes| SecretValue::from_slice(&zeroize::Zeroizing::new(bytes)))
                    .map_err(|_| ("the agent's answer is not hex".to_owned(), None))
            } else {
                Err(("the agent's answer lacks the reference".to_owned(), None))
            };
            self.answers.insert(text, result);
        }
        Ok(())
    }

    fn resolve(&mut self, reference: &Reference) -> Result<SecretValue, (String, Option<String>)> {
        let text = reference.to_string();
        if !self.answers.contains_key(&text) {
            self.fetch(vec![text.clone()])?;
        }
        self.answers
            .get(&text)
            .cloned()
            .unwrap_or_else(|| Err(("the agent's answer lacks the reference".to_owned(), None)))
    }
}

impl<'a> Resolver<'a> {
    /// A resolver over `config` (if any) that opens the vault with `open_vault` when needed.
    pub fn new(
        config: Option<&'a Config>,
        open_vault: impl FnMut() -> anyhow::Result<Contents> + 'a,
    ) -> Self {
        Self {
            config,
            open_vault: Box::new(open_vault),
            vault: None,
            agent: None,
        }
    }

    /// Resolves through the agent behind `client` instead of reading the vault.
    pub fn through_agent(mut self, client: IpcClient) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        self.agent = Some(AgentValues {
            client,
            runtime,
            answers: BTreeMap::new(),
        });
        Ok(self)
    }

    /// Through the agent: asks for every reference of `project` in one request, so the agent
    /// reads its store once. Failures are kept and reported per reference later.
    fn prefetch(&mut self, project: &Project) {
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        let mut texts: Vec<String> = Vec::new();
        for name in project.service_names() {
            let Some(service) = project.service(&name) else {
                continue;
            };
            for (_, value) in project::environment(service) {
                let Some(value) = value else { continue };
                if let Ok(Some(parsed)) = Reference::detect(&unescape_dollars(&value)) {
                    texts.push(parsed.to_string());
                }
            }
        }
        texts.sort();
        texts.dedup();
        // A failed request is reported on each of its references, without asking again.
        if !texts.is_empty()
            && let Err(failed) = agent.fetch(texts.clone())
        {
            for text in texts {
                agent.answers.insert(text, Err(failed.clone()));
            }
        }
    }

    /// The agent's socket when values come from the agent.
    pub fn agent_socket(&self) -> Option<&std::path::Path> {
        self.agent.as_ref().map(|a| a.client.path())
    }

    /// The provider name a reference uses.
    fn provider_name(&self, reference: &Reference) -> String {
        reference.provider.clone().unwrap_or_else(|| {
            self.config
                .and_then(|c| {
                    c.providers
                        .iter()
                        .find(|(_, p)| matches!(p, ProviderSettings::Local { .. }))
                        .map(|(name, _)| name.clone())
                })
                .unwrap_or_else(|| "local".into())
        })
    }

    /// Resolves one reference to its value (key selected), or a reason and hint.
    fn resolve(&mut self, reference: &Reference) -> Result<SecretValue, (String, Option<String>)> {
        let provider = self.provider_name(reference);
        // LIMITATION: only the local vault is read; references to vault/aws/azure providers are
        // validated and then refused — the provider implementations (later issues) lift it.
        let is_local = match self.config.and_then(|c| c.providers.get(&provider)) {
            Some(ProviderSettings::Local { .. }) => true,
            Some(other) => {
                return Err((
                    format!(
                        "provider `{provider}` has type {:?}, which `docker dso up` cannot read \
                         yet",
                        other.kind()
                    ),
                    Some("store the secret in the local vault and drop the provider".into()),
                ));
            }
            None => provider == "local",
        };
        if !is_local {
            return Err((
                format!("provider `{provider}` is not defined in dso.yaml"),
                Some("define it under `providers:`, or drop `name:` for the local vault".into()),
            ));
        }

        if let Some(agent) = self.agent.as_mut() {
            return agent.resolve(reference);
        }
        if self.vault.is_none() {
            self.vault = Some((self.open_vault)().map_err(|e| format!("{e:#}")));
        }
        let contents = match self.vault.as_ref() {
            Some(Ok(contents)) => contents,
            Some(Err(reason)) => {
                return Err((
                    format!("the local vault could not be opened: {reason}"),
                    Some("`docker dso secret list` shows what is wrong".into()),
                ));
            }
            None => return Err(("the local vault was not opened".into(), None)),
        };
        let record = contents.latest(&reference.path).ok_or_else(|| {
            (
                format!("no secret at {}", reference.path),
                Some(format!(
                    "store it with `docker dso secret set {}`; `docker dso secret list` shows \
                     the stored paths",
                    reference.path
                )),
            )
        })?;
        match &reference.key {
            None => Ok(record.value.clone()),
            Some(key) => reference::select(&record.value, key).map_err(|e| {
                let hint = match e {
                    reference::SelectError::MissingKey { .. } => {
                        "check the key; nested keys are written #outer.inner, a dot in a name \
                         as \\."
                    }
                    reference::SelectError::Null { .. } => "store a string instead of null",
                    _ => "see docs/references.md for what #key selects",
                };
                (e.to_string(), Some(hint.into()))
            }),
        }
    }
}

/// Checks a value for environment injection.
pub fn check_env_value(variable: &str, value: &SecretValue) -> Result<(), (String, String)> {
    let bytes = value.expose();
    if std::str::from_utf8(bytes).is_err() {
        return Err((
            "the value is not valid UTF-8, which an environment value in a compose file must be"
                .into(),
            "use dsofile:// to get the exact bytes as a file".into(),
        ));
    }
    if bytes.contains(&0) {
        return Err((
            "the value contains a NUL byte, which an environment variable cannot hold".into(),
            "use dsofile:// to get the exact bytes as a file".into(),
        ));
    }
    let total = variable.len() + 1 + bytes.len() + 1;
    if total > MAX_ENV_STRING {
        return Err((
            format!(
                "`{variable}=value` is {total} bytes with its terminating NUL; the kernel allows \
                 {MAX_ENV_STRING} per environment string (MAX_ARG_STRLEN)"
            ),
            "use dsofile:// for large values".into(),
        ));
    }
    Ok(())
}

/// True for a variable name that is also a safe file name.
fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Builds the plan of `project`. `root` says whether file owners must be resolved.
pub fn build(project: &Project, resolver: &mut Resolver<'_>, root: bool) -> Plan {
    resolver.prefetch(project);
    let default_strategy = format!(
        "{:?}",
        resolver
            .config
            .map_or(controlplane::config::DEFAULT_STRATEGY, |c| c
                .defaults
                .strategy)
    )
    .to_lowercase();
    let mut plan = Plan {
        services: Vec::new(),
        problems: Vec::new(),
        values: BTreeMap::new(),
    };

    for name in project.service_names() {
        let Some(service) = project.service(&name) else {
            continue;
        };
        let problem =
            |variable: Option<&str>, reference: Option<&str>, reason: String, hint: &str| Problem {
                service: name.clone(),
                variable: variable.map(str::to_owned),
                reference: reference.map(str::to_owned),
                reason,
                hint: Some(hint.to_owned()).filter(|h| !h.is_empty()),
            };
        let mut problems = Vec::new();

        // Labels dso reads.
        let strategy = project::label(service, STRATEGY_LABEL).unwrap_or(default_strategy.clone());
        if !["rolling", "restart", "signal", "none"].contains(&strategy.as_str()) {
            problems.push(problem(
                Some(STRATEGY_LABEL),
                None,
                format!("unknown strategy {strategy:?}"),
                "use rolling, restart, signal or none",
            ));
        }
        let secrets_dir = project::label(service, SECRETS_DIR_LABEL)
            .unwrap_or_else(|| DEFAULT_SECRETS_DIR.into());
        let dir_ok = secrets_dir.starts_with('/')
            && secrets_dir != "/"
            && !secrets_dir.split('/').any(|s| s == ".." || s == ".");
        if !dir_ok {
            problems.push(problem(
                Some(SECRETS_DIR_LABEL),
                None,
                format!("{secrets_dir:?} is not an absolute directory path"),
                "write e.g. /run/secrets/dso",
            ));
        }

        // References.
        let mut references = Vec::new();
        for (variable, value) in project::environment(service) {
            let Some(value) = value else { continue };
            let text = unescape_dollars(&value);
            let parsed = match Reference::detect(&text) {
                Ok(None) => continue,
                Ok(Some(parsed)) => parsed,
                Err(err) => {
                    let injection = if text.starts_with(reference::FILE_SCHEME) {
                        Injection::File
                    } else {
                        Injection::Env
                    };
                    let p = problem(Some(&variable), Some(&text), err.to_string(), err.hint());
                    references.push(ReferencePlan {
                        variable,
                        text,
                        injection,
                        provider: String::new(),
                        container_path: None,
                        problem: Some(p),
                    });
                    continue;
                }
            };
            let provider = resolver.provider_name(&parsed);
            let mut container_path = None;
            let mut found = None;
            if parsed.injection == Injection::File && !is_file_name(&variable) {
                found = Some(problem(
                    Some(&variable),
                    Some(&text),
                    "the variable name is also the file name and must be A-Z a-z 0-9 _ - .".into(),
                    "rename the variable",
                ));
            } else if parsed.injection == Injection::File {
                container_path = Some(format!("{}/{variable}", secrets_dir.trim_end_matches('/')));
            }
            if found.is_none() {
                match resolver.resolve(&parsed) {
                    Ok(value) => {
                        if parsed.injection == Injection::Env
                            && let Err((reason, hint)) = check_env_value(&variable, &value)
                        {
                            found = Some(problem(Some(&variable), Some(&text), reason, &hint));
                        } else {
                            plan.values.insert((name.clone(), variable.clone()), value);
                        }
                    }
                    Err((reason, hint)) => {
                        found = Some(problem(
                            Some(&variable),
                            Some(&text),
                            reason,
                            hint.as_deref().unwrap_or(""),
                        ));
                    }
                }
            }
            references.push(ReferencePlan {
                variable,
                text,
                injection: parsed.injection,
                provider,
                container_path,
                problem: found,
            });
        }

        // References are resolved only as whole environment values; anywhere else the text
        // would reach the container unresolved, and a value there would be visible to anyone
        // who can run `docker inspect` or `ps`. Refused rather than passed on silently.
        for (place, text) in misplaced_references(service) {
            let hint = if place.starts_with("labels.") {
                "labels are shown by `docker inspect`; remove the reference from the label"
            } else if place.starts_with("environment.") {
                "a reference must be the whole value; store the whole string (e.g. the full \
                 URL) as the secret, or split it into its own variable"
            } else {
                "put the reference under environment: and read the variable in the program (or \
                 `sh -c '… \"$$VAR\"'`), or use dsofile:// and pass the file path"
            };
            problems.push(problem(
                Some(&place),
                Some(&text),
                format!(
                    "references are resolved only as whole environment: values; in {place} it \
                     would reach the container as literal text"
                ),
                hint,
            ));
        }

        // Ports for the proxy.
        let proxied = match project::label(service, HOST_PORTS_LABEL) {
            None => Vec::new(),
            Some(marker) => proxied_ports(project, &name, service, &marker, &mut problems),
        };

        // Owner of the files, when we can hand them over.
        let mut owner = None;
        let has_files = references.iter().any(|r| r.injection == Injection::File);
        if root && has_files {
            let image = service_image(project, &name, service);
            let user = service.get("user").and_then(Value::as_str);
            match owner::resolve(user, &image) {
                Ok(ids) => owner = Some(ids),
                Err(p) => problems.push(problem(Some("user"), None, p.reason, &p.hint)),
            }
        }

        // `signal` rewrites files in place; an environment cannot change without a new
        // container, so every rotation of such a service would fail.
        if strategy == "signal" {
            for r in references.iter().filter(|r| r.injection == Injection::Env) {
                problems.push(problem(
                    Some(&r.variable),
                    Some(&r.text),
                    "strategy signal cannot deliver a new environment value".into(),
                    "use dsofile:// for this variable, or dso.strategy: restart or rolling",
                ));
            }
        }

        plan.problems
            .extend(references.iter().filter_map(|r| r.problem.clone()));
        plan.problems.extend(problems);
        plan.services.push(ServicePlan {
            name,
            references,
            strategy,
            proxied,
            secrets_dir,
            owner,
        });
    }
    let conflicts = listen_conflicts(project, &plan.services);
    plan.problems.extend(conflicts);
    plan
}

/// Proxied listen addresses that another proxied port, or a TCP port compose still publishes,
/// also wants. Caught here because the proxy would refuse the second route only after compose
/// created the containers.
fn listen_conflicts(project: &Project, services: &[ServicePlan]) -> Vec<Problem> {
    // (service, host IP, port, proxied) of every single published TCP port.
    let mut entries: Vec<(String, String, u16, bool)> = Vec::new();
    for service_plan in services {
        let Some(service) = project.service(&service_plan.name) else {
            continue;
        };
        for (_, spec) in project::ports(service) {
            let Some(spec) = spec.filter(|s| s.protocol == "tcp") else {
                continue;
            };
            let Some(port) = spec
                .published
                .as_deref()
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let ip = spec.host_ip.unwrap_or_else(|| "0.0.0.0".into());
            let proxied = service_plan.proxied.iter().any(|p| p.published == port);
            entries.push((service_plan.name.clone(), ip, port, proxied));
        }
    }
    let overlap = |a: &str, b: &str| {
        let unspecified = |ip: &str| ip == "0.0.0.0" || ip == "::";
        a.contains(':') == b.contains(':') && (a == b || unspecified(a) || unspecified(b))
    };
    let mut problems = Vec::new();
    for (i, (service, ip, port, proxied)) in entries.iter().enumerate() {
        for (j, (other, other_ip, other_port, other_proxied)) in entries.iter().enumerate() {
            // Each pair once; a pair without a proxied port is compose's business.
            let counted = if *other_proxied { i < j } else { i != j };
            if !*proxied || !counted || port != other_port || !overlap(ip, other_ip) {
                continue;
            }
            let how = if *other_proxied {
                "proxied for"
            } else {
                "published by"
            };
            problems.push(Problem {
                service: service.clone(),
                variable: Some("ports".into()),
                reference: None,
                reason: format!(
                    "host address {ip}:{port} is also {how} service {other} ({other_ip}:{port})"
                ),
                hint: Some("give each service its own host port".into()),
            });
        }
    }
    problems
}

/// Texts in `command`, `entrypoint`, `healthcheck.test`, labels (except dso's own `dso.*`)
/// and inside (not at the start of) environment values that contain a reference scheme, as
/// (place, text) pairs.
fn misplaced_references(service: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    fn texts(value: Option<&Value>) -> Vec<String> {
        match value {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    }
    let has_scheme =
        |t: &str| t.contains(reference::ENV_SCHEME) || t.contains(reference::FILE_SCHEME);
    let mut found = Vec::new();
    let places = [
        ("command", service.get("command")),
        ("entrypoint", service.get("entrypoint")),
        (
            "healthcheck.test",
            service.get("healthcheck").and_then(|h| h.get("test")),
        ),
    ];
    for (place, value) in places {
        for text in texts(value) {
            let text = unescape_dollars(&text);
            if has_scheme(&text) {
                found.push((place.to_owned(), text));
            }
        }
    }
    for (variable, value) in project::environment(service) {
        let Some(text) = value.map(|v| unescape_dollars(&v)) else {
            continue;
        };
        let whole =
            text.starts_with(reference::ENV_SCHEME) || text.starts_with(reference::FILE_SCHEME);
        if !whole && has_scheme(&text) {
            found.push((format!("environment.{variable}"), text));
        }
    }
    for (key, value) in project::labels(service) {
        let Some(text) = value.as_str().map(unescape_dollars) else {
            continue;
        };
        if !key.starts_with("dso.") && has_scheme(&text) {
            found.push((format!("labels.{key}"), text));
        }
    }
    found
}

/// The image a service runs: `image:`, else the name compose gives a built image.
fn service_image(
    project: &Project,
    name: &str,
    service: &serde_json::Map<String, Value>,
) -> String {
    if let Some(image) = service.get("image").and_then(Value::as_str) {
        return image.to_owned();
    }
    match project.tool {
        super::tool::Tool::V1 => format!("{}_{name}", project.name),
        super::tool::Tool::V2 => format!("{}-{name}", project.name),
    }
}

/// The published TCP ports of a marked service. `marker` is `true` (all of them) or a comma
/// list of published host ports.
fn proxied_ports(
    project: &Project,
    name: &str,
    service: &serde_json::Map<String, Value>,
    marker: &str,
    problems: &mut Vec<Problem>,
) -> Vec<ProxiedPort> {
    let problem = |reason: String, hint: &str| Problem {
        service: name.to_owned(),
        variable: Some(HOST_PORTS_LABEL.into()),
        reference: None,
        reason,
        hint: Some(hint.into()),
    };
    // The proxy dials the container's address on a Docker network; these modes give the
    // container no address of its own to dial.
    if let Some(mode) = service.get("network_mode").and_then(Value::as_str)
        && (mode == "host"
            || mode == "none"
            || mode.starts_with("container:")
            || mode.starts_with("service:"))
    {
        problems.push(problem(
            format!(
                "network_mode {mode:?} gives the container no address of its own on a Docker \
                 network, so the proxy has nothing to route to"
            ),
            "remove dso.host_ports (publish the port with compose as usual), or put the \
             service on a network (drop network_mode)",
        ));
        return Vec::new();
    }

    let wanted: Option<Vec<u16>> = match marker.trim() {
        "true" | "all" => None,
        list => {
            let mut ports = Vec::new();
            for item in list.split(',').map(str::trim) {
                match item.parse::<u16>() {
                    Ok(port) if port > 0 => ports.push(port),
                    _ => {
                        problems.push(problem(
                            format!("{item:?} is not a host port"),
                            "write `true` or a comma list of published host ports",
                        ));
                        return Vec::new();
                    }
                }
            }
            Some(ports)
        }
    };

    let mut proxied = Vec::new();
    for (_, spec) in project::ports(service) {
        let Some(spec) = spec else { continue };
        let Some(published) = spec.published.as_deref() else {
            continue;
        };
        let published_port = published.parse::<u16>().ok();
        let chosen = match (&wanted, published_port) {
            (None, _) => true,
            (Some(list), Some(port)) => list.contains(&port),
            (Some(_), None) => false,
        };
        if !chosen {
            continue;
        }
        let (Some(published), Ok(target)) = (published_port, spec.target.parse::<u16>()) else {
            problems.push(problem(
                format!(
                    "port {published}:{} is a range, which the proxy cannot take",
                    spec.target
                ),
                "list single ports, or leave this service without dso.host_ports",
            ));
            continue;
        };
        if spec.protocol != "tcp" {
            if wanted.is_some() {
                problems.push(problem(
                    format!(
                        "port {published}/{} is not TCP; the proxy forwards TCP only",
                        spec.protocol
                    ),
                    "remove it from dso.host_ports",
                ));
            }
            continue;
        }
        let ip = spec.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into());
        let listen = if ip.contains(':') {
            format!("[{ip}]:{published}")
        } else {
            format!("{ip}:{published}")
        };
        proxied.push(ProxiedPort {
            listen,
            published,
            target,
            route: route_name(&project.name, name, published),
        });
    }
    if let Some(list) = &wanted {
        for port in list {
            if !proxied.iter().any(|p| p.published == *port) {
                problems.push(problem(
                    format!("host port {port} is not published by the service"),
                    "list only ports under `ports:`",
                ));
            }
        }
    }
    proxied
}

/// Writes the resolved plan into the project: values (with `$` escaped) and file paths into
/// `environment:`, the generation directory as a read-only bind mount, proxied ports removed
/// (the proxy dials the container's own address, see [`remove_proxied_ports`]), and the labels.
/// `generations` maps a service to its generation directory on the host.
// LIMITATION: compose's `com.docker.compose.config-hash` label hashes the service config with
// the env values in it, so a weak value could be guessed against it — only `dsofile://` (the
// hash covers the path) avoids it; compose's behaviour, documented in architecture-compose.md.
// LIMITATION: the edited project holds env values as plain `String`s inside the JSON model,
// which are not zeroized when dropped — a model type holding `SecretValue`s until rendering
// would lift it.
pub fn apply(
    plan: &Plan,
    project: &mut Project,
    generations: &BTreeMap<String, std::path::PathBuf>,
) {
    for service_plan in plan.services.iter().filter(|s| s.is_managed()) {
        let Some(service) = project.service_mut(&service_plan.name) else {
            continue;
        };
        let mut env_refs = serde_json::Map::new();
        let mut file_refs = serde_json::Map::new();
        for reference in &service_plan.references {
            match reference.injection {
                Injection::Env => {
                    env_refs.insert(reference.variable.clone(), json!(reference.text));
                    let key = (service_plan.name.clone(), reference.variable.clone());
                    if let Some(value) = plan.values.get(&key) {
                        // check_env_value made sure this is UTF-8.
                        let text = String::from_utf8_lossy(value.expose());
                        project::set_environment(
                            service,
                            &reference.variable,
                            escape_dollars(&text),
                        );
                    }
                }
                Injection::File => {
                    file_refs.insert(reference.variable.clone(), json!(reference.text));
                    if let Some(path) = &reference.container_path {
                        project::set_environment(
                            service,
                            &reference.variable,
                            escape_dollars(path),
                        );
                    }
                }
            }
        }

        let mut labels = vec![
            ("dso.managed".to_owned(), "true".to_owned()),
            ("dso.strategy".to_owned(), service_plan.strategy.clone()),
            (
                "dso.references".to_owned(),
                json!({ "env": env_refs, "file": file_refs }).to_string(),
            ),
        ];

        if let Some(dir) = generations.get(&service_plan.name) {
            let volumes = service
                .entry("volumes")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = volumes {
                items.push(json!({
                    "type": "bind",
                    "source": dir.display().to_string(),
                    "target": service_plan.secrets_dir,
                    "read_only": true,
                }));
            }
            labels.push(("dso.files.dir".into(), dir.display().to_string()));
            labels.push(("dso.files.target".into(), service_plan.secrets_dir.clone()));
        }

        if !service_plan.proxied.is_empty() {
            remove_proxied_ports(service, &service_plan.proxied);
            let routes: Vec<Value> = service_plan
                .proxied
                .iter()
                .map(|p| json!({ "route": p.route, "listen": p.listen, "target": p.target }))
                .collect();
            labels.push(("dso.proxy.routes".into(), Value::Array(routes).to_string()));
        }
        let labels = labels
            .into_iter()
            .map(|(k, v)| (k, escape_dollars(&v)))
            .collect();
        project::add_labels(service, labels);
    }
}

/// Removes each proxied port entry: nothing is published on the host for it, so no
/// `docker-proxy` or DNAT rule sits between dso-proxy and the container, and a replacement
/// container (issue 5) needs no host port either. An emptied `ports:` is dropped.
fn remove_proxied_ports(service: &mut serde_json::Map<String, Value>, proxied: &[ProxiedPort]) {
    let Some(Value::Array(items)) = service.get_mut("ports") else {
        return;
    };
    items.retain(|item| {
        let Some(spec) = project::parse_port(item) else {
            return true;
        };
        let published = spec
            .published
            .as_deref()
            .and_then(|p| p.parse::<u16>().ok());
        !(spec.protocol == "tcp" && proxied.iter().any(|p| Some(p.published) == published))
    });
    if items.is_empty() {
        service.remove("ports");
    }
}

/// The plan as JSON for `--json` (names only).
pub fn to_json(plan: &Plan, project: &Project) -> Value {
    json!({
        "project": project.name,
        "compose": project.tool.label(),
        "problems": plan.problems.len(),
        "services": plan.services.iter().map(|s| json!({
            "service": s.name,
            "managed": s.is_managed(),
            "strategy": s.strategy,
            "secrets_dir": s.has_files().then_some(&s.secrets_dir),
            "references": s.references.iter().map(|r| json!({
                "variable": r.variable,
                "reference": r.text,
                "injection": r.injection.as_str(),
                "provider": r.provider,
                "file": r.container_path,
                "resolved": r.problem.is_none(),
                "problem": r.problem.as_ref().map(|p| &p.reason),
                "hint": r.problem.as_ref().and_then(|p| p.hint.as_ref()),
            })).collect::<Vec<_>>(),
            "proxied_ports": s.proxied.iter().map(|p| json!({
                "listen": p.listen, "target": p.target, "route": p.route,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "all_problems": plan.problems.iter().map(|p| json!({
            "service": p.service, "variable": p.variable, "reference": p.reference,
            "reason": p.reason, "hint": p.hint,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_limit_counts_name_equals_and_nul() {
        let name = "V";
        let fits = SecretValue::new(vec![b'a'; MAX_ENV_STRING - name.len() - 2]);
        assert!(check_env_value(name, &fits).is_ok());
        let over = SecretValue::new(vec![b'a'; MAX_ENV_STRING - name.len() - 1]);
        let (reason, hint) = check_env_value(name, &over).unwrap_err();
        assert!(reason.contains("131073 bytes"), "{reason}");
        assert!(hint.contains("dsofile://"));
    }

    #[test]
    fn env_values_must_be_text_without_nul() {
        assert!(check_env_value("V", &SecretValue::from_slice(b"")).is_ok());
        let unicode = "Za\u{17c}\u{f3}\u{142}\u{107}\u{1f511}"; // Zażółć and a key
        assert!(check_env_value("V", &SecretValue::from_slice(unicode.as_bytes())).is_ok());
        let (reason, _) = check_env_value("V", &SecretValue::from_slice(&[0xff])).unwrap_err();
        assert!(reason.contains("UTF-8"));
        let (reason, _) = check_env_value("V", &SecretValue::from_slice(b"a\0b")).unwrap_err();
        assert!(reason.contains("NUL"));
    }

    #[test]
    fn file_names_from_variables() {
        for ok in ["DB_PASSWORD_FILE", "tls.crt", "a-b"] {
            assert!(is_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(!is_file_name(bad), "{bad}");
        }
    }

    fn port(listen: &str, published: u16, target: u16) -> ProxiedPort {
        ProxiedPort {
            listen: listen.into(),
            published,
            target,
            route: format!("p.s.{published}"),
        }
    }

    #[test]
    fn proxied_ports_are_removed_and_others_kept() {
        let mut service = json!({"ports": ["127.0.0.1:15432:5432/tcp", "9000:9000/udp",
            {"target": 80, "published": "8080", "protocol": "tcp"}, "7000:7000"]})
        .as_object()
        .unwrap()
        .clone();
        let proxied = [
            port("127.0.0.1:15432", 15432, 5432),
            port("0.0.0.0:8080", 8080, 80),
        ];
        remove_proxied_ports(&mut service, &proxied);
        assert_eq!(service["ports"], json!(["9000:9000/udp", "7000:7000"]));

        let mut only = json!({"ports": ["127.0.0.1:15432:5432"]})
            .as_object()
            .unwrap()
            .clone();
        remove_proxied_ports(&mut only, &proxied[..1]);
        assert!(only.get("ports").is_none(), "{only:?}");
    }

    #[test]
    fn proxying_is_refused_without_an_address_of_its_own() {
        let project = Project {
            tool: super::super::tool::Tool::V2,
            name: "p".into(),
            directory: "/".into(),
            options: Default::default(),
            model: json!({"services": {}}),
        };
        for mode in ["host", "none", "container:abc", "service:db"] {
            let service = json!({"network_mode": mode, "ports": ["127.0.0.1:15432:5432"]});
            let mut problems = Vec::new();
            let ports = proxied_ports(
                &project,
                "s",
                service.as_object().unwrap(),
                "true",
                &mut problems,
            );
            assert!(ports.is_empty(), "{mode}");
            assert_eq!(problems.len(), 1, "{mode}");
            assert!(problems[0].reason.contains(mode), "{}", problems[0]);
            assert!(problems[0].hint.is_some());
        }
        for mode in [None, Some("bridge"), Some("p_custom")] {
            let mut service = json!({"ports": ["127.0.0.1:15432:5432"]});
            if let Some(mode) = mode {
                service["network_mode"] = json!(mode);
            }
            let mut problems = Vec::new();
            let ports = proxied_ports(
                &project,
                "s",
                service.as_object().unwrap(),
                "true",
                &mut problems,
            );
            assert!(problems.is_empty(), "{mode:?}: {problems:?}");
            assert_eq!(ports, [port("127.0.0.1:15432", 15432, 5432)]);
            assert_eq!(ports[0].route, "p.s.15432");
        }
    }

    #[test]
    fn references_outside_environment_are_found() {
        let service = json!({
            "command": ["serve", "--password=dso://db/pw", "plain"],
            "entrypoint": "/bin/app dsofile://x/y",
            "healthcheck": {"test": ["CMD", "check", "dso://h/c"]},
            "labels": {"note": "dso://l/n", "dso.strategy": "rolling", "ok": "https://x"},
            "environment": {"DSN": "pg://u:dso://t/a@h", "WHOLE": "dso://t/a", "X": null},
        });
        let found = misplaced_references(service.as_object().unwrap());
        let places: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            places,
            [
                "command",
                "entrypoint",
                "healthcheck.test",
                "environment.DSN",
                "labels.note"
            ]
        );
        assert_eq!(found[0].1, "--password=dso://db/pw");
        assert!(misplaced_references(json!({"command": "run"}).as_object().unwrap()).is_empty());
    }

    #[test]
    fn overlapping_listen_addresses_are_problems() {
        let project = Project {
            tool: super::super::tool::Tool::V2,
            name: "p".into(),
            directory: "/".into(),
            options: Default::default(),
            model: json!({"services": {
                "a": {"ports": ["127.0.0.1:8080:80", "9000:9000"]},
                "b": {"ports": ["8080:80", "[::1]:9000:9000"]},
                "c": {"ports": ["127.0.0.2:7000:70"]},
                "d": {"ports": ["127.0.0.3:7000:70", "127.0.0.1:9000:9000/udp"]},
            }}),
        };
        let plan_of = |name: &str, proxied: Vec<ProxiedPort>| ServicePlan {
            name: name.into(),
            references: Vec::new(),
            strategy: "restart".into(),
            proxied,
            secrets_dir: DEFAULT_SECRETS_DIR.into(),
            owner: None,
        };
        let services = [
            plan_of("a", vec![port("127.0.0.1:8080", 8080, 80)]),
            plan_of("b", vec![port("[::1]:9000", 9000, 9000)]),
            plan_of("c", vec![port("127.0.0.2:7000", 7000, 70)]),
            plan_of("d", Vec::new()),
        ];
        let problems = listen_conflicts(&project, &services);
        let reasons: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        // 8080: a's proxied 127.0.0.1 overlaps b's compose-published 0.0.0.0. 9000: a's
        // 0.0.0.0 is IPv4, b's [::1] IPv6: no overlap. 7000: different addresses. udp ignored.
        assert_eq!(
            reasons,
            [
                "service a, ports: host address 127.0.0.1:8080 is also published by service b \
              (0.0.0.0:8080) (hint: give each service its own host port)"
            ]
        );
        let both = [
            plan_of("a", vec![port("127.0.0.1:8080", 8080, 80)]),
            plan_of("b", vec![port("0.0.0.0:8080", 8080, 80)]),
        ];
        let problems = listen_conflicts(&project, &both);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].reason.contains("proxied for service b"));
    }

    #[test]
    fn problems_print_on_one_line_without_values() {
        let problem = Problem {
            service: "db".into(),
            variable: Some("PW".into()),
            reference: Some("dso://a/b#k".into()),
            reason: "the secret has no key `k`".into(),
            hint: Some("check the key".into()),
        };
        assert_eq!(
            problem.to_string(),
            "service db, PW = dso://a/b#k: the secret has no key `k` (hint: check the key)"
        );
    }
}
