//! The routing mesh's part of the pure core: boards' ingress addresses, clashing
//! published ports, and each board's view of `ingress`.

use std::collections::{BTreeMap, HashMap};

use shoal_proto::{text, NodeId, PortConfig, ServiceId, ServiceSpec, TaskId, TaskState, TaskStatus};

use super::*;
use crate::netview;

fn node(n: u8) -> NodeId {
    NodeId::from_random([n; 16])
}

fn web(n: u8, publish: &str) -> Service {
    let mut spec = ServiceSpec::new(text(&format!("web{n}")).unwrap(), text("demo/app:1.0").unwrap());
    spec.ports.push(PortConfig::parse(publish).unwrap()).unwrap();
    Service {
        id: ServiceId::from_random([n; 16]),
        spec,
        spec_version: 1,
        created_at_ms: 0,
        virtual_ips: BoundedVec::new(),
    }
}

fn running(svc: &Service, n: u8, on: u8, address: Ipv4Addr, ingress: &Network) -> Task {
    let mut networks = BoundedVec::new();
    networks.push(NetworkAttachment { network_id: ingress.id.clone(), address }).unwrap();
    Task {
        id: TaskId::from_random([n; 16]),
        service_id: svc.id.clone(),
        slot: u32::from(n),
        node_id: Some(node(on)),
        spec: svc.spec.task_spec(),
        spec_version: 1,
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::Running, 0, ""),
        created_at_ms: 0,
        networks,
    }
}

#[test]
fn boards_get_addresses_from_the_top_never_one_held_and_tasks_never_get_theirs() {
    let ingress = ingress(NetworkId::from_random([1; 16]), 0);
    let svc = web(1, "8000:8000");
    let task = running(&svc, 1, 1, Ipv4Addr::new(10, 0, 0, 254), &ingress);
    let held = [Ipv4Addr::new(10, 0, 0, 253)];
    let got = board_addresses(&ingress, &[&svc], std::slice::from_ref(&task), &held, &[node(1), node(2)]);
    // .254 is a task's, .253 a board's already: the next free ones from the top.
    assert_eq!(got, vec![(node(1), Ipv4Addr::new(10, 0, 0, 252)), (node(2), Ipv4Addr::new(10, 0, 0, 251))]);
    // The same records give the same answer (a restarted manager).
    assert_eq!(got, board_addresses(&ingress, &[&svc], &[task], &held, &[node(1), node(2)]));
    // A task is never given a board's address, even when the subnet is nearly full.
    let nets = vec![ingress.clone()];
    let mut ipam = Ipam::rebuild(&nets, [&svc], &[]);
    let boards: Vec<Ipv4Addr> = (2..=254).map(|d| Ipv4Addr::new(10, 0, 0, d)).collect();
    ipam.take_boards(&ingress.id, boards.iter().copied());
    assert_eq!(ipam.allocate(&ingress.id), None);
}

#[test]
fn ingress_ports_clash_with_any_other_services_port_of_the_same_number() {
    let a = web(1, "8000:80");
    let b = web(2, "8000:8080");
    let e = check_published(&[&a], &b).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("port 8000/tcp is already published by service web1 (mode ingress)"), "{}", e.message);
    // Host mode against ingress, both ways.
    let host = web(3, "mode=host,published=8000,target=80");
    assert!(check_published(&[&a], &host).unwrap_err().message.contains("web1"));
    assert!(check_published(&[&host], &a).unwrap_err().message.contains("web3 (mode host)"));
    // Two host-mode ports only clash per board (the scheduler's business); another
    // protocol or port is fine; a service does not clash with itself.
    let host2 = web(4, "mode=host,published=8000,target=81");
    check_published(&[&host], &host2).unwrap();
    check_published(&[&a], &web(5, "8000:80/udp")).unwrap();
    check_published(&[&a], &web(6, "8001:80")).unwrap();
    check_published(&[&a], &a).unwrap();
    // assign_vips refuses it too, changing nothing.
    let nets = vec![ingress(NetworkId::from_random([1; 16]), 0)];
    let mut b2 = b.clone();
    assert!(assign_vips(&nets, &[&a], &[], &mut b2).is_err());
    assert_eq!(b2, b);
}

#[test]
fn a_mesh_board_sees_ingress_with_its_address_the_other_boards_and_the_ports() {
    let ingress = ingress(NetworkId::from_random([1; 16]), 0);
    let nets = vec![ingress.clone()];
    let svc = web(1, "8000:80");
    let tasks = vec![running(&svc, 1, 1, Ipv4Addr::new(10, 0, 0, 3), &ingress)];
    let underlay: HashMap<NodeId, std::net::IpAddr> =
        (1..=3).map(|n| (node(n), std::net::IpAddr::from([192, 168, 1, n]))).collect();
    let boards: BTreeMap<NodeId, Ipv4Addr> = (1..=3).map(|n| (node(n), Ipv4Addr::new(10, 0, 0, 255 - n))).collect();
    let view_of = |n: u8, boards: &BTreeMap<NodeId, Ipv4Addr>| {
        let v = netview::node_view(&node(n), &nets, &[&svc], &tasks, &underlay);
        netview::with_mesh(&node(n), v, &nets, &[&svc], &tasks, &underlay, boards)
    };

    // Board 2 runs no task of it and still has ingress.
    let v = view_of(2, &boards);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].board_address, Some(Ipv4Addr::new(10, 0, 0, 253)));
    let peers: Vec<Ipv4Addr> = v[0].peers.iter().map(|p| p.address).collect();
    assert_eq!(peers, [Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(10, 0, 0, 252), Ipv4Addr::new(10, 0, 0, 254)]);
    assert_eq!(v[0].published.len(), 1);
    let p = &v[0].published[0];
    assert_eq!((p.published, p.backends.len()), (8000, 1));
    assert_eq!((p.backends[0].address, p.backends[0].port), (Ipv4Addr::new(10, 0, 0, 3), 80));

    // Board 1 runs it: its own view of ingress, with the mesh added.
    let v = view_of(1, &boards);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].board_address, Some(Ipv4Addr::new(10, 0, 0, 254)));
    assert!(v[0].peers.iter().all(|p| p.address != Ipv4Addr::new(10, 0, 0, 3)));

    // A board out of the mesh (drained, down) has no ingress without a task of it.
    let mut without = boards.clone();
    without.remove(&node(2));
    assert!(view_of(2, &without).is_empty());
    // The others stop sending replies its way.
    assert!(view_of(3, &without)[0].peers.iter().all(|p| p.address != Ipv4Addr::new(10, 0, 0, 253)));

    // The task stops: no backend left, the port stays listed and matches nothing.
    let mut stopped = tasks.clone();
    stopped[0].status = TaskStatus::new(TaskState::Shutdown, 0, "");
    let v = netview::with_mesh(&node(2), Vec::new(), &nets, &[&svc], &stopped, &underlay, &boards);
    assert!(v[0].published[0].backends.is_empty());

    // A running task with a health check is a backend only while healthy.
    let backends = |health: Option<shoal_proto::health::Health>| {
        let mut checked = tasks.clone();
        checked[0].status.health = health;
        let v = netview::with_mesh(&node(2), Vec::new(), &nets, &[&svc], &checked, &underlay, &boards);
        v[0].published[0].backends.len()
    };
    use shoal_proto::health::Health;
    assert_eq!(backends(Some(Health::Starting)), 0);
    assert_eq!(backends(Some(Health::Unhealthy)), 0);
    assert_eq!(backends(Some(Health::Healthy)), 1);
    assert_eq!(backends(None), 1);
}

#[test]
fn without_an_ingress_port_nothing_is_meshed() {
    let svc = web(1, "mode=host,published=8000,target=80");
    assert!(!mesh_active([&svc]));
    assert!(mesh_active([&web(2, "8000:80")]));
}

#[test]
fn an_ingress_port_without_a_published_one_gets_one_from_30000_kept_across_updates() {
    let taken = web(1, "30000:80");
    let mut s = web(2, "80");
    allocate_ingress_ports(&[&taken], None, &mut s).unwrap();
    assert_eq!(s.spec.ports[0].published, Some(30001));
    // An update that still leaves it out keeps the same port.
    let mut next = web(2, "80");
    let other = web(3, "8080");
    allocate_ingress_ports(&[&taken, &other], Some(&s), &mut next).unwrap();
    assert_eq!(next.spec.ports[0].published, Some(30001));
    // Host mode is the board's business; a given port is left as it is.
    let mut host = web(4, "mode=host,target=80");
    allocate_ingress_ports(&[], None, &mut host).unwrap();
    assert_eq!(host.spec.ports[0].published, None);
    // The range exhausted: refused, saying what to do.
    let all: Vec<Service> = (0..=2767u16).map(|i| web(9, &format!("{}:80", 30000 + i))).collect();
    let refs: Vec<&Service> = all.iter().collect();
    let e = allocate_ingress_ports(&refs, None, &mut web(5, "80")).unwrap_err();
    assert!(e.message.contains("--publish PUBLISHED:TARGET"), "{}", e.message);
}
