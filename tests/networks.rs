//! Overlay networks on the manager's side, end to end: `shoal network create/ls/inspect/rm`
//! and `service create --network` against a real manager with two boards. What the
//! manager decides (subnets, addresses, VIPs, where a network exists) and every refusal
//! with nothing changed. The boards' data plane is not tested here.

use std::time::Duration;

use shoal_e2e::{lab_image, wait_for, Cluster};

fn refused(c: &Cluster, args: &[&str], wanted: &str) {
    let out = c.manager_host().run("shoal", args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "shoal {args:?} should fail");
    assert!(err.contains(wanted), "shoal {args:?}: {err}");
}

#[test]
#[ignore = "needs root"]
fn networks_are_created_listed_inspected_with_their_tasks_and_refused_when_bad() {
    let mut c = Cluster::start(2).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);

    // ingress exists from the start; host and bridge are listed as Docker lists them.
    let ls = m.shoal(&["network", "ls"]);
    assert!(ls.starts_with("NETWORK ID"), "{ls}");
    for (name, driver, scope) in
        [("ingress", "overlay", "swarm"), ("bridge", "bridge", "local"), ("host", "host", "local")]
    {
        assert!(
            ls.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() == 4 && w[1] == name && w[2] == driver && w[3] == scope
            }),
            "{name} row: {ls}"
        );
    }

    let id = m.shoal(&["network", "create", "-d", "overlay", "myoverlay"]);
    assert_eq!(id.trim().len(), 25, "{id}");
    let before = m.shoal(&["network", "ls"]);

    // Bad input: each a clear error, nothing changed.
    refused(&c, &["network", "create", "myoverlay"], "already exists");
    refused(&c, &["network", "create", "--subnet", "10.0.0.0/16", "wide"], "overlaps network ingress");
    refused(&c, &["network", "create", "--subnet", "10.0.300.0/24", "bad"], "invalid subnet");
    refused(&c, &["network", "create", "--subnet", "10.5.0.0/24", "--gateway", "10.6.0.1", "gw"], "not a host address");
    refused(&c, &["network", "rm", "ingress"], "can't be removed");
    refused(&c, &["network", "inspect", "nosuch"], "not found");
    let svc = format!("{}n", c.lab.tag());
    refused(
        &c,
        &["service", "create", "--name", &svc, "--network", "nosuch", "demo/app:1.0"],
        "network nosuch not found",
    );
    assert_eq!(m.shoal(&["network", "ls"]), before, "no refused request changed anything");
    assert!(!m.shoal(&["service", "ls"]).contains(&svc));

    // A service on the network: its task gets an address, its node is where the network
    // exists, the service gets a VIP.
    m.shoal(&["service", "create", "--name", &svc, "--network", "myoverlay", "demo/app:1.0"]);
    wait_for("the task running", Duration::from_secs(30), || c.replicas(&svc).starts_with("1/1").then_some(()));
    let node = c.service_ps(&svc)[0]["NODE"].clone();
    let inspect: serde_json::Value = serde_json::from_str(&m.shoal(&["network", "inspect", "myoverlay"])).unwrap();
    let net = &inspect[0];
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24", "{net}");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "10.0.1.1");
    assert_eq!(net["Options"]["com.docker.network.driver.overlay.vxlanid_list"], "4098");
    let containers = net["Containers"].as_object().unwrap();
    assert_eq!(containers.len(), 1, "{net}");
    let task = containers.values().next().unwrap();
    assert!(task["IPv4Address"].as_str().unwrap().starts_with("10.0.1."), "{task}");
    assert!(task["Name"].as_str().unwrap().starts_with(&format!("{svc}.1.")), "{task}");
    assert_eq!(net["Peers"], serde_json::json!([{ "Name": node }]), "it exists on the task's node only");
    let vip = net["Services"][&svc]["VIP"].as_str().unwrap().to_owned();
    assert!(vip.starts_with("10.0.1."), "{net}");
    let service: serde_json::Value = serde_json::from_str(&m.shoal(&["service", "inspect", &svc])).unwrap();
    assert_eq!(service[0]["Endpoint"]["VirtualIPs"][0]["Addr"], format!("{vip}/24"));
    assert_eq!(service[0]["Spec"]["TaskTemplate"]["Networks"][0]["Target"], "myoverlay");

    // A restarted manager rebuilds the same addresses from its store.
    c.manager.kill9();
    c.restart_manager();
    let m = c.manager_host();
    wait_for("the manager back", Duration::from_secs(10), || {
        m.run("shoal", &["node", "ls"]).status.success().then_some(())
    });
    let again: serde_json::Value = serde_json::from_str(&m.shoal(&["network", "inspect", "myoverlay"])).unwrap();
    assert_eq!(again[0]["Containers"], net["Containers"], "the same addresses after a restart");
    assert_eq!(again[0]["Services"], net["Services"]);

    // A second network added by update: the replacement task gets an address on both.
    m.shoal(&["network", "create", "--subnet", "192.168.77.0/24", "--opt", "encrypted", "other"]);
    m.shoal(&["service", "update", "--network-add", "other", &svc]);
    wait_for("the task on both networks", Duration::from_secs(30), || {
        let v: serde_json::Value = serde_json::from_str(&m.shoal(&["network", "inspect", "other"])).unwrap();
        let found = v[0]["Containers"].as_object().unwrap().values().any(|t| {
            t["IPv4Address"].as_str().unwrap().starts_with("192.168.77.")
                && t["Name"].as_str().unwrap().starts_with(&svc)
        });
        found.then_some(())
    });
    refused(&c, &["network", "rm", "other"], &format!("in use by service {svc}"));

    // In use: refused, saying by which service.
    refused(&c, &["network", "rm", "myoverlay"], &format!("in use by service {svc}"));
    // Off the network, then it can go.
    m.shoal(&["service", "update", "--network-rm", "myoverlay", "--network-rm", "other", &svc]);
    wait_for("the network removable", Duration::from_secs(30), || {
        m.run("shoal", &["network", "rm", "myoverlay"]).status.success().then_some(())
    });
    m.shoal(&["network", "rm", "other"]);
    assert!(!m.shoal(&["network", "ls"]).contains("myoverlay"));
    m.shoal(&["service", "rm", &svc]);
}
