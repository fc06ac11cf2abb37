//! A loopback port held by the test for as long as it needs the address,
//! so a collector can stop and start again on it without another test's
//! listener or outgoing connection taking it in between.
//!
//! The port is held by a socket that is bound but never listens: a
//! connection to it is refused exactly as if nothing were there, and the
//! kernel hands the port to no other socket. A listener joins it through
//! `SO_REUSEPORT`, which only sockets of this process's user can do.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

pub struct Port {
    addr: SocketAddr,
    _held: TcpSocket,
}

impl Port {
    /// A fresh port on 127.0.0.1, nothing listening on it yet.
    pub fn reserve() -> Self {
        Self::at("127.0.0.1:0".parse().expect("addr"))
    }

    /// Holds `addr` (port 0: any free one).
    pub fn at(addr: SocketAddr) -> Self {
        let held = shareable(addr).expect("reserve port");
        let addr = held.local_addr().expect("reserved addr");
        Port { addr, _held: held }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A listener on the held address.
    pub fn listen(&self) -> TcpListener {
        shareable(self.addr)
            .and_then(|s| s.listen(1024))
            .expect("listen on the reserved port")
    }
}

fn shareable(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}
