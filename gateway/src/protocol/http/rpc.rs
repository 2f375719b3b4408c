//! JSON-RPC messages of a request body (MCP servers over HTTP), read for policy when the target's
//! rules are about them.
//!
//! The body must be read the one way the server will read it, so anything a JSON parser could
//! take two ways is refused rather than guessed: duplicate keys at any depth (parsers differ on
//! which one wins), a byte order mark, trailing bytes, lone surrogates, invalid UTF-8. A message
//! must be a request or notification (`method` a string) or a response (`id` and `result` or
//! `error`); a `tools/call` must name its tool (`params.name` a string).

use http::StatusCode;
use serde_json::{Map, Value};

use super::request::Refusal;
use crate::policy::RpcMessage;

/// Largest body read for JSON-RPC rules; a larger one is refused (413) where such rules apply.
pub(super) const MAX_BODY: usize = 1024 * 1024;

/// The messages of one body, for policy, and what each carries, for the recording and approvers.
#[derive(Debug, Default)]
pub(super) struct Calls {
    pub(super) messages: Vec<RpcMessage>,
    /// `params.arguments` of each `tools/call` (`null` otherwise), as sent.
    pub(super) arguments: Vec<Value>,
}

impl Calls {
    /// As recorded and shown to approvers: method, tool and arguments of each message.
    pub(super) fn recorded(&self) -> Value {
        self.messages
            .iter()
            .zip(&self.arguments)
            .map(|(m, a)| serde_json::json!({ "method": m.method, "tool": m.tool, "arguments": a }))
            .collect()
    }
}

/// Reads a POST body: `Ok(None)` when it is empty, the messages when it is JSON-RPC, a refusal
/// (400) otherwise.
pub(super) fn read(body: &[u8]) -> Result<Option<Calls>, Refusal> {
    let parsed = crate::strict_json::parse(body).map_err(|e| {
        bad(format!(
            "the body is not JSON the gateway can read one way only ({e}); the target's rules are about JSON-RPC messages"
        ))
    })?;
    let Some(value) = parsed else {
        return Ok(None);
    };
    let items = match value {
        Value::Array(items) if items.is_empty() => return Err(bad("an empty JSON-RPC batch")),
        Value::Array(items) => items,
        one => vec![one],
    };
    let mut calls = Calls::default();
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(message) = item else {
            return Err(bad(format!("JSON-RPC message {i} is not an object")));
        };
        let (message, arguments) =
            message_of(&message).map_err(|e| bad(format!("JSON-RPC message {i}: {e}")))?;
        calls.messages.push(message);
        calls.arguments.push(arguments);
    }
    Ok(Some(calls))
}

fn message_of(m: &Map<String, Value>) -> Result<(RpcMessage, Value), String> {
    match m.get("method") {
        Some(Value::String(method)) => {
            let mut tool = None;
            let mut arguments = Value::Null;
            if method == "tools/call" {
                let params = m.get("params").and_then(Value::as_object);
                match params.and_then(|p| p.get("name")) {
                    Some(Value::String(name)) => tool = Some(name.clone()),
                    _ => return Err("a tools/call without a tool name (params.name)".into()),
                }
                arguments = params
                    .and_then(|p| p.get("arguments"))
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            Ok((
                RpcMessage {
                    method: Some(method.clone()),
                    tool,
                },
                arguments,
            ))
        }
        Some(_) => Err("method is not a string".into()),
        None if m.contains_key("id") && (m.contains_key("result") || m.contains_key("error")) => {
            Ok((
                RpcMessage {
                    method: None,
                    tool: None,
                },
                Value::Null,
            ))
        }
        None => Err("neither a request (method) nor a response (id and result or error)".into()),
    }
}

fn bad(detail: impl Into<String>) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        title: "Request refused by the gateway",
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(body: &str) -> Vec<String> {
        read(body.as_bytes())
            .expect("readable")
            .expect("rpc")
            .messages
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn refused(body: &[u8]) -> String {
        match read(body) {
            Err(r) => r.detail,
            Ok(c) => panic!("{:?} was read: {c:?}", String::from_utf8_lossy(body)),
        }
    }

    #[test]
    fn requests_notifications_responses_and_batches_are_read() {
        assert_eq!(
            messages(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_issue","arguments":{"n":7}}}"#
            ),
            ["tools/call get_issue"]
        );
        assert_eq!(
            messages(
                r#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":3,"result":{}},{"jsonrpc":"2.0","id":4,"method":"tools/list"}]"#
            ),
            ["notifications/initialized", "(response)", "tools/list"]
        );
        let calls =
            read(br#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[1]}}}"#)
                .unwrap()
                .unwrap();
        assert_eq!(
            calls.recorded()[0]["arguments"],
            serde_json::json!({"a": [1]})
        );
        assert!(read(b"  \n").unwrap().is_none());
    }

    #[test]
    fn what_a_server_could_read_another_way_is_refused() {
        // Which "name" wins depends on the server's parser.
        assert!(
            refused(
                br#"{"method":"tools/call","params":{"name":"get_issue","name":"delete_repo"}}"#
            )
            .contains("twice")
        );
        assert!(refused(br#"{"method":"tools/list","method":"tools/call"}"#).contains("twice"));
        assert!(refused(br#"{"method":"x","params":{"a":{"b":1,"b":2}}}"#).contains("twice"));
        refused("\u{feff}{\"method\":\"tools/list\"}".as_bytes());
        refused(br#"{"method":"tools/list"} {"method":"tools/call"}"#);
        refused(br#"{"method":"tools/call","params":{"name":"\ud800"}}"#);
        refused(b"{\"method\":\"tools/list\xff\"}");
        refused(br#"{"method":"tools/list",}"#);
        refused(b"method=tools/call&name=delete_repo");
    }

    #[test]
    fn messages_that_are_not_json_rpc_are_refused() {
        refused(b"[]");
        refused(b"[1]");
        refused(br#"{"jsonrpc":"2.0","id":1}"#);
        refused(br#"{"method":7}"#);
        refused(br#"{"method":"tools/call","params":{}}"#);
        refused(br#"{"method":"tools/call","params":{"name":["delete_repo"]}}"#);
        refused(br#"{"method":"tools/call"}"#);
    }
}
