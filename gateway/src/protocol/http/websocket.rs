//! WebSocket after an allowed upgrade: both connections are handed over by hyper after the 101
//! (toward the job over HTTP/2: its stream, after the 200 to its extended CONNECT, RFC 8441),
//! and each side gets its own WebSocket endpoint (tungstenite: the gateway is the server toward
//! the job and the client toward the upstream). Messages are read whole, bounded, counted and
//! sampled, and sent again with the gateway's own framing, so a frame the gateway could not parse
//! never reaches the other side. Pings are answered on each side, not relayed. Compression
//! extensions are not negotiated (the upgrade request goes without `Sec-WebSocket-Extensions`).
//! What is recorded at the end: messages and bytes each way, and the first text messages up to
//! the body sample.
//!
//! On a target with `[[masking]]`, what reaches the job is masked as a response body would be:
//! each text message from the upstream, whole (at most `MAX_MESSAGE`), as JSON when it starts like
//! JSON and `json_fields` apply, else as text by the detectors. A message that cannot be masked
//! (invalid JSON, a limit) ends the WebSocket with 1008, a binary one with 1003: neither reaches
//! the job. Messages to the upstream go as the job sent them; their recorded samples are masked.

use std::{
    sync::{Arc, atomic::Ordering},
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
use crate::{
    mask::body::BodyRules,
    record::{EventKind, Store},
};

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
    /// Values masked in the messages to the job (when the target masks).
    #[serde(skip_serializing_if = "Option::is_none")]
    masked: Option<u64>,
    #[serde(skip)]
    sampled: usize,
}

impl Direction {
    /// Counts a message, and samples its text masked by `masking` (`None`: as it is, for messages
    /// masked already).
    fn count(&mut self, message: &Message, sample_limit: usize, masking: Option<&Arc<BodyRules>>) {
        match message {
            Message::Text(text) => {
                self.messages += 1;
                self.text_messages += 1;
                self.bytes += text.len() as u64;
                let room = sample_limit.saturating_sub(self.sampled);
                if room > 0 {
                    let cut = text.floor_char_boundary(room);
                    let sample = &text.as_str()[..cut];
                    let sample = match masking {
                        Some(rules) => String::from_utf8_lossy(&rules.mask_sample(
                            None,
                            None,
                            sample.as_bytes(),
                            cut == text.len(),
                        ))
                        .into_owned(),
                        None => sample.to_string(),
                    };
                    self.text_sample.push(sample);
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
    /// The target's masking, `None` when none applies.
    pub(super) masking: Option<Arc<BodyRules>>,
    /// The room a WebSocket over HTTP/2 holds on its connection, held (never read) until the
    /// relay ends.
    pub(super) _slot: Option<tokio::sync::OwnedSemaphorePermit>,
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
        if self.masking.is_some() {
            down.masked = Some(0);
        }
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
                        up.count(&m, self.sample_limit, self.masking.as_ref());
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
                        let m = match self.masked_for_job(m, down) {
                            Ok(m) => m,
                            Err((code, why)) => {
                                close(client, code, "a message the gateway cannot mask").await;
                                close(upstream, code, "a message the gateway cannot mask").await;
                                return format!("upstream: a message that cannot be masked: {why}");
                            }
                        };
                        down.count(&m, self.sample_limit, None);
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

impl Relay {
    /// A message from the upstream as the job may read it: masked when the target masks (text
    /// whole, within `MAX_MESSAGE`); the close code and why when it cannot be.
    fn masked_for_job(
        &self,
        message: Message,
        down: &mut Direction,
    ) -> Result<Message, (CloseCode, String)> {
        let Some(rules) = &self.masking else {
            return Ok(message);
        };
        match message {
            Message::Text(text) => match rules.mask_message(text.as_bytes()) {
                Ok(None) => Ok(Message::Text(text)),
                Ok(Some((masked, n))) => {
                    *down.masked.get_or_insert(0) += n;
                    Ok(Message::text(String::from_utf8_lossy(&masked).into_owned()))
                }
                Err(e) => Err((CloseCode::Policy, e.to_string())),
            },
            Message::Binary(_) => Err((
                CloseCode::Unsupported,
                "a binary message, which the masking cannot read".into(),
            )),
            other => Ok(other),
        }
    }
}

/// Whether the upstream's `Sec-WebSocket-Accept` answers the key the gateway sent (RFC 6455
/// §4.2.2): a server that did not read the key opened no WebSocket the gateway asked for.
pub(super) fn accept_answers(key: &str, accept: Option<&http::HeaderValue>) -> bool {
    accept.is_some_and(|a| {
        a.as_bytes() == tungstenite::handshake::derive_accept_key(key.as_bytes()).as_bytes()
    })
}

/// Whether the subprotocols of the upstream's 101 (`Sec-WebSocket-Protocol`, read as tokens) are
/// what the job may be told: none, or one of those it offered.
pub(super) fn subprotocol_was_offered(offered: &[String], chosen: &[String]) -> bool {
    match chosen {
        [] => true,
        [one] => offered.contains(one),
        _ => false,
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
            d.count(&m, 9, None);
        }
        assert_eq!((d.messages, d.text_messages, d.binary_messages), (4, 3, 1));
        assert_eq!(d.control_frames, 1);
        assert_eq!(d.bytes, 6 + 10 + 7 + 4);
        // 6 bytes of "héllo", then 3 of "wörld!" (never inside a character).
        assert_eq!(d.text_sample, ["héllo", "wö"]);
        let mut d = Direction::default();
        d.count(&Message::text("ö"), 1, None);
        d.count(&Message::text("x"), 1, None);
        assert_eq!(d.text_sample, [""]);
    }

    #[test]
    fn only_the_answer_to_the_gateways_key_is_accepted() {
        // The example of RFC 6455 §1.3.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let answer = http::HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(accept_answers(key, Some(&answer)));
        assert!(!accept_answers("AAAAAAAAAAAAAAAAAAAAAA==", Some(&answer)));
        assert!(!accept_answers(key, None));
        assert!(!accept_answers(
            key,
            Some(&http::HeaderValue::from_static(
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo"
            ))
        ));
    }

    #[test]
    fn the_job_is_told_only_a_subprotocol_it_offered() {
        let offered = ["chat.v1".to_string(), "chat.v2".to_string()];
        let one = |s: &str| vec![s.to_string()];
        assert!(subprotocol_was_offered(&offered, &[]));
        assert!(subprotocol_was_offered(&offered, &one("chat.v2")));
        assert!(!subprotocol_was_offered(&offered, &one("admin")));
        assert!(!subprotocol_was_offered(&[], &one("chat.v1")));
        assert!(!subprotocol_was_offered(
            &offered,
            &[offered[0].clone(), offered[1].clone()]
        ));
    }

    #[test]
    fn samples_are_masked_and_a_cut_match_is_left_out() {
        let rules = Arc::new(BodyRules::new(
            vec!["r".into()],
            Vec::new(),
            vec![crate::mask::Detector::UsSsn],
        ));
        let mut d = Direction::default();
        d.count(&Message::text("ssn 123-45-6789 ok"), 100, Some(&rules));
        // Cut inside the number: what is left of it is not shown.
        d.count(&Message::text("ssn 123-45-6789"), 28, Some(&rules));
        assert_eq!(d.text_sample[0], "ssn [masked:us_ssn] ok");
        assert!(!d.text_sample[1].contains("123-45"), "{:?}", d.text_sample);
    }
}
