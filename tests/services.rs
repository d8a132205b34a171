//! Replicated services end to end (lab tasks 3, 5 and 6): a manager and three boards in
//! network namespaces, real agents running the lab's images (`out/images/`, built by
//! `images/build.sh`) as real containers. Each test uses its own service names, since
//! the containers of parallel tests share the host's cgroup tree.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, running_containers, wait_for, Cluster};

/// A cluster of three boards with the lab images loaded.
fn cluster_with_images(images: &[&str]) -> Cluster {
    let c = Cluster::start(3).unwrap();
    for image in images {
        let path = lab_image(image);
        c.manager_host().shoal(&["image", "load", path.to_str().unwrap()]);
    }
    c
}

fn tcp_exchange(addr: &str, request: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if request.starts_with(b"PING") && out.ends_with(b"\r\n") {
            break;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The IP of board `nodeN`.
fn ip_of(c: &Cluster, hostname: &str) -> String {
    let n: usize = hostname.trim_start_matches("node").parse().unwrap();
    c.lab.hosts[n].ip.clone()
}

/// Rows of the tasks the manager wants running.
fn live(c: &Cluster, service: &str) -> Vec<std::collections::HashMap<String, String>> {
    c.service_ps(service).into_iter().filter(|r| r["DESIRED STATE"] == "Running").collect()
}

fn all_running(c: &Cluster, service: &str, n: usize) -> Option<Vec<std::collections::HashMap<String, String>>> {
    let rows = live(c, service);
    (rows.len() == n && rows.iter().all(|r| r["CURRENT STATE"].starts_with("Running"))).then_some(rows)
}

#[test]
#[ignore = "needs root"]
fn lab_task3_database_and_appserver_run_in_host_mode() {
    let c = cluster_with_images(&["redis.tar", "demo-app-1.0.tar"]);
    let m = c.manager_host();
    let out = m.run("shoal", &["service", "create", "--name", "nope", "missing/image:1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("shoal image load"), "{out:?}");

    let id = m.shoal(&[
        "service",
        "create",
        "--name",
        "database",
        "--endpoint-mode",
        "dnsrr",
        "--publish",
        "mode=host,target=6379",
        "--detach=true",
        "redis",
    ]);
    assert_eq!(id.trim().len(), 25, "{id}");
    let out = m.shoal(&[
        "service",
        "create",
        "--name",
        "appserver",
        "--replicas",
        "1",
        "--publish",
        "mode=host,target=8000,published=8000",
        "demo/app:1.0",
    ]);
    assert!(out.contains("overall progress: 1 out of 1 tasks"), "{out}");
    assert!(out.contains("verify: Waiting 5 seconds to verify that tasks are stable..."), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");

    // A service whose task exits a second after it starts is not reported converged: the
    // CLI says what docker/cli says, and gives up with the task's error.
    c.manager_host().shoal(&["image", "load", lab_image("demo-app-2.0.tar").to_str().unwrap()]);
    let out = m.run("shoal", &["service", "create", "--name", "crashloop", "--restart-delay", "1s", "demo/app:2.0"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a crash-looping service was reported converged: {stdout}");
    assert!(!stdout.contains("verify: Service converged"), "{stdout}");
    assert!(stdout.contains("verify: Detected task failure"), "{stdout}");
    assert!(stderr.contains("keep failing") && stderr.contains("non-zero exit (1)"), "{stderr}");
    m.shoal(&["service", "rm", "crashloop"]);

    wait_for("database 1/1", Duration::from_secs(90), || (c.replicas("database") == "1/1").then_some(()));
    let ls = c.service_ls();
    let app = ls.iter().find(|r| r["NAME"] == "appserver").unwrap();
    assert_eq!((app["MODE"].as_str(), app["REPLICAS"].as_str()), ("replicated", "1/1"));
    assert_eq!((app["IMAGE"].as_str(), app["PORTS"].as_str()), ("demo/app:1.0", "*:8000->8000/tcp (host)"));
    let db = ls.iter().find(|r| r["NAME"] == "database").unwrap();
    assert_eq!(db["IMAGE"], "redis:latest");

    let rows = all_running(&c, "database", 1).expect("database running");
    assert_eq!(rows[0]["NAME"], "database.1");
    assert!(rows[0]["CURRENT STATE"].ends_with("ago"), "{rows:?}");
    let db_node = rows[0]["NODE"].clone();
    let port = rows[0]["PORTS"]
        .split("->")
        .next()
        .and_then(|p| p.trim_start_matches("*:").parse::<u16>().ok())
        .unwrap_or(6379);
    let addr = format!("{}:{port}", ip_of(&c, &db_node));
    let pong = wait_for("redis to answer PING", Duration::from_secs(20), || {
        tcp_exchange(&addr, b"PING\r\n").filter(|r| r.contains("PONG"))
    });
    assert!(pong.starts_with("+PONG"), "{pong}");

    let rows = all_running(&c, "appserver", 1).expect("appserver running");
    let addr = format!("{}:8000", ip_of(&c, &rows[0]["NODE"]));
    let page = wait_for("the app to answer", Duration::from_secs(20), || {
        tcp_exchange(&addr, b"GET / HTTP/1.0\r\n\r\n").filter(|r| r.contains("demo app 1.0"))
    });
    assert!(page.contains("200"), "{page}");

    let json = m.shoal(&["service", "inspect", "appserver"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["Spec"]["EndpointSpec"]["Ports"][0]["PublishedPort"], 8000);
    // Both real images run under Docker's default seccomp policy.
    assert_eq!(v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Privileges"]["Seccomp"]["Mode"], "default");
    assert_eq!(c.seccomp_modes("database"), ["2"], "redis runs under a seccomp filter");
    assert_eq!(c.seccomp_modes("appserver"), ["2"], "the app runs under a seccomp filter");
    m.shoal(&["service", "update", "--security-opt", "seccomp=unconfined", "--detach=true", "database"]);
    wait_for("the database to run unconfined", Duration::from_secs(30), || {
        (c.seccomp_modes("database") == ["0"] && c.replicas("database") == "1/1").then_some(())
    });
    assert!(m.shoal(&["service", "inspect", "--pretty", "database"]).contains("Endpoint Mode:\tdnsrr"));
}

#[test]
#[ignore = "needs root"]
fn lab_task5_scaling_spreads_tasks_and_a_fixed_host_port_leaves_extras_pending() {
    let c = cluster_with_images(&["demo-app-1.0.tar"]);
    let m = c.manager_host();
    m.shoal(&["service", "create", "--name", "front", "--detach", "demo/app:1.0"]);
    let out = m.shoal(&["service", "scale", "front=6"]);
    assert!(out.contains("front scaled to 6") && out.contains("verify: Service converged"), "{out}");
    let rows = all_running(&c, "front", 6).expect("6 running");
    for node in ["node1", "node2", "node3"] {
        let n = rows.iter().filter(|r| r["NODE"] == node).count();
        assert_eq!(n, 2, "spread evenly: {rows:?}");
    }
    wait_for("6 containers", Duration::from_secs(10), || (running_containers("front") == 6).then_some(()));

    // One task per node fits a fixed host port: the fourth stays pending, with the reason.
    m.shoal(&[
        "service",
        "create",
        "--name",
        "fixed",
        "--replicas",
        "3",
        "--publish",
        "mode=host,target=8000,published=8000",
        "demo/app:1.0",
    ]);
    let out = m.run("shoal", &["service", "scale", "fixed=4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("host-mode port 8000/tcp in use on 3 nodes"), "{err}");
    let pending: Vec<_> = live(&c, "fixed").into_iter().filter(|r| r["CURRENT STATE"].starts_with("Pending")).collect();
    assert_eq!(pending.len(), 1);
    assert!(pending[0]["ERROR"].starts_with("no suitable node"), "{pending:?}");
    assert_eq!(c.replicas("fixed"), "3/4");
}

#[test]
#[ignore = "needs root"]
fn lab_task6_drain_moves_tasks_and_a_power_cut_fails_over_within_a_second() {
    let mut c = cluster_with_images(&["demo-app-1.0.tar"]);
    let m = c.manager_host();
    m.shoal(&["service", "create", "--name", "drainme", "--replicas", "6", "demo/app:1.0"]);
    all_running(&c, "drainme", 6).expect("converged");

    m.shoal(&["node", "update", "--availability", "drain", "node2"]);
    let rows = wait_for("drainme off node2", Duration::from_secs(30), || {
        all_running(&c, "drainme", 6).filter(|rows| rows.iter().all(|r| r["NODE"] != "node2"))
    });
    assert_eq!(rows.iter().filter(|r| r["NODE"] == "node1").count(), 3, "{rows:?}");
    let history = c.service_ps("drainme");
    assert!(history.iter().any(|r| r["NAME"].starts_with("\\_") && r["NODE"] == "node2"), "{history:?}");
    assert_eq!(c.replicas("drainme"), "6/6");

    // Board 3 loses power: agent and containers die at once.
    c.power_cut(3);
    c.wait_status("node3", "Down", Duration::from_secs(10));
    let down_at = Instant::now();
    wait_for("replacements placed", Duration::from_secs(5), || {
        let rows = live(&c, "drainme");
        (rows.len() == 6 && rows.iter().all(|r| r["NODE"] == "node1")).then_some(())
    });
    let took = down_at.elapsed();
    eprintln!("Down → all tasks placed elsewhere in {took:?}");
    assert!(took < Duration::from_millis(1500), "replacement took {took:?}");
    wait_for("6/6 again", Duration::from_secs(60), || (c.replicas("drainme") == "6/6").then_some(()));
}

#[test]
#[ignore = "needs root"]
fn lab_task6_a_cut_link_reschedules_and_the_surplus_stops_when_it_returns() {
    let c = cluster_with_images(&["demo-app-1.0.tar"]);
    let m = c.manager_host();
    m.shoal(&["service", "create", "--name", "linkcut", "--replicas", "3", "demo/app:1.0"]);
    all_running(&c, "linkcut", 3).expect("converged");
    wait_for("3 containers", Duration::from_secs(10), || (running_containers("linkcut") == 3).then_some(()));

    c.lab.hosts[3].cut_link();
    c.wait_status("node3", "Down", Duration::from_secs(10));
    wait_for("3/3 without node3", Duration::from_secs(60), || {
        all_running(&c, "linkcut", 3).filter(|rows| rows.iter().all(|r| r["NODE"] != "node3"))
    });
    // The partitioned board still runs its copy: four containers for now.
    assert_eq!(running_containers("linkcut"), 4);

    c.lab.hosts[3].restore_link();
    c.wait_status("node3", "Ready", Duration::from_secs(30));
    wait_for("the surplus to stop", Duration::from_secs(30), || (running_containers("linkcut") == 3).then_some(()));
    wait_for("the old task reported stopped", Duration::from_secs(15), || {
        let rows = c.service_ps("linkcut");
        rows.iter()
            .filter(|r| r["NODE"] == "node3")
            .all(|r| r["DESIRED STATE"] == "Shutdown" && !r["CURRENT STATE"].starts_with("Running"))
            .then_some(())
    });
    assert_eq!(c.replicas("linkcut"), "3/3");
}

#[test]
#[ignore = "needs root"]
fn a_manager_restart_loses_nothing_and_starts_nothing_twice() {
    let mut c = cluster_with_images(&["demo-app-1.0.tar"]);
    let m = c.manager_host();
    m.shoal(&["service", "create", "--name", "durable", "--replicas", "3", "demo/app:1.0"]);
    let before: Vec<String> = all_running(&c, "durable", 3).unwrap().iter().map(|r| r["ID"].clone()).collect();
    m.shoal(&["service", "update", "--env-add", "X=1", "--detach", "durable"]);
    wait_for("updated", Duration::from_secs(60), || all_running(&c, "durable", 3));
    let updated: Vec<String> = live(&c, "durable").iter().map(|r| r["ID"].clone()).collect();
    assert!(updated.iter().all(|id| !before.contains(id)), "an env change replaces the tasks");

    c.manager.stop();
    c.manager = c.manager_host().spawn("shoal", &["manager", "run"]);
    c.wait_status_all("Ready", Duration::from_secs(20));
    let rows = all_running(&c, "durable", 3).expect("still running");
    let mut after: Vec<String> = rows.iter().map(|r| r["ID"].clone()).collect();
    let mut expected = updated.clone();
    after.sort();
    expected.sort();
    assert_eq!(after, expected, "the same tasks, none started again");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running_containers("durable"), 3);

    // Rollback goes back to the previous spec; a second rollback goes forward again.
    let m = c.manager_host();
    m.shoal(&["service", "update", "--rollback", "durable"]);
    let v: serde_json::Value = serde_json::from_str(&m.shoal(&["service", "inspect", "durable"])).unwrap();
    assert_eq!(v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"], serde_json::json!([]));
    m.shoal(&["service", "update", "--rollback", "durable"]);
    let v: serde_json::Value = serde_json::from_str(&m.shoal(&["service", "inspect", "durable"])).unwrap();
    assert_eq!(v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"], serde_json::json!(["X=1"]));
    m.shoal(&["service", "rm", "durable"]);
    wait_for("containers gone", Duration::from_secs(30), || (running_containers("durable") == 0).then_some(()));
    assert!(c.service_ls().is_empty());
}

#[test]
#[ignore = "needs root"]
fn an_image_in_use_is_not_removed_and_a_task_without_its_image_is_rejected_with_why() {
    let c = cluster_with_images(&["demo-app-1.0.tar"]);
    let m = c.manager_host();
    m.shoal(&["service", "create", "--name", "keepimg", "--replicas", "1", "demo/app:1.0"]);
    wait_for("keepimg to run", Duration::from_secs(60), || all_running(&c, "keepimg", 1));
    // Docker's conflict, naming the service.
    let out = m.run("shoal", &["image", "rm", "demo/app:1.0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an image in use was removed");
    assert!(err.contains("(must force)") && err.contains("service keepimg is using"), "{err}");
    assert!(m.shoal(&["image", "ls"]).contains("demo/app"), "the refused rm removed the image");
    // Forced: the running task stays, a new one is rejected with the reason, not left waiting.
    m.shoal(&["image", "rm", "--force", "demo/app:1.0"]);
    let node = live(&c, "keepimg")[0]["NODE"].clone();
    m.shoal(&["node", "update", "--availability", "drain", &node]);
    wait_for("the new task to be rejected with why", Duration::from_secs(30), || {
        let ps = m.shoal(&["service", "ps", "keepimg"]);
        ps.contains("image demo/app:1.0 is not loaded on the manager").then_some(())
    });
    // Loading the image again heals it.
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    wait_for("the replica to run again", Duration::from_secs(60), || all_running(&c, "keepimg", 1));
    m.shoal(&["node", "update", "--availability", "active", &node]);
    m.shoal(&["service", "rm", "keepimg"]);
}
