//! The plan of `up`: every reference of every service, resolved or not (and why), how it is
//! injected, the strategy and the proxied ports, plus every problem found. Building the plan
//! touches nothing: no file, no container, no route. `up` proceeds only with an empty problem
//! list; `up --dry-run` and `plan` print it.
//!
//! The resolved values live only in [`Plan::values`] (as [`SecretValue`]s); everything else in
//! a plan is names, so the plan itself may be printed.

use std::collections::BTreeMap;

use controlplane::config::{Config, ProviderSettings};
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

/// Strategy when neither the label nor `dso.yaml` names one.
const DEFAULT_STRATEGY: &str = "restart";

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

/// Where values come from: the local vault (opened on first use) and `dso.yaml`.
pub struct Resolver<'a> {
    config: Option<&'a Config>,
    open_vault: Box<dyn FnMut() -> anyhow::Result<Contents> + 'a>,
    vault: Option<Result<Contents, String>>,
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
        }
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
    let default_strategy = resolver
        .config
        .map(|c| format!("{:?}", c.defaults.strategy).to_lowercase())
        .unwrap_or_else(|| DEFAULT_STRATEGY.into());
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
    plan
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
/// `environment:`, the generation directory as a read-only bind mount, proxied ports replaced
/// by an ephemeral loopback port, and the labels. `generations` maps a service to its
/// generation directory on the host.
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
            rewrite_ports(service, &service_plan.proxied);
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

/// Replaces each proxied port entry by `127.0.0.1::TARGET`: the container is reachable only
/// by the proxy on loopback, on a port Docker picks.
fn rewrite_ports(service: &mut serde_json::Map<String, Value>, proxied: &[ProxiedPort]) {
    let Some(Value::Array(items)) = service.get_mut("ports") else {
        return;
    };
    for item in items.iter_mut() {
        let Some(spec) = project::parse_port(item) else {
            continue;
        };
        let published = spec
            .published
            .as_deref()
            .and_then(|p| p.parse::<u16>().ok());
        if spec.protocol == "tcp"
            && let Some(port) = proxied.iter().find(|p| Some(p.published) == published)
        {
            *item = json!(format!("127.0.0.1::{}", port.target));
        }
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
        assert!(check_env_value("V", &SecretValue::from_slice("Zażółć🔑".as_bytes())).is_ok());
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

    #[test]
    fn proxied_ports_are_rewritten_to_loopback_ephemeral() {
        let mut service = json!({"ports": ["127.0.0.1:15432:5432/tcp", "9000:9000/udp",
            {"target": 80, "published": "8080", "protocol": "tcp"}, "7000:7000"]})
        .as_object()
        .unwrap()
        .clone();
        let proxied = [
            ProxiedPort {
                listen: "127.0.0.1:15432".into(),
                published: 15432,
                target: 5432,
                route: "p.s.15432".into(),
            },
            ProxiedPort {
                listen: "0.0.0.0:8080".into(),
                published: 8080,
                target: 80,
                route: "p.s.8080".into(),
            },
        ];
        rewrite_ports(&mut service, &proxied);
        assert_eq!(
            service["ports"],
            json!([
                "127.0.0.1::5432",
                "9000:9000/udp",
                "127.0.0.1::80",
                "7000:7000"
            ])
        );
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
