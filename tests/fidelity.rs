//! Real images behave as under Docker (issue 13): what a container sees of itself,
//! with real binaries, a board in a network namespace and a real container.

use std::time::Duration;

use shoal_e2e::{lab_image, wait_for, Cluster, Host};

/// A system program (Debian's `psql`, from `scripts/setup.sh`) in `host`'s network
/// namespace, with `PGPASSWORD` set.
fn psql_command(host: &Host, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", host.ns)).arg("--").arg("psql").args(args);
    c.env("PGPASSWORD", "lab-secret").stdin(std::process::Stdio::null());
    c
}

/// `--hostname` and `--env` with Swarm's placeholders, expanded on the board; the
/// files Docker always provides (`/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`) and
/// `HOSTNAME`; a bad placeholder refused at create.
#[test]
#[ignore = "needs root"]
fn a_container_knows_its_templated_hostname_and_gets_dockers_files() {
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let svc = format!("{}h", c.lab.tag());
    m.shoal(&[
        "service",
        "create",
        "--name",
        &svc,
        "--replicas",
        "2",
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "-e",
        "SLOT={{.Task.Slot}}",
        "-e",
        "WHERE={{.Node.Hostname}}/{{.Node.Platform.OS}}",
        "demo/app:1.0",
    ]);
    wait_for("both replicas running", Duration::from_secs(30), || c.replicas(&svc).starts_with("2/2").then_some(()));
    let shown = m.shoal(&["service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Hostname}}", &svc]);
    assert_eq!(shown.trim(), "{{.Service.Name}}-{{.Task.Slot}}");
    for slot in [1, 2] {
        let task = format!("{svc}.{slot}");
        let me = format!("{svc}-{slot}");
        assert_eq!(m.shoal(&["exec", &task, "hostname"]).trim(), me);
        assert_eq!(m.shoal(&["exec", &task, "cat", "/etc/hostname"]).trim(), me);
        let env = m.shoal(&["exec", &task, "env"]);
        assert!(env.lines().any(|l| l == format!("HOSTNAME={me}")), "{env}");
        assert!(env.lines().any(|l| l == format!("SLOT={slot}")), "{env}");
        // The board's hostname, as `node ls` shows it.
        let nodes = m.shoal(&["node", "ls"]);
        let r#where = env.lines().find_map(|l| l.strip_prefix("WHERE=")).unwrap_or_else(|| panic!("{env}"));
        let board = r#where.strip_suffix("/linux").unwrap_or_else(|| panic!("{where}"));
        assert!(!board.is_empty() && nodes.contains(&format!(" {board} ")), "{where} vs {nodes}");
        // Docker's /etc/hosts: localhost lines, then the container's own address.
        let hosts = m.shoal(&["exec", &task, "cat", "/etc/hosts"]);
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"), "{hosts}");
        let own = hosts.lines().find(|l| l.ends_with(&format!("\t{me}"))).unwrap_or_else(|| panic!("{hosts}"));
        let ip = own.split('\t').next().unwrap();
        assert!(ip.parse::<std::net::Ipv4Addr>().is_ok_and(|a| !a.is_loopback()), "{hosts}");
        let addr = m.shoal(&["exec", &task, "ip", "-4", "addr"]);
        assert!(addr.contains(&format!("inet {ip}/")), "{ip} is not the container's: {addr}");
        // A resolv.conf always, with a nameserver the container can reach (not loopback).
        let resolv = m.shoal(&["exec", &task, "cat", "/etc/resolv.conf"]);
        let ns: Vec<&str> = resolv.lines().filter_map(|l| l.strip_prefix("nameserver ")).collect();
        assert!(!ns.is_empty() && ns.iter().all(|n| !n.starts_with("127.")), "{resolv}");
    }
    let out = m.run(
        "shoal",
        &["service", "create", "--name", &format!("{svc}bad"), "--hostname", "{{.Task.Nmae}}", "demo/app:1.0"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown placeholder {{.Task.Nmae}}"), "{err}");
    m.shoal(&["service", "rm", &svc]);
}

/// Real software as a user would run it: Debian's python3, `python3 -m http.server 80`
/// as `nobody` (the image's `User`), answers on port 80 in its container.
#[test]
#[ignore = "needs root"]
fn a_non_root_python_server_on_port_80_answers() {
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("python3.tar").to_str().unwrap()]);
    let svc = format!("{}py", c.lab.tag());
    m.shoal(&["service", "create", "--name", &svc, "demo/python3:3.11"]);
    wait_for("the server running", Duration::from_secs(30), || c.replicas(&svc).starts_with("1/1").then_some(()));
    let page = wait_for("an answer on port 80", Duration::from_secs(15), || {
        let out = m.run("shoal", &["exec", &svc, "wget", "-qO-", "http://127.0.0.1:80/"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(page.contains("python3 http.server as nobody on port 80"), "{page}");
    let ps = m.shoal(&["exec", &svc, "ps"]);
    let server = ps.lines().find(|l| l.contains("http.server")).unwrap_or_else(|| panic!("{ps}"));
    assert!(server.split_whitespace().nth(1).is_some_and(|u| u == "nobody" || u == "65534"), "{ps}");
    m.shoal(&["service", "rm", &svc]);
}

/// Debian's PostgreSQL 15 as the Docker library image runs it: as `postgres`, a member
/// of `ssl-cert` through the image's `/etc/group` (so it reads the snakeoil key,
/// root:ssl-cert 0640), accepting `sslmode=require` from Debian's psql; its
/// `StopSignal` (SIGINT, fast shutdown) ends a connected client's session at once on
/// an env update, where SIGTERM would wait out the 10 s grace period.
#[test]
#[ignore = "needs root"]
fn postgres_takes_tls_clients_and_an_update_with_a_client_stops_fast() {
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    let board = &c.lab.hosts[1];
    m.shoal(&["image", "load", lab_image("postgres.tar").to_str().unwrap()]);
    let svc = format!("{}pg", c.lab.tag());
    m.shoal(&[
        "service",
        "create",
        "--detach",
        "--name",
        &svc,
        "-e",
        "POSTGRES_PASSWORD=lab-secret",
        "--publish",
        "mode=host,target=5432,published=15432",
        "postgres:15",
    ]);
    wait_for("postgres running", Duration::from_secs(60), || c.replicas(&svc).starts_with("1/1").then_some(()));
    let conn = "host=127.0.0.1 port=15432 user=postgres dbname=postgres sslmode=require connect_timeout=2";
    let psql = |sql: &str| psql_command(board, &[conn, "-Atc", sql]).output().expect("psql (scripts/setup.sh)");
    let ssl = wait_for("a TLS session", Duration::from_secs(30), || {
        let out = psql("select ssl from pg_stat_ssl where pid = pg_backend_pid()");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    assert_eq!(ssl, "t");
    let groups = m.shoal(&["exec", &svc, "grep", "Groups:", "/proc/self/status"]);
    assert_eq!(groups.split_whitespace().skip(1).collect::<Vec<_>>(), ["101", "999"], "{groups}");

    // A client in a long query; the update's stop must end its session within ~1 s.
    let mut client = psql_command(board, &[conn, "-Atc", "select pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    wait_for("the client connected", Duration::from_secs(10), || {
        let out = psql("select count(*) from pg_stat_activity where query like 'select pg_sleep%'");
        (String::from_utf8_lossy(&out.stdout).trim() == "1").then_some(())
    });
    let t = std::time::Instant::now();
    m.shoal(&["service", "update", "--detach", "--env-add", "LAB_UPDATE=1", &svc]);
    let exited = wait_for("the client's session ended", Duration::from_secs(15), || {
        client.try_wait().expect("waiting for psql").map(|_| t.elapsed())
    });
    let shutdown = exited;
    eprintln!("postgres env update: the connected client's session ended after {shutdown:?}");
    let mut said = String::new();
    std::io::Read::read_to_string(client.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert!(said.contains("terminating connection due to administrator command"), "{said}");
    assert!(shutdown < Duration::from_secs(3), "SIGINT was not sent first: {shutdown:?}");
    wait_for("the updated task answering", Duration::from_secs(60), || psql("select 1").status.success().then_some(()));
    m.shoal(&["service", "rm", &svc]);
}

/// Debian's nginx as the Docker library image runs it: the master as root, workers as
/// `nobody`, answering on port 80; its `StopSignal` (SIGQUIT, graceful) ends it well
/// before the grace period.
#[test]
#[ignore = "needs root"]
fn nginx_answers_and_stops_gracefully_on_its_stop_signal() {
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("nginx.tar").to_str().unwrap()]);
    let svc = format!("{}ngx", c.lab.tag());
    m.shoal(&["service", "create", "--name", &svc, "nginx:1.22"]);
    wait_for("nginx running", Duration::from_secs(30), || c.replicas(&svc).starts_with("1/1").then_some(()));
    let page = wait_for("an answer on port 80", Duration::from_secs(15), || {
        let out = m.run("shoal", &["exec", &svc, "wget", "-qO-", "http://127.0.0.1/"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(page.contains("Welcome to nginx"), "{page}");
    let ps = m.shoal(&["exec", &svc, "ps"]);
    let worker = ps.lines().find(|l| l.contains("nginx: worker process")).unwrap_or_else(|| panic!("{ps}"));
    assert!(worker.split_whitespace().nth(1).is_some_and(|u| u == "nobody" || u == "65534"), "{ps}");
    let t = std::time::Instant::now();
    m.shoal(&["service", "rm", &svc]);
    wait_for("nginx gone", Duration::from_secs(15), || (shoal_e2e::running_containers(&svc) == 0).then_some(()));
    assert!(t.elapsed() < Duration::from_secs(5), "nginx was not stopped by SIGQUIT: {:?}", t.elapsed());
}
