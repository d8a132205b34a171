//! `shoal manager docker-env [--tcp HOST[:PORT]] [--cert-path DIR]`: the variables that
//! point the docker CLI at the manager's Docker Engine API, as `docker-machine env` printed
//! them. Without `--tcp`, the unix socket. With it, the API on TCP (`shoal manager run
//! --docker-tcp`), which speaks only TLS and requires a client certificate: this writes
//! the cluster's CAs (`ca.pem`) and the administrator certificate and key (`cert.pem`,
//! `key.pem`, 0600) from `admin.json` into the directory, the files docker reads from
//! `DOCKER_CERT_PATH`.
//!
//! The files are copies: the manager renews `admin.json`, not them. They work until the
//! certificate ends (the cluster's `--cert-expiry`) or the CA is rotated; then run this
//! again.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::docker::DEFAULT_TLS_PORT;
use crate::paths::{self, AdminCredentials};

/// `manager docker-env`.
#[derive(Debug, Args)]
pub struct DockerEnvArgs {
    /// Use the API on TCP at HOST[:PORT] (what `shoal manager run --docker-tcp` serves;
    /// port 2376 by default) and write the TLS files docker needs.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub tcp: Option<String>,
    /// Where to write ca.pem, cert.pem and key.pem (default: `docker-tls` in the
    /// manager's directory).
    #[arg(long, value_name = "DIR", requires = "tcp")]
    pub cert_path: Option<PathBuf>,
}

/// `HOST[:PORT]` as docker's `tcp://` wants it, port 2376 unless given.
pub fn tcp_host(s: &str) -> Result<String, String> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok(sa.to_string());
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, DEFAULT_TLS_PORT).to_string());
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("invalid port in {s:?}: give HOST[:PORT]"))?),
        None => (s, DEFAULT_TLS_PORT),
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !name_ok {
        return Err(format!("invalid address {s:?}: give an IP address or host name, optionally with :PORT"));
    }
    Ok(format!("{host}:{port}"))
}

/// `'…'` for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The lines to `eval`: DOCKER_HOST and, for TCP, the TLS variables.
pub fn env_lines(host: &str, cert_path: Option<&Path>, again: &str) -> String {
    let mut out = format!("export DOCKER_HOST={}\n", quote(host));
    match cert_path {
        Some(dir) => {
            out.push_str("export DOCKER_TLS_VERIFY=1\n");
            out.push_str(&format!("export DOCKER_CERT_PATH={}\n", quote(&dir.display().to_string())));
        }
        None => out.push_str("unset DOCKER_TLS_VERIFY DOCKER_CERT_PATH\n"),
    }
    out.push_str(&format!("# Run this command to configure your shell:\n# eval \"$({again})\"\n"));
    out
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

/// Writes the client's TLS files from `admin.json` into `dir`.
fn write_files(data_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    let admin = paths::admin_path(data_dir);
    let text = std::fs::read_to_string(&admin).map_err(|e| {
        anyhow::anyhow!("cannot read {}: {e}: run this where the manager's data directory is", admin.display())
    })?;
    let creds: AdminCredentials = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not shoal's credentials file: {e}", admin.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    for (name, pem) in [("ca.pem", &creds.ca_pem), ("cert.pem", &creds.cert_pem), ("key.pem", &creds.key_pem)] {
        paths::write_private(&dir.join(name), pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dir.join(name).display()))?;
    }
    Ok(())
}

/// Runs `shoal manager docker-env`.
pub fn run(data_dir: &Path, args: DockerEnvArgs) -> anyhow::Result<()> {
    let Some(tcp) = args.tcp else {
        let socket = absolute(&paths::manager_dir(data_dir)).join("docker.sock");
        print!("{}", env_lines(&format!("unix://{}", socket.display()), None, "shoal manager docker-env"));
        return Ok(());
    };
    let host = tcp_host(&tcp).map_err(anyhow::Error::msg)?;
    let dir = args.cert_path.unwrap_or_else(|| paths::manager_dir(data_dir).join("docker-tls"));
    write_files(data_dir, &dir)?;
    let dir = absolute(&dir);
    let again = format!("shoal manager docker-env --tcp {tcp}");
    print!("{}", env_lines(&format!("tcp://{host}"), Some(&dir), &again));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses_get_dockers_tls_port() {
        assert_eq!(tcp_host("10.0.0.1").unwrap(), "10.0.0.1:2376");
        assert_eq!(tcp_host("10.0.0.1:9999").unwrap(), "10.0.0.1:9999");
        assert_eq!(tcp_host("::1").unwrap(), "[::1]:2376");
        assert_eq!(tcp_host("manager.lan").unwrap(), "manager.lan:2376");
        assert!(tcp_host("manager.lan:x").unwrap_err().contains("invalid port"));
        assert!(tcp_host("a b").unwrap_err().starts_with("invalid address"));
    }

    #[test]
    fn the_variables_are_docker_machines() {
        let tcp =
            env_lines("tcp://10.0.0.1:2376", Some(Path::new("/d/it's")), "shoal manager docker-env --tcp 10.0.0.1");
        assert!(tcp.starts_with(
            "export DOCKER_HOST='tcp://10.0.0.1:2376'\nexport DOCKER_TLS_VERIFY=1\nexport DOCKER_CERT_PATH='/d/it'\\''s'\n"
        ));
        let unix = env_lines("unix:///var/lib/shoal/manager/docker.sock", None, "shoal manager docker-env");
        assert!(unix.contains("unset DOCKER_TLS_VERIFY DOCKER_CERT_PATH\n"), "{unix}");
    }
}
