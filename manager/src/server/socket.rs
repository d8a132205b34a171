//! The manager's UDP socket, bound with a receive buffer sized for a fleet's heartbeats.

use std::net::{SocketAddr, UdpSocket};

use tracing::{info, warn};

/// Receive buffer asked of the kernel. Its default (~200 KiB on Linux) holds a few hundred
/// datagrams: when 5,000 boards answered one pass's assignments at once (acknowledgements,
/// then task reports), even 8 MiB overflowed and the kernel dropped ~30,000 datagrams,
/// beats among them, which the detector then counted as silence. It is a bound, not an
/// allocation: the kernel charges only the datagrams waiting.
pub(super) const RECEIVE_BUFFER: usize = 32 << 20;

/// Binds `listen` and asks for [`RECEIVE_BUFFER`]. Linux caps the ask at
/// `net.core.rmem_max` unless the manager may exceed it (CAP_NET_ADMIN); a smaller buffer
/// is said once in the log, with the setting to raise.
pub(super) fn bind(listen: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(listen)?;
    let handle = socket2::SockRef::from(&socket);
    if let Err(e) = handle.set_recv_buffer_size(RECEIVE_BUFFER) {
        warn!(error = %e, "could not size the UDP receive buffer; the system's default stays");
    }
    // Linux reports twice what it grants (half is its bookkeeping): a report of less than
    // twice the ask there means the ask was capped.
    let reported_in_full = if cfg!(target_os = "linux") { 2 * RECEIVE_BUFFER } else { RECEIVE_BUFFER };
    let enough = |granted: usize| granted >= reported_in_full;
    if !handle.recv_buffer_size().is_ok_and(enough) {
        force(&socket);
    }
    match handle.recv_buffer_size() {
        Ok(granted) if !enough(granted) => info!(
            granted,
            wanted = RECEIVE_BUFFER,
            "the UDP receive buffer is smaller than asked: with thousands of boards, heartbeats may be \
             dropped while the manager is busy (on Linux: sysctl net.core.rmem_max={RECEIVE_BUFFER})"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not read the UDP receive buffer's size"),
    }
    Ok(socket)
}

/// Past `net.core.rmem_max`, for a manager allowed to (root, or CAP_NET_ADMIN); refused
/// quietly otherwise. libc's `setsockopt` is the only way to it (socket2 has no
/// SO_RCVBUFFORCE): the manager's second `unsafe`, beside [`crate::memory`]'s.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn force(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(RECEIVE_BUFFER).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket, and a pointer to a c_int of the size given.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn force(_: &UdpSocket) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn the_socket_gets_the_receive_buffer_asked_for_as_root_or_what_the_system_allows() {
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // Linux grants twice what is asked; without the right to force it, up to twice
        // `rmem_max`. The default is far below either.
        let wanted = if root { RECEIVE_BUFFER } else { RECEIVE_BUFFER.min(max) };
        assert!(granted >= 2 * wanted, "granted {granted} bytes (rmem_max {max}, root {root})");
    }
}
