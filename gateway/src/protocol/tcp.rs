//! Plain TCP targets: connect upstream from outside the job and relay bytes both ways.
//!
//! Connection state is passed through as faithfully as a relay can: a half-close (FIN) on one side is
//! a half-close on the other; a reset on one side is a reset (SO_LINGER 0) on the other; an upstream
//! that refuses or cannot be reached resets the client, which already completed its handshake with
//! the gateway.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const BUFFER: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// Both sides closed normally.
    Closed,
    /// The client reset the connection; the upstream was reset too.
    ClientReset,
    /// The upstream reset the connection; the client was reset too.
    UpstreamReset,
    /// The gateway is shutting down.
    Shutdown,
}

/// Byte counters shared with whoever records the session.
#[derive(Debug, Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

/// Connects to `upstream` with a timeout.
pub async fn connect(upstream: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, super::source_ports::connect(upstream)).await {
        Ok(r) => {
            let s = r?;
            s.set_nodelay(true)?;
            Ok(s)
        }
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

/// Resets a connection instead of closing it gracefully.
pub fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Relays until both directions are done or `shutdown` resolves.
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    counters: Arc<Counters>,
    shutdown: impl std::future::Future<Output = ()>,
) -> End {
    let end = {
        // Borrowed halves: unlike owned ones they do not send a FIN when dropped, so a reset below
        // reaches the peer as a reset and not as a clean end of stream.
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let up = pump(&mut client_read, &mut upstream_write, &counters.up);
        let down = pump(&mut upstream_read, &mut client_write, &counters.down);
        tokio::pin!(up, down, shutdown);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                flow = &mut up, if !up_done => match flow {
                    Flow::Finished => up_done = true,
                    // The client reset, or the upstream cannot take data any more.
                    Flow::ReadFailed => break End::ClientReset,
                    Flow::WriteFailed => break End::UpstreamReset,
                },
                flow = &mut down, if !down_done => match flow {
                    Flow::Finished => down_done = true,
                    Flow::ReadFailed => break End::UpstreamReset,
                    Flow::WriteFailed => break End::ClientReset,
                },
                () = &mut shutdown => break End::Shutdown,
            }
            if up_done && down_done {
                break End::Closed;
            }
        }
    };
    match end {
        End::ClientReset => reset(upstream),
        End::UpstreamReset => reset(client),
        End::Closed | End::Shutdown => {}
    }
    end
}

enum Flow {
    /// End of stream read and passed on as a half-close.
    Finished,
    ReadFailed,
    WriteFailed,
}

async fn pump<R, W>(from: &mut R, to: &mut W, counter: &AtomicU64) -> Flow
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return Flow::Finished;
            }
            Ok(n) => n,
            Err(_) => return Flow::ReadFailed,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return Flow::WriteFailed;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
