//! The board's network plane against the real kernel: boards are network namespaces
//! joined by a veth "cable", each with its container bridge, real container sandboxes
//! (`net::Network`), the containers' resolver on the bridge gateway and a
//! `net::plane::NetworkPlane` applying desired states. Needs root.
//!
//! The test plumbing (board namespaces, cables) uses the `ip` binary; the code under
//! test never does.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::net::dns::{self, Resolver};
use shoal_agent::net::overlay::Overlay;
use shoal_agent::net::plane::{
    self, Attachment, BoardNetworks, BoardSide, NetworkAttachment, NetworkDef, NetworkPlane, ServiceNames, TaskName,
};
use shoal_agent::net::{BridgeConfig, Network, Sandbox, Subnet};

/// Port of the listeners in containers and on the "internet".
const PORT: u16 = 7000;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A listener on `addr:PORT` inside `ns` answering each connection with `name` and the
/// address it came from, for as long as the test process lives.
fn listen(ns: &Path, addr: Ipv4Addr, name: &'static str) {
    let ns = ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        let l = TcpListener::bind((addr, PORT)).expect("binding the listener");
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let peer = s.peer_addr().map(|p| p.ip().to_string()).unwrap_or_default();
            let _ = s.write_all(format!("{name} {peer}").as_bytes());
        }
    });
    rx.recv().unwrap();
}

/// What a TCP connection from namespace `ns` to `to:PORT` is answered, if anything
/// within 2 s.
fn ask_tcp(ns: &Path, to: Ipv4Addr) -> Option<String> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((to, PORT)), Duration::from_secs(2)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        (!buf.is_empty()).then_some(buf)
    })
    .join()
    .unwrap()
}

/// A DNS query for `name` (type A), built by hand.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// The answer's rcode and its A records, sorted (the resolver rotates them).
fn resolve(ns: &Path, server: Ipv4Addr, name: &str) -> (u8, Vec<Ipv4Addr>) {
    let (ns, name) = (ns.to_owned(), name.to_owned());
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let q = query(0x4242, &name);
        sock.send_to(&q, (server, 53)).unwrap();
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).expect("an answer from the board's resolver");
        let a = &buf[..n];
        assert_eq!(&a[..2], &[0x42, 0x42]);
        let count = u16::from_be_bytes([a[6], a[7]]) as usize;
        let mut at = q.len();
        let mut ips: Vec<Ipv4Addr> = (0..count)
            .map(|_| {
                let ip = Ipv4Addr::new(a[at + 12], a[at + 13], a[at + 14], a[at + 15]);
                at += 16;
                ip
            })
            .collect();
        ips.sort();
        (a[3] & 0x0f, ips)
    })
    .join()
    .unwrap()
}

/// Board namespaces and scratch directories; everything deleted on drop.
struct Lab {
    names: Vec<String>,
    dir: PathBuf,
    sandboxes: Vec<(PathBuf, Arc<Network>, String)>,
}

impl Lab {
    fn ns(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.names[i])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (board, net, cid) in self.sandboxes.drain(..) {
            let cid2 = cid.clone();
            let _ = std::thread::spawn(move || {
                common::enter_netns(&board);
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(net.remove_sandbox(&cid2))
            })
            .join();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        // The namespace directories are bind mounts of themselves (see `net::netns`).
        for b in 0..2 {
            let _ = rustix::mount::unmount(self.dir.join(format!("netns{b}")), rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Namespaces `names` (prefixed with a per-test tag), the first two joined by a cable
/// 10.<net>.<k>.1/24 ↔ .2/24.
fn lab(k: u8, net: u8, names: &[&str]) -> Lab {
    assert!(rustix::process::geteuid().is_root(), "plane tests need root: run them as root, as scripts/test.sh does");
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("shoal-plane-{pid}-{k}"));
    let lab = Lab { names: names.iter().map(|n| format!("spl{pid}{k}{n}")).collect(), dir, sandboxes: Vec::new() };
    for n in &lab.names {
        ip(&["netns", "add", n]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    let (u1, u2) = (format!("spu{pid}{k}a"), format!("spu{pid}{k}b"));
    ip(&["link", "add", &u1, "netns", &lab.names[0], "type", "veth", "peer", "name", &u2, "netns", &lab.names[1]]);
    for (i, dev) in [(0, &u1), (1, &u2)] {
        let addr = format!("10.{net}.{k}.{}/24", i + 1);
        ip(&["-n", &lab.names[i], "addr", "add", &addr, "dev", dev]);
        ip(&["-n", &lab.names[i], "link", "set", dev, "up"]);
    }
    lab
}

/// The container network of board `b`: its bridge `shoal0` with 10.88.0.1.
fn bridge(lab: &Lab, b: usize) -> Arc<Network> {
    let config = BridgeConfig { netns_dir: lab.dir.join(format!("netns{b}")), ..BridgeConfig::default() };
    let net = Arc::new(Network::new(config, &lab.dir.join(format!("state{b}"))).unwrap());
    let n = net.clone();
    common::in_netns_async(&lab.ns(b), move || {
        Box::pin(async move { n.ensure_bridge().await.expect("ensure_bridge") })
    });
    net
}

/// A container sandbox `cid` on board `b`.
fn sandbox(lab: &mut Lab, b: usize, net: &Arc<Network>, cid: &str) -> Sandbox {
    let (n, id) = (net.clone(), cid.to_owned());
    let s = common::in_netns_async(&lab.ns(b), move || {
        Box::pin(async move { n.create_sandbox(&id).await.expect("create_sandbox") })
    });
    lab.sandboxes.push((lab.ns(b), net.clone(), cid.to_owned()));
    s
}

/// The resolver serving on `gateway:53` inside board namespace `ns`, for as long as
/// the test process lives.
fn resolver(ns: &Path, gateway: Ipv4Addr) -> Arc<Resolver> {
    let ns = ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            tx.send(dns::start(gateway, "").await.expect("binding the resolver")).unwrap();
            std::future::pending::<()>().await
        })
    });
    rx.recv().unwrap()
}

fn apply(ns: &Path, plane: &Arc<NetworkPlane>, desired: &BoardNetworks, addrs: &BTreeMap<String, Ipv4Addr>) {
    let (p, d, a) = (plane.clone(), desired.clone(), addrs.clone());
    common::in_netns_async(ns, move || Box::pin(async move { p.apply(&d, &a).await.expect("apply") }));
}

/// Joins a container to its overlays as the supervisor does when it prepares one.
fn join(ns: &Path, s: &Sandbox, attachments: Vec<(&NetworkDef, Ipv4Addr)>) {
    let attachments: Vec<NetworkAttachment> = attachments
        .into_iter()
        .map(|(n, address)| NetworkAttachment {
            network: n.id.clone(),
            overlay: Overlay::new(n.vni, n.subnet, 1500).unwrap(),
            address,
        })
        .collect();
    let s = s.clone();
    common::in_netns_async(ns, move || {
        Box::pin(async move {
            plane::join_container(&s, &attachments).await.map_err(|(n, e)| format!("{n}: {e}")).expect("join")
        })
    });
}

/// `ifname`'s IPv4 addresses inside the container namespace pinned at `netns`.
fn addresses_of(netns: &Path, ifname: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "-4", "addr", "show", "dev", ifname])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(ns: &Path, name: &str) -> bool {
    let ns = ns.file_name().unwrap().to_string_lossy().into_owned();
    Command::new("ip").args(["-n", &ns, "link", "show", name]).output().unwrap().status.success()
}

fn board_side(underlay: Ipv4Addr) -> BoardSide {
    BoardSide {
        underlay,
        underlay_mtu: 1500,
        bridge_subnet: BridgeConfig::default().subnet,
        bridge: BridgeConfig::default().name,
    }
}

#[test]
#[ignore = "needs root"]
fn two_boards_share_an_overlay_with_names_and_it_leaves_with_its_last_container() {
    let k = 31;
    let mut lab = lab(k, 253, &["b1", "b2"]);
    let (u1, u2) = (Ipv4Addr::new(10, 253, k, 1), Ipv4Addr::new(10, 253, k, 2));
    let atsea = NetworkDef {
        id: "atsea".into(),
        vni: 4200 + u32::from(k),
        subnet: Subnet::new(Ipv4Addr::new(10, 1, k, 0), 24).unwrap(),
        gateway: Ipv4Addr::new(10, 1, k, 1),
        encrypted: false,
    };
    let other = NetworkDef {
        id: "other".into(),
        vni: 4300 + u32::from(k),
        subnet: Subnet::new(Ipv4Addr::new(10, 2, k, 0), 24).unwrap(),
        gateway: Ipv4Addr::new(10, 2, k, 1),
        encrypted: false,
    };
    let (a1, a2, o1) = (Ipv4Addr::new(10, 1, k, 2), Ipv4Addr::new(10, 1, k, 3), Ipv4Addr::new(10, 2, k, 2));
    // A container on both networks: `other` first (eth1), then atsea (eth2).
    let (o2, a3) = (Ipv4Addr::new(10, 2, k, 3), Ipv4Addr::new(10, 1, k, 4));
    let vip = Ipv4Addr::new(10, 1, k, 100);

    let (n1, n2) = (bridge(&lab, 0), bridge(&lab, 1));
    let gw = n1.config().gateway();
    let (r1, r2) = (resolver(&lab.ns(0), gw), resolver(&lab.ns(1), gw));
    let c1 = sandbox(&mut lab, 0, &n1, "app.1.aaa");
    let c2 = sandbox(&mut lab, 1, &n2, "app.2.bbb");
    let c3 = sandbox(&mut lab, 1, &n2, "lone.1.ccc");
    let c4 = sandbox(&mut lab, 1, &n2, "both.1.ddd");

    // What the manager would send: both networks, the app's tasks on atsea, a lone
    // container on `other`, each board with its own attachments.
    let mut common = BoardNetworks::default();
    common.networks.insert("atsea".into(), atsea.clone());
    common.networks.insert("other".into(), other.clone());
    common.peers.insert(a1, u1);
    common.peers.insert(a2, u2);
    common.peers.insert(o1, u2);
    common.peers.insert(o2, u2);
    common.peers.insert(a3, u2);
    common.names.push(ServiceNames {
        network: "atsea".into(),
        service: "app".into(),
        vip: Some(vip),
        tasks: vec![
            TaskName { name: "app.1.aaa".into(), id: "aaa".into(), address: a1 },
            TaskName { name: "app.2.bbb".into(), id: "bbb".into(), address: a2 },
        ],
    });
    common.names.push(ServiceNames {
        network: "other".into(),
        service: "lone".into(),
        vip: None,
        tasks: vec![TaskName { name: "lone.1.ccc".into(), id: "ccc".into(), address: o1 }],
    });
    let mut d1 = common.clone();
    d1.attachments.insert(c1.container_id.clone(), vec![Attachment { network: "atsea".into(), address: a1 }]);
    let mut d2 = common.clone();
    d2.attachments.insert(c2.container_id.clone(), vec![Attachment { network: "atsea".into(), address: a2 }]);
    d2.attachments.insert(c3.container_id.clone(), vec![Attachment { network: "other".into(), address: o1 }]);
    d2.attachments.insert(
        c4.container_id.clone(),
        vec![Attachment { network: "other".into(), address: o2 }, Attachment { network: "atsea".into(), address: a3 }],
    );
    let addrs1: BTreeMap<String, Ipv4Addr> = [(c1.container_id.clone(), c1.ip)].into();
    // Board 1's plane first hears of its container before its sandbox exists (the
    // plane is applied before tasks are prepared), then is told its address.
    let early: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let addrs2: BTreeMap<String, Ipv4Addr> =
        [(c2.container_id.clone(), c2.ip), (c3.container_id.clone(), c3.ip), (c4.container_id.clone(), c4.ip)].into();

    let p1 = Arc::new(NetworkPlane::new(board_side(u1), Some(r1)));
    let p2 = Arc::new(NetworkPlane::new(board_side(u2), Some(r2)));
    let started = std::time::Instant::now();
    apply(&lab.ns(0), &p1, &d1, &early);
    apply(&lab.ns(1), &p2, &d2, &addrs2);
    eprintln!("first apply on both boards: {:?}", started.elapsed());
    assert_eq!(resolve(&c1.netns_path, gw, "app"), (5, vec![]), "a container not yet known was answered");
    let (p, a) = (p1.clone(), addrs1.clone());
    let plan =
        common::in_netns_async(&lab.ns(0), move || Box::pin(async move { p.reapply(&a).await.expect("reapply") }));
    assert!(plan.clients.is_some() && plan.ensure.is_empty() && plan.ruleset.is_none(), "{plan:?}");
    // Twice: idempotent.
    apply(&lab.ns(0), &p1, &d1, &addrs1);
    let ov = |n: &NetworkDef| Overlay::new(n.vni, n.subnet, 1500).unwrap();
    assert!(link_exists(&lab.ns(0), &ov(&atsea).vxlan()));
    assert!(!link_exists(&lab.ns(0), &ov(&other).vxlan()), "a network with no local container exists on board 1");
    assert!(link_exists(&lab.ns(1), &ov(&other).vxlan()));

    join(&lab.ns(0), &c1, vec![(&atsea, a1)]);
    join(&lab.ns(1), &c2, vec![(&atsea, a2)]);
    join(&lab.ns(1), &c3, vec![(&other, o1)]);
    join(&lab.ns(1), &c4, vec![(&other, o2), (&atsea, a3)]);
    assert!(addresses_of(&c4.netns_path, "eth1").contains(&format!("{o2}/24")));
    assert!(addresses_of(&c4.netns_path, "eth2").contains(&format!("{a3}/24")));
    listen(&c2.netns_path, a2, "c2");
    listen(&c1.netns_path, a1, "c1");
    listen(&c3.netns_path, o1, "c3");

    // Over the overlay, between boards, seeing each other's overlay address.
    assert_eq!(ask_tcp(&c1.netns_path, a2).as_deref(), Some(format!("c2 {a1}").as_str()));
    assert_eq!(ask_tcp(&c2.netns_path, a1).as_deref(), Some(format!("c1 {a2}").as_str()));
    assert_eq!(ask_tcp(&c3.netns_path, a1), None, "a container of another network reached atsea");
    // On both networks: reaches both, across boards and on its own board.
    assert_eq!(ask_tcp(&c4.netns_path, a1).as_deref(), Some(format!("c1 {a3}").as_str()));
    assert_eq!(ask_tcp(&c4.netns_path, o1).as_deref(), Some(format!("c3 {o2}").as_str()));

    // Names, asked from inside the containers to the gateway's port 53.
    assert_eq!(resolve(&c1.netns_path, gw, "app"), (0, vec![vip]));
    assert_eq!(resolve(&c1.netns_path, gw, "tasks.app"), (0, vec![a1, a2]));
    assert_eq!(resolve(&c2.netns_path, gw, "app.2.bbb"), (0, vec![a2]));
    assert_eq!(resolve(&c2.netns_path, gw, "aaa"), (0, vec![a1]));
    assert_eq!(resolve(&c1.netns_path, gw, "lone"), (3, vec![]), "a name of another network resolved");
    assert_eq!(resolve(&c3.netns_path, gw, "app"), (3, vec![]), "a name of another network resolved");
    assert_eq!(resolve(&c3.netns_path, gw, "tasks.lone"), (0, vec![o1]));
    assert_eq!(resolve(&c4.netns_path, gw, "app"), (0, vec![vip]));
    assert_eq!(resolve(&c4.netns_path, gw, "lone"), (0, vec![o1]));

    // A task stops: its name goes at the next apply.
    let mut d1b = d1.clone();
    d1b.names[0].tasks.pop();
    apply(&lab.ns(0), &p1, &d1b, &addrs1);
    assert_eq!(resolve(&c1.netns_path, gw, "tasks.app"), (0, vec![a1]));
    assert_eq!(resolve(&c1.netns_path, gw, "bbb"), (3, vec![]));
    // A dotted name the cluster no longer knows goes to the board's resolvers (none
    // here: SERVFAIL), never to a stale address.
    assert_eq!(resolve(&c1.netns_path, gw, "app.2.bbb"), (2, vec![]));

    // The last container of atsea leaves board 1: the overlay goes with it.
    let mut gone = d1b.clone();
    gone.attachments.clear();
    apply(&lab.ns(0), &p1, &gone, &BTreeMap::new());
    assert!(!link_exists(&lab.ns(0), &ov(&atsea).vxlan()), "the overlay outlived its last container");
    assert!(!link_exists(&lab.ns(0), &ov(&atsea).bridge()));
    // No longer a client at all: refused, so the bridge is no open resolver.
    assert_eq!(resolve(&c1.netns_path, gw, "app"), (5, vec![]), "a detached container still sees the network");
    assert!(link_exists(&lab.ns(1), &ov(&atsea).vxlan()), "board 2 lost its overlay");
}

#[test]
#[ignore = "needs root"]
fn containers_reach_the_internet_masqueraded() {
    let k = 32;
    // b: the board; i: the "internet", reached over b's uplink 10.254.<k>.1.
    let mut lab = lab(k, 254, &["b", "i"]);
    let uplink = Ipv4Addr::new(10, 254, k, 1);
    let outside = Ipv4Addr::new(10, 254, k, 2);
    let net = bridge(&lab, 0);
    let client = sandbox(&mut lab, 0, &net, "client.1.x");
    listen(&lab.ns(1), outside, "internet");

    // Without the plane, the internet can't answer the bridge's private addresses.
    assert_eq!(ask_tcp(&client.netns_path, outside), None, "reached the internet before any masquerade");

    let plane = Arc::new(NetworkPlane::new(board_side(uplink), None));
    apply(&lab.ns(0), &plane, &BoardNetworks::default(), &BTreeMap::new());
    assert_eq!(ask_tcp(&client.netns_path, outside).as_deref(), Some(format!("internet {uplink}").as_str()));
}

/// How a TCP connection from `ns` to `to:PORT` ends: its answer, or the error's kind.
fn try_tcp(ns: &Path, to: Ipv4Addr) -> Result<String, std::io::ErrorKind> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((to, PORT)), Duration::from_secs(2)).map_err(|e| e.kind())?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        Ok(buf)
    })
    .join()
    .unwrap()
}

#[test]
#[ignore = "needs root"]
fn containers_balance_their_own_connections_to_a_vip_over_both_boards() {
    let k = 34;
    let mut lab = lab(k, 253, &["b1", "b2"]);
    let (u1, u2) = (Ipv4Addr::new(10, 253, k, 1), Ipv4Addr::new(10, 253, k, 2));
    let atsea = NetworkDef {
        id: "atsea".into(),
        vni: 4200 + u32::from(k),
        subnet: Subnet::new(Ipv4Addr::new(10, 1, k, 0), 24).unwrap(),
        gateway: Ipv4Addr::new(10, 1, k, 1),
        encrypted: false,
    };
    let a = |d: u8| Ipv4Addr::new(10, 1, k, d);
    let (client_ip, w1, w2, w3, late_ip) = (a(2), a(3), a(4), a(5), a(6));
    let (vip, idle_vip) = (a(100), a(101));

    let (n1, n2) = (bridge(&lab, 0), bridge(&lab, 1));
    let client = sandbox(&mut lab, 0, &n1, "client.1.c");
    let web1 = sandbox(&mut lab, 0, &n1, "web.1.a");
    let web2 = sandbox(&mut lab, 1, &n2, "web.2.b");
    let web3 = sandbox(&mut lab, 1, &n2, "web.3.d");

    // The client and web1 on board 1, web2 and web3 on board 2; `idle` has no task.
    let mut common = BoardNetworks::default();
    common.networks.insert("atsea".into(), atsea.clone());
    for (addr, board) in [(client_ip, u1), (w1, u1), (w2, u2), (w3, u2), (late_ip, u2)] {
        common.peers.insert(addr, board);
    }
    common.vips.insert(vip, BTreeSet::from([w1, w2, w3]));
    common.vips.insert(idle_vip, BTreeSet::new());
    let att = |addr| vec![Attachment { network: "atsea".into(), address: addr }];
    let mut d1 = common.clone();
    d1.attachments.insert(client.container_id.clone(), att(client_ip));
    d1.attachments.insert(web1.container_id.clone(), att(w1));
    let mut d2 = common.clone();
    d2.attachments.insert(web2.container_id.clone(), att(w2));
    d2.attachments.insert(web3.container_id.clone(), att(w3));
    let addrs =
        |ss: &[&Sandbox]| -> BTreeMap<String, Ipv4Addr> { ss.iter().map(|s| (s.container_id.clone(), s.ip)).collect() };
    let (addrs1, addrs2) = (addrs(&[&client, &web1]), addrs(&[&web2, &web3]));

    let p1 = Arc::new(NetworkPlane::new(board_side(u1), None).with_sandboxes(lab.dir.join("netns0")));
    let p2 = Arc::new(NetworkPlane::new(board_side(u2), None).with_sandboxes(lab.dir.join("netns1")));
    apply(&lab.ns(0), &p1, &d1, &addrs1);
    apply(&lab.ns(1), &p2, &d2, &addrs2);
    join(&lab.ns(0), &client, vec![(&atsea, client_ip)]);
    join(&lab.ns(0), &web1, vec![(&atsea, w1)]);
    join(&lab.ns(1), &web2, vec![(&atsea, w2)]);
    join(&lab.ns(1), &web3, vec![(&atsea, w3)]);
    listen(&web1.netns_path, w1, "web1");
    listen(&web2.netns_path, w2, "web2");
    listen(&web3.netns_path, w3, "web3");

    // Every backend, on both boards, gets connections; each sees the client's own
    // overlay address (DNAT only, no masquerade).
    let spread = |from: &Path, n: usize| {
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..n {
            let answer = ask_tcp(from, vip).expect("the VIP answers");
            let (name, peer) = answer.split_once(' ').unwrap();
            assert_eq!(peer, client_ip.to_string(), "{answer}");
            *seen.entry(name.to_owned()).or_default() += 1;
        }
        seen
    };
    let seen = spread(&client.netns_path, 60);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["web1", "web2", "web3"], "{seen:?}");

    // A VIP with no running task refuses at once rather than timing out on-link.
    let started = std::time::Instant::now();
    assert_eq!(try_tcp(&client.netns_path, idle_vip), Err(std::io::ErrorKind::ConnectionRefused));
    assert!(started.elapsed() < Duration::from_millis(500), "refusal took {:?}", started.elapsed());

    // web2 dies: the next apply takes it out of the client's table, and only the
    // client's table (the same batch on web1, whose VIP set changed too).
    let mut d1b = d1.clone();
    d1b.vips.insert(vip, BTreeSet::from([w1, w3]));
    let (p, d, ad) = (p1.clone(), d1b.clone(), addrs1.clone());
    let started = std::time::Instant::now();
    let plan = common::in_netns_async(&lab.ns(0), move || Box::pin(async move { p.apply(&d, &ad).await.unwrap() }));
    let took = started.elapsed();
    assert_eq!(plan.sandboxes.len(), 2, "{plan:?}");
    assert!(plan.ruleset.is_none() && plan.ensure.is_empty() && plan.peers.is_empty());
    let table = &plan.sandboxes[0].1;
    let bytes = shoal_agent::net::nft::render::render_sandbox(table, 0).unwrap().bytes.len();
    eprintln!("backend removal: plane apply for 2 containers took {took:?}; one container's batch is {bytes} bytes");
    let seen = spread(&client.netns_path, 30);
    assert!(!seen.contains_key("web2"), "a removed backend still got connections: {seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A container that joins board 2 later gets its table at the apply that knows its
    // sandbox.
    let late = sandbox(&mut lab, 1, &n2, "late.1.e");
    let mut d2b = d2.clone();
    d2b.vips.insert(vip, BTreeSet::from([w1, w3]));
    d2b.attachments.insert(late.container_id.clone(), att(late_ip));
    let (p, d, ad) = (p2.clone(), d2b.clone(), addrs2.clone());
    let plan = common::in_netns_async(&lab.ns(1), move || Box::pin(async move { p.apply(&d, &ad).await.unwrap() }));
    assert!(plan.sandboxes.iter().all(|(c, _)| c != "late.1.e"), "a table for a container without a sandbox");
    join(&lab.ns(1), &late, vec![(&atsea, late_ip)]);
    let mut addrs2b = addrs2.clone();
    addrs2b.insert(late.container_id.clone(), late.ip);
    let (p, ad) = (p2.clone(), addrs2b.clone());
    let started = std::time::Instant::now();
    let plan =
        common::in_netns_async(&lab.ns(1), move || Box::pin(async move { p.reapply(&ad).await.expect("reapply") }));
    eprintln!("a joining container's table: reapply took {:?}", started.elapsed());
    assert_eq!(plan.sandboxes.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(), ["late.1.e"]);
    let answer = ask_tcp(&late.netns_path, vip).expect("the late container reaches the VIP");
    assert!(answer.starts_with("web1 ") || answer.starts_with("web3 "), "{answer}");
}

#[test]
#[ignore = "needs root"]
fn a_taken_port_53_leaves_containers_the_boards_resolvers() {
    let k = 33;
    let lab = lab(k, 253, &["b", "x"]);
    let net = bridge(&lab, 0);
    let gw = net.config().gateway();
    let board_conf = "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch lan\n";

    // Something else answers on the gateway's port 53.
    let ns = lab.ns(0);
    let squatter = std::thread::spawn(move || {
        common::enter_netns(&ns);
        UdpSocket::bind((gw, 53)).expect("squatting port 53")
    })
    .join()
    .unwrap();
    let n = net.clone();
    let (resolver, conf) = common::in_netns_async(&lab.ns(0), move || {
        Box::pin(async move { plane::start_resolver(&n, board_conf).await })
    });
    assert!(resolver.is_none(), "a resolver started on a taken port");
    assert_eq!(conf.as_deref(), Some("nameserver 192.0.2.53\nsearch lan\n"));

    // Free again: the resolver starts and containers are pointed at the gateway.
    drop(squatter);
    let n = net.clone();
    let (resolver, conf) = common::in_netns_async(&lab.ns(0), move || {
        Box::pin(async move {
            let started = plane::start_resolver(&n, board_conf).await;
            (started.0.is_some(), started.1)
        })
    });
    assert!(resolver, "no resolver on a free port 53");
    assert_eq!(conf.as_deref(), Some(format!("nameserver {gw}\nsearch lan\n").as_str()));
}
