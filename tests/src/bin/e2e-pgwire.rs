//! Test client that speaks raw PostgreSQL wire protocol, to send what real drivers never send
//! (bogus versions, lying lengths, unknown messages, FunctionCall, hand-built pipelines). Run as a
//! job; prints what came back as one JSON object on stdout.
//!
//! Usage: e2e-pgwire HOST:PORT CASE
//!   bad-version | huge-startup | garbage | truncated | bad-length | oversized | unknown-type |
//!   function-call | encryption-requests | pipeline | cancel-unknown | tls-garbage
//!
//! e2e-pgwire HOST:PORT idle N: opens N sessions (startup to ReadyForQuery), prints
//! `{"open": N}`, and holds them until stdin closes (benchmark of idle connections).
//!
//! e2e-pgwire HOST:PORT script JSON|@FILE: a session driven message by message, as a hostile
//! client would. JSON is a list of steps:
//!   {"startup": {"options": "-c role=x", …}}  (user "anyone", database "app" unless given)
//!   {"Q": "sql"}  {"Qhex": "hex bytes of the text"}  {"P": [name, sql]}
//!   {"B": [portal, statement, [text param | null, …]]}  {"D": ["S"|"P", name]}
//!   {"E": [portal, max_rows]}  {"C": ["S"|"P", name]}  {"S": null}  {"H": null}
//!   {"read": "Z"} (send, then read up to the next ReadyForQuery)  {"read": "all"} (until quiet)
//!   {"timeout": seconds} (how long a read waits for the next message; 3 by default)
//! Prints {"messages": [...], "closed": bool}; DataRows come with their values as text.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use serde_json::{Value, json};

fn startup(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstr(sql))
}

fn parse(sql: &str) -> Vec<u8> {
    let mut b = cstr("");
    b.extend_from_slice(&cstr(sql));
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &b)
}

fn bind() -> Vec<u8> {
    let mut b = cstr("");
    b.extend_from_slice(&cstr(""));
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

fn execute() -> Vec<u8> {
    let mut b = cstr("");
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

/// Reads messages until the peer closes or stays silent; `stop_at_ready` ends after one
/// ReadyForQuery.
fn read_messages(s: &mut TcpStream, stop_at_ready: bool, out: &mut Vec<Value>) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < len + 1 {
                break;
            }
            let tag = buf[0];
            let body = buf[5..len + 1].to_vec();
            buf.drain(..len + 1);
            let mut m = json!({ "tag": (tag as char).to_string() });
            match tag {
                b'E' | b'N' => {
                    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
                        let v = String::from_utf8_lossy(&field[1..]).to_string();
                        match field[0] {
                            b'C' => m["code"] = json!(v),
                            b'M' => m["message"] = json!(v),
                            b'S' => m["severity"] = json!(v),
                            _ => {}
                        }
                    }
                }
                b'Z' => m["status"] = json!((body[0] as char).to_string()),
                b'D' => {
                    m["row"] = json!(String::from_utf8_lossy(&body).to_string());
                    m["values"] = json!(row_values(&body));
                }
                b'd' => m["data"] = json!(String::from_utf8_lossy(&body).to_string()),
                b'S' => {
                    let mut parts = body.split(|b| *b == 0);
                    let name =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string();
                    let value =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string();
                    m["name"] = json!(name);
                    m["value"] = json!(value);
                }
                b'A' => {
                    let rest = &body[4.min(body.len())..];
                    let mut parts = rest.split(|b| *b == 0);
                    m["channel"] = json!(String::from_utf8_lossy(parts.next().unwrap_or_default()));
                    m["payload"] = json!(String::from_utf8_lossy(parts.next().unwrap_or_default()));
                }
                _ => {}
            }
            out.push(m);
            if stop_at_ready && tag == b'Z' {
                return false;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The values of a DataRow body, as text (NULL as null).
fn row_values(body: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    if body.len() < 2 {
        return out;
    }
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut at = 2;
    for _ in 0..n.max(0) {
        let Some(len) = body.get(at..at + 4) else {
            break;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len < 0 {
            out.push(Value::Null);
            continue;
        }
        let Some(v) = body.get(at..at + len as usize) else {
            break;
        };
        out.push(json!(String::from_utf8_lossy(v)));
        at += len as usize;
    }
    out
}

fn startup_with(params: &serde_json::Map<String, Value>) -> Vec<u8> {
    let mut all: Vec<(String, String)> = vec![
        ("user".into(), "anyone".into()),
        ("database".into(), "app".into()),
    ];
    for (k, v) in params {
        all.retain(|(key, _)| key != k);
        all.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
    }
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in &all {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn named(tag: u8, kind: &str, name: &str) -> Vec<u8> {
    let mut b = kind.as_bytes()[..1].to_vec();
    b.extend_from_slice(&cstr(name));
    msg(tag, &b)
}

/// Runs a script (see the module docs); returns whether the server closed the connection.
fn script(addr: &str, steps: &[Value], messages: &mut Vec<Value>) -> bool {
    let mut s = connect(addr);
    let mut out: Vec<u8> = Vec::new();
    let mut started = false;
    for step in steps {
        let Some((op, arg)) = step.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let text = |i: usize| arg[i].as_str().unwrap_or_default().to_string();
        match op.as_str() {
            "startup" => {
                out.extend_from_slice(&startup_with(
                    arg.as_object().unwrap_or(&Default::default()),
                ));
                started = true;
            }
            "Q" => out.extend_from_slice(&query(arg.as_str().unwrap_or_default())),
            "Qhex" => {
                let mut b = hex(arg.as_str().unwrap_or_default());
                b.push(0);
                out.extend_from_slice(&msg(b'Q', &b));
            }
            "P" => {
                let mut b = cstr(&text(0));
                b.extend_from_slice(&cstr(&text(1)));
                b.extend_from_slice(&0i16.to_be_bytes());
                out.extend_from_slice(&msg(b'P', &b));
            }
            "B" => {
                let mut b = cstr(&text(0));
                b.extend_from_slice(&cstr(&text(1)));
                b.extend_from_slice(&0i16.to_be_bytes());
                let params = arg[2].as_array().cloned().unwrap_or_default();
                b.extend_from_slice(&(params.len() as i16).to_be_bytes());
                for p in &params {
                    match p.as_str() {
                        Some(v) => {
                            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            b.extend_from_slice(v.as_bytes());
                        }
                        None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
                b.extend_from_slice(&0i16.to_be_bytes());
                out.extend_from_slice(&msg(b'B', &b));
            }
            "D" => out.extend_from_slice(&named(b'D', &text(0), &text(1))),
            "C" => out.extend_from_slice(&named(b'C', &text(0), &text(1))),
            "E" => {
                let mut b = cstr(&text(0));
                b.extend_from_slice(&(arg[1].as_i64().unwrap_or(0) as i32).to_be_bytes());
                out.extend_from_slice(&msg(b'E', &b));
            }
            "S" => out.extend_from_slice(&sync()),
            "H" => out.extend_from_slice(&msg(b'H', &[])),
            // How long a read waits for the next message before taking the server as quiet.
            "timeout" => {
                let secs = arg.as_u64().unwrap_or(3);
                s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
            }
            "read" => {
                if !started {
                    s.write_all(&startup("anyone", "app")).unwrap();
                    read_messages(&mut s, true, &mut Vec::new());
                    started = true;
                }
                if s.write_all(&out).is_err() {
                    return true;
                }
                out.clear();
                let closed = read_messages(&mut s, arg.as_str() == Some("Z"), messages);
                if closed {
                    return true;
                }
            }
            other => panic!("unknown step {other}"),
        }
    }
    if !out.is_empty() {
        let _ = s.write_all(&out);
    }
    read_messages(&mut s, false, messages)
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Startup and wait for the first ReadyForQuery.
fn open(addr: &str, messages: &mut Vec<Value>) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(&startup("anyone", "app")).unwrap();
    read_messages(&mut s, true, messages);
    messages.clear();
    s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, case) = (args[1].as_str(), args[2].as_str());
    if case == "idle" {
        let n: usize = args[3].parse().expect("N");
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut m = Vec::new();
            held.push(open(addr, &mut m));
        }
        println!("{}", json!({ "open": held.len() }));
        let _ = std::io::stdout().flush();
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        return;
    }
    let mut messages = Vec::new();
    let mut answer = String::new();
    if case == "script" {
        let text = match args[3].strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).expect("script file"),
            None => args[3].clone(),
        };
        let steps: Vec<Value> = serde_json::from_str(&text).expect("script JSON");
        let closed = script(addr, &steps, &mut messages);
        println!("{}", json!({ "messages": messages, "closed": closed }));
        return;
    }
    let closed = match case {
        "bad-version" => {
            let mut s = connect(addr);
            let mut p = 8i32.to_be_bytes().to_vec();
            p.extend_from_slice(&0x270f_0000i32.to_be_bytes());
            s.write_all(&p).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        "huge-startup" => {
            let mut s = connect(addr);
            s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        "garbage" => {
            let mut s = connect(addr);
            let junk: Vec<u8> = (0u32..512)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            let _ = s.write_all(&junk);
            read_messages(&mut s, false, &mut messages)
        }
        "truncated" => {
            let mut s = open(addr, &mut messages);
            let q = query("SELECT 1");
            s.write_all(&q[..q.len() - 4]).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        "bad-length" => {
            let mut s = open(addr, &mut messages);
            s.write_all(&[b'Q', 0, 0, 0, 2, b'x']).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        "oversized" => {
            let mut s = open(addr, &mut messages);
            s.write_all(&[b'Q', 0x0c, 0, 0, 0, b'S', b'E']).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        "unknown-type" => {
            let mut s = open(addr, &mut messages);
            s.write_all(&msg(b'Y', b"hello")).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        "function-call" => {
            let mut s = open(addr, &mut messages);
            // FunctionCall of oid 2626 (pg_sleep) with one text argument, then a normal query.
            let mut b = 2626i32.to_be_bytes().to_vec();
            b.extend_from_slice(&[0, 0, 0, 1, 0, 3, b'1', 0, 0]);
            b.extend_from_slice(&0i16.to_be_bytes());
            let mut all = msg(b'F', &b);
            all.extend_from_slice(&query("SELECT 41 + 1"));
            s.write_all(&all).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        "encryption-requests" => {
            let mut s = connect(addr);
            let mut gss = 8i32.to_be_bytes().to_vec();
            gss.extend_from_slice(&80_877_104i32.to_be_bytes());
            s.write_all(&gss).unwrap();
            let mut one = [0u8; 1];
            s.read_exact(&mut one).unwrap();
            answer.push(one[0] as char);
            let mut ssl = 8i32.to_be_bytes().to_vec();
            ssl.extend_from_slice(&80_877_103i32.to_be_bytes());
            s.write_all(&ssl).unwrap();
            s.read_exact(&mut one).unwrap();
            answer.push(one[0] as char);
            s.write_all(&startup("anyone", "app")).unwrap();
            read_messages(&mut s, true, &mut messages);
            s.write_all(&query("SELECT 42")).unwrap();
            read_messages(&mut s, true, &mut messages)
        }
        "pipeline" => {
            let mut s = open(addr, &mut messages);
            // A refused statement in a pipeline: the server skips to Sync; the next one runs.
            let mut all = Vec::new();
            for m in [parse("DROP TABLE users"), bind(), execute(), sync()] {
                all.extend_from_slice(&m);
            }
            for m in [parse("SELECT 7"), bind(), execute(), sync()] {
                all.extend_from_slice(&m);
            }
            s.write_all(&all).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        "tls-garbage" => {
            // SSLRequest, then bytes that are no TLS ClientHello.
            let mut s = connect(addr);
            let mut ssl = 8i32.to_be_bytes().to_vec();
            ssl.extend_from_slice(&80_877_103i32.to_be_bytes());
            s.write_all(&ssl).unwrap();
            let mut one = [0u8; 1];
            s.read_exact(&mut one).unwrap();
            answer.push(one[0] as char);
            let junk: Vec<u8> = (0u32..512)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            let _ = s.write_all(&junk);
            let mut sink = Vec::new();
            match s.read_to_end(&mut sink) {
                Ok(_) => true,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        }
        "cancel-unknown" => {
            let mut s = connect(addr);
            let mut p = 16i32.to_be_bytes().to_vec();
            p.extend_from_slice(&80_877_102i32.to_be_bytes());
            p.extend_from_slice(&1i32.to_be_bytes());
            p.extend_from_slice(&2i32.to_be_bytes());
            s.write_all(&p).unwrap();
            read_messages(&mut s, false, &mut messages)
        }
        other => panic!("unknown case {other}"),
    };
    println!(
        "{}",
        json!({ "case": case, "messages": messages, "closed": closed, "answer": answer })
    );
}
