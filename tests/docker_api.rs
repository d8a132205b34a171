//! The real `docker` CLI against shoal's Docker Engine API (`docker.sock` beside the
//! manager's state): the lab's tasks 1, 3, 4, 5 and 6, command for command as the lab
//! writes them (and task 2 as the mission translates it: the page reaches `database` by
//! name on the overlay network the CLI made), on a manager and three boards in network namespaces with real
//! containers; outputs read back through Docker's own tables and templates. Then the
//! lab's compose file through `docker stack deploy/ls/services/ps/rm`. Images are
//! loaded with `shoal image load` (the API serves no `/images`).
//!
//! Two real clients, neither talking to a daemon: docker 28.2 (API 1.50) at
//! `/usr/local/bin/docker` (or `SHOAL_DOCKER_CLI`) replays the lab; Debian's 20.10 (API
//! 1.41, `out/docker-20.10/usr/bin/docker`, made by `scripts/docker-cli-20.sh` from
//! `scripts/setup.sh`) then reads the result and changes it again. On the same cluster:
//! `docker service logs`, the API on TCP with the TLS files `shoal manager docker-env
//! --tcp` writes (and refused without them, or with another cluster's), join-token
//! rotation, and the read views Portainer calls (`docker images|ps|volume ls|system df|events`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_e2e::{bin, lab_image, parse_table, wait_for, Cluster, Lab, SERVICE_LS, SERVICE_PS};

const NODE_LS: [&str; 6] = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"];

fn docker_cli() -> PathBuf {
    let cli =
        std::env::var_os("SHOAL_DOCKER_CLI").map_or_else(|| PathBuf::from("/usr/local/bin/docker"), PathBuf::from);
    assert!(cli.exists(), "{} is missing: this test drives the real docker client", cli.display());
    cli
}

fn docker_20_cli() -> PathBuf {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/docker-20.10/usr/bin/docker");
    assert!(cli.exists(), "{} is missing: run scripts/docker-cli-20.sh (scripts/setup.sh does)", cli.display());
    cli
}

/// The docker CLI pointed at the manager's socket, with a config directory of its own.
struct Docker {
    cli: PathBuf,
    host: String,
    config: PathBuf,
    /// Run in this network namespace (the manager's, to reach its TCP listener).
    ns: Option<String>,
    /// `DOCKER_TLS_VERIFY=1` with this `DOCKER_CERT_PATH`.
    tls: Option<PathBuf>,
}

impl Docker {
    fn new(c: &Cluster, cli: PathBuf) -> Self {
        let socket = c.manager_host().data_dir.join("manager/docker.sock");
        wait_for("the Docker API socket", Duration::from_secs(10), || socket.exists().then_some(()));
        let config = c.lab.dir.join("docker-config");
        std::fs::create_dir_all(&config).unwrap();
        Self { cli, host: format!("unix://{}", socket.display()), config, ns: None, tls: None }
    }

    /// The same client on the manager's TCP listener, from inside its namespace, with
    /// `tls` as `DOCKER_CERT_PATH` (or no TLS at all).
    fn tcp(&self, c: &Cluster, host: &str, tls: Option<PathBuf>) -> Self {
        let ns = Some(c.manager_host().ns.clone());
        Self { cli: self.cli.clone(), host: host.to_owned(), config: self.config.clone(), ns, tls }
    }

    fn output(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(&self.cli);
                cmd
            }
            None => Command::new(&self.cli),
        };
        cmd.args(args).env("DOCKER_HOST", &self.host).env("DOCKER_CONFIG", &self.config).env_remove("DOCKER_CONTEXT");
        match &self.tls {
            Some(dir) => cmd.env("DOCKER_TLS_VERIFY", "1").env("DOCKER_CERT_PATH", dir),
            None => cmd.env_remove("DOCKER_TLS_VERIFY").env_remove("DOCKER_CERT_PATH"),
        };
        cmd.output().expect("run docker")
    }

    /// `docker ARGS`; panics with its stderr when it fails.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker ARGS` that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(!out.status.success(), "docker {args:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn ps(&self, service: &str) -> Vec<HashMap<String, String>> {
        parse_table(&self.run(&["service", "ps", service]), &SERVICE_PS)
    }
}

/// `service ps` rows the manager wants running, when all `n` run `image`.
fn all_running(d: &Docker, service: &str, image: &str, n: usize) -> Option<Vec<HashMap<String, String>>> {
    let live: Vec<_> = d.ps(service).into_iter().filter(|r| r["DESIRED STATE"] == "Running").collect();
    let ok = live.len() == n && live.iter().all(|r| r["IMAGE"] == image && r["CURRENT STATE"].starts_with("Running"));
    ok.then_some(live)
}

fn update_state(d: &Docker, service: &str) -> String {
    let json = d.run(&["service", "inspect", "-f", "{{json .UpdateStatus}}", service]);
    serde_json::from_str::<serde_json::Value>(json.trim())
        .ok()
        .and_then(|v| v["State"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The value of `export NAME='VALUE'` in `shoal manager docker-env`'s output.
fn exported(env: &str, name: &str) -> String {
    let line = env.lines().find_map(|l| l.strip_prefix(&format!("export {name}=")));
    line.unwrap_or_else(|| panic!("no {name} in {env}")).trim_matches('\'').to_owned()
}

fn socket_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
#[ignore = "needs root"]
fn docker_cli_replays_lab_tasks_1_3_4_5_6_against_shoal() {
    // The Engine API also on TCP (TLS only) inside the manager's namespace.
    let c = Cluster::start_in_with(Lab::new(4).unwrap(), &["--docker-tcp", "127.0.0.1"]).unwrap();
    let m = c.manager_host();
    for image in ["redis.tar", "demo-app-1.0.tar", "demo-app-2.0.tar", "demo-app-3.0.tar"] {
        m.shoal(&["image", "load", lab_image(image).to_str().unwrap()]);
    }
    let d = Docker::new(&c, docker_cli());
    let started = Instant::now();
    assert_eq!(socket_mode(&m.data_dir.join("manager/docker.sock")), 0o600);

    // Task 1, step 9: `docker node ls`, the manager marked as this node and Leader.
    let nodes = parse_table(&d.run(&["node", "ls"]), &NODE_LS);
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    let me = nodes.iter().find(|r| r["ID"].ends_with('*')).expect("a row marked *");
    assert_eq!((me["HOSTNAME"].as_str(), me["MANAGER STATUS"].as_str()), ("manager", "Leader"));
    for name in ["node1", "node2", "node3"] {
        let row = nodes.iter().find(|r| r["HOSTNAME"] == name).unwrap();
        assert_eq!((row["STATUS"].as_str(), row["AVAILABILITY"].as_str()), ("Ready", "Active"), "{row:?}");
    }

    // Task 3: the network, the database, the web front end.
    let id = d.run(&["network", "create", "-d", "overlay", "atsea"]);
    assert_eq!(id.trim().len(), 25, "{id}");
    let db = d.run(&[
        "service",
        "create",
        "--name",
        "database",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "atsea",
        "--publish",
        "mode=host,target=6379",
        "--detach=true",
        "redis",
    ]);
    assert_eq!(db.trim().len(), 25, "{db}");
    let app = d.run(&[
        "service",
        "create",
        "--publish",
        "8000:8000",
        "--network",
        "atsea",
        "--name",
        "appserver",
        "--detach=true",
        "demo/app:1.0",
    ]);
    assert_eq!(app.trim().len(), 25, "{app}");
    wait_for("database.1 running", Duration::from_secs(30), || all_running(&d, "database", "redis:latest", 1));
    wait_for("appserver.1 running", Duration::from_secs(30), || all_running(&d, "appserver", "demo/app:1.0", 1));
    // Task 2 as the mission translates it (services on an overlay network reach each
    // other by name) and task 3's ingress publish: through every board's port 8000, the
    // page reaches `database` by name on the network the CLI created.
    for board in &c.lab.hosts[1..] {
        let addr = format!("{}:8000", board.ip).parse().unwrap();
        wait_for(&format!("the page reaching the database through {}", board.ip), Duration::from_secs(10), || {
            shoal_e2e::http_get(addr, "/cgi-bin/db").ok().filter(|p| p.contains("PONG"))
        });
    }
    // `docker service logs` shows what the lab's database wrote, tasks named as Docker
    // names them (the CLI reads the task, service and node IDs back from the details).
    let logs_at = Instant::now();
    let line = wait_for("redis's start in docker service logs", Duration::from_secs(10), || {
        let out = d.run(&["service", "logs", "--timestamps", "database"]);
        out.lines().find(|l| l.contains("Ready to accept connections")).map(str::to_owned)
    });
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(shoal_proto::time::parse_rfc3339(stamp).is_some(), "{line}");
    // Only the container's own output: the board's agent runs with SHOAL_LOG=info here,
    // and none of its (or libcontainer's) records may reach a container's stderr.
    let out = d.output(&["service", "logs", "database"]);
    let both = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !both.contains("libcontainer") && !both.contains(" WARN "),
        "the agent's records in a container's log: {both}"
    );
    assert!(rest.starts_with("database.1.") && rest.contains("@node") && rest.contains("    | "), "{line}");
    // -f streams: the line arrives while the answer is still open; killing the client ends it.
    let mut follow = Command::new(&d.cli)
        .args(["service", "logs", "-f", "--tail", "all", "database"])
        .env("DOCKER_HOST", &d.host)
        .env("DOCKER_CONFIG", &d.config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("Ready to accept connections"))));
    assert!(follow.try_wait().unwrap().is_none(), "docker service logs -f ended by itself");
    follow.kill().unwrap();
    follow.wait().unwrap();
    let raw = d.run(&["service", "logs", "--tail", "2", "--raw", "database"]);
    assert!(!raw.is_empty() && !raw.contains("com.docker.swarm"), "no details unless asked: {raw}");
    eprintln!("docker service logs took {:?}", logs_at.elapsed());
    let ls = parse_table(&d.run(&["service", "ls"]), &SERVICE_LS);
    let row = |name: &str| ls.iter().find(|r| r["NAME"] == name).cloned().unwrap_or_else(|| panic!("{name}: {ls:?}"));
    assert_eq!(row("appserver")["REPLICAS"], "1/1");
    assert_eq!(row("appserver")["PORTS"], "*:8000->8000/tcp");
    assert_eq!((row("database")["MODE"].as_str(), row("database")["IMAGE"].as_str()), ("replicated", "redis:latest"));
    let ids = d.run(&["service", "ls", "-q"]);
    let mut args = vec!["service", "ps"];
    args.extend(ids.split_whitespace());
    let both = parse_table(&d.run(&args), &SERVICE_PS);
    let names: Vec<&str> = both.iter().map(|r| r["NAME"].as_str()).collect();
    assert!(names.contains(&"database.1") && names.contains(&"appserver.1"), "{both:?}");

    // Task 4: 2.0 fails and the update pauses; roll back; 3.0.
    let out = d.run(&[
        "service",
        "update",
        "--image",
        "demo/app:2.0",
        "--update-failure-action",
        "pause",
        "--detach=true",
        "appserver",
    ]);
    assert_eq!(out.trim(), "appserver");
    wait_for("the 2.0 update to pause", Duration::from_secs(30), || {
        (update_state(&d, "appserver") == "paused").then_some(())
    });
    let rows = d.ps("appserver");
    assert!(rows.iter().any(|r| r["IMAGE"] == "demo/app:2.0" && r["CURRENT STATE"].starts_with("Failed")), "{rows:?}");
    assert!(rows.iter().any(|r| r["NAME"] == "\\_ appserver.1"), "older tasks are nested: {rows:?}");
    let out = d.run(&["service", "update", "--rollback", "--detach=true", "appserver"]);
    assert_eq!(out.trim(), "appserver");
    wait_for("appserver back on 1.0", Duration::from_secs(30), || all_running(&d, "appserver", "demo/app:1.0", 1));
    let out = d.run(&[
        "service",
        "update",
        "--image",
        "demo/app:3.0",
        "--update-failure-action",
        "pause",
        "--detach=true",
        "appserver",
    ]);
    assert_eq!(out.trim(), "appserver");
    wait_for("appserver on 3.0", Duration::from_secs(30), || all_running(&d, "appserver", "demo/app:3.0", 1));
    // The same object through shoal's own CLI.
    let shoal_ls = parse_table(&m.shoal(&["service", "ls"]), &SERVICE_LS);
    assert!(shoal_ls.iter().any(|r| r["NAME"] == "appserver" && r["IMAGE"] == "demo/app:3.0"), "{shoal_ls:?}");

    // Task 5: six replicas.
    let out = d.run(&["service", "update", "--replicas=6", "--detach=true", "appserver"]);
    assert_eq!(out.trim(), "appserver");
    let rows = wait_for("6 × 3.0", Duration::from_secs(30), || all_running(&d, "appserver", "demo/app:3.0", 6));
    assert!(rows.iter().any(|r| r["NODE"] == "node2"), "{rows:?}");

    // Task 6: drain node2; its tasks move, six still run.
    d.run(&["node", "update", "--availability=drain", "node2"]);
    let rows = wait_for("node2 drained", Duration::from_secs(30), || {
        all_running(&d, "appserver", "demo/app:3.0", 6).filter(|rows| rows.iter().all(|r| r["NODE"] != "node2"))
    });
    assert_eq!(rows.len(), 6);
    let ls = parse_table(&d.run(&["service", "ls"]), &SERVICE_LS);
    assert!(ls.iter().any(|r| r["NAME"] == "appserver" && r["REPLICAS"] == "6/6"), "{ls:?}");
    let drained = d.run(&["node", "inspect", "-f", "{{.Spec.Availability}}", "node2"]);
    assert_eq!(drained.trim(), "drain");
    eprintln!("lab tasks 1, 3-6 through the docker CLI took {:?} after the cluster was up", started.elapsed());

    // The 20.10 client (API 1.41) sees the same fleet and changes it.
    let d20 = Docker::new(&c, docker_20_cli());
    assert!(d20.run(&["version", "--format", "{{.Client.APIVersion}}"]).starts_with("1.41"));
    let nodes = parse_table(&d20.run(&["node", "ls"]), &NODE_LS);
    assert!(nodes.iter().any(|r| r["HOSTNAME"] == "node2" && r["AVAILABILITY"] == "Drain"), "{nodes:?}");
    let ls = parse_table(&d20.run(&["service", "ls"]), &SERVICE_LS);
    assert!(ls.iter().any(|r| r["NAME"] == "appserver" && r["REPLICAS"] == "6/6"), "{ls:?}");
    assert!(d20.run(&["service", "inspect", "--pretty", "appserver"]).contains("Image:\t\tdemo/app:3.0"));
    d20.run(&["node", "update", "--availability=active", "node2"]);
    assert_eq!(d20.run(&["service", "update", "--replicas=4", "--detach=true", "appserver"]).trim(), "appserver");
    wait_for("4 × 3.0 by the 20.10 client", Duration::from_secs(30), || {
        all_running(&d20, "appserver", "demo/app:3.0", 4)
    });

    // TCP: only TLS, only with the administrator certificate `docker-env --tcp` writes.
    let tcp_at = Instant::now();
    let env = m.shoal(&["manager", "docker-env", "--tcp", "127.0.0.1"]);
    let (host, certs) = (exported(&env, "DOCKER_HOST"), PathBuf::from(exported(&env, "DOCKER_CERT_PATH")));
    assert_eq!((host.as_str(), exported(&env, "DOCKER_TLS_VERIFY").as_str()), ("tcp://127.0.0.1:2376", "1"));
    let tcp = d.tcp(&c, &host, Some(certs.clone()));
    let nodes = parse_table(&tcp.run(&["node", "ls"]), &NODE_LS);
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    let explicit = d.tcp(&c, "unix:///nowhere", None);
    let ca = certs.join("ca.pem");
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    let flags = ["--tlsverify", "-H", &host, "--tlscacert", ca.to_str().unwrap()];
    let with_cert = [&flags[..], &["--tlscert", cert.to_str().unwrap(), "--tlskey", key.to_str().unwrap()]].concat();
    assert!(explicit.run(&[&with_cert[..], &["node", "ls"]].concat()).contains("node2"));
    // No TLS, TLS without a client certificate, a certificate of another cluster's CA.
    d.tcp(&c, &host, None).fails(&["node", "ls"]);
    explicit.fails(&[&flags[..], &["node", "ls"]].concat());
    let other = c.lab.dir.join("other-cluster");
    let made = Command::new(bin("shoal"))
        .args(["manager", "init", "--advertise-addr", "127.0.0.1", "--hostname", "other"])
        .env("SHOAL_DATA_DIR", &other)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let other_certs = other.join("docker-tls");
    let made = Command::new(bin("shoal"))
        .args(["manager", "docker-env", "--tcp", "127.0.0.1", "--cert-path", other_certs.to_str().unwrap()])
        .env("SHOAL_DATA_DIR", &other)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    std::fs::copy(&ca, other_certs.join("ca.pem")).unwrap();
    d.tcp(&c, &host, Some(other_certs)).fails(&["node", "ls"]);

    // Join tokens: shoal's own, rotated through /swarm/update.
    let token = d.run(&["swarm", "join-token", "-q", "worker"]);
    assert_eq!(token, m.shoal(&["manager", "join-token", "-q", "worker"]));
    let rotated = tcp.run(&["swarm", "join-token", "--rotate", "-q", "worker"]);
    assert!(rotated.starts_with("SHOAL-1-") && rotated != token, "{rotated}");
    assert_eq!(rotated, m.shoal(&["manager", "join-token", "-q", "worker"]));
    // The old token no longer joins (a board's join from node1's namespace, refused).
    let fresh = c.lab.dir.join("fresh-board");
    let manager = format!("{}:4242", m.ip);
    let join = c.lab.hosts[1]
        .run("shoal-agent", &["--data-dir", fresh.to_str().unwrap(), "join", "--token", token.trim(), &manager]);
    let e = String::from_utf8_lossy(&join.stderr);
    assert!(!join.status.success() && e.contains("invalid join token"), "{e}");
    let e = d.fails(&["swarm", "update", "--cert-expiry", "1h"]);
    assert!(e.contains("shoal manager update --cert-expiry"), "{e}");

    // What Portainer reads besides the swarm views: the manager's own images, no
    // containers or volumes on it, no event log.
    let images = parse_table(&d.run(&["images"]), &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    assert!(images.iter().any(|r| r["REPOSITORY"] == "demo/app" && r["TAG"] == "3.0"), "{images:?}");
    assert_eq!(d.run(&["ps", "-a", "-q"]).trim(), "");
    assert_eq!(d.run(&["volume", "ls", "-q"]).trim(), "");
    let df = d.run(&["system", "df"]);
    assert!(df.lines().any(|l| l.starts_with("Images ") && l.contains(" 4 ")), "{df}");
    assert_eq!(d.run(&["events", "--since", "1m", "--until", "1s"]).trim(), "");
    eprintln!("TCP with TLS, join tokens and Portainer's views took {:?}", tcp_at.elapsed());

    // Anyone but root (and the manager's user) is kept off the socket.
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&d.cli)
        .args(["node", "ls"])
        .env("DOCKER_HOST", &d.host)
        .env("DOCKER_CONFIG", &d.config)
        .output()
        .unwrap();
    assert!(!nobody.status.success());
    let e = String::from_utf8_lossy(&nobody.stderr);
    assert!(e.contains("permission denied"), "{e}");

    // Refusals in Docker's words.
    let e = d.fails(&["run", "alpine"]);
    assert!(e.contains("shoal manages services: use docker service create"), "{e}");
    let e = d.fails(&["service", "create", "--name", "m", "--mount", "type=bind,source=/,target=/h", "demo/app:1.0"]);
    assert!(e.contains("TaskTemplate.ContainerSpec.Mounts is not supported"), "{e}");
    d.run(&["service", "rm", "database", "appserver"]);
    let e = d.fails(&["service", "inspect", "database"]);
    assert!(e.contains("no such service"), "{e}");

    // The lab's application as a stack: the CLI reads the compose file, shoal serves the calls.
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab/docker-compose.yml");
    let out = d.run(&["stack", "deploy", "-c", compose.to_str().unwrap(), "lab"]);
    assert!(out.contains("Creating service lab_appserver"), "{out}");
    wait_for("the stack's services running", Duration::from_secs(30), || {
        let rows = parse_table(&d.run(&["stack", "services", "lab"]), &SERVICE_LS);
        (rows.len() == 2 && rows.iter().all(|r| r["REPLICAS"] == "1/1")).then_some(())
    });
    let stacks = parse_table(&d.run(&["stack", "ls"]), &["NAME", "SERVICES"]);
    assert_eq!((stacks[0]["NAME"].as_str(), stacks[0]["SERVICES"].as_str()), ("lab", "2"));
    let ps = d.run(&["stack", "ps", "lab"]);
    assert!(ps.contains("lab_database.1") && ps.contains("lab_appserver.1"), "{ps}");
    // shoal's own CLI sees the same stack.
    assert!(m.shoal(&["stack", "ls"]).contains("lab"));
    d.run(&["stack", "rm", "lab"]);
    assert!(parse_table(&d.run(&["stack", "ls"]), &["NAME", "SERVICES"]).is_empty());
}
