//! The secret and config flags of `service create` and `service update`, in Docker's
//! forms: `--secret NAME` or `--secret source=,target=,uid=,gid=,mode=`, `--config
//! source=,target=,mode=`, and `--secret-add/--secret-rm`, `--config-add/--config-rm`.
//! The manager fills in each object's version and refuses unknown ones.

use clap::Args;
use shoal_proto::secrets::{Kind, SecretRef};
use shoal_proto::ServiceSpec;

use super::args::bounded;

fn secret(s: &str) -> Result<SecretRef, String> {
    SecretRef::parse(Kind::Secret, s).map_err(|e| e.to_string())
}

fn config(s: &str) -> Result<SecretRef, String> {
    SecretRef::parse(Kind::Config, s).map_err(|e| e.to_string())
}

/// `service create --secret/--config`.
#[derive(Debug, Args, Default)]
pub struct ObjectArgs {
    /// Give the service a secret at /run/secrets/NAME: `NAME` or `source=NAME,target=FILE,uid=0,gid=0,mode=0444`.
    #[arg(long, value_parser = secret)]
    pub secret: Vec<SecretRef>,
    /// Give the service a config as a file: `NAME` (at /NAME) or `source=NAME,target=/PATH,mode=0444`.
    #[arg(long, value_parser = config)]
    pub config: Vec<SecretRef>,
}

impl ObjectArgs {
    /// Sets the spec's references.
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        spec.secrets = bounded(self.secret.clone(), "secrets")?;
        spec.configs = bounded(self.config.clone(), "configs")?;
        Ok(())
    }
}

/// `service update --secret-add/-rm/--config-add/-rm`.
#[derive(Debug, Args, Default, PartialEq, Eq)]
pub struct ObjectUpdateArgs {
    /// Add or replace a secret (same forms as `create --secret`).
    #[arg(long = "secret-add", value_parser = secret)]
    pub secret_add: Vec<SecretRef>,
    /// Remove a secret by name.
    #[arg(long = "secret-rm")]
    pub secret_rm: Vec<String>,
    /// Add or replace a config (same forms as `create --config`).
    #[arg(long = "config-add", value_parser = config)]
    pub config_add: Vec<SecretRef>,
    /// Remove a config by name.
    #[arg(long = "config-rm")]
    pub config_rm: Vec<String>,
}

impl ObjectUpdateArgs {
    /// Whether any flag is given.
    pub fn changes(&self) -> bool {
        *self != Self::default()
    }

    /// Applies the flags: removals first, then additions (replacing a reference to the
    /// same object or at the same target).
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        let edit =
            |list: Vec<SecretRef>, rm: &[String], add: &[SecretRef], kind: Kind| -> anyhow::Result<Vec<SecretRef>> {
                let mut list = list;
                for name in rm {
                    let before = list.len();
                    list.retain(|r| r.source.as_str() != name);
                    if list.len() == before {
                        anyhow::bail!(
                            "--{kind}-rm {name}: the service has no such {kind} (see `shoal service inspect`)"
                        );
                    }
                }
                for a in add {
                    list.retain(|r| r.source != a.source && r.target != a.target);
                    list.push(a.clone());
                }
                Ok(list)
            };
        spec.secrets =
            bounded(edit(spec.secrets.to_vec(), &self.secret_rm, &self.secret_add, Kind::Secret)?, "secrets")?;
        spec.configs =
            bounded(edit(spec.configs.to_vec(), &self.config_rm, &self.config_add, Kind::Config)?, "configs")?;
        Ok(())
    }
}

/// `service inspect`: the service's labels, and its secrets and configs as Docker shows
/// them (`SecretName`, `File`), with the version each task uses. Never bytes: the spec
/// has none.
pub fn inspect_json(spec: &ServiceSpec, out: &mut serde_json::Value) {
    let labels: serde_json::Map<String, serde_json::Value> =
        spec.labels.iter().map(|l| (l.key.to_string(), serde_json::json!(l.value.as_str()))).collect();
    out["Spec"]["Labels"] = serde_json::Value::Object(labels);
    let refs = |kind: Kind, list: &[SecretRef]| -> Vec<serde_json::Value> {
        let name_key = if kind == Kind::Secret { "SecretName" } else { "ConfigName" };
        list.iter()
            .map(|r| {
                let name = match kind {
                    Kind::Secret => r.file_name().to_owned(),
                    Kind::Config => r.target.to_string(),
                };
                serde_json::json!({
                    name_key: r.source.as_str(),
                    "File": { "Name": name, "UID": r.uid.to_string(), "GID": r.gid.to_string(), "Mode": r.mode },
                    "Version": r.version,
                })
            })
            .collect()
    };
    let container = &mut out["Spec"]["TaskTemplate"]["ContainerSpec"];
    if !spec.secrets.is_empty() {
        container["Secrets"] = serde_json::json!(refs(Kind::Secret, &spec.secrets));
    }
    if !spec.configs.is_empty() {
        container["Configs"] = serde_json::json!(refs(Kind::Config, &spec.configs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_flags_add_replace_and_remove() {
        let mut spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("x:1").unwrap());
        ObjectArgs { secret: vec![secret("a").unwrap(), secret("b").unwrap()], config: vec![] }
            .apply(&mut spec)
            .unwrap();
        let flags = ObjectUpdateArgs {
            secret_add: vec![secret("source=b,target=bee,mode=0400").unwrap()],
            secret_rm: vec!["a".into()],
            config_add: vec![config("c").unwrap()],
            config_rm: vec![],
        };
        flags.apply(&mut spec).unwrap();
        let s: Vec<String> = spec.secrets.iter().map(|r| r.long_form()).collect();
        assert_eq!(s, ["source=b,target=bee,uid=0,gid=0,mode=0400"]);
        assert_eq!(spec.configs[0].target.as_str(), "/c");
        let gone = ObjectUpdateArgs { secret_rm: vec!["zzz".into()], ..Default::default() };
        assert!(gone.apply(&mut spec).unwrap_err().to_string().contains("no such secret"));
        let mut out = serde_json::json!({"Spec": {"TaskTemplate": {"ContainerSpec": {}}}});
        inspect_json(&spec, &mut out);
        let c = &out["Spec"]["TaskTemplate"]["ContainerSpec"];
        assert_eq!(c["Secrets"][0]["SecretName"], "b");
        assert_eq!(c["Secrets"][0]["File"]["Name"], "bee");
        assert_eq!(c["Configs"][0]["File"]["Name"], "/c");
    }
}
