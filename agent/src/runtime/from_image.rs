//! From an image's configuration and a task's overrides to a [`ContainerConfig`], with
//! Docker's rules: arguments after the image replace the image's `Cmd` and follow its
//! `Entrypoint`; the task's environment overrides the image's, key by key; the image's
//! user and working directory apply unless the task says otherwise.

use std::path::PathBuf;

use super::{ContainerConfig, NetworkMode, RuntimeError};
use shoal_oci::spec::ImageConfig;

/// What a task sets on top of its image.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Command and arguments given after the image (replace `Cmd`).
    pub args: Vec<String>,
    /// `KEY=VALUE` entries that override the image's.
    pub env: Vec<String>,
    /// Hostname inside the container.
    pub hostname: String,
    /// The container's own addresses (its `/etc/hosts` names it at each).
    pub addresses: Vec<std::net::IpAddr>,
    /// Network namespace.
    pub network: Option<NetworkMode>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    /// Extra `/etc/hosts` lines.
    pub hosts: Vec<String>,
    /// `/etc/resolv.conf` (`None`: the image's own).
    pub resolv_conf: Option<String>,
    /// System-call filter.
    pub seccomp: super::seccomp::SeccompPolicy,
    /// `--stop-signal`, as the operator typed it.
    pub stop_signal: Option<String>,
    /// Secrets and configs to bind in.
    pub files: Vec<crate::secrets::FileMount>,
}

/// Docker's `PATH` for an image that sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the container configuration for `id`.
pub fn container_config(
    id: &str,
    image: &ImageConfig,
    layers: Vec<PathBuf>,
    o: &Overrides,
) -> Result<ContainerConfig, RuntimeError> {
    let run = image.config.clone().unwrap_or_default();
    let mut args: Vec<String> = run.entrypoint.clone().unwrap_or_default();
    if o.args.is_empty() {
        args.extend(run.cmd.clone().unwrap_or_default());
    } else {
        args.extend(o.args.iter().cloned());
    }
    if args.is_empty() {
        return Err(RuntimeError::Spec("the image has no command and none was given".into()));
    }
    let hostname = if o.hostname.is_empty() { id.chars().take(63).collect() } else { o.hostname.clone() };
    // Docker's order: its defaults (PATH, HOSTNAME), replaced or followed by the image's
    // entries, then the task's; a key keeps its first place.
    let mut env = vec![format!("PATH={DEFAULT_PATH}"), format!("HOSTNAME={hostname}")];
    for entry in run.env.iter().flatten().chain(&o.env) {
        let key = entry.split('=').next().unwrap_or(entry);
        match env.iter_mut().find(|e| e.split('=').next() == Some(key)) {
            Some(e) => e.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
    let user = super::user::resolve_in_layers(run.user.as_deref().unwrap_or(""), &layers)?;
    let stop_signal = stop_signal(o.stop_signal.as_deref(), run.stop_signal.as_deref())?;
    Ok(ContainerConfig {
        id: id.to_owned(),
        hostname,
        addresses: o.addresses.clone(),
        args,
        env,
        cwd: run.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.groups,
        layers,
        network: o.network.clone().unwrap_or(NetworkMode::Host),
        memory_limit: o.memory_limit,
        cpu_millis: o.cpu_millis,
        hosts: o.hosts.clone(),
        resolv_conf: o.resolv_conf.clone(),
        seccomp: o.seccomp.clone(),
        stop_signal,
        files: o.files.clone(),
    })
}

/// The signal a stop sends first, as Docker picks it: `--stop-signal`, else the image's
/// `StopSignal` (PostgreSQL's SIGINT, nginx's SIGQUIT, httpd's SIGWINCH), else SIGTERM.
/// An image asking for a signal the container's init does not forward (systemd's
/// `SIGRTMIN+3`) gets SIGTERM, which such images also stop on.
fn stop_signal(asked: Option<&str>, image: Option<&str>) -> Result<i32, RuntimeError> {
    use shoal_proto::services::parse_stop_signal;
    if let Some(s) = asked {
        return parse_stop_signal(s).map_err(|e| RuntimeError::Spec(e.to_string()));
    }
    Ok(image.and_then(|s| parse_stop_signal(s).ok()).unwrap_or(15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_oci::spec::RunConfig;

    fn image(entrypoint: Option<&[&str]>, cmd: &[&str], env: &[&str]) -> ImageConfig {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        ImageConfig {
            config: Some(RunConfig {
                entrypoint: entrypoint.map(v),
                cmd: Some(v(cmd)),
                env: Some(v(env)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn arguments_replace_cmd_and_follow_the_entrypoint() {
        let plain = image(None, &["httpd", "-f"], &[]);
        let c = container_config("a", &plain, vec![], &Overrides::default()).unwrap();
        assert_eq!(c.args, ["httpd", "-f"]);
        let o = Overrides { args: vec!["sh".into(), "-c".into(), "true".into()], ..Default::default() };
        assert_eq!(container_config("a", &plain, vec![], &o).unwrap().args, ["sh", "-c", "true"]);
        let with_ep = image(Some(&["redis-server"]), &["--port", "6379"], &[]);
        let o = Overrides { args: vec!["--port".into(), "7000".into()], ..Default::default() };
        assert_eq!(container_config("a", &with_ep, vec![], &o).unwrap().args, ["redis-server", "--port", "7000"]);
    }

    #[test]
    fn task_environment_overrides_the_images_by_key() {
        let img = image(None, &["x"], &["PATH=/bin", "MODE=prod"]);
        let o = Overrides { env: vec!["MODE=test".into(), "EXTRA=1".into()], ..Default::default() };
        let c = container_config("a", &img, vec![], &o).unwrap();
        assert_eq!(c.env, ["PATH=/bin", "HOSTNAME=a", "MODE=test", "EXTRA=1"]);
        // Without a PATH of its own, an image gets Docker's; HOSTNAME can be overridden.
        let img = image(None, &["x"], &["MODE=prod"]);
        let o = Overrides { env: vec!["HOSTNAME=mine".into()], hostname: "web-2".into(), ..Default::default() };
        let c = container_config("a", &img, vec![], &o).unwrap();
        assert_eq!(c.env, [format!("PATH={DEFAULT_PATH}").as_str(), "HOSTNAME=mine", "MODE=prod"]);
        let c = container_config("a", &img, vec![], &Overrides { hostname: "web-2".into(), ..Default::default() });
        assert_eq!(c.unwrap().env[1], "HOSTNAME=web-2");
    }

    #[test]
    fn an_image_without_a_command_is_refused() {
        let img = image(None, &[], &[]);
        assert!(container_config("a", &img, vec![], &Overrides::default()).is_err());
    }

    #[test]
    fn the_images_user_brings_its_groups() {
        let dir = std::env::temp_dir().join(format!("shoal-user-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nredis:x:100:101::/data:/bin/false\n")
            .unwrap();
        std::fs::write(dir.join("etc/group"), "root:x:0:\nredis:x:101:\nstaff:x:50:redis\n").unwrap();
        let mut img = image(None, &["x"], &[]);
        img.config.as_mut().unwrap().user = Some("redis".into());
        let c = container_config("a", &img, vec![dir.clone()], &Overrides::default()).unwrap();
        assert_eq!((c.uid, c.gid, c.additional_gids), (100, 101, vec![101, 50]));
        img.config.as_mut().unwrap().user = Some("nobody".into());
        assert!(container_config("a", &img, vec![dir.clone()], &Overrides::default()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_stop_signal_is_the_flag_then_the_image_then_sigterm() {
        assert_eq!(stop_signal(Some("SIGQUIT"), Some("SIGINT")).unwrap(), 3);
        assert_eq!(stop_signal(None, Some("SIGINT")).unwrap(), 2);
        assert_eq!(stop_signal(None, Some("sigwinch")).unwrap(), 28);
        assert_eq!(stop_signal(None, Some("SIGRTMIN+3")).unwrap(), 15, "not forwarded: SIGTERM");
        assert_eq!(stop_signal(None, None).unwrap(), 15);
        assert!(stop_signal(Some("SIGKILL"), None).is_err());
    }
}
