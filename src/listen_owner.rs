//! Whether this process is the one listening on an address, so start-up never reports another
//! program's listener as its own (a port picked for `:0` can be taken by another process
//! before Pingora binds it; Pingora then keeps retrying while that other listener answers).

use std::net::SocketAddr;

/// Who listens on an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This process.
    Us,
    /// Another process: the address was taken.
    Other,
    /// Nobody listens yet, or it cannot be told (no `/proc`).
    Unknown,
}

/// Who holds the listening socket on `addr` (Linux, from `/proc`).
#[cfg(target_os = "linux")]
pub fn owner(addr: SocketAddr) -> Owner {
    use procfs::net::TcpState;
    use procfs::process::{FDTarget, Process};

    let listening: Vec<u64> = procfs::net::tcp()
        .into_iter()
        .flatten()
        .chain(procfs::net::tcp6().into_iter().flatten())
        .filter(|e| {
            e.state == TcpState::Listen
                && e.local_address.port() == addr.port()
                && (e.local_address.ip() == addr.ip() || e.local_address.ip().is_unspecified())
        })
        .map(|e| e.inode)
        .collect();
    if listening.is_empty() {
        return Owner::Unknown;
    }
    let Ok(fds) = Process::myself().and_then(|p| p.fd()) else {
        return Owner::Unknown;
    };
    let ours = fds
        .flatten()
        .any(|fd| matches!(fd.target, FDTarget::Socket(inode) if listening.contains(&inode)));
    if ours { Owner::Us } else { Owner::Other }
}

/// Who holds the listening socket on `addr`: not known off Linux.
#[cfg(not(target_os = "linux"))]
pub fn owner(_addr: SocketAddr) -> Owner {
    Owner::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_this_process_is_ours_and_a_free_port_is_unknown() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        if cfg!(target_os = "linux") {
            assert_eq!(owner(addr), Owner::Us);
        }
        drop(l);
        assert_eq!(owner(addr), Owner::Unknown);
    }
}
