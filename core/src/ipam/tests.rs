use std::collections::HashSet;

use proptest::prelude::*;
use shoal_proto::{text, NodeId, ServiceId, ServiceSpec, TaskId, TaskState, TaskStatus};

use super::*;
use crate::netview;

fn net_id(n: u8) -> NetworkId {
    NetworkId::from_random([n; 16])
}

fn overlay(networks: &[Network], name: &str, subnet: Option<&str>) -> Result<Network, ErrorReply> {
    let mut spec = NetworkSpec::new(text(name).unwrap());
    spec.subnet = subnet.map(|s| Subnet::parse(s).unwrap());
    create_network(networks, spec, net_id(networks.len() as u8 + 10), 0)
}

fn cluster() -> Vec<Network> {
    let mut nets = vec![ingress(net_id(1), 0)];
    let n = overlay(&nets, "myoverlay", None).unwrap();
    nets.push(n);
    nets
}

fn service(n: u8, net: &str, mode: EndpointMode) -> Service {
    let mut spec = ServiceSpec::new(text(&format!("svc{n}")).unwrap(), text("demo/app:1.0").unwrap());
    spec.networks.push(text(net).unwrap()).unwrap();
    spec.endpoint_mode = mode;
    Service {
        id: ServiceId::from_random([n; 16]),
        spec,
        spec_version: 1,
        created_at_ms: 0,
        virtual_ips: BoundedVec::new(),
    }
}

fn task(svc: &Service, n: u8, node: u8, state: TaskState) -> Task {
    Task {
        id: TaskId::from_random([n; 16]),
        service_id: svc.id.clone(),
        slot: u32::from(n),
        node_id: Some(NodeId::from_random([node; 16])),
        spec: svc.spec.task_spec(),
        spec_version: 1,
        desired_state: TaskState::Running,
        status: TaskStatus::new(state, 0, ""),
        created_at_ms: 0,
        networks: BoundedVec::new(),
    }
}

#[test]
fn networks_get_swarms_subnets_and_vnis_and_overlaps_are_refused() {
    let nets = cluster();
    assert_eq!((nets[0].subnet.to_string(), nets[0].vni), ("10.0.0.0/24".into(), 4097));
    assert_eq!(
        (nets[1].subnet.to_string(), nets[1].gateway.to_string(), nets[1].vni),
        ("10.0.1.0/24".into(), "10.0.1.1".into(), 4098)
    );
    let e = overlay(&nets, "other", Some("10.0.0.0/16")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("overlaps network ingress"), "{}", e.message);
    let e = overlay(&nets, "myoverlay", None).unwrap_err();
    assert!(e.message.contains("already exists"), "{}", e.message);
    let custom = overlay(&nets, "custom", Some("192.168.50.0/24")).unwrap();
    assert_eq!(custom.gateway.to_string(), "192.168.50.1");
}

#[test]
fn ingress_and_used_networks_cannot_be_removed() {
    let nets = cluster();
    let svc = service(1, "myoverlay", EndpointMode::Vip);
    assert!(check_remove(&nets[0], &[], &[]).unwrap_err().message.contains("ingress"));
    let e = check_remove(&nets[1], std::slice::from_ref(&svc), &[]).unwrap_err();
    assert!(e.message.contains("in use by service svc1"), "{}", e.message);
    check_remove(&nets[1], &[], &[]).unwrap();
}

#[test]
fn unknown_networks_are_refused_and_vips_follow_the_endpoint_mode() {
    let nets = cluster();
    let mut svc = service(1, "nope", EndpointMode::Vip);
    assert_eq!(assign_vips(&nets, &[], &[], &mut svc).unwrap_err().kind, ErrorKind::NotFound);
    let mut svc = service(1, "myoverlay", EndpointMode::Vip);
    assign_vips(&nets, &[], &[], &mut svc).unwrap();
    assert_eq!(svc.virtual_ips.len(), 1);
    assert_eq!(svc.virtual_ips[0].address.to_string(), "10.0.1.2");
    let kept = svc.virtual_ips.clone();
    assign_vips(&nets, &[], &[], &mut svc).unwrap();
    assert_eq!(svc.virtual_ips, kept, "an update keeps the VIP");
    svc.spec.endpoint_mode = EndpointMode::Dnsrr;
    assign_vips(&nets, &[], &[], &mut svc).unwrap();
    assert!(svc.virtual_ips.is_empty());
}

#[test]
fn the_boards_own_networks_need_no_object_and_take_no_address() {
    let nets = cluster();
    let mut svc = service(1, "host", EndpointMode::Vip);
    assign_vips(&nets, &[], &[], &mut svc).unwrap();
    assert!(svc.virtual_ips.is_empty(), "no VIP on the board's own network");
    assert!(wanted_networks(&svc.spec.task_spec()).is_empty());
    svc.spec.networks.push(text("myoverlay").unwrap()).unwrap();
    let e = assign_vips(&nets, &[], &[], &mut svc).unwrap_err();
    assert!(e.message.contains("can't be combined"), "{}", e.message);
    let mut svc = service(2, "myoverlay", EndpointMode::Vip);
    svc.spec.networks.push(text("myoverlay").unwrap()).unwrap();
    assert!(assign_vips(&nets, &[], &[], &mut svc).unwrap_err().message.contains("given twice"));
    let mut svc = service(3, "ingress", EndpointMode::Vip);
    assert!(assign_vips(&nets, &[], &[], &mut svc).unwrap_err().message.contains("publish a port"));
}

#[test]
fn ended_tasks_give_their_addresses_back_and_live_ones_keep_them() {
    let nets = cluster();
    let by_name: HashMap<&NetworkName, &Network> = nets.iter().map(|n| (&n.spec.name, n)).collect();
    let svc = service(1, "myoverlay", EndpointMode::Dnsrr);
    let mut a = task(&svc, 1, 1, TaskState::Running);
    let mut ipam = Ipam::rebuild(&nets, [&svc], &[]);
    assert!(attach(&mut ipam, &by_name, &mut a));
    assert!(!needs_attach(&by_name, &a));
    assert_eq!(a.networks[0].address.to_string(), "10.0.1.2");
    let mut b = task(&svc, 2, 1, TaskState::Pending);
    let mut ipam = Ipam::rebuild(&nets, [&svc], std::slice::from_ref(&a));
    attach(&mut ipam, &by_name, &mut b);
    assert_eq!(b.networks[0].address.to_string(), "10.0.1.3");
    a.status.state = TaskState::Shutdown;
    let mut c = task(&svc, 3, 2, TaskState::Pending);
    let mut ipam = Ipam::rebuild(&nets, [&svc], &[a, b]);
    attach(&mut ipam, &by_name, &mut c);
    assert_eq!(c.networks[0].address.to_string(), "10.0.1.2", "the ended task's address is free again");
}

#[test]
fn a_full_subnet_leaves_the_task_without_an_address() {
    let mut nets = vec![ingress(net_id(1), 0)];
    nets.push(overlay(&nets, "tiny", Some("10.9.0.0/29")).unwrap());
    let by_name: HashMap<&NetworkName, &Network> = nets.iter().map(|n| (&n.spec.name, n)).collect();
    let svc = service(1, "tiny", EndpointMode::Dnsrr);
    let mut tasks = Vec::new();
    for n in 0..6 {
        let mut t = task(&svc, n, 1, TaskState::Running);
        let mut ipam = Ipam::rebuild(&nets, [&svc], &tasks);
        attach(&mut ipam, &by_name, &mut t);
        tasks.push(t);
    }
    let got: Vec<usize> = tasks.iter().map(|t| t.networks.len()).collect();
    assert_eq!(got, [1, 1, 1, 1, 1, 0], "a /29 holds 5 tasks beside its gateway");
}

/// One random cluster: services on the overlay (some dnsrr), tasks of them on three
/// nodes in random states, addresses given as the pass gives them, one task at a time.
fn arbitrary_cluster() -> impl Strategy<Value = (Vec<Network>, Vec<Service>, Vec<Task>)> {
    let services = prop::collection::vec(any::<bool>(), 1..5);
    let tasks = prop::collection::vec((0usize..5, 1u8..4, 0usize..4), 0..40);
    (services, tasks).prop_map(|(modes, specs)| {
        let nets = cluster();
        let mut services: Vec<Service> = Vec::new();
        for (i, dnsrr) in modes.into_iter().enumerate() {
            let mode = if dnsrr { EndpointMode::Dnsrr } else { EndpointMode::Vip };
            let mut s = service(i as u8 + 1, "myoverlay", mode);
            let others: Vec<&Service> = services.iter().collect();
            assign_vips(&nets, &others, &[], &mut s).unwrap();
            services.push(s);
        }
        let states = [TaskState::Pending, TaskState::Running, TaskState::Running, TaskState::Shutdown];
        let by_name: HashMap<&NetworkName, &Network> = nets.iter().map(|n| (&n.spec.name, n)).collect();
        let mut tasks: Vec<Task> = Vec::new();
        for (n, (svc, node, state)) in specs.into_iter().enumerate() {
            let svc = &services[svc % services.len()];
            let mut t = task(svc, n as u8 + 1, node, TaskState::Pending);
            let mut ipam = Ipam::rebuild(&nets, services.iter(), &tasks);
            attach(&mut ipam, &by_name, &mut t);
            t.status.state = states[state];
            tasks.push(t);
        }
        (nets, services, tasks)
    })
}

proptest! {
    #[test]
    fn no_address_is_held_twice_and_every_running_task_is_named(
        (nets, services, tasks) in arbitrary_cluster()
    ) {
        let mut seen = HashSet::new();
        let held = services.iter().flat_map(|s| s.virtual_ips.iter().map(|v| (v.network_id.clone(), v.address)))
            .chain(tasks.iter().filter(|t| holds_addresses(t))
                .flat_map(|t| t.networks.iter().map(|a| (a.network_id.clone(), a.address))));
        for (net, addr) in held {
            let n = nets.iter().find(|n| n.id == net).unwrap();
            prop_assert!(n.subnet.contains_host(addr) && addr != n.gateway);
            prop_assert!(seen.insert((net, addr)), "{} held twice", addr);
        }

        let underlay: HashMap<NodeId, std::net::IpAddr> =
            (1u8..4).map(|n| (NodeId::from_random([n; 16]), std::net::IpAddr::from([192, 168, 0, n]))).collect();
        let refs: Vec<&Service> = services.iter().collect();
        for node in underlay.keys() {
            let view = netview::node_view(node, &nets, &refs, &tasks, &underlay);
            for v in &view {
                // Every running task is resolvable by name and ID; nothing stale is.
                let running: HashSet<_> = tasks.iter()
                    .filter(|t| t.status.state == TaskState::Running && t.networks.iter().any(|a| a.network_id == v.id))
                    .map(|t| t.id.clone()).collect();
                let named: HashSet<_> = v.tasks.iter().map(|e| e.task_id.clone()).collect();
                prop_assert_eq!(&running, &named);
                for e in v.tasks.iter() {
                    prop_assert_eq!(v.resolve(e.task_id.as_str()), vec![e.address]);
                    prop_assert_eq!(v.resolve(e.name.as_str()), vec![e.address]);
                }
                // Peers are the live tasks elsewhere, never this node's.
                for p in v.peers.iter() {
                    prop_assert_ne!(Some(p.underlay), underlay.get(node).copied());
                }
                let backends = v.vip_backends();
                let balanced = v.tasks.iter().all(|e| {
                    let s = &v.services[usize::from(e.service)];
                    s.vip.is_none_or(|vip| backends.iter().any(|(x, b)| *x == vip && b.contains(&e.address)))
                });
                prop_assert!(balanced, "every running task is a backend of its VIP");
            }
            // After a restart the allocator and the view are rebuilt the same from the records.
            let again = netview::node_view(node, &nets.clone(), &refs, &tasks.clone(), &underlay);
            prop_assert_eq!(view, again);
        }
        let before = Ipam::rebuild(&nets, services.iter(), &tasks);
        let bytes = postcard::to_allocvec(&(&nets, &services, &tasks)).unwrap();
        let (n2, s2, t2): (Vec<Network>, Vec<Service>, Vec<Task>) = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(before, Ipam::rebuild(&n2, s2.iter(), &t2));
    }
}

#[test]
fn a_view_goes_in_chunks_and_an_empty_one_is_still_told() {
    let nets = cluster();
    let by_name: HashMap<&NetworkName, &Network> = nets.iter().map(|n| (&n.spec.name, n)).collect();
    let svc = service(1, "myoverlay", EndpointMode::Dnsrr);
    let mut t = task(&svc, 1, 1, TaskState::Running);
    attach(&mut Ipam::rebuild(&nets, [&svc], &[]), &by_name, &mut t);
    let node = NodeId::from_random([1; 16]);
    let view = netview::node_view(&node, &nets, &[&svc], std::slice::from_ref(&t), &HashMap::new());
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].resolve("svc1"), vec![t.networks[0].address], "dnsrr: the tasks' addresses");
    assert_eq!(view[0].resolve("tasks.svc1"), vec![t.networks[0].address]);
    assert!(view[0].peers.is_empty(), "its own task is no peer");
    let other =
        netview::node_view(&NodeId::from_random([2; 16]), &nets, &[&svc], std::slice::from_ref(&t), &HashMap::new());
    assert!(other.is_empty(), "the network does not exist where none of its tasks runs");
    let five = vec![view[0].clone(); 5];
    let more: Vec<bool> = netview::messages(five)
        .into_iter()
        .map(|m| match m {
            shoal_proto::ManagerMessage::Networks(n) => n.more,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(more, [true, true, false]);
    assert_eq!(netview::messages(Vec::new()).len(), 1, "an empty view is still told");
}

#[test]
fn a_task_that_is_not_healthy_is_neither_named_nor_a_vip_backend() {
    use shoal_proto::health::Health;
    let nets = cluster();
    let by_name: HashMap<&NetworkName, &Network> = nets.iter().map(|n| (&n.spec.name, n)).collect();
    let mut svc = service(1, "myoverlay", EndpointMode::Vip);
    assign_vips(&nets, &[], &[], &mut svc).unwrap();
    let mut tasks = Vec::new();
    for (n, health) in
        [(1, Some(Health::Healthy)), (2, Some(Health::Starting)), (3, Some(Health::Unhealthy)), (4, None)]
    {
        let mut t = task(&svc, n, 1, TaskState::Running);
        t.status.health = health;
        attach(&mut Ipam::rebuild(&nets, [&svc], &tasks), &by_name, &mut t);
        tasks.push(t);
    }
    let node = NodeId::from_random([1; 16]);
    let view = netview::node_view(&node, &nets, &[&svc], &tasks, &HashMap::new());
    let serving = [tasks[0].networks[0].address, tasks[3].networks[0].address];
    let mut named = view[0].resolve("tasks.svc1");
    named.sort();
    assert_eq!(named, serving, "healthy, or without a check");
    let backends = view[0].vip_backends();
    assert_eq!(backends.len(), 1);
    let mut balanced = backends[0].1.clone();
    balanced.sort();
    assert_eq!(balanced, serving);
}
