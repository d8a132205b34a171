//! Certificates over a fleet's years (issue 17), on one cluster to keep CI lean: a
//! manager with `--cert-expiry 4s` and three boards, the third with a clock three years
//! behind (the agent's test-only `SHOAL_TEST_CLOCK_OFFSET`), running a service.
//!
//! 1. The boards renew several times while the service runs: no task restarts, no node
//!    goes Down, the CLI keeps working (its `admin.json` renewed by the manager).
//! 2. The board three years behind joined, renews like the others, and `node inspect`
//!    shows its skew and its certificate's expiry.
//! 3. `manager ca --rotate` with one board offline: progress, completion; the old token
//!    and the old CA's certificates are refused afterwards; the offline board is told how
//!    to re-join, and re-joins.
//!    A second rotation, interrupted by a manager crash, resumes and completes.
//! 4. A removed node is refused on its renewed certificate of the new CA.

use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, parse_table, wait_for, Cluster, Lab, SERVICE_PS};

/// Three years, in seconds, behind.
const THREE_YEARS_BEHIND: &str = "-94608000";
const THREE_YEARS_MS: i64 = 94_608_000_000;

fn renewals(log: &str) -> usize {
    log.matches("saved a renewed certificate").count()
}

/// IDs of the service's tasks meant to run, and whether all of them do.
fn running_tasks(c: &Cluster, service: &str) -> (Vec<String>, bool) {
    let rows = parse_table(&c.manager_host().shoal(&["service", "ps", service]), &SERVICE_PS);
    let live: Vec<_> = rows.into_iter().filter(|r| r["DESIRED STATE"] == "Running").collect();
    let all = live.iter().all(|r| r["CURRENT STATE"].starts_with("Running"));
    let mut ids: Vec<String> = live.into_iter().map(|r| r["ID"].clone()).collect();
    ids.sort();
    (ids, all)
}

#[test]
#[ignore = "needs root"]
fn certificates_renew_rotate_and_tolerate_a_clock_years_behind() {
    let lab = Lab::new(4).unwrap();
    let image = lab_image("demo-app-1.0.tar");
    let started = Instant::now();
    let m = &lab.hosts[0];
    let init = m.shoal(&["manager", "init", "--advertise-addr", &m.ip, "--hostname", "manager", "--cert-expiry", "4s"]);
    let token = init.split_whitespace().find(|w| w.starts_with("SHOAL-1-")).unwrap().to_owned();
    // 1 s heartbeats: a stopped board stays Ready for 3 s, time enough to restart the
    // manager mid-rotation without racing its Down.
    let manager = m.spawn("shoal", &["manager", "run", "--heartbeat-period", "1s"]);
    wait_for("the manager to answer", Duration::from_secs(10), || {
        m.run("shoal", &["node", "ls"]).status.success().then_some(())
    });
    let addr = format!("{}:4242", m.ip);
    let mut agents = Vec::new();
    for (i, h) in lab.hosts.iter().enumerate().skip(1) {
        let name = format!("node{i}");
        let env: &[(&str, &str)] = if i == 3 { &[("SHOAL_TEST_CLOCK_OFFSET", THREE_YEARS_BEHIND)] } else { &[] };
        agents.push(h.spawn_env("shoal-agent", &["join", "--token", &token, "--hostname", &name, &addr], env));
    }
    let mut c = Cluster { manager, agents, token: token.clone(), lab };
    c.wait_status_all("Ready", Duration::from_secs(15));
    let m = c.manager_host();
    m.shoal(&["image", "load", image.to_str().unwrap()]);
    let svc = format!("{}-certs", c.lab.tag());
    m.shoal(&["service", "create", "--name", &svc, "--replicas", "3", "demo/app:1.0"]);
    let tasks = wait_for("3 tasks running", Duration::from_secs(20), || {
        let (ids, all) = running_tasks(&c, &svc);
        (ids.len() == 3 && all).then_some(ids)
    });
    let admin = c.manager_host().data_dir.join("manager/admin.json");
    let first_admin = std::fs::read_to_string(&admin).unwrap();

    // 1. Several renewals per board while the service runs; every `node ls` is the CLI
    //    working, and none may show a node Down.
    let renewing = Instant::now();
    let before: Vec<usize> = c.agents.iter().map(|a| renewals(&a.output())).collect();
    wait_for("every board to renew 3 times, and admin.json once", Duration::from_secs(20), || {
        let nodes = c.nodes();
        assert!(nodes.iter().all(|n| n.status == "Ready"), "a node left Ready while renewing: {nodes:?}");
        let boards = c.agents.iter().zip(&before).all(|(a, b)| renewals(&a.output()) >= b + 3);
        (boards && std::fs::read_to_string(&admin).unwrap() != first_admin).then_some(())
    });
    println!("3 renewals per board took {:?}", renewing.elapsed());
    let (now, all) = running_tasks(&c, &svc);
    assert_eq!(now, tasks, "no task was replaced while certificates renewed");
    assert!(all, "every task still runs");
    for a in &c.agents {
        assert!(!a.output().contains("lost the session"), "a renewal cost a session: {}", a.output());
    }

    // 2. The board three years behind: joined, renewed above, its skew and expiry shown.
    let inspect = c.manager_host().shoal(&["node", "inspect", "node3"]);
    assert!(inspect.contains("Certificate:\n Expires:"), "{inspect}");
    assert!(inspect.contains("behind the manager"), "{inspect}");
    let json: serde_json::Value =
        serde_json::from_str(&c.manager_host().shoal(&["node", "inspect", "--format", "json", "node3"])).unwrap();
    let skew = json[0]["Status"]["ClockSkewMs"].as_i64().unwrap();
    assert!((skew + THREE_YEARS_MS).abs() < 5_000, "skew {skew} ms");
    assert!(json[0]["Certificate"]["ExpiresInMs"].as_i64().unwrap() <= 4_000);

    // 3. CA rotation with node2 offline throughout.
    let old_token = c.token.clone();
    let old_admin: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&admin).unwrap()).unwrap();
    c.agents[1].stop();
    c.wait_status("node2", "Down", Duration::from_secs(10));
    let rotating = Instant::now();
    let out = c.manager_host().shoal(&["manager", "ca", "--rotate"]);
    println!("rotation took {:?}:\n{out}", rotating.elapsed());
    assert!(out.contains("rotated 2/2 nodes") && out.contains("CA rotation complete"), "{out}");
    let new_token = c.manager_host().shoal(&["manager", "join-token", "worker", "-q"]).trim().to_owned();
    assert_ne!(new_token, old_token, "join tokens change with the CA");
    let survivors: Vec<String> = running_tasks(&c, &svc).0.into_iter().filter(|t| tasks.contains(t)).collect();
    assert_eq!(survivors.len(), 2, "the tasks of the Ready boards run through the rotation");
    wait_for("3 tasks running after the rotation", Duration::from_secs(15), || {
        let (ids, all) = running_tasks(&c, &svc);
        (ids.len() == 3 && all).then_some(())
    });
    assert!(c.nodes().iter().filter(|n| n.hostname != "node2").all(|n| n.status == "Ready"));

    // The old token is refused: the manager no longer shows the CA it pins.
    let scratch = c.lab.dir.join("old-token");
    let tried = c.lab.hosts[2].run(
        "shoal-agent",
        &["--data-dir", scratch.to_str().unwrap(), "join", "--token", &old_token, "--hostname", "late", &addr],
    );
    let said = String::from_utf8_lossy(&tried.stderr);
    assert!(!tried.status.success() && said.contains("not the cluster this token belongs to"), "{said}");
    // A certificate of the old CA is refused by the manager, even by a client that
    // trusts the new CA.
    let forged = c.lab.dir.join("old-admin");
    std::fs::create_dir_all(forged.join("manager")).unwrap();
    let mut creds = old_admin.clone();
    let new_admin: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&admin).unwrap()).unwrap();
    creds["ca_pem"] = new_admin["ca_pem"].clone();
    std::fs::write(forged.join("manager/admin.json"), creds.to_string()).unwrap();
    let refused = c.manager_host().run("shoal", &["--data-dir", forged.to_str().unwrap(), "node", "ls"]);
    assert!(!refused.status.success(), "an old-CA certificate was accepted");

    // The board offline throughout is told how to re-join, then re-joins.
    c.restart_agent(2);
    let told = wait_for("node2 to say how to re-join", Duration::from_secs(10), || {
        let log = c.agents[1].output();
        log.contains("CA this board does not trust").then_some(log)
    });
    assert!(told.contains("shoal node rm") && told.contains("join --force --token"), "{told}");
    c.agents[1].stop();
    c.manager_host().shoal(&["node", "rm", "node2"]);
    c.agents[1] =
        c.lab.hosts[2].spawn("shoal-agent", &["join", "--force", "--token", &new_token, "--hostname", "node2", &addr]);
    c.wait_status_all("Ready", Duration::from_secs(15));
    // And the board behind keeps renewing under the new CA.
    let before = renewals(&c.agents[2].output());
    wait_for("node3 to renew under the new CA", Duration::from_secs(10), || {
        (renewals(&c.agents[2].output()) > before).then_some(())
    });
    // 3b. A rotation resumes after a manager crash: node3 frozen keeps it in progress
    //     (Ready, then Unknown after the restart, so it is waited for).
    let frozen = c.agents[2].pid().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &frozen]).status().unwrap().success());
    let out = c.manager_host().shoal(&["manager", "ca", "--rotate", "--detach"]);
    c.manager.kill9();
    let next =
        out.lines().find_map(|l| l.strip_prefix("Rotating to:\t\t")).unwrap_or_else(|| panic!("{out}")).to_owned();
    let progress = out.lines().find(|l| l.starts_with("Rotation:")).unwrap_or_else(|| panic!("{out}"));
    assert!(progress.contains("waiting for") && progress.contains("node3"), "{out}");
    c.manager = c.manager_host().spawn("shoal", &["manager", "run", "--heartbeat-period", "1s"]);
    let resumed = wait_for("the restarted manager to answer", Duration::from_secs(10), || {
        let o = c.manager_host().run("shoal", &["manager", "ca"]);
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    });
    assert!(resumed.contains(&format!("Rotating to:\t\t{next}")), "the rotation resumed: {resumed}");
    assert!(std::process::Command::new("kill").args(["-CONT", &frozen]).status().unwrap().success());
    let out = c.manager_host().shoal(&["manager", "ca", "--rotate"]);
    assert!(out.contains("rotated 3/3 nodes") && out.contains("CA rotation complete"), "{out}");
    let done = c.manager_host().shoal(&["manager", "ca"]);
    assert!(done.contains(&format!("CA digest:\t\t{next}")) && !done.contains("Rotating"), "{done}");
    c.wait_status_all("Ready", Duration::from_secs(15));

    // 4. Revocation holds across renewals and the rotation: node1, on its latest renewed
    //    certificate of the new CA, is refused once removed.
    c.manager_host().shoal(&["node", "rm", "--force", "node1"]);
    let code = c.agents[0].wait_exit(Duration::from_secs(10));
    let log = c.agents[0].output();
    assert!(code.is_some() && log.contains("was removed from the cluster"), "{code:?}: {log}");
    println!("the whole test took {:?}", started.elapsed());
}
