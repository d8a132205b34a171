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
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("cannot replace {}: {e}", socket.display())),
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("cannot serve the Docker API on {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
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
