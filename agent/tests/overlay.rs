//! Overlay networks against the real kernel: two boards (network namespaces joined by
//! a veth "cable"), one container namespace on each, a VXLAN overlay between them
//! programmed only through `shoal_agent::net::overlay`. Needs root.
//!
//! The test plumbing (namespaces, the cable) uses the `ip` binary; the code under test
//! never does.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_agent::net::overlay::{self, Overlay, Peer};
use shoal_agent::net::Subnet;

mod common;

/// Where `ip netns` pins namespace `ns`.
fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Port of the echo listener each container namespace runs.
const PORT: u16 = 7000;

/// A listener on `addr:PORT` inside `ns` answering each connection with `hello`, for as
/// long as the test process lives.
fn listen(ns: &str, addr: Ipv4Addr) {
    let ns = ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        common::enter_netns(&netns_path(&ns));
        let l = TcpListener::bind((addr, PORT)).expect("binding the echo listener");
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"hello");
        }
    });
    rx.recv().unwrap();
}

/// Whether a TCP connection from namespace `ns` to `to:PORT` gets `hello` within 2 s.
fn reaches(ns: &str, to: Ipv4Addr) -> bool {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        common::enter_netns(&netns_path(&ns));
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from((to, PORT)), Duration::from_secs(2)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf == b"hello"
    })
    .join()
    .unwrap()
}

/// Two boards and a container on each; everything deleted on drop.
struct Lab {
    names: Vec<String>,
}

impl Lab {
    fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Boards `b1`, `b2` with underlay addresses 10.252.<k>.1 and .2, containers `c1`, `c2`.
fn lab(k: u8) -> Lab {
    assert!(rustix::process::geteuid().is_root(), "overlay tests need root: run them as root, as scripts/test.sh does");
    let pid = std::process::id();
    let lab = Lab { names: ["b1", "b2", "c1", "c2"].iter().map(|n| format!("sov{pid}{k}{n}")).collect() };
    for n in &lab.names {
        ip(&["netns", "add", n]);
    }
    let (u1, u2) = (format!("svu{pid}a"), format!("svu{pid}b"));
    ip(&["link", "add", &u1, "netns", lab.ns(0), "type", "veth", "peer", "name", &u2, "netns", lab.ns(1)]);
    for (i, dev) in [(0, &u1), (1, &u2)] {
        let addr = format!("10.252.{k}.{}/24", i + 1);
        ip(&["-n", lab.ns(i), "addr", "add", &addr, "dev", dev]);
        ip(&["-n", lab.ns(i), "link", "set", dev, "up"]);
        ip(&["-n", lab.ns(i), "link", "set", "lo", "up"]);
    }
    lab
}

fn underlay(k: u8, board: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 252, k, board)
}

fn overlay_of(k: u8) -> Overlay {
    Overlay::new(4000 + k as u32, Subnet::new(Ipv4Addr::new(10, 0, k, 0), 24).unwrap(), 1500).unwrap()
}

/// On board `b` (0 or 1): the overlay, container `c` joined with `addr`, and `peers`.
fn board_up(lab: &Lab, b: usize, o: Overlay, local: Ipv4Addr, container: usize, addr: Ipv4Addr, peers: Vec<Peer>) {
    let netns = PathBuf::from("/run/netns").join(lab.ns(container));
    let veth = format!("svh{}{b}", std::process::id());
    common::in_netns_async(&netns_path(lab.ns(b)), move || {
        Box::pin(async move {
            overlay::ensure(&o, local).await.expect("ensure");
            // Twice: idempotent.
            overlay::ensure(&o, local).await.expect("ensure again");
            overlay::join(&o, &veth, &netns, "eth1", addr).await.expect("join");
            overlay::set_peers(&o, &peers).await.expect("set_peers");
        })
    });
}

fn set_peers(lab: &Lab, b: usize, o: Overlay, peers: Vec<Peer>) {
    common::in_netns_async(&netns_path(lab.ns(b)), move || {
        Box::pin(async move { overlay::set_peers(&o, &peers).await.expect("set_peers") })
    });
}

#[test]
#[ignore = "needs root"]
fn containers_on_two_boards_reach_each_other_over_vxlan() {
    let k = 11;
    let lab = lab(k);
    let o = overlay_of(k);
    let (a, b) = (Ipv4Addr::new(10, 0, k, 2), Ipv4Addr::new(10, 0, k, 3));
    // No peers yet: nothing is learnt from the wire, so the other side is unreachable.
    board_up(&lab, 0, o, underlay(k, 1), 2, a, vec![]);
    board_up(&lab, 1, o, underlay(k, 2), 3, b, vec![]);
    listen(lab.ns(2), a);
    listen(lab.ns(3), b);
    assert!(!reaches(lab.ns(2), b), "reached the other board without any forwarding entry");

    let started = Instant::now();
    set_peers(&lab, 0, o, vec![Peer { ip: b, board: underlay(k, 2) }]);
    set_peers(&lab, 1, o, vec![Peer { ip: a, board: underlay(k, 1) }]);
    eprintln!("programming both boards took {:?}", started.elapsed());
    assert!(reaches(lab.ns(2), b), "c1 cannot reach c2 over the overlay");
    assert!(reaches(lab.ns(3), a), "c2 cannot reach c1 over the overlay");

    // The containers see the overlay's MTU, and the boards themselves have no address on
    // it (the host never routes into an overlay).
    let out = Command::new("ip").args(["-n", lab.ns(2), "-o", "link", "show", "eth1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("mtu 1450"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!reaches(lab.ns(0), b), "the board itself reached a container on the overlay");

    // The peer leaves: its entries go, and it is unreachable again; then it comes back.
    set_peers(&lab, 0, o, vec![]);
    let out = Command::new("ip").args(["-n", lab.ns(0), "neigh", "show", "dev", &o.vxlan()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "stale neighbours: {:?}", out);
    let out = Command::new("bridge").args(["-n", lab.ns(0), "fdb", "show", "dev", &o.vxlan()]).output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("02:42:0a:00"), "stale forwarding entries: {text}");
    }
    set_peers(&lab, 0, o, vec![Peer { ip: b, board: underlay(k, 2) }]);
    set_peers(&lab, 0, o, vec![Peer { ip: b, board: underlay(k, 2) }]);
    assert!(reaches(lab.ns(2), b), "c1 cannot reach c2 after the peer came back");

    // The network leaves the board with its devices.
    common::in_netns_async(&netns_path(lab.ns(0)), move || {
        Box::pin(async move { overlay::remove(&o).await.expect("remove") })
    });
    common::in_netns_async(&netns_path(lab.ns(0)), move || {
        Box::pin(async move { overlay::remove(&o).await.expect("remove twice") })
    });
    let out = Command::new("ip").args(["-n", lab.ns(0), "link", "show", &o.vxlan()]).output().unwrap();
    assert!(!out.status.success(), "the VXLAN device outlived remove");
    assert!(!reaches(lab.ns(3), a), "c2 still reaches c1 after the overlay left board 1");
}

#[test]
#[ignore = "needs root"]
fn many_peers_are_programmed_quickly_and_replaced_exactly() {
    let k = 12;
    let lab = lab(k);
    let o = overlay_of(k);
    board_up(&lab, 0, o, underlay(k, 1), 2, Ipv4Addr::new(10, 0, k, 2), vec![]);
    let peers: Vec<Peer> =
        (10..210u8).map(|i| Peer { ip: Ipv4Addr::new(10, 0, k, i), board: underlay(k, 2 + i % 7) }).collect();
    let started = Instant::now();
    set_peers(&lab, 0, o, peers.clone());
    let first = started.elapsed();
    let kept: Vec<Peer> = peers.iter().copied().step_by(2).collect();
    let started = Instant::now();
    set_peers(&lab, 0, o, kept.clone());
    eprintln!("200 peers programmed in {first:?}; halved in {:?}", started.elapsed());
    let out = Command::new("ip").args(["-n", lab.ns(0), "neigh", "show", "dev", &o.vxlan()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), kept.len(), "{text}");
    for p in &kept {
        assert!(text.contains(&format!("{} lladdr", p.ip)), "{} missing", p.ip);
    }
    // Addresses outside the overlay's subnet are never programmed.
    set_peers(&lab, 0, o, vec![Peer { ip: Ipv4Addr::new(192, 0, 2, 1), board: underlay(k, 2) }]);
    let out = Command::new("ip").args(["-n", lab.ns(0), "neigh", "show", "dev", &o.vxlan()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}
