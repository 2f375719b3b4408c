//! Typed messages through pgwire's codecs: decoding whole frames into pgwire's message types and
//! encoding the messages the gateway itself sends.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{Bytes, BytesMut};
use pgwire::messages::{
    DecodeContext, Message, ProtocolVersion,
    extendedquery::{Describe, Parse},
    response::{ErrorResponse, ReadyForQuery, TransactionStatus},
    simplequery::Query,
    startup::{Authentication, BackendKeyData, SecretKey},
};

use super::frame::Frame;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {what} message: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

fn context() -> DecodeContext {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

/// Decodes one whole frame as `M`. pgwire's decoders trust their input in places (a missing
/// terminator can make them read past the end); a panic there is a malformed message, not a crash.
pub fn decode<M: Message>(what: &'static str, bytes: &[u8]) -> Result<M, DecodeError> {
    let err = |reason: String| DecodeError { what, reason };
    let mut buf = BytesMut::from(bytes);
    let ctx = context();
    match catch_unwind(AssertUnwindSafe(|| M::decode(&mut buf, &ctx))) {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(err("incomplete".into())),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err("inconsistent lengths or missing terminator".into())),
    }
}

pub fn decode_frame<M: Message>(what: &'static str, frame: &Frame) -> Result<M, DecodeError> {
    decode(what, &frame.bytes)
}

/// Encodes a message the gateway built (or rebuilt from a decoded one, with masked values).
pub fn encode(m: &impl Message) -> Bytes {
    let mut buf = BytesMut::new();
    // Only messages built from values that fit the protocol's lengths are encoded here.
    m.encode(&mut buf).expect("encode a gateway-built message");
    buf.freeze()
}

/// A message of type `tag` with `body`.
pub fn message(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 5);
    b.extend_from_slice(&[tag]);
    b.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    b.extend_from_slice(body);
    b.freeze()
}

pub fn encode_error(e: &ErrorResponse) -> Bytes {
    encode(e)
}

pub fn encode_notice(n: &pgwire::messages::response::NoticeResponse) -> Bytes {
    encode(n)
}

/// SQLSTATE of a refused statement or connection.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const CONNECTION_FAILURE: &str = "08006";
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const INVALID_AUTHORIZATION: &str = "28000";
pub const ADMIN_SHUTDOWN: &str = "57P01";

/// An ErrorResponse the gateway sends in its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl GatewayError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            severity: "ERROR",
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            severity: "FATAL",
            ..Self::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn encode(&self) -> Bytes {
        let mut fields = vec![
            (b'S', self.severity.to_string()),
            (b'V', self.severity.to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', d.clone()));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h.clone()));
        }
        encode(&ErrorResponse::new(fields))
    }
}

/// A NoticeResponse in the gateway's own name (clients show it at once, whatever they are doing).
pub fn notice(message: impl Into<String>, hint: Option<String>) -> Bytes {
    let mut fields = vec![
        (b'S', "NOTICE".to_string()),
        (b'V', "NOTICE".to_string()),
        (b'C', "01000".to_string()),
        (b'M', message.into()),
    ];
    if let Some(h) = hint {
        fields.push((b'H', h));
    }
    encode(&pgwire::messages::response::NoticeResponse::new(fields))
}

/// `(code, message)` of an ErrorResponse or NoticeResponse.
pub fn error_fields(frame: &Frame) -> (String, String) {
    match decode_frame::<ErrorResponse>("ErrorResponse", frame) {
        Ok(e) => {
            let get = |k: u8| {
                e.fields
                    .iter()
                    .find(|(c, _)| *c == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (get(b'C'), get(b'M'))
        }
        Err(e) => (String::new(), e.to_string()),
    }
}

pub fn auth_ok() -> Bytes {
    encode(&Authentication::Ok)
}

pub fn backend_key_data(pid: i32, key: i32) -> Bytes {
    encode(&BackendKeyData::new(pid, SecretKey::I32(key)))
}

pub fn ready_for_query(status: u8) -> Bytes {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status))
}

pub fn query(sql: &str) -> Bytes {
    encode(&Query::new(sql.to_string()))
}

pub fn parse(name: Option<String>, sql: &str) -> Bytes {
    encode(&Parse::new(name, sql.to_string(), Vec::new()))
}

pub fn describe_portal(name: Option<String>) -> Bytes {
    encode(&Describe::new(b'P', name))
}

/// `NegotiateProtocolVersion`: we speak 3.0 (the full version number, as PostgreSQL sends it); list the `_pq_.` options we do not support.
pub fn negotiate_protocol_version(unsupported: Vec<String>) -> Bytes {
    encode(&pgwire::messages::startup::NegotiateProtocolVersion::new(
        i32::from(ProtocolVersion::PROTOCOL3_0),
        unsupported,
    ))
}

/// A C string field of a message body.
pub fn cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = body.iter().position(|&b| b == 0)?;
    Some((&body[..end], &body[end + 1..]))
}
