//! Bad input on the wire, from a real QUIC client in the test process against a real
//! manager process: oversized, garbage and wrong-version frames get a clear refusal and
//! the manager keeps serving; a connection without a certificate can't act as an agent
//! or an administrator.

use std::time::Duration;

use shoal_e2e::Cluster;
use shoal_link::{ClientTls, Trust};
use shoal_proto::{ControlRequest, Envelope, ErrorKind, JoinToken, Request, Response, SessionOpen};

async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    shoal_link::framed::recv::<Response>(&mut recv, 1 << 20).await.unwrap().expect("an answer")
}

fn refused(r: Response) -> (ErrorKind, String) {
    match r {
        Response::Error(e) => (e.kind, e.message.to_string()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
#[ignore = "needs root"]
fn malformed_frames_are_refused_and_the_manager_keeps_serving() {
    let c = Cluster::start(1).unwrap();
    let token: JoinToken = c.token.parse().unwrap();
    let addr = format!("{}:4242", c.manager_host().ip).parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tls = ClientTls::new(Trust::CaDigest(token.ca_digest), None, Duration::from_secs(5)).unwrap();
        let endpoint = shoal_link::client_endpoint(addr).unwrap();
        let conn = shoal_link::connect(&endpoint, addr, &tls, Duration::from_secs(5)).await.unwrap();

        // A 4 GiB length: refused from the header alone.
        let (kind, msg) = refused(raw_exchange(&conn, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await);
        assert_eq!(kind, ErrorKind::InvalidRequest);
        assert!(msg.contains("exceeds the limit"), "{msg}");

        // A well-framed body of garbage after the right version (a one-byte varint).
        let mut garbage = 6u32.to_be_bytes().to_vec();
        let version = u8::try_from(shoal_proto::PROTOCOL_VERSION).unwrap();
        assert!(version < 0x80, "the version must still fit a one-byte varint here");
        garbage.extend_from_slice(&[version, 0xee, 0xee, 0xee, 0xee, 0xee]);
        let (kind, msg) = refused(raw_exchange(&conn, &garbage).await);
        assert_eq!(kind, ErrorKind::InvalidRequest);
        assert!(msg.contains("malformed request"), "{msg}");

        // A peer from the future.
        let mut env = Envelope::new(Request::Ping);
        env.version = 99;
        let frame = shoal_proto::frame::encode(&env, 1 << 20).unwrap();
        let (kind, msg) = refused(raw_exchange(&conn, &frame).await);
        assert_eq!(kind, ErrorKind::VersionMismatch);
        assert!(msg.contains("protocol version mismatch"), "{msg}");

        // No certificate: no session, no control.
        let open = Envelope::new(Request::OpenSession(SessionOpen { node: Default::default() }));
        let (_, _, r) = shoal_link::request(&conn, &open, Duration::from_secs(5)).await.unwrap();
        assert_eq!(refused(r).0, ErrorKind::Unauthorized);
        let ctl = Envelope::new(Request::Control(ControlRequest::NodeList));
        let (_, _, r) = shoal_link::request(&conn, &ctl, Duration::from_secs(5)).await.unwrap();
        assert_eq!(refused(r).0, ErrorKind::Unauthorized);

        // Still serving, on the same connection.
        let (_, _, r) =
            shoal_link::request(&conn, &Envelope::new(Request::Ping), Duration::from_secs(5)).await.unwrap();
        assert_eq!(r, Response::Pong);
        conn.close(0u32.into(), b"done");
    });
    assert_eq!(c.nodes().len(), 2);
}

/// One stranger's connection: `streams` streams, each announcing `announce` bytes and
/// sending `send` of them, held open. Returns how many streams the manager let it open.
async fn hold_partial_frames(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    tls: &ClientTls,
    streams: usize,
    announce: u32,
    send: usize,
) -> (Option<quinn::Connection>, Vec<quinn::SendStream>) {
    let Ok(conn) = shoal_link::connect(endpoint, addr, tls, Duration::from_secs(5)).await else {
        return (None, Vec::new());
    };
    let mut held = Vec::new();
    for _ in 0..streams {
        // A manager that grants no more streams makes `open_bi` wait: stop there.
        let Ok(Ok((mut tx, _rx))) = tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await else {
            break;
        };
        let mut bytes = announce.to_be_bytes().to_vec();
        bytes.resize(4 + send, 0x55);
        // Flow control may hold part of it back: that is the point.
        let _ = tokio::time::timeout(Duration::from_millis(200), tx.write_all(&bytes)).await;
        held.push(tx);
    }
    (Some(conn), held)
}

#[test]
#[ignore = "needs root"]
fn connections_without_a_certificate_cannot_pin_manager_memory() {
    let c = Cluster::start(1).unwrap();
    let token: JoinToken = c.token.parse().unwrap();
    let addr = format!("{}:4242", c.manager_host().ip).parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let before = c.manager.rss().unwrap();
    let (peak, opened) = rt.block_on(async {
        let tls = ClientTls::new(Trust::CaDigest(token.ca_digest), None, Duration::from_secs(30)).unwrap();
        let endpoint = shoal_link::client_endpoint(addr).unwrap();
        // Twenty strangers, each trying 100 streams: half announce 1 MiB, half announce
        // just under the limit for strangers and send half of it.
        let mut attacks = Vec::new();
        for i in 0..20 {
            let (announce, send) = if i % 2 == 0 { (1 << 20, 256 * 1024) } else { (60 * 1024, 30 * 1024) };
            attacks.push(hold_partial_frames(&endpoint, addr, &tls, 100, announce, send));
        }
        let held: Vec<_> = futures_join_all(attacks).await;
        let opened: usize = held.iter().map(|(_, s)| s.len()).sum();
        let mut peak = 0;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            peak = peak.max(c.manager.rss().unwrap());
        }
        // The manager still serves the operator meanwhile.
        let out = c.manager_host().run("shoal", &["node", "ls"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        drop(held);
        // A stranger's request that does not arrive in time is refused, not waited for.
        let conn = shoal_link::connect(&endpoint, addr, &tls, Duration::from_secs(5)).await.unwrap();
        let (mut tx, mut rx) = conn.open_bi().await.unwrap();
        tx.write_all(&[0, 0, 1, 0, 1, 2, 3]).await.unwrap();
        let answer =
            tokio::time::timeout(Duration::from_secs(15), shoal_link::framed::recv::<Response>(&mut rx, 1 << 20));
        let Ok(answer) = answer.await else { panic!("no refusal in time; manager log:\n{}", c.manager.output()) };
        let (kind, msg) = refused(answer.unwrap().unwrap());
        assert_eq!(kind, ErrorKind::InvalidRequest);
        assert!(msg.contains("no complete request within 5s"), "{msg}");
        (peak, opened)
    });
    let grew = peak.saturating_sub(before);
    eprintln!(
        "manager RSS {} MiB before, {} MiB at peak (+{} MiB) with {opened} partial frames held open",
        before >> 20,
        peak >> 20,
        grew >> 20
    );
    assert!(grew < 20 << 20, "strangers grew the manager by {} MiB", grew >> 20);
    assert_eq!(c.nodes().len(), 2);
}

/// Polls every future to completion (the test crate has no `futures`).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.into_iter().map(|f| Box::pin(f)).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await);
    }
    out
}
