//! One frame body decoded as the message type its first byte picks: every type the
//! manager, the agent or the CLI decodes from the network, and the parts the manager
//! then works on (a spec it validates, a status report it applies to a task).
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_fuzz::fuzz_target;
use shoal_fuzz::round_trip;
use shoal_proto::dispatch::{Assignment, ServiceReply, ServiceRequest, TaskReport};
use shoal_proto::{
    apply_status, AgentMessage, ControlReply, ControlRequest, Envelope, FetchBlob, JoinAccepted, JoinRequest,
    ManagerMessage, Request, Response, ServiceSpec, SessionOpen, Task, TaskStatus,
};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 16 {
        0 => drop(round_trip::<Envelope>(body)),
        1 => drop(round_trip::<Request>(body)),
        2 => drop(round_trip::<Response>(body)),
        3 => drop(round_trip::<AgentMessage>(body)),
        4 => drop(round_trip::<ManagerMessage>(body)),
        5 => drop(round_trip::<ControlRequest>(body)),
        6 => drop(round_trip::<ControlReply>(body)),
        7 => {
            if let Some(ServiceRequest::Create(spec) | ServiceRequest::Update { spec, .. }) =
                round_trip::<ServiceRequest>(body)
            {
                spec_work(&spec);
            }
        }
        8 => drop(round_trip::<ServiceReply>(body)),
        9 => drop(round_trip::<JoinRequest>(body)),
        10 => drop(round_trip::<JoinAccepted>(body)),
        11 => drop(round_trip::<SessionOpen>(body)),
        12 => drop(round_trip::<FetchBlob>(body)),
        13 => {
            if let Some(a) = round_trip::<Assignment>(body) {
                let _ = a.spec.clone();
            }
        }
        14 => {
            // The manager applies an agent's report to the task it stores.
            if let Some((mut task, report)) = round_trip::<(Task, TaskReport)>(body) {
                let before = task.status.state;
                let status: TaskStatus = report.status;
                if apply_status(&mut task, status).is_ok() {
                    assert!(task.status.state >= before, "a task state moved backward");
                }
            }
        }
        _ => {
            if let Some(spec) = round_trip::<ServiceSpec>(body) {
                spec_work(&spec);
            }
        }
    }
});

/// What the manager does with a spec from the wire before storing it.
fn spec_work(spec: &ServiceSpec) {
    if spec.validate().is_ok() {
        let _ = spec.task_spec();
    }
    for port in spec.ports.iter() {
        let _ = (port.published_text(), port.summary());
    }
}
