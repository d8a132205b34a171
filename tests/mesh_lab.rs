//! The lab's task 3 replayed, networked, on real boards (network namespaces) with real
//! containers: an overlay network `atsea`, `database` (redis, DNS round robin, a
//! host-mode port), `appserver` publishing 8000 through the ingress routing mesh. Port
//! 8000 answers on every board while one appserver runs, its page reaches `database` by
//! name, and through scaling, a drain and a power cut the mesh follows: a prober keeps
//! asking every board in the mesh and the longest run of failed requests is measured.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_e2e::{http_get as get, lab_image, wait_for, Cluster};

/// `n` sequential `GET /version` on `addr`: requests/s, p50 and p99 latency.
fn measure(addr: SocketAddr, n: usize) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            if let Err(e) = get(addr, "/version") {
                panic!("a request to {addr} failed while nothing changed: {e}");
            }
            t.elapsed()
        })
        .collect();
    let rps = n as f64 / started.elapsed().as_secs_f64();
    times.sort();
    (rps, times[n / 2], times[n * 99 / 100])
}

/// What the prober saw on one board: the longest run of failures, and when the last
/// failure was.
#[derive(Debug, Default, Clone)]
struct Seen {
    ok: u64,
    failed: u64,
    longest: Duration,
    /// Each run of failures: when it began, how long it lasted.
    windows: Vec<(Instant, Duration)>,
    failing_since: Option<Instant>,
    last_failure: Option<Instant>,
}

/// Asks every board in `targets` for `/version` in turn until `stop`, recording each
/// board's failure windows.
fn probe(targets: Arc<Mutex<Vec<SocketAddr>>>, seen: Arc<Mutex<Vec<(SocketAddr, Seen)>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let now_targets = targets.lock().unwrap().clone();
        for t in now_targets {
            let ok = get(t, "/version").is_ok();
            let now = Instant::now();
            let mut all = seen.lock().unwrap();
            let Some((_, s)) = all.iter_mut().find(|(a, _)| *a == t) else { continue };
            if ok {
                s.ok += 1;
                if let Some(since) = s.failing_since.take() {
                    s.longest = s.longest.max(now - since);
                    s.windows.push((since, now - since));
                }
            } else {
                s.failed += 1;
                s.failing_since.get_or_insert(now);
                s.last_failure = Some(now);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root"]
fn lab_task3_the_routing_mesh_answers_on_every_board_and_follows_the_tasks() {
    let started = Instant::now();
    let mut c = Cluster::start(3).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    m.shoal(&["image", "load", lab_image("redis.tar").to_str().unwrap()]);
    let tag = c.lab.tag().to_owned();
    let (net, db, app) = (format!("{tag}atsea"), "database".to_owned(), "appserver".to_owned());
    m.shoal(&["network", "create", "-d", "overlay", &net]);
    m.shoal(&[
        "service",
        "create",
        "--name",
        &db,
        "--endpoint-mode",
        "dnsrr",
        "--network",
        &net,
        "--publish",
        "mode=host,target=6379",
        "--detach=true",
        "redis",
    ]);
    m.shoal(&[
        "service",
        "create",
        "--name",
        &app,
        "--publish",
        "8000:8000",
        "--network",
        &net,
        "--detach=true",
        "demo/app:1.0",
    ]);
    wait_for("one appserver and the database running", Duration::from_secs(30), || {
        (c.replicas(&app).starts_with("1/1") && c.replicas(&db).starts_with("1/1")).then_some(())
    });
    let ls = m.shoal(&["service", "ls"]);
    assert!(ls.lines().any(|l| l.contains(&app) && l.contains("*:8000->8000/tcp")), "{ls}");

    // Port 8000 on every board, while one appserver runs.
    let boards: Vec<SocketAddr> = (1..=3).map(|i| format!("{}:8000", c.lab.hosts[i].ip).parse().unwrap()).collect();
    let ready_at = Instant::now();
    for b in &boards {
        let v = wait_for(&format!("8000 answering on {b}"), Duration::from_secs(10), || get(*b, "/version").ok());
        assert_eq!(v, "1.0");
    }
    eprintln!("all three boards answered on 8000 within {:?} of the task running", ready_at.elapsed());
    // Through a board that does not run it, the page reaches `database` by name.
    let ps = c.service_ps(&app);
    let on = ps.iter().find(|r| r["CURRENT STATE"].starts_with("Running")).map(|r| r["NODE"].clone()).unwrap();
    let other = (1..=3).find(|i| format!("node{i}") != on).unwrap();
    let page = wait_for("the page reaching the database", Duration::from_secs(10), || {
        get(boards[other - 1], "/cgi-bin/db").ok().filter(|p| p.contains("PONG"))
    });
    eprintln!("through node{other} (appserver on {on}): {page}");
    // `ingress` exists on every board of the mesh, not only where its one task runs.
    let inspect = m.shoal(&["network", "inspect", "ingress"]);
    for i in 1..=3 {
        assert!(inspect.contains(&format!("\"Name\": \"node{i}\"")), "node{i} missing from the peers: {inspect}");
    }

    // A second service on the same ingress port is refused, naming the first; nothing
    // is created.
    let out = m.run("shoal", &["service", "create", "--name", "dup", "--publish", "8000:80", "demo/app:1.0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already published by service appserver"), "{err}");
    assert!(!m.shoal(&["service", "ls"]).contains("dup"));

    // Requests/s and p99, one client, a new connection per request: through the mesh on
    // a board without the task, and host mode on the board with it (a second service
    // with the same image, host-mode port 8001, on that board).
    let host_mode = "apphost";
    m.shoal(&[
        "service",
        "create",
        "--name",
        host_mode,
        "--publish",
        "mode=host,published=8001,target=8000",
        "--constraint",
        &format!("node.hostname=={on}"),
        "--detach=true",
        "demo/app:1.0",
    ]);
    let on_index: usize = on.trim_start_matches("node").parse().unwrap();
    let direct: SocketAddr = format!("{}:8001", c.lab.hosts[on_index].ip).parse().unwrap();
    wait_for("the host-mode copy answering", Duration::from_secs(30), || get(direct, "/version").ok());
    for (what, addr) in [("mesh, board without the task", boards[other - 1]), ("host mode, board with it", direct)] {
        let (rps, p50, p99) = measure(addr, 300);
        eprintln!("{what}: {rps:.0} requests/s, p50 {p50:?}, p99 {p99:?} (300 sequential GETs, one client)");
    }
    m.shoal(&["service", "rm", host_mode]);

    // From here on, every board in the mesh is asked all the time.
    let targets = Arc::new(Mutex::new(boards.clone()));
    let seen = Arc::new(Mutex::new(boards.iter().map(|b| (*b, Seen::default())).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (t, s, st) = (targets.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || probe(t, s, st))
    };

    // Scale to 3.
    m.shoal(&["service", "scale", &format!("{app}=3"), "--detach"]);
    wait_for("3 appservers", Duration::from_secs(30), || c.replicas(&app).starts_with("3/3").then_some(()));
    std::thread::sleep(Duration::from_secs(1));

    // Drain node3: it leaves the mesh (so it is no longer asked), its task moves.
    targets.lock().unwrap().retain(|b| *b != boards[2]);
    m.shoal(&["node", "update", "--availability", "drain", "node3"]);
    wait_for("3 appservers off node3", Duration::from_secs(30), || {
        let ps = c.service_ps(&app);
        (ps.iter().filter(|r| r["CURRENT STATE"].starts_with("Running") && r["NODE"] != "node3").count() == 3)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));

    // Power-cut node2: it is no longer asked; node1 must keep answering.
    targets.lock().unwrap().retain(|b| *b != boards[1]);
    c.power_cut(2);
    let cut_at = Instant::now();
    c.wait_status("node2", "Down", Duration::from_secs(15));
    let down_at = Instant::now();
    wait_for("3 appservers again", Duration::from_secs(30), || c.replicas(&app).starts_with("3/3").then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();

    let seen = seen.lock().unwrap().clone();
    for (b, s) in &seen {
        eprintln!("{b}: {} ok, {} failed, longest failure window {:?}", s.ok, s.failed, s.longest);
    }
    let node1 = &seen[0].1;
    assert!(node1.ok > 0, "node1 was never asked");
    assert!(node1.failing_since.is_none(), "node1 was still failing at the end: {seen:?}");
    eprintln!("node2 power cut → Down in {:?}", down_at - cut_at);
    // Before the cut, nothing failed for longer than 1 s; after it, the failures (to the
    // dead board's backends) stop within 1 s of the manager finding the board Down.
    if let Some(last) = node1.last_failure {
        assert!(
            last <= down_at + Duration::from_secs(1),
            "node1 failed {:?} after node2 was Down: {seen:?}",
            last - down_at
        );
    }
    let before_cut = seen
        .iter()
        .flat_map(|(_, s)| s.windows.iter())
        .filter(|(at, _)| *at < cut_at)
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    eprintln!("longest failure window while scaling and draining: {before_cut:?}");
    assert!(before_cut <= Duration::from_secs(1), "a board failed for {before_cut:?} while scaling or draining");
    eprintln!("wall time {:?}", started.elapsed());
}
