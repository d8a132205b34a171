//! The lab's task 2 replayed on real boards (network namespaces) with real containers:
//! an overlay network, a task on node1, the network absent from node2 until a task of it
//! lands there, and a container on another board reaching the first by its service name
//! over VXLAN, through `shoal exec`; and a `vip`-mode service reached by name, its
//! connections spread over its replicas by each client container's own load balancer.

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
    remove_network(m, &net);
}

/// `n` A queries for `name` from the network namespace of container `cid` to
/// `nameserver`, one at a time: the median and 99th percentile round trip. Each must be
/// answered with an address.
fn dns_latency(cid: &str, nameserver: std::net::Ipv4Addr, name: &str, n: usize) -> (Duration, Duration) {
    let path = std::path::PathBuf::from("/run/shoal/netns").join(cid);
    let name = name.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the container's network namespace");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("entering the container's network namespace");
        let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        socket.connect((nameserver, 53)).unwrap();
        let mut times: Vec<Duration> = (0..n)
            .map(|i| {
                let id = (i as u16).to_be_bytes();
                // Header: ID, recursion desired, one question; then the name, type A, class IN.
                let mut q = vec![id[0], id[1], 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
                for label in name.split('.') {
                    q.push(label.len() as u8);
                    q.extend_from_slice(label.as_bytes());
                }
                q.extend_from_slice(&[0, 0, 1, 0, 1]);
                let started = std::time::Instant::now();
                socket.send(&q).unwrap();
                let mut answer = [0u8; 512];
                let len = socket.recv(&mut answer).expect("an answer from the resolver");
                let took = started.elapsed();
                let answers = u16::from_be_bytes([answer[6], answer[7]]);
                assert!(len > 12 && answer[..2] == id && answers > 0, "no address for {name}: {:?}", &answer[..len]);
                took
            })
            .collect();
        times.sort();
        (times[n / 2], times[n * 99 / 100])
    })
    .join()
    .unwrap()
}

/// Removes `net` once its last task's stop has been reported: until then the manager
/// refuses, saying tasks are still stopping on it (as `docker network rm` refuses while
/// endpoints remain).
fn remove_network(m: &shoal_e2e::Host, net: &str) {
    wait_for(&format!("network {net} removed"), Duration::from_secs(20), || {
        m.run("shoal", &["network", "rm", net]).status.success().then_some(())
    });
}

/// The answers of `n` requests to `url` from one `shoal exec` into `client`: one line
/// each, `failed: <wget's error>` for a request that got none.
fn ask_many(m: &shoal_e2e::Host, client: &str, url: &str, n: usize) -> Vec<String> {
    // No `-T`: this busybox's wget crashes with it.
    let script = format!(
        "for i in $(seq {n}); do wget -qO- {url} 2>/tmp/wget.err || echo \"failed: $(cat /tmp/wget.err)\"; done"
    );
    let out = m.run("shoal", &["exec", client, "sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

#[test]
#[ignore = "needs root"]
fn a_vip_service_is_reached_by_name_and_spreads_over_its_replicas() {
    let c = Cluster::start(3).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let net = format!("{}vn", c.lab.tag());
    m.shoal(&["network", "create", "-d", "overlay", &net]);
    let (web, client) = (format!("{}-web", c.lab.tag()), format!("{}-cli", c.lab.tag()));

    // Each replica serves its own random ID at /who, so the answers tell them apart.
    let serve = "mkdir -p /tmp/w && cat /proc/sys/kernel/random/uuid > /tmp/w/who && exec httpd -f -p 8000 -h /tmp/w";
    m.shoal(&[
        "service",
        "create",
        "--name",
        &web,
        "--network",
        &net,
        "--replicas",
        "3",
        "--detach=true",
        "demo/app:1.0",
        "sh",
        "-c",
        serve,
    ]);
    m.shoal(&["service", "create", "--name", &client, "--network", &net, "--detach=true", "demo/app:1.0"]);
    wait_for("3 web replicas", Duration::from_secs(60), || c.replicas(&web).starts_with("3/3").then_some(()));
    wait_for("the client running", Duration::from_secs(30), || c.replicas(&client).starts_with("1/1").then_some(()));

    // The name is the VIP (default endpoint mode), and it answers.
    let url = format!("http://{web}:8000/who");
    let out = m.shoal(&["exec", &client, "nslookup", &web]);
    assert!(out.contains("10.0."), "{web} does not resolve to an overlay address: {out}");
    let answers = wait_for("every replica answering through the VIP", Duration::from_secs(20), || {
        let a = ask_many(m, &client, &url, 30);
        let ids: std::collections::BTreeSet<&String> = a.iter().collect();
        (ids.len() == 3 && !a.iter().any(|l| l.starts_with("failed"))).then_some(a)
    });
    assert_eq!(answers.len(), 30);

    // The resolver as a container meets it: queries from the client container's own
    // network namespace to the nameserver its /etc/resolv.conf names (the goal:
    // p99 ≤ 1 ms on the board).
    let resolv = m.shoal(&["exec", &client, "cat", "/etc/resolv.conf"]);
    let nameserver: std::net::Ipv4Addr =
        resolv.lines().find_map(|l| l.strip_prefix("nameserver ")).expect("a nameserver").trim().parse().unwrap();
    let cid = shoal_e2e::running_container_ids().into_iter().find(|id| id.starts_with(&format!("{client}."))).unwrap();
    let (p50, p99) = dns_latency(&cid, nameserver, &web, 2000);
    eprintln!("DNS in a container ({web} from {client}, 2000 queries): p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_millis(50), "the resolver answered in {p99:?} at p99");

    // A replica dies (killed on its board): its address leaves `tasks.<web>` (and, in the
    // same apply of the board's networks, the VIP's backends) before it is replaced.
    let tasks = |m: &shoal_e2e::Host| {
        let out = m.shoal(&["exec", &client, "nslookup", &format!("tasks.{web}")]);
        out.lines().filter(|l| l.starts_with("Address") && l.contains("10.0.")).count()
    };
    assert_eq!(tasks(m), 3);
    let victim = shoal_e2e::running_container_ids().into_iter().find(|id| id.starts_with(&format!("{web}."))).unwrap();
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/shoal/{victim}/cgroup.procs"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/pids/shoal/{victim}/cgroup.procs")))
        .expect("the replica's processes");
    let killed = std::time::Instant::now();
    for pid in procs.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    wait_for("the dead replica leaving tasks.<web>", Duration::from_secs(10), || (tasks(m) == 2).then_some(()));
    let took = killed.elapsed();
    eprintln!("a replica's death to its address leaving DNS: {took:?} (an exec per check included)");
    assert!(took < Duration::from_secs(2), "a dead replica stayed in DNS for {took:?}");
    wait_for("the replica replaced", Duration::from_secs(60), || c.replicas(&web).starts_with("3/3").then_some(()));

    // Scale down to one: the name keeps working, and soon only one replica answers. A
    // removed replica is signalled only after a drain delay (BACKEND_DRAIN_MS), by when
    // the client's board has its new table; were a board slower than that, requests
    // could fail for that moment, never after it (the bound: within 1 s, plus
    // one exec).
    m.shoal(&["service", "scale", &format!("{web}=1")]);
    let started = std::time::Instant::now();
    let mut last_failure = None;
    wait_for("only the remaining replica answering", Duration::from_secs(20), || {
        let a = ask_many(m, &client, &url, 10);
        let failed = a.iter().any(|l| l.starts_with("failed"));
        if failed {
            last_failure = Some(started.elapsed());
        }
        let ids: std::collections::BTreeSet<&String> = a.iter().collect();
        let done = !failed && ids.len() == 1 && a.len() == 10;
        if !done {
            eprintln!("after {:?}: {} answers from {} replicas: {a:?}", started.elapsed(), a.len(), ids.len());
        }
        done.then_some(())
    });
    let took = started.elapsed();
    eprintln!(
        "scale 3 -> 1: the VIP answered from one replica only after {took:?}, last failed request seen at {last_failure:?} (one exec of 10 requests included)"
    );
    assert!(took < Duration::from_secs(2), "the VIP kept removed replicas for {took:?}");
    if let Some(t) = last_failure {
        assert!(t < Duration::from_secs(2), "requests to the VIP still failed {t:?} after the scale-down");
    }

    m.shoal(&["service", "rm", &client]);
    m.shoal(&["service", "rm", &web]);
    wait_for("the services gone", Duration::from_secs(30), || {
        (shoal_e2e::running_containers(&web) == 0 && shoal_e2e::running_containers(&client) == 0).then_some(())
    });
    remove_network(m, &net);
    // A replica killed, a scale-down and two removals: none of it is an error on a board
    // (libcontainer logged one per removal while the agent loaded a state already gone).
    for agent in &c.agents {
        let log = std::fs::read_to_string(&agent.log).unwrap();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", agent.log.display());
    }
}

/// A namespace standing for "the internet", cabled to one board namespace: the board
/// gets `192.0.2.1/24` on its end, the internet `192.0.2.2/24` and a listener on port
/// 8080 that answers an HTTP request with the address the connection came from. Removed
/// on drop.
struct Internet {
    ns: String,
    listener: std::process::Child,
}

impl Internet {
    const ADDR: &'static str = "192.0.2.2";
    const BOARD_SIDE: &'static str = "192.0.2.1";

    fn new(tag: &str, board_ns: &str) -> Self {
        let ns = format!("{tag}inet");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", &ns]);
        let (board_end, inet_end) = (format!("{tag}iu"), format!("{tag}ii"));
        ip(&["link", "add", &board_end, "netns", board_ns, "type", "veth", "peer", "name", &inet_end, "netns", &ns]);
        ip(&["-n", board_ns, "addr", "add", &format!("{}/24", Self::BOARD_SIDE), "dev", &board_end]);
        ip(&["-n", board_ns, "link", "set", &board_end, "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", Self::ADDR), "dev", &inet_end]);
        ip(&["-n", &ns, "link", "set", &inet_end, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let server = format!(
            "import socket\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{}', 8080))\n\
             s.listen(8)\n\
             while True:\n\
             \x20   c, a = s.accept()\n\
             \x20   c.recv(4096)\n\
             \x20   c.sendall(('HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n' + a[0] + '\\n').encode())\n\
             \x20   c.close()\n",
            Self::ADDR
        );
        let listener = Command::new("ip")
            .args(["netns", "exec", &ns, "/usr/bin/python3", "-c", &server])
            .spawn()
            .expect("starting the internet's listener");
        Self { ns, listener }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        // Deleting the namespace deletes its veth end, and with it the board's.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
#[ignore = "needs root"]
fn a_container_on_an_overlay_reaches_the_internet_from_its_boards_address() {
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    let internet = Internet::new(c.lab.tag(), &c.lab.hosts[1].ns);
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let net = format!("{}on", c.lab.tag());
    m.shoal(&["network", "create", "-d", "overlay", &net]);
    let client = format!("{}-out", c.lab.tag());
    m.shoal(&["service", "create", "--name", &client, "--network", &net, "--detach=true", "demo/app:1.0"]);
    wait_for("the client running", Duration::from_secs(30), || c.replicas(&client).starts_with("1/1").then_some(()));
    let out = m.shoal(&["exec", &client, "ip", "-4", "-o", "addr"]);
    assert!(out.contains("eth1") && out.contains("10.0."), "the container is not on the overlay: {out}");

    // The internet has no route back to the container's addresses: only the board's
    // masquerade lets the answer come back, and the connection arrives from the board.
    let url = format!("http://{}:8080/", Internet::ADDR);
    let seen = wait_for("the container reaching the internet", Duration::from_secs(10), || {
        let out = m.run("shoal", &["exec", &client, "wget", "-qO-", &url]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    assert_eq!(seen, Internet::BOARD_SIDE, "the connection did not come from the board's address");

    m.shoal(&["service", "rm", &client]);
    wait_for("the client gone", Duration::from_secs(30), || {
        (shoal_e2e::running_containers(&client) == 0).then_some(())
    });
    remove_network(m, &net);
    drop(internet);
}
