//! Secrets, configs and stacks end to end, on one cluster of real boards (network
//! namespaces) with real containers, in one test to keep CI short:
//!
//! - a secret readable at `/run/secrets/…` in the container, from a tmpfs, its bytes on
//!   no board's disk (every file of every data dir searched) nor in the manager's store
//!   in the clear; a config at its target; removal in use refused, naming the service;
//!   rotation (`secret update`) rolling the service to the new bytes; the bytes gone
//!   from the board when the service's last task stops;
//! - `stack deploy` of the lab's application (`examples/lab/docker-compose.yml`, plus a
//!   second file adding a secret and a config): the page reaches `database` by its short
//!   name; a re-deploy with one changed service updates only that one; `stack rm`
//!   removes its services, network, secret and config.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_e2e::{http_get as get, lab_image, wait_for, Cluster};

/// Every regular file under `dir` (not following links, not entering other mounts'
/// tmpfs: the data dir holds none) whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                if let Ok(bytes) = std::fs::read(e.path()) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(e.path().display().to_string());
                    }
                }
            }
        }
    }
    found
}

/// The host's mount points under `/run/shoal/secrets-*` (the containers' secret tmpfs)
/// of containers whose name starts with `prefix`.
fn secret_mounts(prefix: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with("/run/shoal/secrets-") && p.rsplit('/').next().is_some_and(|c| c.starts_with(prefix)))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root"]
fn secrets_configs_and_stacks_on_real_boards() {
    let started = Instant::now();
    let (app1, app3, redis) = (lab_image("demo-app-1.0.tar"), lab_image("demo-app-3.0.tar"), lab_image("redis.tar"));
    let c = Cluster::start(2).unwrap();
    let m = c.manager_host();
    for image in [&app1, &app3, &redis] {
        m.shoal(&["image", "load", image.to_str().unwrap()]);
    }
    let tag = c.lab.tag().to_owned();
    let scratch = c.lab.dir.join("stack");
    std::fs::create_dir_all(&scratch).unwrap();
    let conf_file = scratch.join("app.conf");
    std::fs::write(&conf_file, "listen 8000\n").unwrap();

    // --- Secrets and configs.
    let (pw, svc) = (format!("{tag}pw"), format!("{tag}sec"));
    let first = format!("first-{tag}-s3cret");
    let out = m.run_with_input("shoal", &["secret", "create", &pw, "-"], first.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    m.shoal(&["config", "create", &format!("{tag}conf"), conf_file.to_str().unwrap()]);
    m.shoal(&[
        "service",
        "create",
        "--name",
        &svc,
        "--secret",
        &pw,
        "--secret",
        &format!("source={pw},target=alt,mode=0400"),
        "--config",
        &format!("source={tag}conf,target=/etc/app.conf,mode=0440"),
        // On node1 always: the agent restart below must be the board of the next task.
        "--constraint",
        "node.hostname==node1",
        "demo/app:1.0",
    ]);
    let exec = |args: &[&str]| -> Option<String> {
        let out = m.run("shoal", &[&["exec", svc.as_str()], args].concat());
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let seen = wait_for("the secret in the container", Duration::from_secs(10), || {
        exec(&["cat", &format!("/run/secrets/{pw}")])
    });
    assert_eq!(seen, first);
    assert_eq!(exec(&["cat", "/run/secrets/alt"]).unwrap(), first);
    assert_eq!(exec(&["stat", "-c", "%a", "/run/secrets/alt"]).unwrap().trim(), "400");
    assert_eq!(exec(&["cat", "/etc/app.conf"]).unwrap(), "listen 8000\n");
    let mounts = exec(&["cat", "/proc/mounts"]).unwrap();
    assert!(
        mounts.lines().any(|l| l.contains(" /run/secrets tmpfs ") && l.contains("ro,")),
        "/run/secrets is not a read-only tmpfs: {mounts}"
    );
    assert_eq!(secret_mounts(&tag).len(), 1, "one tmpfs, the running container's");
    for h in &c.lab.hosts {
        let found = files_holding(&h.data_dir, first.as_bytes());
        assert!(found.is_empty(), "the secret's bytes are on {}'s disk: {found:?}", h.ns);
    }
    let inspect = m.shoal(&["service", "inspect", &svc]);
    assert!(inspect.contains(&pw) && !inspect.contains(&first), "{inspect}");

    // Removal in use is refused, naming the service.
    let out = m.run("shoal", &["secret", "rm", &pw]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use") && err.contains(&svc), "{err}");

    // Rotation rolls the service to the new bytes.
    let second = format!("second-{tag}-s3cret");
    let out = m.run_with_input("shoal", &["secret", "update", &pw, "-"], second.as_bytes());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("version 2") && said.contains(&svc), "{said}");
    let rolled = Instant::now();
    wait_for("the rotated secret in the container", Duration::from_secs(15), || {
        exec(&["cat", &format!("/run/secrets/{pw}")]).filter(|s| *s == second)
    });
    let rotation = rolled.elapsed();

    // After an agent restart (memory gone) its board gets the secrets again: the next
    // rotation's task there reads the new bytes.
    let (node, board) = ("node1", 1);
    let pid = c.agents[board - 1].pid().expect("the agent runs").to_string();
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let _restarted = c.lab.hosts[board].spawn("shoal-agent", &["run"]);
    c.wait_status(node, "Ready", Duration::from_secs(10));
    let third = format!("third-{tag}-s3cret");
    let out = m.run_with_input("shoal", &["secret", "update", &pw, "-"], third.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the secret after an agent restart", Duration::from_secs(15), || {
        exec(&["cat", &format!("/run/secrets/{pw}")]).filter(|s| *s == third)
    });

    // The last task stops: the bytes leave the board.
    m.shoal(&["service", "rm", &svc]);
    wait_for("the secret tmpfs to go", Duration::from_secs(15), || secret_mounts(&tag).is_empty().then_some(()));
    m.shoal(&["secret", "rm", &pw]);
    m.shoal(&["config", "rm", &format!("{tag}conf")]);

    // --- Stacks: the lab's application, plus a secret and a config from a second file.
    let lab_file = scratch.join("docker-compose.yml");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let extra = scratch.join("extra.yml");
    std::fs::write(
        &extra,
        "services:\n  appserver:\n    secrets: [api_key]\n    configs:\n      - {source: app_conf, target: /etc/app.conf}\n\
         secrets:\n  api_key: {file: ./api_key.txt}\nconfigs:\n  app_conf: {file: ./app.conf}\n",
    )
    .unwrap();
    std::fs::write(scratch.join("api_key.txt"), format!("key-{tag}")).unwrap();
    let stack = tag.as_str();
    let template = std::fs::read_to_string(repo.join("examples/lab/docker-compose.yml")).unwrap();
    let deploy = |version: &str| {
        // The file's own `${APP_VERSION:-1.0}` default, changed: interpolation at work.
        std::fs::write(&lab_file, template.replace("${APP_VERSION:-1.0}", &format!("${{APP_VERSION:-{version}}}")))
            .unwrap();
        let (lab, extra) = (lab_file.to_str().unwrap(), extra.to_str().unwrap());
        let out = m.run("shoal", &["stack", "deploy", "-c", lab, "-c", extra, stack]);
        assert!(out.status.success(), "stack deploy: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stack_started = Instant::now();
    let said = deploy("1.0");
    let (db, app) = (format!("{stack}_database"), format!("{stack}_appserver"));
    for what in [
        format!("network {stack}_atsea"),
        format!("service {db}"),
        format!("service {app}"),
        format!("secret {stack}_api_key"),
    ] {
        assert!(said.contains(&format!("Creating {what}")), "{said}");
    }
    let board: SocketAddr = format!("{}:8000", c.lab.hosts[1].ip).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let got = get(board, "/cgi-bin/db");
        match got {
            Ok(b) if b.contains("+PONG") => break b,
            other if Instant::now() > deadline => {
                panic!("the stack's page did not reach database: {other:?}\n{}", m.shoal(&["stack", "ps", stack]))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(page.contains("database"), "{page}");
    let deployed = stack_started.elapsed();
    let ls = m.shoal(&["stack", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with(stack) && l.contains(" 2 ")), "{ls}");
    assert_eq!(m.shoal(&["stack", "services", "-q", stack]).lines().count(), 2);
    let ps = m.shoal(&["stack", "ps", stack]);
    assert!(ps.contains(&format!("{db}.1")) && ps.contains(&format!("{app}.1")), "{ps}");
    let db_task = |c: &Cluster| c.service_ps(&db).into_iter().next().map(|r| r["ID"].clone()).unwrap();
    let db_before = db_task(&c);

    // Re-deploy with one changed service: only it is updated.
    let said = deploy("3.0");
    assert!(said.contains(&format!("Updating service {app}")) && !said.contains(&db), "{said}");
    wait_for("appserver 3.0", Duration::from_secs(20), || get(board, "/version").ok().filter(|b| b.contains("3.0")));
    assert_eq!(db_task(&c), db_before, "database was not touched");
    let said = deploy("3.0");
    assert!(!said.contains("Updating"), "nothing changed, nothing updated: {said}");

    // rm removes services, network, secret and config.
    m.shoal(&["stack", "rm", stack]);
    assert!(m.shoal(&["service", "ls"]).lines().all(|l| !l.contains(stack)));
    assert!(!m.shoal(&["network", "ls"]).contains(&format!("{stack}_atsea")));
    assert!(!m.shoal(&["secret", "ls"]).contains(stack));
    assert!(!m.shoal(&["config", "ls"]).contains(stack));
    eprintln!(
        "secrets and stacks: rotation rolled in {rotation:?}; the lab's stack answered {deployed:?} after deploy; \
         the whole test took {:?}",
        started.elapsed()
    );
}
