//! `service logs` and health checks end to end, on real boards: lines streamed from two
//! boards at once through the manager, `--tail`, `--since`, stdout and stderr kept
//! apart, `-f` across log rotation and onto tasks that start later, a board going Down
//! mid-stream; and health checks deciding which tasks count as up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_e2e::{http_get as get, lab_image, wait_for, Cluster};

/// The `out N` numbers each task printed in `text` (`name.slot.id@node    | out N ...`).
fn numbers(text: &str) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once("    | ") else { continue };
        let Some(n) = rest.strip_prefix("out ").and_then(|r| r.split_whitespace().next()) else { continue };
        if let Ok(n) = n.parse() {
            out.entry(name.trim().to_owned()).or_default().push(n);
        }
    }
    out
}

#[test]
#[ignore = "needs root"]
fn service_logs_stream_from_every_board_follow_rotation_and_survive_a_board_going_down() {
    let started = Instant::now();
    let mut c = Cluster::start(2).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let svc = format!("{}l", c.lab.tag());
    // About 500 KB/s of stdout per task (the log rotates every ~2 s), a stderr line
    // every 100 lines.
    let pad = "x".repeat(200);
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo \"out $i {pad}\"; \
         if [ $((i % 100)) = 0 ]; then echo \"err $i\" >&2; sleep 0.04; fi; done"
    );
    m.shoal(&["service", "create", "--name", &svc, "--replicas", "2", "demo/app:1.0", "sh", "-c", &script]);
    wait_for("both replicas running", Duration::from_secs(30), || c.replicas(&svc).starts_with("2/2").then_some(()));
    let nodes: Vec<String> = c.service_ps(&svc).iter().map(|r| r["NODE"].clone()).collect();
    assert!(nodes.contains(&"node1".to_owned()) && nodes.contains(&"node2".to_owned()), "spread: {nodes:?}");

    // Follow from now on, both boards at once, while the logs rotate.
    let mut follow = m.spawn("shoal", &["service", "logs", "-f", "--tail", "0", &svc]);

    // --tail of one task, by task name; stdout and stderr apart.
    let out = m.run("shoal", &["service", "logs", "--tail", "300", &format!("{svc}.1")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
    assert_eq!(lines.len(), 300, "--tail 300 of one task");
    assert!(stdout.lines().all(|l| l.contains("| out ")), "only stdout on stdout");
    assert!(stderr.lines().count() >= 1 && stderr.lines().all(|l| l.contains("| err ")), "stderr apart: {stderr}");
    let prefix = lines[0].split("    | ").next().unwrap();
    assert!(prefix.starts_with(&format!("{svc}.1.")) && prefix.ends_with(&format!("@{}", nodes[0])), "{prefix}");
    // The last line may be a stderr one: both outputs together.
    let out = m.run("shoal", &["service", "logs", "--tail", "1", "--no-task-ids", &format!("{svc}.1")]);
    let short = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(short.starts_with(&format!("{svc}.1@")) && short.lines().count() == 1, "{short}");

    // --since: a time in the future gives nothing; one second back only recent lines.
    let future = shoal_proto::time::rfc3339(shoal_link::wall_ms() + 3_600_000);
    let out = m.shoal(&["service", "logs", "--since", &future, &svc]);
    assert!(out.trim().is_empty(), "{out}");
    let since_ms = shoal_link::wall_ms() - 1_000;
    let out = m.run("shoal", &["service", "logs", "-t", "--since", "1s", &svc]);
    let recent = String::from_utf8_lossy(&out.stdout);
    assert!(recent.lines().count() > 10, "lines of the last second");
    for l in recent.lines() {
        let stamp = l.split("    | ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
        // The CLI computed its own `now` a moment after ours.
        assert!(shoal_proto::time::parse_rfc3339(stamp).unwrap() >= since_ms, "{l}");
    }

    // The follow crossed at least one rotation of each log without losing a line.
    wait_for("two rotated logs", Duration::from_secs(20), || {
        let rotated = c.lab.hosts[1..]
            .iter()
            .flat_map(|h| std::fs::read_dir(h.data_dir.join("agent/containers")).into_iter().flatten().flatten())
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with(&format!("{svc}."))
                    && e.path().join("container.log.1").exists()
            })
            .count();
        (rotated >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let seen = numbers(&follow.output());
    assert!(
        seen.keys().any(|k| k.ends_with("@node1")) && seen.keys().any(|k| k.ends_with("@node2")),
        "{:?}",
        seen.keys()
    );
    for (task, ns) in &seen {
        assert!(ns.len() > 500, "{task}: {} lines", ns.len());
        assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "{task}: a gap or a repeat in the followed lines");
    }

    // Board 2 goes down: a warning names it, board 1 goes on, and the task that replaces
    // it on board 1 is picked up by the same follow.
    let on_two = seen.keys().find(|k| k.ends_with("@node2")).unwrap().clone();
    c.power_cut(2);
    let m = c.manager_host();
    wait_for("a warning naming node2", Duration::from_secs(10), || {
        follow.output().lines().any(|l| l.starts_with("warning: node node2")).then_some(())
    });
    let before = numbers(&follow.output());
    wait_for("the replacement streamed, board 1 still streaming", Duration::from_secs(20), || {
        let now = numbers(&follow.output());
        let grown = now.iter().filter(|(k, v)| k.ends_with("@node1") && v.len() > before.get(*k).map_or(0, Vec::len));
        (now.len() > before.len() && grown.count() >= 2).then_some(())
    });
    assert!(numbers(&follow.output())[&on_two].len() <= before[&on_two].len() + 50, "node2 stopped");

    // Ctrl-C ends the follow at once.
    let _ = std::process::Command::new("kill").args(["-INT", &follow.pid().unwrap().to_string()]).status();
    assert_eq!(follow.wait_exit(Duration::from_secs(5)), Some(0));

    // Refusals say what to do.
    let out = m.run("shoal", &["service", "logs", "nosuchservice"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such service or task"));
    let out = m.run("shoal", &["service", "logs", "--since", "yesterday", &svc]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --since"));

    // Every board down: nothing to show, but the warnings say why.
    c.power_cut(1);
    c.wait_status("node1", "Down", Duration::from_secs(10));
    let m = c.manager_host();
    let out = m.run("shoal", &["service", "logs", &svc]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: node node1 is down") && err.contains("warning: node node2 is down"), "{err}");
    m.shoal(&["service", "rm", &svc]);
    eprintln!("logs test took {:?}", started.elapsed());
}

#[test]
#[ignore = "needs root"]
fn health_checks_gate_tasks_and_the_mesh_replace_unhealthy_ones_and_keep_updates_honest() {
    let started = Instant::now();
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-checked.tar").to_str().unwrap()]);
    let svc = format!("{}h", c.lab.tag());
    let state = |svc: &str| -> String {
        m.shoal(&["service", "inspect", "-f", "{{json .UpdateStatus}}", svc])
            .split("\"State\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    let current = |svc: &str| -> Vec<(String, String, String)> {
        c.service_ps(svc)
            .into_iter()
            .map(|r| (r["DESIRED STATE"].clone(), r["CURRENT STATE"].clone(), r["ERROR"].clone()))
            .collect()
    };

    // The routing mesh sends nothing to a task that is not healthy: two replicas whose check
    // passes only once a test has made them ready (a long start period keeps them
    // `starting` meanwhile). Each, once ready, answers /who with its own letter; the
    // other answers 404 there, so any request reaching a task that is not healthy fails.
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let gated = format!("{}g", c.lab.tag());
    let check = ["--health-cmd", "test -e /tmp/ready", "--health-interval", "300ms", "--health-start-period", "5m"];
    let mut args = vec!["service", "create", "--detach", "--name", &gated, "--replicas", "2", "--publish", "8000:8000"];
    args.extend(check);
    args.push("demo/app:1.0");
    m.shoal(&args);
    wait_for("both gated tasks starting", Duration::from_secs(20), || {
        let tasks = current(&gated);
        (tasks.iter().filter(|(d, s, _)| d == "Running" && s.ends_with("(health: starting)")).count() == 2)
            .then_some(())
    });
    let board: SocketAddr = format!("{}:8000", c.lab.hosts[1].ip).parse().unwrap();
    assert!(get(board, "/version").is_err(), "the mesh answered with no healthy task");
    let ready = |slot: &str, letter: &str| {
        let script = format!("echo {letter} > /www/who && touch /tmp/ready");
        m.shoal(&["exec", &format!("{gated}.{slot}"), "sh", "-c", &script]);
    };
    ready("1", "A");
    wait_for("the healthy task answering through the mesh", Duration::from_secs(15), || get(board, "/who").ok());
    for _ in 0..20 {
        assert_eq!(get(board, "/who").as_deref(), Ok("A"), "a request reached the task still starting");
    }
    ready("2", "B");
    wait_for("both tasks answering once both are healthy", Duration::from_secs(15), || {
        let seen: Vec<String> = (0..20).filter_map(|_| get(board, "/who").ok()).collect();
        (seen.iter().any(|w| w == "A") && seen.iter().any(|w| w == "B")).then_some(())
    });
    m.shoal(&["service", "rm", &gated]);

    // The image's own HEALTHCHECK: starting, then healthy, shown by `service ps`.
    m.shoal(&["service", "create", "--detach", "--name", &svc, "--restart-delay", "0s", "demo/app:checked"]);
    wait_for("the task healthy", Duration::from_secs(20), || {
        current(&svc).iter().any(|(d, s, _)| d == "Running" && s.ends_with("(healthy)")).then_some(())
    });
    let inspect = m.shoal(&["service", "inspect", &svc]);
    assert!(!inspect.contains("Healthcheck"), "the image's check is not the spec's: {inspect}");

    // It turns unhealthy: shut down, failed with Docker's error, replaced by a healthy one.
    m.shoal(&["exec", &svc, "touch", "/tmp/sick"]);
    wait_for("the sick task replaced by a healthy one", Duration::from_secs(20), || {
        let tasks = current(&svc);
        let failed = tasks.iter().any(|(_, s, e)| s.starts_with("Failed") && e == "task: unhealthy container");
        let healthy = tasks.iter().any(|(d, s, _)| d == "Running" && s.ends_with("(healthy)"));
        (failed && healthy).then_some(())
    });

    // An update whose new tasks never become healthy pauses (the default failure action)…
    let failing = ["--health-cmd", "exit 1", "--health-interval", "300ms", "--health-retries", "2"];
    let mut args = vec!["service", "update", "--detach", "--update-monitor", "10s"];
    args.extend(failing);
    args.push(&svc);
    m.shoal(&args);
    wait_for("the update paused", Duration::from_secs(20), || (state(&svc) == "paused").then_some(()));
    let inspect = m.shoal(&["service", "inspect", &svc]);
    assert!(inspect.contains("\"CMD-SHELL\"") && inspect.contains("\"exit 1\""), "{inspect}");
    // …and a rollback brings the image's check back.
    m.shoal(&["service", "update", "--detach", "--rollback", &svc]);
    wait_for("rolled back and healthy", Duration::from_secs(30), || {
        let healthy = current(&svc).iter().any(|(d, s, _)| d == "Running" && s.ends_with("(healthy)"));
        (state(&svc) == "rollback_completed" && healthy).then_some(())
    });

    // With --update-failure-action rollback, the same update rolls itself back.
    let mut args =
        vec!["service", "update", "--detach", "--update-monitor", "10s", "--update-failure-action", "rollback"];
    args.extend(failing);
    args.push(&svc);
    m.shoal(&args);
    wait_for("rolled back by itself", Duration::from_secs(30), || {
        let healthy = current(&svc).iter().any(|(d, s, _)| d == "Running" && s.ends_with("(healthy)"));
        (state(&svc) == "rollback_completed" && healthy).then_some(())
    });
    assert!(!m.shoal(&["service", "inspect", &svc]).contains("\"exit 1\""), "the failing check is gone");
    m.shoal(&["service", "rm", &svc]);
    eprintln!("health test took {:?}", started.elapsed());
}
