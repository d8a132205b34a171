//! Where the Engine API's answers come from: shoal's own control requests. The real
//! backend is the manager itself, reached over its QUIC control API with the
//! administrator credentials beside it, exactly as `shoal` commands reach it; so a
//! service made through Docker's API and one made by `shoal service create` are the
//! same record, changed by the same code. A fake stands in for tests of the HTTP layer.

use std::path::PathBuf;

use shoal_proto::logs::{LogsEvent, LogsRequest};
use shoal_proto::{frame, ControlReply, ControlRequest, ErrorKind, ErrorReply};
use tokio::sync::mpsc;

use crate::cli::client::{CliError, Client};

/// Answers control requests.
pub trait Backend: Send + Sync + 'static {
    /// One request, one answer.
    fn call(&self, req: ControlRequest) -> impl std::future::Future<Output = Result<ControlReply, ErrorReply>> + Send;

    /// A log stream (`shoal service logs`): its events until [`LogsEvent::End`], or
    /// for ever when following; dropping the receiver ends the stream upstream.
    fn logs(
        &self,
        req: LogsRequest,
    ) -> impl std::future::Future<Output = Result<mpsc::Receiver<LogsEvent>, ErrorReply>> + Send {
        let _ = req;
        async { Err(ErrorReply::new(ErrorKind::Internal, "logs are not served by this backend")) }
    }
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

    async fn logs(&self, req: LogsRequest) -> Result<mpsc::Receiver<LogsEvent>, ErrorReply> {
        ManagerBackend::logs(self, req).await
    }
}

impl ManagerBackend {
    async fn open_logs(
        &self,
        req: &LogsRequest,
    ) -> Result<(std::sync::Arc<Client>, quinn::SendStream, quinn::RecvStream), CliError> {
        let client = self.client().await.map_err(CliError::Refused)?;
        let (send, recv) = client.open_logs(req.clone()).await?;
        Ok((client, send, recv))
    }

    /// `shoal service logs`' stream, read into a channel by a task of its own that ends
    /// when the stream does or the receiver is dropped (closing the stream upstream).
    pub async fn logs(&self, req: LogsRequest) -> Result<mpsc::Receiver<LogsEvent>, ErrorReply> {
        let (client, send, mut recv) = match self.open_logs(&req).await {
            Err(CliError::Unreachable { .. }) => {
                *self.client.lock().await = None;
                self.open_logs(&req).await.map_err(unavailable)?
            }
            other => other.map_err(unavailable)?,
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            // Held until the end: dropping them closes the stream on the manager.
            let _keep = (client, send);
            loop {
                let ev = tokio::select! {
                    ev = shoal_link::framed::recv::<LogsEvent>(&mut recv, frame::MAX_FRAME_LEN) => ev,
                    () = tx.closed() => return,
                };
                let Ok(Some(ev)) = ev else { return };
                let end = ev == LogsEvent::End;
                if tx.send(ev).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
