//! The container resolver over real UDP sockets on loopback: cluster names answered,
//! other names relayed to an upstream (a stand-in on loopback), strangers refused, and
//! the answer latency measured.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use shoal_agent::net::dns::names::Names;
use shoal_agent::net::dns::{wire, Resolver};

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

/// The A records of an answer (after the echoed question).
fn addresses(answer: &[u8], question_len: usize) -> Vec<Ipv4Addr> {
    let count = u16::from_be_bytes([answer[6], answer[7]]) as usize;
    let mut at = 12 + question_len;
    (0..count)
        .map(|_| {
            let ip = Ipv4Addr::new(answer[at + 12], answer[at + 13], answer[at + 14], answer[at + 15]);
            at += 16;
            ip
        })
        .collect()
}

fn ask(client: &UdpSocket, to: SocketAddr, id: u16, name: &str) -> Vec<u8> {
    client.send_to(&query(id, name), to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = client.recv_from(&mut buf).expect("an answer");
    buf[..n].to_vec()
}

#[test]
fn cluster_names_forwarding_refusal_and_latency() {
    // A stand-in upstream: answers every query with its ID and one fixed address.
    let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = upstream.recv_from(&mut buf) {
            let q = wire::parse_query(&buf[..n]).unwrap();
            let _ = upstream.send_to(&wire::answer(&q, wire::Rcode::NoError, &[Ipv4Addr::new(192, 0, 2, 7)], 60), from);
        }
    });

    let resolver = Resolver::new(vec![upstream_addr]);
    let mut names = Names::default();
    names.add_service("atsea", "database", None);
    names.add_task("atsea", "database", "database.1.x1", "x1", Ipv4Addr::new(10, 0, 1, 4));
    names.add_service("atsea", "appserver", Some(Ipv4Addr::new(10, 0, 1, 100)));
    resolver.set_names(names);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let addr = socket.local_addr().unwrap();
    let serving = resolver.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
            let _ = serving.serve(socket).await;
        })
    });

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // Not a known container yet: refused.
    let a = ask(&client, addr, 1, "database");
    assert_eq!(a[3] & 0xf, 5);

    resolver.set_client(Ipv4Addr::LOCALHOST, vec!["atsea".into()]);
    let a = ask(&client, addr, 2, "database");
    assert_eq!((a[3] & 0xf, addresses(&a, 14)), (0, vec![Ipv4Addr::new(10, 0, 1, 4)]));
    let a = ask(&client, addr, 3, "appserver");
    assert_eq!(addresses(&a, 15), vec![Ipv4Addr::new(10, 0, 1, 100)]);
    let a = ask(&client, addr, 4, "example.org");
    assert_eq!((u16::from_be_bytes([a[0], a[1]]), addresses(&a, 17)), (4, vec![Ipv4Addr::new(192, 0, 2, 7)]));
    let a = ask(&client, addr, 5, "nosuchname");
    assert_eq!(a[3] & 0xf, 3);

    // A task leaves: its name goes with the next set of names.
    resolver.set_names(Names::default());
    let a = ask(&client, addr, 6, "database");
    assert_eq!(a[3] & 0xf, 3);

    // Latency of cluster answers, one query at a time.
    let mut names = Names::default();
    names.add_service("atsea", "database", None);
    names.add_task("atsea", "database", "database.1.x1", "x1", Ipv4Addr::new(10, 0, 1, 4));
    resolver.set_names(names);
    let mut times: Vec<Duration> = (0..2000)
        .map(|i| {
            let t = Instant::now();
            let a = ask(&client, addr, i, "database");
            assert_eq!(u16::from_be_bytes([a[0], a[1]]), i);
            t.elapsed()
        })
        .collect();
    times.sort();
    let p50 = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    eprintln!("cluster name answers over loopback: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}: the resolver is stuck somewhere");
}
