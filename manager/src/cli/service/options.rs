//! The container-option flags of `service create` and `service update` (`--mount`,
//! `--device`, `--cap-add`, `--user`, `--sysctl`, `--label`, ...), Docker's names and
//! forms, and how they make or change a spec's [`ContainerOptions`] and labels. Each
//! value is parsed by `shoal_proto::options`, so a malformed one is refused before the
//! CLI connects.

use clap::Args;
use shoal_proto::options::{
    check_container_path, check_group, check_user, parse_capability, parse_dns, parse_entrypoint, ContainerOptions,
    DeviceMapping, Mount, Sysctl, Ulimit,
};
use shoal_proto::{BoundedVec, Label, ServiceSpec};

use super::args::{bounded, strings, text};

fn cap(s: &str) -> Result<String, String> {
    parse_capability(s).map(|c| c.to_string()).map_err(|e| e.to_string())
}
fn user(s: &str) -> Result<String, String> {
    check_user(s).map(|()| s.to_owned()).map_err(|e| format!("invalid --user {s:?}: {e}"))
}
fn group(s: &str) -> Result<String, String> {
    check_group(s).map(|()| s.to_owned()).map_err(|e| format!("invalid --group-add {s:?}: {e}"))
}
fn workdir(s: &str) -> Result<String, String> {
    check_container_path(s).map(|()| s.to_owned()).map_err(|e| format!("invalid --workdir {s:?}: {e}"))
}
/// `--entrypoint`'s words (a type of its own: clap reads `Option<Vec<_>>` as a list flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint(pub Vec<String>);

fn entrypoint(s: &str) -> Result<Entrypoint, String> {
    parse_entrypoint(s).map(Entrypoint).map_err(|e| e.to_string())
}
fn dns(s: &str) -> Result<String, String> {
    parse_dns(s).map(|d| d.to_string()).map_err(|e| e.to_string())
}
/// A `KEY=VALUE` label (`KEY` alone: an empty value, as Docker takes it).
pub(super) fn label(s: &str) -> Result<Label, String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        return Err(format!("invalid label {s:?}: expected KEY=VALUE"));
    }
    Ok(Label {
        key: shoal_proto::text(k).map_err(|e| format!("label key {k:?}: {e}"))?,
        value: shoal_proto::text(v).map_err(|e| format!("label {k:?}: {e}"))?,
    })
}

/// The container options of `service create`.
#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct OptionsArgs {
    /// Attach a filesystem mount: `type=bind|volume|tmpfs,source=…,target=…[,readonly]
    /// [,volume-opt=K=V][,tmpfs-size=…][,tmpfs-mode=…]`.
    #[arg(long, value_parser = |s: &str| Mount::parse(s).map_err(|e| e.to_string()))]
    pub mount: Vec<Mount>,
    /// Give a board device: `/dev/x[:/dev/y[:rwm]]`.
    #[arg(long, value_parser = |s: &str| DeviceMapping::parse(s).map_err(|e| e.to_string()))]
    pub device: Vec<DeviceMapping>,
    /// Add a supplementary group (name in the image, or gid).
    #[arg(long = "group-add", value_parser = group)]
    pub group_add: Vec<String>,
    /// Add a Linux capability (e.g. NET_ADMIN, or ALL).
    #[arg(long = "cap-add", value_parser = cap)]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (e.g. NET_RAW, or ALL).
    #[arg(long = "cap-drop", value_parser = cap)]
    pub cap_drop: Vec<String>,
    /// Username or UID (format: `<name|uid>[:<group|gid>]`).
    #[arg(long, short = 'u', value_parser = user)]
    pub user: Option<String>,
    /// Working directory inside the container (absolute).
    #[arg(long, short = 'w', value_parser = workdir)]
    pub workdir: Option<String>,
    /// Overwrite the image's entrypoint (`""`: none); its command is dropped too.
    #[arg(long, value_parser = entrypoint, allow_hyphen_values = true)]
    pub entrypoint: Option<Entrypoint>,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Run shoal's init as PID 1 (forwards signals, reaps orphans) [default].
    #[arg(long, conflicts_with = "no_init")]
    pub init: bool,
    /// Run the command itself as PID 1.
    #[arg(long = "no-init")]
    pub no_init: bool,
    /// A namespaced kernel parameter, e.g. net.core.somaxconn=1024.
    #[arg(long, value_parser = |s: &str| Sysctl::parse(s).map_err(|e| e.to_string()))]
    pub sysctl: Vec<Sysctl>,
    /// A resource limit, e.g. nofile=1024:2048.
    #[arg(long, value_parser = |s: &str| Ulimit::parse(s).map_err(|e| e.to_string()))]
    pub ulimit: Vec<Ulimit>,
    /// A service label (`KEY=VALUE`).
    #[arg(long, short = 'l', value_parser = label)]
    pub label: Vec<Label>,
    /// A container label (`KEY=VALUE`).
    #[arg(long = "container-label", value_parser = label)]
    pub container_label: Vec<Label>,
    /// Read environment variables from a file (`KEY=VALUE` lines; `#` comments).
    #[arg(long = "env-file")]
    pub env_file: Vec<std::path::PathBuf>,
    /// A DNS server for the containers (replaces the board's).
    #[arg(long, value_parser = dns)]
    pub dns: Vec<String>,
}

/// Reads an env file as Docker does: `KEY=VALUE` per line, blank lines and `#` comments
/// skipped, a bare `KEY` taking the value from this shell's environment (dropped when
/// unset).
pub fn read_env_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use std::io::Read;
    let what = || format!("env file {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    let mut text = String::new();
    // A spec holds at most 64 variables of 1 KiB: a file far larger is a mistake.
    file.take(1 << 20).read_to_string(&mut text).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => out.push(line.to_owned()),
            Some(_) => anyhow::bail!("{} line {}: expected KEY=VALUE", what(), n + 1),
            None if line.contains(char::is_whitespace) => {
                anyhow::bail!("{} line {}: variable {line:?} contains whitespace", what(), n + 1)
            }
            None => {
                if let Ok(v) = std::env::var(line) {
                    out.push(format!("{line}={v}"));
                }
            }
        }
    }
    Ok(out)
}

fn texts<const N: usize, const M: usize>(
    items: &[String],
    what: &str,
) -> anyhow::Result<BoundedVec<shoal_proto::Text<N>, M>> {
    bounded(items.iter().map(|s| text(s)).collect::<anyhow::Result<Vec<_>>>()?, what)
}

fn set_entrypoint(o: &mut ContainerOptions, e: &[String]) -> anyhow::Result<()> {
    o.entrypoint = Some(strings(e, "entrypoint words")?);
    Ok(())
}

impl OptionsArgs {
    /// Sets what these flags give on a new spec (after `--env`, which env files don't
    /// override).
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        let o = &mut spec.container;
        o.mounts = bounded(self.mount.clone(), "mounts")?;
        o.devices = bounded(self.device.clone(), "devices")?;
        o.group_add = texts(&self.group_add, "groups")?;
        o.cap_add = texts(&self.cap_add, "capabilities")?;
        o.cap_drop = texts(&self.cap_drop, "capabilities")?;
        o.user = self.user.as_deref().map(text).transpose()?;
        o.workdir = self
            .workdir
            .as_deref()
            .map(shoal_proto::BoundedString::try_from)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--workdir: {e}"))?;
        if let Some(Entrypoint(e)) = &self.entrypoint {
            set_entrypoint(o, e)?;
        }
        o.read_only = self.read_only;
        o.init = if self.no_init { Some(false) } else { self.init.then_some(true) };
        o.sysctls = bounded(self.sysctl.clone(), "sysctls")?;
        o.ulimits = bounded(self.ulimit.clone(), "ulimits")?;
        o.labels = bounded(self.container_label.clone(), "container labels")?;
        o.dns = texts(&self.dns, "DNS servers")?;
        spec.labels = bounded(self.label.clone(), "labels")?;
        if !self.env_file.is_empty() {
            let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
            let given: Vec<String> = spec.env.iter().map(|e| key(e)).collect();
            let mut env = Vec::new();
            for f in &self.env_file {
                for entry in read_env_file(f)? {
                    // A later file wins over an earlier one; --env over both.
                    env.retain(|e: &String| key(e) != key(&entry));
                    if !given.contains(&key(&entry)) {
                        env.push(entry);
                    }
                }
            }
            env.extend(spec.env.iter().map(|e| e.to_string()));
            spec.env = strings(&env, "environment variables")?;
        }
        Ok(())
    }
}

/// The container options of `service update`: `-add`/`-rm` pairs for lists, and the
/// single values set again.
#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct OptionsUpdateArgs {
    /// Add or replace a mount (same form as `create --mount`; replaces one at its target).
    #[arg(long = "mount-add", value_parser = |s: &str| Mount::parse(s).map_err(|e| e.to_string()))]
    pub mount_add: Vec<Mount>,
    /// Remove a mount by its target path.
    #[arg(long = "mount-rm")]
    pub mount_rm: Vec<String>,
    /// Add a device.
    #[arg(long = "device-add", value_parser = |s: &str| DeviceMapping::parse(s).map_err(|e| e.to_string()))]
    pub device_add: Vec<DeviceMapping>,
    /// Remove a device by its path (on the board or in the container).
    #[arg(long = "device-rm")]
    pub device_rm: Vec<String>,
    /// Add a supplementary group.
    #[arg(long = "group-add", value_parser = group)]
    pub group_add: Vec<String>,
    /// Remove a supplementary group.
    #[arg(long = "group-rm")]
    pub group_rm: Vec<String>,
    /// Add a capability (and no longer drop it).
    #[arg(long = "cap-add", value_parser = cap)]
    pub cap_add: Vec<String>,
    /// Drop a capability (and no longer add it).
    #[arg(long = "cap-drop", value_parser = cap)]
    pub cap_drop: Vec<String>,
    /// Username or UID (`""`: the image's).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Working directory (`""`: the image's).
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Overwrite the entrypoint.
    #[arg(long, value_parser = entrypoint, allow_hyphen_values = true)]
    pub entrypoint: Option<Entrypoint>,
    /// Root filesystem read-only (`--read-only=false` to undo).
    #[arg(long = "read-only", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub read_only: Option<bool>,
    /// Run shoal's init as PID 1 (`--init=false` is `--no-init`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, conflicts_with = "no_init")]
    pub init: Option<bool>,
    /// Run the command itself as PID 1.
    #[arg(long = "no-init")]
    pub no_init: bool,
    /// Add or change a sysctl.
    #[arg(long = "sysctl-add", value_parser = |s: &str| Sysctl::parse(s).map_err(|e| e.to_string()))]
    pub sysctl_add: Vec<Sysctl>,
    /// Remove a sysctl by name.
    #[arg(long = "sysctl-rm")]
    pub sysctl_rm: Vec<String>,
    /// Add or change a ulimit.
    #[arg(long = "ulimit-add", value_parser = |s: &str| Ulimit::parse(s).map_err(|e| e.to_string()))]
    pub ulimit_add: Vec<Ulimit>,
    /// Remove a ulimit by name.
    #[arg(long = "ulimit-rm")]
    pub ulimit_rm: Vec<String>,
    /// Add or change a service label.
    #[arg(long = "label-add", value_parser = label)]
    pub label_add: Vec<Label>,
    /// Remove a service label by key.
    #[arg(long = "label-rm")]
    pub label_rm: Vec<String>,
    /// Add or change a container label.
    #[arg(long = "container-label-add", value_parser = label)]
    pub container_label_add: Vec<Label>,
    /// Remove a container label by key.
    #[arg(long = "container-label-rm")]
    pub container_label_rm: Vec<String>,
    /// Add a DNS server.
    #[arg(long = "dns-add", value_parser = dns)]
    pub dns_add: Vec<String>,
    /// Remove a DNS server.
    #[arg(long = "dns-rm")]
    pub dns_rm: Vec<String>,
}

/// Removes by key, then adds (replacing the same key): labels, sysctls, ulimits, ...
fn patch<T: Clone>(list: &[T], rm: &[String], add: &[T], key: impl Fn(&T) -> String) -> Vec<T> {
    let mut out: Vec<T> = list.iter().filter(|x| !rm.contains(&key(x))).cloned().collect();
    for a in add {
        out.retain(|x| key(x) != key(a));
        out.push(a.clone());
    }
    out
}

impl OptionsUpdateArgs {
    /// Applies these flags to `spec`.
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        let o = &mut spec.container;
        for rm in &self.mount_rm {
            if !o.mounts.iter().any(|m| &*m.target == rm.as_str()) {
                anyhow::bail!("--mount-rm {rm}: the service has no mount at that target (see `shoal service inspect`)");
            }
        }
        o.mounts = bounded(patch(&o.mounts, &self.mount_rm, &self.mount_add, |m| m.target.to_string()), "mounts")?;
        let devices: Vec<DeviceMapping> = o
            .devices
            .iter()
            .filter(|d| !self.device_rm.iter().any(|r| *r == *d.host_path || *r == *d.container_path))
            .cloned()
            .collect();
        o.devices = bounded(patch(&devices, &[], &self.device_add, |d| d.container_path.to_string()), "devices")?;
        let groups: Vec<String> = o.group_add.iter().map(|g| g.to_string()).collect();
        o.group_add = texts(&patch(&groups, &self.group_rm, &self.group_add, String::clone), "groups")?;
        let add: Vec<String> = o.cap_add.iter().map(|c| c.to_string()).collect();
        let drop: Vec<String> = o.cap_drop.iter().map(|c| c.to_string()).collect();
        o.cap_add = texts(&patch(&add, &self.cap_drop, &self.cap_add, String::clone), "capabilities")?;
        o.cap_drop = texts(&patch(&drop, &self.cap_add, &self.cap_drop, String::clone), "capabilities")?;
        if let Some(u) = &self.user {
            o.user = if u.is_empty() { None } else { Some(text(&user(u).map_err(anyhow::Error::msg)?)?) };
        }
        if let Some(w) = &self.workdir {
            o.workdir = if w.is_empty() {
                None
            } else {
                Some(
                    shoal_proto::BoundedString::try_from(workdir(w).map_err(anyhow::Error::msg)?.as_str())
                        .map_err(|e| anyhow::anyhow!("--workdir: {e}"))?,
                )
            };
        }
        if let Some(Entrypoint(e)) = &self.entrypoint {
            set_entrypoint(o, e)?;
        }
        if let Some(r) = self.read_only {
            o.read_only = r;
        }
        if self.no_init {
            o.init = Some(false);
        } else if let Some(i) = self.init {
            o.init = Some(i);
        }
        o.sysctls = bounded(patch(&o.sysctls, &self.sysctl_rm, &self.sysctl_add, |s| s.name.to_string()), "sysctls")?;
        o.ulimits = bounded(patch(&o.ulimits, &self.ulimit_rm, &self.ulimit_add, |u| u.name.to_string()), "ulimits")?;
        o.labels = bounded(
            patch(&o.labels, &self.container_label_rm, &self.container_label_add, |l| l.key.to_string()),
            "container labels",
        )?;
        let servers: Vec<String> = o.dns.iter().map(|d| d.to_string()).collect();
        o.dns = texts(&patch(&servers, &self.dns_rm, &self.dns_add, String::clone), "DNS servers")?;
        spec.labels = bounded(patch(&spec.labels, &self.label_rm, &self.label_add, |l| l.key.to_string()), "labels")?;
        Ok(())
    }

    /// Whether any flag is given (a rollback refuses them).
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// Docker's `Spec.Labels` of `service inspect`.
pub fn labels_json(labels: &[Label]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|l| (l.key.to_string(), serde_json::json!(l.value.as_str()))).collect();
    serde_json::Value::Object(map)
}

/// The container options as Docker's `ContainerSpec` shows them (`Mounts`, `User`,
/// `CapabilityAdd`, ...), to merge into `service inspect`'s; `Devices` in the shape of a
/// container's `HostConfig.Devices`, since Swarm has none.
pub fn container_spec_json(o: &ContainerOptions) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        out.insert(k.to_owned(), v);
    };
    put("Labels", labels_json(&o.labels));
    if !o.mounts.is_empty() {
        let mounts: Vec<_> = o
            .mounts
            .iter()
            .map(|m| {
                let mut j = json!({ "Type": m.kind.to_string(), "Target": &*m.target });
                if let Some(s) = &m.source {
                    j["Source"] = json!(&**s);
                }
                if m.read_only {
                    j["ReadOnly"] = json!(true);
                }
                if !m.volume_opts.is_empty() {
                    let opts: serde_json::Map<_, _> = m
                        .volume_opts
                        .iter()
                        .filter_map(|o| o.split_once('=').map(|(k, v)| (k.to_owned(), json!(v))))
                        .collect();
                    j["VolumeOptions"] = json!({ "DriverConfig": { "Name": "local", "Options": opts } });
                }
                if m.tmpfs_size.is_some() || m.tmpfs_mode.is_some() {
                    let mut t = json!({});
                    if let Some(s) = m.tmpfs_size {
                        t["SizeBytes"] = json!(s);
                    }
                    if let Some(mode) = m.tmpfs_mode {
                        t["Mode"] = json!(mode);
                    }
                    j["TmpfsOptions"] = t;
                }
                j
            })
            .collect();
        put("Mounts", json!(mounts));
    }
    if !o.devices.is_empty() {
        let devices: Vec<_> = o
            .devices
            .iter()
            .map(|d| {
                json!({ "PathOnHost": &*d.host_path, "PathInContainer": &*d.container_path,
                        "CgroupPermissions": d.permissions.as_str() })
            })
            .collect();
        put("Devices", json!(devices));
    }
    if let Some(u) = &o.user {
        put("User", json!(u.as_str()));
    }
    if !o.group_add.is_empty() {
        put("Groups", json!(o.group_add.iter().map(|g| g.as_str()).collect::<Vec<_>>()));
    }
    if let Some(w) = &o.workdir {
        put("Dir", json!(&**w));
    }
    if let Some(e) = &o.entrypoint {
        put("Command", json!(e.iter().map(|a| a.to_string()).collect::<Vec<_>>()));
    }
    if o.read_only {
        put("ReadOnly", json!(true));
    }
    if let Some(i) = o.init {
        put("Init", json!(i));
    }
    if !o.cap_add.is_empty() {
        put("CapabilityAdd", json!(o.cap_add.iter().map(|c| c.as_str()).collect::<Vec<_>>()));
    }
    if !o.cap_drop.is_empty() {
        put("CapabilityDrop", json!(o.cap_drop.iter().map(|c| c.as_str()).collect::<Vec<_>>()));
    }
    if !o.sysctls.is_empty() {
        let map: serde_json::Map<_, _> =
            o.sysctls.iter().map(|s| (s.name.to_string(), json!(s.value.as_str()))).collect();
        put("Sysctls", json!(map));
    }
    if !o.ulimits.is_empty() {
        // Docker's -1 for unlimited.
        let n = |v: u64| if v == u64::MAX { json!(-1) } else { json!(v) };
        let list: Vec<_> = o
            .ulimits
            .iter()
            .map(|u| json!({ "Name": u.name.as_str(), "Soft": n(u.soft), "Hard": n(u.hard) }))
            .collect();
        put("Ulimits", json!(list));
    }
    if !o.dns.is_empty() {
        put("DNSConfig", json!({ "Nameservers": o.dns.iter().map(|d| d.as_str()).collect::<Vec<_>>() }));
    }
    out
}

/// The container options for `service inspect --pretty`, after Docker's (`Mounts:`,
/// `User:`, ...); empty when none is set.
pub fn pretty_text(o: &ContainerOptions) -> String {
    let mut out = String::new();
    if let Some(u) = &o.user {
        out.push_str(&format!(" User:\t\t{u}\n"));
    }
    if let Some(w) = &o.workdir {
        out.push_str(&format!(" Dir:\t\t{}\n", &**w));
    }
    if o.read_only {
        out.push_str(" Read Only:\ttrue\n");
    }
    if let Some(i) = o.init {
        out.push_str(&format!(" Init:\t\t{i}\n"));
    }
    for (title, caps) in [(" Capabilities added:", &o.cap_add), (" Capabilities dropped:", &o.cap_drop)] {
        if !caps.is_empty() {
            out.push_str(&format!("{title}\t{}\n", caps.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")));
        }
    }
    if !o.mounts.is_empty() {
        out.push_str("Mounts:\n");
        for m in &o.mounts {
            out.push_str(&format!(
                "  Target:\t{}\n   Source:\t{}\n   ReadOnly:\t{}\n   Type:\t{}\n",
                &*m.target,
                m.source.as_deref().unwrap_or(""),
                m.read_only,
                m.kind
            ));
        }
    }
    if !o.devices.is_empty() {
        out.push_str("Devices:\n");
        for d in &o.devices {
            out.push_str(&format!("  {d}\n"));
        }
    }
    out
}
