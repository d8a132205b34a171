//! Host-mode port publishing as a userspace proxy inside the agent, like docker-proxy:
//! a TCP listener on `0.0.0.0:<host port>` that forwards each connection to the
//! container (`copy_bidirectional`), and a UDP socket that forwards datagrams through
//! one upstream socket per client (a "flow"), so replies find their way back.
//!
//! It is not NAT: the container sees connections coming from the bridge's gateway
//! address, not from the real client. No iptables rules are made. Dropping (or
//! [`Published::stop`]ping) a handle closes the listener and every connection and flow
//! it carried. Everything is bounded: connections per port, flows per port, an idle
//! timeout per flow, a connect timeout towards the container.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::Protocol;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::error::NetError;

/// The bounds every publication lives within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TCP connections carried at once per port; more wait in the kernel's backlog.
    pub max_tcp_connections: usize,
    /// UDP clients carried at once per port; datagrams from more are dropped.
    pub max_udp_flows: usize,
    /// A UDP flow silent both ways this long is closed.
    pub udp_idle: Duration,
    /// How long connecting to the container may take.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tcp_connections: 1024,
            max_udp_flows: 256,
            udp_idle: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Publishes host ports to containers.
#[derive(Debug, Clone, Default)]
pub struct PortPublisher {
    limits: Limits,
}

/// A live publication; dropping it stops it.
#[derive(Debug)]
pub struct Published {
    proto: Protocol,
    local: SocketAddr,
    target: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Published {
    /// The protocol.
    pub fn proto(&self) -> Protocol {
        self.proto
    }

    /// The address listened on (its port is the host port; useful when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where traffic goes.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Closes the listener and every connection and flow it carries.
    pub fn stop(self) {}
}

impl Drop for Published {
    fn drop(&mut self) {
        // Aborting the task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

impl PortPublisher {
    /// A publisher with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Listens on `0.0.0.0:host_port` and forwards to `target_ip:target_port`; fails at
    /// once with [`NetError::PortInUse`] when the port is taken. Port 0 takes any free
    /// port (see [`Published::local_addr`]). Needs a tokio runtime.
    pub async fn publish(
        &self,
        host_port: u16,
        proto: Protocol,
        target_ip: IpAddr,
        target_port: u16,
    ) -> Result<Published, NetError> {
        let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, host_port));
        let target = SocketAddr::new(target_ip, target_port);
        let bind_err = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                NetError::PortInUse { port: host_port, proto }
            } else {
                NetError::io(format!("listening on {proto} port {host_port}"), e)
            }
        };
        let limits = self.limits;
        let (local, task) = match proto {
            Protocol::Tcp => {
                let listener = TcpListener::bind(bind).await.map_err(bind_err)?;
                let local = listener.local_addr().map_err(bind_err)?;
                (local, tokio::spawn(serve_tcp(listener, target, limits)))
            }
            Protocol::Udp => {
                let socket = UdpSocket::bind(bind).await.map_err(bind_err)?;
                let local = socket.local_addr().map_err(bind_err)?;
                (local, tokio::spawn(serve_udp(Arc::new(socket), target, limits)))
            }
        };
        tracing::debug!(%proto, %local, %target, "published port");
        Ok(Published { proto, local, target, task })
    }
}

async fn serve_tcp(listener: TcpListener, target: SocketAddr, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.max_tcp_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        // Take the permit before accepting: beyond the bound, clients wait in the backlog.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        while conns.try_join_next().is_some() {}
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%target, "accepting a published connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = proxy_tcp(client, target, limits.connect_timeout).await {
                tracing::debug!(%peer, %target, "published connection ended: {e}");
            }
        });
    }
}

async fn proxy_tcp(mut client: TcpStream, target: SocketAddr, connect_timeout: Duration) -> std::io::Result<()> {
    let mut upstream = tokio::time::timeout(connect_timeout, TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// One UDP client's way to the container.
struct Flow {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the publication started when the client last sent.
    last_sent: Arc<AtomicU64>,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Flow>>>;

const MAX_DATAGRAM: usize = 65_535;

async fn serve_udp(socket: Arc<UdpSocket>, target: SocketAddr, limits: Limits) {
    let epoch = Instant::now();
    let flows: Flows = Arc::default();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        while tasks.try_join_next().is_some() {}
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%target, "receiving a published datagram failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let now = millis(epoch);
        let existing = lock(&flows).get(&client).map(|f| {
            f.last_sent.store(now, Ordering::Relaxed);
            f.upstream.clone()
        });
        let upstream = match existing {
            Some(u) => u,
            None => {
                if lock(&flows).len() >= limits.max_udp_flows {
                    tracing::debug!(%client, %target, "too many udp flows: datagram dropped");
                    continue;
                }
                let upstream = match open_upstream(target).await {
                    Ok(u) => Arc::new(u),
                    Err(e) => {
                        tracing::debug!(%target, "opening a udp flow failed: {e}");
                        continue;
                    }
                };
                let last_sent = Arc::new(AtomicU64::new(now));
                lock(&flows).insert(client, Flow { upstream: upstream.clone(), last_sent: last_sent.clone() });
                tasks.spawn(udp_replies(
                    upstream.clone(),
                    socket.clone(),
                    client,
                    last_sent,
                    flows.clone(),
                    limits.udp_idle,
                    epoch,
                ));
                upstream
            }
        };
        if let Err(e) = upstream.send(&buf[..n]).await {
            tracing::debug!(%client, %target, "forwarding a datagram failed: {e}");
        }
    }
}

async fn open_upstream(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(any).await?;
    s.connect(target).await?;
    Ok(s)
}

/// Carries the container's replies back to `client` until the flow idles out.
async fn udp_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    last_sent: Arc<AtomicU64>,
    flows: Flows,
    idle: Duration,
    epoch: Instant,
) {
    // A zero timeout would spin.
    let idle = idle.max(Duration::from_millis(100));
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut last_reply = millis(epoch);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match tokio::time::timeout(idle, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                last_reply = millis(epoch);
                if let Err(e) = socket.send_to(&buf[..n], client).await {
                    tracing::debug!(%client, "returning a datagram failed: {e}");
                }
            }
            // ECONNREFUSED from an ICMP error: the container is not listening (yet).
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => {}
        }
        let now = millis(epoch);
        let mut map = lock(&flows);
        let quiet_since = last_sent.load(Ordering::Relaxed).max(last_reply);
        if now.saturating_sub(quiet_since) >= idle_ms {
            map.remove(&client);
            return;
        }
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The flow table stays usable even if a task panicked while holding it.
fn lock(flows: &Flows) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Flow>> {
    flows.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn tcp_forwards_and_port_in_use_is_refused() {
        rt().block_on(async {
            let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let echo_addr = echo.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = echo.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            let p = PortPublisher::new();
            let pubd = p
                .publish(0, Protocol::Tcp, echo_addr.ip(), echo_addr.port())
                .await
                .unwrap();
            let port = pubd.local_addr().port();
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            let mut got = [0u8; 5];
            c.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");

            let err = p
                .publish(port, Protocol::Tcp, echo_addr.ip(), echo_addr.port())
                .await
                .unwrap_err();
            assert!(err.is_port_in_use());
            assert_eq!(
                err.to_string(),
                format!("host port {port} is already in use on this node (tcp): stop what listens there or publish another port")
            );

            pubd.stop();
            // The listener is closed once the task has been aborted.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if TcpListener::bind(("0.0.0.0", port)).await.is_ok() {
                    break;
                }
                assert!(Instant::now() < deadline, "port {port} still bound after stop");
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    #[test]
    fn udp_forwards_per_client() {
        rt().block_on(async {
            let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let echo_addr = echo.local_addr().unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                    let _ = echo.send_to(&buf[..n], from).await;
                }
            });
            let pubd = PortPublisher::new().publish(0, Protocol::Udp, echo_addr.ip(), echo_addr.port()).await.unwrap();
            let port = pubd.local_addr().port();
            for msg in [&b"one"[..], b"two"] {
                let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                c.connect(("127.0.0.1", port)).await.unwrap();
                c.send(msg).await.unwrap();
                let mut buf = [0u8; 16];
                let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                    .await
                    .expect("no udp echo within 5 s")
                    .unwrap();
                assert_eq!(&buf[..n], msg);
            }
            let err =
                PortPublisher::new().publish(port, Protocol::Udp, echo_addr.ip(), echo_addr.port()).await.unwrap_err();
            assert!(err.is_port_in_use(), "{err}");
        });
    }
}
