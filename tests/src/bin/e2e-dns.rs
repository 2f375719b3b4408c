//! Test peer: a DNS server over UDP and TCP whose answers change over time. Each line of the zone
//! file is `NAME TTL ADDR[,ADDR…]`; the n-th A (or AAAA) query for NAME (over either transport)
//! is answered with the n-th address of its family (the last one from then on). Other names:
//! NXDOMAIN. Every message is logged to stdout: `query NAME TYPE TRANSPORT` or `malformed BYTES`.
//!
//! Usage: e2e-dns ADDR ZONEFILE

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};

type Asked = Arc<Mutex<HashMap<(String, RecordType), usize>>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 2, "usage: e2e-dns ADDR ZONEFILE");
    let socket = UdpSocket::bind(&args[0])?;
    let listener = TcpListener::bind(socket.local_addr()?)?;
    let asked: Asked = Arc::default();
    {
        let (zone, asked) = (args[1].clone(), asked.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (zone, asked) = (zone.clone(), asked.clone());
                std::thread::spawn(move || serve_tcp(stream, &zone, &asked));
            }
        });
    }
    println!("listening {}", socket.local_addr()?);
    let _ = std::io::stdout().flush();
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        if let Some(answer) = answer(&buf[..n], &args[1], &asked, "udp") {
            socket.send_to(&answer, peer)?;
        }
    }
}

/// Length-prefixed messages, answered in turn until the client closes.
fn serve_tcp(mut stream: TcpStream, zone: &str, asked: &Asked) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).is_err() {
            return;
        }
        let Some(answer) = answer(&query, zone, asked, "tcp") else {
            continue;
        };
        let mut out = (answer.len() as u16).to_be_bytes().to_vec();
        out.extend(answer);
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn answer(bytes: &[u8], zone: &str, asked: &Asked, transport: &str) -> Option<Vec<u8>> {
    let query = match Message::from_vec(bytes) {
        Ok(q) if q.queries().len() == 1 => q,
        _ => {
            println!("malformed {}", bytes.len());
            let _ = std::io::stdout().flush();
            return None;
        }
    };
    let question = query.queries()[0].clone();
    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_lowercase();
    let qtype = question.query_type();
    println!("query {name} {qtype} {transport}");
    let _ = std::io::stdout().flush();
    let zone = std::fs::read_to_string(zone).unwrap_or_default();
    let entry = zone.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == name).then_some(())?;
        let ttl: u32 = f.next()?.parse().ok()?;
        let addrs: Vec<IpAddr> = f
            .next()?
            .split(',')
            .filter_map(|a| a.parse().ok())
            .collect();
        Some((ttl, addrs))
    });
    let mut answer = Message::new();
    answer
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    match entry {
        None => {
            answer.set_response_code(ResponseCode::NXDomain);
        }
        Some((ttl, addrs)) => {
            let of_type: Vec<IpAddr> = addrs
                .into_iter()
                .filter(|a| a.is_ipv4() == (qtype == RecordType::A))
                .collect();
            let mut asked = asked.lock().unwrap_or_else(|p| p.into_inner());
            let count = asked.entry((name.clone(), qtype)).or_default();
            if let Some(ip) = of_type.get((*count).min(of_type.len().saturating_sub(1))) {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(rdata::A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(rdata::AAAA(*v6)),
                };
                answer.add_answer(Record::from_rdata(
                    Name::from_ascii(&name).ok()?,
                    ttl,
                    rdata,
                ));
            }
            *count += 1;
        }
    }
    answer.to_vec().ok()
}
