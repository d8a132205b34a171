//! Pulling from a registry (issue 14): the redis image from a local `docker-registry`
//! (in the manager's namespace, on its loopback), shoal's manager pull plus its
//! distribution to three boards against `skopeo copy` of the same image in the same run,
//! and the bytes the manager fetched for an amd64-only fleet, for a fleet that also has
//! arm64 boards (`--platform linux/arm64`), against the whole index. Prints a Markdown
//! section on stdout. Needs `cargo build --bins`, `images/build.sh`, `docker-registry`
//! and `skopeo` first (`bench/registry.sh` does all of it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_e2e::{lab_image, wait_for, Cluster};

fn nsenter(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(program);
    c
}

fn run(mut c: Command) -> Result<String> {
    let out = c.output().context("spawning")?;
    if !out.status.success() {
        bail!("{:?} failed: {}", c, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The `(N.NMiB)` a pull's status line reports as fetched.
fn fetched(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Status: Downloaded newer image for "))
        .and_then(|l| l.rsplit_once('(').map(|(_, b)| b.trim_end_matches(')').to_owned()))
        .unwrap_or_else(|| "0B".into())
}

fn main() -> Result<()> {
    let redis = lab_image("redis.tar");
    let cluster = Cluster::start(3)?;
    let m = cluster.manager_host();
    let ns = m.ns.clone();
    let dir = cluster.lab.dir.clone();
    let port = 25_123;
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry").display()
        ),
    )?;
    let mut registry = nsenter(&ns, "docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("docker-registry")?;
    let reg = format!("127.0.0.1:{port}");
    wait_for("the registry", Duration::from_secs(10), || {
        let mut c = nsenter(&ns, "bash");
        c.args(["-c", &format!("echo > /dev/tcp/127.0.0.1/{port}")]).stderr(Stdio::null());
        c.status().ok().filter(|s| s.success()).map(|_| ())
    });
    let mut push = nsenter(&ns, "skopeo");
    push.args(["copy", "--all", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", redis.display()))
        .arg(format!("docker://{reg}/redis:7"));
    run(push)?;

    // skopeo: the same image (the host's platform) into an OCI layout.
    let target = dir.join("skopeo-copy");
    let started = Instant::now();
    let mut copy = nsenter(&ns, "skopeo");
    copy.args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reg}/redis:7"))
        .arg(format!("oci:{}:redis", target.display()));
    run(copy)?;
    let skopeo = started.elapsed();
    let started = Instant::now();
    let mut copy_all = nsenter(&ns, "skopeo");
    copy_all
        .args(["copy", "--all", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reg}/redis:7"))
        .arg(format!("oci:{}:all", dir.join("skopeo-all").display()));
    run(copy_all)?;
    let skopeo_all = started.elapsed();
    let all_bytes = du(&dir.join("skopeo-all"))?;

    // shoal: the manager pulls, then every board has it.
    let started = Instant::now();
    let out = m.shoal(&["image", "pull", "--quiet", &format!("{reg}/redis:7")]);
    let pulled = started.elapsed();
    wait_for("three boards to hold redis", Duration::from_secs(120), || {
        let ls = m.shoal(&["image", "ls"]);
        ls.lines().any(|l| l.contains(&format!("{reg}/redis")) && l.contains("node1,node2,node3")).then_some(())
    });
    let distributed = started.elapsed();
    let amd64 = fetched(&out);
    let again = m.shoal(&["image", "pull", "--quiet", "--platform", "linux/arm64", &format!("{reg}/redis:7")]);
    let arm64 = fetched(&again);
    let _ = registry.kill();
    let _ = registry.wait();

    println!("## Pulling from a registry\n");
    println!("The redis image from a local `docker-registry` (loopback, no TLS), three boards in namespaces.\n");
    println!("| | time |\n|---|---|");
    println!("| `skopeo copy` (host platform) into an OCI layout | {} |", secs(skopeo));
    println!("| `skopeo copy --all` (both platforms) | {} |", secs(skopeo_all));
    println!("| `shoal image pull` (manager: resolve, fetch, verify, store) | {} |", secs(pulled));
    println!("| `shoal image pull` + distribution to 3 boards (all hold it) | {} |", secs(distributed));
    println!();
    println!("| fleet | bytes the manager fetched |\n|---|---|");
    println!("| amd64 boards only | {amd64} |");
    println!("| adding arm64 (`--platform linux/arm64`, as a mixed fleet) | + {arm64} |");
    println!("| the whole index (`skopeo copy --all`, on disk) | {:.1}MiB |", all_bytes as f64 / (1 << 20) as f64);
    Ok(())
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() { du(&e.path())? } else { meta.len() };
    }
    Ok(total)
}
