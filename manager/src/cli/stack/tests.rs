//! Compose parsing, interpolation, merging and diffing, without a manager.

use std::path::PathBuf;

use shoal_proto::dispatch::ServiceView;
use shoal_proto::{EndpointMode, PublishMode, Service, ServiceId, ServiceMode};

use super::compose::{self, interpolate, Plan};
use super::*;

fn env(k: &str) -> Option<String> {
    match k {
        "TAG" => Some("2.0".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn no_files(p: &str) -> Result<String, String> {
    match p {
        "app.env" => Ok("# comment\nMODE=prod\n\nLEVEL=debug\n".into()),
        _ => Err("no such file".into()),
    }
}

fn plan(text: &str) -> Result<Plan, compose::ComposeError> {
    let mut doc = compose::parse("stack.yml", text)?;
    compose::interpolate_all(&mut doc, &env, "").map_err(|(path, message)| compose::ComposeError {
        file: "stack.yml".into(),
        line: compose::locate(text, &path),
        path,
        message,
    })?;
    compose::Reader::new("stack.yml", "lab", &no_files).plan(&doc)
}

#[test]
fn interpolation_follows_compose() {
    let i = |s: &str| interpolate(s, &env);
    assert_eq!(i("app:${TAG}").unwrap(), "app:2.0");
    assert_eq!(i("app:$TAG-x").unwrap(), "app:2.0-x");
    assert_eq!(i("${NOPE:-1.0}").unwrap(), "1.0");
    assert_eq!(i("${EMPTY:-d}").unwrap(), "d", ":- takes the default for an empty value");
    assert_eq!(i("${EMPTY-d}").unwrap(), "", "- only for an unset one");
    assert_eq!(i("${NOPE-${TAG}}").unwrap(), "2.0");
    assert_eq!(i("cost $$5").unwrap(), "cost $5");
    assert_eq!(i("${NOPE}").unwrap(), "");
    assert!(i("${NOPE:?set it}").unwrap_err().contains("NOPE is required: set it"));
    assert!(i("${TAG").unwrap_err().contains("unclosed"));
    assert!(i("${:-x}").is_err());
}

#[test]
fn the_lab_file_plans_the_labs_application() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/lab/docker-compose.yml");
    let p = plan_files("lab", &[file], &|_| None).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let db = &p.services["lab_database"];
    assert_eq!(db.endpoint_mode, EndpointMode::Dnsrr);
    assert_eq!(db.networks.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["lab_atsea"]);
    let app = &p.services["lab_appserver"];
    assert_eq!(app.image.as_str(), "demo/app:1.0");
    assert_eq!(app.mode, ServiceMode::Replicated { replicas: 1 });
    assert_eq!(
        (app.ports[0].published, app.ports[0].target, app.ports[0].mode),
        (Some(8000), 8000, PublishMode::Ingress)
    );
    assert_eq!(app.env.iter().map(|e| e.to_string()).collect::<Vec<_>>(), ["DB_HOST=database"]);
    assert_eq!(app.update_config.delay_ms, 2000);
    assert!(in_stack(&app.labels, "lab") && !in_stack(&app.labels, "other"));
    assert_eq!(p.networks.len(), 1);
    let net = p.networks[0].spec.as_ref().unwrap();
    assert_eq!(net.name.as_str(), "lab_atsea");
    assert!(in_stack(&net.labels, "lab"));
    let v2 = plan_files(
        "lab",
        &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/lab/docker-compose.yml")],
        &|k| (k == "APP_VERSION").then(|| "3.0".into()),
    )
    .unwrap();
    assert_eq!(v2.services["lab_appserver"].image.as_str(), "demo/app:3.0");
}

const FULL: &str = r#"
version: "3.9"
services:
  web:
    image: demo/app:${TAG}
    command: sh -c "echo 'hi there'; sleep 9"
    env_file: app.env
    environment:
      - LEVEL=info
    ports:
      - target: 80
        published: 8080
        protocol: udp
        mode: host
      - "9000"
    secrets:
      - db_pw
      - source: api_key
        target: key
        uid: "70"
        mode: 0400
    configs:
      - source: conf
        target: /etc/app.conf
    healthcheck:
      test: ["CMD", "true"]
    build: .
    deploy:
      mode: global
      placement:
        constraints: [node.labels.zone==eu]
      resources:
        limits: {cpus: "0.5", memory: 64M}
        reservations: {memory: 32M}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3}
      update_config: {parallelism: 2, order: start-first, max_failure_ratio: 0.25}
      labels: {team: edge}
  db:
    image: redis
    networks: [back, ext]
networks:
  back:
    driver_opts: {encrypted: "true"}
  ext:
    external: true
    name: shared
secrets:
  db_pw: {file: ./pw.txt}
  api_key: {external: true}
configs:
  conf: {file: app.conf}
volumes:
  data: {}
"#;

#[test]
fn every_supported_key_lands_in_the_spec() {
    let p = plan(FULL).unwrap();
    let web = &p.services["lab_web"];
    assert_eq!(web.image.as_str(), "demo/app:2.0");
    assert_eq!(web.args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["sh", "-c", "echo 'hi there'; sleep 9"]);
    assert_eq!(web.env.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["MODE=prod", "LEVEL=debug", "LEVEL=info"]);
    assert_eq!(web.ports.len(), 2);
    assert_eq!((web.ports[0].published, web.ports[0].mode), (Some(8080), PublishMode::Host));
    assert_eq!((web.ports[1].published, web.ports[1].target), (None, 9000));
    assert_eq!(web.mode, ServiceMode::Global);
    assert_eq!(web.constraints[0].to_string(), "node.labels.zone==eu");
    assert_eq!((web.resources.limit_cpu_millis, web.resources.limit_memory), (500, 64 << 20));
    assert_eq!(web.resources.reserve_memory, 32 << 20);
    assert_eq!(web.restart_policy.max_attempts, Some(3));
    assert_eq!((web.update_config.parallelism, web.update_config.max_failure_ratio_permille), (2, 250));
    assert!(web.labels.iter().any(|l| l.key.as_str() == "team"));
    let s: Vec<String> = web.secrets.iter().map(|r| r.long_form()).collect();
    assert_eq!(
        s,
        ["source=lab_db_pw,target=db_pw,uid=0,gid=0,mode=0444", "source=api_key,target=key,uid=70,gid=0,mode=0400"]
    );
    assert_eq!(web.configs[0].source.as_str(), "lab_conf");
    assert_eq!(web.networks.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["lab_default"]);
    let db = &p.services["lab_db"];
    assert_eq!(db.networks.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["lab_back", "shared"]);
    let names: Vec<(&str, bool)> = p.networks.iter().map(|n| (n.name.as_str(), n.spec.is_some())).collect();
    assert_eq!(names, [("lab_back", true), ("lab_default", true), ("shared", false)]);
    assert!(p.networks[0].spec.as_ref().unwrap().encrypted);
    let objs: Vec<(&str, bool)> = p.objects.iter().map(|o| (o.name.as_str(), o.file.is_some())).collect();
    assert_eq!(objs, [("api_key", false), ("lab_db_pw", true), ("lab_conf", true)]);
    assert_eq!(p.warnings.len(), 1, "only `build` is left out: {:?}", p.warnings);
    assert!(p.warnings[0].contains("services.web.build"), "{:?}", p.warnings);
    assert_eq!(&*web.health.as_ref().unwrap().test[0], "CMD", "the healthcheck lands in the spec");
}

#[test]
fn errors_name_the_file_the_key_path_and_the_line() {
    let e = plan("services:\n  web:\n    image: x\n    ports: [\"80:80\"\n").unwrap_err();
    assert_eq!(e.file, "stack.yml");
    assert!(e.path.starts_with("line "), "{e}");
    for (text, path, words) in [
        (
            "services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n",
            "services.web.deploy.replicas",
            "whole number",
        ),
        ("services:\n  web:\n    image: x\n    ports: [\"1-5:80\"]\n", "services.web.ports[0]", "ranges"),
        ("services:\n  web:\n    command: x\n", "services.web", "an image is required"),
        ("services:\n  web:\n    image: x\n    networks: [nope]\n", "services.web.networks", "not declared"),
        ("services:\n  web:\n    image: x\n    secrets: [nope]\n", "services.web.secrets[0]", "not declared"),
        (
            "services:\n  web:\n    image: x\n    deploy: {update_config: {order: sideways}}\n",
            "services.web.deploy.update_config.order",
            "stop-first",
        ),
        ("services:\n  web:\n    image: ${NEED:?give NEED}\n", "services.web.image", "NEED is required"),
        ("secrets:\n  s: {}\nservices:\n  web: {image: x}\n", "secrets.s", "file"),
    ] {
        let e = plan(text).unwrap_err();
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(words), "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with("stack.yml") && shown.contains(&format!(": {path}: ")), "{e}");
    }
}

#[test]
fn errors_in_files_carry_the_line_of_their_key() {
    let dir = std::env::temp_dir().join(format!("shoal-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.yml"), dir.join("b.yml"));
    std::fs::write(&a, "services:\n  web:\n    image: x\n    ports:\n      - \"80:80\"\n      - \"1-5:80\"\n").unwrap();
    std::fs::write(&b, "services:\n  db:\n    image: redis\n    deploy:\n      replicas: many\n").unwrap();
    let e = plan_files("s", std::slice::from_ref(&a), &|_| None).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:6: services.web.ports[1]: ", a.display())), "{e}");
    let e = plan_files("s", &[a.clone(), b.clone()], &|_| None).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:6: ", a.display())) || e.starts_with(&format!("{}:5: ", b.display())), "{e}");
    std::fs::write(&a, "services:\n  web:\n    image: x\n").unwrap();
    let e = plan_files("s", &[a.clone(), b.clone()], &|_| None).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:5: services.db.deploy.replicas: ", b.display())), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(compose::locate("a:\n  b:\n    - x\n    - y: 1\n", "a.b[1].y"), Some(4));
    assert_eq!(compose::locate("a:\n  b: [x, y]\n", "a.b[1]"), Some(2), "a flow list: the key's line");
    assert_eq!(compose::locate("a:\n  b: 1\n", "a.c"), None);
}

#[test]
fn files_merge_the_later_winning() {
    let mut base = compose::parse("a", "services:\n  web:\n    image: x:1\n    environment: {A: '1'}\n").unwrap();
    let over = compose::parse("b", "services:\n  web:\n    image: x:2\n  db:\n    image: redis\n").unwrap();
    compose::merge(&mut base, over);
    let p = compose::Reader::new("a+b", "s", &no_files).plan(&base).unwrap();
    assert_eq!(p.services["s_web"].image.as_str(), "x:2");
    assert_eq!(p.services["s_web"].env[0].to_string(), "A=1");
    assert!(p.services.contains_key("s_db"));
}

fn running(spec: &shoal_proto::ServiceSpec, n: u8) -> ServiceView {
    // What the manager keeps: platforms filled, versions given.
    let mut spec = spec.clone();
    spec.platforms = vec![shoal_proto::text::<32>("linux/amd64").unwrap()].try_into().unwrap();
    ServiceView {
        service: Service {
            id: ServiceId::from_random([n; 16]),
            spec,
            spec_version: 1,
            created_at_ms: 0,
            virtual_ips: Default::default(),
        },
        running: 1,
        desired: 1,
        updated: 1,
        update_status: None,
    }
}

#[test]
fn a_redeploy_updates_only_what_changed_and_prunes_only_when_asked() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/lab/docker-compose.yml");
    let v1 = plan_files("lab", std::slice::from_ref(&file), &|_| None).unwrap();
    let now: Vec<ServiceView> = v1.services.values().enumerate().map(|(i, s)| running(s, i as u8)).collect();
    let same = diff("lab", &v1, &now).unwrap();
    assert_eq!((same.create.len(), same.update.len(), same.unchanged.len()), (0, 0, 2), "{same:?}");
    let v3 = plan_files("lab", std::slice::from_ref(&file), &|k| (k == "APP_VERSION").then(|| "3.0".into())).unwrap();
    let d = diff("lab", &v3, &now).unwrap();
    assert_eq!(d.update, ["lab_appserver"]);
    assert_eq!(d.unchanged, ["lab_database"]);
    let mut gone = v1.clone();
    gone.services.remove("lab_database");
    assert_eq!(diff("lab", &gone, &now).unwrap().orphans, ["lab_database"]);
    let mut foreign = now.clone();
    foreign[0].service.spec.labels = Default::default();
    assert!(diff("lab", &v1, &foreign).unwrap_err().to_string().contains("not part of stack lab"));
}

#[test]
fn stack_names_are_checked() {
    assert!(check_stack_name("lab-2_x").is_ok());
    for bad in ["", "Lab", "-x", "a/b", &"x".repeat(33)] {
        assert!(check_stack_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn container_keys_become_the_services_options_and_health_check() {
    let text = r#"
services:
  db:
    image: postgres:15
    volumes:
      - data:/var/lib/postgresql/data
      - /srv/conf:/etc/conf:ro
      - type: tmpfs
        target: /scratch
        tmpfs:
          size: 1048576
      - shared:/shared
    tmpfs: /run/x
    devices: ["/dev/i2c-1:/dev/i2c-1:rw"]
    entrypoint: ["docker-entrypoint.sh"]
    labels: {tier: data}
    user: postgres
    working_dir: /var/lib/postgresql
    cap_drop: [NET_RAW]
    sysctls: {net.core.somaxconn: 1024}
    ulimits:
      nofile: {soft: 1024, hard: 2048}
      core: 0
    dns: 10.0.0.53
    read_only: true
    init: false
    healthcheck:
      test: pg_isready -U postgres
      interval: 5s
      timeout: 2s
      retries: 3
      start_period: 10s
  web:
    image: demo/app:1.0
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "-", "http://127.0.0.1:8000/version"]
  quiet:
    image: demo/app:1.0
    healthcheck: {disable: true}
volumes:
  data:
  shared:
    external: true
"#;
    let doc = compose::parse("c.yml", text).unwrap();
    let plan = compose::Reader::new("c.yml", "lab", &no_files).plan(&doc).unwrap();
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let db = &plan.services["lab_db"];
    let o = &db.container;
    let mounts: Vec<(String, Option<String>, bool)> = o
        .mounts
        .iter()
        .map(|m| (m.target.to_string(), m.source.as_ref().map(|s| s.to_string()), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/var/lib/postgresql/data".into(), Some("lab_data".into()), false),
            ("/etc/conf".into(), Some("/srv/conf".into()), true),
            ("/scratch".into(), None, false),
            ("/shared".into(), Some("shared".into()), false),
            ("/run/x".into(), None, false),
        ],
        "a named volume gets the stack's prefix, an external one keeps its name"
    );
    assert_eq!(o.mounts[2].tmpfs_size, Some(1_048_576));
    assert_eq!(o.devices.len(), 1);
    assert_eq!(&*o.entrypoint.as_ref().unwrap()[0], "docker-entrypoint.sh");
    assert_eq!((&*o.labels[0].key, &*o.labels[0].value), ("tier", "data"));
    assert_eq!(o.user.as_deref(), Some("postgres"));
    assert_eq!(o.workdir.as_deref(), Some("/var/lib/postgresql"));
    assert_eq!(&*o.cap_drop[0], "CAP_NET_RAW");
    assert_eq!((o.sysctls.len(), o.ulimits.len(), o.dns.len()), (1, 2, 1));
    assert!(o.read_only);
    assert_eq!(o.init, Some(false));
    assert!(
        db.labels.iter().any(|l| &*l.key == "com.docker.stack.namespace" && &*l.value == "lab"),
        "the stack's label is kept"
    );
    let h = db.health.as_ref().unwrap();
    let test: Vec<&str> = h.test.iter().map(|a| &**a).collect();
    assert_eq!(test, ["CMD-SHELL", "pg_isready -U postgres"]);
    assert_eq!((h.interval_ms, h.timeout_ms, h.start_period_ms, h.retries), (5_000, 2_000, 10_000, 3));
    let web = plan.services["lab_web"].health.as_ref().unwrap();
    assert_eq!(&*web.test[0], "CMD");
    assert_eq!(&*plan.services["lab_quiet"].health.as_ref().unwrap().test[0], "NONE");

    // Mistakes name the key path.
    for (bad, says) in [
        ("services:\n  s:\n    image: x\n    volumes: [nosuch:/d]\n", "not declared under the top-level `volumes:`"),
        ("services:\n  s:\n    image: x\n    volumes: [rel/dir:/d]\n", "not declared"),
        ("services:\n  s:\n    image: x\n    volumes: [/d]\n", "anonymous volumes"),
        ("services:\n  s:\n    image: x\n    healthcheck: {test: [curl, x]}\n", "CMD, CMD-SHELL or NONE"),
        ("services:\n  s:\n    image: x\n    cap_add: [NOT_A_CAP]\n", "services.s.cap_add[0]"),
        ("services:\n  s:\n    image: x\n    read_only: maybe\n", "true or false"),
    ] {
        let doc = compose::parse("c.yml", bad).unwrap();
        let e = compose::Reader::new("c.yml", "lab", &no_files).plan(&doc).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
