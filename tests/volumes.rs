//! Service options end to end (issue 15): a named volume that outlives its task's
//! restart and an update, a bind mount, a tmpfs, a read-only root, a device passed
//! through while another is denied by the device cgroup, and user, workdir,
//! entrypoint, capabilities and `--no-init` seen from inside; `shoal volume ls|rm`
//! through the manager; a bind source missing on the board failing the task with that
//! reason. Then PostgreSQL keeping its rows in a named volume across a restart.
//!
//! One board, everything checked from inside the containers with `shoal exec`; and
//! `--constraint node.devices==PATH` placing by the devices the board reports.

use std::time::Duration;

use shoal_e2e::{lab_image, parse_table, wait_for, Cluster, Host};

/// A character device on the host's `/dev` (the boards share it) with the numbers of
/// `/dev/zero`, removed when dropped.
struct Node(String);

impl Node {
    fn make(path: &str, major: u32, minor: u32) -> Self {
        let _ = std::fs::remove_file(path);
        let ok = std::process::Command::new("mknod")
            .args([path, "c", &major.to_string(), &minor.to_string()])
            .status()
            .expect("mknod");
        assert!(ok.success(), "mknod {path}");
        Self(path.to_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn exec(m: &Host, svc: &str, script: &str) -> (bool, String) {
    let out = m.run("shoal", &["exec", svc, "sh", "-c", script]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The status line `service ps` shows for the newest task of `svc`, with its error.
fn newest_error(c: &Cluster, svc: &str) -> String {
    c.service_ps(svc).first().map(|r| r["ERROR"].clone()).unwrap_or_default()
}

/// One cluster for both parts: PostgreSQL initialises its data directory while the
/// options are checked.
#[test]
#[ignore = "needs root"]
fn volumes_mounts_devices_options_and_postgres_in_a_volume() {
    let started = std::time::Instant::now();
    // A serial port of the kind boards report, there before the board's session opens.
    let lab = shoal_e2e::Lab::new(2).unwrap();
    let serial = Node::make(&format!("/dev/ttyUSB{}", lab.tag()), 1, 5);
    let c = Cluster::start_in(lab).unwrap();
    let pg = start_postgres(&c);
    placed_by_device(&c, &serial.0);
    options_from_inside(&c);
    eprintln!("options checked after {:?}", started.elapsed());
    postgres_keeps_its_rows(&c, &pg);
    eprintln!("volumes_mounts_devices_options_and_postgres_in_a_volume: {:?}", started.elapsed());
}

/// `--constraint node.devices==PATH` places only on a board that reports the device.
fn placed_by_device(c: &Cluster, device: &str) {
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let node: serde_json::Value =
        serde_json::from_str(&m.shoal(&["node", "inspect", "--format", "json", "node1"])).unwrap();
    let reported = node[0]["Description"]["Devices"].to_string();
    assert!(reported.contains(device), "{reported}");
    let (with, without) = (format!("{}dv", c.lab.tag()), format!("{}dn", c.lab.tag()));
    let missing = format!("{device}x");
    for (svc, dev) in [(&with, device), (&without, missing.as_str())] {
        let constraint = format!("node.devices=={dev}");
        m.shoal(&["service", "create", "--detach", "--name", svc, "--constraint", &constraint, "demo/app:1.0"]);
    }
    wait_for("the task with the device running", Duration::from_secs(30), || {
        c.replicas(&with).starts_with("1/1").then_some(())
    });
    let reason = wait_for("the task without it pending", Duration::from_secs(10), || {
        let e = newest_error(c, &without);
        (!e.is_empty()).then_some(e)
    });
    assert!(reason.contains("no suitable node"), "{reason}");
    m.shoal(&["service", "rm", &with, &without]);
}

fn options_from_inside(c: &Cluster) {
    let m = c.manager_host();
    let tag = c.lab.tag().to_owned();
    let bind = c.lab.dir.join("bind-src");
    std::fs::create_dir_all(&bind).unwrap();
    std::fs::write(bind.join("hello.txt"), "from the board\n").unwrap();
    let sensor = Node::make(&format!("/dev/{tag}-zero"), 1, 5);
    let volume = format!("{tag}vol");
    let svc = format!("{tag}o");
    let script = "echo run >> /data/runs 2>/dev/null; exec sleep 600";
    m.shoal(&[
        "service",
        "create",
        "--name",
        &svc,
        "--restart-delay",
        "100ms",
        "--stop-grace-period",
        "1s",
        "--mount",
        &format!("type=volume,source={volume},target=/data"),
        "--mount",
        &format!("type=bind,source={},target=/bind,readonly", bind.display()),
        "--mount",
        "type=tmpfs,target=/scratch,tmpfs-size=1M",
        "--read-only",
        "--device",
        &format!("{}:/dev/sensor:r", sensor.0),
        "--entrypoint",
        "sh -c",
        "demo/app:1.0",
        script,
    ]);
    wait_for("the task running", Duration::from_secs(30), || c.replicas(&svc).starts_with("1/1").then_some(()));
    let svc = svc.as_str();

    // The mounts: the volume written, the bind read-only, a 1 MiB tmpfs, a read-only root.
    let (_, runs) = exec(m, svc, "cat /data/runs");
    assert_eq!(runs, "run\n");
    let (_, hello) = exec(m, svc, "cat /bind/hello.txt");
    assert_eq!(hello, "from the board\n");
    let (ok, said) = exec(m, svc, "touch /bind/x");
    assert!(!ok && said.contains("Read-only file system"), "{said}");
    let (ok, said) = exec(m, svc, "touch /rootfile");
    assert!(!ok && said.contains("Read-only file system"), "{said}");
    let (ok, mounts) = exec(m, svc, "touch /scratch/x && grep ' /scratch ' /proc/mounts");
    assert!(ok && mounts.contains("tmpfs") && mounts.contains("size=1024k"), "{mounts}");

    // The device passed reads as /dev/zero; one not passed is not there, and one made
    // inside (CAP_MKNOD allows making it) can't be opened: the device cgroup denies it.
    let (ok, bytes) = exec(m, svc, "head -c 4 /dev/sensor | od -An -tx1");
    assert!(ok && bytes.split_whitespace().collect::<Vec<_>>() == ["00", "00", "00", "00"], "{bytes}");
    let (ok, _) = exec(m, svc, &format!("test -e /dev/{tag}-zero"));
    assert!(!ok, "a device not passed is in the container");
    let (ok, said) = exec(m, svc, "mknod /dev/kmsg-again c 1 11 && head -c 1 /dev/kmsg-again");
    assert!(!ok && said.contains("Operation not permitted"), "{said}");

    // The volume on the board, in use; its removal refused.
    let vols = parse_table(&m.shoal(&["volume", "ls"]), &["DRIVER", "NODE", "NAME", "SIZE", "USED BY"]);
    let row = vols.iter().find(|r| r["NAME"] == volume).unwrap_or_else(|| panic!("{vols:?}"));
    assert!(row["USED BY"].starts_with(&format!("{svc}.1.")), "{row:?}");
    assert_eq!(row["NODE"], c.nodes().iter().find(|n| !n.manager_status.contains("Leader")).unwrap().hostname);
    let inspect: serde_json::Value = serde_json::from_str(&m.shoal(&["volume", "inspect", &volume])).unwrap();
    assert_eq!(inspect[0]["Name"], volume.as_str());
    assert_eq!(inspect[0]["Driver"], "local");
    assert_eq!(inspect[0]["UsageData"]["RefCount"], 1);
    let out = m.run("shoal", &["volume", "rm", &volume]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("in use by service"), "{said}");

    // A restart (the task's process ends): a new container, the same volume.
    let _ = exec(m, svc, "kill 1");
    wait_for("the restarted task's run", Duration::from_secs(30), || {
        (exec(m, svc, "cat /data/runs").1 == "run\nrun\n").then_some(())
    });

    // A link the container leaves in its volume, pointing at /etc: a mount whose target
    // goes through it lands in the container's /etc, never the board's.
    let (ok, said) = exec(m, svc, "ln -s /etc /data/escape");
    assert!(ok, "{said}");
    let escape = format!("/etc/{tag}-escape");
    let _ = std::fs::remove_dir(&escape);

    // An update: another user, workdir, capabilities, PID 1; the volume is kept.
    m.shoal(&[
        "service",
        "update",
        "--mount-add",
        &format!("type=tmpfs,target=/data/escape/{tag}-escape"),
        "--user",
        "1234:1234",
        "--workdir",
        "/srv/app",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "KILL",
        "--no-init",
        "--read-only=false",
        svc,
    ]);
    wait_for("the updated task", Duration::from_secs(30), || {
        exec(m, svc, "grep Uid: /proc/1/status").1.contains("1234").then_some(())
    });
    let (_, status) = exec(m, svc, "grep -E '^(Uid|Gid|CapBnd):' /proc/1/status; cat /proc/1/comm; pwd");
    let lines: Vec<Vec<&str>> = status.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["Uid:", "1234", "1234", "1234", "1234"], "{status}");
    assert_eq!(lines[1], ["Gid:", "1234", "1234", "1234", "1234"], "{status}");
    assert_eq!(lines[2], ["CapBnd:", "0000000000000020"], "only CAP_KILL: {status}");
    assert_eq!(lines[3], ["sleep"], "--no-init: the command is PID 1: {status}");
    assert_eq!(lines[4], ["/srv/app"], "{status}");
    let (_, runs) = exec(m, svc, "cat /data/runs");
    assert_eq!(runs, "run\nrun\n", "the volume outlives the update");
    assert!(!std::path::Path::new(&escape).exists(), "a mount followed the container's link onto the board");
    let (_, mounts) = exec(m, svc, "cat /proc/mounts");
    assert!(mounts.lines().any(|l| l.starts_with(&format!("tmpfs {escape} "))), "{mounts}");

    // A bind source the board lacks fails the task with that reason.
    let missing = format!("{tag}m");
    m.shoal(&[
        "service",
        "create",
        "--detach",
        "--name",
        &missing,
        "--mount",
        &format!("type=bind,source=/nonexistent/{tag},target=/x"),
        "demo/app:1.0",
    ]);
    let error = wait_for("the missing bind source's error", Duration::from_secs(20), || {
        let e = newest_error(c, &missing);
        (!e.is_empty()).then_some(e)
    });
    assert!(error.contains("bind source path does not exist"), "{error}");
    m.shoal(&["service", "rm", &missing]);

    // Once the service is gone the volume can go too.
    m.shoal(&["service", "rm", svc]);
    wait_for("the volume unused", Duration::from_secs(20), || {
        m.run("shoal", &["volume", "rm", &volume]).status.success().then_some(())
    });
    assert!(!m.shoal(&["volume", "ls", "-q"]).lines().any(|l| l == volume));
}

fn psql_command(host: &Host, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", host.ns)).arg("--").arg("psql").args(args);
    c.env("PGPASSWORD", "lab-secret").stdin(std::process::Stdio::null());
    c
}

/// PostgreSQL (Debian's package, `images/`) with its data in a named volume, started
/// detached: the service's and the volume's names.
fn start_postgres(c: &Cluster) -> (String, String) {
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("postgres.tar").to_str().unwrap()]);
    let svc = format!("{}pg", c.lab.tag());
    let volume = format!("{}pgdata", c.lab.tag());
    m.shoal(&[
        "service",
        "create",
        "--detach",
        "--name",
        &svc,
        "--restart-delay",
        "100ms",
        "-e",
        "POSTGRES_PASSWORD=lab-secret",
        "--mount",
        &format!("type=volume,source={volume},target=/var/lib/postgresql"),
        "--publish",
        "mode=host,target=5432,published=15433",
        "postgres:15",
    ]);
    (svc, volume)
}

/// Its rows survive the task's restart: the new container finds the data directory the
/// first one made (the volume was filled from the image, so it belongs to postgres).
fn postgres_keeps_its_rows(c: &Cluster, (svc, volume): &(String, String)) {
    let m = c.manager_host();
    let board = &c.lab.hosts[1];
    let conn = "host=127.0.0.1 port=15433 user=postgres dbname=postgres connect_timeout=2";
    let psql = |sql: &str| psql_command(board, &[conn, "-Atc", sql]).output().expect("psql (scripts/setup.sh)");
    wait_for("postgres answering", Duration::from_secs(60), || psql("select 1").status.success().then_some(()));
    let out = psql("create table lab (n int); insert into lab values (42), (7)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Its process ends (SIGINT, PostgreSQL's fast shutdown, through the init): a new task.
    let before = c.service_ps(svc).len();
    m.shoal(&["exec", svc, "kill", "-INT", "1"]);
    wait_for("a new task", Duration::from_secs(30), || (c.service_ps(svc).len() > before).then_some(()));
    let rows = wait_for("the rows after the restart", Duration::from_secs(60), || {
        let out = psql("select n from lab order by n");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(rows, "7\n42\n");
    let size = parse_table(&m.shoal(&["volume", "ls"]), &["DRIVER", "NODE", "NAME", "SIZE", "USED BY"])
        .into_iter()
        .find(|r| r["NAME"] == *volume)
        .map(|r| r["SIZE"].clone());
    eprintln!("postgres volume size: {size:?}");
    m.shoal(&["service", "rm", svc]);
}
