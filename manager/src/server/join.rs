//! Joining: checking a board's token and signing its certificate request. Nothing is
//! written unless every check passed.

use super::*;

/// A board with a token asks to join: check the token, sign its CSR, record the node.
/// Nothing is written unless every check passed.
pub(super) fn handle_join(mgr: &Manager, join: JoinRequest) -> Result<Response, ErrorReply> {
    let rotated_hint = "ask the manager for the current one with `shoal manager join-token worker`";
    let token: JoinToken = join
        .token
        .parse()
        .map_err(|e: shoal_proto::token::TokenError| ErrorReply::new(ErrorKind::InvalidToken, &e.to_string()))?;
    let cluster = mgr.cluster.lock().expect("cluster lock").clone();
    let (ca, expiry) = {
        let pki = mgr.pki.lock().expect("pki lock");
        (pki.current.clone(), pki.record.cert_expiry_ms)
    };
    // Only the current CA's token: after a rotation, the old one is refused.
    if token.ca_digest != ca.digest() {
        return Err(ErrorReply::new(
            ErrorKind::InvalidToken,
            &format!("join token is for another cluster: {rotated_hint}"),
        ));
    }
    let expected = JoinToken { ca_digest: token.ca_digest, secret: cluster.worker_secret.clone() };
    if !token.secret_matches(&expected) {
        return Err(ErrorReply::new(
            ErrorKind::InvalidToken,
            &format!("invalid join token (wrong, or rotated away): {rotated_hint}"),
        ));
    }
    if join.node.hostname.is_empty() {
        return Err(ErrorReply::new(ErrorKind::InvalidRequest, "a joining node must say its hostname"));
    }
    let node_id = NodeId::from_random(shoal_link::random());
    // Signed by the CA the token pins, the one the board trusts; during a rotation its
    // session asks it to renew at once.
    let certificate = ca
        .sign_node(join.csr.as_slice(), node_id.as_str(), &cluster.cluster_id, expiry)
        .map_err(|e| ErrorReply::new(ErrorKind::InvalidRequest, &format!("bad certificate request: {e}")))?;
    let record = NodeRecord {
        id: node_id.clone(),
        role: Role::Worker,
        availability: Availability::Active,
        labels: BoundedVec::new(),
        addr: join.node.advertise_addr.as_ref().map(|a| a.to_string()),
        description: join.node,
        created_at_ms: shoal_link::wall_ms(),
        ingress_address: None,
    };
    let held = pki::node_cert(&mgr.pki.lock().expect("pki lock"), &certificate);
    mgr.store.put_joined(&record, held.as_ref()).map_err(internal)?;
    mgr.state.lock().expect("state lock").members.track(mgr.now(), node_id.clone());
    info!(node = %node_id, hostname = %record.description.hostname, "node joined");
    Ok(Response::Joined(JoinAccepted {
        node_id,
        certificate: certificate.to_vec().try_into().map_err(internal)?,
        ca: ca.cert().to_vec().try_into().map_err(internal)?,
    }))
}
