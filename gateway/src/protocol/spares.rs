//! Spare upstream connections for TCP targets with `preconnect = true`.
//!
//! A connection through the gateway needs a second TCP handshake, to the upstream, before the
//! first byte can flow; for short connections that handshake is most of the gateway's added setup
//! time. With preconnect, an allowed connection to a destination leaves one connection to that same
//! destination open behind it, which the next allowed connection there takes instead of
//! connecting. A spare is only ever opened to a destination a job was just allowed to reach, is
//! handed out only after policy allowed the new connection, and is closed unused after
//! [`SPARE_IDLE`]: a burst of connections leaves at most one unused connection per destination,
//! and an idle gateway holds none. A spare the server closed meanwhile is never handed out.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use futures_util::FutureExt as _;
use tokio::net::TcpStream;

/// How long a spare waits for a connection to take it before it is closed.
pub const SPARE_IDLE: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Spares {
    slots: Mutex<HashMap<SocketAddr, Slot>>,
    next_id: AtomicU64,
}

enum Slot {
    /// A spare is being connected.
    Opening,
    Ready {
        stream: TcpStream,
        id: u64,
        opened: Instant,
    },
}

impl Spares {
    fn slots(&self) -> parking_lot::MutexGuard<'_, HashMap<SocketAddr, Slot>> {
        self.slots.lock()
    }

    /// The spare connection to `dst`, if one is ready and still open.
    pub fn take(&self, dst: SocketAddr) -> Option<TcpStream> {
        let mut slots = self.slots();
        let Some(Slot::Ready { .. }) = slots.get(&dst) else {
            return None;
        };
        let Some(Slot::Ready { stream, opened, .. }) = slots.remove(&dst) else {
            return None;
        };
        drop(slots);
        if opened.elapsed() > SPARE_IDLE {
            return None;
        }
        // Not readable: open and quiet. Readable: the server's greeting, or its end (0 bytes) or
        // an error, in which case the spare is not handed out.
        let mut probe = [0u8; 1];
        match stream.peek(&mut probe).now_or_never() {
            None | Some(Ok(1..)) => Some(stream),
            Some(Ok(0)) | Some(Err(_)) => None,
        }
    }

    /// Opens the spare to `dst` unless one is there or on its way, and closes it if nobody took it
    /// within [`SPARE_IDLE`]. Runs as a task of its own.
    pub async fn refill(&self, dst: SocketAddr, timeout: Duration) {
        {
            let mut slots = self.slots();
            if slots.contains_key(&dst) {
                return;
            }
            slots.insert(dst, Slot::Opening);
        }
        let stream = match super::tcp::connect(dst, timeout).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%dst, error = %e, "spare connection failed");
                self.slots().remove(&dst);
                return;
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.slots().insert(
            dst,
            Slot::Ready {
                stream,
                id,
                opened: Instant::now(),
            },
        );
        tokio::time::sleep(SPARE_IDLE).await;
        let mut slots = self.slots();
        if matches!(slots.get(&dst), Some(Slot::Ready { id: current, .. }) if *current == id) {
            // Dropped outside the lock.
            let unused = slots.remove(&dst);
            drop(slots);
            drop(unused);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Drives `spares.refill(dst)` until its spare is in place (it then sleeps for SPARE_IDLE).
    async fn refilled(spares: &Spares, dst: SocketAddr) {
        let refill = spares.refill(dst, Duration::from_secs(5));
        tokio::pin!(refill);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(spares.slots().get(&dst), Some(Slot::Ready { .. })) {
            assert!(Instant::now() < deadline, "no spare within 5s");
            let _ = tokio::time::timeout(Duration::from_millis(10), &mut refill).await;
        }
    }

    #[tokio::test]
    async fn a_spare_is_handed_out_once_and_never_after_the_server_closed_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = listener.local_addr().unwrap();
        // The first connection is greeted and kept; the second is closed at once.
        let server = tokio::spawn(async move {
            let (mut kept, _) = listener.accept().await.unwrap();
            kept.write_all(b"hello\n").await.unwrap();
            let (closed, _) = listener.accept().await.unwrap();
            drop(closed);
            kept
        });
        let spares = Spares::default();
        assert!(spares.take(dst).is_none(), "nothing before a refill");

        refilled(&spares, dst).await;
        let mut taken = spares.take(dst).expect("a spare");
        assert!(spares.take(dst).is_none(), "a spare is handed out once");
        let mut greeting = [0u8; 6];
        taken.read_exact(&mut greeting).await.unwrap();
        assert_eq!(
            &greeting, b"hello\n",
            "the server's greeting reaches whoever takes it"
        );

        refilled(&spares, dst).await;
        let _kept = server.await.unwrap();
        // Once the runtime has seen the server's FIN, the spare is refused.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ended = match spares.slots().get(&dst) {
                Some(Slot::Ready { stream, .. }) => {
                    matches!(stream.peek(&mut [0u8; 1]).now_or_never(), Some(Ok(0)))
                }
                _ => panic!("the spare went away"),
            };
            if ended {
                break;
            }
            assert!(Instant::now() < deadline, "the server's close was not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            spares.take(dst).is_none(),
            "a closed spare is not handed out"
        );
    }
}
