//! Source ports for upstream connections, handed out in turn over the local port range.
//!
//! Every upstream connection the gateway closes first (it passes on the client's FIN) leaves a
//! TIME_WAIT entry for its address pair. When thousands of short connections go to one
//! destination, the kernel's own port choice for `connect()` scans past those entries one by
//! one (`__inet_hash_connect`: three quarters of the gateway's CPU while the TCP benchmark opened
//! connections). Binding the port ourselves, in turn over the whole range, lands on a port last
//! used a full range of connections ago: nearly always free, found without a scan.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        LazyLock,
        atomic::{AtomicU32, Ordering},
    },
};

use tokio::net::{TcpSocket, TcpStream};

/// Ports tried in turn before leaving the choice to the kernel.
const TRIES: usize = 4;

struct Range {
    low: u32,
    count: u32,
    next: AtomicU32,
}

static RANGE: LazyLock<Range> = LazyLock::new(|| {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(l, h)| 0 < *l && l < h && *h <= 65535)
        .unwrap_or((32768, 60999));
    Range {
        low,
        count: high - low + 1,
        // Start somewhere else after each restart (the previous daemon's ports may linger).
        next: AtomicU32::new(std::process::id().wrapping_mul(7919)),
    }
});

fn next_port() -> u16 {
    let r = &*RANGE;
    (r.low + r.next.fetch_add(1, Ordering::Relaxed) % r.count) as u16
}

/// Connects to `upstream` from the next source port in turn; a port that is taken (bound, or
/// still in TIME_WAIT towards this destination) moves on to the next, and after a few the kernel
/// chooses.
pub(super) async fn connect(upstream: SocketAddr) -> io::Result<TcpStream> {
    let any = match upstream.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    for _ in 0..TRIES {
        let socket = match upstream {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // Lets the port be bound while earlier connections from it sit in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        if socket.bind(SocketAddr::new(any, next_port())).is_err() {
            continue;
        }
        match socket.connect(upstream).await {
            Ok(s) => return Ok(s),
            // This address pair is still in TIME_WAIT.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => continue,
            Err(e) => return Err(e),
        }
    }
    TcpStream::connect(upstream).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_come_from_ports_of_the_local_range_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let range = RANGE.low..RANGE.low + RANGE.count;
        let a = connect(to).await.unwrap().local_addr().unwrap().port();
        let b = connect(to).await.unwrap().local_addr().unwrap().port();
        assert!(range.contains(&u32::from(a)), "{a}");
        assert!(range.contains(&u32::from(b)), "{b}");
        assert_ne!(a, b);
    }
}
