//! DNS over TCP (RFC 7766): a job's TCP connection to port 53 of a resolver it may use, handed
//! over by the intercept listener. Each length-prefixed query is read (bounded in size, count
//! and time), checked like a datagram, asked over one TCP connection of the resolver the job
//! connected to, from the job's network namespace (or of the daemon's own resolver, from the
//! daemon's, for a namespace the job configures: [`super::Upstream::Daemon`]), and its answer
//! followed before the job gets it.
//! The first message that is not a query of one question ends the connection, recorded.

use std::{net::SocketAddr, time::Duration};

use hickory_proto::op::{Message, MessageType};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    Asker, Asking, MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_JOB, MAX_QUERY, Namespace, Outcome,
    RESOLVER_TIMEOUT, Services, follow_answer, in_namespace, read_query, record, unanswered,
};

/// Queries one connection may carry; the connection is closed after them (clients open another).
const MAX_QUERIES_PER_CONNECTION: usize = 64;
/// How long the forwarder waits for a query (the first, or the next): RFC 7766 asks servers to
/// close idle connections after seconds, not minutes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last, however busy.
const MAX_CONNECTION_TIME: Duration = Duration::from_secs(60);

/// Records a job's DNS-over-TCP connection refused before a byte of it was read (`reason`).
pub async fn record_refusal(
    asker: &Asker,
    resolver: SocketAddr,
    reason: String,
    services: &Services,
) {
    let detail = json!({ "transport": "tcp", "resolver": resolver.to_string() });
    record(asker, resolver, Outcome::refused(reason, detail), services).await;
}

/// Serves a job's DNS-over-TCP connection to `resolver` until the job closes it, a bound is
/// reached, or a message is refused.
pub async fn serve(
    mut client: TcpStream,
    resolver: SocketAddr,
    asker: Asker,
    namespace: Namespace,
    services: &Services,
) {
    let deadline = tokio::time::Instant::now() + MAX_CONNECTION_TIME;
    let asking = match namespace.asking(resolver, &services.own_resolvers) {
        Ok(a) => a,
        Err(reason) => return record_refusal(&asker, resolver, reason, services).await,
    };
    let mut upstream: Option<TcpStream> = None;
    for _ in 0..MAX_QUERIES_PER_CONNECTION {
        let idle = (tokio::time::Instant::now() + IDLE_TIMEOUT).min(deadline);
        let query = match tokio::time::timeout_at(idle, read_message(&mut client, MAX_QUERY)).await
        {
            Ok(Ok(Some(q))) => q,
            // Closed by the job between queries, or quiet for too long: the end.
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(Refused::TooLong(len))) => {
                let outcome = Outcome::refused(
                    format!("DNS query of more than {MAX_QUERY} bytes; dropped"),
                    json!({ "bytes": len, "transport": "tcp", "resolver": resolver.to_string() }),
                );
                return record(&asker, resolver, outcome, services).await;
            }
            Ok(Err(Refused::Io)) => return,
        };
        let mut parsed = match read_query(&query, resolver, "tcp") {
            Ok(p) => p,
            Err(outcome) => return record(&asker, resolver, outcome, services).await,
        };
        // Checked per query: a binding may run out while the connection is open.
        let identity = match asker.admitted(services) {
            Ok(i) => i,
            Err(reason) => {
                let (bytes, mut outcome) = parsed.refuse(reason);
                if let Err(e) = write_message(&mut client, &bytes).await {
                    outcome.detail["error"] = json!(e.to_string());
                }
                return record(&asker, resolver, outcome, services).await;
            }
        };
        let Some(_job_permit) = services.in_flight.take(asker.job_cgroup_id) else {
            tracing::warn!(%resolver, "DNS forwarder: the job has {MAX_IN_FLIGHT_PER_JOB} queries in flight already; connection closed");
            return;
        };
        let Ok(_permit) = services.limit.clone().try_acquire_owned() else {
            tracing::warn!(%resolver, "DNS forwarder: {MAX_IN_FLIGHT} queries in flight already; connection closed");
            return;
        };
        namespace.note(&asking, &mut parsed.detail);
        let asked = ask(&mut upstream, &query, parsed.id, &asking).await;
        let (answer, bytes) = match asked {
            Ok(a) => a,
            Err(e) => {
                let outcome = unanswered(parsed, e);
                return record(&asker, resolver, outcome, services).await;
            }
        };
        let (bytes, mut outcome) =
            follow_answer(parsed, answer, bytes, (&asker, &identity), services).await;
        let sent = write_message(&mut client, &bytes).await;
        if let Err(e) = &sent {
            outcome.detail["error"] = json!(e.to_string());
        }
        record(&asker, resolver, outcome, services).await;
        if sent.is_err() {
            return;
        }
    }
}

/// Why a message was not read.
enum Refused {
    /// Its length prefix says more than the bound.
    TooLong(usize),
    /// The connection broke (or ended within a message).
    Io,
}

/// One length-prefixed message of at most `max` bytes; `None` when the peer closed cleanly
/// before one began. A longer one is refused from its prefix, before it is read.
async fn read_message(stream: &mut TcpStream, max: usize) -> Result<Option<Vec<u8>>, Refused> {
    let mut len = [0u8; 2];
    match stream.read(&mut len[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(_) => return Err(Refused::Io),
    }
    stream
        .read_exact(&mut len[1..])
        .await
        .map_err(|_| Refused::Io)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > max {
        return Err(Refused::TooLong(len));
    }
    let mut message = vec![0u8; len];
    stream
        .read_exact(&mut message)
        .await
        .map_err(|_| Refused::Io)?;
    Ok(Some(message))
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Asks the resolver over TCP (one connection, opened at the first query and kept for the
/// next); its answer to the query's id.
async fn ask(
    upstream: &mut Option<TcpStream>,
    query: &[u8],
    id: u16,
    asking: &Asking,
) -> Result<(Message, Vec<u8>), String> {
    let resolver = asking.resolver;
    tokio::time::timeout(RESOLVER_TIMEOUT, async {
        if upstream.is_none() {
            let v4 = resolver.is_ipv4();
            let socket = in_namespace(asking.from.as_ref(), move || {
                if v4 {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
            })
            .await
            .map_err(|e| e.to_string())?;
            *upstream = Some(socket.connect(resolver).await.map_err(|e| e.to_string())?);
        }
        let stream = upstream.as_mut().expect("connected above");
        write_message(stream, query)
            .await
            .map_err(|e| e.to_string())?;
        let answer = match read_message(stream, usize::from(u16::MAX)).await {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => return Err("the resolver closed the connection".to_string()),
        };
        match Message::from_vec(&answer) {
            Ok(m) if m.id() == id && m.message_type() == MessageType::Response => Ok((m, answer)),
            Ok(_) => Err("the resolver answered another query".to_string()),
            Err(e) => Err(format!("malformed answer ({e})")),
        }
    })
    .await
    .map_err(|_| format!("no answer within {RESOLVER_TIMEOUT:?}"))?
}
