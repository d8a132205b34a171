//! The lab's task 2 replayed on real boards (network namespaces) with real containers:
//! an overlay network, a task on node1, the network absent from node2 until a task of it
//! lands there, and a container on another board reaching the first by its service name
//! over VXLAN, through `shoal exec`.

use std::process::Command;
use std::time::Duration;

use shoal_e2e::{lab_image, wait_for, Cluster};

/// The overlay's VXLAN devices in board `ns` (`sov<VNI>`).
fn vxlan_devices(ns: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-n", ns, "-o", "link", "show"]).output().expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with("sov"))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn lab_task2_containers_on_an_overlay_reach_each_other_by_name_across_boards() {
    let c = Cluster::start(3).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let net = format!("{}ov", c.lab.tag());
    m.shoal(&["network", "create", "-d", "overlay", &net]);
    let (host, client) = (format!("{}-host", c.lab.tag()), format!("{}-client", c.lab.tag()));

    // A task on node1: the network exists there, and only there.
    m.shoal(&[
        "service",
        "create",
        "--name",
        &host,
        "--network",
        &net,
        "--endpoint-mode",
        "dnsrr",
        "--constraint",
        "node.hostname==node1",
        "--detach=true",
        "demo/app:1.0",
    ]);
    wait_for("the host task running", Duration::from_secs(30), || c.replicas(&host).starts_with("1/1").then_some(()));
    wait_for("the overlay on node1", Duration::from_secs(10), || {
        (!vxlan_devices(&c.lab.hosts[1].ns).is_empty()).then_some(())
    });
    assert!(vxlan_devices(&c.lab.hosts[2].ns).is_empty(), "the network exists on node2 without a task of it");

    // A task on node2: now the network exists there too.
    m.shoal(&[
        "service",
        "create",
        "--name",
        &client,
        "--network",
        &net,
        "--constraint",
        "node.hostname==node2",
        "--detach=true",
        "demo/app:1.0",
    ]);
    wait_for("the client task running", Duration::from_secs(30), || {
        c.replicas(&client).starts_with("1/1").then_some(())
    });
    wait_for("the overlay on node2", Duration::from_secs(10), || {
        (!vxlan_devices(&c.lab.hosts[2].ns).is_empty()).then_some(())
    });

    // From node2's container, node1's by name, over the overlay.
    let url = format!("http://{host}:8000/version");
    let got = wait_for("the client reaching the host by name", Duration::from_secs(15), || {
        // busybox wget: `-O-` to stdout (its progress goes to stderr).
        let out = m.run("shoal", &["exec", &client, "wget", "-O-", &url]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    assert_eq!(got, "1.0");
    let out = m.shoal(&["exec", &client, "nslookup", &format!("tasks.{host}")]);
    assert!(out.contains("10.0."), "tasks.{host} does not resolve to an overlay address: {out}");

    // The host task leaves: its network leaves node1 with it.
    m.shoal(&["service", "rm", &host]);
    wait_for("the overlay gone from node1", Duration::from_secs(20), || {
        vxlan_devices(&c.lab.hosts[1].ns).is_empty().then_some(())
    });
    m.shoal(&["service", "rm", &client]);
    wait_for("the overlay gone from node2", Duration::from_secs(20), || {
        vxlan_devices(&c.lab.hosts[2].ns).is_empty().then_some(())
    });
    m.shoal(&["network", "rm", &net]);
}
