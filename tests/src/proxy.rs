//! A TCP proxy for fault injection between an agent and the collector, on
//! loopback. It forwards bytes both ways until told to misbehave:
//!
//! - **stall**: nothing moves; connections stay open and bytes wait, then
//!   flow on when the proxy passes again (a congested or frozen path);
//! - **black hole**: bytes are read and thrown away in both directions, and
//!   new connections are accepted into the same hole (a dead route that
//!   still looks open);
//! - **reset**: every open connection is closed with a TCP reset at once.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Stall,
    BlackHole,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let mode = watch::Sender::new(Mode::Pass);
        let resets = watch::Sender::new(0u64);
        let (m, r) = (mode.clone(), resets.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(connection(client, upstream, m.subscribe(), r.subscribe()));
            }
        });
        Proxy {
            addr,
            mode,
            resets,
            accept,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Resets every connection open now.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    mut resets: watch::Receiver<u64>,
) {
    resets.mark_unchanged();
    // Linger 0: whenever the proxy lets go of a connection, the peers see a
    // reset, not an orderly close.
    let _ = client.set_zero_linger();
    // A connection born in the black hole never reaches the collector.
    if *mode.borrow() == Mode::BlackHole {
        let mut client = client;
        let mut buf = vec![0u8; 16 * 1024];
        tokio::select! {
            _ = async { while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
            _ = resets.changed() => {}
        }
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_zero_linger();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, mode.clone()) => {}
        _ = pump(sr, cw, mode) => {}
        _ = resets.changed() => {}
    }
}

/// Copies `from` to `to` while the mode allows; returns when either side
/// closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Stalled: read nothing, so bytes wait in the kernel and the
        // sender's window fills.
        if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A stall that starts while waiting for bytes takes effect now.
            Ok(()) = mode.changed() => continue,
        };
        let current = *mode.borrow();
        match current {
            Mode::BlackHole => continue,
            Mode::Stall => {
                if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
                    return;
                }
                if *mode.borrow() == Mode::BlackHole {
                    continue;
                }
            }
            Mode::Pass => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
