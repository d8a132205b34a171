//! Swarm's placeholders in a service's `--hostname` and `--env` values:
//! `{{.Service.ID}}`, `{{.Service.Name}}`, `{{.Service.Labels}}`, `{{.Node.ID}}`,
//! `{{.Node.Hostname}}`, `{{.Node.Platform.OS}}`, `{{.Node.Platform.Architecture}}`,
//! `{{.Task.ID}}`, `{{.Task.Name}}`, `{{.Task.Slot}}`.
//!
//! Where: the manager parses them when a spec is created or updated (a bad one is
//! refused there, before any task exists); the board that runs the task expands them
//! when it prepares the container, as Swarm's worker does, because only then are the
//! node's facts and the task's final values all known, and the expanded text is not
//! held to the wire bounds of the template. Only field references are Swarm's common
//! use; Go's functions, pipelines and `{{-` trimming are refused as unknown, with the
//! list of what is known.

use core::fmt::Write;

/// A template that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without its `}}`.
    #[error("template {0:?}: unclosed action: close it with }}}}")]
    Unclosed(String),
    /// A placeholder that is not one of Swarm's fields.
    #[error(
        "template {template:?}: unknown placeholder {{{{{action}}}}}: use {{{{.Service.ID}}}}, {{{{.Service.Name}}}}, \
         {{{{.Service.Labels}}}}, {{{{.Node.ID}}}}, {{{{.Node.Hostname}}}}, {{{{.Node.Platform.OS}}}}, \
         {{{{.Node.Platform.Architecture}}}}, {{{{.Task.ID}}}}, {{{{.Task.Name}}}} or {{{{.Task.Slot}}}}"
    )]
    Unknown {
        /// The whole template.
        template: String,
        /// What was inside the braces.
        action: String,
    },
}

/// The fields a placeholder can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `.Service.ID`
    ServiceId,
    /// `.Service.Name`
    ServiceName,
    /// `.Service.Labels` (Go's `map[k:v ...]`).
    ServiceLabels,
    /// `.Node.ID`
    NodeId,
    /// `.Node.Hostname`
    NodeHostname,
    /// `.Node.Platform.OS`
    NodeOs,
    /// `.Node.Platform.Architecture`
    NodeArch,
    /// `.Task.ID`
    TaskId,
    /// `.Task.Name`: `service.slot.taskid` (`service.nodeid.taskid` for a global task).
    TaskName,
    /// `.Task.Slot`: the slot, or the node ID for a global task.
    TaskSlot,
}

const FIELDS: [(&str, Field); 10] = [
    (".Service.ID", Field::ServiceId),
    (".Service.Name", Field::ServiceName),
    (".Service.Labels", Field::ServiceLabels),
    (".Node.ID", Field::NodeId),
    (".Node.Hostname", Field::NodeHostname),
    (".Node.Platform.OS", Field::NodeOs),
    (".Node.Platform.Architecture", Field::NodeArch),
    (".Task.ID", Field::TaskId),
    (".Task.Name", Field::TaskName),
    (".Task.Slot", Field::TaskSlot),
];

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Field(Field),
}

/// What the placeholders stand for, for one task on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The service's ID.
    pub service_id: String,
    /// The service's name.
    pub service_name: String,
    /// The service's labels (shoal's services have none yet: `map[]`).
    pub service_labels: Vec<(String, String)>,
    /// The node's ID.
    pub node_id: String,
    /// The node's hostname.
    pub node_hostname: String,
    /// The node's OS (`linux`).
    pub node_os: String,
    /// The node's architecture (`x86_64`, `aarch64`).
    pub node_arch: String,
    /// The task's ID.
    pub task_id: String,
    /// The task's slot; 0 for a global task.
    pub slot: u32,
}

impl Context {
    fn value(&self, field: Field, out: &mut String) {
        let _ = match field {
            Field::ServiceId => out.write_str(&self.service_id),
            Field::ServiceName => out.write_str(&self.service_name),
            Field::ServiceLabels => {
                // Go prints a map sorted by key.
                let mut labels = self.service_labels.clone();
                labels.sort();
                let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                write!(out, "map[{}]", inner.join(" "))
            }
            Field::NodeId => out.write_str(&self.node_id),
            Field::NodeHostname => out.write_str(&self.node_hostname),
            Field::NodeOs => out.write_str(&self.node_os),
            Field::NodeArch => out.write_str(&self.node_arch),
            Field::TaskId => out.write_str(&self.task_id),
            Field::TaskName => {
                write!(out, "{}.", self.service_name).and_then(|_| self.value_slot(out)).and_then(|_| {
                    out.push('.');
                    out.write_str(&self.task_id)
                })
            }
            Field::TaskSlot => self.value_slot(out),
        };
    }

    fn value_slot(&self, out: &mut String) -> core::fmt::Result {
        if self.slot == 0 {
            out.write_str(&self.node_id)
        } else {
            write!(out, "{}", self.slot)
        }
    }
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| TemplateError::Unclosed(template.to_owned()))?;
        let action = after[..close].trim_matches(|c| c == ' ' || c == '\t');
        let field = FIELDS.iter().find(|(name, _)| *name == action).map(|(_, f)| *f).ok_or_else(|| {
            TemplateError::Unknown { template: template.to_owned(), action: after[..close].to_owned() }
        })?;
        out.push(Piece::Field(field));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Checks `template` (refusing it with the reason), without expanding it.
pub fn check(template: &str) -> Result<(), TemplateError> {
    pieces(template).map(|_| ())
}

/// Whether `text` has placeholders at all.
pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

/// Expands `template` for `ctx`.
pub fn expand(template: &str, ctx: &Context) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(f) => ctx.value(f, &mut out),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(slot: u32) -> Context {
        Context {
            service_id: "f375bf9dot1w".into(),
            service_name: "db".into(),
            service_labels: vec![("tier".into(), "back".into()), ("app".into(), "lab".into())],
            node_id: "d7igf4r6f4sqf17wpnxkxo5a5".into(),
            node_hostname: "node1".into(),
            node_os: "linux".into(),
            node_arch: "x86_64".into(),
            task_id: "k3j9abcdefghijklmnopqrstu".into(),
            slot,
        }
    }

    #[test]
    fn swarms_placeholders_expand_as_swarm_expands_them() {
        let c = ctx(2);
        assert_eq!(expand("{{.Service.Name}}-{{.Task.Slot}}", &c).unwrap(), "db-2");
        assert_eq!(expand("{{ .Node.Hostname }}", &c).unwrap(), "node1");
        assert_eq!(expand("ID={{.Node.ID}}/{{.Service.ID}}", &c).unwrap(), "ID=d7igf4r6f4sqf17wpnxkxo5a5/f375bf9dot1w");
        assert_eq!(expand("{{.Task.Name}}", &c).unwrap(), "db.2.k3j9abcdefghijklmnopqrstu");
        assert_eq!(expand("{{.Task.ID}}", &c).unwrap(), "k3j9abcdefghijklmnopqrstu");
        assert_eq!(expand("{{.Node.Platform.OS}}/{{.Node.Platform.Architecture}}", &c).unwrap(), "linux/x86_64");
        assert_eq!(expand("{{.Service.Labels}}", &c).unwrap(), "map[app:lab tier:back]");
        assert_eq!(expand("{{.Service.Labels}}", &Context::default()).unwrap(), "map[]");
        assert_eq!(expand("plain } {text}", &c).unwrap(), "plain } {text}");
        // A global task's slot is its node.
        assert_eq!(expand("{{.Task.Slot}}", &ctx(0)).unwrap(), "d7igf4r6f4sqf17wpnxkxo5a5");
        assert_eq!(
            expand("{{.Task.Name}}", &ctx(0)).unwrap(),
            "db.d7igf4r6f4sqf17wpnxkxo5a5.k3j9abcdefghijklmnopqrstu"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_what_to_write() {
        let e = check("{{.Task.Slot").unwrap_err().to_string();
        assert_eq!(e, r#"template "{{.Task.Slot": unclosed action: close it with }}"#);
        let e = check("web-{{.Task.Nmae}}").unwrap_err().to_string();
        assert!(
            e.starts_with(r#"template "web-{{.Task.Nmae}}": unknown placeholder {{.Task.Nmae}}: use {{.Service.ID}}"#),
            "{e}"
        );
        for bad in ["{{}}", "{{index .Service.Labels \"a\"}}", "{{- .Task.Slot}}", "{{.Task}}", "{{.task.slot}}"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(check("no placeholders").is_ok() && !is_template("no placeholders"));
    }
}
