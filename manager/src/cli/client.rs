//! The CLI's connection to the manager, with the administrator certificate from
//! `admin.json`, and errors that tell a person what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shoal_link::{ClientTls, Identity, Trust};
use shoal_proto::{frame, ControlReply, ControlRequest, Envelope, ErrorReply, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::paths::{self, AdminCredentials};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Client::close`] lets the close frame leave before the process exits.
const CLOSE_SEND_WAIT: Duration = Duration::from_millis(10);

/// Why a cluster command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No manager credentials here: this is not a manager's data directory.
    #[error(
        "this node is not a cluster manager: there are no manager credentials in {0}. \
         Cluster commands run on the manager (where `shoal manager init` ran); point --data-dir or \
         SHOAL_DATA_DIR at its data directory, or create a cluster with `shoal manager init`"
    )]
    NotAManager(PathBuf),
    /// The credentials file is unreadable.
    #[error("manager credentials in {0} are unusable: {1}")]
    BadCredentials(PathBuf, String),
    /// The manager did not answer.
    #[error("cannot reach the manager at {addr} ({detail}): is `shoal manager run` running?")]
    Unreachable {
        /// Where we tried.
        addr: String,
        /// What happened.
        detail: String,
    },
    /// The manager refused.
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// The local archive file could not be read.
    #[error("cannot read the archive: {0}")]
    Archive(String),
    /// The manager answered something this CLI did not ask for.
    #[error("unexpected answer from the manager: {0}")]
    Unexpected(String),
    /// A local file could not be written.
    #[error("{0}")]
    Local(String),
}

/// A connection to the manager as administrator.
pub struct Client {
    conn: quinn::Connection,
    addr: String,
    _endpoint: quinn::Endpoint,
}

impl Client {
    /// Connects with the credentials under `data_dir`.
    pub async fn connect(data_dir: &Path) -> Result<Self, CliError> {
        let path = paths::admin_path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::NotAManager(data_dir.to_owned()))
            }
            Err(e) => return Err(CliError::BadCredentials(path, e.to_string())),
        };
        let bad = |e: String| CliError::BadCredentials(path.clone(), e);
        let creds: AdminCredentials = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        // One CA, or two during a CA rotation.
        let cas = shoal_link::files::pem_ders(&creds.ca_pem).map_err(|e| bad(e.to_string()))?;
        let cert = paths::pem_der(&creds.cert_pem).map_err(|e| bad(e.to_string()))?;
        let key = rcgen::KeyPair::from_pem(&creds.key_pem).map_err(|e| bad(e.to_string()))?;
        let identity = Identity {
            chain: vec![CertificateDer::from(cert)],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        };
        let cas = cas.into_iter().map(CertificateDer::from).collect();
        let tls = ClientTls::new(Trust::Bundle { cas, floor_ms: 0 }, Some(identity), REQUEST_TIMEOUT)
            .map_err(|e| bad(e.to_string()))?;
        let addr: SocketAddr =
            creds.manager_addr.parse().map_err(|_| bad(format!("bad address {:?}", creds.manager_addr)))?;
        let unreachable = |detail: String| CliError::Unreachable { addr: creds.manager_addr.clone(), detail };
        let endpoint = shoal_link::client_endpoint(addr).map_err(|e| unreachable(e.to_string()))?;
        let conn = shoal_link::connect(&endpoint, addr, &tls, CONNECT_TIMEOUT)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self { conn, addr: creds.manager_addr, _endpoint: endpoint })
    }

    /// Sends one control request and returns the manager's answer.
    pub async fn call(&self, req: ControlRequest) -> Result<ControlReply, CliError> {
        let (_, _, response) = shoal_link::request(&self.conn, &Envelope::new(Request::Control(req)), REQUEST_TIMEOUT)
            .await
            .map_err(|e| CliError::Unreachable { addr: self.addr.clone(), detail: e.to_string() })?;
        match response {
            Response::Control(reply) => Ok(reply),
            Response::Error(e) => Err(CliError::Refused(e)),
            other => Err(CliError::Unexpected(format!("{other:?}"))),
        }
    }

    /// `exec`: asks the manager to start the command and returns the stream its frames
    /// then flow on, once the board said it runs.
    pub async fn open_exec(
        &self,
        req: shoal_proto::exec::ExecRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), CliError> {
        let unreachable = |detail: String| CliError::Unreachable { addr: self.addr.clone(), detail };
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
            let envelope = Envelope::new(Request::Exec(req));
            shoal_link::framed::send(&mut send, &envelope).await.map_err(|e| unreachable(e.to_string()))?;
            match shoal_link::framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await {
                Ok(Some(Response::ExecStarted(_))) => Ok((send, recv)),
                Ok(Some(Response::Error(e))) => Err(CliError::Refused(e)),
                Ok(Some(other)) => Err(CliError::Unexpected(format!("{other:?}"))),
                Ok(None) => Err(unreachable("the manager closed the exec without answering".into())),
                Err(e) => Err(unreachable(e.to_string())),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    /// `service logs`: asks the manager for the logs and returns the stream the events
    /// then come on. The send side is kept: the manager takes its end as the CLI gone.
    pub async fn open_logs(
        &self,
        req: shoal_proto::logs::LogsRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), CliError> {
        let unreachable = |detail: String| CliError::Unreachable { addr: self.addr.clone(), detail };
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
            let envelope = Envelope::new(Request::Logs(req));
            shoal_link::framed::send(&mut send, &envelope).await.map_err(|e| unreachable(e.to_string()))?;
            let answer = shoal_link::framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            super::logs::started(answer)?;
            Ok((send, recv))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    /// `image load`: sends the envelope, then the archive's `size` bytes from `file`, and
    /// waits for the manager's verdict. The deadline grows with the size (at least 1 MiB/s
    /// plus time for the manager to verify), so big archives on slow links get through.
    pub async fn upload(&self, mut file: tokio::fs::File, size: u64) -> Result<ControlReply, CliError> {
        let timeout = Duration::from_secs(60 + size / (1 << 20));
        let unreachable = |detail: String| CliError::Unreachable { addr: self.addr.clone(), detail };
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
            let envelope = Envelope::new(Request::Control(ControlRequest::ImageLoad { size }));
            shoal_link::framed::send(&mut send, &envelope).await.map_err(|e| unreachable(e.to_string()))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = size;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let n = file.read(&mut buf[..want]).await.map_err(|e| CliError::Archive(e.to_string()))?;
                if n == 0 {
                    return Err(CliError::Archive("the file shrank while it was being sent".into()));
                }
                // A manager that refuses early stops the stream; its reply says why.
                if send.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                left -= n as u64;
            }
            let _ = send.finish();
            match shoal_link::framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await {
                Ok(Some(r)) => Ok(r),
                Ok(None) => Err(unreachable("the manager closed the upload without answering".into())),
                Err(e) => Err(unreachable(e.to_string())),
            }
        };
        let response = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer to the upload within {timeout:?}")))??;
        match response {
            Response::Control(reply) => Ok(reply),
            Response::Error(e) => Err(CliError::Refused(e)),
            other => Err(CliError::Unexpected(format!("{other:?}"))),
        }
    }

    /// `image pull`: sends the request, hands each progress frame to `progress`, and
    /// returns the manager's answer. No overall deadline (a big image on a slow link
    /// takes what it takes), but the manager must say something every few minutes.
    pub async fn pull(
        &self,
        req: shoal_proto::images::ImagePull,
        mut progress: impl FnMut(shoal_proto::images::PullProgress),
    ) -> Result<shoal_proto::images::Pulled, CliError> {
        const SILENCE: Duration = Duration::from_secs(300);
        let unreachable = |detail: String| CliError::Unreachable { addr: self.addr.clone(), detail };
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
        let envelope = Envelope::new(Request::Control(ControlRequest::ImagePull(Box::new(req))));
        shoal_link::framed::send(&mut send, &envelope).await.map_err(|e| unreachable(e.to_string()))?;
        let _ = send.finish();
        loop {
            let frame =
                tokio::time::timeout(SILENCE, shoal_link::framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN))
                    .await
                    .map_err(|_| unreachable(format!("the manager said nothing about the pull for {SILENCE:?}")))?
                    .map_err(|e| unreachable(e.to_string()))?;
            match frame {
                Some(Response::Control(ControlReply::PullProgress(p))) => progress(p),
                Some(Response::Control(ControlReply::Pulled(p))) => return Ok(*p),
                Some(Response::Error(e)) => return Err(CliError::Refused(e)),
                Some(other) => return Err(CliError::Unexpected(format!("{other:?}"))),
                None => return Err(unreachable("the manager closed the pull without answering".into())),
            }
        }
    }

    /// `node upgrade`: sends the request, then each build's bytes from `files` (in the
    /// request's order), hands each progress frame to `progress` and returns the summary.
    /// Like `pull`, no overall deadline: boards restart one batch after another.
    pub async fn upgrade(
        &self,
        req: shoal_proto::upgrade::NodeUpgrade,
        files: Vec<std::path::PathBuf>,
        mut progress: impl FnMut(shoal_proto::upgrade::UpgradeProgress),
    ) -> Result<shoal_proto::upgrade::UpgradeSummary, CliError> {
        const SILENCE: Duration = Duration::from_secs(900);
        let unreachable = |detail: String| CliError::Unreachable { addr: self.addr.clone(), detail };
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
        let sizes: Vec<u64> = req.builds.iter().map(|b| b.size).collect();
        let envelope = Envelope::new(Request::Control(ControlRequest::NodeUpgrade(Box::new(req))));
        shoal_link::framed::send(&mut send, &envelope).await.map_err(|e| unreachable(e.to_string()))?;
        for (path, size) in files.iter().zip(sizes) {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| CliError::Local(format!("cannot read {}: {e}", path.display())))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = size;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let n = file
                    .read(&mut buf[..want])
                    .await
                    .map_err(|e| CliError::Local(format!("cannot read {}: {e}", path.display())))?;
                if n == 0 {
                    return Err(CliError::Local(format!("{} shrank while it was being sent", path.display())));
                }
                // A manager that refuses early stops the stream; its reply says why.
                if send.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                left -= n as u64;
            }
        }
        let _ = send.finish();
        loop {
            let frame =
                tokio::time::timeout(SILENCE, shoal_link::framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN))
                    .await
                    .map_err(|_| unreachable(format!("the manager said nothing about the upgrade for {SILENCE:?}")))?
                    .map_err(|e| unreachable(e.to_string()))?;
            match frame {
                Some(Response::Control(ControlReply::UpgradeProgress(p))) => progress(p),
                Some(Response::Control(ControlReply::Upgraded(s))) => return Ok(s),
                Some(Response::Error(e)) => return Err(CliError::Refused(e)),
                Some(other) => return Err(CliError::Unexpected(format!("{other:?}"))),
                None => return Err(unreachable("the manager closed the upgrade without answering".into())),
            }
        }
    }

    /// `manager backup`: receives the store copy into `dest` durably (temporary file,
    /// fsync, rename) and returns its size.
    pub async fn backup(&self, dest: &std::path::Path) -> Result<u64, CliError> {
        let unreachable = |detail: String| CliError::Unreachable { addr: self.addr.clone(), detail };
        let local = |e: std::io::Error| CliError::Local(format!("cannot write {}: {e}", dest.display()));
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
        let envelope = Envelope::new(Request::Control(ControlRequest::Backup));
        shoal_link::framed::send(&mut send, &envelope).await.map_err(|e| unreachable(e.to_string()))?;
        let _ = send.finish();
        let response = tokio::time::timeout(
            REQUEST_TIMEOUT,
            shoal_link::framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        let size = match response {
            Some(Response::Control(ControlReply::Backup { size })) => size,
            Some(Response::Error(e)) => return Err(CliError::Refused(e)),
            other => return Err(CliError::Unexpected(format!("{other:?}"))),
        };
        let tmp = dest.with_extension("tmp");
        // The backup holds the cluster's private keys: only its owner may read it.
        let _ = tokio::fs::remove_file(&tmp).await;
        let mut file =
            tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).await.map_err(local)?;
        let mut got = 0u64;
        let timeout = Duration::from_secs(60 + size / (1 << 20));
        let copy = async {
            while let Some(chunk) = recv.read_chunk(256 * 1024, true).await.map_err(|e| unreachable(e.to_string()))? {
                got += chunk.bytes.len() as u64;
                if got > size {
                    return Err(unreachable("the manager sent more than it announced".into()));
                }
                file.write_all(&chunk.bytes).await.map_err(local)?;
            }
            Ok(())
        };
        let copied = tokio::time::timeout(timeout, copy)
            .await
            .unwrap_or_else(|_| Err(unreachable(format!("backup not received within {timeout:?}"))));
        if let Err(e) = copied.and_then(|()| {
            if got == size {
                Ok(())
            } else {
                Err(unreachable(format!("the backup stopped after {got} of {size} bytes")))
            }
        }) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        file.sync_all().await.map_err(local)?;
        drop(file);
        tokio::fs::rename(&tmp, dest).await.map_err(local)?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(size)
    }

    /// Closes the connection politely, so the manager does not wait for a timeout.
    ///
    /// The close frame leaves as soon as the connection's driver runs, well within a few
    /// milliseconds; waiting for the endpoint to go idle would add QUIC's draining period
    /// (three probe timeouts, ~80 ms even on loopback) to every command, for nothing: the
    /// CLI has no late packets to answer. So the wait is capped just above the send.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(CLOSE_SEND_WAIT, self._endpoint.wait_idle()).await;
    }
}
