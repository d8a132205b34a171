//! `shoal volume ls|inspect|rm` in the manager: volumes are the boards' own (see the
//! agent's `volumes`), so the manager keeps no record of them and asks each connected
//! board over its session connection, in parallel, each with a deadline. A removal is
//! refused here first when a service's task on that board mounts the volume (naming
//! the service), and by the board when one of its containers still does.

use super::*;
use shoal_proto::volumes::{VolumeControl, VolumeInfo, VolumeReply, VolumeRequest, VolumeView};
use shoal_proto::{Hostname, TaskState};

/// How long a board gets to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks `conn`'s board one volume request.
async fn ask(conn: quinn::Connection, req: VolumeRequest) -> Result<Vec<VolumeInfo>, ErrorReply> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        framed::send(&mut send, &Envelope::new(Request::Volume(req))).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        match framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err("the node closed the stream without answering".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Ok(Ok(Response::Volumes(v))) => Ok(v.into_vec()),
        Ok(Ok(Response::Error(e))) => Err(e),
        Ok(Ok(_)) => Err(ErrorReply::new(ErrorKind::Internal, "the node gave an answer that is not about volumes")),
        Ok(Err(e)) => Err(ErrorReply::new(ErrorKind::Internal, &e)),
        Err(_) => Err(ErrorReply::new(ErrorKind::Internal, "the node did not answer in time")),
    }
}

/// The connected boards: ID, hostname, connection.
fn connected(mgr: &Manager, nodes: &[NodeRecord]) -> Vec<(NodeId, Hostname, quinn::Connection)> {
    let st = mgr.state.lock().expect("state lock");
    nodes
        .iter()
        .filter_map(|n| st.sessions.get(&n.id).map(|s| (n.id.clone(), n.description.hostname.clone(), s.conn.clone())))
        .collect()
}

/// Asks every board in `boards` at once.
async fn ask_all(
    boards: Vec<(NodeId, Hostname, quinn::Connection)>,
    req: VolumeRequest,
) -> Vec<(NodeId, Hostname, Result<Vec<VolumeInfo>, ErrorReply>)> {
    let mut set = tokio::task::JoinSet::new();
    for (id, host, conn) in boards {
        let req = req.clone();
        set.spawn(async move { (id, host, ask(conn, req).await) });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out.sort_by(|a, b| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
    out
}

/// The services whose tasks on `node` (not yet ended) mount volume `name`.
fn services_using(mgr: &Manager, node: &NodeId, name: &str) -> Vec<String> {
    let svc = mgr.services.lock().expect("services lock");
    let mut names: Vec<String> = svc
        .tasks
        .values()
        .filter(|t| t.node_id.as_ref() == Some(node) && t.desired_state <= TaskState::Running)
        .filter(|t| !t.status.state.is_terminal())
        .filter(|t| t.spec.container.volume_names().any(|v| v == name))
        .filter_map(|t| svc.records.get(&t.service_id).map(|r| r.service.spec.name.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

pub(super) async fn handle(mgr: &Manager, req: VolumeControl, nodes: &[NodeRecord]) -> Result<VolumeReply, ErrorReply> {
    match req {
        VolumeControl::List => {
            let mut volumes = Vec::new();
            let mut unreachable = Vec::new();
            for (node, hostname, answer) in ask_all(connected(mgr, nodes), VolumeRequest::List).await {
                match answer {
                    Ok(list) => volumes.extend(list.into_iter().map(|volume| VolumeView {
                        node: node.clone(),
                        hostname: hostname.clone(),
                        volume,
                    })),
                    Err(e) => {
                        debug!(node = %hostname, error = %e.message, "no volume list");
                        unreachable.push(hostname);
                    }
                }
            }
            volumes.truncate(shoal_proto::volumes::MAX_VOLUME_VIEWS);
            unreachable.truncate(256);
            Ok(VolumeReply::Volumes {
                volumes: volumes.try_into().map_err(internal)?,
                unreachable: unreachable.try_into().map_err(internal)?,
            })
        }
        VolumeControl::Remove { name, node } => {
            shoal_proto::options::check_volume_name(&name)
                .map_err(|e| ErrorReply::new(ErrorKind::InvalidRequest, &e))?;
            let mut boards = connected(mgr, nodes);
            if let Some(query) = &node {
                let record = nodes::resolve(nodes, query)?;
                boards.retain(|(id, _, _)| *id == record.id);
                if boards.is_empty() {
                    return Err(ErrorReply::new(
                        ErrorKind::Conflict,
                        &format!("node {} is not connected: see `shoal node ls`", record.description.hostname),
                    ));
                }
            }
            // Only the boards that have it.
            let mut having = Vec::new();
            for (id, host, answer) in ask_all(boards.clone(), VolumeRequest::List).await {
                if answer.is_ok_and(|l| l.iter().any(|v| v.name == name)) {
                    having.push(id.clone());
                    let users = services_using(mgr, &id, &name);
                    if !users.is_empty() {
                        return Err(ErrorReply::new(
                            ErrorKind::Conflict,
                            &format!(
                                "volume {name} on {host} is in use by service {}: remove the service first",
                                users.join(", ")
                            ),
                        ));
                    }
                }
            }
            if having.is_empty() {
                return Err(ErrorReply::new(ErrorKind::NotFound, &format!("no such volume: {name}")));
            }
            boards.retain(|(id, _, _)| having.contains(id));
            let mut removed = Vec::new();
            for (_, host, answer) in ask_all(boards, VolumeRequest::Remove { name: name.clone() }).await {
                match answer {
                    Ok(_) => removed.push(host),
                    Err(e) => {
                        let message = format!("on {host}: {}", e.message);
                        return Err(ErrorReply::new(e.kind, &message));
                    }
                }
            }
            Ok(VolumeReply::Removed(removed.try_into().map_err(internal)?))
        }
    }
}
