//! Encrypted overlay networks against the real kernel: two boards (network namespaces
//! joined by a veth "cable"), a container on each joined to an encrypted network and to
//! a plain one, programmed only through `NetworkPlane` (overlays and IPsec from
//! netlink). A packet socket on the cable shows what crosses it. Needs root.
//!
//! The test plumbing (namespaces, the cable, a foreign policy) uses the `ip` binary; the
//! code under test never does.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_agent::net::overlay::{self, Overlay};
use shoal_agent::net::plane::{
    self, Attachment, BoardNetworks, BoardSide, NetworkAttachment, NetworkDef, NetworkPlane,
};
use shoal_agent::net::xfrm::{self, EspKey, NetworkKeys};
use shoal_agent::net::{BridgeConfig, Network, Sandbox, Subnet};

const PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const MARKER: &[u8] = b"SHOAL-PLAINTEXT-MARKER-7f3a";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Board namespaces, their container sandboxes and scratch directories; deleted on drop.
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
            let _ = std::thread::spawn(move || {
                common::enter_netns(&board);
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(net.remove_sandbox(&cid))
            })
            .join();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        for b in 0..2 {
            let _ = rustix::mount::unmount(self.dir.join(format!("netns{b}")), rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Boards b1, b2 with underlay addresses 10.251.<k>.1 and .2, joined by a cable
/// through a switch (namespace sw, a bridge) where the test watches.
fn lab(k: u8) -> Lab {
    assert!(rustix::process::geteuid().is_root(), "xfrm tests need root: run them as root, as scripts/test.sh does");
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("shoal-xfrm-{pid}-{k}"));
    let lab = Lab {
        names: ["b1", "b2", "sw"].iter().map(|n| format!("sxf{pid}{k}{n}")).collect(),
        dir,
        sandboxes: Vec::new(),
    };
    for n in &lab.names {
        ip(&["netns", "add", n]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    let sw = &lab.names[2];
    ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", sw, "link", "set", "br0", "up"]);
    // A third host on the underlay, without any IPsec policy: the forger.
    ip(&["-n", sw, "addr", "add", &format!("10.251.{k}.3/24"), "dev", "br0"]);
    for i in 0..2 {
        let (dev, port) = (format!("sxu{pid}{k}{i}"), format!("sxs{pid}{k}{i}"));
        ip(&["link", "add", &dev, "netns", &lab.names[i], "type", "veth", "peer", "name", &port, "netns", sw]);
        ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"]);
        ip(&["-n", &lab.names[i], "addr", "add", &format!("10.251.{k}.{}/24", i + 1), "dev", &dev]);
        ip(&["-n", &lab.names[i], "link", "set", &dev, "up"]);
    }
    lab
}

fn bridge(lab: &Lab, b: usize) -> Arc<Network> {
    let config = BridgeConfig { netns_dir: lab.dir.join(format!("netns{b}")), ..BridgeConfig::default() };
    let net = Arc::new(Network::new(config, &lab.dir.join(format!("state{b}"))).unwrap());
    let n = net.clone();
    common::in_netns_async(&lab.ns(b), move || {
        Box::pin(async move { n.ensure_bridge().await.expect("ensure_bridge") })
    });
    net
}

fn sandbox(lab: &mut Lab, b: usize, net: &Arc<Network>, cid: &str) -> Sandbox {
    let (n, id) = (net.clone(), cid.to_owned());
    let s = common::in_netns_async(&lab.ns(b), move || {
        Box::pin(async move { n.create_sandbox(&id).await.expect("create_sandbox") })
    });
    lab.sandboxes.push((lab.ns(b), net.clone(), cid.to_owned()));
    s
}

fn apply(ns: &Path, plane: &Arc<NetworkPlane>, desired: &BoardNetworks) -> plane::Plan {
    try_apply(ns, plane, desired).expect("apply")
}

fn try_apply(ns: &Path, plane: &Arc<NetworkPlane>, desired: &BoardNetworks) -> Result<plane::Plan, String> {
    let (p, d) = (plane.clone(), desired.clone());
    common::in_netns_async(ns, move || {
        Box::pin(async move { p.apply(&d, &BTreeMap::new()).await.map_err(|e| e.to_string()) })
    })
}

/// Whether this kernel can make an ESP SA with AES-GCM, asked with `ip xfrm` in a
/// scratch namespace (independently of the code under test).
fn kernel_has_esp_gcm() -> bool {
    let ns = format!("sxprobe{}", std::process::id());
    ip(&["netns", "add", &ns]);
    let ok = Command::new("ip")
        .args([
            "-n",
            &ns,
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            "0x1000",
        ])
        .args(["mode", "transport", "aead", "rfc4106(gcm(aes))", "0x0102030405060708090a0b0c0d0e0f1011121314", "128"])
        .output()
        .unwrap()
        .status
        .success();
    ip(&["netns", "del", &ns]);
    ok
}

fn overlay_of(n: &NetworkDef) -> Overlay {
    let o = Overlay::new(n.vni, n.subnet, 1500).unwrap();
    if n.encrypted {
        o.encrypted()
    } else {
        o
    }
}

fn join(ns: &Path, s: &Sandbox, attachments: Vec<(&NetworkDef, Ipv4Addr)>) {
    let attachments: Vec<NetworkAttachment> = attachments
        .into_iter()
        .map(|(n, address)| NetworkAttachment { network: n.id.clone(), overlay: overlay_of(n), address })
        .collect();
    let s = s.clone();
    common::in_netns_async(ns, move || {
        Box::pin(async move {
            plane::join_container(&s, &attachments).await.map_err(|(n, e)| format!("{n}: {e}")).expect("join")
        })
    });
}

fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        f()
    })
    .join()
    .unwrap()
}

/// The agent's SAs and policies in board namespace `ns`.
fn ipsec_state(ns: &Path) -> (Vec<xfrm::Sa>, Vec<xfrm::Policy>) {
    in_ns(ns, || xfrm::current().expect("listing IPsec state"))
}

/// A TCP listener on `addr:PORT` in `ns` answering each connection with what it read
/// (up to 256 bytes), and a UDP echo on `addr:UDP_PORT`, for the test's lifetime.
fn serve(ns: &Path, addr: Ipv4Addr) {
    let ns = ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        let l = TcpListener::bind((addr, PORT)).expect("binding the listener");
        let u = UdpSocket::bind((addr, UDP_PORT)).expect("binding the echo");
        tx.send(()).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        });
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = s.write_all(&buf[..n]);
        }
    });
    rx.recv().unwrap();
}

/// Sends `payload` over TCP from `ns` to `to:PORT` and returns the echo.
fn echo_tcp(ns: &Path, to: Ipv4Addr, payload: &'static [u8]) -> Option<Vec<u8>> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((to, PORT)), Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(payload).ok()?;
        let mut buf = vec![0u8; 256];
        let n = s.read(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    })
}

/// Frames crossing the cable while it runs: an AF_PACKET socket in the switch
/// namespace, which holds nothing but the cable (every protocol, both directions).
struct Capture {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start(lab: &Lab) -> Self {
        use rustix::net::{AddressFamily, Protocol, RecvFlags, SocketType};
        let ns = lab.ns(2);
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frames.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            common::enter_netns(&ns);
            // ETH_P_ALL in network byte order.
            let all = Protocol::from_raw(std::num::NonZeroU32::new(u32::from(0x0003u16.to_be())).unwrap());
            let fd = rustix::net::socket(AddressFamily::PACKET, SocketType::RAW, Some(all)).expect("AF_PACKET socket");
            rustix::net::sockopt::set_socket_timeout(
                &fd,
                rustix::net::sockopt::Timeout::Recv,
                Some(Duration::from_millis(50)),
            )
            .unwrap();
            tx.send(()).unwrap();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, _)) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty()) {
                    f.lock().unwrap().push(buf[..n].to_vec());
                }
            }
        });
        rx.recv().unwrap();
        Self { frames, stop, thread: Some(thread) }
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        // Frames in flight are in by now.
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.frames.lock().unwrap())
    }
}

/// The IPv4 protocol of an Ethernet frame, and the UDP destination port if UDP.
fn classify(frame: &[u8]) -> Option<(u8, Option<u16>)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let proto = frame[14 + 9];
    let dport = (proto == 17).then(|| u16::from_be_bytes([frame[14 + ihl + 2], frame[14 + ihl + 3]]));
    Some((proto, dport))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn key(id: u32, b: u8) -> EspKey {
    EspKey { id, secret: [b; 32] }
}

/// An IPv4 header checksum.
fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A VXLAN packet's payload (VXLAN header and inner frame) carrying a UDP datagram from
/// `src` to `dst:UDP_PORT` on VNI `vni`, as a board would send it, in plaintext.
fn forged_vxlan(vni: u32, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0x08, 0, 0, 0];
    m.extend_from_slice(&(vni << 8).to_be_bytes());
    m.extend_from_slice(&overlay::mac_of(dst));
    m.extend_from_slice(&overlay::mac_of(src));
    m.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip4 = vec![0x45, 0];
    ip4.extend_from_slice(&total.to_be_bytes());
    ip4.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip4.extend_from_slice(&src.octets());
    ip4.extend_from_slice(&dst.octets());
    let c = checksum(&ip4);
    ip4[10..12].copy_from_slice(&c.to_be_bytes());
    m.extend_from_slice(&ip4);
    m.extend_from_slice(&40000u16.to_be_bytes());
    m.extend_from_slice(&UDP_PORT.to_be_bytes());
    m.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(payload);
    m
}

/// Whether a datagram for `dst:UDP_PORT+1`, sent from namespace `from` of the lab (the
/// switch's, 2, is a host on the underlay with no IPsec policy of its own) as plaintext
/// VXLAN (VNI `vni`, inner source `src`) to `board:port`, reaches a probe socket in the
/// container namespace `container` within 800 ms.
#[allow(clippy::too_many_arguments)]
fn forged_arrives(
    lab: &Lab,
    container: &Path,
    dst: Ipv4Addr,
    from: usize,
    board: Ipv4Addr,
    port: u16,
    vni: u32,
    src: Ipv4Addr,
) -> bool {
    let c = container.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = std::thread::spawn(move || {
        common::enter_netns(&c);
        let s = UdpSocket::bind((dst, UDP_PORT + 1)).expect("binding the probe");
        s.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 256];
        matches!(s.recv(&mut buf), Ok(n) if &buf[..n] == b"forged")
    });
    rx.recv().unwrap();
    let mut packet = forged_vxlan(vni, src, dst, b"forged");
    // Aim at the probe's port instead of the echo's.
    let at = packet.len() - 6 - 8 + 2;
    packet[at..at + 2].copy_from_slice(&(UDP_PORT + 1).to_be_bytes());
    in_ns(&lab.ns(from), move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..3 {
            s.send_to(&packet, (board, port)).unwrap();
        }
    });
    probe.join().unwrap()
}

fn board_side(underlay: Ipv4Addr) -> BoardSide {
    BoardSide {
        underlay,
        underlay_mtu: 1500,
        bridge_subnet: BridgeConfig::default().subnet,
        bridge: BridgeConfig::default().name,
    }
}

struct Pair {
    lab: Lab,
    u: [Ipv4Addr; 2],
    secure: NetworkDef,
    plain: NetworkDef,
    /// Containers' addresses on secure and plain: [board][network].
    addr: [[Ipv4Addr; 2]; 2],
    c: Vec<Sandbox>,
    planes: [Arc<NetworkPlane>; 2],
}

impl Pair {
    /// The desired state of board `b` with `keys` for the secure network (`None`: its
    /// view has not come yet) and the containers attached or not.
    fn desired(&self, b: usize, keys: Option<NetworkKeys>, attached: bool) -> BoardNetworks {
        let mut d = BoardNetworks::default();
        d.networks.insert("secure".into(), self.secure.clone());
        d.networks.insert("plain".into(), self.plain.clone());
        for other in 0..2 {
            d.peers.insert(self.addr[other][0], self.u[other]);
            d.peers.insert(self.addr[other][1], self.u[other]);
        }
        if attached {
            d.attachments.insert(
                self.c[b].container_id.clone(),
                vec![
                    Attachment { network: "secure".into(), address: self.addr[b][0] },
                    Attachment { network: "plain".into(), address: self.addr[b][1] },
                ],
            );
        }
        if let Some(k) = keys {
            d.keys.insert("secure".into(), k);
        }
        d
    }

    fn apply_both(&self, keys: Option<NetworkKeys>, attached: bool) {
        for b in 0..2 {
            apply(&self.lab.ns(b), &self.planes[b], &self.desired(b, keys.clone(), attached));
        }
    }
}

fn pair(k: u8) -> Pair {
    let mut lab = lab(k);
    let u = [Ipv4Addr::new(10, 251, k, 1), Ipv4Addr::new(10, 251, k, 2)];
    let net = |id: &str, third: u8, vni: u32, encrypted: bool| NetworkDef {
        id: id.into(),
        vni,
        subnet: Subnet::new(Ipv4Addr::new(10, third, k, 0), 24).unwrap(),
        gateway: Ipv4Addr::new(10, third, k, 1),
        encrypted,
    };
    let secure = net("secure", 5, 4500 + u32::from(k), true);
    let plain = net("plain", 6, 4600 + u32::from(k), false);
    let addr = [
        [Ipv4Addr::new(10, 5, k, 2), Ipv4Addr::new(10, 6, k, 2)],
        [Ipv4Addr::new(10, 5, k, 3), Ipv4Addr::new(10, 6, k, 3)],
    ];
    let (n1, n2) = (bridge(&lab, 0), bridge(&lab, 1));
    let c = vec![sandbox(&mut lab, 0, &n1, "app.1.sec"), sandbox(&mut lab, 1, &n2, "app.2.sec")];
    let planes =
        [Arc::new(NetworkPlane::new(board_side(u[0]), None)), Arc::new(NetworkPlane::new(board_side(u[1]), None))];
    Pair { lab, u, secure, plain, addr, c, planes }
}

/// Checks the encrypted network's traffic on the cable: never its payload or plaintext
/// VXLAN; when it `works`, answered and carried as ESP; otherwise not answered at all
/// (no keys, or a kernel without ESP).
fn check_encrypted_path(p: &Pair, works: bool) {
    let cap = Capture::start(&p.lab);
    let answer = echo_tcp(&p.c[0].netns_path, p.addr[1][0], MARKER);
    let frames = cap.finish();
    assert!(!frames.iter().any(|f| contains(f, MARKER)), "the payload crossed the underlay in the clear");
    assert!(
        !frames.iter().any(|f| classify(f).is_some_and(|(_, port)| port == Some(overlay_of(&p.secure).port))),
        "plaintext VXLAN of the encrypted network on the underlay"
    );
    let esp = frames.iter().filter(|f| classify(f).is_some_and(|(proto, _)| proto == 50)).count();
    if works {
        assert_eq!(answer.as_deref(), Some(MARKER), "no answer over the encrypted network");
        assert!(esp >= 4, "only {esp} ESP frames of {} on the underlay", frames.len());
    } else {
        assert_eq!(answer, None, "the encrypted network answered without keys");
        assert_eq!(esp, 0);
    }
}

#[test]
#[ignore = "needs root"]
fn an_encrypted_network_never_crosses_in_the_clear_and_a_plain_one_stays_plain() {
    let p = pair(41);
    // A policy that is not the agent's: never touched.
    ip(&["-n", &p.lab.names[0], "xfrm", "policy", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "dir", "out"]);

    // The assignment comes before the view with the keys: the policies already stand.
    p.apply_both(None, true);
    for b in 0..2 {
        let (sas, policies) = ipsec_state(&p.lab.ns(b));
        assert!(sas.is_empty() && policies.len() == 2, "board {b}: {sas:?} {policies:?}");
    }
    let plan = apply(&p.lab.ns(0), &p.planes[0], &p.desired(0, None, true));
    assert!(plan.is_empty(), "applied twice: {plan:?}");
    join(&p.lab.ns(0), &p.c[0], vec![(&p.secure, p.addr[0][0]), (&p.plain, p.addr[0][1])]);
    join(&p.lab.ns(1), &p.c[1], vec![(&p.secure, p.addr[1][0]), (&p.plain, p.addr[1][1])]);
    assert!(Command::new("nsenter")
        .arg(format!("--net={}", p.c[0].netns_path.display()))
        .args(["ip", "-o", "link", "show", "eth1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("mtu 1410"))
        .unwrap());
    serve(&p.c[1].netns_path, p.addr[1][0]);
    serve(&p.c[1].netns_path, p.addr[1][1]);

    // Without keys nothing of the encrypted network leaves: the out policy drops it.
    check_encrypted_path(&p, false);

    // The plain network between the same boards: VXLAN on 4789, payload visible.
    let cap = Capture::start(&p.lab);
    assert_eq!(echo_tcp(&p.c[0].netns_path, p.addr[1][1], MARKER).as_deref(), Some(MARKER));
    let frames = cap.finish();
    assert!(frames.iter().any(|f| contains(f, MARKER)), "the plain network's payload was not seen: capture broken?");
    assert!(frames.iter().all(|f| classify(f).is_none_or(|(proto, _)| proto != 50)), "the plain network was encrypted");
    assert!(frames.iter().any(|f| classify(f).is_some_and(|(_, port)| port == Some(overlay::VXLAN_PORT))));

    // No downgrade: plaintext VXLAN forged for the encrypted network by a host of the
    // underlay is dropped by board 1's in policy; the same forged for the plain network
    // arrives (the forgery is sound).
    let u0 = p.u[0];
    assert!(
        !forged_arrives(
            &p.lab,
            &p.c[0].netns_path,
            p.addr[0][0],
            2,
            u0,
            overlay_of(&p.secure).port,
            p.secure.vni,
            p.addr[1][0]
        ),
        "plaintext VXLAN for the encrypted network was accepted"
    );
    assert!(
        forged_arrives(&p.lab, &p.c[0].netns_path, p.addr[0][1], 2, u0, overlay::VXLAN_PORT, p.plain.vni, p.addr[1][1]),
        "a forged plaintext packet did not arrive on the plain network: the forgery is wrong"
    );

    // The keys arrive. On a kernel with ESP and AES-GCM: an SA each way, traffic flows as
    // ESP only. Without: the error names the kernel options, nothing leaks, and the
    // plain network keeps working.
    let k1 = NetworkKeys { send: key(1, 0x11), accept: None };
    let results: Vec<Result<plane::Plan, String>> =
        (0..2).map(|b| try_apply(&p.lab.ns(b), &p.planes[b], &p.desired(b, Some(k1.clone()), true))).collect();
    if kernel_has_esp_gcm() {
        for (b, r) in results.iter().enumerate() {
            assert!(r.is_ok(), "board {b}: {r:?}");
            let (sas, policies) = ipsec_state(&p.lab.ns(b));
            assert_eq!((sas.len(), policies.len()), (2, 2), "board {b}: one SA and one policy each way");
        }
        check_encrypted_path(&p, true);
    } else {
        for r in &results {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains("CONFIG_CRYPTO_GCM") || e.contains("CONFIG_INET_ESP"), "{e}");
            eprintln!("this kernel can't encrypt, as the agent says: {e}");
        }
        check_encrypted_path(&p, false);
        assert_eq!(echo_tcp(&p.c[0].netns_path, p.addr[1][1], MARKER).as_deref(), Some(MARKER));
    }

    // The network leaves both boards: no SA, no policy of the agent's is left; the
    // foreign policy is.
    p.apply_both(Some(k1), false);
    for b in 0..2 {
        let (sas, policies) = ipsec_state(&p.lab.ns(b));
        assert!(sas.is_empty() && policies.is_empty(), "board {b}: {sas:?} {policies:?}");
    }
    let out = Command::new("ip").args(["-n", &p.lab.names[0], "xfrm", "policy", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.1"), "the foreign policy was removed");
}

/// Sends numbered UDP datagrams from `ns` to `to:UDP_PORT` every `gap` until `stop`,
/// and returns (sent, echoed back).
fn udp_stream(
    ns: &Path,
    to: Ipv4Addr,
    gap: Duration,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU32>,
) -> std::thread::JoinHandle<(u32, u32)> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut sent = 0u32;
        let mut buf = [0u8; 64];
        let mut drain = |seen: &mut std::collections::BTreeSet<u32>| {
            while let Ok(n) = s.recv(&mut buf) {
                if n == 4 {
                    seen.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                }
            }
        };
        while !stop.load(Ordering::Relaxed) {
            s.send_to(&sent.to_be_bytes(), (to, UDP_PORT)).unwrap();
            sent += 1;
            progress.store(sent, Ordering::Relaxed);
            let until = Instant::now() + gap;
            while Instant::now() < until {
                drain(&mut seen);
            }
        }
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            drain(&mut seen);
        }
        (sent, seen.len() as u32)
    })
}

/// Needs ESP and AES-GCM in the kernel (the development VM has neither):
/// `scripts/test.sh` runs it in a guest with Debian's kernel (`scripts/vm.sh`); by hand,
/// `cargo test -p shoal-agent --test xfrm -- --ignored ipsec_esp_` on such a kernel.
#[test]
#[ignore = "needs root and a kernel with CONFIG_INET_ESP and CONFIG_CRYPTO_GCM"]
fn ipsec_esp_a_key_rotation_loses_no_packet() {
    let p = pair(42);
    let (old, new) = (key(1, 0x21), key(2, 0x22));
    p.apply_both(Some(NetworkKeys { send: old.clone(), accept: None }), true);
    join(&p.lab.ns(0), &p.c[0], vec![(&p.secure, p.addr[0][0]), (&p.plain, p.addr[0][1])]);
    join(&p.lab.ns(1), &p.c[1], vec![(&p.secure, p.addr[1][0]), (&p.plain, p.addr[1][1])]);
    serve(&p.c[1].netns_path, p.addr[1][0]);
    assert_eq!(echo_tcp(&p.c[0].netns_path, p.addr[1][0], MARKER).as_deref(), Some(MARKER));

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU32::new(0));
    let stream = udp_stream(&p.c[0].netns_path, p.addr[1][0], Duration::from_millis(2), stop.clone(), progress.clone());
    // Each step lasts 300 ms and at least 70 datagrams: a slow machine (the test also
    // runs in an emulated VM, scripts/vm.sh) must still put traffic through every phase.
    let wait_for_traffic = || {
        let (from, started) = (progress.load(Ordering::Relaxed), Instant::now());
        while started.elapsed() < Duration::from_millis(300) || progress.load(Ordering::Relaxed) < from + 70 {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let phases = [
        NetworkKeys { send: old.clone(), accept: Some(new.clone()) },
        NetworkKeys { send: new.clone(), accept: Some(old.clone()) },
        NetworkKeys { send: new.clone(), accept: None },
    ];
    let spis =
        |b: usize| ipsec_state(&p.lab.ns(b)).0.into_iter().map(|s| s.spi).collect::<std::collections::BTreeSet<_>>();
    let before = spis(0);
    wait_for_traffic();
    for keys in phases {
        // The boards get each step one after the other, as the manager's messages arrive.
        p.apply_both(Some(keys), true);
        wait_for_traffic();
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, echoed) = stream.join().unwrap();
    eprintln!("rotation: {sent} datagrams sent, {echoed} echoed");
    assert!(sent > 200, "too few datagrams to say anything ({sent})");
    assert_eq!(echoed, sent, "datagrams lost across the rotation");
    let after = spis(0);
    assert_eq!(after.len(), 2);
    assert!(after.is_disjoint(&before), "the old key's SAs outlived the rotation");
    assert_eq!(echo_tcp(&p.c[0].netns_path, p.addr[1][0], MARKER).as_deref(), Some(MARKER));
}

/// Bulk TCP from `ns` to `to:port` for about `secs` seconds: megabits per second.
fn throughput(ns: &Path, to: Ipv4Addr, port: u16, secs: f64) -> f64 {
    in_ns(ns, move || {
        let mut s = TcpStream::connect((to, port)).expect("connecting the sender");
        let buf = vec![0x5au8; 128 * 1024];
        let started = Instant::now();
        let mut sent = 0usize;
        while started.elapsed().as_secs_f64() < secs {
            s.write_all(&buf).unwrap();
            sent += buf.len();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut ack = [0u8; 1];
        let _ = s.read(&mut ack);
        sent as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e6
    })
}

/// A sink on `addr:port` in `ns` reading everything of each connection, then answering one byte.
fn sink(ns: &Path, addr: Ipv4Addr, port: u16) {
    let ns = ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        common::enter_netns(&ns);
        let l = TcpListener::bind((addr, port)).expect("binding the sink");
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            let _ = s.write_all(b"k");
        }
    });
    rx.recv().unwrap();
}

/// Median round trip of `n` UDP echoes from `ns` to `to:UDP_PORT`, in microseconds.
fn rtt(ns: &Path, to: Ipv4Addr, n: usize) -> f64 {
    in_ns(ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.connect((to, UDP_PORT)).unwrap();
        let mut times: Vec<f64> = (0..n)
            .map(|i| {
                let t = Instant::now();
                s.send(&(i as u32).to_be_bytes()).unwrap();
                let mut buf = [0u8; 16];
                s.recv(&mut buf).expect("an echo");
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        times[n / 2]
    })
}

/// Figures for docs/networking.md: TCP throughput and round trip between two boards
/// over the underlay, a plain overlay and an encrypted one (when the kernel can). Prints
/// them; a measurement, run by hand: `cargo test -p shoal-agent --test xfrm -- --ignored ipsec_figures_ --nocapture`.
#[test]
#[ignore = "a measurement: needs root, run by hand"]
fn ipsec_figures_plain_encrypted_and_underlay() {
    let esp = kernel_has_esp_gcm();
    let p = pair(43);
    if esp {
        p.apply_both(Some(NetworkKeys { send: key(1, 0x31), accept: None }), true);
    } else {
        p.apply_both(None, true);
    }
    join(&p.lab.ns(0), &p.c[0], vec![(&p.secure, p.addr[0][0]), (&p.plain, p.addr[0][1])]);
    join(&p.lab.ns(1), &p.c[1], vec![(&p.secure, p.addr[1][0]), (&p.plain, p.addr[1][1])]);
    // Underlay: board to board; overlays: container to container.
    serve(&p.lab.ns(1), p.u[1]);
    serve(&p.c[1].netns_path, p.addr[1][0]);
    serve(&p.c[1].netns_path, p.addr[1][1]);
    sink(&p.lab.ns(1), p.u[1], 7100);
    sink(&p.c[1].netns_path, p.addr[1][0], 7100);
    sink(&p.c[1].netns_path, p.addr[1][1], 7100);
    let secs = 3.0;
    for (name, from, to) in [
        ("underlay", p.lab.ns(0), p.u[1]),
        ("plain overlay", p.c[0].netns_path.clone(), p.addr[1][1]),
        ("encrypted overlay", p.c[0].netns_path.clone(), p.addr[1][0]),
    ] {
        if name.starts_with("encrypted") && !esp {
            eprintln!("FIGURE {name}: not measurable, this kernel has no ESP or AES-GCM");
            continue;
        }
        let _ = rtt(&from, to, 50); // warm up (ARP, SA lookups)
        let r = rtt(&from, to, 2000);
        let t = throughput(&from, to, 7100, secs);
        eprintln!("FIGURE {name}: {t:.0} Mbit/s TCP, {r:.0} µs median UDP round trip");
    }
}

#[test]
#[ignore = "needs root"]
fn an_encrypted_network_is_not_joined_before_its_policies_stand() {
    use shoal_agent::net::Sandboxes;
    let p = pair(44);
    let n1 = bridge(&p.lab, 0);
    n1.set_underlay(p.u[0]);
    let at =
        vec![NetworkAttachment { network: "secure".into(), overlay: overlay_of(&p.secure), address: p.addr[0][0] }];
    let join = |n: Arc<Network>, s: Sandbox, at: Vec<NetworkAttachment>| {
        common::in_netns_async(&p.lab.ns(0), move || {
            Box::pin(async move { n.join_overlays(&s, &at).await.map_err(|(net, e)| format!("{net}: {e}")) })
        })
    };
    // No plane has run: no policy, so no overlay and no join.
    let e = join(n1.clone(), p.c[0].clone(), at.clone()).unwrap_err();
    assert!(e.contains("policies for it are not in place") && e.contains("CONFIG_XFRM_USER"), "{e}");
    let out = Command::new("ip").args(["-n", &p.lab.names[0], "link", "show", &overlay_of(&p.secure).vxlan()]).output();
    assert!(!out.unwrap().status.success(), "the encrypted overlay was made without its policies");
    // Once the plane has put them in place, the container joins.
    apply(&p.lab.ns(0), &p.planes[0], &p.desired(0, None, true));
    join(n1, p.c[0].clone(), at).expect("joining once the policies stand");
}
