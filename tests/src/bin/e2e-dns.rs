//! Test peer: a DNS server over UDP whose answers change over time. Each line of the zone file is
//! `NAME TTL ADDR[,ADDR…]`; the n-th A (or AAAA) query for NAME is answered with the n-th address
//! of its family (the last one from then on). Other names: NXDOMAIN. Every datagram is logged to
//! stdout: `query NAME TYPE` or `malformed BYTES`.
//!
//! Usage: e2e-dns ADDR ZONEFILE

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, UdpSocket},
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 2, "usage: e2e-dns ADDR ZONEFILE");
    let socket = UdpSocket::bind(&args[0])?;
    println!("listening {}", socket.local_addr()?);
    let _ = std::io::stdout().flush();
    let mut asked: HashMap<(String, RecordType), usize> = HashMap::new();
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        let query = match Message::from_vec(&buf[..n]) {
            Ok(q) if q.queries().len() == 1 => q,
            _ => {
                println!("malformed {n}");
                let _ = std::io::stdout().flush();
                continue;
            }
        };
        let question = query.queries()[0].clone();
        let name = question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_lowercase();
        let qtype = question.query_type();
        println!("query {name} {qtype}");
        let _ = std::io::stdout().flush();
        let zone = std::fs::read_to_string(&args[1]).unwrap_or_default();
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
                let count = asked.entry((name.clone(), qtype)).or_default();
                if let Some(ip) = of_type.get((*count).min(of_type.len().saturating_sub(1))) {
                    let rdata = match ip {
                        IpAddr::V4(v4) => RData::A(rdata::A(*v4)),
                        IpAddr::V6(v6) => RData::AAAA(rdata::AAAA(*v6)),
                    };
                    answer.add_answer(Record::from_rdata(Name::from_ascii(&name)?, ttl, rdata));
                }
                *count += 1;
            }
        }
        socket.send_to(&answer.to_vec()?, peer)?;
    }
}
