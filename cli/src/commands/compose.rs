//! `docker dso up`, `down`, `plan` and `compose …`: the handlers around [`crate::compose`].
//!
//! Problems found while planning are printed one per line on stderr
//! (`docker-dso: problem: service S, VAR = REFERENCE: reason (hint: …)`), all of them, and
//! the command fails before compose runs. Compose's own output goes straight to the terminal.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;
use controlplane::config;
use controlplane::reference::Injection;
use dataplane::api::RouteRequest;
use zeroize::Zeroizing;

use super::vault::open_vault;
use crate::compose::ComposeError;
use crate::compose::files::{self, Owner};
use crate::compose::invocation::Invocation;
use crate::compose::plan::{self, Plan, Resolver};
use crate::compose::project::Project;
use crate::compose::proxy::{self, Proxy, ProxyFiles};
use crate::compose::render::render;
use crate::compose::tool::Tool;
use crate::output::Output;

/// Compose subcommands that create containers and therefore get the resolved project.
const RESOLVING: &[&str] = &["up", "create", "run"];

/// `up`. Afterwards, unless `--no-agent` (a dso option, removed before compose sees the
/// arguments), a user-level agent is started when none answers and a `dso.yaml` exists.
pub fn up(out: Output, config: Option<&Path>, raw: &[OsString]) -> anyhow::Result<()> {
    let (no_agent, raw) = take_no_agent(raw);
    let invocation = Invocation::parse(&raw, false)?;
    let dry_run = invocation.dry_run;
    run_resolved(out, config, invocation, "up", dry_run, !no_agent)?;
    if !dry_run && !no_agent {
        // The project is up either way: an agent that cannot start is a warning, not a failure.
        match super::agent::ensure_running(config) {
            Ok(Some(line)) => out.note(&line)?,
            Ok(None) => {}
            Err(err) => eprintln!(
                "docker-dso: warning: the agent could not be started: {err:#}\nhint: see \
                 `docker dso agent start`; secrets are not watched until an agent runs"
            ),
        }
    }
    Ok(())
}

/// `plan` (the same as `up --dry-run`).
pub fn plan(out: Output, config: Option<&Path>, raw: &[OsString]) -> anyhow::Result<()> {
    let (no_agent, raw) = take_no_agent(raw);
    let invocation = Invocation::parse(&raw, false)?;
    run_resolved(out, config, invocation, "up", true, !no_agent)
}

/// Takes dso's own `--no-agent` out of compose's arguments: whether it was there, and the
/// rest.
fn take_no_agent(raw: &[OsString]) -> (bool, Vec<OsString>) {
    let no_agent = raw.iter().any(|a| a == "--no-agent");
    let rest = raw.iter().filter(|a| *a != "--no-agent").cloned().collect();
    (no_agent, rest)
}

/// `down`.
pub fn down(out: Output, raw: &[OsString]) -> anyhow::Result<()> {
    let invocation = Invocation::parse(raw, false)?;
    run_down(out, invocation)
}

/// `compose [OPTIONS] COMMAND [ARGS]`.
pub fn compose(out: Output, config: Option<&Path>, raw: &[OsString]) -> anyhow::Result<()> {
    let (no_agent, raw) = take_no_agent(raw);
    // `docker dso compose SUBCOMMAND --help` is compose's own help: no project is loaded.
    if raw.iter().any(|a| a == "--help" || a == "-h") {
        let tool = Tool::select(None)?;
        let status = tool
            .command()
            .args(&raw)
            .status()
            .map_err(|source| ComposeError::Spawn {
                tool: tool.name(),
                source,
            })?;
        return if status.success() {
            Ok(())
        } else {
            Err(ComposeError::ComposeFailed {
                tool: tool.name(),
                subcommand: "--help".into(),
                status,
            }
            .into())
        };
    }
    let mut invocation = Invocation::parse(&raw, true)?;
    let position = invocation
        .rest
        .iter()
        .position(|a| !a.to_str().is_some_and(|t| t.starts_with('-')));
    let subcommand = position
        .and_then(|i| invocation.rest[i].to_str())
        .unwrap_or("")
        .to_owned();
    if let Some(i) = position
        && (subcommand == "up" || subcommand == "down" || RESOLVING.contains(&subcommand.as_str()))
    {
        invocation.rest.remove(i);
    }
    match subcommand.as_str() {
        "down" => run_down(out, invocation),
        sub if RESOLVING.contains(&sub) => {
            run_resolved(out, config, invocation, sub, false, !no_agent)
        }
        _ => {
            // Nothing is created: compose gets the project as normalised, references unresolved.
            let tool = Tool::select(invocation.tool)?;
            let project = Project::load(tool, &invocation.project)?;
            run_compose(&project, &invocation.rest, &subcommand)
        }
    }
}

/// The runtime directory as a plan problem, when a service has `dsofile://` references and
/// the directory is not (or would not be) on a tmpfs, so `plan` says what `up` would refuse.
fn runtime_problem(plan: &plan::Plan) -> Option<plan::Problem> {
    let service = plan.services.iter().find(|s| s.has_files())?;
    let error = match files::runtime_dir() {
        Ok(dir) => files::check_tmpfs_before_create(&dir).err()?,
        Err(error) => error,
    };
    Some(plan::Problem {
        service: service.name.clone(),
        variable: None,
        reference: None,
        reason: format!("secret files cannot be written: {error}"),
        hint: error.hint(),
    })
}

/// Plans, then (unless `dry_run`) writes files, runs compose `subcommand` on the resolved
/// project and, for `up`, sets the proxy routes.
/// `use_agent`: resolve through a running agent when one answers.
fn run_resolved(
    out: Output,
    config_path: Option<&Path>,
    invocation: Invocation,
    subcommand: &str,
    dry_run: bool,
    use_agent: bool,
) -> anyhow::Result<()> {
    let out = Output {
        json: out.json || invocation.json,
        ..out
    };
    let tool = Tool::select(invocation.tool)?;
    let mut project = Project::load(tool, &invocation.project)?;
    if tool == Tool::V1 {
        // v1's `config` keeps services of inactive profiles; v1's `up` would skip them, so
        // they must not be resolved (nor fail the plan) either.
        let named: Vec<String> = invocation
            .rest
            .iter()
            .filter_map(|a| a.to_str())
            .filter(|a| !a.starts_with('-'))
            .map(str::to_owned)
            .collect();
        let profiles = std::env::var("COMPOSE_PROFILES").ok();
        project.drop_inactive_profiles(&named, profiles.as_deref());
    }
    let config = match config::find(config_path)? {
        Some(path) => Some(config::load(&path).context("loading the configuration")?),
        None => None,
    };
    // A running agent resolves with its own providers (the CLI may hold no credentials);
    // without one, or with `--no-agent`, the CLI reads the local vault itself.
    let mut resolver = Resolver::new(config.as_ref(), || open_vault().map(|(_, c)| c));
    if use_agent && let Some(client) = super::agent::serving_agent(config_path) {
        resolver = resolver.through_agent(client)?;
    }
    if let Some(socket) = resolver.agent_socket() {
        out.note(&format!(
            "docker-dso: resolving through the agent at {}",
            socket.display()
        ))?;
    }
    let mut plan = plan::build(&project, &mut resolver, files::is_root());
    if subcommand == "up" {
        // Taken listen addresses are problems like the others: reported together, before
        // anything changes.
        let taken = taken_listen_addresses(&plan)?;
        plan.problems.extend(taken);
    }
    if let Some(problem) = runtime_problem(&plan) {
        plan.problems.push(problem);
    }

    // 1. Planning only: print, and fail when there are problems.
    if dry_run {
        print_plan(out, &plan, &project)?;
        if !plan.problems.is_empty() {
            return Err(ComposeError::Problems {
                count: plan.problems.len(),
            }
            .into());
        }
        return Ok(());
    }
    if !plan.problems.is_empty() {
        print_problems(&plan);
        return Err(ComposeError::Problems {
            count: plan.problems.len(),
        }
        .into());
    }

    // 2. Checks that need the host, still before anything changes.
    let with_routes = subcommand == "up";
    let needs_proxy = with_routes && plan.services.iter().any(|s| !s.proxied.is_empty());
    let needs_files = plan.services.iter().any(|s| s.has_files());
    let detached = invocation
        .rest
        .iter()
        .any(|a| a == "-d" || a == "--detach" || a == "--wait");
    // LIMITATION: proxied ports need a detached `up`: the routes are set after compose returns
    // — watching for the containers while an attached compose runs would lift it.
    if needs_proxy && !detached {
        return Err(ComposeError::NeedsDetach.into());
    }
    let runtime = if needs_files || needs_proxy {
        let dir = files::runtime_dir()?;
        if needs_files {
            // Checked before the directory is made, so a refusal leaves nothing behind.
            files::check_tmpfs_before_create(&dir)?;
        }
        files::ensure_dir(&dir)?;
        if needs_files {
            files::check_tmpfs(&dir)?;
        }
        Some(dir)
    } else {
        None
    };

    // 3. Secret files, one new generation per service whose files changed.
    // LIMITATION: a generation belongs to a service, so replicas (`scale`) share one directory
    // — per-container directories need the agent to create containers itself (issue 5).
    let mut generations = BTreeMap::new();
    let mut created = Vec::new();
    if let Some(runtime) = runtime.as_deref().filter(|_| needs_files) {
        for service in plan.services.iter().filter(|s| s.has_files()) {
            let files_of_service: Vec<_> = service
                .references
                .iter()
                .filter(|r| r.injection == Injection::File)
                .filter_map(|r| {
                    let key = (service.name.clone(), r.variable.clone());
                    plan.values
                        .get(&key)
                        .map(|v| (r.variable.clone(), v.clone()))
                })
                .collect();
            let dir = files::project_dir(runtime, &project.name).join(&service.name);
            let owner = Owner { ids: service.owner };
            let (generation, new) = files::write_generation(&dir, &files_of_service, owner)?;
            if new {
                created.push(generation.clone());
            }
            generations.insert(service.name.clone(), generation);
        }
    }

    // 4. Compose with the resolved project on stdin.
    plan::apply(&plan, &mut project, &generations);
    label_owner(&plan, &mut project);
    let mut args = vec![OsString::from(subcommand)];
    args.extend(invocation.rest.iter().cloned());
    if let Err(err) = run_compose(&project, &args, subcommand) {
        for dir in &created {
            let _ = files::remove_tree(dir);
        }
        return Err(err);
    }

    // 5. Routes for the proxied ports, then the old generations can go.
    // LIMITATION: a failure from here on (the proxy refusing a route) leaves the containers
    // running; the error names the step — a rollback through `compose down` would lift it.
    if needs_proxy && let Some(runtime) = &runtime {
        let named = named_services(&project, &invocation.rest);
        set_routes(&plan, &project, runtime, &named)?;
    }
    if let Some(runtime) = &runtime {
        for (service, generation) in &generations {
            let dir = files::project_dir(runtime, &project.name).join(service);
            files::remove_other_generations(&dir, generation)?;
        }
    }
    let managed = plan.services.iter().filter(|s| s.is_managed()).count();
    out.result(
        &serde_json::json!({ "project": project.name, "managed_services": managed }),
        &format!(
            "docker-dso: project {} is {subcommand} ({})",
            project.name,
            counted(managed, "managed service", "managed services")
        ),
    )?;
    Ok(())
}

/// Labels each managed service with this user's runtime directory, so only the agent of that
/// directory manages its containers (several agents may share one Docker daemon).
fn label_owner(plan: &Plan, project: &mut Project) {
    let Ok(runtime) = files::runtime_dir() else {
        return;
    };
    let value = runtime.display().to_string();
    for service in plan.services.iter().filter(|s| s.is_managed()) {
        if let Some(model) = project.service_mut(&service.name) {
            crate::compose::project::add_labels(
                model,
                vec![(
                    controlplane::agent::owner::RUNTIME_LABEL.to_owned(),
                    value.clone(),
                )],
            );
        }
    }
}

/// Runs `compose down`, then deletes the project's routes (stopping a proxy `up` started once
/// it has none left) and its secret files.
fn run_down(out: Output, invocation: Invocation) -> anyhow::Result<()> {
    let out = Output {
        json: out.json || invocation.json,
        ..out
    };
    let tool = Tool::select(invocation.tool)?;
    let project = Project::load(tool, &invocation.project)?;

    // The routes are named in the labels of the containers compose is about to remove.
    let mut routes: Vec<String> = labelled_routes(&project.name)?;

    let mut args = vec![OsString::from("down")];
    args.extend(invocation.rest.iter().cloned());
    run_compose(&project, &args, "down")?;

    let runtime = files::runtime_dir()?;
    let proxy_files = ProxyFiles::in_dir(&runtime);
    let mut deleted = 0;
    let proxy = Proxy::connect(&proxy_files)?;
    if proxy.is_none() {
        // A proxy `up` started and that was killed since: its routes died with it.
        proxy::forget_dead_proxy(&proxy_files);
    }
    if let Some(proxy) = proxy {
        let prefix = format!("{}.", project.name);
        if let Ok(existing) = proxy.routes() {
            routes.extend(
                existing
                    .into_iter()
                    .map(|r| r.name)
                    .filter(|n| n.starts_with(&prefix)),
            );
        }
        routes.sort();
        routes.dedup();
        for route in &routes {
            let existed = proxy
                .delete_route(route)
                .map_err(|source| ComposeError::Route {
                    route: route.clone(),
                    source: Box::new(source),
                })?;
            deleted += usize::from(existed);
        }
        if proxy.routes().is_ok_and(|left| left.is_empty()) {
            proxy::stop_started_proxy(&proxy_files)?;
        }
    }
    files::remove_tree(&files::project_dir(&runtime, &project.name))?;
    out.result(
        &serde_json::json!({ "project": project.name, "routes_deleted": deleted }),
        &format!(
            "docker-dso: project {} is down ({} deleted)",
            project.name,
            counted(deleted, "route", "routes")
        ),
    )?;
    Ok(())
}

/// Runs compose on `project` with the project text on stdin.
fn run_compose(project: &Project, args: &[OsString], subcommand: &str) -> anyhow::Result<()> {
    let text = Zeroizing::new(render(&project.model).context("rendering the project")?);
    let mut child = project
        .command(args)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|source| ComposeError::Spawn {
            tool: project.tool.name(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A compose that exits early closes the pipe; its exit status tells why.
        let _ = stdin.write_all(&text);
    }
    let status = child.wait().map_err(|source| ComposeError::Spawn {
        tool: project.tool.name(),
        source,
    })?;
    if !status.success() {
        return Err(ComposeError::ComposeFailed {
            tool: project.tool.name(),
            subcommand: subcommand.to_owned(),
            status,
        }
        .into());
    }
    Ok(())
}

/// Problems for proxied listen addresses that something other than our own route holds.
fn taken_listen_addresses(plan: &Plan) -> anyhow::Result<Vec<plan::Problem>> {
    if plan.services.iter().all(|s| s.proxied.is_empty()) {
        return Ok(Vec::new());
    }
    // Without a runtime directory there is no proxy of ours, so no route to tell apart.
    let existing = match files::runtime_dir() {
        Ok(runtime) => match Proxy::connect(&ProxyFiles::in_dir(&runtime))? {
            Some(proxy) => proxy.routes().unwrap_or_default(),
            None => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    let mut problems = Vec::new();
    for service in &plan.services {
        for port in &service.proxied {
            let ours = existing
                .iter()
                .any(|r| r.name == port.route && r.listen == port.listen);
            if !ours && let Err(err) = TcpListener::bind(port.listen.as_str()) {
                problems.push(plan::Problem {
                    service: service.name.clone(),
                    variable: Some("ports".into()),
                    reference: None,
                    reason: format!("cannot listen on {}: {err}", port.listen),
                    hint: Some("`ss -ltnp` shows what holds the address".into()),
                });
            }
        }
    }
    Ok(problems)
}

/// Points each proxied port's route at the service's containers: one upstream per running
/// replica, the container's IP address on the project's default network (else on its first
/// network in name order) and the container port. Nothing is published on the host for these
/// ports, so the proxy is the only hop.
// The proxy is the one on RUNTIME/proxy.sock, which is also the one a running agent adopts or
// starts. A container that restarts later with a new address is routed again by the agent
// (Docker events); without an agent the route keeps the old address until the next `up`.
// LIMITATION: a network the host cannot reach (macvlan/ipvlan without a host interface) gives
// an address the proxy cannot dial; the route is set anyway — a connect probe per upstream
// before the route is set would turn it into an error.
fn set_routes(
    plan: &Plan,
    project: &Project,
    runtime: &Path,
    named: &[String],
) -> anyhow::Result<()> {
    let proxy = Proxy::ensure(&ProxyFiles::in_dir(runtime))?;
    let default_network = project.default_network();
    for service in plan.services.iter().filter(|s| !s.proxied.is_empty()) {
        let listing = docker(&[
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={}", project.name),
            "--filter",
            &format!("label=com.docker.compose.service={}", service.name),
            "--format",
            "{{.Names}} {{.ID}}",
        ])?;
        // Replica order by name, so a route's upstream list does not depend on `ps` order.
        let mut containers: Vec<(&str, &str)> = listing
            .lines()
            .filter_map(|l| l.trim().split_once(' '))
            .collect();
        containers.sort_unstable();
        let mut networks = Vec::new();
        for (_, id) in &containers {
            let text = docker(&[
                "inspect",
                "--format",
                "{{json .NetworkSettings.Networks}}",
                id,
            ])?;
            let parsed: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text.trim())
                    .with_context(|| format!("reading the networks of container {id}"))?;
            networks.push(parsed);
        }
        for port in &service.proxied {
            let mut upstreams = Vec::new();
            for ((name, _), attached) in containers.iter().zip(&networks) {
                let (network, upstream) =
                    proxy::container_upstream(attached, &default_network, port.target).ok_or_else(
                        || ComposeError::NoUpstream {
                            service: service.name.clone(),
                            container: (*name).to_owned(),
                            target: port.target,
                        },
                    )?;
                tracing::debug!(
                    route = %port.route,
                    container = %name,
                    network = %network,
                    upstream.addr = %upstream,
                    "upstream chosen"
                );
                upstreams.push(upstream);
            }
            // `up -d web` starts only web and its dependencies; another proxied service
            // without containers was not asked for and gets no route.
            if upstreams.is_empty() && !named.is_empty() && !named.contains(&service.name) {
                continue;
            }
            // LIMITATION: the route keeps its old upstreams after this error (e.g. after
            // `--scale SERVICE=0`) until `down` — deleting or holding the route would lift it,
            // once the agent (issue 5) decides which of the two a scaled-down service wants.
            if upstreams.is_empty() {
                return Err(ComposeError::NoContainers {
                    service: service.name.clone(),
                }
                .into());
            }
            let request = RouteRequest {
                listen: port.listen.clone(),
                upstreams,
                drain_timeout_ms: None,
            };
            proxy
                .put_route(&port.route, &request)
                .map_err(|source| ComposeError::Route {
                    route: port.route.clone(),
                    source: Box::new(source),
                })?;
            tracing::info!(route = %port.route, listen.addr = %port.listen, "route set");
        }
    }
    Ok(())
}

/// The service names among the arguments of `up` (compose starts only those and their
/// dependencies when any is given).
fn named_services(project: &Project, rest: &[OsString]) -> Vec<String> {
    let services = project.service_names();
    rest.iter()
        .filter_map(|a| a.to_str())
        .filter(|a| services.iter().any(|s| s == a))
        .map(str::to_owned)
        .collect()
}

/// Route names recorded in the labels of the project's containers.
fn labelled_routes(project: &str) -> anyhow::Result<Vec<String>> {
    let listing = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        "label=dso.managed=true",
        "--format",
        "{{.Label \"dso.proxy.routes\"}}",
    ])?;
    let mut routes = Vec::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(line) {
            routes.extend(
                items
                    .iter()
                    .filter_map(|i| i.get("route")?.as_str().map(str::to_owned)),
            );
        }
    }
    Ok(routes)
}

/// Runs `docker ARGS` and returns stdout.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running docker {}", args.join(" ")))?;
    if !output.status.success() {
        anyhow::bail!(
            "`docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn print_problems(plan: &Plan) {
    let mut stderr = std::io::stderr().lock();
    for problem in &plan.problems {
        let _ = writeln!(stderr, "docker-dso: problem: {problem}");
    }
}

fn print_plan(out: Output, plan: &Plan, project: &Project) -> std::io::Result<()> {
    out.data(&plan::to_json(plan, project), |w| {
        writeln!(
            w,
            "project {} (compose {})",
            project.name,
            project.tool.label()
        )?;
        for service in &plan.services {
            if !service.is_managed() {
                writeln!(w, "service {}: not managed", service.name)?;
                continue;
            }
            writeln!(
                w,
                "service {} (strategy {})",
                service.name, service.strategy
            )?;
            for r in &service.references {
                let status = match &r.problem {
                    None => "resolved".to_owned(),
                    Some(p) => format!("NOT RESOLVED: {}", p.reason),
                };
                let place = r
                    .container_path
                    .as_deref()
                    .map(|p| format!(" -> file {p}"))
                    .unwrap_or_default();
                writeln!(
                    w,
                    "  {} = {} [{} via {}]{place}: {status}",
                    r.variable,
                    r.text,
                    r.injection.as_str(),
                    r.provider
                )?;
            }
            for p in &service.proxied {
                writeln!(
                    w,
                    "  port {} -> proxy route {} -> container port {}",
                    p.listen, p.route, p.target
                )?;
            }
        }
        // Problems of references were printed with them; the rest (labels, ports, misplaced
        // references) here.
        let shown = |p: &plan::Problem| {
            plan.services
                .iter()
                .flat_map(|s| &s.references)
                .any(|r| r.problem.as_ref() == Some(p))
        };
        for problem in plan.problems.iter().filter(|p| !shown(p)) {
            writeln!(w, "problem: {problem}")?;
        }
        Ok(())
    })
}

/// `1 route`, `2 routes`: a count with the noun that fits it.
pub(crate) fn counted(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
