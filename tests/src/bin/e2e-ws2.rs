//! A WebSocket client over HTTP/2 (RFC 8441 extended CONNECT), which no installed client speaks:
//! hyper's HTTP/2 client sends the CONNECT with `:protocol`, tungstenite speaks WebSocket over the
//! stream it opens. Also sends what a well-behaved client never does (`:protocol` on a GET, h1
//! headers on an extended CONNECT, bytes before the answer), and in `raw` mode a HEADERS frame
//! with connection-specific fields that HTTP/2 client libraries refuse to encode.
//!
//! Usage: e2e-ws2 HOST:PORT CA_FILE SPEC, SPEC being JSON:
//! `{"server_name": "api.test", "streams": [STREAM, ...]}` or
//! `{"server_name": "api.test", "raw": [[name, value], ...]}`, where STREAM is
//! `{"method": "CONNECT", "protocol": "websocket", "authority": "api.test", "path": "/ws/echo",
//!   "headers": [[name, value]], "send": ["text", ...], "count": 1}`, or
//! `{"server_name": "api.test", "early": STREAM}`: one text message (`send[0]`) written on the
//! stream right after the CONNECT, before the answer (the h2 crate, which allows it). Streams are opened concurrently on one connection; every answer is awaited
//! before any stream sends its messages. Prints one JSON document: per stream the status, headers,
//! replies and close code (and in `early` mode whether the server announced
//! SETTINGS_ENABLE_CONNECT_PROTOCOL).

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::Empty;
use hyper::{Request, ext::Protocol};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};

/// Bounds every wait: a test never hangs on the client.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, ca, spec] = args.as_slice() else {
        eprintln!("usage: e2e-ws2 HOST:PORT CA_FILE SPEC");
        std::process::exit(2);
    };
    let spec: Value = serde_json::from_str(spec).context("SPEC is not JSON")?;
    let server_name = spec["server_name"]
        .as_str()
        .unwrap_or("api.test")
        .to_string();
    let tls = tls(addr, ca, &server_name).await?;
    let out = if let Some(raw) = spec["raw"].as_array() {
        tokio::time::timeout(WAIT, raw_headers(tls, raw))
            .await
            .context("no answer in time")??
    } else if spec["early"].is_object() {
        tokio::time::timeout(WAIT * 3, early(tls, &spec["early"]))
            .await
            .context("no answer in time")??
    } else {
        tokio::time::timeout(WAIT * 3, streams(tls, &spec))
            .await
            .context("no end in time")??
    };
    println!("{out}");
    Ok(())
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls(addr: &str, ca: &str, server_name: &str) -> Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        bail!("the server did not choose h2");
    }
    Ok(stream)
}

fn text(v: &Value, key: &str, default: &str) -> String {
    v[key].as_str().unwrap_or(default).to_string()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    v.as_array()
        .map(|a| a.iter().map(|p| (s(&p[0]), s(&p[1]))).collect())
        .unwrap_or_default()
}

/// Array items as strings (`as_str` of a JSON string).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn streams(tls: Tls, spec: &Value) -> Result<Value> {
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    let driver = tokio::spawn(connection);
    // The server's SETTINGS arrive with the handshake; one round trip makes sure they were read.
    let mut probe = sender.clone();
    probe.ready().await?;
    let mut requests = Vec::new();
    for stream in spec["streams"].as_array().context("no streams")? {
        for _ in 0..stream["count"].as_u64().unwrap_or(1) {
            requests.push(stream.clone());
        }
    }
    let opened = futures_util::future::join_all(requests.iter().map(|stream| {
        let mut sender = sender.clone();
        async move { open(&mut sender, stream).await }
    }))
    .await;
    let mut results = Vec::new();
    for (stream, opened) in requests.iter().zip(opened) {
        results.push(match opened {
            Err(e) => json!({ "error": format!("{e:#}") }),
            Ok((mut result, upgraded)) => {
                if let Some(socket) = upgraded {
                    talk(socket, stream, &mut result).await;
                }
                result
            }
        });
    }
    drop(sender);
    driver.abort();
    Ok(json!({ "streams": results }))
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Sends the request; on a 2xx to a CONNECT, the WebSocket over its stream.
async fn open(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    stream: &Value,
) -> Result<(Value, Option<Socket>)> {
    let method = text(stream, "method", "CONNECT");
    let uri = format!(
        "https://{}{}",
        text(stream, "authority", "api.test"),
        text(stream, "path", "/ws/echo")
    );
    let mut request = Request::builder().method(method.as_str()).uri(uri);
    for (name, value) in pairs(&stream["headers"]) {
        request = request.header(name, value);
    }
    let mut request = request.body(Empty::new())?;
    if let Some(p) = stream["protocol"].as_str() {
        request.extensions_mut().insert(Protocol::from(p));
    }
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers: serde_json::Map<String, Value> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    let mut result = json!({ "status": status, "headers": headers });
    if !response.status().is_success() {
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        result["body"] = json!(body);
        return Ok((result, None));
    }
    let upgraded = hyper::upgrade::on(response).await?;
    let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok((result, Some(socket)))
}

/// Sends each message and reads one reply to each; then closes (or records how the server did).
async fn talk(mut socket: Socket, stream: &Value, result: &mut Value) {
    let mut replies = Vec::new();
    let mut close = None;
    for message in strings(&stream["send"]) {
        if let Err(e) = socket.send(Message::text(message)).await {
            result["send_error"] = json!(e.to_string());
            break;
        }
        match tokio::time::timeout(WAIT, next_data(&mut socket)).await {
            Ok(Ok(reply)) => replies.push(reply),
            Ok(Err(code)) => {
                close = code;
                break;
            }
            Err(_) => {
                result["timeout"] = json!(true);
                break;
            }
        }
    }
    let _ = tokio::time::timeout(WAIT, socket.close(None)).await;
    result["replies"] = json!(replies);
    result["close"] = json!(close);
}

/// The next data message as JSON (text as a string, binary as hex); the close code if the server
/// ended the WebSocket instead.
async fn next_data(socket: &mut Socket) -> Result<Value, Option<u16>> {
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Text(t)) => return Ok(json!(t.as_str())),
            Ok(Message::Binary(b)) => {
                return Ok(json!(
                    b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                ));
            }
            Ok(Message::Close(frame)) => return Err(frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => return Err(None),
        }
    }
    Err(None)
}

/// An extended CONNECT whose first WebSocket frame follows the request at once, before the
/// server answered; then the answer, and the first message the server sent, if any.
async fn early(tls: Tls, stream: &Value) -> Result<Value> {
    let (client, connection) = h2::client::handshake(tls).await?;
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await?;
    let announced = client.is_extended_connect_protocol_enabled();
    let uri = format!(
        "https://{}{}",
        text(stream, "authority", "api.test"),
        text(stream, "path", "/ws/echo")
    );
    let mut request = Request::builder().method("CONNECT").uri(uri);
    for (name, value) in pairs(&stream["headers"]) {
        request = request.header(name, value);
    }
    let mut request = request.body(())?;
    request
        .extensions_mut()
        .insert(h2::ext::Protocol::from("websocket"));
    let (response, mut send) = client.send_request(request, false)?;
    let message = strings(&stream["send"]).concat();
    send.send_data(client_text_frame(message.as_bytes()), false)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut received = Vec::new();
    if (200..300).contains(&status) {
        while received.len() < 2 + message.len() {
            match tokio::time::timeout(WAIT, body.data()).await {
                Ok(Some(Ok(data))) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    received.extend_from_slice(&data);
                }
                _ => break,
            }
        }
    }
    // An unmasked server frame of under 126 bytes: two bytes of head, then the payload.
    let reply = (received.len() >= 2 && received[0] == 0x81)
        .then(|| String::from_utf8_lossy(&received[2..]).into_owned());
    driver.abort();
    Ok(json!({ "connect_protocol": announced, "status": status, "reply": reply }))
}

/// A final, masked text frame of under 126 bytes, as a client sends it (RFC 6455 §5.2).
fn client_text_frame(payload: &[u8]) -> Bytes {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame.into()
}

/// One HEADERS frame on stream 1 with the given fields (HPACK literals, no Huffman), as bytes:
/// fields HTTP/2 forbids included. Reports the server's answer on the stream: `reset` with the
/// error code, `headers` (a response), or `goaway`.
async fn raw_headers(mut tls: Tls, fields: &[Value]) -> Result<Value> {
    let mut block = Vec::new();
    for (name, value) in pairs(&Value::Array(fields.to_vec())) {
        // Literal header field without indexing, new name (RFC 7541 §6.2.2).
        block.push(0);
        hpack_string(&mut block, name.as_bytes());
        hpack_string(&mut block, value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    // END_HEADERS only: the stream stays open for the answer.
    frame(&mut out, 1, 0x4, 1, &block);
    tls.write_all(&out).await?;
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await?;
        match (kind, stream) {
            // SETTINGS from the server: acknowledged.
            (4, 0) if flags & 1 == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, 4, 1, 0, &[]);
                tls.write_all(&ack).await?;
            }
            (3, 1) => {
                let code = u32::from_be_bytes(payload[..4].try_into()?);
                return Ok(json!({ "reset": code }));
            }
            (1, 1) => return Ok(json!({ "headers": true })),
            (7, 0) => {
                let code = u32::from_be_bytes(payload[4..8].try_into()?);
                return Ok(json!({ "goaway": code }));
            }
            _ => {}
        }
    }
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    // 7-bit prefix integer, no Huffman (RFC 7541 §5.1).
    let mut len = s.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128 + 128) as u8);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}
