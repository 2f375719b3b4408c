//! Test client: tries one network operation the way an agent job (or an attacker inside one) would,
//! and prints the outcome as one JSON object on stdout. Exit status 0 unless the arguments are wrong.
//!
//! Usage: e2e-probe [--cgroup DIR] OPERATION ARGS…
//!   connect ADDR [TEXT]     TCP connect, read the greeting, send TEXT, read the echo
//!   udp ADDR                one datagram with sendto()
//!   udp-connect ADDR        connect() a UDP socket
//!   raw                     socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)
//!   packet                  socket(AF_PACKET, SOCK_RAW, ETH_P_ALL)
//!   mptcp                   socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)
//!   vsock                   socket(AF_VSOCK, SOCK_STREAM, 0)
//!   unix                    socket(AF_UNIX, SOCK_STREAM, 0)
//!   io-uring                io_uring_setup(2) (its socket operation would skip socket(2))
//!   bind ADDR               bind a TCP socket
//!   tfo ADDR                TCP Fast Open: sendto(MSG_FASTOPEN) without connect()
//!   move-cgroup DIR         write own pid into DIR/cgroup.procs (escape attempt)
//!   control SOCKET          send a status request to the gateway control socket
//!
//! `--cgroup DIR` first moves the probe into DIR (as a job's process would be).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    time::Duration,
};

use serde_json::{Value, json};

fn errno_json(e: &std::io::Error) -> Value {
    json!({ "ok": false, "errno": e.raw_os_error(), "error": e.to_string(), "kind": format!("{:?}", e.kind()) })
}

fn socket_call(domain: i32, ty: i32, proto: i32) -> Value {
    // SAFETY: plain socket(2) call; the descriptor is closed right away.
    let fd = unsafe { libc::socket(domain, ty, proto) };
    if fd < 0 {
        return errno_json(&std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor this function owns.
    unsafe { libc::close(fd) };
    json!({ "ok": true })
}

fn io_uring_setup() -> Value {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) with a valid params buffer; the descriptor is closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
    if fd < 0 {
        return errno_json(&std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor this function owns.
    unsafe { libc::close(fd as i32) };
    json!({ "ok": true })
}

fn connect(addr: &str, text: &str) -> Value {
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => return json!({ "ok": false, "error": e.to_string() }),
    };
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return errno_json(&e),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut greeting = String::new();
    if let Err(e) = reader.read_line(&mut greeting) {
        let mut v = errno_json(&e);
        v["local"] = json!(local);
        v["peer"] = json!(peer);
        v["stage"] = json!("greeting");
        return v;
    }
    if greeting.is_empty() {
        return json!({ "ok": false, "error": "closed before the greeting", "kind": "Closed", "local": local, "peer": peer });
    }
    let mut echo = vec![0u8; text.len()];
    let sent = (&stream)
        .write_all(text.as_bytes())
        .and_then(|()| reader.read_exact(&mut echo));
    if let Err(e) = sent {
        let mut v = errno_json(&e);
        v["stage"] = json!("echo");
        return v;
    }
    json!({
        "ok": true, "local": local, "peer": peer,
        "greeting": greeting.trim_end(), "echo": String::from_utf8_lossy(&echo),
    })
}

fn udp(addr: &str, connect_only: bool) -> Value {
    let addr: SocketAddr = addr.parse().expect("address");
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return errno_json(&e),
    };
    let result = if connect_only {
        socket.connect(addr)
    } else {
        socket.send_to(b"probe", addr).map(|_| ())
    };
    match result {
        Ok(()) => json!({ "ok": true }),
        Err(e) => errno_json(&e),
    }
}

fn bind(addr: &str) -> Value {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => json!({ "ok": true }),
        Err(e) => errno_json(&e),
    }
}

fn tfo(addr: &str) -> Value {
    let addr: std::net::SocketAddrV4 = addr.parse().expect("IPv4 address");
    // SAFETY: socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return errno_json(&std::io::Error::last_os_error());
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let data = b"GET / HTTP/1.0\r\n\r\n";
    // SAFETY: valid buffer and sockaddr for the duration of the call.
    let r = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    let out = if r < 0 {
        errno_json(&std::io::Error::last_os_error())
    } else {
        json!({ "ok": true })
    };
    // SAFETY: fd is owned here.
    unsafe { libc::close(fd) };
    out
}

fn move_cgroup(dir: &str) -> Value {
    match std::fs::write(
        format!("{dir}/cgroup.procs"),
        std::process::id().to_string(),
    ) {
        Ok(()) => json!({ "ok": true }),
        Err(e) => errno_json(&e),
    }
}

fn control(socket: &str) -> Value {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return errno_json(&e),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = stream.write_all(b"{\"op\":\"status\"}\n") {
        return errno_json(&e);
    }
    let mut answer = String::new();
    let _ = BufReader::new(stream).read_line(&mut answer);
    let answer: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
    json!({ "ok": answer["result"] != "error" && !answer.is_null(), "answer": answer })
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--cgroup") {
        let dir = args.get(1).cloned().expect("--cgroup DIR");
        std::fs::write(
            format!("{dir}/cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("join cgroup");
        args.drain(..2);
    }
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let out = match arg(0) {
        "connect" => connect(arg(1), if arg(2).is_empty() { "ping" } else { arg(2) }),
        "udp" => udp(arg(1), false),
        "udp-connect" => udp(arg(1), true),
        "raw" => socket_call(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "packet" => socket_call(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        ),
        "mptcp" => socket_call(libc::AF_INET, libc::SOCK_STREAM, 262),
        "vsock" => socket_call(libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        "unix" => socket_call(libc::AF_UNIX, libc::SOCK_STREAM, 0),
        "io-uring" => io_uring_setup(),
        "bind" => bind(arg(1)),
        "tfo" => tfo(arg(1)),
        "move-cgroup" => move_cgroup(arg(1)),
        "control" => control(arg(1)),
        other => {
            eprintln!("e2e-probe: unknown operation {other:?}");
            std::process::exit(2);
        }
    };
    let mut out = out;
    out["pid"] = json!(std::process::id());
    println!("{out}");
}
