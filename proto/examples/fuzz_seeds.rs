//! Writes the wire seeds of the fuzz corpus (`fuzz/corpus/frame`, `fuzz/corpus/messages`):
//! real messages of each kind, encoded by this build. Run it after a message changes:
//! `cargo run -p shoal-proto --example fuzz_seeds -- fuzz/corpus`.

use std::path::Path;

use serde::Serialize;
use shoal_proto::dispatch::{Assignment, ServiceReply, ServiceRequest, TaskReport};
use shoal_proto::frame::{encode, MAX_FRAME_LEN};
use shoal_proto::{
    text, AgentMessage, Availability, BoundedVec, Bytes, Constraint, ControlReply, ControlRequest, Envelope, ErrorKind,
    ErrorReply, FetchBlob, JoinAccepted, JoinRequest, Label, ManagerMessage, NodeDescription, NodeId, PortConfig,
    Request, Response, ServiceSpec, SessionOpen, TaskId, TaskState, TaskStatus,
};

fn main() {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds CORPUS_DIR");
    let dir = Path::new(&dir);
    let node = NodeDescription {
        hostname: text("node1").unwrap(),
        arch: text("aarch64").unwrap(),
        os: text("linux").unwrap(),
        advertise_addr: Some(text("10.0.0.11").unwrap()),
        labels: BoundedVec::try_from(vec![Label::parse("zone=attic").unwrap()]).unwrap(),
        ..NodeDescription::default()
    };
    let mut spec = ServiceSpec::new(text("web").unwrap(), text("demo/app:1.0").unwrap());
    spec.ports = BoundedVec::try_from(vec![PortConfig::parse("8000:8000").unwrap()]).unwrap();
    spec.constraints = BoundedVec::try_from(vec![Constraint::parse("node.labels.zone==attic").unwrap()]).unwrap();
    let task_id = TaskId::from_random([7; 16]);
    let node_id = NodeId::from_random([3; 16]);
    let status = TaskStatus::new(TaskState::Running, 1_700_000_000_000, "started");
    let join = JoinRequest {
        token: text(
            "SHOAL-1-abababababababababababababababababababababababababababababababab-0123456789abcdefghijklmno",
        )
        .unwrap(),
        csr: Bytes::try_from(&b"0\x82\x01\x00not really a csr"[..]).unwrap(),
        node: node.clone(),
    };
    let fetch = FetchBlob { digest: text(&format!("sha256:{}", "ab".repeat(32))).unwrap(), offset: 0 };
    let assignment = Assignment {
        task_id: task_id.clone(),
        service_name: text("web").unwrap(),
        slot: 1,
        spec: spec.task_spec(),
        desired_state: TaskState::Running,
        hosts: BoundedVec::new(),
        networks: BoundedVec::new(),
        service_id: None,
    };
    let report = TaskReport { task_id: task_id.clone(), status: status.clone() };

    let envelopes = [
        Request::Join(join.clone()),
        Request::OpenSession(SessionOpen { node: node.clone() }),
        Request::Ping,
        Request::FetchBlob(fetch.clone()),
        Request::Control(ControlRequest::NodeList),
        Request::Control(ControlRequest::NodeUpdate {
            node: text("node1").unwrap(),
            availability: Some(Availability::Drain),
            label_add: BoundedVec::try_from(vec![Label::parse("gpu").unwrap()]).unwrap(),
            label_rm: BoundedVec::new(),
        }),
        Request::Control(ControlRequest::Service(ServiceRequest::Create(Box::new(spec.clone())))),
        Request::Control(ControlRequest::Service(ServiceRequest::Ps { services: BoundedVec::new() })),
    ]
    .map(Envelope::new);
    let responses = [
        Response::Pong,
        Response::Blob { size: 1234 },
        Response::SessionAccepted { node_id: node_id.clone(), heartbeat_period_ms: 500 },
        Response::Joined(JoinAccepted {
            node_id: node_id.clone(),
            certificate: Bytes::try_from(&b"cert"[..]).unwrap(),
            ca: Bytes::try_from(&b"ca"[..]).unwrap(),
        }),
        Response::Error(ErrorReply::new(ErrorKind::VersionMismatch, "protocol version mismatch")),
        Response::Control(ControlReply::Done(ErrorReply::new(ErrorKind::Internal, "done").message)),
        Response::Control(ControlReply::Service(ServiceReply::Created(shoal_proto::ServiceId::from_random([5; 16])))),
    ];
    let agent = [
        AgentMessage::Heartbeat { seq: 42 },
        AgentMessage::TaskStatuses(BoundedVec::try_from(vec![report.clone()]).unwrap()),
    ];
    let manager = [
        ManagerMessage::Assignments {
            full: true,
            more: false,
            upsert: BoundedVec::try_from(vec![assignment.clone()]).unwrap(),
            remove: BoundedVec::new(),
        },
        ManagerMessage::Closing(ErrorReply::new(ErrorKind::NodeRemoved, "this node was removed")),
        ManagerMessage::HeartbeatPeriod { period_ms: 500 },
    ];

    // frame: a piece size, then one or more whole frames.
    let mut n = 0;
    let mut frame_seed = |bodies: &[Vec<u8>]| {
        let mut seed = vec![7u8];
        for b in bodies {
            seed.extend_from_slice(b);
        }
        write(dir, "frame", &mut n, &seed);
    };
    for e in &envelopes {
        frame_seed(&[frame(e)]);
    }
    for r in &responses {
        frame_seed(&[frame(r)]);
    }
    frame_seed(&agent.iter().map(frame).collect::<Vec<_>>());
    for m in &manager {
        frame_seed(&[frame(m)]);
    }

    // messages: the kind byte the target reads, then one body.
    let mut n = 0;
    let mut msg = |kind: u8, body: Vec<u8>| {
        let mut seed = vec![kind];
        seed.extend_from_slice(&body);
        write(dir, "messages", &mut n, &seed);
    };
    for e in &envelopes {
        msg(0, body(e));
        msg(1, body(&e.request));
    }
    for r in &responses {
        msg(2, body(r));
    }
    for a in &agent {
        msg(3, body(a));
    }
    for m in &manager {
        msg(4, body(m));
    }
    msg(5, body(&ControlRequest::ImageLoad { size: 1 << 20 }));
    msg(6, body(&ControlReply::JoinToken { token: join.token.clone(), manager_addr: text("10.0.0.1:4242").unwrap() }));
    msg(7, body(&ServiceRequest::Create(Box::new(spec.clone()))));
    msg(8, body(&ServiceReply::Done(shoal_proto::ServiceId::from_random([5; 16]))));
    msg(9, body(&join));
    msg(11, body(&SessionOpen { node }));
    msg(12, body(&fetch));
    msg(13, body(&assignment));
    msg(15, body(&spec));
}

fn body<T: Serialize>(msg: &T) -> Vec<u8> {
    frame(msg)[4..].to_vec()
}

fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    encode(msg, MAX_FRAME_LEN).expect("seed encodes")
}

fn write(dir: &Path, target: &str, n: &mut usize, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    *n += 1;
    std::fs::write(dir.join(format!("seed-{n:02}")), bytes).expect("write seed");
}
