//! Sends raw bytes to an HTTP server and prints what comes back: the requests no well-behaved
//! client sends (smuggling, folded headers, two hosts), run inside a job.
//!
//! Usage: e2e-httpraw HOST:PORT REQUEST (`\r` and `\n` written as the two-character escapes).
//! Reads until the server closes or is quiet for a second (at most 10 s); prints the response
//! text on stdout.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, request] = args.as_slice() else {
        eprintln!("usage: e2e-httpraw HOST:PORT REQUEST");
        std::process::exit(2);
    };
    let request = request.replace("\\r", "\r").replace("\\n", "\n");
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(request.as_bytes())?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while start.elapsed() < Duration::from_secs(10) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}
