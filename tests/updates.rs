//! Rolling updates end to end (lab task 4): a manager and three boards in network
//! namespaces, real agents running demo/app 1.0, 2.0 (exits 1 after a second) and 3.0 as
//! real containers with host-mode port 8000. Each test uses its own service names.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, wait_for, Cluster};

fn cluster_with_images(images: &[&str]) -> Cluster {
    let c = Cluster::start(3).unwrap();
    for image in images {
        let path = lab_image(image);
        c.manager_host().shoal(&["image", "load", path.to_str().unwrap()]);
    }
    c
}

/// The page board `nodeN` serves on `port`, if it answers.
fn page(c: &Cluster, hostname: &str, port: u16) -> Option<String> {
    let n: usize = hostname.trim_start_matches("node").parse().ok()?;
    let addr = format!("{}:{port}", c.lab.hosts[n].ip);
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `UpdateStatus` of a service, from the Docker-shaped inspect JSON.
fn update_status(c: &Cluster, service: &str) -> serde_json::Value {
    let json = c.manager_host().shoal(&["service", "inspect", "--format", "json", service]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["UpdateStatus"].clone()
}

fn wait_state(c: &Cluster, service: &str, state: &str, timeout: Duration) -> serde_json::Value {
    wait_for(&format!("{service} update state {state}"), timeout, || {
        let s = update_status(c, service);
        (s["State"] == state).then_some(s)
    })
}

/// `service ps` rows of the tasks the manager wants running.
fn live(c: &Cluster, service: &str) -> Vec<HashMap<String, String>> {
    c.service_ps(service).into_iter().filter(|r| r["DESIRED STATE"] == "Running").collect()
}

fn all_on(c: &Cluster, service: &str, image: &str, n: usize) -> Option<Vec<HashMap<String, String>>> {
    let rows = live(c, service);
    let ok = rows.len() == n && rows.iter().all(|r| r["IMAGE"] == image && r["CURRENT STATE"].starts_with("Running"));
    ok.then_some(rows)
}

#[test]
#[ignore = "needs root"]
fn lab_task4_failed_upgrade_pauses_rollback_restores_and_3_0_rolls_out_everywhere() {
    let c = cluster_with_images(&["demo-app-1.0.tar", "demo-app-2.0.tar", "demo-app-3.0.tar"]);
    let m = c.manager_host();
    let publish = "mode=host,target=8000,published=8000";
    m.shoal(&["service", "create", "--name", "appserver", "--replicas", "3", "--publish", publish, "demo/app:1.0"]);
    all_on(&c, "appserver", "demo/app:1.0", 3).expect("3 × 1.0 running");

    // 2. Upgrade to 2.0, which exits 1 a second after it starts.
    let started = Instant::now();
    let out = m.shoal(&[
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

    // 4. The update pauses, with Swarm's message.
    let status = wait_state(&c, "appserver", "paused", Duration::from_secs(60));
    let paused_after = started.elapsed();
    eprintln!("update to the failing 2.0 → paused in {paused_after:?}");
    let message = status["Message"].as_str().unwrap();
    assert!(message.starts_with("update paused due to failure or early termination of task "), "{message}");
    let template = m.shoal(&["service", "inspect", "-f", "{{json .UpdateStatus}}", "appserver"]);
    let t: serde_json::Value = serde_json::from_str(template.trim()).unwrap();
    assert_eq!(t["State"], "paused");
    assert!(t["StartedAt"].as_str().unwrap().ends_with('Z'));

    // 3. ps: 2.0 tasks failed with the exit status; 1.0 tasks they replaced shut down.
    let rows = c.service_ps("appserver");
    assert!(
        rows.iter().any(|r| r["IMAGE"] == "demo/app:2.0" && r["ERROR"].contains("task: non-zero exit (1)")),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r["IMAGE"] == "demo/app:1.0" && r["DESIRED STATE"] == "Shutdown"), "{rows:?}");
    let ls = c.service_ls();
    let app = ls.iter().find(|r| r["NAME"] == "appserver").unwrap();
    assert!(app["REPLICAS"].ends_with("(update paused)"), "{app:?}");

    // 5. Roll back: every replica returns to 1.0.
    let out = m.shoal(&["service", "update", "--rollback", "--detach=true", "appserver"]);
    assert_eq!(out.trim(), "appserver");
    wait_state(&c, "appserver", "rollback_completed", Duration::from_secs(90));
    let rows = all_on(&c, "appserver", "demo/app:1.0", 3).expect("every replica back on 1.0");
    // 7. The website runs 1.0 again.
    for r in &rows {
        let p = wait_for("1.0 page", Duration::from_secs(20), || page(&c, &r["NODE"], 8000));
        assert!(p.contains("demo app 1.0"), "{p}");
    }

    // 8. Upgrade to 3.0, followed live until it converges.
    let started = Instant::now();
    let out =
        m.shoal(&["service", "update", "--image", "demo/app:3.0", "--update-failure-action", "pause", "appserver"]);
    eprintln!("update to 3.0 (3 replicas, parallelism 1, monitor 5 s) took {:?}", started.elapsed());
    assert!(out.contains("overall progress: 3 out of 3 tasks"), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    assert_eq!(update_status(&c, "appserver")["State"], "completed");
    // 9, 10. Every node's page now names 3.0.
    let rows = all_on(&c, "appserver", "demo/app:3.0", 3).expect("3 × 3.0 running");
    let mut nodes: Vec<&str> = rows.iter().map(|r| r["NODE"].as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["node1", "node2", "node3"]);
    for node in nodes {
        let p = wait_for("3.0 page", Duration::from_secs(20), || page(&c, node, 8000));
        assert!(p.contains("demo app 3.0"), "{node}: {p}");
    }
}

#[test]
#[ignore = "needs root"]
fn failure_action_rollback_returns_by_itself_and_start_first_never_deadlocks_on_a_host_port() {
    let c = cluster_with_images(&["demo-app-1.0.tar", "demo-app-2.0.tar", "demo-app-3.0.tar"]);
    let m = c.manager_host();
    let publish = "mode=host,target=8000,published=8001";
    m.shoal(&["service", "create", "--name", "autoback", "--replicas", "3", "--publish", publish, "demo/app:1.0"]);
    all_on(&c, "autoback", "demo/app:1.0", 3).expect("3 × 1.0 running");

    // Followed live: the CLI reports the automatic rollback and fails, as docker does.
    let out = m.run(
        "shoal",
        &["service", "update", "--image", "demo/app:2.0", "--update-failure-action", "rollback", "autoback"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("service rolled back: update rolled back due to failure or early termination of task"),
        "{stderr}"
    );
    let status = wait_state(&c, "autoback", "rollback_completed", Duration::from_secs(60));
    assert_eq!(status["Message"], "rollback completed");
    let rows = all_on(&c, "autoback", "demo/app:1.0", 3).expect("back on 1.0");
    for r in &rows {
        let p = wait_for("1.0 page", Duration::from_secs(20), || page(&c, &r["NODE"], 8001));
        assert!(p.contains("demo app 1.0"), "{p}");
    }
    // Nothing to roll back to after an automatic rollback, as in Swarm.
    let out = m.run("shoal", &["service", "update", "--rollback", "-d", "autoback"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no previous spec"), "{out:?}");

    // Start-first with the port taken on all three boards (moby/moby#36934): shoal falls
    // back to stop-first per slot, says so, and completes.
    let out = m.shoal(&["service", "update", "--image", "demo/app:3.0", "--update-order", "start-first", "autoback"]);
    assert!(out.contains("start-first fell back to stop-first"), "{out}");
    assert!(out.contains("host-mode port 8001/tcp in use on 3 nodes"), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    all_on(&c, "autoback", "demo/app:3.0", 3).expect("3 × 3.0 running");
}

#[test]
#[ignore = "needs root"]
fn an_update_resumes_after_a_manager_crash_and_survives_a_board_dying_mid_way() {
    let mut c = cluster_with_images(&["demo-app-1.0.tar", "demo-app-3.0.tar"]);
    let m = c.manager_host();
    m.shoal(&["service", "create", "--name", "steady", "--replicas", "4", "demo/app:1.0"]);
    all_on(&c, "steady", "demo/app:1.0", 4).expect("4 × 1.0 running");

    // A slow rollout: one slot, then 4 s before the next.
    m.shoal(&["service", "update", "--image", "demo/app:3.0", "--update-delay", "4s", "-d", "steady"]);
    let first = wait_for("the first slot on 3.0", Duration::from_secs(30), || {
        let rows: Vec<_> = live(&c, "steady").into_iter().filter(|r| r["IMAGE"] == "demo/app:3.0").collect();
        (rows.len() == 1 && rows[0]["CURRENT STATE"].starts_with("Running")).then(|| rows[0]["ID"].clone())
    });

    // The manager dies without a word and comes back: the update carries on from there.
    c.manager.kill9();
    c.manager = c.manager_host().spawn("shoal", &["manager", "run"]);
    c.wait_status_all("Ready", Duration::from_secs(30));
    assert_eq!(update_status(&c, "steady")["State"], "updating");
    let rows = live(&c, "steady");
    assert!(rows.iter().any(|r| r["ID"] == first), "the replaced slot is not replaced again: {rows:?}");

    // A board loses power half way through.
    wait_for("a second slot on 3.0", Duration::from_secs(30), || {
        (live(&c, "steady").iter().filter(|r| r["IMAGE"] == "demo/app:3.0").count() >= 2).then_some(())
    });
    c.power_cut(3);
    c.wait_status("node3", "Down", Duration::from_secs(10));
    wait_state(&c, "steady", "completed", Duration::from_secs(90));
    let rows = all_on(&c, "steady", "demo/app:3.0", 4).expect("4 × 3.0 running");
    assert!(rows.iter().all(|r| r["NODE"] != "node3"), "{rows:?}");
    // One new task per slot, plus the replacements of the dead board's: nothing twice.
    let created_3_0 = c.service_ps("steady").iter().filter(|r| r["IMAGE"] == "demo/app:3.0").count();
    assert!(created_3_0 <= 4 + 2, "{created_3_0} tasks of 3.0 for 4 slots");
}
