//! The compose keys that become a service's container options and health check
//! (`volumes`, `tmpfs`, `devices`, `entrypoint`, container `labels`, `user`,
//! `working_dir`, `cap_add`/`cap_drop`, `sysctls`, `ulimits`, `dns`, `read_only`, `init`,
//! `healthcheck`) and the top-level `volumes:` they name.
//!
//! Each is written in the command line's form and checked by the same parsers
//! (`Mount::parse`, `DeviceMapping::parse`, …) so a compose file and `service create` can't
//! drift apart; the options then reach the spec through the same
//! [`OptionsArgs::apply`](crate::cli::service::OptionsArgs::apply).

use serde_yaml_ng::Value;
use shoal_proto::health::HealthConfig;
use shoal_proto::options::{check_container_path, check_user, parse_capability, parse_dns};
use shoal_proto::options::{DeviceMapping, Mount, Sysctl, Ulimit};

use super::{Reader, R};
use crate::cli::service::{Entrypoint, OptionsArgs};

/// A named volume of the top-level `volumes:`: its name on the boards and its
/// `volume-opt`s (the local driver's `type`, `device`, `o`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VolumeDecl {
    /// `<stack>_<name>`, or the name given (`name:`, `external: true`).
    name: String,
    /// `K=V` from `driver_opts`.
    opts: Vec<String>,
}

impl Reader<'_> {
    /// The top-level `volumes:`, remembered for the services' `volumes` entries.
    pub(super) fn top_volumes(&mut self, v: &Value) -> R<()> {
        for (k, x) in self.map(v, "volumes")?.clone() {
            let short = self.string(&k, "volumes")?;
            let path = format!("volumes.{short}");
            let mut decl = VolumeDecl { name: self.full(&short), opts: Vec::new() };
            let mut external = false;
            if let Value::Mapping(m) = &x {
                for (ok, ov) in m {
                    let key = self.string(ok, &path)?;
                    let p = format!("{path}.{key}");
                    match key.as_str() {
                        "external" => external = self.boolean(ov, &p)?,
                        "name" => decl.name = self.string(ov, &p)?,
                        "driver" => {
                            if self.string(ov, &p)? != "local" {
                                return self.err(&p, "boards have the local volume driver only");
                            }
                        }
                        "driver_opts" => decl.opts = self.pairs(ov, &p)?,
                        "labels" => self.warn(&p, "volume labels are not kept"),
                        other => self.warn(&p, &format!("unknown volume key {other:?}")),
                    }
                }
            } else if !matches!(x, Value::Null) {
                return self.err(&path, "expected a mapping or nothing");
            }
            if external && !m_has_name(&x) {
                decl.name = short.clone();
            }
            self.volumes.insert(short, decl);
        }
        Ok(())
    }

    /// One container key of a service into `opts` (or the health check into `health`).
    pub(super) fn container_key(
        &mut self,
        opts: &mut OptionsArgs,
        health: &mut Option<HealthConfig>,
        key: &str,
        x: &Value,
        p: &str,
    ) -> R<()> {
        match key {
            "volumes" => {
                let Value::Sequence(items) = x else { return self.err(p, "expected a list of volumes") };
                for (i, item) in items.iter().enumerate() {
                    let m = self.mount(item, &format!("{p}[{i}]"))?;
                    opts.mount.push(m);
                }
            }
            "tmpfs" => {
                for (i, t) in self.list(x, p)?.into_iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    let (target, options) = t.split_once(':').unwrap_or((&t, ""));
                    let mut form = format!("type=tmpfs,target={target}");
                    for o in options.split(',').filter(|o| !o.is_empty()) {
                        match o.split_once('=') {
                            Some(("size", v)) => form.push_str(&format!(",tmpfs-size={v}")),
                            Some(("mode", v)) => form.push_str(&format!(",tmpfs-mode={v}")),
                            _ => self.warn(&ip, &format!("tmpfs option {o:?} is not supported")),
                        }
                    }
                    opts.mount.push(Mount::parse(&form).or_else(|e| self.err(&ip, e.to_string()))?);
                }
            }
            "devices" => {
                for (i, d) in self.list(x, p)?.into_iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    opts.device.push(DeviceMapping::parse(&d).or_else(|e| self.err(&ip, e.to_string()))?);
                }
            }
            "entrypoint" => opts.entrypoint = Some(Entrypoint(self.command(x, p)?)),
            "labels" => opts.container_label = self.labels(x, p)?,
            "user" => {
                let u = self.string(x, p)?;
                check_user(&u).or_else(|e| self.err(p, e))?;
                opts.user = Some(u);
            }
            "working_dir" => {
                let w = self.string(x, p)?;
                check_container_path(&w).or_else(|e| self.err(p, e))?;
                opts.workdir = Some(w);
            }
            "cap_add" | "cap_drop" => {
                let mut caps = Vec::new();
                for (i, c) in self.list(x, p)?.into_iter().enumerate() {
                    let cap = parse_capability(&c).or_else(|e| self.err(&format!("{p}[{i}]"), e.to_string()))?;
                    caps.push(cap.to_string());
                }
                if key == "cap_add" {
                    opts.cap_add = caps
                } else {
                    opts.cap_drop = caps
                }
            }
            "sysctls" => {
                for s in self.pairs(x, p)? {
                    opts.sysctl.push(Sysctl::parse(&s).or_else(|e| self.err(p, e.to_string()))?);
                }
            }
            "ulimits" => {
                for (k, v) in self.map(x, p)? {
                    let name = self.string(k, p)?;
                    let lp = format!("{p}.{name}");
                    let form = match v {
                        Value::Mapping(m) => {
                            let get = |f: &str| m.get(f).map(|x| self.number(x, &format!("{lp}.{f}"))).transpose();
                            match (get("soft")?, get("hard")?) {
                                (Some(s), Some(h)) => format!("{name}={s}:{h}"),
                                _ => return self.err(&lp, "expected soft: and hard:"),
                            }
                        }
                        other => format!("{name}={}", self.string(other, &lp)?),
                    };
                    opts.ulimit.push(Ulimit::parse(&form).or_else(|e| self.err(&lp, e.to_string()))?);
                }
            }
            "dns" => {
                for d in self.list(x, p)? {
                    opts.dns.push(parse_dns(&d).or_else(|e| self.err(p, e.to_string()))?.to_string());
                }
            }
            "read_only" => opts.read_only = self.boolean(x, p)?,
            "init" => {
                let init = self.boolean(x, p)?;
                (opts.init, opts.no_init) = (init, !init);
            }
            "healthcheck" => *health = Some(self.healthcheck(x, p)?),
            other => unreachable!("container_key called for {other}"),
        }
        Ok(())
    }

    /// A `volumes` entry of a service: `SOURCE:TARGET[:ro]` (a named volume of the
    /// top-level `volumes:`, or an absolute path on the board), or the long form.
    fn mount(&mut self, v: &Value, p: &str) -> R<Mount> {
        let form = match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target, mode) = match parts.as_slice() {
                    [source, target] => (*source, *target, ""),
                    [source, target, mode] => (*source, *target, *mode),
                    _ => {
                        return self.err(p, "expected SOURCE:TARGET[:ro] (anonymous volumes are not supported)");
                    }
                };
                let read_only = mode.split(',').any(|m| m == "ro");
                self.mount_form(
                    if source.starts_with(['/', '.', '~']) { "bind" } else { "volume" },
                    source,
                    target,
                    read_only,
                    p,
                )?
            }
            Value::Mapping(m) => {
                let get = |f: &str| m.get(f).map(|x| self.string(x, &format!("{p}.{f}"))).transpose();
                let kind = get("type")?.unwrap_or_else(|| "volume".into());
                let target = get("target")?.map_or_else(|| self.err(p, "a target is required"), Ok)?;
                let read_only = m.get("read_only").map(|x| self.boolean(x, &format!("{p}.read_only"))).transpose()?;
                let mut form = match kind.as_str() {
                    "tmpfs" => format!("type=tmpfs,target={target}"),
                    "volume" | "bind" => {
                        let source = get("source")?.map_or_else(|| self.err(p, "a source is required"), Ok)?;
                        self.mount_form(&kind, &source, &target, read_only.unwrap_or(false), p)?
                    }
                    other => {
                        return self.err(&format!("{p}.type"), format!("{other:?}: expected volume, bind or tmpfs"))
                    }
                };
                if let Some(Value::Mapping(t)) = m.get("tmpfs") {
                    if let Some(size) = t.get("size") {
                        form.push_str(&format!(",tmpfs-size={}", self.string(size, &format!("{p}.tmpfs.size"))?));
                    }
                }
                for extra in ["bind", "volume"] {
                    if m.contains_key(extra) {
                        self.warn(&format!("{p}.{extra}"), "mount sub-options are not supported");
                    }
                }
                form
            }
            _ => return self.err(p, "expected SOURCE:TARGET[:ro] or a mapping"),
        };
        Mount::parse(&form).or_else(|e| self.err(p, e.to_string()))
    }

    /// `--mount`'s form of a bind or named-volume mount.
    fn mount_form(&self, kind: &str, source: &str, target: &str, read_only: bool, p: &str) -> R<String> {
        let mut form = if kind == "bind" {
            if !source.starts_with('/') {
                return self.err(p, format!("bind source {source:?}: give an absolute path on the board"));
            }
            format!("type=bind,source={source},target={target}")
        } else {
            let Some(decl) = self.volumes.get(source) else {
                return self.err(p, format!("volume {source} is not declared under the top-level `volumes:`"));
            };
            let mut f = format!("type=volume,source={},target={target}", decl.name);
            for o in &decl.opts {
                f.push_str(&format!(",volume-opt={o}"));
            }
            f
        };
        if read_only {
            form.push_str(",readonly");
        }
        Ok(form)
    }

    /// `healthcheck:` as compose writes it: `test` (a string is run by the shell; a list
    /// starts with `CMD`, `CMD-SHELL` or `NONE`), `interval`, `timeout`, `start_period`,
    /// `retries`, `disable`.
    fn healthcheck(&mut self, v: &Value, p: &str) -> R<HealthConfig> {
        let mut h = HealthConfig::default();
        let mut test: Vec<String> = Vec::new();
        for (k, x) in self.map(v, p)? {
            let key = self.string(k, p)?;
            let kp = format!("{p}.{key}");
            match key.as_str() {
                "test" => {
                    test = match x {
                        Value::String(s) => vec!["CMD-SHELL".into(), s.clone()],
                        _ => self.command(x, &kp)?,
                    }
                }
                "interval" => h.interval_ms = self.duration(x, &kp)?,
                "timeout" => h.timeout_ms = self.duration(x, &kp)?,
                "start_period" => h.start_period_ms = self.duration(x, &kp)?,
                "retries" => {
                    h.retries = u32::try_from(self.number(x, &kp)?).or_else(|_| self.err(&kp, "too many retries"))?
                }
                "disable" => {
                    if self.boolean(x, &kp)? {
                        test = vec!["NONE".into()];
                    }
                }
                other => self.warn(&kp, &format!("unknown healthcheck key {other:?}")),
            }
        }
        if !test.is_empty() && !matches!(test[0].as_str(), "CMD" | "CMD-SHELL" | "NONE") {
            return self.err(&format!("{p}.test"), "a list starts with CMD, CMD-SHELL or NONE");
        }
        let args: Vec<shoal_proto::services::Arg> = test
            .iter()
            .map(|t| {
                shoal_proto::BoundedString::try_from(t.as_str())
                    .or_else(|e| self.err(&format!("{p}.test"), e.to_string()))
            })
            .collect::<R<_>>()?;
        h.test = args.try_into().or_else(|_| self.err(&format!("{p}.test"), "too many words"))?;
        h.validate().or_else(|e| self.err(p, e.to_string()))?;
        Ok(h)
    }

    /// A list of strings, or one string.
    fn list(&self, v: &Value, p: &str) -> R<Vec<String>> {
        match v {
            Value::Sequence(items) => {
                items.iter().enumerate().map(|(i, x)| self.string(x, &format!("{p}[{i}]"))).collect()
            }
            other => Ok(vec![self.string(other, p)?]),
        }
    }

    fn boolean(&self, v: &Value, p: &str) -> R<bool> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s == "true" || s == "false" => Ok(s == "true"),
            _ => self.err(p, "expected true or false"),
        }
    }
}

/// Whether a top-level volume's mapping names it itself (`name:`).
fn m_has_name(v: &Value) -> bool {
    matches!(v, Value::Mapping(m) if m.contains_key("name"))
}
