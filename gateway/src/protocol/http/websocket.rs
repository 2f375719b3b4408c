//! WebSocket after an allowed upgrade: both connections are handed over by hyper after the 101,
//! and each side gets its own WebSocket endpoint (tungstenite: the gateway is the server toward
//! the job and the client toward the upstream). Messages are read whole, bounded, counted and
//! sampled, and sent again with the gateway's own framing, so a frame the gateway could not parse
//! never reaches the other side. Pings are answered on each side, not relayed. Compression
//! extensions are not negotiated (the upgrade request goes without `Sec-WebSocket-Extensions`).
//! What is recorded at the end: messages and bytes each way, and the first text messages up to
//! the body sample.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tokio_util::sync::CancellationToken;

use super::Counters;
use crate::record::{EventKind, Store};

/// Largest message (and frame) relayed: a whole message is held before it is sent on.
pub(super) const MAX_MESSAGE: usize = 1 << 20;
/// How long the side that did not end the WebSocket gets to take a close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// What one direction carried.
#[derive(Debug, Default, Serialize)]
struct Direction {
    /// Data messages (text and binary; a fragmented message counts once).
    messages: u64,
    text_messages: u64,
    binary_messages: u64,
    /// Ping, pong and close frames.
    control_frames: u64,
    /// Payload bytes of data messages.
    bytes: u64,
    /// The first text messages, up to the target's body sample in all.
    text_sample: Vec<String>,
    #[serde(skip)]
    sampled: usize,
}

impl Direction {
    fn count(&mut self, message: &Message, sample_limit: usize) {
        match message {
            Message::Text(text) => {
                self.messages += 1;
                self.text_messages += 1;
                self.bytes += text.len() as u64;
                let room = sample_limit.saturating_sub(self.sampled);
                if room > 0 {
                    let cut = text.floor_char_boundary(room);
                    self.text_sample.push(text.as_str()[..cut].to_string());
                    self.sampled += cut.max(1);
                }
            }
            Message::Binary(data) => {
                self.messages += 1;
                self.binary_messages += 1;
                self.bytes += data.len() as u64;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                self.control_frames += 1;
            }
        }
    }
}

/// What the relay needs of its session.
pub(super) struct Relay {
    pub(super) store: Store,
    pub(super) session_id: i64,
    pub(super) request: u64,
    pub(super) sample_limit: usize,
    pub(super) counters: Counters,
    pub(super) shutdown: CancellationToken,
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

impl Relay {
    /// Relays until either side ends the WebSocket, then records it.
    pub(super) async fn run(
        self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
    ) {
        let started = Instant::now();
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                self.store.note_event(
                    self.session_id,
                    EventKind::WebSocket,
                    json!({ "request": self.request, "end": format!("upgrade failed: {e}") }),
                );
                return;
            }
        };
        let mut client =
            WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, Some(config()))
                .await;
        let mut upstream =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(config()))
                .await;
        let (mut up, mut down) = (Direction::default(), Direction::default());
        let end = self
            .relay(&mut client, &mut upstream, &mut up, &mut down)
            .await;
        // Sends what each side still owes (the reply to a close it received), within bounds.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.close(None)).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, upstream.close(None)).await;
        self.counters.up.fetch_add(up.bytes, Ordering::Relaxed);
        self.counters.down.fetch_add(down.bytes, Ordering::Relaxed);
        self.store.note_event(
            self.session_id,
            EventKind::WebSocket,
            json!({
                "request": self.request,
                "end": end,
                "duration_ms": started.elapsed().as_micros() as f64 / 1000.0,
                "max_message": MAX_MESSAGE,
                "up": up,
                "down": down,
            }),
        );
    }

    async fn relay(
        &self,
        client: &mut Socket,
        upstream: &mut Socket,
        up: &mut Direction,
        down: &mut Direction,
    ) -> String {
        loop {
            tokio::select! {
                m = client.next() => match m {
                    Some(Ok(m)) => {
                        up.count(&m, self.sample_limit);
                        if let Some(end) = pass(m, upstream, "client").await {
                            return end;
                        }
                    }
                    Some(Err(e)) => {
                        let (code, why) = unreadable(&e);
                        close(client, code, why).await;
                        drain(client).await;
                        close(upstream, CloseCode::Away, "the client's WebSocket ended").await;
                        return format!("client: {e}");
                    }
                    None => {
                        close(upstream, CloseCode::Away, "the client went away").await;
                        return "client_closed".into();
                    }
                },
                m = upstream.next() => match m {
                    Some(Ok(m)) => {
                        down.count(&m, self.sample_limit);
                        if let Some(end) = pass(m, client, "upstream").await {
                            return end;
                        }
                    }
                    Some(Err(e)) => {
                        let (code, why) = unreadable(&e);
                        close(upstream, code, why).await;
                        drain(upstream).await;
                        close(client, CloseCode::Error, "the upstream broke the WebSocket").await;
                        return format!("upstream: {e}");
                    }
                    None => {
                        close(client, CloseCode::Away, "the upstream went away").await;
                        return "upstream_closed".into();
                    }
                },
                () = self.shutdown.cancelled() => {
                    close(client, CloseCode::Restart, "the gateway stops").await;
                    close(upstream, CloseCode::Restart, "the gateway stops").await;
                    return "gateway_stopped".into();
                }
            }
        }
    }
}

/// Sends a data message on; a close ends the relay once the other side has it. Pings and pongs
/// stay on their side (tungstenite answers pings itself).
async fn pass(message: Message, to: &mut Socket, from: &str) -> Option<String> {
    match message {
        Message::Text(_) | Message::Binary(_) => match to.send(message).await {
            Ok(()) => None,
            Err(e) => Some(format!("forwarding from the {from} failed: {e}")),
        },
        Message::Close(frame) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, to.close(frame)).await;
            Some(format!("{from}_closed"))
        }
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
    }
}

/// The close code and reason for a side whose frames the gateway cannot read: too large (1009),
/// else broken (1002).
fn unreadable(e: &tungstenite::Error) -> (CloseCode, &'static str) {
    match e {
        tungstenite::Error::Capacity(_) => (
            CloseCode::Size,
            "message or frame larger than the gateway relays (1 MiB)",
        ),
        _ => (CloseCode::Protocol, "the WebSocket could not be read"),
    }
}

/// Reads and drops what a side is still sending (the rest of a message too large), bounded in
/// bytes and time, so that closing the connection does not reset it before the side has read
/// the close frame that says why.
async fn drain(socket: &mut Socket) {
    use tokio::io::AsyncReadExt as _;
    let io = socket.get_mut();
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = 4 * MAX_MESSAGE;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

async fn close(socket: &mut Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_samples_stop_at_the_limit_on_a_character_boundary() {
        let mut d = Direction::default();
        for m in [
            Message::text("héllo"),
            Message::binary(vec![0u8; 10]),
            Message::text("wörld!"),
            Message::text("more"),
            Message::Ping(Default::default()),
        ] {
            d.count(&m, 9);
        }
        assert_eq!((d.messages, d.text_messages, d.binary_messages), (4, 3, 1));
        assert_eq!(d.control_frames, 1);
        assert_eq!(d.bytes, 6 + 10 + 7 + 4);
        // 6 bytes of "héllo", then 3 of "wörld!" (never inside a character).
        assert_eq!(d.text_sample, ["héllo", "wö"]);
        let mut d = Direction::default();
        d.count(&Message::text("ö"), 1);
        d.count(&Message::text("x"), 1);
        assert_eq!(d.text_sample, [""]);
    }
}
