//! `shoal stack deploy|ls|services|ps|rm`: an application described in compose files,
//! deployed as Docker's `docker stack deploy` does it, by the CLI through the manager's
//! ordinary requests (networks, secrets, configs, services): nothing of a stack is kept
//! apart on the manager. What belongs to stack `NAME` is what carries the label
//! `com.docker.stack.namespace=NAME`.
//!
//! A deploy creates what is missing (networks, then secrets and configs, then services),
//! updates only the services whose spec differs from the one running (each rolls with
//! its own update config), and removes services of the stack that the files no longer
//! have only with `--prune`. Existing secrets and configs are not changed by a deploy
//! (`shoal secret update` rotates one).

pub mod compose;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use shoal_proto::dispatch::{ServiceReply, ServiceRequest, ServiceView, TaskView};
use shoal_proto::networks::{Network, NetworkReply, NetworkRequest};
use shoal_proto::secrets::{Kind, ObjectReply, ObjectRequest, ObjectSpec, ObjectView};
use shoal_proto::{BoundedVec, ControlReply, ControlRequest, ServiceSpec};

use self::compose::{Plan, NAMESPACE};
use super::client::Client;
use super::output::table;

/// `shoal stack` subcommands.
#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Deploy a new stack or update an existing one.
    #[command(alias = "up")]
    Deploy {
        /// A compose file; several merge in order (`-c base.yml -c prod.yml`).
        #[arg(short = 'c', long = "compose-file", required = true)]
        compose_file: Vec<PathBuf>,
        /// Remove the stack's services the files no longer have.
        #[arg(long)]
        prune: bool,
        /// The stack's name.
        name: String,
    },
    /// List stacks.
    #[command(alias = "list")]
    Ls,
    /// List the services of a stack.
    Services {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
        /// The stack's name.
        name: String,
    },
    /// List the tasks of a stack.
    Ps {
        /// The stack's name.
        name: String,
    },
    /// Remove stacks: their services, networks, secrets and configs.
    #[command(alias = "remove", alias = "down")]
    Rm {
        /// Stack names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Reads, merges, interpolates (from the process environment) and plans the compose
/// files of stack `stack`.
pub fn plan_files(stack: &str, files: &[PathBuf], env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Plan> {
    check_stack_name(stack)?;
    let mut doc = serde_yaml_ng::Value::Null;
    let mut texts: Vec<(String, String)> = Vec::new();
    for f in files {
        let shown = f.display().to_string();
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read {shown}: {e}"))?;
        let mut v = compose::parse(&shown, &text)?;
        compose::interpolate_all(&mut v, env, "").map_err(|(path, message)| compose::ComposeError {
            file: shown.clone(),
            line: compose::locate(&text, &path),
            path,
            message,
        })?;
        if doc.is_null() {
            doc = v;
        } else {
            compose::merge(&mut doc, v);
        }
        texts.push((shown, text));
    }
    // Relative paths (env_file, secrets' and configs' files) are from the first file's
    // directory, as docker's.
    let base = files.first().and_then(|f| f.parent()).map(Path::to_path_buf).unwrap_or_default();
    let read = |p: &str| std::fs::read_to_string(base.join(p)).map_err(|e| e.to_string());
    let name = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join("+");
    let mut plan = compose::Reader::new(&name, stack, &read).plan(&doc).map_err(|mut e| {
        // The last file that has the key is the one whose value was taken.
        if let Some((file, line)) =
            texts.iter().rev().find_map(|(file, text)| Some((file, compose::locate(text, &e.path)?)))
        {
            e.file.clone_from(file);
            e.line = Some(line);
        }
        e
    })?;
    for o in &mut plan.objects {
        if let Some(file) = &mut o.file {
            *file = base.join(&*file).display().to_string();
        }
    }
    Ok(plan)
}

/// Docker's rule for stack names, kept short enough for `<stack>_<service>`.
pub fn check_stack_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        anyhow::bail!(
            "invalid stack name {name:?}: use lowercase letters, digits, '-' and '_' (at most 32, starting with a \
             letter or digit)"
        );
    }
    Ok(())
}

/// Whether `labels` put an object in stack `stack`.
pub fn in_stack(labels: &[shoal_proto::Label], stack: &str) -> bool {
    labels.iter().any(|l| l.key.as_str() == NAMESPACE && l.value.as_str() == stack)
}

/// The stack `labels` put an object in, if any.
pub fn stack_of(labels: &[shoal_proto::Label]) -> Option<&str> {
    labels.iter().find(|l| l.key.as_str() == NAMESPACE).map(|l| l.value.as_str())
}

/// `desired` with what the manager fills in taken from `current` (platforms, objects'
/// versions, ingress ports it chose), so that equal means "nothing to change".
pub fn normalized(desired: &ServiceSpec, current: &ServiceSpec) -> ServiceSpec {
    let mut d = desired.clone();
    d.platforms = current.platforms.clone();
    let versions =
        |refs: &BoundedVec<shoal_proto::secrets::SecretRef, { shoal_proto::secrets::MAX_REFS }>,
         now: &BoundedVec<shoal_proto::secrets::SecretRef, { shoal_proto::secrets::MAX_REFS }>| {
            let v: Vec<_> = refs
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if let Some(c) = now.iter().find(|c| c.source == r.source && c.target == r.target) {
                        r.version = c.version;
                    }
                    r
                })
                .collect();
            v.try_into().expect("the same length")
        };
    d.secrets = versions(&desired.secrets, &current.secrets);
    d.configs = versions(&desired.configs, &current.configs);
    let ports: Vec<_> = desired
        .ports
        .iter()
        .map(|p| {
            let mut p = *p;
            if p.published.is_none() {
                if let Some(c) =
                    current.ports.iter().find(|c| c.target == p.target && c.protocol == p.protocol && c.mode == p.mode)
                {
                    p.published = c.published;
                }
            }
            p
        })
        .collect();
    d.ports = ports.try_into().expect("the same length");
    d
}

/// What a deploy does to the services: create, update (changed spec), keep, prune.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServiceDiff {
    /// Names to create.
    pub create: Vec<String>,
    /// Names whose spec changed.
    pub update: Vec<String>,
    /// Names left as they are.
    pub unchanged: Vec<String>,
    /// The stack's services the files no longer have.
    pub orphans: Vec<String>,
}

/// Compares the plan with the services running (all of them: a name taken by a service
/// outside the stack is refused).
pub fn diff(stack: &str, plan: &Plan, running: &[ServiceView]) -> anyhow::Result<ServiceDiff> {
    let mut out = ServiceDiff::default();
    let by_name: BTreeMap<&str, &ServiceView> = running.iter().map(|v| (v.service.spec.name.as_str(), v)).collect();
    for (name, spec) in &plan.services {
        match by_name.get(name.as_str()) {
            None => out.create.push(name.clone()),
            Some(v) if !in_stack(&v.service.spec.labels, stack) => {
                anyhow::bail!("service {name} exists and is not part of stack {stack}: remove it or rename the stack")
            }
            Some(v) => {
                if normalized(spec, &v.service.spec) == v.service.spec {
                    out.unchanged.push(name.clone());
                } else {
                    out.update.push(name.clone());
                }
            }
        }
    }
    for v in running {
        let name = v.service.spec.name.as_str();
        if in_stack(&v.service.spec.labels, stack) && !plan.services.contains_key(name) {
            out.orphans.push(name.to_owned());
        }
    }
    Ok(out)
}

async fn services(client: &Client) -> anyhow::Result<Vec<ServiceView>> {
    match client.call(ControlRequest::Service(ServiceRequest::List)).await? {
        ControlReply::Service(ServiceReply::Services(list)) => Ok(list.into_vec()),
        _ => anyhow::bail!("unexpected answer from the manager"),
    }
}

async fn service(client: &Client, req: ServiceRequest) -> anyhow::Result<ServiceReply> {
    match client.call(ControlRequest::Service(req)).await? {
        ControlReply::Service(r) => Ok(r),
        _ => anyhow::bail!("unexpected answer from the manager"),
    }
}

async fn networks(client: &Client) -> anyhow::Result<Vec<Network>> {
    match client.call(ControlRequest::Network(NetworkRequest::List)).await? {
        ControlReply::Network(NetworkReply::Networks(list)) => Ok(list.into_vec()),
        _ => anyhow::bail!("unexpected answer from the manager"),
    }
}

async fn objects(client: &Client, kind: Kind) -> anyhow::Result<Vec<ObjectView>> {
    match super::object::call(client, ObjectRequest::List(kind)).await? {
        ObjectReply::Objects(list) => Ok(list.into_vec()),
        _ => anyhow::bail!("unexpected answer from the manager"),
    }
}

fn text<const N: usize>(s: &str) -> anyhow::Result<shoal_proto::Text<N>> {
    shoal_proto::text(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

/// Runs a `shoal stack` subcommand.
pub async fn run(data_dir: &Path, cmd: StackCommand) -> anyhow::Result<()> {
    // A deploy's files are read and checked before connecting.
    let plan = match &cmd {
        StackCommand::Deploy { compose_file, name, .. } => {
            let plan = plan_files(name, compose_file, &|k| std::env::var(k).ok())?;
            for w in &plan.warnings {
                eprintln!("Ignoring unsupported options: {w}");
            }
            Some(plan)
        }
        StackCommand::Services { name, .. } | StackCommand::Ps { name } => {
            check_stack_name(name)?;
            None
        }
        _ => None,
    };
    let client = Client::connect(data_dir).await?;
    let result = dispatch(&client, cmd, plan).await;
    client.close().await;
    result
}

async fn dispatch(client: &Client, cmd: StackCommand, plan: Option<Plan>) -> anyhow::Result<()> {
    match cmd {
        StackCommand::Deploy { name, prune, .. } => deploy(client, &name, plan.expect("planned above"), prune).await,
        StackCommand::Ls => {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for v in services(client).await? {
                if let Some(s) = stack_of(&v.service.spec.labels) {
                    *counts.entry(s.to_owned()).or_default() += 1;
                }
            }
            let rows: Vec<Vec<String>> =
                counts.into_iter().map(|(n, c)| vec![n, c.to_string(), "Swarm".into()]).collect();
            print!("{}", table(&["NAME", "SERVICES", "ORCHESTRATOR"], &rows));
            Ok(())
        }
        StackCommand::Services { quiet, name } => {
            let mine: Vec<ServiceView> =
                services(client).await?.into_iter().filter(|v| in_stack(&v.service.spec.labels, &name)).collect();
            if mine.is_empty() {
                anyhow::bail!("nothing found in stack: {name}");
            }
            if quiet {
                mine.iter().for_each(|v| println!("{}", v.service.id.short()));
            } else {
                print!("{}", super::service::ls_table(&mine));
            }
            Ok(())
        }
        StackCommand::Ps { name } => {
            let mine: Vec<String> = services(client)
                .await?
                .into_iter()
                .filter(|v| in_stack(&v.service.spec.labels, &name))
                .map(|v| v.service.spec.name.to_string())
                .collect();
            if mine.is_empty() {
                anyhow::bail!("nothing found in stack: {name}");
            }
            let names = mine.iter().map(|n| text(n)).collect::<anyhow::Result<Vec<_>>>()?;
            let tasks: Vec<TaskView> = match service(
                client,
                ServiceRequest::Ps { services: names.try_into().map_err(|_| anyhow::anyhow!("too many services"))? },
            )
            .await?
            {
                ServiceReply::Tasks(t) => t.into_vec(),
                _ => anyhow::bail!("unexpected answer from the manager"),
            };
            print!("{}", super::service::ps_table(&tasks, shoal_link::wall_ms()));
            Ok(())
        }
        StackCommand::Rm { names } => {
            let mut failed = Vec::new();
            for n in names {
                if let Err(e) = remove(client, &n).await {
                    failed.push(format!("{n}: {e:#}"));
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
            Ok(())
        }
    }
}

async fn deploy(client: &Client, stack: &str, plan: Plan, prune: bool) -> anyhow::Result<()> {
    let running = services(client).await?;
    let changes = diff(stack, &plan, &running)?;
    // Networks first: services refer to them by name.
    let existing: Vec<String> = networks(client).await?.into_iter().map(|n| n.spec.name.to_string()).collect();
    for n in &plan.networks {
        match (&n.spec, existing.contains(&n.name)) {
            (_, true) => {}
            (None, false) => anyhow::bail!("network {} is external and does not exist: create it first", n.name),
            (Some(spec), false) => {
                println!("Creating network {}", n.name);
                match client.call(ControlRequest::Network(NetworkRequest::Create(Box::new(spec.clone())))).await? {
                    ControlReply::Network(NetworkReply::Created(_)) => {}
                    _ => anyhow::bail!("unexpected answer from the manager"),
                }
            }
        }
    }
    for kind in [Kind::Secret, Kind::Config] {
        let have: Vec<String> = objects(client, kind).await?.into_iter().map(|o| o.name.to_string()).collect();
        for o in plan.objects.iter().filter(|o| o.kind == kind) {
            if have.contains(&o.name) {
                continue;
            }
            let Some(file) = &o.file else {
                anyhow::bail!("{kind} {} is external and does not exist: create it first", o.name);
            };
            println!("Creating {kind} {}", o.name);
            let spec = ObjectSpec {
                kind,
                name: text(&o.name)?,
                labels: super::object::labels(&[format!("{NAMESPACE}={stack}")])?,
                data: super::object::read_data(kind, file)?,
            };
            super::object::call(client, ObjectRequest::Create(Box::new(spec))).await?;
        }
    }
    for name in &changes.create {
        println!("Creating service {name}");
        let spec = plan.services[name].clone();
        service(client, ServiceRequest::Create(Box::new(spec))).await?;
    }
    for name in &changes.update {
        println!("Updating service {name}");
        let current = running.iter().find(|v| v.service.spec.name.as_str() == name).expect("diffed against it");
        let spec = normalized(&plan.services[name], &current.service.spec);
        service(
            client,
            ServiceRequest::Update {
                service: text(name)?,
                spec: Box::new(spec),
                version: current.service.spec_version,
            },
        )
        .await?;
    }
    for name in &changes.orphans {
        if prune {
            println!("Removing service {name}");
            service(client, ServiceRequest::Remove { service: text(name)? }).await?;
        } else {
            eprintln!("Service {name} is no longer in the compose files: `--prune` removes it");
        }
    }
    Ok(())
}

/// Removes a stack: services first, then (once their tasks let go of them) networks,
/// then secrets and configs.
async fn remove(client: &Client, stack: &str) -> anyhow::Result<()> {
    let mine: Vec<ServiceView> =
        services(client).await?.into_iter().filter(|v| in_stack(&v.service.spec.labels, stack)).collect();
    let nets: Vec<Network> = networks(client).await?.into_iter().filter(|n| in_stack(&n.spec.labels, stack)).collect();
    let mut objs = Vec::new();
    for kind in [Kind::Secret, Kind::Config] {
        objs.extend(objects(client, kind).await?.into_iter().filter(|o| in_stack(&o.labels, stack)));
    }
    if mine.is_empty() && nets.is_empty() && objs.is_empty() {
        anyhow::bail!("nothing found in stack: {stack}");
    }
    for v in &mine {
        println!("Removing service {}", v.service.spec.name);
        service(client, ServiceRequest::Remove { service: text(&v.service.id.to_string())? }).await?;
    }
    for o in &objs {
        println!("Removing {} {}", o.kind, o.name);
        super::object::call(client, ObjectRequest::Remove { kind: o.kind, name: text(o.id.as_str())? }).await?;
    }
    // A network is refused while tasks still hold addresses on it: they are stopping.
    for n in &nets {
        println!("Removing network {}", n.spec.name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let req = ControlRequest::Network(NetworkRequest::Remove { network: text(n.id.as_str())? });
            match client.call(req).await {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "network still in use; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!("network {} is still in use", n.spec.name)))
                }
            }
        }
    }
    Ok(())
}
