use std::sync::Mutex;

use shoal_proto::services::{Service, ServiceId, ServiceSpec};
use shoal_proto::{BoundedVec, ErrorKind, ErrorReply};

use super::*;

/// Answers like the manager would for one service `web` at spec version 3, and records
/// every request.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<ControlRequest>>,
}

fn web() -> ServiceView {
    let spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
    ServiceView {
        service: Service {
            id: ServiceId::from_random([7; 16]),
            spec,
            spec_version: 3,
            created_at_ms: 1_700_000_000_000,
            virtual_ips: BoundedVec::new(),
        },
        running: 1,
        desired: 1,
        updated: 1,
        update_status: None,
    }
}

impl Backend for Fake {
    async fn call(&self, req: ControlRequest) -> Result<ControlReply, ErrorReply> {
        self.seen.lock().unwrap().push(req.clone());
        match req {
            ControlRequest::Service(ServiceRequest::Inspect { service }) if service.as_str() != "nope" => {
                Ok(ControlReply::Service(ServiceReply::Service(Box::new(web()))))
            }
            ControlRequest::Service(ServiceRequest::Inspect { service }) => {
                Err(ErrorReply::new(ErrorKind::NotFound, &format!("no such service: {service}")))
            }
            ControlRequest::Service(ServiceRequest::List) => {
                Ok(ControlReply::Service(ServiceReply::Services(vec![web()].try_into().unwrap())))
            }
            ControlRequest::Service(ServiceRequest::Update { version, .. }) if version != 3 => Err(ErrorReply::new(
                ErrorKind::Conflict,
                &format!("service web changed since it was read (version {version}, now 3): run the command again"),
            )),
            ControlRequest::Service(ServiceRequest::Update { .. } | ServiceRequest::Rollback { .. }) => {
                Ok(ControlReply::Service(ServiceReply::Done(web().service.id)))
            }
            ControlRequest::Service(ServiceRequest::Create(_)) => {
                Ok(ControlReply::Service(ServiceReply::Created(ServiceId::from_random([9; 16]))))
            }
            ControlRequest::Network(NetworkRequest::List) => {
                Ok(ControlReply::Network(NetworkReply::Networks(BoundedVec::new())))
            }
            ControlRequest::ImageList => Ok(ControlReply::Images(BoundedVec::new())),
            ControlRequest::NodeList => Ok(ControlReply::Nodes(BoundedVec::new())),
            ControlRequest::Ca { rotate: false } => Ok(ControlReply::Ca(shoal_proto::CaStatus {
                digest: [1; 32],
                ca_until_ms: 0,
                cert_expiry_ms: 7_776_000_000,
                rotating: false,
                rotating_to: None,
                rotated: 0,
                to_rotate: 0,
                waiting_for: BoundedVec::new(),
            })),
            ControlRequest::JoinToken { rotate } => Ok(ControlReply::JoinToken {
                token: shoal_proto::text(if rotate { "SHOAL-1-new" } else { "SHOAL-1-old" }).unwrap(),
                manager_addr: shoal_proto::text("10.0.0.1:4242").unwrap(),
            }),
            other => Err(ErrorReply::new(ErrorKind::InvalidRequest, &format!("fake does not answer {other:?}"))),
        }
    }
}

async fn call(fake: &Fake, method: &str, path: &str, query: &str, body: &str) -> Result<Reply, ApiError> {
    handle(fake, Request { method, path, query, body: body.as_bytes() }).await
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

#[test]
fn versions_are_negotiated_as_dockerd_does() {
    let fake = Fake::default();
    run(async {
        for path in ["/_ping", "/v1.41/_ping", "/v1.50/_ping", "/v1.24/_ping"] {
            assert_eq!(call(&fake, "GET", path, "", "").await.unwrap().body, "OK", "{path}");
        }
        let e = call(&fake, "GET", "/v1.51/info", "", "").await.unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.message, "client version 1.51 is too new. Maximum supported API version is 1.50");
        let e = call(&fake, "GET", "/v1.12/info", "", "").await.unwrap_err();
        assert!(e.message.starts_with("client version 1.12 is too old. Minimum supported API version is 1.24"));
        let v: Value = serde_json::from_str(&call(&fake, "GET", "/v1.41/version", "", "").await.unwrap().body).unwrap();
        assert_eq!((v["ApiVersion"].as_str(), v["MinAPIVersion"].as_str()), (Some("1.50"), Some("1.24")));
    });
}

#[test]
fn endpoints_shoal_lacks_say_what_to_use_and_unknown_paths_are_404() {
    let fake = Fake::default();
    run(async {
        let e = call(&fake, "POST", "/v1.50/containers/create", "", "{}").await.unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (501, "shoal manages services: use docker service create (containers run only as tasks of services)")
        );
        let e = call(&fake, "POST", "/v1.50/swarm/init", "", "{}").await.unwrap_err();
        assert!(e.message.contains("shoal manager init"));
        let e = call(&fake, "GET", "/v1.50/nothing/here", "", "").await.unwrap_err();
        assert_eq!(e.status, 404);
        assert_eq!(
            e.body(),
            r#"{"message":"page not found: GET /nothing/here is not an Engine API endpoint shoal serves (see docs/docker-api.md)"}"#
        );
    });
    assert!(fake.seen.lock().unwrap().is_empty(), "refusals never reach the manager");
}

#[test]
fn bad_bodies_are_refused_before_the_manager_sees_them() {
    let fake = Fake::default();
    run(async {
        let e = call(&fake, "POST", "/v1.50/services/create", "", "{\"Name\": ").await.unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("malformed JSON body:"), "{}", e.message);
        let e = call(&fake, "POST", "/v1.50/services/create", "", "").await.unwrap_err();
        assert_eq!(e.message, "the request needs a JSON body");
        let unknown = r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"demo/app:1.0","Colour":"blue"}}}"#;
        let e = call(&fake, "POST", "/v1.50/services/create", "", unknown).await.unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("TaskTemplate.ContainerSpec.Colour is not supported"), "{}", e.message);
        let e = call(&fake, "POST", "/v1.50/services/create", "", r#"{"TaskTemplate":{}}"#).await.unwrap_err();
        assert!(e.message.starts_with("Name: a service needs a name"));
    });
    let seen = fake.seen.lock().unwrap();
    assert!(!seen.iter().any(|r| matches!(r, ControlRequest::Service(ServiceRequest::Create(_)))));
}

#[test]
fn create_maps_the_docker_spec_onto_one_shoal_create() {
    let fake = Fake::default();
    let body = r#"{"Name":"w","Labels":{"com.docker.stack.namespace":"lab"},
        "TaskTemplate":{"ContainerSpec":{"Image":"demo/app:1.0","Args":["-p","80"],"Init":false}},
        "Mode":{"Replicated":{"Replicas":3}}}"#;
    let reply = run(call(&fake, "POST", "/v1.50/services/create", "", body)).unwrap();
    assert_eq!(reply.status, 201);
    let v: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(v["ID"], ServiceId::from_random([9; 16]).as_str());
    let seen = fake.seen.lock().unwrap();
    let spec = seen
        .iter()
        .find_map(|r| match r {
            ControlRequest::Service(ServiceRequest::Create(s)) => Some(s.clone()),
            _ => None,
        })
        .expect("one create");
    assert_eq!(spec.mode, shoal_proto::services::ServiceMode::Replicated { replicas: 3 });
    assert_eq!(spec.args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["-p", "80"]);
    assert_eq!(spec.labels[0].key.as_str(), "com.docker.stack.namespace");
}

#[test]
fn update_needs_the_version_and_a_stale_one_is_a_conflict() {
    let fake = Fake::default();
    run(async {
        // What the docker CLI sends back: the inspected spec with one change.
        let inspected: Value =
            serde_json::from_str(&call(&fake, "GET", "/v1.50/services/web", "", "").await.unwrap().body).unwrap();
        assert_eq!(inspected["Version"]["Index"], 3);
        let mut spec = inspected["Spec"].clone();
        spec["Mode"]["Replicated"]["Replicas"] = json!(6);
        let body = spec.to_string();
        let e = call(&fake, "POST", "/v1.50/services/web/update", "", &body).await.unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("the version query parameter is required"));
        let e = call(&fake, "POST", "/v1.50/services/web/update", "version=2", &body).await.unwrap_err();
        assert_eq!(e.status, 409);
        assert!(e.message.contains("changed since it was read"));
        let ok = call(&fake, "POST", "/v1.50/services/web/update", "version=3", &body).await.unwrap();
        assert_eq!(ok.status, 200);
        // A rollback at a stale version is refused here, one at the current one is sent.
        let e = call(&fake, "POST", "/v1.50/services/web/update", "version=1&rollback=previous", &body).await;
        assert_eq!(e.unwrap_err().status, 409);
        call(&fake, "POST", "/v1.50/services/web/update", "version=3&rollback=previous", &body).await.unwrap();
        let e = call(&fake, "GET", "/v1.50/services/nope", "", "").await.unwrap_err();
        assert_eq!((e.status, e.message.as_str()), (404, "no such service: nope"));
    });
    let seen = fake.seen.lock().unwrap();
    let replicas: Vec<_> = seen
        .iter()
        .filter_map(|r| match r {
            ControlRequest::Service(ServiceRequest::Update { spec, version, .. }) => Some((spec.mode, *version)),
            _ => None,
        })
        .collect();
    let six = shoal_proto::services::ServiceMode::Replicated { replicas: 6 };
    assert_eq!(replicas, [(six, 2), (six, 3)]);
    assert_eq!(
        seen.iter().filter(|r| matches!(r, ControlRequest::Service(ServiceRequest::Rollback { .. }))).count(),
        1
    );
}

#[test]
fn service_filters_select_and_bad_filters_are_refused() {
    let fake = Fake::default();
    run(async {
        let list = |q: &'static str| {
            let fake = &fake;
            async move {
                let r = call(fake, "GET", "/v1.50/services", q, "").await?;
                Ok::<usize, ApiError>(serde_json::from_str::<Value>(&r.body).unwrap().as_array().unwrap().len())
            }
        };
        assert_eq!(list("filters=%7B%22name%22%3A%7B%22we%22%3Atrue%7D%7D").await.unwrap(), 1);
        assert_eq!(list("filters=%7B%22name%22%3A%5B%22db%22%5D%7D").await.unwrap(), 0);
        assert_eq!(list("filters=%7B%22mode%22%3A%5B%22global%22%5D%7D").await.unwrap(), 0);
        assert_eq!(list("filters=%7B%22colour%22%3A%5B%22x%22%5D%7D").await.unwrap_err().status, 400);
    });
}

#[test]
fn query_values_are_percent_decoded() {
    assert_eq!(query_param("a=1&filters=%7B%22x%22%7D+y", "filters").as_deref(), Some("{\"x\"} y"));
    assert_eq!(query_param("a=1", "b"), None);
    assert_eq!(percent_decode("100%"), "100%");
    assert_eq!(percent_decode("%zz%4"), "%zz%4");
}

#[test]
fn swarm_update_rotates_the_worker_token_only_and_refuses_settings_by_name() {
    let fake = Fake::default();
    run(async {
        let swarm: Value =
            serde_json::from_str(&call(&fake, "GET", "/v1.50/swarm", "", "").await.unwrap().body).unwrap();
        assert_eq!(swarm["JoinTokens"]["Worker"], "SHOAL-1-old");
        let spec = swarm["Spec"].to_string();
        let rotate = "version=1&rotateWorkerToken=true&rotateManagerToken=false&rotateManagerUnlockKey=false";
        assert_eq!(call(&fake, "POST", "/v1.50/swarm/update", rotate, &spec).await.unwrap().status, 200);
        let e =
            call(&fake, "POST", "/v1.50/swarm/update", "version=7&rotateWorkerToken=true", &spec).await.unwrap_err();
        assert_eq!(e.status, 409);
        let e =
            call(&fake, "POST", "/v1.50/swarm/update", "version=1&rotateManagerToken=true", &spec).await.unwrap_err();
        assert!(e.message.contains("no manager join token"), "{}", e.message);
        let mut changed = swarm["Spec"].clone();
        changed["CAConfig"]["NodeCertExpiry"] = json!(3_600_000_000_000u64);
        let e = call(&fake, "POST", "/v1.50/swarm/update", "version=1", &changed.to_string()).await.unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "Spec.CAConfig.NodeCertExpiry: use `shoal manager update --cert-expiry`")
        );
        let e = call(&fake, "POST", "/v1.50/swarm/update", "version=1", &spec).await.unwrap_err();
        assert_eq!(e.status, 501);
    });
    let seen = fake.seen.lock().unwrap();
    let rotations = seen.iter().filter(|r| matches!(r, ControlRequest::JoinToken { rotate: true })).count();
    assert_eq!(rotations, 1, "only the good request rotates");
}

#[test]
fn portainers_read_views_answer_from_what_the_manager_holds() {
    let fake = Fake::default();
    run(async {
        assert_eq!(call(&fake, "GET", "/v1.50/containers/json", "all=1", "").await.unwrap().body, "[]");
        assert_eq!(call(&fake, "GET", "/v1.50/images/json", "", "").await.unwrap().body, "[]");
        let v: Value = serde_json::from_str(&call(&fake, "GET", "/v1.50/volumes", "", "").await.unwrap().body).unwrap();
        assert_eq!(v["Volumes"], json!([]));
        let df: Value =
            serde_json::from_str(&call(&fake, "GET", "/v1.50/system/df", "", "").await.unwrap().body).unwrap();
        assert_eq!((df["LayersSize"].as_u64(), df["Containers"].clone()), (Some(0), json!([])));
        // Writes stay refused.
        let e = call(&fake, "POST", "/v1.50/containers/create", "", "{}").await.unwrap_err();
        assert_eq!(e.status, 501);
        let e = call(&fake, "DELETE", "/v1.50/images/demo", "", "").await.unwrap_err();
        assert_eq!(e.status, 501);
    });
}
