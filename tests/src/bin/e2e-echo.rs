//! Test peer: a TCP echo server. On each connection it logs `accepted <peer>` to stdout, greets with
//! `hello <peer>\n`, then echoes everything until EOF, and logs `closed <peer>`.
//!
//! Usage: e2e-echo ADDR [ADDR...]

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    thread,
};

fn serve(conn: TcpStream) {
    let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    println!("accepted {peer}");
    let _ = std::io::stdout().flush();
    echo(conn, &peer);
    println!("closed {peer}");
    let _ = std::io::stdout().flush();
}

fn echo(mut conn: TcpStream, peer: &str) {
    let _ = std::io::stdout().flush();
    if conn
        .write_all(format!("hello {peer}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let mut buf = [0u8; 65536];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let addrs: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!addrs.is_empty(), "usage: e2e-echo ADDR [ADDR...]");
    let mut handles = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(&addr)?;
        println!("listening {}", listener.local_addr()?);
        handles.push(thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                thread::spawn(move || serve(conn));
            }
        }));
    }
    let _ = std::io::stdout().flush();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
