//! The Docker Engine API on the manager: the real `docker` CLI (and tools built on the
//! API) drive a shoal cluster through its swarm endpoints.
//!
//! `shoal manager run` serves it on a unix socket, `docker.sock` in the manager's
//! directory: the directory is 0700 and the socket 0600, and a connection whose peer is
//! neither root nor the manager's own user is refused again here. On TCP only with
//! `--docker-tcp`, and then only TLS with the cluster's administrator certificate
//! ([`serve_tcp`]). HTTP/1.1 (hyper), request bodies bounded by [`MAX_BODY`]; logs and
//! events stream.
//!
//! Modules, one job each: [`api`] routes and answers (no sockets), [`logs`] the log
//! stream in Docker's format, [`spec`] maps Docker's
//! `ServiceSpec` onto shoal's, [`render`] shoal's views onto Docker's JSON, [`filters`]
//! parses `filters=`, [`error`] is Docker's error shape, [`backend`] reaches the manager
//! (its QUIC control API, as the `shoal` CLI does). See docs/docker-api.md.

pub mod api;
pub mod backend;
pub mod error;
pub mod filters;
pub mod logs;
pub mod objects;
pub mod render;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tracing::{debug, info, warn};

use backend::Backend;
use error::ApiError;

/// What answers carry: a whole JSON body, or a stream (logs).
pub type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// Largest request body: a service spec with every list at its bound is far smaller.
pub const MAX_BODY: usize = 1 << 20;

/// The socket's path under a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    crate::paths::manager_dir(data_dir).join("docker.sock")
}

/// Serves the API on `socket` until the future is dropped, answering from `backend`.
/// A stale socket file (from a manager that was killed) is replaced.
pub async fn serve<B: Backend>(socket: PathBuf, backend: B) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = socket.parent().map(Path::to_owned).unwrap_or_default();
    // Who may connect besides root: whoever owns the manager's directory.
    let owner = std::fs::metadata(&dir).map(|m| m.uid())?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    // A socket someone answers on belongs to a live manager; only a dead one's is replaced.
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!(
            "{} is served by another process: is another manager running on this data directory?",
            socket.display()
        );
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("cannot replace {}: {e}", socket.display())),
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("cannot serve the Docker API on {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let _file = SocketFile { ino: std::fs::metadata(&socket)?.ino(), path: socket.clone() };
    info!(socket = %socket.display(), "Docker Engine API served (DOCKER_HOST=unix://{})", socket.display());
    let backend = Arc::new(backend);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "docker api: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = stream.peer_cred().map(|c| c.uid() == 0 || c.uid() == owner).unwrap_or(false);
        let refusal =
            (!allowed).then_some("the Docker API socket is for root and the manager's user only: run docker as root");
        tokio::spawn(serve_connection(stream, backend.clone(), refusal));
    }
}

/// Serves HTTP/1.1 on one connection; every request is refused with `refusal` if set.
async fn serve_connection<B, IO>(io: IO, backend: Arc<B>, refusal: Option<&'static str>)
where
    B: Backend,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let backend = backend.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(backend, req, refusal).await) }
    });
    let io = hyper_util::rt::TokioIo::new(io);
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
        debug!(error = %e, "docker api connection ended");
    }
}

/// Docker's port for the API over TLS.
pub const DEFAULT_TLS_PORT: u16 = 2376;

/// TCP connections still in their TLS handshake at once; beyond it new ones are closed
/// at once: whoever can reach the port, certificate or not, can make the manager hold
/// no more than this.
const MAX_HANDSHAKES: usize = 32;

/// How long a TCP client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the API on TCP at `addr`, TLS only, with the configuration the manager
/// publishes in `configs` (a certificate of the cluster CA, client certificates
/// required and checked against the CAs in force). Only an administrator certificate is
/// served; a board's (or the manager's) is answered 403 on every request. There is no
/// plain-TCP mode.
pub async fn serve_tcp<B: Backend>(
    addr: std::net::SocketAddr,
    configs: tokio::sync::watch::Receiver<Option<Arc<rustls::ServerConfig>>>,
    backend: B,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the Docker API on {addr}: {e}"))?;
    serve_tls(listener, configs, backend).await
}

/// [`serve_tcp`] on a bound listener.
async fn serve_tls<B: Backend>(
    listener: tokio::net::TcpListener,
    mut configs: tokio::sync::watch::Receiver<Option<Arc<rustls::ServerConfig>>>,
    backend: B,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    // The manager publishes the first configuration as it starts.
    let config = configs.wait_for(Option::is_some).await?.clone().expect("waited for");
    let mut acceptor = tokio_rustls::TlsAcceptor::from(config);
    info!(%addr, "Docker Engine API served on TCP with TLS (DOCKER_HOST=tcp://{addr}, client certificates required)");
    let backend = Arc::new(backend);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "docker api: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if configs.has_changed().unwrap_or(false) {
            if let Some(c) = configs.borrow_and_update().clone() {
                acceptor = tokio_rustls::TlsAcceptor::from(c);
            }
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            debug!(%peer, "docker api: too many TLS handshakes at once; connection closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let backend = backend.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "docker api: TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
            let refusal = tcp_refusal(certs.first().map(|c| c.as_ref()));
            serve_connection(tls, backend, refusal).await;
        });
    }
}

/// Who may use the API on TCP: the holder of an administrator certificate (the one
/// `shoal manager docker-env --tcp` writes), as for shoal's own control API. A board's
/// certificate is of the same CA but must not manage the cluster.
pub fn tcp_refusal(cert: Option<&[u8]>) -> Option<&'static str> {
    match cert.map(crate::ca::identify) {
        Some(Ok((crate::ca::CertRole::Admin, _))) => None,
        _ => Some(
            "this client certificate is not the cluster's administrator certificate: \
             use the files `shoal manager docker-env --tcp ADDR` writes",
        ),
    }
}

/// Removes the socket when the server stops, unless another server replaced it since
/// (a manager restarted while this one was still shutting down).
struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The target of `GET /services/{id}/logs` or `GET /tasks/{id}/logs`.
fn logs_target(method: &str, path: &str) -> Option<String> {
    let (_, rest) = api::split_version(path).ok()?;
    let segs: Vec<String> = rest.trim_matches('/').split('/').map(api::percent_decode).collect();
    match (method, segs.as_slice()) {
        ("GET", [kind, id, logs]) if (kind == "services" || kind == "tasks") && logs == "logs" => Some(id.clone()),
        _ => None,
    }
}

fn is_events(method: &str, path: &str) -> bool {
    method == "GET" && api::split_version(path).is_ok_and(|(_, rest)| rest.trim_end_matches('/') == "/events")
}

/// `GET /events`: shoal keeps no event log, so there are none to replay. With `until`
/// (`docker events --since … --until …`, Portainer) the answer ends at once; without it
/// the stream stays open, empty, until the client goes away, as dockerd's would on a
/// quiet host.
fn events(query: &str) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    if api::query_param(query, "until").is_none_or(|u| u.is_empty()) {
        tokio::spawn(async move { tx.closed().await });
    }
    headers(Response::builder().status(200))
        .header("Content-Type", "application/json")
        .body(logs::ChannelBody::new(rx).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

/// dockerd's headers, on every answer.
fn headers(builder: hyper::http::response::Builder) -> hyper::http::response::Builder {
    builder
        .header("Api-Version", format!("{}.{}", api::MAX_VERSION.0, api::MAX_VERSION.1))
        .header("Docker-Experimental", "false")
        .header("Ostype", "linux")
        .header("Server", concat!("shoal/", env!("CARGO_PKG_VERSION"), " (linux)"))
        .header("Swarm", "active/manager")
        .header("Cache-Control", "no-cache, no-store, must-revalidate")
        .header("Pragma", "no-cache")
}

/// One request through [`api::handle`] (or [`logs::open`]), with dockerd's headers on
/// every answer.
async fn respond<B: Backend>(backend: Arc<B>, req: Request<Incoming>, refusal: Option<&str>) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    if refusal.is_none() && is_events(&method, &path) {
        return events(&query);
    }
    if refusal.is_none() {
        if let Some(target) = logs_target(&method, &path) {
            match logs::open(backend.clone(), &target, &query).await {
                Ok(body) => {
                    return headers(Response::builder().status(200))
                        .header("Content-Type", "application/vnd.docker.multiplexed-stream")
                        .body(body.boxed_unsync())
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()));
                }
                Err(e) => return whole(&method, &path, Err(e)),
            }
        }
    }
    let result = if let Some(refusal) = refusal {
        Err(ApiError::new(403, refusal))
    } else {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                api::handle(&*backend, api::Request { method: &method, path: &path, query: &query, body: &body }).await
            }
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::new(
                413,
                format!("request body is larger than {} MiB: send a smaller request", MAX_BODY >> 20),
            )),
            Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
        }
    };
    whole(&method, &path, result)
}

/// A whole answer (or refusal) as HTTP.
fn whole(method: &str, path: &str, result: Result<api::Reply, ApiError>) -> Response<Body> {
    let reply = result.unwrap_or_else(|e| {
        debug!(%method, %path, status = e.status, message = %e.message, "docker api refused");
        api::Reply { status: e.status, body: e.body(), text: false }
    });
    let head = method == "HEAD";
    let mut builder = headers(Response::builder().status(reply.status));
    if !reply.body.is_empty() {
        builder =
            builder.header("Content-Type", if reply.text { "text/plain; charset=utf-8" } else { "application/json" });
    }
    let body = if head { Bytes::new() } else { Bytes::from(reply.body) };
    builder
        .body(Full::new(body).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use shoal_proto::{ControlReply, ControlRequest, ErrorKind, ErrorReply};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Nothing;

    impl Backend for Nothing {
        async fn call(&self, _: ControlRequest) -> Result<ControlReply, ErrorReply> {
            Err(ErrorReply::new(ErrorKind::Internal, "no manager in this test"))
        }
    }

    async fn exchange(socket: &Path, request: &[u8]) -> String {
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        // The server may answer (and close) before the whole of a huge body is written.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn socket_is_owner_only_headers_are_dockerds_and_huge_bodies_are_refused() {
        let dir = std::env::temp_dir().join(format!("shoal-docker-{}", shoal_proto::hex(&shoal_link::random::<6>())));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let server = tokio::spawn(serve(socket.clone(), Nothing));
            for _ in 0..200 {
                if socket.exists() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);

            let second = serve(socket.clone(), Nothing).await.unwrap_err().to_string();
            assert!(second.contains("is served by another process"), "{second}");

            let ping = exchange(&socket, b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").await;
            assert!(ping.starts_with("HTTP/1.1 200 OK\r\n"), "{ping}");
            let ping = ping.to_ascii_lowercase();
            assert!(ping.contains("api-version: 1.50\r\n") && ping.contains("swarm: active/manager\r\n"), "{ping}");

            let huge = MAX_BODY + 1;
            let mut req = format!(
                "POST /v1.50/services/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n\
                 Content-Length: {huge}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
            req.resize(req.len() + huge, b' ');
            let answer = exchange(&socket, &req).await;
            assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
            assert!(answer.ends_with(r#"{"message":"request body is larger than 1 MiB: send a smaller request"}"#));

            // No event log: with `until` the answer ends at once, empty.
            let events = exchange(
                &socket,
                b"GET /v1.50/events?since=1&until=2 HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(events.starts_with("HTTP/1.1 200 OK\r\n") && events.ends_with("\r\n0\r\n\r\n"), "{events}");

            let down =
                exchange(&socket, b"GET /v1.50/nodes HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").await;
            assert!(down.starts_with("HTTP/1.1 500 "), "{down}");
            assert!(down.ends_with(r#"{"message":"no manager in this test"}"#), "{down}");
            server.abort();
            let _ = server.await;
            assert!(!socket.exists(), "a stopped server takes its socket away");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Hands out one log stream whose sending end the test keeps.
    struct Follow(Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Sender<shoal_proto::logs::LogsEvent>>>>);

    impl Backend for Follow {
        async fn call(&self, _: ControlRequest) -> Result<ControlReply, ErrorReply> {
            Err(ErrorReply::new(ErrorKind::Internal, "no manager in this test"))
        }

        async fn logs(
            &self,
            req: shoal_proto::logs::LogsRequest,
        ) -> Result<tokio::sync::mpsc::Receiver<shoal_proto::logs::LogsEvent>, ErrorReply> {
            if req.target.as_str() != "web" || !req.follow || req.tail != Some(5) {
                return Err(ErrorReply::new(ErrorKind::NotFound, &format!("no such service: {}", req.target)));
            }
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            *self.0.lock().unwrap() = Some(tx);
            Ok(rx)
        }
    }

    #[test]
    fn followed_logs_stream_frames_and_end_upstream_when_the_client_goes_away() {
        use shoal_proto::logs::{LogLine, LogStream, LogsEvent};
        let dir = std::env::temp_dir().join(format!("shoal-docker-{}", shoal_proto::hex(&shoal_link::random::<6>())));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let slot = Arc::new(std::sync::Mutex::new(None));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let server = tokio::spawn(serve(socket.clone(), Follow(slot.clone())));
            while !socket.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let missing = exchange(
                &socket,
                b"GET /v1.50/services/nope/logs?follow=1&stdout=1&tail=5 HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(missing.starts_with("HTTP/1.1 404 ") && missing.ends_with(r#"{"message":"no such service: nope"}"#));

            let mut client = tokio::net::UnixStream::connect(&socket).await.unwrap();
            client
                .write_all(b"GET /v1.50/services/web/logs?follow=1&stdout=1&stderr=1&tail=5 HTTP/1.1\r\nHost: d\r\n\r\n")
                .await
                .unwrap();
            let tx = loop {
                if let Some(tx) = slot.lock().unwrap().clone() {
                    break tx;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            };
            let name = shoal_proto::text("web.1.abc@node1").unwrap();
            tx.send(LogsEvent::Task { index: 0, name: name.clone(), short: name }).await.unwrap();
            let line = LogLine { stream: LogStream::Stderr, at_ms: 0, text: b"boom".to_vec().try_into().unwrap() };
            tx.send(LogsEvent::Lines { task: 0, lines: vec![line].try_into().unwrap() }).await.unwrap();
            let mut got = Vec::new();
            let want: &[u8] = &[2, 0, 0, 0, 0, 0, 0, 5, b'b', b'o', b'o', b'm', b'\n'];
            while !got.windows(want.len()).any(|w| w == want) {
                let mut buf = [0u8; 512];
                let n = tokio::time::timeout(std::time::Duration::from_secs(2), client.read(&mut buf))
                    .await
                    .expect("the frame arrives while the answer is open")
                    .unwrap();
                assert!(n > 0, "the answer ended: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
            assert!(head.contains("content-type: application/vnd.docker.multiplexed-stream\r\n"), "{head}");
            // The client goes away: the stream to the manager ends, with nothing more sent.
            drop(client);
            tokio::time::timeout(std::time::Duration::from_secs(2), tx.closed())
                .await
                .expect("the log stream upstream ends when the client goes away");
            server.abort();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A client of the TCP listener: trusts `ca`, presents `client` if given; what it
    /// reads back after asking for `/_ping` (empty when the server hung up).
    async fn tls_ping(
        addr: std::net::SocketAddr,
        ca: &crate::ca::Ca,
        client: Option<(rustls_pki_types::CertificateDer<'static>, rcgen::KeyPair)>,
    ) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(vec![cert], rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let Ok(mut tls) = connector.connect(name, tcp).await else { return String::new() };
        let _ = tls.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn tcp_is_tls_only_and_for_the_administrator_certificate_only() {
        use crate::ca::{Ca, CertRole};
        let ca = Ca::generate("c1").unwrap();
        let other = Ca::generate("c1").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = ca.issue_server(&["127.0.0.1".to_owned()], "c1", &key, crate::ca::SERVER_VALIDITY_MS).unwrap();
        let identity = shoal_link::Identity {
            chain: vec![cert, ca.cert().clone()],
            key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        };
        let config = shoal_link::tls::tcp_server_config_requiring_client(vec![ca.cert().clone()], identity).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (_tx, configs) = tokio::sync::watch::channel(Some(Arc::new(config)));
            let server = tokio::spawn(serve_tls(listener, configs, Nothing));
            let issue = |ca: &Ca, role| ca.issue(role, "x", "c1", crate::ca::DEFAULT_CERT_EXPIRY_MS).unwrap();

            let admin = tls_ping(addr, &ca, Some(issue(&ca, CertRole::Admin))).await;
            assert!(admin.starts_with("HTTP/1.1 200 OK\r\n") && admin.ends_with("OK"), "{admin}");
            let board = tls_ping(addr, &ca, Some(issue(&ca, CertRole::Worker))).await;
            assert!(board.starts_with("HTTP/1.1 403 "), "{board}");
            assert!(board.contains("not the cluster's administrator certificate"), "{board}");
            assert_eq!(tls_ping(addr, &ca, None).await, "", "no client certificate, no HTTP");
            assert_eq!(tls_ping(addr, &ca, Some(issue(&other, CertRole::Admin))).await, "", "another CA's");
            // Plain HTTP on the TLS port gets nothing back.
            let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
            plain.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n").await.unwrap();
            let mut out = Vec::new();
            let _ = plain.read_to_end(&mut out).await;
            assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1"), "{out:?}");
            // Connections that never finish a handshake hold a bounded number of slots.
            let mut idle = Vec::new();
            for _ in 0..MAX_HANDSHAKES {
                idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut one_more = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 1];
            let closed = tokio::time::timeout(std::time::Duration::from_secs(2), one_more.read(&mut buf)).await;
            assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed at once: {closed:?}");
            drop(idle);
            let admin = tls_ping(addr, &ca, Some(issue(&ca, CertRole::Admin))).await;
            assert!(admin.starts_with("HTTP/1.1 200 OK\r\n"), "slots come back: {admin}");
            server.abort();
        });
    }
}
