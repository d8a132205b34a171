//! The Docker Engine API on the manager: the real `docker` CLI (and tools built on the
//! API) drive a shoal cluster through its swarm endpoints.
//!
//! `shoal manager run` serves it on a unix socket, `docker.sock` in the manager's
//! directory: the directory is 0700 and the socket 0600, and a connection whose peer is
//! neither root nor the manager's own user is refused again here. It is not served on
//! TCP. HTTP/1.1 (hyper), request bodies bounded by [`MAX_BODY`].
//!
//! Modules, one job each: [`api`] routes and answers (no sockets), [`spec`] maps Docker's
//! `ServiceSpec` onto shoal's, [`render`] shoal's views onto Docker's JSON, [`filters`]
//! parses `filters=`, [`error`] is Docker's error shape, [`backend`] reaches the manager
//! (its QUIC control API, as the `shoal` CLI does). See docs/docker-api.md.

pub mod api;
pub mod backend;
pub mod error;
pub mod filters;
pub mod objects;
pub mod render;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tracing::{debug, info, warn};

use backend::Backend;
use error::ApiError;

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
        let backend = backend.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let backend = backend.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&*backend, req, allowed).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                debug!(error = %e, "docker api connection ended");
            }
        });
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

/// One request through [`api::handle`], with dockerd's headers on every answer.
async fn respond<B: Backend>(backend: &B, req: Request<Incoming>, allowed: bool) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let result = if !allowed {
        Err(ApiError::new(403, "the Docker API socket is for root and the manager's user only: run docker as root"))
    } else {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                api::handle(backend, api::Request { method: &method, path: &path, query: &query, body: &body }).await
            }
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::new(
                413,
                format!("request body is larger than {} MiB: send a smaller request", MAX_BODY >> 20),
            )),
            Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
        }
    };
    let reply = result.unwrap_or_else(|e| {
        debug!(%method, %path, status = e.status, message = %e.message, "docker api refused");
        api::Reply { status: e.status, body: e.body(), text: false }
    });
    let head = method == "HEAD";
    let mut builder = Response::builder()
        .status(reply.status)
        .header("Api-Version", format!("{}.{}", api::MAX_VERSION.0, api::MAX_VERSION.1))
        .header("Docker-Experimental", "false")
        .header("Ostype", "linux")
        .header("Server", concat!("shoal/", env!("CARGO_PKG_VERSION"), " (linux)"))
        .header("Swarm", "active/manager")
        .header("Cache-Control", "no-cache, no-store, must-revalidate")
        .header("Pragma", "no-cache");
    if !reply.body.is_empty() {
        builder =
            builder.header("Content-Type", if reply.text { "text/plain; charset=utf-8" } else { "application/json" });
    }
    let body = if head { Bytes::new() } else { Bytes::from(reply.body) };
    builder.body(Full::new(body)).unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
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
}
