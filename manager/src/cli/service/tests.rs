//! Tests of the service commands' flags, output and progress.

use super::*;
use clap::Parser;
use shoal_proto::dispatch::{ServiceView, TaskView, UpdateState, UpdateStatus};
use shoal_proto::{
    BoundedString, EndpointMode, FailureAction, PortConfig, PublishMode, RestartCondition, ServiceMode, ServiceSpec,
    TaskState, UpdateConfig, UpdateOrder,
};
use shoal_proto::{NodeId, Service, ServiceId, Task, TaskId, TaskStatus};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: ServiceCommand,
}

fn parse(args: &[&str]) -> ServiceCommand {
    Cli::try_parse_from(std::iter::once("service").chain(args.iter().copied())).unwrap().cmd
}

#[test]
fn create_flags_parse_like_docker() {
    let ServiceCommand::Create(c) = parse(&[
        "create",
        "--name",
        "appserver",
        "--replicas",
        "3",
        "--publish",
        "mode=host,target=8000,published=8000",
        "-e",
        "A=1",
        "--constraint",
        "node.labels.zone==eu",
        "--limit-memory",
        "64M",
        "--limit-cpu",
        "0.5",
        "--reserve-memory",
        "32M",
        "--reserve-cpu",
        "0.25",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "2s",
        "--restart-max-attempts",
        "3",
        "--stop-grace-period",
        "1s",
        "--network",
        "host",
        "--endpoint-mode",
        "dnsrr",
        "--detach=true",
        "demo/app:1.0",
        "httpd",
        "-f",
        "-p",
        "8000",
    ]) else {
        panic!()
    };
    let spec = c.spec().unwrap();
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 3 });
    assert_eq!(spec.ports[0].mode, PublishMode::Host);
    assert_eq!(spec.ports[0].published, Some(8000));
    assert_eq!(spec.env[0].to_string(), "A=1");
    assert_eq!(spec.resources.limit_memory, 64 << 20);
    assert_eq!((spec.resources.limit_cpu_millis, spec.resources.reserve_cpu_millis), (500, 250));
    assert_eq!(spec.restart_policy.condition, RestartCondition::OnFailure);
    assert_eq!((spec.restart_policy.delay_ms, spec.restart_policy.max_attempts), (2000, Some(3)));
    assert_eq!(spec.stop_grace_period_ms, 1000);
    assert_eq!(spec.endpoint_mode, EndpointMode::Dnsrr);
    assert_eq!(spec.args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["httpd", "-f", "-p", "8000"]);
    assert_eq!(c.detach, Some(true));

    let ServiceCommand::Create(c) = parse(&["create", "--name", "agent", "--mode", "global", "-d", "redis"]) else {
        panic!()
    };
    assert_eq!(c.spec().unwrap().mode, ServiceMode::Global);
    assert_eq!(c.detach, Some(true));
    let ServiceCommand::Create(c) = parse(&["create", "--name", "x", "--mode", "global", "--replicas", "2", "redis"])
    else {
        panic!()
    };
    assert!(c.spec().unwrap_err().to_string().contains("--mode global"));
    assert!(Cli::try_parse_from(["s", "create", "--name", "x", "--publish", "mode=host", "redis"]).is_err());
    assert!(Cli::try_parse_from(["s", "create", "--name", "x", "--env", "NOEQUALS", "redis"]).is_err());
}

#[test]
fn rollback_refuses_flags_that_would_be_dropped() {
    let ServiceCommand::Update(u) = parse(&["update", "--rollback", "--image", "demo/app:3.0", "web"]) else {
        panic!()
    };
    assert!(u.check().unwrap_err().to_string().contains("--rollback can't be combined"));
    let ServiceCommand::Update(u) = parse(&["update", "--rollback", "--update-parallelism", "2", "web"]) else {
        panic!()
    };
    assert!(u.check().is_err());
    let ServiceCommand::Update(u) = parse(&["update", "--rollback", "--detach", "web"]) else { panic!() };
    assert!(u.check().is_ok());
}

#[test]
fn update_network_flags_add_remove_and_refuse_what_is_not_there() {
    let mut spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
    spec.networks = vec![shoal_proto::text("atsea").unwrap()].try_into().unwrap();
    let ServiceCommand::Update(u) =
        parse(&["update", "--network-add", "other", "--network-rm", "atsea", "--endpoint-mode", "dnsrr", "web"])
    else {
        panic!()
    };
    assert!(u.check().is_ok());
    u.apply(&mut spec).unwrap();
    assert_eq!(spec.networks.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["other"]);
    assert_eq!(spec.endpoint_mode, EndpointMode::Dnsrr);
    let before = spec.clone();
    let ServiceCommand::Update(u) = parse(&["update", "--network-rm", "nosuch", "web"]) else { panic!() };
    assert!(u.apply(&mut spec).unwrap_err().to_string().contains("not on that network"));
    assert_eq!(spec.networks, before.networks, "nothing removed");
    let ServiceCommand::Update(u) = parse(&["update", "--rollback", "--network-add", "x", "web"]) else { panic!() };
    assert!(u.check().is_err(), "a rollback would drop the change");
}

#[test]
fn update_flags_change_the_spec() {
    let mut spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
    spec.env = vec![BoundedString::lossy("A=1"), BoundedString::lossy("B=2")].try_into().unwrap();
    spec.ports = vec![PortConfig::parse("8000:80").unwrap()].try_into().unwrap();
    let ServiceCommand::Update(u) = parse(&[
        "update",
        "--replicas",
        "6",
        "--image",
        "demo/app:2.0",
        "--env-add",
        "A=3",
        "--env-rm",
        "B",
        "--publish-rm",
        "8000",
        "--publish-add",
        "9000:90",
        "--constraint-add",
        "node.hostname!=node2",
        "web",
    ]) else {
        panic!()
    };
    u.apply(&mut spec).unwrap();
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 6 });
    assert_eq!(spec.image.as_str(), "demo/app:2.0");
    assert_eq!(spec.env.iter().map(|e| e.to_string()).collect::<Vec<_>>(), ["A=3"]);
    assert_eq!(spec.ports.iter().map(|p| p.published).collect::<Vec<_>>(), [Some(9000)]);
    assert_eq!(spec.constraints.len(), 1);
    let ServiceCommand::Update(u) = parse(&["update", "--publish-rm", "1234", "web"]) else { panic!() };
    assert!(u.apply(&mut spec).unwrap_err().to_string().contains("no such port"));
    let ServiceCommand::Update(u) = parse(&["update", "--rollback", "-d", "web"]) else { panic!() };
    assert!(u.rollback && u.detach == Some(true));
    let ServiceCommand::Scale { scales, .. } = parse(&["scale", "web=6", "db=1"]) else { panic!() };
    assert_eq!(scales, vec![("web".to_owned(), 6), ("db".to_owned(), 1)]);
    assert!(Cli::try_parse_from(["s", "scale", "web"]).is_err());
}

fn view(replicas: u32, running: u32) -> ServiceView {
    let mut spec =
        ServiceSpec::new(shoal_proto::text("appserver").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
    spec.mode = ServiceMode::Replicated { replicas };
    spec.ports = vec![PortConfig::parse("mode=host,target=8000,published=8000").unwrap()].try_into().unwrap();
    ServiceView {
        service: Service {
            id: ServiceId::from_random([1; 16]),
            spec,
            spec_version: 1,
            created_at_ms: 0,
            virtual_ips: Default::default(),
        },
        running,
        desired: replicas,
        updated: running,
        update_status: None,
    }
}

fn task_view(v: &ServiceView, n: u8, slot: u32, state: TaskState, desired: TaskState, at: u64) -> TaskView {
    let node = NodeId::from_random([9; 16]);
    TaskView {
        task: Task {
            id: TaskId::from_random([n; 16]),
            service_id: v.service.id.clone(),
            slot,
            node_id: Some(node.clone()),
            spec: v.service.spec.task_spec(),
            spec_version: 1,
            desired_state: desired,
            status: TaskStatus::new(state, at, ""),
            created_at_ms: at,
            networks: Default::default(),
        },
        service_name: v.service.spec.name.clone(),
        node_hostname: Some(shoal_proto::text("node1").unwrap()),
        node_id: Some(node),
    }
}

#[test]
fn ls_shows_replicas_and_ports_like_docker() {
    let out = ls_table(&[view(6, 4)]);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("ID ") && header.contains("NAME") && header.ends_with("PORTS"));
    let row = lines.next().unwrap();
    assert!(row.contains("appserver") && row.contains("replicated") && row.contains("4/6"), "{row}");
    assert!(row.ends_with("demo/app:1.0   *:8000->8000/tcp (host)"), "{row}");
}

#[test]
fn ps_shows_history_states_errors_and_reasons() {
    let v = view(2, 1);
    let mut failed = task_view(&v, 2, 1, TaskState::Failed, TaskState::Shutdown, 1_000);
    failed.task.status.exit_code = Some(143);
    let mut pending = task_view(&v, 3, 2, TaskState::Pending, TaskState::Running, 50_000);
    pending.task.node_id = None;
    pending.node_hostname = None;
    pending.task.status.message = BoundedString::lossy("no suitable node (host-mode port 8000/tcp in use on 3 nodes)");
    let tasks = vec![task_view(&v, 1, 1, TaskState::Running, TaskState::Running, 52_000), failed, pending];
    let out = ps_table(&tasks, 60_000);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID ") && lines[0].contains("DESIRED STATE   CURRENT STATE"), "{out}");
    assert!(lines[1].contains("appserver.1 ") && lines[1].contains("Running 8 seconds ago"), "{out}");
    assert!(lines[1].contains("*:8000->8000/tcp"), "{out}");
    assert!(lines[2].contains(" \\_ appserver.1") && lines[2].contains("Failed 59 seconds ago"), "{out}");
    assert!(lines[2].contains("task: non-zero exit (143)"), "{out}");
    assert!(lines[3].contains("appserver.2") && lines[3].contains("no suitable node (host-mode port"), "{out}");
}

#[test]
fn progress_counts_tasks_of_the_current_spec_and_collects_reasons() {
    let v = view(2, 1);
    let mut pending = task_view(&v, 3, 2, TaskState::Pending, TaskState::Running, 0);
    pending.task.status.message = BoundedString::lossy("no suitable node (1 node not ready)");
    let tasks = vec![task_view(&v, 1, 1, TaskState::Running, TaskState::Running, 0), pending];
    let p = progress(&v, &tasks);
    assert_eq!((p.running, p.desired, p.outdated, p.converged()), (1, 2, false, false));
    assert_eq!(p.unplaceable, vec!["appserver.2: no suitable node (1 node not ready)"]);
    let mut newer = v.clone();
    newer.service.spec.image = shoal_proto::text("demo/app:2.0").unwrap();
    assert!(progress(&newer, &tasks).outdated);
}

#[test]
fn durations_read_like_docker() {
    assert_eq!(human_duration(500), "Less than a second");
    assert_eq!(human_duration(8_000), "8 seconds");
    assert_eq!(human_duration(90_000), "About a minute");
    assert_eq!(human_duration(180_000), "3 minutes");
    assert_eq!(human_duration(5 * 3_600_000), "5 hours");
}

#[test]
fn inspect_json_is_docker_shaped() {
    let j = json(&view(3, 3));
    assert_eq!(j["Spec"]["Name"], "appserver");
    assert_eq!(j["Spec"]["Mode"]["Replicated"]["Replicas"], 3);
    assert_eq!(j["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], "demo/app:1.0");
    assert_eq!(j["Spec"]["EndpointSpec"]["Ports"][0]["PublishedPort"], 8000);
    assert_eq!(j["Spec"]["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
    assert_eq!(j["Version"]["Index"], 1);
    assert!(pretty(&view(3, 3), 0).contains("Replicas:\t3"));
}

fn status(state: UpdateState, message: &str) -> UpdateStatus {
    UpdateStatus { state, started_at_ms: 1_000, completed_at_ms: None, message: BoundedString::lossy(message) }
}

fn with_status(mut v: ServiceView, state: UpdateState, message: &str) -> ServiceView {
    v.update_status = Some(status(state, message));
    v
}

#[test]
fn update_and_rollback_flags_set_the_configs() {
    let ServiceCommand::Create(c) = parse(&["create", "--name", "web", "redis"]) else { panic!() };
    let spec = c.spec().unwrap();
    assert_eq!((spec.update_config, spec.rollback_config), (UpdateConfig::default(), UpdateConfig::default()));
    let ServiceCommand::Create(c) = parse(&[
        "create",
        "--name",
        "web",
        "--update-parallelism",
        "0",
        "--update-delay",
        "10s",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "1m30s",
        "--update-max-failure-ratio",
        "0.25",
        "--update-order",
        "start-first",
        "--rollback-parallelism",
        "2",
        "--rollback-delay",
        "500ms",
        "--rollback-failure-action",
        "continue",
        "--rollback-monitor",
        "0s",
        "--rollback-max-failure-ratio",
        "1",
        "--rollback-order",
        "start-first",
        "redis",
    ]) else {
        panic!()
    };
    let spec = c.spec().unwrap();
    let u = spec.update_config;
    assert_eq!((u.parallelism, u.delay_ms, u.monitor_ms, u.max_failure_ratio_permille), (0, 10_000, 90_000, 250));
    assert_eq!((u.failure_action, u.order), (FailureAction::Rollback, UpdateOrder::StartFirst));
    let r = spec.rollback_config;
    assert_eq!((r.parallelism, r.delay_ms, r.monitor_ms, r.max_failure_ratio_permille), (2, 500, 0, 1000));
    assert_eq!((r.failure_action, r.order), (FailureAction::Continue, UpdateOrder::StartFirst));

    // On update, only the flags given change.
    let mut updated = spec.clone();
    let ServiceCommand::Update(u) = parse(&["update", "--update-parallelism", "3", "--rollback-delay", "0s", "web"])
    else {
        panic!()
    };
    u.apply(&mut updated).unwrap();
    assert_eq!(updated.update_config, UpdateConfig { parallelism: 3, ..spec.update_config });
    assert_eq!(updated.rollback_config, UpdateConfig { delay_ms: 0, ..spec.rollback_config });

    for bad in [
        ["--rollback-failure-action", "rollback"],
        ["--update-failure-action", "retry"],
        ["--update-max-failure-ratio", "1.5"],
        ["--rollback-max-failure-ratio", "-0.1"],
        ["--update-order", "sideways"],
        ["--update-delay", "soon"],
        ["--update-parallelism", "-1"],
    ] {
        let args = ["s", "update", bad[0], bad[1], "web"];
        assert!(Cli::try_parse_from(args).is_err(), "{bad:?} should be refused");
    }
    let e = Cli::try_parse_from(["s", "update", "--rollback-failure-action", "rollback", "web"]).unwrap_err();
    assert!(e.to_string().contains("can't itself be rolled back"), "{e}");
}

#[test]
fn inspect_formats_are_pretty_json_or_a_template() {
    assert!(matches!(InspectFormat::new(None, false).unwrap(), InspectFormat::Json));
    assert!(matches!(InspectFormat::new(Some("json"), false).unwrap(), InspectFormat::Json));
    assert!(matches!(InspectFormat::new(Some("pretty"), false).unwrap(), InspectFormat::Pretty));
    assert!(matches!(InspectFormat::new(None, true).unwrap(), InspectFormat::Pretty));
    assert!(InspectFormat::new(Some("{{.ID}}"), true).unwrap_err().to_string().contains("incompatible"));
    let e = InspectFormat::new(Some("{{nope .ID}}"), false).unwrap_err();
    assert_eq!(e.to_string(), r#"template: :1: function "nope" not defined"#);
    let ServiceCommand::Inspect { format, .. } = parse(&["inspect", "-f", "{{json .UpdateStatus}}", "web"]) else {
        panic!()
    };
    assert_eq!(format.as_deref(), Some("{{json .UpdateStatus}}"));

    let paused = with_status(view(3, 3), UpdateState::Paused, "update paused due to failure");
    let views = [paused, view(1, 1)];
    let render = |f: &str| InspectFormat::new(Some(f), false).unwrap().render(&views, 0).unwrap();
    let id = views[0].service.id.to_string();
    assert_eq!(render("{{.Spec.Name}} {{.ID}}"), format!("appserver {id}\nappserver {id}\n"));
    assert_eq!(render("{{.UpdateStatus.State}}"), "paused\n<no value>\n");
    assert_eq!(
        render("{{json .UpdateStatus}}"),
        "{\"State\":\"paused\",\"StartedAt\":\"1970-01-01T00:00:01.000Z\",\
         \"Message\":\"update paused due to failure\"}\nnull\n"
    );
    let whole: serde_json::Value = serde_json::from_str(render("{{json .}}").lines().next().unwrap()).unwrap();
    assert_eq!(whole, json(&views[0]));
    let array: serde_json::Value = serde_json::from_str(&render("json")).unwrap();
    assert_eq!(array[0]["UpdateStatus"]["State"], "paused");
    let bad = InspectFormat::new(Some("{{.Spec.Name.X}}"), false).unwrap().render(&views, 0).unwrap_err();
    assert!(bad.to_string().starts_with("template: "), "{bad}");
}

#[test]
fn ls_shows_where_an_update_stands() {
    let mut updating = with_status(view(3, 3), UpdateState::Updating, "update in progress");
    updating.updated = 1;
    let mut rolling_back = with_status(view(3, 3), UpdateState::RollbackStarted, "manually requested rollback");
    rolling_back.updated = 2;
    let cases = [
        (updating, "3/3 (updating 1/3)"),
        (with_status(view(3, 3), UpdateState::Paused, "update paused"), "3/3 (update paused)"),
        (rolling_back, "3/3 (rolling back 2/3)"),
        (with_status(view(3, 3), UpdateState::RollbackPaused, "rollback paused"), "3/3 (rollback paused)"),
        (with_status(view(3, 3), UpdateState::Completed, "update completed"), "3/3"),
        (with_status(view(3, 3), UpdateState::RollbackCompleted, "rollback completed"), "3/3"),
        (view(3, 2), "2/3"),
    ];
    for (v, want) in cases {
        assert_eq!(replicas_text(&v), want);
        assert!(ls_table(&[v]).lines().nth(1).unwrap().contains(&format!("   {want}   ")));
    }
}

#[test]
fn waits_follow_the_update_the_command_started() {
    let at = |ms| UpdateStatus { started_at_ms: ms, ..status(UpdateState::Updating, "update in progress") };
    assert_eq!(follow(None, Some(&at(5)), false), Follow::Update);
    assert_eq!(follow(Some(&at(1)), Some(&at(5)), false), Follow::Update);
    assert_eq!(follow(Some(&at(1)), Some(&at(5)), true), Follow::Rollback);
    // A scale leaves the last update's status alone: only tasks tell.
    assert_eq!(follow(Some(&at(1)), Some(&at(1)), false), Follow::Tasks);
    assert_eq!(follow(None, None, false), Follow::Tasks);
}

/// A service at image 2.0 whose two slots run `fresh` tasks of 2.0, the rest 1.0.
fn updating(state: UpdateState, message: &str, fresh: u8) -> (ServiceView, Vec<TaskView>) {
    let old = view(2, 2);
    let mut new = with_status(old.clone(), state, message);
    new.service.spec.image = shoal_proto::text("demo/app:2.0").unwrap();
    let tasks = (1..=2)
        .map(|slot| {
            let v = if slot <= fresh { &new } else { &old };
            task_view(v, slot, u32::from(slot), TaskState::Running, TaskState::Running, 0)
        })
        .collect();
    (new, tasks)
}

#[test]
fn verdicts_end_updates_as_docker_does() {
    let verdict_of = |state, message: &str, follow| {
        let (v, t) = updating(state, message, 2);
        verdict(&v, &t, follow)
    };
    assert_eq!(verdict_of(UpdateState::Updating, "update in progress", Follow::Update), Verdict::Continue);
    assert_eq!(verdict_of(UpdateState::Completed, "update completed", Follow::Update), Verdict::Done);
    assert_eq!(
        verdict_of(UpdateState::Paused, "update paused due to failure or early termination of task x", Follow::Update),
        Verdict::Failed("service update paused: update paused due to failure or early termination of task x".into())
    );
    assert_eq!(
        verdict_of(UpdateState::RollbackPaused, "rollback paused due to failure", Follow::Rollback),
        Verdict::Failed("service rollback paused: rollback paused due to failure".into())
    );
    assert_eq!(
        verdict_of(UpdateState::RollbackCompleted, "rollback completed", Follow::Update),
        Verdict::Failed("service rolled back: rollback completed".into())
    );
    assert_eq!(verdict_of(UpdateState::RollbackCompleted, "rollback completed", Follow::Rollback), Verdict::Done);
    // Following tasks (after a scale), they decide; a paused update only ends a wait
    // for old tasks it will not replace.
    assert_eq!(verdict_of(UpdateState::Paused, "update paused", Follow::Tasks), Verdict::Done);
    let (v, t) = updating(UpdateState::Paused, "update paused", 1);
    assert_eq!(verdict(&v, &t, Follow::Tasks), Verdict::Failed("service update paused: update paused".into()));
    let (mut v, t) = updating(UpdateState::Paused, "update paused", 2);
    v.desired = 3;
    assert_eq!(verdict(&v, &t, Follow::Tasks), Verdict::Continue);
    let (v, t) = updating(UpdateState::Completed, "update completed", 1);
    assert_eq!(verdict(&v, &t, Follow::Tasks), Verdict::Continue);
}

#[test]
fn watching_an_update_prints_progress_notes_and_verify_lines_once() {
    let mut w = Watch::new(Follow::Update, 5_000);
    let mut look = |state, message: &str, fresh| {
        let (v, t) = updating(state, message, fresh);
        w.observe(&v, &t)
    };
    let fallback = "update in progress; appserver.2: start-first fell back to stop-first: no suitable node \
                    (host-mode port 8000/tcp in use on 3 nodes)";
    assert_eq!(
        look(UpdateState::Updating, "update in progress", 0),
        (vec!["overall progress: 0 out of 2 tasks".to_owned()], Verdict::Continue)
    );
    assert_eq!(
        look(UpdateState::Updating, fallback, 1),
        (vec!["overall progress: 1 out of 2 tasks".to_owned(), format!("update: {fallback}")], Verdict::Continue)
    );
    assert_eq!(look(UpdateState::Updating, fallback, 1), (vec![], Verdict::Continue));
    assert_eq!(
        look(UpdateState::Updating, fallback, 2),
        (
            vec![
                "overall progress: 2 out of 2 tasks".to_owned(),
                "verify: Waiting 5 seconds to verify that tasks are stable...".to_owned()
            ],
            Verdict::Continue
        )
    );
    assert_eq!(look(UpdateState::Updating, fallback, 2), (vec![], Verdict::Continue));
    assert_eq!(
        look(UpdateState::Completed, "update completed", 2),
        (vec!["verify: Service converged".to_owned()], Verdict::Done)
    );
}

#[test]
fn watching_rollbacks_names_them_and_fails_automatic_ones() {
    let rolled = "update rolled back due to failure or early termination of task abc";
    let mut w = Watch::new(Follow::Update, 5_000);
    let (v, t) = updating(UpdateState::RollbackStarted, rolled, 2);
    let (lines, verdict) = w.observe(&v, &t);
    // No verify line: this rollback can't end well for the update asked for.
    assert_eq!(lines, ["overall progress: 2 out of 2 tasks".to_owned(), format!("rollback: {rolled}")]);
    assert_eq!(verdict, Verdict::Continue);
    let (v, t) = updating(UpdateState::RollbackCompleted, "rollback completed", 2);
    assert_eq!(w.observe(&v, &t), (vec![], Verdict::Failed(format!("service rolled back: {rolled}"))));

    let mut w = Watch::new(Follow::Rollback, 1_500);
    let (v, t) = updating(UpdateState::RollbackStarted, "manually requested rollback", 2);
    let (lines, _) = w.observe(&v, &t);
    assert_eq!(lines[1..], ["verify: Waiting 2 seconds to verify that tasks are stable...".to_owned()]);
    let (v, t) = updating(UpdateState::RollbackCompleted, "rollback completed", 2);
    assert_eq!(w.observe(&v, &t), (vec!["verify: Service converged".to_owned()], Verdict::Done));
}

#[test]
fn waits_give_up_on_unplaceable_tasks_and_silence() {
    let v = view(2, 1);
    let mut p = Progress { running: 1, desired: 2, outdated: false, unplaceable: vec![] };
    assert!(give_up_if_stuck(&v, &p, STUCK_AFTER).is_ok());
    assert!(give_up_if_stuck(&v, &p, CONVERGE_TIMEOUT).unwrap_err().to_string().contains("made no progress"));
    p.unplaceable.push("appserver.2: no suitable node (1 node not ready)".into());
    assert!(give_up_if_stuck(&v, &p, STUCK_AFTER).unwrap_err().to_string().contains("can't be fully placed"));
}

#[test]
fn pretty_shows_the_update_status_and_both_configs() {
    let mut v = with_status(view(3, 3), UpdateState::Completed, "update completed");
    v.update_status.as_mut().unwrap().completed_at_ms = Some(61_000);
    v.service.spec.update_config.delay_ms = 10_000;
    v.service.spec.rollback_config.order = UpdateOrder::StartFirst;
    let out = pretty(&v, 121_000);
    assert!(
        out.contains(
            "UpdateStatus:\n State:\t\tcompleted\n Started:\t2 minutes ago\n Completed:\tAbout a minute ago\n \
             Message:\tupdate completed\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "UpdateConfig:\n Parallelism:\t1\n Delay:\t\t10s\n On failure:\tpause\n Monitoring Period: 5s\n \
             Max failure ratio: 0\n Update order:      stop-first\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "RollbackConfig:\n Parallelism:\t1\n On failure:\tpause\n Monitoring Period: 5s\n \
             Max failure ratio: 0\n Rollback order:    start-first\n"
        ),
        "{out}"
    );
}

#[test]
fn security_opts_set_the_seccomp_mode_and_bad_ones_are_refused_before_connecting() {
    use shoal_proto::services::Seccomp;
    let create = |opts: &[&str]| -> anyhow::Result<ServiceSpec> {
        let mut args = vec!["create", "--name", "web"];
        for o in opts {
            args.extend(["--security-opt", o]);
        }
        args.push("demo/app:1.0");
        match Cli::try_parse_from(std::iter::once("service").chain(args.iter().copied())) {
            Ok(Cli { cmd: ServiceCommand::Create(c) }) => c.spec(),
            Ok(_) => unreachable!(),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    };
    assert_eq!(create(&[]).unwrap().seccomp, Seccomp::Default);
    assert_eq!(create(&["seccomp=unconfined"]).unwrap().seccomp, Seccomp::Unconfined);
    assert_eq!(create(&["seccomp:unconfined", "no-new-privileges"]).unwrap().seccomp, Seccomp::Unconfined);
    let dir = std::env::temp_dir().join(format!("shoal-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("p.json");
    std::fs::write(&good, "{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\",\n  \"syscalls\": []\n}\n").unwrap();
    let spec = create(&[&format!("seccomp={}", good.display())]).unwrap();
    assert_eq!(
        spec.seccomp,
        Seccomp::Profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#.try_into().unwrap())
    );
    let j = json(&ServiceView {
        service: Service {
            id: ServiceId::from_random([1; 16]),
            spec,
            spec_version: 1,
            created_at_ms: 0,
            virtual_ips: Default::default(),
        },
        running: 0,
        desired: 1,
        updated: 0,
        update_status: None,
    });
    assert_eq!(j["Spec"]["TaskTemplate"]["ContainerSpec"]["Privileges"]["Seccomp"]["Mode"], "custom");

    let not_json = dir.join("bad.json");
    std::fs::write(&not_json, "{ nope").unwrap();
    let no_action = dir.join("noaction.json");
    std::fs::write(&no_action, r#"{"syscalls":[]}"#).unwrap();
    let huge = dir.join("huge.json");
    std::fs::write(&huge, format!(r#"{{"defaultAction":"SCMP_ACT_ALLOW","x":"{}"}}"#, "a".repeat(20_000))).unwrap();
    for (opt, why) in [
        ("seccomp=/no/such/profile.json".to_owned(), "No such file"),
        (format!("seccomp={}", not_json.display()), "not valid JSON"),
        (format!("seccomp={}", no_action.display()), "defaultAction"),
        (format!("seccomp={}", huge.display()), "at most 16384"),
        ("no-new-privileges=false".to_owned(), "always sets no-new-privileges"),
        ("apparmor=unconfined".to_owned(), "not supported"),
        ("seccomp".to_owned(), "expected seccomp=unconfined"),
    ] {
        let err = create(&[&opt]).unwrap_err().to_string();
        assert!(err.contains(why), "{opt}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let ServiceCommand::Update(u) = parse(&["update", "--security-opt", "seccomp=default", "web"]) else { panic!() };
    let mut spec = create(&["seccomp=unconfined"]).unwrap();
    u.apply(&mut spec).unwrap();
    assert_eq!(spec.seccomp, Seccomp::Default);
}

#[test]
fn following_tasks_waits_out_the_monitor_period_and_reports_crash_loops() {
    use TaskState::{Failed, Running, Shutdown};
    let v = view(2, 2);
    let running = |n: u8, slot: u32| task_view(&v, n, slot, Running, Running, 0);
    let failed = |n: u8, slot: u32| task_view(&v, n, slot, Failed, Shutdown, 0);

    // Every task runs: converged only once they ran for the monitor period.
    let mut w = Watch::new(Follow::Tasks, 5_000);
    let (lines, verdict) = w.observe_at(&v, &[running(1, 1), running(2, 2)], 1_000);
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(lines.last().unwrap(), "verify: Waiting 5 seconds to verify that tasks are stable...");
    assert_eq!(w.observe_at(&v, &[running(1, 1), running(2, 2)], 5_999).1, Verdict::Continue);
    let (lines, verdict) = w.observe_at(&v, &[running(1, 1), running(2, 2)], 6_000);
    assert_eq!((lines, verdict), (vec!["verify: Service converged".to_owned()], Verdict::Done));

    // A task that fails while being verified: reported, and the wait starts over; a
    // failure from before the wait does not count; three failures end the wait.
    let mut w = Watch::new(Follow::Tasks, 5_000);
    let old = failed(9, 1);
    let _ = w.observe_at(&v, &[old.clone(), running(1, 1), running(2, 2)], 0);
    let (lines, verdict) = w.observe_at(&v, &[old.clone(), failed(1, 1), running(2, 2)], 2_000);
    assert_eq!((lines.last().unwrap().as_str(), verdict), ("verify: Detected task failure", Verdict::Continue));
    let _ = w.observe_at(&v, &[old.clone(), failed(1, 1), running(3, 1), running(2, 2)], 3_000);
    assert_eq!(
        w.observe_at(&v, &[failed(1, 1), running(3, 1), running(2, 2)], 7_999).1,
        Verdict::Continue,
        "the stable period restarted after the failure"
    );
    let _ = w.observe_at(&v, &[failed(1, 1), failed(3, 1), running(2, 2)], 8_000);
    let (_, verdict) = w.observe_at(&v, &[failed(1, 1), failed(3, 1), failed(4, 2)], 9_000);
    match verdict {
        Verdict::Failed(e) => assert!(e.contains("keep failing"), "{e}"),
        other => panic!("a crash loop must fail the wait, got {other:?}"),
    }
}

#[test]
fn stop_signals_are_taken_as_docker_takes_them_and_refused_when_not_forwardable() {
    let ServiceCommand::Create(c) = parse(&["create", "--name", "pg", "--stop-signal", "SIGINT", "postgres"]) else {
        panic!()
    };
    assert_eq!(c.spec().unwrap().stop_signal.as_deref(), Some("SIGINT"));
    for ok in ["INT", "2", "sigquit", "SIGWINCH"] {
        assert!(shoal_proto::services::parse_stop_signal(ok).is_ok(), "{ok}");
    }
    for bad in ["SIGKILL", "9", "SIGSTOP", "SIGRTMIN+3", ""] {
        let e = shoal_proto::services::parse_stop_signal(bad).unwrap_err().to_string();
        assert!(e.contains("invalid stop signal"), "{bad}: {e}");
    }
    let parsed = Cli::try_parse_from(["service", "create", "--name", "x", "--stop-signal", "KILL", "redis"]);
    let fine = Cli::try_parse_from(["service", "create", "--name", "x", "--stop-signal", "QUIT", "redis"]);
    assert!(fine.is_ok());
    assert!(parsed.is_err());
}

#[test]
fn hostname_takes_swarms_placeholders_and_a_bad_one_is_refused_at_create() {
    let ServiceCommand::Create(c) =
        parse(&["create", "--name", "db", "--hostname", "{{.Service.Name}}-{{.Task.Slot}}", "postgres"])
    else {
        panic!()
    };
    let spec = c.spec().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("{{.Service.Name}}-{{.Task.Slot}}"));
    assert_eq!(spec.task_spec().hostname, spec.hostname, "tasks carry the template");
    let mut v = view(1, 1);
    v.service.spec = spec.clone();
    let shown = super::output::json(&v);
    assert_eq!(shown["Spec"]["TaskTemplate"]["ContainerSpec"]["Hostname"], "{{.Service.Name}}-{{.Task.Slot}}");
    // Refused by the CLI's parser, and by the spec's check the manager runs too.
    let bad = Cli::try_parse_from(["s", "create", "--name", "x", "--hostname", "{{.Task.Nmae}}", "redis"]);
    let e = bad.unwrap_err().to_string();
    assert!(e.contains("unknown placeholder {{.Task.Nmae}}: use {{.Service.ID}}"), "{e}");
    let long = "x".repeat(64);
    assert!(Cli::try_parse_from(["s", "create", "--name", "x", "--hostname", &long, "redis"]).is_err());
    let ServiceCommand::Create(c) = parse(&["create", "--name", "db", "-e", "SLOT={{.Task.Slott}}", "postgres"]) else {
        panic!()
    };
    let e = c.spec().unwrap_err().to_string();
    assert!(e.contains("--env: template \"SLOT={{.Task.Slott}}\": unknown placeholder"), "{e}");
    // Update sets it, and `--hostname ""` goes back to the default.
    let mut spec = spec;
    let ServiceCommand::Update(u) = parse(&["update", "--hostname", "pg-{{.Node.Hostname}}", "db"]) else { panic!() };
    u.apply(&mut spec).unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("pg-{{.Node.Hostname}}"));
    let ServiceCommand::Update(u) = parse(&["update", "--hostname", "", "db"]) else { panic!() };
    u.apply(&mut spec).unwrap();
    assert_eq!(spec.hostname, None);
}

#[test]
fn container_option_flags_make_the_spec_and_show_in_inspect() {
    let dir = std::env::temp_dir().join(format!("shoal-envfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join("app.env");
    std::fs::write(&env_file, "# comment\nA=from-file\nB=2\n\n").unwrap();
    let env_arg = env_file.display().to_string();
    let ServiceCommand::Create(c) = parse(&[
        "create",
        "--name",
        "db",
        "--mount",
        "type=volume,source=pgdata,target=/var/lib/postgresql/data",
        "--mount",
        "type=tmpfs,target=/cache,tmpfs-size=8M",
        "--device",
        "/dev/i2c-1:/dev/i2c-1:rw",
        "--group-add",
        "dialout",
        "--cap-add",
        "net_admin",
        "--cap-drop",
        "ALL",
        "-u",
        "1000:1000",
        "-w",
        "/srv",
        "--entrypoint",
        "sh -c",
        "--read-only",
        "--no-init",
        "--sysctl",
        "net.core.somaxconn=1024",
        "--ulimit",
        "nofile=1024:2048",
        "-l",
        "team=lab",
        "--container-label",
        "role=db",
        "--env-file",
        &env_arg,
        "-e",
        "A=flag",
        "--dns",
        "1.1.1.1",
        "demo/app:1.0",
        "echo hi",
    ]) else {
        panic!("not a create")
    };
    let spec = c.spec().unwrap();
    let o = &spec.container;
    assert_eq!(o.mounts.len(), 2);
    assert_eq!(o.devices[0].permissions.as_str(), "rw");
    assert_eq!(o.cap_add[0].as_str(), "CAP_NET_ADMIN");
    assert_eq!(o.entrypoint.as_ref().unwrap().iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["sh", "-c"]);
    assert_eq!((o.read_only, o.init), (true, Some(false)));
    assert_eq!(
        spec.env.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["B=2", "A=flag"],
        "--env wins over the file"
    );
    let mut view = view(1, 0);
    view.service.spec = spec.clone();
    let j = json(&view);
    let cs = &j["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(j["Spec"]["Labels"]["team"], "lab");
    assert_eq!(cs["Labels"]["role"], "db");
    assert_eq!(cs["Mounts"][0]["Type"], "volume");
    assert_eq!(cs["Mounts"][0]["Source"], "pgdata");
    assert_eq!(cs["Mounts"][1]["TmpfsOptions"]["SizeBytes"], 8 << 20);
    assert_eq!(cs["Devices"][0]["PathOnHost"], "/dev/i2c-1");
    assert_eq!(
        (cs["User"].as_str(), cs["Dir"].as_str(), cs["ReadOnly"].as_bool()),
        (Some("1000:1000"), Some("/srv"), Some(true))
    );
    assert_eq!(cs["Command"][1], "-c");
    assert_eq!(cs["Init"], false);
    assert_eq!(cs["CapabilityDrop"][0], "ALL");
    assert_eq!(cs["Sysctls"]["net.core.somaxconn"], "1024");
    assert_eq!(cs["Ulimits"][0]["Hard"], 2048);
    assert_eq!(cs["DNSConfig"]["Nameservers"][0], "1.1.1.1");
    let text = pretty(&view, 0);
    assert!(text.contains("Mounts:\n  Target:\t/var/lib/postgresql/data\n   Source:\tpgdata\n"), "{text}");
    assert!(text.contains(" User:\t\t1000:1000\n") && text.contains("  /dev/i2c-1:/dev/i2c-1:rw\n"), "{text}");

    // Update: add and remove in Docker's words.
    let ServiceCommand::Update(u) = parse(&[
        "update",
        "--mount-rm",
        "/cache",
        "--mount-add",
        "type=bind,source=/srv/cfg,target=/cfg,ro",
        "--cap-add",
        "ALL",
        "--read-only=false",
        "--init",
        "--sysctl-rm",
        "net.core.somaxconn",
        "--label-add",
        "tier=2",
        "--label-rm",
        "team",
        "--dns-rm",
        "1.1.1.1",
        "--user",
        "",
        "db",
    ]) else {
        panic!("not an update")
    };
    let mut updated = spec.clone();
    u.apply(&mut updated).unwrap();
    let o = &updated.container;
    assert_eq!(o.mounts.iter().map(|m| m.target.to_string()).collect::<Vec<_>>(), ["/var/lib/postgresql/data", "/cfg"]);
    assert!(o.cap_drop.is_empty() && o.cap_add.iter().any(|c| c.as_str() == "ALL"), "cap-add ALL undoes cap-drop ALL");
    assert_eq!((o.read_only, o.init, o.user.is_none()), (false, Some(true), true));
    assert!(o.sysctls.is_empty() && o.dns.is_empty());
    assert_eq!(updated.labels.iter().map(|l| l.key.to_string()).collect::<Vec<_>>(), ["tier"]);
    let ServiceCommand::Update(u) = parse(&["update", "--mount-rm", "/nothing", "db"]) else { panic!() };
    assert!(u.apply(&mut spec.clone()).unwrap_err().to_string().contains("no mount at that target"));
    let ServiceCommand::Update(u) = parse(&["update", "--rollback", "--read-only", "db"]) else { panic!() };
    assert!(u.check().is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_container_options_are_refused_before_connecting() {
    let err = |args: &[&str]| {
        let full: Vec<&str> =
            ["service", "create", "--name", "x"].iter().copied().chain(args.iter().copied()).chain(["img"]).collect();
        Cli::try_parse_from(full).unwrap_err().to_string()
    };
    assert!(err(&["--mount", "type=bind,target=/x"]).contains("absolute source"));
    assert!(err(&["--device", "/etc/passwd"]).contains("under /dev"));
    assert!(err(&["--cap-add", "FLY"]).contains("capabilities(7)"));
    assert!(err(&["--sysctl", "kernel.panic=1"]).contains("only namespaced"));
    assert!(err(&["--ulimit", "nofile=9:1"]).contains("above the hard"));
    assert!(err(&["--dns", "example.com"]).contains("not an IP address"));
    assert!(err(&["--user", "a b"]).contains("USER[:GROUP]"));
    assert!(err(&["--workdir", "rel"]).contains("absolute"));
    assert!(err(&["--init", "--no-init"]).contains("cannot be used with"));
    let ServiceCommand::Create(c) =
        parse(&["create", "--name", "x", "--network", "host", "--sysctl", "net.ipv4.ip_forward=1", "img"])
    else {
        panic!()
    };
    assert!(c.spec().unwrap_err().to_string().contains("--network host"));
    let ServiceCommand::Create(c) = parse(&["create", "--name", "x", "--env-file", "/nonexistent/shoal.env", "img"])
    else {
        panic!()
    };
    assert!(c.spec().unwrap_err().to_string().contains("env file /nonexistent/shoal.env"));
}

#[test]
fn a_spec_stored_before_container_options_still_loads() {
    let spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
    let mut old = serde_json::to_value(&spec).unwrap();
    old.as_object_mut().unwrap().remove("container");
    old.as_object_mut().unwrap().remove("labels");
    let loaded: ServiceSpec = serde_json::from_value(old).unwrap();
    assert_eq!(loaded, spec);
    let mut task = serde_json::to_value(spec.task_spec()).unwrap();
    task.as_object_mut().unwrap().remove("container");
    assert_eq!(serde_json::from_value::<shoal_proto::services::TaskSpec>(task).unwrap(), spec.task_spec());
    // Options saved with only some fields (a later version adds more) load too.
    let partial: shoal_proto::options::ContainerOptions = serde_json::from_str(r#"{"read_only":true}"#).unwrap();
    assert!(partial.read_only && partial.mounts.is_empty());
}
