//! `shoal exec` end to end: the CLI on the manager's host, the command in a container on
//! a board in another network namespace, through the manager. Output, input, exit codes
//! and refusals, and the exec'd process confined like the container itself.

use std::time::Duration;

use shoal_e2e::{lab_image, wait_for, Cluster};

#[test]
#[ignore = "needs root"]
fn exec_runs_in_the_container_and_passes_output_input_and_exit_codes() {
    let c = Cluster::start(2).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let svc = format!("{}x", c.lab.tag());
    m.shoal(&["service", "create", "--name", &svc, "--replicas", "2", "demo/app:1.0"]);
    wait_for("both replicas running", Duration::from_secs(30), || c.replicas(&svc).starts_with("2/2").then_some(()));

    // Output and the exit code, by service name, task name and container name.
    let out = m.run("shoal", &["exec", &svc, "echo", "hello from the container"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the container\n");
    let out = m.run("shoal", &["exec", &format!("{svc}.2"), "sh", "-c", "echo to-stderr >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    // It runs where the container runs: its hostname, its network, its root.
    let out = m.shoal(&["exec", &format!("{svc}.1"), "cat", "/etc/hostname"]);
    assert!(!out.trim().is_empty());
    let out = m.shoal(&["exec", &svc, "ls", "/"]);
    assert!(out.contains("bin"), "{out}");

    // Input with -i, several chunks, end of file reaching the command.
    let input: Vec<u8> = (0..200_000u32).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    let out = m.run_with_input("shoal", &["exec", "-i", &svc, "wc", "-l"], &input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200000");

    // Confined as the container is: its seccomp filter, no new privileges.
    let status = m.shoal(&["exec", &svc, "cat", "/proc/self/status"]);
    assert!(status.lines().any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')), "{status}");
    assert!(status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.trim_end().ends_with('1')), "{status}");

    // Refusals: no such target, no such command, a task that does not run.
    let out = m.run("shoal", &["exec", "nosuchservice", "true"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such service"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = m.run("shoal", &["exec", &svc, "/no/such/binary"]);
    assert_ne!(out.status.code(), Some(0));
    m.shoal(&["service", "scale", &format!("{svc}=1")]);
    wait_for("one replica", Duration::from_secs(30), || c.replicas(&svc).starts_with("1/1").then_some(()));
    let out = m.run("shoal", &["exec", &format!("{svc}.2"), "true"]);
    assert_eq!(out.status.code(), Some(126));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running") || err.contains("no such"), "{err}");
    m.shoal(&["service", "rm", &svc]);
}

#[test]
#[ignore = "needs root"]
fn a_killed_cli_stops_its_command_on_the_board() {
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let svc = format!("{}k", c.lab.tag());
    m.shoal(&["service", "create", "--name", &svc, "demo/app:1.0"]);
    wait_for("the replica running", Duration::from_secs(30), || c.replicas(&svc).starts_with("1/1").then_some(()));
    // A command that prints nothing and would run for ten minutes.
    let marker = "597";
    let mut cli = m.spawn("shoal", &["exec", &svc, "sleep", marker]);
    let sleeping = || {
        let out = m.run("shoal", &["exec", &svc, "ps"]);
        // PID, USER, then the command line: the sleep itself, not the exec-in parent.
        let wanted = format!("sleep {marker}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().filter(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" ") == wanted).count()
    };
    wait_for("the exec'd sleep running", Duration::from_secs(10), || (sleeping() == 1).then_some(()));
    cli.kill9();
    // A CLI killed with SIGKILL says nothing: the manager notices through QUIC's idle
    // timeout (10 s), then resets the stream to the board, which kills the command.
    let killed = std::time::Instant::now();
    wait_for("the exec'd sleep gone after its CLI was killed", Duration::from_secs(25), || {
        (sleeping() == 0).then_some(())
    });
    eprintln!("the exec'd command ended {:?} after its CLI was killed", killed.elapsed());

    // Interrupted (Ctrl-C, SIGTERM): the CLI tells the manager, and the command goes at once.
    let mut cli = m.spawn("shoal", &["exec", &svc, "sleep", marker]);
    wait_for("the exec'd sleep running again", Duration::from_secs(10), || (sleeping() == 1).then_some(()));
    let _ = std::process::Command::new("kill").args(["-INT", &cli.pid().unwrap().to_string()]).status();
    let interrupted = std::time::Instant::now();
    assert_eq!(cli.wait_exit(Duration::from_secs(5)), Some(130));
    wait_for("the exec'd sleep gone after Ctrl-C", Duration::from_secs(3), || (sleeping() == 0).then_some(()));
    eprintln!("the exec'd command ended {:?} after Ctrl-C", interrupted.elapsed());
    m.shoal(&["service", "rm", &svc]);
}
