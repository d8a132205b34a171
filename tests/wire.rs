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
