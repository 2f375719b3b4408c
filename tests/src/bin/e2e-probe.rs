//! Test client: tries one network operation the way an agent job (or an attacker inside one) would,
//! and prints the outcome as one JSON object on stdout. Exit status 0 unless the arguments are wrong.
//!
//! Usage: e2e-probe [--cgroup DIR] OPERATION ARGS…
//!   connect ADDR [TEXT]     TCP connect, read the greeting, send TEXT, read the echo (ADDR may
//!                           be HOST:PORT, resolved by the system's resolver)
//!   connect-from PORT ADDR TEXT [hold]
//!                           `connect` from source port PORT (IPv4, SO_REUSEADDR); `hold`: then
//!                           keep the connection until standard input ends
//!   udp ADDR                one datagram with sendto()
//!   udp-connect ADDR        connect() a UDP socket
//!   raw                     socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)
//!   packet                  socket(AF_PACKET, SOCK_RAW, ETH_P_ALL)
//!   mptcp                   socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)
//!   vsock                   socket(AF_VSOCK, SOCK_STREAM, 0)
//!   unix                    socket(AF_UNIX, SOCK_STREAM, 0)
//!   io-uring                io_uring_setup(2) (its socket operation would skip socket(2))
//!   bind ADDR               bind a TCP socket
//!   bind-udp ADDR           bind a UDP socket
//!   tfo ADDR                TCP Fast Open: sendto(MSG_FASTOPEN) without connect()
//!   move-cgroup DIR         write own pid into DIR/cgroup.procs (escape attempt)
//!   control SOCKET          send a status request to the gateway control socket; then say
//!                           whether the daemon had read it ("after": eof) or closed on it
//!                           unread ("after": reset, or the write failed)
//!   control-orphan SOCKET   connect and send a status request, then fork and exit: the child
//!                           (same cgroup) prints the answer; the parent prints its pid first
//!   hold-pid PID            clone3() a child with exactly that pid (CAP_SYS_ADMIN), which
//!                           waits for a signal; prints whether it worked
//!   connect-then ADDR       like connect, printing {"connected":true} once connected first
//!   flood-connect ADDR N MODE
//!                           N non-blocking TCP connects, tallied by errno; MODE close: each
//!                           closed at once; spread: the same from 16 loopback source addresses
//!                           in turn (more client addresses than one has ports); hold: all kept
//!                           open until stdin closes; serve: each blocking, read until the peer
//!                           closes; greet: each blocking, its first line read, closed
//!   flood-udp ADDR N        N datagrams with sendto(), tallied by errno
//!   dns-follow RESOLVER NAME PORT ROUNDS [ADDR…]
//!                           ROUNDS times: ask RESOLVER for NAME's A records (odd rounds on a
//!                           connected socket, as glibc does, even rounds with sendto()), check
//!                           the answer comes from RESOLVER, connect to each address on PORT;
//!                           then connect to each ADDR
//!   dns-follow-tcp RESOLVER NAME PORT ROUNDS [ADDR…]
//!                           the same over TCP (length-prefixed, one connection per round, as
//!                           a resolver library retrying a truncated answer does)
//!   dns-hold RESOLVER NAME  connect a UDP socket to RESOLVER and ask for NAME's A records; say
//!                           whether that was answered ({"ready":true}), wait for a line on
//!                           standard input, then ask again on the same socket
//!   dns-raw RESOLVER HEX    send the bytes HEX to RESOLVER; say whether anything came back
//!   dns-raw-tcp RESOLVER HEX
//!                           connect to RESOLVER over TCP, send the bytes HEX; say whether
//!                           anything came back before the connection ended
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

/// An address, or HOST:PORT looked up with the system's resolver (a container's).
fn resolve(addr: &str) -> Result<SocketAddr, Value> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    match std::net::ToSocketAddrs::to_socket_addrs(addr) {
        Ok(mut found) => found
            .next()
            .ok_or_else(|| json!({ "ok": false, "error": "no address", "stage": "resolve" })),
        Err(e) => {
            let mut v = errno_json(&e);
            v["stage"] = json!("resolve");
            Err(v)
        }
    }
}

fn connect(addr: &str, text: &str, hold: bool) -> Value {
    let addr = match resolve(addr) {
        Ok(a) => a,
        Err(v) => return v,
    };
    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => converse_and_hold(s, text, hold),
        Err(e) => errno_json(&e),
    }
}

/// `converse`; with `hold`, prints the verdict and keeps the process and its connection until
/// stdin ends (so a test can look at both while they live).
fn converse_and_hold(stream: TcpStream, text: &str, hold: bool) -> Value {
    let keep = hold.then(|| stream.try_clone().expect("clone"));
    let mut v = converse(stream, text);
    if let Some(_connection) = keep {
        v["pid"] = json!(std::process::id());
        println!("{v}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    }
    v
}

/// `connect` from a fixed IPv4 source port (what two containers may both use at once).
fn connect_from(port: &str, addr: &str, text: &str, hold: bool) -> Value {
    let (port, addr): (u16, std::net::SocketAddrV4) = match (port.parse(), resolve(addr)) {
        (Ok(p), Ok(SocketAddr::V4(a))) => (p, a),
        (_, Err(v)) => return v,
        _ => return json!({ "ok": false, "error": "PORT and an IPv4 ADDR" }),
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let (source, destination) = (
        sin(std::net::Ipv4Addr::UNSPECIFIED, port),
        sin(*addr.ip(), addr.port()),
    );
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let one: libc::c_int = 1;
    // SAFETY: socket(2), setsockopt(2), bind(2) and connect(2) on a descriptor this function
    // owns (closed on failure, owned by the TcpStream after).
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return errno_json(&std::io::Error::last_os_error());
        }
        let ok = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        ) == 0
            && libc::bind(fd, (&raw const source).cast(), len) == 0
            && libc::connect(fd, (&raw const destination).cast(), len) == 0;
        if !ok {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return errno_json(&e);
        }
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    converse_and_hold(stream, text, hold)
}

/// Reads the greeting, sends `text`, reads its echo.
fn converse(stream: TcpStream, text: &str) -> Value {
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

fn bind_udp(addr: &str) -> Value {
    match UdpSocket::bind(addr) {
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
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return errno_json(&e),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let written = (&stream).write_all(b"{\"op\":\"status\"}\n");
    let mut v = read_answer(&stream);
    v["write_error"] = json!(written.err().and_then(|e| e.raw_os_error()));
    // What follows the answer: end of stream if the daemon read the request before closing, a
    // reset if it closed with the request unread.
    let mut rest = [0u8; 64];
    v["after"] = json!(match (&stream).read(&mut rest) {
        Ok(0) => "eof".to_string(),
        Ok(_) => "data".to_string(),
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => "reset".to_string(),
        Err(e) => e.to_string(),
    });
    v
}

/// One answer line of the control socket.
fn read_answer(stream: &UnixStream) -> Value {
    let mut answer = String::new();
    // Byte by byte: nothing after the line is consumed.
    let mut byte = [0u8; 1];
    while let Ok(1) = (&*stream).read(&mut byte) {
        answer.push(byte[0] as char);
        if byte[0] == b'\n' {
            break;
        }
    }
    let answer: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
    json!({ "ok": answer["result"] != "error" && !answer.is_null(), "answer": answer })
}

fn control_orphan(socket: &str) -> Value {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return errno_json(&e),
    };
    if let Err(e) = (&stream).write_all(b"{\"op\":\"status\"}\n") {
        return errno_json(&e);
    }
    // SAFETY: this program is single-threaded; the child only uses what the parent set up.
    match unsafe { libc::fork() } {
        -1 => errno_json(&std::io::Error::last_os_error()),
        0 => {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            let mut v = read_answer(&stream);
            v["pid"] = json!(std::process::id());
            println!("{v}");
            std::process::exit(0);
        }
        _ => json!({ "ok": true, "connected": true }),
    }
}

fn hold_pid(pid: &str) -> Value {
    let Ok(pid) = pid.parse::<libc::pid_t>() else {
        return json!({ "ok": false, "error": "PID" });
    };
    /// `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
    }
    let tids = [pid];
    let args = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
    };
    // SAFETY: clone3(2) without CLONE_VM is a fork; this program is single-threaded and the child
    // only waits for a signal.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        -1 => errno_json(&std::io::Error::last_os_error()),
        0 => loop {
            // SAFETY: waits for a signal; nothing else.
            unsafe { libc::pause() };
        },
        child => {
            println!("{}", json!({ "ok": true, "holder": child }));
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(child as libc::pid_t, &raw mut status, 0) };
            std::process::exit(0);
        }
    }
}

fn connect_then(addr: &str) -> Value {
    // The connect itself is what `connect` does first; announce it, then go on as `connect`.
    let parsed: SocketAddr = addr.parse().expect("address");
    match TcpStream::connect_timeout(&parsed, Duration::from_secs(30)) {
        Ok(stream) => {
            println!("{}", json!({ "connected": true }));
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut reader = BufReader::new(stream);
            let mut greeting = String::new();
            match reader.read_line(&mut greeting) {
                Ok(_) if !greeting.is_empty() => {
                    json!({ "ok": true, "greeting": greeting.trim_end() })
                }
                Ok(_) => json!({ "ok": false, "error": "closed before the greeting" }),
                Err(e) => errno_json(&e),
            }
        }
        Err(e) => {
            println!("{}", json!({ "connected": false }));
            errno_json(&e)
        }
    }
}

fn tally(outcomes: impl Iterator<Item = i32>) -> Value {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for errno in outcomes {
        *counts.entry(errno.to_string()).or_default() += 1;
    }
    json!({ "ok": true, "errnos": counts })
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn flood_connect(addr: &str, count: &str, mode: &str) -> Value {
    let addr: std::net::SocketAddrV4 = addr.parse().expect("IPv4 address");
    let count: usize = count.parse().expect("N");
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut held = Vec::new();
    let outcomes: Vec<i32> = (0..count)
        .map(|i| {
            if mode == "greet" {
                // A whole connection: connected, its greeting read, closed.
                return match TcpStream::connect(std::net::SocketAddr::V4(addr)) {
                    Ok(s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut line = String::new();
                        let _ = BufReader::new(s).read_line(&mut line);
                        0
                    }
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
            }
            if mode == "serve" {
                return match TcpStream::connect(std::net::SocketAddr::V4(addr)) {
                    Ok(mut s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink);
                        0
                    }
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
            }
            // SAFETY: socket(2), connect(2) and close(2) on a descriptor this function owns.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                if fd < 0 {
                    return last_errno();
                }
                if mode == "spread" {
                    let source = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: 0,
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes([127, 0, 0, 2 + (i % 16) as u8]),
                        },
                        sin_zero: [0; 8],
                    };
                    if libc::bind(
                        fd,
                        (&source as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    ) != 0
                    {
                        let errno = last_errno();
                        libc::close(fd);
                        return errno;
                    }
                }
                let r = libc::connect(
                    fd,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                let errno = if r == 0 { 0 } else { last_errno() };
                if mode == "hold" {
                    held.push(fd);
                } else {
                    libc::close(fd);
                }
                errno
            }
        })
        .collect();
    let out = tally(outcomes.into_iter());
    if mode == "hold" {
        println!("{out}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let mut rest = String::new();
        let _ = std::io::stdin().read_to_string(&mut rest);
        std::process::exit(0);
    }
    out
}

fn flood_udp(addr: &str, count: &str) -> Value {
    let addr: SocketAddr = addr.parse().expect("address");
    let count: usize = count.parse().expect("N");
    let socket = match UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => s,
        Err(e) => return errno_json(&e),
    };
    tally((0..count).map(|_| match socket.send_to(b"x", addr) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }))
}

/// How a DNS query is sent.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    /// A UDP socket connected to the resolver, as glibc does.
    Connected,
    /// `Connected`, the query asked once (its answer ignored: the socket has been used), then
    /// again once a line is read from standard input (after `{"ready":true}` is printed).
    Held,
    /// An unconnected UDP socket, sendto().
    SendTo,
    /// TCP, length-prefixed.
    Tcp,
}

/// One A query; the addresses and who answered. Over UDP the query is sent again after a
/// second without an answer (up to 5 times, as resolver libraries do): a job's first query in a
/// network namespace the gateway does not serve yet is not answered.
fn dns_query(resolver: SocketAddr, name: &str, id: u16, transport: Transport) -> Value {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    let mut query = Message::new();
    query
        .set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
    let bytes = query.to_vec().expect("query");
    let (answer, from, peer) = if transport == Transport::Tcp {
        let mut stream = match TcpStream::connect_timeout(&resolver, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => return errno_json(&e),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend(&bytes);
        let mut len = [0u8; 2];
        let read = stream.write_all(&framed).and_then(|()| {
            stream.read_exact(&mut len)?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer)?;
            Ok(answer)
        });
        match read {
            Ok(a) => {
                let peer = stream.peer_addr().map(|p| p.to_string()).ok();
                (a, resolver, peer)
            }
            Err(e) => return errno_json(&e),
        }
    } else {
        let socket = UdpSocket::bind(if resolver.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let connected = matches!(transport, Transport::Connected | Transport::Held);
        if connected && let Err(e) = socket.connect(resolver) {
            return errno_json(&e);
        }
        if transport == Transport::Held {
            let first = socket
                .send(&bytes)
                .and_then(|_| socket.recv(&mut [0u8; 4096]));
            println!("{}", json!({ "ready": first.is_ok() }));
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        let mut buf = [0u8; 4096];
        let mut received = None;
        for _ in 0..5 {
            let sent = if connected {
                socket.send(&bytes)
            } else {
                socket.send_to(&bytes, resolver)
            };
            if let Err(e) = sent {
                return errno_json(&e);
            }
            match socket.recv_from(&mut buf) {
                Ok(r) => {
                    received = Some(r);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return errno_json(&e),
            }
        }
        let Some((n, from)) = received else {
            return json!({ "ok": false, "error": "no answer" });
        };
        let peer = socket.peer_addr().map(|p| p.to_string()).ok();
        (buf[..n].to_vec(), from, peer)
    };
    let (addresses, rcode): (Vec<String>, String) = match Message::from_vec(&answer) {
        Ok(m) if m.id() == id => (
            m.answers()
                .iter()
                .filter_map(|r| match r.data() {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect(),
            m.response_code().to_string(),
        ),
        Ok(_) => return json!({ "ok": false, "error": "answer with another id" }),
        Err(e) => return json!({ "ok": false, "error": e.to_string() }),
    };
    json!({ "ok": true, "from": from.to_string(), "addresses": addresses, "rcode": rcode, "connected": transport == Transport::Connected, "peer": peer })
}

fn dns_follow(args: &[String], tcp: bool) -> Value {
    let resolver: SocketAddr = args[0].parse().expect("resolver");
    let port = &args[2];
    let rounds: u16 = args[3].parse().expect("rounds");
    let mut out = Vec::new();
    for round in 1..=rounds {
        let transport = match (tcp, round % 2) {
            (true, _) => Transport::Tcp,
            (false, 1) => Transport::Connected,
            (false, _) => Transport::SendTo,
        };
        let mut answer = dns_query(resolver, &args[1], 0x4000 + round, transport);
        let connects: Vec<Value> = answer["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                connect(
                    &format!("{}:{port}", a.as_str().unwrap_or_default()),
                    "told",
                    false,
                )
            })
            .collect();
        answer["connects"] = json!(connects);
        out.push(answer);
    }
    let others: Vec<Value> = args[4..]
        .iter()
        .map(|a| connect(a, "other", false))
        .collect();
    json!({ "rounds": out, "others": others })
}

fn dns_raw(resolver: &str, hex: &str) -> Value {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).expect("hex"))
        .collect();
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    if let Err(e) = socket.send_to(&bytes, resolver) {
        return errno_json(&e);
    }
    let mut buf = [0u8; 4096];
    json!({ "ok": true, "answered": socket.recv_from(&mut buf).is_ok() })
}

fn dns_raw_tcp(resolver: &str, hex: &str) -> Value {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).expect("hex"))
        .collect();
    let addr = match resolve(resolver) {
        Ok(a) => a,
        Err(v) => return v,
    };
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return errno_json(&e),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    if let Err(e) = stream.write_all(&bytes) {
        return errno_json(&e);
    }
    let mut buf = [0u8; 4096];
    let answered = matches!(stream.read(&mut buf), Ok(n) if n > 0);
    json!({ "ok": true, "answered": answered })
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
        "connect" => connect(
            arg(1),
            if arg(2).is_empty() { "ping" } else { arg(2) },
            arg(3) == "hold",
        ),
        "connect-from" => connect_from(arg(1), arg(2), arg(3), arg(4) == "hold"),
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
        "bind-udp" => bind_udp(arg(1)),
        "tfo" => tfo(arg(1)),
        "move-cgroup" => move_cgroup(arg(1)),
        "control" => control(arg(1)),
        "control-orphan" => control_orphan(arg(1)),
        "hold-pid" => hold_pid(arg(1)),
        "connect-then" => connect_then(arg(1)),
        "flood-connect" => flood_connect(arg(1), arg(2), arg(3)),
        "flood-udp" => flood_udp(arg(1), arg(2)),
        "dns-follow" => dns_follow(&args[1..], false),
        "dns-follow-tcp" => dns_follow(&args[1..], true),
        "dns-hold" => dns_query(
            arg(1).parse().expect("resolver"),
            arg(2),
            0x4100,
            Transport::Held,
        ),
        "dns-raw" => dns_raw(arg(1), arg(2)),
        "dns-raw-tcp" => dns_raw_tcp(arg(1), arg(2)),
        other => {
            eprintln!("e2e-probe: unknown operation {other:?}");
            std::process::exit(2);
        }
    };
    let mut out = out;
    out["pid"] = json!(std::process::id());
    println!("{out}");
}
