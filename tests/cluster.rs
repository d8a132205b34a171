//! Lab task 1 end to end: a manager and three agents, each in its own network namespace,
//! as real processes talking QUIC.

use std::time::Duration;

use shoal_e2e::{parse_node_ls, wait_for, Cluster};

#[test]
#[ignore = "needs root"]
fn three_boards_join_and_node_ls_shows_them_ready() {
    let c = Cluster::start(3).unwrap();
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    let me = &nodes[0];
    assert!(me.is_self && me.manager_status == "Leader" && me.hostname == "manager");
    for (i, n) in nodes[1..].iter().enumerate() {
        assert_eq!(n.hostname, format!("node{}", i + 1));
        assert_eq!((n.status.as_str(), n.availability.as_str()), ("Ready", "Active"));
        assert_eq!(n.arch, std::env::consts::ARCH);
        assert!(n.manager_status.is_empty() && !n.is_self);
    }
    // Asking a board for cluster state fails plainly, like Swarm's "not a swarm manager".
    let out = c.lab.hosts[1].run("shoal", &["node", "ls"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("this node is not a cluster manager"));
}

#[test]
#[ignore = "needs root"]
fn a_killed_agent_is_down_within_3s_and_ready_again_after_restart() {
    let mut c = Cluster::start(3).unwrap();
    c.agents[1].kill9();
    let took = c.wait_status("node2", "Down", Duration::from_secs(10));
    eprintln!("kill -9 → Down in {took:?}");
    assert!(took < Duration::from_secs(3), "Down took {took:?}");
    // The others stay Ready.
    assert!(c.nodes().iter().filter(|n| n.status == "Ready").count() == 3);
    c.agents[1] = c.lab.hosts[2].spawn("shoal-agent", &["run"]);
    let took = c.wait_status("node2", "Ready", Duration::from_secs(10));
    eprintln!("restart → Ready in {took:?}");
    assert_eq!(c.nodes().len(), 4, "a restarted agent keeps its identity: no new node");
}

#[test]
#[ignore = "needs root"]
fn a_cut_link_is_down_within_3s_and_ready_when_it_returns() {
    let c = Cluster::start(3).unwrap();
    c.lab.hosts[3].cut_link();
    let took = c.wait_status("node3", "Down", Duration::from_secs(10));
    eprintln!("link cut → Down in {took:?}");
    assert!(took < Duration::from_secs(3), "Down took {took:?}");
    c.lab.hosts[3].restore_link();
    let took = c.wait_status("node3", "Ready", Duration::from_secs(20));
    eprintln!("link back → Ready in {took:?}");
}

#[test]
#[ignore = "needs root"]
fn wrong_and_rotated_tokens_are_refused_and_nothing_is_written() {
    let c = Cluster::start(1).unwrap();
    let lab_host = &c.lab.hosts[1];
    let manager = format!("{}:4242", c.manager_host().ip);
    let node_dir = c.lab.dir.join("fresh");
    let join = |token: &str| {
        lab_host.run("shoal-agent", &["--data-dir", node_dir.to_str().unwrap(), "join", "--token", token, &manager])
    };
    let refused = |token: &str, expect: &str| {
        let out = join(token);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "join with {token} succeeded");
        assert!(err.contains(expect), "expected {expect:?} in {err:?}");
        assert!(!node_dir.exists(), "a refused join wrote {}", node_dir.display());
    };
    // Wrong secret.
    let (prefix, _) = c.token.rsplit_once('-').unwrap();
    refused(&format!("{prefix}-{}", "0".repeat(25)), "invalid join token");
    // Another cluster's CA digest: the agent refuses the manager before sending anything.
    let secret = c.token.rsplit_once('-').unwrap().1;
    refused(&format!("SHOAL-1-{}-{secret}", "ab".repeat(32)), "not the cluster this token belongs to");
    // Garbage.
    refused("hello", "malformed join token");
    // Rotated away.
    let rotated = c.manager_host().shoal(&["manager", "join-token", "--rotate", "-q", "worker"]).trim().to_owned();
    assert_ne!(rotated, c.token);
    refused(&c.token, "invalid join token");
    // The new one works (join then keeps running as the agent).
    let _agent = lab_host.spawn(
        "shoal-agent",
        &["--data-dir", node_dir.to_str().unwrap(), "join", "--token", &rotated, "--hostname", "late", &manager],
    );
    c.wait_status("late", "Ready", Duration::from_secs(10));
}

#[test]
#[ignore = "needs root"]
fn a_removed_node_is_refused_afterwards() {
    let mut c = Cluster::start(2).unwrap();
    let m = c.manager_host();
    let manager = format!("{}:4242", m.ip);
    // A live node can't be removed without --force.
    let out = m.run("shoal", &["node", "rm", "node1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not down"));
    m.shoal(&["node", "rm", "--force", "node1"]);
    // The agent learns on reconnect that its certificate is no longer honoured, and stops.
    let code = c.agents[0].wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(1), "agent output: {}", c.agents[0].output());
    assert!(c.agents[0].output().contains("removed from the cluster"));
    // Its old credentials stay refused, and the agent says exactly what to do.
    let out = c.lab.hosts[1].run("shoal-agent", &["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed from the cluster: join it again with `shoal-agent join"), "{err}");
    assert!(!err.contains("shoal-agent run"), "{err}");
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|n| n.hostname != "node1"));
    // A board still in the cluster is not re-joined by accident.
    let out = c.lab.hosts[2].run("shoal-agent", &["join", "--token", &c.token, &manager]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("join --force"), "{err}");
    // Doing what the removed board was told works, without --force.
    let args = ["join", "--token", &c.token, "--hostname", "node1", &manager];
    c.agents[0] = c.lab.hosts[1].spawn("shoal-agent", &args);
    c.wait_status("node1", "Ready", Duration::from_secs(15));
    assert_eq!(c.nodes().len(), 3);
}

#[test]
#[ignore = "needs root"]
fn a_manager_restart_loses_nothing() {
    let mut c = Cluster::start(3).unwrap();
    let m = c.manager_host();
    m.shoal(&["node", "update", "--availability", "drain", "--label-add", "zone=attic", "node2"]);
    let before = c.nodes();
    // A hard crash, not a polite stop.
    c.manager.kill9();
    let restarted = std::time::Instant::now();
    c.manager = c.manager_host().spawn("shoal", &["manager", "run"]);
    c.wait_status_all("Ready", Duration::from_secs(20));
    // The restarted manager answers the old sessions' heartbeat datagrams "unknown
    // session", so the agents reconnect at their next heartbeat (every 1.5 s), not after
    // the idle timeout.
    let took = restarted.elapsed();
    eprintln!("manager kill -9 + restart → all nodes Ready in {took:?}");
    assert!(took < Duration::from_secs(5), "agents took {took:?} to come back");
    let after = c.nodes();
    assert_eq!(before, after, "same nodes, IDs and availability after the restart");
    let inspect = c.manager_host().shoal(&["node", "inspect", "--format", "json", "node2"]);
    let json: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(json[0]["Spec"]["Labels"]["zone"], "attic");
    assert_eq!(json[0]["Spec"]["Availability"], "drain");
    // A polite stop and start too.
    c.manager.stop();
    c.manager = c.manager_host().spawn("shoal", &["manager", "run"]);
    c.wait_status_all("Ready", Duration::from_secs(20));
}

#[test]
#[ignore = "needs root"]
fn re_init_and_a_second_manager_on_the_same_state_are_refused() {
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    let out = m.run("shoal", &["manager", "run"]);
    assert!(!out.status.success(), "a second manager on the same data directory must not start");
    let out = m.run("shoal", &["manager", "init", "--advertise-addr", &m.ip]);
    assert!(!out.status.success(), "re-init must refuse");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already initialized"));
    wait_for("the cluster to stay healthy", Duration::from_secs(5), || {
        (parse_node_ls(&m.shoal(&["node", "ls"])).len() == 2).then_some(())
    });
}
