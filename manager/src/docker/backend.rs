//! Where the Engine API's answers come from: shoal's own control requests. The real
//! backend is the manager itself, reached over its QUIC control API with the
//! administrator credentials beside it, exactly as `shoal` commands reach it; so a
//! service made through Docker's API and one made by `shoal service create` are the
//! same record, changed by the same code. A fake stands in for tests of the HTTP layer.

use std::path::PathBuf;

use shoal_proto::{ControlReply, ControlRequest, ErrorKind, ErrorReply};

use crate::cli::client::{CliError, Client};

/// Answers control requests.
pub trait Backend: Send + Sync + 'static {
    /// One request, one answer.
    fn call(&self, req: ControlRequest) -> impl std::future::Future<Output = Result<ControlReply, ErrorReply>> + Send;
}

/// The manager, over one QUIC connection kept open and remade when it breaks.
pub struct ManagerBackend {
    data_dir: PathBuf,
    client: tokio::sync::Mutex<Option<std::sync::Arc<Client>>>,
}

impl ManagerBackend {
    /// Uses the administrator credentials in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self { data_dir, client: tokio::sync::Mutex::new(None) }
    }

    async fn client(&self) -> Result<std::sync::Arc<Client>, ErrorReply> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = std::sync::Arc::new(Client::connect(&self.data_dir).await.map_err(unavailable)?);
        *slot = Some(c.clone());
        Ok(c)
    }
}

fn unavailable(e: CliError) -> ErrorReply {
    match e {
        CliError::Refused(r) => r,
        other => ErrorReply::new(ErrorKind::Internal, &other.to_string()),
    }
}

impl Backend for ManagerBackend {
    async fn call(&self, req: ControlRequest) -> Result<ControlReply, ErrorReply> {
        let client = self.client().await?;
        match client.call(req.clone()).await {
            Err(CliError::Unreachable { .. }) => {
                // The connection broke (manager restarted its endpoint, idle timeout):
                // one fresh connection, one retry.
                *self.client.lock().await = None;
                let client = self.client().await?;
                client.call(req).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }
}
