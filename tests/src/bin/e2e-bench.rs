//! Benchmark client (used by `cargo xtask bench`): prints one JSON object of latency statistics.
//!
//!   e2e-bench connect ADDR N        N sequential connections: connect, read the greeting line, close
//!   e2e-bench rtt ADDR N SIZE       one connection, N request/response round trips of SIZE bytes

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

fn stats(mut micros: Vec<f64>, total_secs: f64) -> serde_json::Value {
    micros.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| micros[((micros.len() as f64 - 1.0) * p).round() as usize];
    json!({
        "n": micros.len(),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "mean_us": micros.iter().sum::<f64>() / micros.len() as f64,
        "per_second": micros.len() as f64 / total_secs,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.get(2).context("N")?.parse()?;
    let addr = args.get(1).context("ADDR")?.clone();
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    match args.first().map(String::as_str) {
        Some("connect") => {
            for _ in 0..n {
                let t = Instant::now();
                let s = TcpStream::connect(&addr)?;
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line)?;
                if line.is_empty() {
                    bail!("connection closed before the greeting");
                }
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Some("rtt") => {
            let size: usize = args.get(3).context("SIZE")?.parse()?;
            let s = TcpStream::connect(&addr)?;
            s.set_nodelay(true)?;
            let mut reader = BufReader::new(s.try_clone()?);
            let mut greeting = String::new();
            reader.read_line(&mut greeting)?;
            let request = vec![b'r'; size];
            let mut response = vec![0u8; size];
            for _ in 0..n {
                let t = Instant::now();
                (&s).write_all(&request)?;
                reader.read_exact(&mut response)?;
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        _ => bail!("usage: e2e-bench connect ADDR N | rtt ADDR N SIZE"),
    }
    println!("{}", stats(samples, started.elapsed().as_secs_f64()));
    Ok(())
}
