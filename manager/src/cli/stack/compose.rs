//! Compose files as `docker stack deploy` reads them, turned into what shoal creates: a
//! [`Plan`] of service specs, networks, secrets and configs, all named `<stack>_<name>`
//! and labelled `com.docker.stack.namespace=<stack>` as Docker does, plus warnings naming
//! the keys shoal does not support yet.
//!
//! The YAML is parsed by `serde_yaml_ng` (the maintained fork of the archived
//! `serde_yaml`, MIT, pure Rust: no C library); its syntax errors carry a line and
//! column. Several files merge as Docker merges them (mappings key by key, the later
//! file winning; anything else replaced). `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?err}`, `$VAR` and `$$` are interpolated in every string value, from the
//! environment given. Then the document is read key by key, so an error names the file
//! and the key path (`services.web.deploy.replicas`).
//!
//! Pure: files are read by the caller (`env_file`s through the `read` callback).

mod options;

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};
use shoal_proto::networks::NetworkSpec;
use shoal_proto::secrets::{Kind, SecretRef};
use shoal_proto::services::{parse_cpus, parse_duration_ms, parse_memory};
use shoal_proto::{
    Constraint, EndpointMode, FailureAction, Label, PortConfig, Protocol, PublishMode, RestartCondition, ServiceMode,
    ServiceSpec, UpdateConfig, UpdateOrder,
};

/// The label Docker puts on every object of a stack.
pub const NAMESPACE: &str = "com.docker.stack.namespace";

/// A compose file that can't be used: the file (and line, when known), the key path and
/// what is wrong: `stack.yml:12: services.web.deploy.replicas: expected a whole number`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {path}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ComposeError {
    /// The file (the files joined with `+` for an error in the merged document).
    pub file: String,
    /// The line of the key in `file`, found by [`locate`] (1-based).
    pub line: Option<usize>,
    /// The key path, e.g. `services.web.ports[0]`; the line and column for a syntax error.
    pub path: String,
    /// What is wrong and what to write.
    pub message: String,
}

/// The line (1-based) of key path `path` (`services.web.ports[1]`) in a compose file's
/// `text`: each key searched below its parent, deeper indented; an index counts the
/// parent's `- ` items (a flow list `[a, b]` gives the key's own line). `None` when a
/// key is not found (it came from another file).
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let (mut at, mut indent): (usize, isize) = (0, -1);
    let mut first = true;
    // After an index, the item's own line may hold the next key (`- source: x`).
    let mut on_item = false;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let start = if first || on_item { at } else { at + 1 };
        let item_line = on_item.then_some(at);
        first = false;
        on_item = false;
        let found = lines.iter().enumerate().skip(start).find(|(j, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            let ind = indent_of(l) as isize;
            let named = [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")];
            (ind > indent || item_line == Some(*j)) && named.iter().any(|n| t.starts_with(n.as_str()))
        });
        let (i, l) = found?;
        at = i;
        indent = indent_of(l) as isize;
        if let Some(n) = index {
            let mut seen = 0;
            for (j, item) in lines.iter().enumerate().skip(at + 1) {
                let t = item.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                if (indent_of(item) as isize) < indent || (indent_of(item) as isize == indent && !t.starts_with('-')) {
                    break;
                }
                if t.starts_with("- ") || t == "-" {
                    if seen == n {
                        at = j;
                        indent = indent_of(item) as isize;
                        on_item = true;
                        break;
                    }
                    seen += 1;
                }
            }
        }
    }
    Some(at + 1)
}

/// A secret or config the stack creates from a file, or takes as it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPlan {
    /// Secret or config.
    pub kind: Kind,
    /// Its name on the manager (`<stack>_<key>`, or the external name).
    pub name: String,
    /// Made by the stack from this file (relative to the first compose file's
    /// directory); `None`: external, must exist.
    pub file: Option<String>,
}

/// A network the stack creates, or takes as it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Its name on the manager.
    pub name: String,
    /// The spec to create it with; `None`: external, must exist.
    pub spec: Option<NetworkSpec>,
}

/// What a deploy creates or updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Service specs, by their full name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Networks the services use.
    pub networks: Vec<NetworkPlan>,
    /// Secrets and configs the services use.
    pub objects: Vec<ObjectPlan>,
    /// Keys that were ignored, by path.
    pub warnings: Vec<String>,
}

/// Parses one file's text.
pub fn parse(file: &str, text: &str) -> Result<Value, ComposeError> {
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| {
        let path =
            e.location().map_or_else(|| "document".to_owned(), |l| format!("line {} column {}", l.line(), l.column()));
        ComposeError { file: file.to_owned(), line: None, path, message: e.to_string() }
    })
}

/// Merges `over` into `base`: mappings key by key, anything else replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Expands `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
/// `${VAR?message}`, `$VAR` and `$$` as compose does; `env` gives the variables.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('{') {
            // The matching brace: a default may itself hold `${...}`.
            let mut depth = 0usize;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => return true,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    false
                })
                .map(|(i, _)| i)
                .ok_or_else(|| format!("unclosed ${{ in {s:?}: close it with }}"))?;
            let expr = &body[..end];
            rest = &body[end + 1..];
            let name_end = expr.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_end);
            if name.is_empty() {
                return Err(format!(
                    "invalid interpolation ${{{expr}}} in {s:?}: expected ${{NAME}} or ${{NAME:-default}}"
                ));
            }
            let value = env(name);
            let set = value.as_deref().is_some_and(|v| !v.is_empty());
            let expanded = if op.is_empty() {
                value.unwrap_or_default()
            } else if let Some(d) = op.strip_prefix(":-") {
                if set {
                    value.unwrap_or_default()
                } else {
                    interpolate(d, env)?
                }
            } else if let Some(d) = op.strip_prefix('-') {
                match value {
                    Some(v) => v,
                    None => interpolate(d, env)?,
                }
            } else if let Some(m) = op.strip_prefix(":?") {
                if !set {
                    return Err(format!("variable {name} is required: {m}"));
                }
                value.unwrap_or_default()
            } else if let Some(m) = op.strip_prefix('?') {
                value.ok_or_else(|| format!("variable {name} is required: {m}"))?
            } else {
                return Err(format!("invalid interpolation ${{{expr}}} in {s:?}: expected ${{NAME:-default}}"));
            };
            out.push_str(&expanded);
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if end == 0 {
                out.push('$');
                rest = after;
                continue;
            }
            out.push_str(&env(&after[..end]).unwrap_or_default());
            rest = &after[end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolates every string value of `v` (keys are left alone, as compose does).
pub fn interpolate_all(
    v: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    path: &str,
) -> Result<(), (String, String)> {
    match v {
        Value::String(s) => *s = interpolate(s, env).map_err(|e| (path.to_owned(), e))?,
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_all(item, env, &format!("{path}[{i}]"))?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let p = if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
                interpolate_all(item, env, &p)?;
            }
        }
        Value::Tagged(t) => interpolate_all(&mut t.value, env, path)?,
        _ => {}
    }
    Ok(())
}

/// Reads the merged, interpolated document of stack `stack`. `read` reads an
/// `env_file` (path as written in the file).
pub struct Reader<'a> {
    file: String,
    stack: String,
    warnings: Vec<String>,
    read: &'a dyn Fn(&str) -> Result<String, String>,
    /// The top-level `volumes:`, by their names in the file.
    volumes: BTreeMap<String, options::VolumeDecl>,
}

type R<T> = Result<T, ComposeError>;

impl<'a> Reader<'a> {
    /// A reader for `stack`, naming `file` in its errors.
    pub fn new(file: &str, stack: &str, read: &'a dyn Fn(&str) -> Result<String, String>) -> Self {
        Self { file: file.to_owned(), stack: stack.to_owned(), warnings: Vec::new(), read, volumes: BTreeMap::new() }
    }

    fn err<T>(&self, path: &str, message: impl Into<String>) -> R<T> {
        Err(ComposeError { file: self.file.clone(), line: None, path: path.to_owned(), message: message.into() })
    }

    fn warn(&mut self, path: &str, why: &str) {
        self.warnings.push(format!("{path} ({why})"));
    }

    fn map<'v>(&self, v: &'v Value, path: &str) -> R<&'v Mapping> {
        match v {
            Value::Mapping(m) => Ok(m),
            _ => self.err(path, "expected a mapping (KEY: VALUE lines)"),
        }
    }

    fn string(&self, v: &Value, path: &str) -> R<String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => self.err(path, "expected a string"),
        }
    }

    fn number(&self, v: &Value, path: &str) -> R<u64> {
        match v {
            Value::Number(n) => n.as_u64().map_or_else(|| self.err(path, "expected a whole number"), Ok),
            Value::String(s) => s.trim().parse().map_or_else(|_| self.err(path, "expected a whole number"), Ok),
            _ => self.err(path, "expected a whole number"),
        }
    }

    fn float(&self, v: &Value, path: &str) -> R<f64> {
        match v {
            Value::Number(n) => n.as_f64().map_or_else(|| self.err(path, "expected a number"), Ok),
            Value::String(s) => s.trim().parse().map_or_else(|_| self.err(path, "expected a number"), Ok),
            _ => self.err(path, "expected a number"),
        }
    }

    fn duration(&self, v: &Value, path: &str) -> R<u64> {
        let s = self.string(v, path)?;
        parse_duration_ms(&s).or_else(|e| self.err(path, e.to_string()))
    }

    /// A list of strings, or one string split as a shell would split a simple command.
    fn command(&self, v: &Value, path: &str) -> R<Vec<String>> {
        match v {
            Value::Sequence(items) => {
                items.iter().enumerate().map(|(i, x)| self.string(x, &format!("{path}[{i}]"))).collect()
            }
            Value::String(s) => split_words(s).or_else(|e| self.err(path, e)),
            _ => self.err(path, "expected a string or a list of strings"),
        }
    }

    /// `KEY=VALUE` entries from a list or a mapping (a null value: the key alone).
    fn pairs(&self, v: &Value, path: &str) -> R<Vec<String>> {
        match v {
            Value::Sequence(items) => {
                items.iter().enumerate().map(|(i, x)| self.string(x, &format!("{path}[{i}]"))).collect()
            }
            Value::Mapping(m) => m
                .iter()
                .map(|(k, x)| {
                    let key = self.string(k, path)?;
                    Ok(match x {
                        Value::Null => key,
                        _ => format!("{key}={}", self.string(x, &format!("{path}.{key}"))?),
                    })
                })
                .collect(),
            _ => self.err(path, "expected a list of KEY=VALUE or a mapping"),
        }
    }

    fn labels(&self, v: &Value, path: &str) -> R<Vec<Label>> {
        self.pairs(v, path)?.iter().map(|p| Label::parse(p).or_else(|e| self.err(path, e))).collect()
    }

    /// Reads the whole merged document into a plan.
    pub fn plan(mut self, doc: &Value) -> R<Plan> {
        let top = self.map(doc, "document")?;
        let mut plan =
            Plan { services: BTreeMap::new(), networks: Vec::new(), objects: Vec::new(), warnings: Vec::new() };
        let mut networks: BTreeMap<String, NetworkPlan> = BTreeMap::new();
        let mut objects: BTreeMap<(Kind, String), ObjectPlan> = BTreeMap::new();
        for (k, v) in top {
            let key = self.string(k, "document")?;
            match key.as_str() {
                "version" | "name" => {}
                "services" => {}
                "networks" => {
                    for (nk, nv) in self.map(v, "networks")? {
                        let name = self.string(nk, "networks")?;
                        let p = self.network(&name, nv, &format!("networks.{name}"))?;
                        networks.insert(name, p);
                    }
                }
                "secrets" | "configs" => {
                    let kind = if key == "secrets" { Kind::Secret } else { Kind::Config };
                    for (ok, ov) in self.map(v, &key)? {
                        let name = self.string(ok, &key)?;
                        let p = self.object(kind, &name, ov, &format!("{key}.{name}"))?;
                        objects.insert((kind, name), p);
                    }
                }
                "volumes" => self.top_volumes(v)?,
                k if k.starts_with("x-") => {}
                other => self.warn(other, "unknown top-level key"),
            }
        }
        let services = match top.get("services") {
            Some(v) => self.map(v, "services")?.clone(),
            None => return self.err("services", "a stack needs at least one service"),
        };
        let mut used_networks: BTreeMap<String, ()> = BTreeMap::new();
        let mut used_objects: BTreeMap<(Kind, String), ()> = BTreeMap::new();
        for (k, v) in &services {
            let short = self.string(k, "services")?;
            let path = format!("services.{short}");
            let (spec, nets, objs) = self.service(&short, v, &path, &networks, &objects)?;
            for n in nets {
                used_networks.insert(n, ());
            }
            for o in objs {
                used_objects.insert(o, ());
            }
            plan.services.insert(spec.name.to_string(), spec);
        }
        if used_networks.contains_key("default") && !networks.contains_key("default") {
            networks.insert("default".into(), self.network("default", &Value::Null, "networks.default")?);
        }
        plan.networks = used_networks.keys().filter_map(|n| networks.get(n).cloned()).collect();
        plan.objects = used_objects.keys().filter_map(|o| objects.get(o).cloned()).collect();
        plan.warnings = self.warnings;
        Ok(plan)
    }

    fn full(&self, name: &str) -> String {
        format!("{}_{name}", self.stack)
    }

    fn namespace(&self) -> Label {
        Label::parse(&format!("{NAMESPACE}={}", self.stack)).expect("a stack name is a label value")
    }

    fn network(&mut self, name: &str, v: &Value, path: &str) -> R<NetworkPlan> {
        let mut spec = NetworkSpec::new(
            shoal_proto::text(&self.full(name)).or_else(|e| self.err(path, format!("the name is too long: {e}")))?,
        );
        let mut external_name = None;
        let mut given_name = None;
        if let Value::Mapping(m) = v {
            for (k, x) in m {
                let key = self.string(k, path)?;
                let p = format!("{path}.{key}");
                match key.as_str() {
                    "driver" => {
                        let d = self.string(x, &p)?;
                        if d != "overlay" {
                            return self
                                .err(&p, format!("driver {d:?} is not supported: shoal's networks are overlay"));
                        }
                    }
                    "external" => match x {
                        Value::Bool(true) => external_name = Some(name.to_owned()),
                        Value::Bool(false) => {}
                        Value::Mapping(e) => {
                            external_name =
                                Some(e.get("name").map(|n| self.string(n, &p)).transpose()?.unwrap_or(name.to_owned()))
                        }
                        _ => return self.err(&p, "expected true or false"),
                    },
                    "name" => given_name = Some(self.string(x, &p)?),
                    "attachable" => spec.attachable = matches!(x, Value::Bool(true)),
                    "labels" => {
                        for l in self.labels(x, &p)? {
                            let _ = spec.labels.push(l);
                        }
                    }
                    "driver_opts" => {
                        let opts = self.map(x, &p)?;
                        for (ok, ov) in opts {
                            let o = self.string(ok, &p)?;
                            if o == "encrypted" {
                                spec.encrypted = !matches!(ov, Value::Bool(false));
                            } else {
                                self.warn(&format!("{p}.{o}"), "unsupported driver option");
                            }
                        }
                    }
                    "ipam" => {
                        if let Some(Value::Sequence(cfgs)) = self.map(x, &p)?.get("config") {
                            if let Some(Value::Mapping(c)) = cfgs.first() {
                                if let Some(s) = c.get("subnet") {
                                    let s = self.string(s, &format!("{p}.config[0].subnet"))?;
                                    spec.subnet = Some(
                                        shoal_proto::networks::Subnet::parse(&s)
                                            .or_else(|e| self.err(&format!("{p}.config[0].subnet"), e.to_string()))?,
                                    );
                                }
                            }
                        }
                    }
                    other => self.warn(&format!("{path}.{other}"), "unsupported network option"),
                }
            }
        }
        if let Some(ext) = external_name {
            return Ok(NetworkPlan { name: given_name.unwrap_or(ext), spec: None });
        }
        if let Some(n) = given_name {
            spec.name = shoal_proto::text(&n).or_else(|e| self.err(path, format!("name: {e}")))?;
        }
        let _ = spec.labels.push(self.namespace());
        spec.validate().or_else(|e| self.err(path, e.to_string()))?;
        Ok(NetworkPlan { name: spec.name.to_string(), spec: Some(spec) })
    }

    fn object(&mut self, kind: Kind, name: &str, v: &Value, path: &str) -> R<ObjectPlan> {
        let m = self.map(v, path)?;
        let mut file = None;
        let mut external = None;
        let mut given_name = None;
        for (k, x) in m {
            let key = self.string(k, path)?;
            let p = format!("{path}.{key}");
            match key.as_str() {
                "file" => file = Some(self.string(x, &p)?),
                "external" => match x {
                    Value::Bool(b) => external = b.then(|| name.to_owned()),
                    Value::Mapping(e) => {
                        external =
                            Some(e.get("name").map(|n| self.string(n, &p)).transpose()?.unwrap_or(name.to_owned()))
                    }
                    _ => return self.err(&p, "expected true or false"),
                },
                "name" => given_name = Some(self.string(x, &p)?),
                "labels" => {}
                other => self.warn(&p, &format!("unsupported {kind} option {other:?}")),
            }
        }
        if let Some(ext) = external {
            return Ok(ObjectPlan { kind, name: given_name.unwrap_or(ext), file: None });
        }
        let Some(file) = file else {
            return self.err(path, format!("a {kind} needs `file: PATH` or `external: true`"));
        };
        let full = given_name.unwrap_or_else(|| self.full(name));
        shoal_proto::secrets::check_name(kind, &full).or_else(|e| self.err(path, e.to_string()))?;
        Ok(ObjectPlan { kind, name: full, file: Some(file) })
    }

    /// One service: its spec, the networks (by compose key) and objects it uses.
    #[allow(clippy::type_complexity)]
    fn service(
        &mut self,
        short: &str,
        v: &Value,
        path: &str,
        networks: &BTreeMap<String, NetworkPlan>,
        objects: &BTreeMap<(Kind, String), ObjectPlan>,
    ) -> R<(ServiceSpec, Vec<String>, Vec<(Kind, String)>)> {
        let m = self.map(v, path)?;
        let image = match m.get("image") {
            Some(i) => self.string(i, &format!("{path}.image"))?,
            None => return self.err(path, "an image is required (shoal does not build images: `image: NAME:TAG`)"),
        };
        let name =
            shoal_proto::text(&self.full(short)).or_else(|e| self.err(path, format!("the name is too long: {e}")))?;
        let image_ref = shoal_proto::text(&image).or_else(|e| self.err(&format!("{path}.image"), e.to_string()))?;
        let mut spec = ServiceSpec::new(name, image_ref);
        let _ = spec.labels.push(self.namespace());
        let mut env: Vec<String> = Vec::new();
        let mut used_nets: Vec<String> = Vec::new();
        let mut used_objs = Vec::new();
        let mut secrets = Vec::new();
        let mut configs = Vec::new();
        let mut saw_networks = false;
        let mut options = crate::cli::service::OptionsArgs::default();
        let mut health = None;
        for (k, x) in m {
            let key = self.string(k, path)?;
            let p = format!("{path}.{key}");
            match key.as_str() {
                "image" => {}
                "command" => spec.args = strings(self.command(x, &p)?, &p, self)?,
                "environment" => env.extend(self.pairs(x, &p)?),
                "env_file" => {
                    let files = match x {
                        Value::Sequence(_) => self.command(x, &p)?,
                        _ => vec![self.string(x, &p)?],
                    };
                    let mut from_files = Vec::new();
                    for f in files {
                        let text = (self.read)(&f).or_else(|e| self.err(&p, format!("cannot read {f}: {e}")))?;
                        from_files.extend(env_file_lines(&text));
                    }
                    // `environment` wins over `env_file`: the file's entries go first.
                    env.splice(0..0, from_files);
                }
                "ports" => {
                    let Value::Sequence(items) = x else { return self.err(&p, "expected a list of ports") };
                    let mut ports = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        ports.push(self.port(item, &format!("{p}[{i}]"))?);
                    }
                    spec.ports = bounded(ports, &p, self)?;
                }
                "networks" => {
                    saw_networks = true;
                    let keys: Vec<String> = match x {
                        Value::Sequence(items) => items
                            .iter()
                            .enumerate()
                            .map(|(i, n)| self.string(n, &format!("{p}[{i}]")))
                            .collect::<R<_>>()?,
                        Value::Mapping(nm) => nm.keys().map(|n| self.string(n, &p)).collect::<R<_>>()?,
                        _ => return self.err(&p, "expected a list of network names"),
                    };
                    for n in keys {
                        if n != "default" && !networks.contains_key(&n) {
                            return self
                                .err(&p, format!("network {n} is not declared under the top-level `networks:`"));
                        }
                        used_nets.push(n);
                    }
                }
                "secrets" | "configs" => {
                    let kind = if key == "secrets" { Kind::Secret } else { Kind::Config };
                    let Value::Sequence(items) = x else { return self.err(&p, format!("expected a list of {key}")) };
                    for (i, item) in items.iter().enumerate() {
                        let ip = format!("{p}[{i}]");
                        let (source, mut r) = self.reference(kind, item, &ip)?;
                        let Some(obj) = objects.get(&(kind, source.clone())) else {
                            return self
                                .err(&ip, format!("{kind} {source} is not declared under the top-level `{key}:`"));
                        };
                        r.source = shoal_proto::text(&obj.name).or_else(|e| self.err(&ip, e.to_string()))?;
                        used_objs.push((kind, source));
                        if kind == Kind::Secret {
                            secrets.push(r)
                        } else {
                            configs.push(r)
                        }
                    }
                }
                "deploy" => self.deploy(&mut spec, x, &p)?,
                "hostname" => {
                    spec.hostname =
                        Some(shoal_proto::text(&self.string(x, &p)?).or_else(|e| self.err(&p, e.to_string()))?)
                }
                "stop_grace_period" => spec.stop_grace_period_ms = self.duration(x, &p)?,
                "stop_signal" => {
                    spec.stop_signal =
                        Some(shoal_proto::text(&self.string(x, &p)?).or_else(|e| self.err(&p, e.to_string()))?)
                }
                "entrypoint" | "labels" | "healthcheck" | "volumes" | "devices" | "user" | "working_dir"
                | "cap_add" | "cap_drop" | "sysctls" | "ulimits" | "dns" | "read_only" | "init" | "tmpfs" => {
                    self.container_key(&mut options, &mut health, &key, x, &p)?
                }
                "build" => self.warn(&p, "shoal does not build images: it deploys `image`"),
                "container_name" | "depends_on" | "restart" | "links" | "logging" | "privileged" => {
                    self.warn(&p, "not supported in swarm mode (docker stack deploy ignores it too)")
                }
                other if other.starts_with("x-") => {}
                other => self.warn(&p, &format!("unknown service key {other:?}")),
            }
        }
        // The container options as `service create` sets them (the service's own labels,
        // from `deploy.labels` and the stack, kept).
        options.label = spec.labels.to_vec();
        options.apply(&mut spec).or_else(|e| self.err(path, e.to_string()))?;
        if health.is_some() {
            spec.health = health;
        }
        spec.env = strings(env, &format!("{path}.environment"), self)?;
        spec.secrets = bounded(secrets, &format!("{path}.secrets"), self)?;
        spec.configs = bounded(configs, &format!("{path}.configs"), self)?;
        if !saw_networks {
            used_nets.push("default".into());
        }
        let full_nets: Vec<String> =
            used_nets.iter().map(|n| networks.get(n).map_or_else(|| self.full(n), |p| p.name.clone())).collect();
        spec.networks = bounded(
            full_nets.iter().map(|n| shoal_proto::text(n).expect("checked network name")).collect(),
            &format!("{path}.networks"),
            self,
        )?;
        spec.validate().or_else(|e| self.err(path, e.to_string()))?;
        Ok((spec, used_nets, used_objs))
    }

    fn reference(&self, kind: Kind, v: &Value, path: &str) -> R<(String, SecretRef)> {
        let source = match v {
            Value::String(s) => s.clone(),
            Value::Mapping(m) => match m.get("source") {
                Some(s) => self.string(s, &format!("{path}.source"))?,
                None => return self.err(path, "a source is required"),
            },
            _ => return self.err(path, "expected a name or a mapping with source, target, uid, gid, mode"),
        };
        let mut form = format!("source={source}");
        if let Value::Mapping(m) = v {
            for (k, x) in m {
                let key = self.string(k, path)?;
                let p = format!("{path}.{key}");
                match key.as_str() {
                    "source" => {}
                    "target" | "uid" | "gid" => form.push_str(&format!(",{key}={}", self.string(x, &p)?)),
                    // The YAML parser reads `0440` as octal (288), as compose means it; a plain `644`
                    // (octal digits, above 0777) is taken as the octal its author meant.
                    "mode" => {
                        let mode = match x {
                            Value::Number(n) => {
                                let n = n.as_u64().unwrap_or(u64::MAX);
                                if format!("{n}").chars().all(|c| ('0'..='7').contains(&c)) && n > 0o777 {
                                    format!("{n}")
                                } else {
                                    format!("{n:o}")
                                }
                            }
                            _ => self.string(x, &p)?,
                        };
                        form.push_str(&format!(",mode={mode}"));
                    }
                    other => {
                        return self
                            .err(&p, format!("unknown key {other:?}: expected source, target, uid, gid or mode"))
                    }
                }
            }
        }
        let r = SecretRef::parse(kind, &form).or_else(|e| self.err(path, e.to_string()))?;
        Ok((source, r))
    }

    fn port(&self, v: &Value, path: &str) -> R<PortConfig> {
        match v {
            Value::String(_) | Value::Number(_) => {
                let s = self.string(v, path)?;
                // `127.0.0.1:8000:80` and ranges are refused by the parser with the reason.
                PortConfig::parse(&s).or_else(|e| self.err(path, e.to_string()))
            }
            Value::Mapping(m) => {
                let mut p =
                    PortConfig { target: 0, published: None, protocol: Protocol::Tcp, mode: PublishMode::Ingress };
                for (k, x) in m {
                    let key = self.string(k, path)?;
                    let kp = format!("{path}.{key}");
                    match key.as_str() {
                        "target" => {
                            p.target = port_number(self.number(x, &kp)?)
                                .map_or_else(|| self.err(&kp, "expected 1-65535"), Ok)?
                        }
                        "published" => {
                            p.published = Some(
                                port_number(self.number(x, &kp)?)
                                    .map_or_else(|| self.err(&kp, "expected 1-65535"), Ok)?,
                            )
                        }
                        "protocol" => {
                            p.protocol = self
                                .string(x, &kp)?
                                .parse()
                                .or_else(|e: shoal_proto::SpecError| self.err(&kp, e.to_string()))?
                        }
                        "mode" => {
                            p.mode = self
                                .string(x, &kp)?
                                .parse()
                                .or_else(|e: shoal_proto::SpecError| self.err(&kp, e.to_string()))?
                        }
                        other => {
                            return self.err(
                                &kp,
                                format!("unknown key {other:?}: expected target, published, protocol or mode"),
                            )
                        }
                    }
                }
                if p.target == 0 {
                    return self.err(path, "a target port is required");
                }
                Ok(p)
            }
            _ => self.err(path, "expected \"PUBLISHED:TARGET\" or a mapping with target and published"),
        }
    }

    fn deploy(&mut self, spec: &mut ServiceSpec, v: &Value, path: &str) -> R<()> {
        let m = self.map(v, path)?;
        let mut replicas = None;
        let mut global = false;
        for (k, x) in m {
            let key = self.string(k, path)?;
            let p = format!("{path}.{key}");
            match key.as_str() {
                "mode" => match self.string(x, &p)?.as_str() {
                    "replicated" => global = false,
                    "global" => global = true,
                    other => return self.err(&p, format!("mode {other:?}: expected replicated or global")),
                },
                "replicas" => {
                    replicas = Some(u32::try_from(self.number(x, &p)?).or_else(|_| self.err(&p, "too many replicas"))?)
                }
                "endpoint_mode" => {
                    spec.endpoint_mode =
                        self.string(x, &p)?.parse::<EndpointMode>().or_else(|e| self.err(&p, e.to_string()))?
                }
                "labels" => {
                    for l in self.labels(x, &p)? {
                        if l.key.as_str() != NAMESPACE {
                            spec.labels.push(l).or_else(|_| self.err(&p, "too many labels: give at most 63"))?;
                        }
                    }
                }
                "placement" => {
                    for (pk, pv) in self.map(x, &p)? {
                        let pkey = self.string(pk, &p)?;
                        let pp = format!("{p}.{pkey}");
                        match pkey.as_str() {
                            "constraints" => {
                                let list = self.command_list(pv, &pp)?;
                                let mut out = Vec::new();
                                for (i, c) in list.iter().enumerate() {
                                    out.push(
                                        Constraint::parse(c)
                                            .or_else(|e| self.err(&format!("{pp}[{i}]"), e.to_string()))?,
                                    );
                                }
                                spec.constraints = bounded(out, &pp, self)?;
                            }
                            other => self.warn(&format!("{p}.{other}"), "not supported yet"),
                        }
                    }
                }
                "resources" => {
                    for (rk, rv) in self.map(x, &p)? {
                        let rkey = self.string(rk, &p)?;
                        let rp = format!("{p}.{rkey}");
                        let limits = match rkey.as_str() {
                            "limits" => true,
                            "reservations" => false,
                            other => {
                                self.warn(&rp, &format!("unknown resources key {other:?}"));
                                continue;
                            }
                        };
                        for (ek, ev) in self.map(rv, &rp)? {
                            let ekey = self.string(ek, &rp)?;
                            let ep = format!("{rp}.{ekey}");
                            match ekey.as_str() {
                                "cpus" => {
                                    let c = parse_cpus(&format!("{}", self.float(ev, &ep)?))
                                        .or_else(|e| self.err(&ep, e.to_string()))?;
                                    if limits {
                                        spec.resources.limit_cpu_millis = c
                                    } else {
                                        spec.resources.reserve_cpu_millis = c
                                    }
                                }
                                "memory" => {
                                    let mem = parse_memory(&self.string(ev, &ep)?)
                                        .or_else(|e| self.err(&ep, e.to_string()))?;
                                    if limits {
                                        spec.resources.limit_memory = mem
                                    } else {
                                        spec.resources.reserve_memory = mem
                                    }
                                }
                                other => self.warn(&ep, &format!("{other} is not supported yet")),
                            }
                        }
                    }
                }
                "restart_policy" => {
                    for (rk, rv) in self.map(x, &p)? {
                        let rkey = self.string(rk, &p)?;
                        let rp = format!("{p}.{rkey}");
                        let rpol = &mut spec.restart_policy;
                        match rkey.as_str() {
                            "condition" => {
                                rpol.condition = self
                                    .string(rv, &rp)?
                                    .parse::<RestartCondition>()
                                    .or_else(|e| self.err(&rp, e.to_string()))?
                            }
                            "delay" => rpol.delay_ms = self.duration(rv, &rp)?,
                            "max_attempts" => {
                                rpol.max_attempts = Some(u32::try_from(self.number(rv, &rp)?).unwrap_or(u32::MAX))
                            }
                            "window" => rpol.window_ms = self.duration(rv, &rp)?,
                            other => return self.err(&rp, format!("unknown key {other:?}")),
                        }
                    }
                }
                "update_config" => spec.update_config = self.update_config(spec.update_config, x, &p)?,
                "rollback_config" => spec.rollback_config = self.update_config(spec.rollback_config, x, &p)?,
                other => self.warn(&p, &format!("unknown deploy key {other:?}")),
            }
        }
        spec.mode = if global {
            if replicas.is_some() {
                return self.err(path, "replicas can't be used with mode: global");
            }
            ServiceMode::Global
        } else {
            ServiceMode::Replicated { replicas: replicas.unwrap_or(1) }
        };
        Ok(())
    }

    fn command_list(&self, v: &Value, path: &str) -> R<Vec<String>> {
        match v {
            Value::Sequence(items) => {
                items.iter().enumerate().map(|(i, x)| self.string(x, &format!("{path}[{i}]"))).collect()
            }
            _ => self.err(path, "expected a list"),
        }
    }

    fn update_config(&self, mut c: UpdateConfig, v: &Value, path: &str) -> R<UpdateConfig> {
        for (k, x) in self.map(v, path)? {
            let key = self.string(k, path)?;
            let p = format!("{path}.{key}");
            match key.as_str() {
                "parallelism" => c.parallelism = u32::try_from(self.number(x, &p)?).unwrap_or(u32::MAX),
                "delay" => c.delay_ms = self.duration(x, &p)?,
                "monitor" => c.monitor_ms = self.duration(x, &p)?,
                "failure_action" => {
                    c.failure_action =
                        self.string(x, &p)?.parse::<FailureAction>().or_else(|e| self.err(&p, e.to_string()))?
                }
                "order" => {
                    c.order = self.string(x, &p)?.parse::<UpdateOrder>().or_else(|e| self.err(&p, e.to_string()))?
                }
                "max_failure_ratio" => {
                    let r = self.float(x, &p)?;
                    if !(0.0..=1.0).contains(&r) {
                        return self.err(&p, "expected a ratio from 0 to 1");
                    }
                    c.max_failure_ratio_permille = (r * 1000.0).round() as u16;
                }
                other => return self.err(&p, format!("unknown key {other:?}")),
            }
        }
        Ok(c)
    }
}

fn port_number(n: u64) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn bounded<T, const N: usize>(items: Vec<T>, path: &str, r: &Reader) -> R<shoal_proto::BoundedVec<T, N>>
where
    shoal_proto::BoundedVec<T, N>: TryFrom<Vec<T>>,
{
    let len = items.len();
    items.try_into().or_else(|_| r.err(path, format!("{len} entries is more than the limit of {N}")))
}

fn strings<const L: usize, const N: usize>(
    items: Vec<String>,
    path: &str,
    r: &Reader,
) -> R<shoal_proto::BoundedVec<shoal_proto::BoundedString<L>, N>> {
    let v = items
        .iter()
        .map(|s| shoal_proto::BoundedString::try_from(s.as_str()).or_else(|e| r.err(path, format!("{s:?}: {e}"))))
        .collect::<R<Vec<_>>>()?;
    bounded(v, path, r)
}

/// Lines of an `env_file`: `KEY=VALUE`, blank lines and `#` comments skipped.
pub fn env_file_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

/// Splits a command string into words as compose does (shell-like quotes, no
/// expansion).
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(format!("unclosed ' in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.push(chars.next().ok_or_else(|| format!("trailing \\ in {s:?}"))?),
                        Some(x) => cur.push(x),
                        None => return Err(format!("unclosed \" in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next().ok_or_else(|| format!("trailing \\ in {s:?}"))?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}
