//! The agent's nf_tables client against the real kernel: outbound masquerade and
//! load-balanced DNAT, each in network namespaces the test makes and removes (the
//! host's own ruleset is never touched). Needs root: run with `--include-ignored`.
//!
//! Namespaces are made with the `ip` binary (tests only: the agent itself never runs
//! it) and named `nft<pid%10000><test letter><role>`, so parallel runs don't collide.
//! The rules are applied from a thread that entered the board's namespace.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_agent::net::nft::{
    self, render, wire::BatchWriter, Destination, Masquerade, NftError, Ruleset, RulesetError, Service, L4,
};
use shoal_agent::net::Subnet;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `ip` with `args`, failing the test with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A network namespace, deleted on drop (also when the test panics).
struct Ns {
    name: String,
}

impl Ns {
    fn new(test: char, role: &str) -> Self {
        let name = format!("nft{}{test}{role}", std::process::id() % 10000);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args…`.
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Turns on IPv4 forwarding in this namespace (`/proc/sys/net` is per namespace,
    /// resolved at open by the opening thread's namespace).
    fn forward(&self) {
        self.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1").unwrap());
    }

    /// Links this namespace to `other` by a veth pair `<mine>`/`<theirs>` with addresses.
    fn veth(&self, mine: &str, my_addr: &str, other: &Ns, theirs: &str, their_addr: Option<&str>) {
        self.ip(&["link", "add", mine, "type", "veth", "peer", "name", theirs, "netns", &other.name]);
        self.ip(&["addr", "add", my_addr, "dev", mine]);
        self.ip(&["link", "set", mine, "up"]);
        if let Some(a) = their_addr {
            other.ip(&["addr", "add", a, "dev", theirs]);
        }
        other.ip(&["link", "set", theirs, "up"]);
    }

    /// Puts `container` behind bridge `shoal0` of this namespace with `addr`/16 and the
    /// bridge as its default gateway.
    fn attach(&self, container: &Ns, host_end: &str, addr: &str) {
        self.ip(&["link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", &container.name]);
        self.ip(&["link", "set", host_end, "master", "shoal0", "up"]);
        container.ip(&["addr", "add", &format!("{addr}/16"), "dev", "eth0"]);
        container.ip(&["link", "set", "eth0", "up"]);
        container.ip(&["route", "add", "default", "via", "10.88.0.1"]);
    }

    /// Makes bridge `shoal0` with 10.88.0.1/16 and forwarding on: a board as the agent
    /// sets it up.
    fn board(&self) {
        self.ip(&["link", "add", "shoal0", "type", "bridge"]);
        self.ip(&["addr", "add", "10.88.0.1/16", "dev", "shoal0"]);
        self.ip(&["link", "set", "shoal0", "up"]);
        self.forward();
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Serves on `listener` until `stop`: writes `answer(peer)` to each connection and closes it.
fn serve(listener: TcpListener, stop: Arc<AtomicBool>, answer: impl Fn(SocketAddr) -> String + Send + 'static) {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(answer(peer).as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
}

/// Connects to `to` and reads the whole answer.
fn ask(to: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

fn masquerade() -> Masquerade {
    Masquerade { source: Subnet::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap(), except_out: "shoal0".into() }
}

/// A container behind the board's bridge reaches an "internet" host that has no route
/// back to the containers' subnet only once the ruleset is applied, and that host sees
/// the board's address.
#[test]
#[ignore = "needs root"]
fn outbound_masquerade() {
    common::require_root();
    let stop = Arc::new(AtomicBool::new(false));
    let (board, container, internet) = (Ns::new('m', "b"), Ns::new('m', "c"), Ns::new('m', "i"));
    board.board();
    board.attach(&container, "vc", "10.88.0.2");
    board.veth("wan", "203.0.113.1/24", &internet, "eth0", Some("203.0.113.2/24"));

    let listener = internet.run(|| TcpListener::bind("203.0.113.2:0").unwrap());
    let target = listener.local_addr().unwrap();
    serve(listener, stop.clone(), |peer| peer.ip().to_string());

    // Without NAT the reply has no way back: the connection must fail.
    let before = container.run(move || ask(target));
    assert!(before.is_err(), "reached {target} without masquerade: {before:?}");

    let rs = Ruleset { masquerades: vec![masquerade()], services: vec![], masquerade_via: vec![] };
    let applied = board.run(|| nft::apply(&rs)).unwrap();
    assert!(applied.messages > 0);
    assert_eq!(board.run(nft::rule_counts).unwrap().get("postrouting"), Some(&1));

    let seen = container.run(move || ask(target)).expect("the container reaches the internet host through NAT");
    assert_eq!(seen, "203.0.113.1", "the internet host must see the board's address");

    // Traffic that stays on the bridge keeps the container's address.
    let local = container.run(|| TcpListener::bind("10.88.0.2:0").unwrap());
    let local_addr = local.local_addr().unwrap();
    serve(local, stop.clone(), |peer| peer.ip().to_string());
    assert_eq!(board.run(move || ask(local_addr)).unwrap(), "10.88.0.1");

    board.run(nft::remove).unwrap();
    assert!(board.run(nft::rule_counts).unwrap().is_empty());
    assert!(container.run(move || ask(target)).is_err(), "removing the table must stop the NAT");
    stop.store(true, Ordering::Relaxed);
}

/// `n` connections to `to` from `ns`, counted by answer.
fn spread(ns: &Ns, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    ns.run(move || {
        let mut counts = BTreeMap::new();
        for i in 0..n {
            let name = ask(to).unwrap_or_else(|e| panic!("connection {i} to {to}: {e}"));
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    })
}

/// A VIP with three backends spreads 300 connections over all three; re-applying with
/// two moves every new connection to those two; applying twice changes nothing.
#[test]
#[ignore = "needs root"]
fn load_balanced_dnat() {
    common::require_root();
    let stop = Arc::new(AtomicBool::new(false));
    let board = Ns::new('d', "b");
    let client = Ns::new('d', "x");
    board.board();
    // The client reaches the board over a link; the board's default route points at it,
    // as a board's points at its LAN router (the VIP must be routable for local clients).
    board.veth("lan", "192.0.2.1/24", &client, "eth0", Some("192.0.2.2/24"));
    client.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    board.ip(&["route", "add", "default", "via", "192.0.2.2"]);

    let names = ["one", "two", "three"];
    let mut backends = Vec::new();
    let mut backend_ns = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let ns = Ns::new('d', &format!("k{i}"));
        let addr = Ipv4Addr::new(10, 88, 0, 2 + i as u8);
        board.attach(&ns, &format!("vk{i}"), &addr.to_string());
        let listener = ns.run(move || TcpListener::bind(SocketAddrV4::new(addr, 8080)).unwrap());
        let answer = name.to_string();
        serve(listener, stop.clone(), move |_| answer.clone());
        backends.push(SocketAddrV4::new(addr, 8080));
        backend_ns.push(ns);
    }
    let vip = SocketAddr::from((Ipv4Addr::new(10, 99, 0, 1), 80));
    let service = |backends: &[SocketAddrV4]| Service {
        destination: Destination::Address(Ipv4Addr::new(10, 99, 0, 1)),
        proto: L4::Tcp,
        port: 80,
        backends: backends.to_vec(),
    };

    assert!(client.run(move || ask(vip)).is_err(), "the VIP answered before any rule");
    let three = Ruleset { masquerades: vec![], services: vec![service(&backends)], masquerade_via: vec![] };
    board.run(|| nft::apply(&three)).unwrap();

    let counts = spread(&client, vip, 300);
    eprintln!("300 connections over 3 backends: {counts:?}");
    for name in names {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(n >= 60, "backend {name} got {n} of 300 connections (< 20%): {counts:?}");
    }
    // The board itself uses the VIP too (the output hook).
    let local = spread(&board, vip, 30);
    assert_eq!(local.values().sum::<usize>(), 30, "{local:?}");

    let two = Ruleset { masquerades: vec![], services: vec![service(&backends[..2])], masquerade_via: vec![] };
    board.run(|| nft::apply(&two)).unwrap();
    let counts = spread(&client, vip, 100);
    eprintln!("100 connections over 2 backends: {counts:?}");
    assert_eq!(counts.get("three"), None, "a removed backend still got connections: {counts:?}");
    assert!(
        counts.get("one").copied().unwrap_or(0) >= 20 && counts.get("two").copied().unwrap_or(0) >= 20,
        "{counts:?}"
    );

    // Applying the same ruleset again leaves the same rules, not twice as many.
    let once = board.run(nft::rule_counts).unwrap();
    board.run(|| nft::apply(&two)).unwrap();
    board.run(|| nft::apply(&two)).unwrap();
    let thrice = board.run(nft::rule_counts).unwrap();
    assert_eq!(once, thrice);
    let want: BTreeMap<String, usize> =
        [("output", 1), ("prerouting", 1), ("services", 1), ("svc-0", 2)].map(|(c, n)| (c.to_string(), n)).into();
    assert_eq!(thrice, want);
    assert_eq!(spread(&client, vip, 20).values().sum::<usize>(), 20);
    stop.store(true, Ordering::Relaxed);
}

/// A service on "any local address" (a published port) answers on each of the board's
/// addresses, from outside and from the board itself, and not on other addresses.
#[test]
#[ignore = "needs root"]
fn local_destination_is_every_board_address() {
    common::require_root();
    let stop = Arc::new(AtomicBool::new(false));
    let (board, client, backend) = (Ns::new('l', "b"), Ns::new('l', "x"), Ns::new('l', "k"));
    board.board();
    board.veth("lan", "192.0.2.1/24", &client, "eth0", Some("192.0.2.2/24"));
    client.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    board.attach(&backend, "vk", "10.88.0.2");
    let listener = backend.run(|| TcpListener::bind("10.88.0.2:8080").unwrap());
    serve(listener, stop.clone(), |_| "backend".into());
    // A listener of the board's own on the same port of another address: not matched.
    let own = board.run(|| TcpListener::bind("10.88.0.1:8000").unwrap());
    serve(own, stop.clone(), |_| "board".into());

    let rs = Ruleset {
        masquerades: vec![],
        services: vec![Service {
            destination: Destination::Local,
            proto: L4::Tcp,
            port: 8000,
            backends: vec![SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 2), 8080)],
        }],
        masquerade_via: vec![],
    };
    let lan = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 8000));
    assert!(client.run(move || ask(lan)).is_err(), "port 8000 answered before any rule");
    board.run(|| nft::apply(&rs)).unwrap();
    assert_eq!(client.run(move || ask(lan)).unwrap(), "backend");
    assert_eq!(board.run(move || ask(lan)).unwrap(), "backend", "the board's own connection (output hook)");
    // 10.88.0.1 is local too: the rule takes it before the board's own listener.
    let bridge = SocketAddr::from((Ipv4Addr::new(10, 88, 0, 1), 8000));
    assert_eq!(client.run(move || ask(bridge)).unwrap(), "backend");
    // Another port is not matched.
    let other = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 8001));
    assert!(client.run(move || ask(other)).is_err());
    stop.store(true, Ordering::Relaxed);
}

/// A malformed ruleset is refused before anything is sent; a batch the kernel refuses
/// comes back as a typed error naming the message, and leaves the applied rules alone.
#[test]
#[ignore = "needs root"]
fn refusals_are_typed_and_change_nothing() {
    common::require_root();
    let board = Ns::new('r', "b");
    let good = Ruleset { masquerades: vec![masquerade()], services: vec![], masquerade_via: vec![] };
    board.run(|| nft::apply(&good)).unwrap();
    let before = board.run(nft::rule_counts).unwrap();

    let vip = Destination::Address(Ipv4Addr::new(10, 99, 0, 1));
    let empty = Ruleset {
        masquerades: vec![],
        services: vec![Service { destination: vip, proto: L4::Tcp, port: 80, backends: vec![] }],
        masquerade_via: vec![],
    };
    let e = board.run(|| nft::apply(&empty)).unwrap_err();
    assert!(matches!(e, NftError::Invalid(RulesetError::NoBackends(_))), "{e}");
    assert_eq!(e.to_string(), "invalid ruleset: service 10.99.0.1:80/tcp has no backends: give it at least one, or leave it out of the ruleset");
    let backend = SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 2), 80);
    let zero = Ruleset {
        masquerades: vec![],
        services: vec![Service { destination: vip, proto: L4::Udp, port: 0, backends: vec![backend] }],
        masquerade_via: vec![],
    };
    assert!(matches!(board.run(|| nft::apply(&zero)), Err(NftError::Invalid(RulesetError::ZeroPort(_)))));
    assert_eq!(board.run(nft::rule_counts).unwrap(), before, "a refused ruleset changed the kernel's rules");

    // A hand-made batch: replace the table, then add a rule to a chain that does not
    // exist. The kernel refuses that rule, so the whole batch, table deletion included.
    let mut w = BatchWriter::new(1000);
    w.new_table(render::TABLE, nft::wire::NLM_F_CREATE);
    w.del_table(render::TABLE);
    w.new_table(render::TABLE, nft::wire::NLM_F_CREATE);
    let bad = w.rule(render::TABLE, "nosuch", |e| {
        e.masquerade();
    });
    let (bytes, seqs) = w.finish();
    let parts =
        (1001..=bad).map(|seq| render::Part { seq, what: format!("message {seq}"), needs: "" }).collect::<Vec<_>>();
    let batch = render::Rendered { bytes, parts, seqs };
    let e = board.run(|| nft::send(&batch)).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    assert!(e.to_string().starts_with(&format!("the kernel refused message {bad}: ")), "{e}");
    assert_eq!(board.run(nft::rule_counts).unwrap(), before, "a refused batch changed the kernel's rules");

    // A batch larger than the socket's send buffer (net.core.wmem_default, 208 KiB here)
    // is refused whole by the kernel, with a typed error saying what to do.
    let huge = Ruleset {
        masquerades: vec![],
        services: (0..1000u16)
            .map(|i| Service { destination: vip, proto: L4::Tcp, port: 1 + i, backends: vec![backend; 3] })
            .collect(),
        masquerade_via: vec![],
    };
    let e = board.run(|| nft::apply(&huge)).unwrap_err();
    assert!(matches!(e, NftError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("raise net.core.wmem_default or apply fewer services"), "{e}");
    assert_eq!(board.run(nft::rule_counts).unwrap(), before);
}

/// How long one batch of 100 services × 3 backends takes to apply, and its size (also
/// run by docs/networking.md's figures). Replaces it twice to time a replacement too.
#[test]
#[ignore = "needs root"]
fn a_hundred_services_in_one_batch() {
    common::require_root();
    let board = Ns::new('s', "b");
    let services = (0..100u8)
        .map(|i| Service {
            destination: Destination::Address(Ipv4Addr::new(10, 99, 1, i)),
            proto: L4::Tcp,
            port: 80,
            backends: (0..3u8).map(|k| SocketAddrV4::new(Ipv4Addr::new(10, 88, i, 2 + k), 8080)).collect(),
        })
        .collect();
    let rs = Ruleset { masquerades: vec![masquerade()], services, masquerade_via: vec![] };
    let started = Instant::now();
    let rendered = render::render(&rs, 1).unwrap();
    let render_time = started.elapsed();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let applied = board.run(|| nft::apply(&rs)).unwrap();
        times.push(t.elapsed());
        assert_eq!(applied.bytes, rendered.bytes.len());
    }
    let counts = board.run(nft::rule_counts).unwrap();
    assert_eq!(counts.values().sum::<usize>(), 2 + 1 + 100 + 300);
    eprintln!(
        "100 services x 3 backends: {} bytes, {} messages; render {:?}; apply (incl. the thread's setns) first {:?}, then {:?}, {:?}",
        rendered.bytes.len(),
        rendered.parts.len(),
        render_time,
        times[0],
        times[1],
        times[2]
    );
}
