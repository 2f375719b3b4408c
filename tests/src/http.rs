//! nginx as the upstream web server of HTTP tests, in a network namespace: TLS (HTTP/2 and
//! HTTP/1.1) on 443 with a certificate of the test's own CA, plain HTTP on 80, and an access log
//! in JSON that shows exactly what reached the server (method, target, host, credential, range).
//! Files under /files/ are served as they are (with ranges, and NAME.gz to clients accepting
//! gzip), under /gzip/ compressed on the fly, under /odd/ labelled with an unknown coding. Git's
//! smart HTTP (`git http-backend` through fcgiwrap) under /git/, for the fixture's own token only.
//! Beside nginx, on demand: a WebSocket echo server behind /ws/, a gRPC server, and a WebSocket
//! server that answers upgrades wrongly on purpose.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::{Netns, Process, pki::TestPki, wait_until};

/// Where the WebSocket echo server listens in the namespace (nginx proxies /ws/ to it).
const WEBSOCKET_PORT: u16 = 9001;
/// Where the gRPC server listens in the namespace (TLS of the fixture's CA, HTTP/2).
pub const GRPC_PORT: u16 = 50051;

/// A WebSocket server that echoes every message as it came (text as text, binary as binary) and
/// prints each connection's path and each message's size. It speaks the subprotocol `chat.v2`
/// when the client offers it (and none when the client offers none).
const WEBSOCKET_ECHO: &str = r#"
import asyncio, sys, websockets
async def echo(ws, path=None):
    print("connection", path or ws.path, flush=True)
    async for message in ws:
        print("message", len(message), flush=True)
        await ws.send(message)
async def main():
    async with websockets.serve(echo, sys.argv[1], int(sys.argv[2]), max_size=2**20, subprotocols=["chat.v2"]):
        print("ready", flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

/// Where the misbehaving WebSocket server listens in the namespace (`Nginx::misbehaving_websocket`).
pub const MISBEHAVING_WEBSOCKET_PORT: u16 = 9445;

/// A WebSocket server (TLS, HTTP/1.1) that answers each upgrade by its path: `/good` opens the
/// WebSocket correctly (the first subprotocol offered) and echoes text messages; the others
/// answer wrongly and then write a text frame `rogue-frame PATH` at once, which no job may read:
/// `/bad-accept` (a `Sec-WebSocket-Accept` for another key), `/unoffered-protocol` (`admin`),
/// `/two-protocols` (two `Sec-WebSocket-Protocol` headers, each offered) and
/// `/ok-without-switching` (200 with a body). Prints each connection's path, each message's size
/// and each rogue frame it wrote.
const MISBEHAVING_WEBSOCKET: &str = r#"
import base64, hashlib, socketserver, ssl, sys, threading
lock = threading.Lock()
def say(*words):
    # One line at a time: connections are served on threads of their own.
    with lock:
        print(*words, flush=True)
address, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.set_alpn_protocols(["http/1.1"])
def accept(nonce):
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    return base64.b64encode(hashlib.sha1(nonce.encode() + guid).digest()).decode()
def text_frame(data):
    # A server's frame: unmasked; lengths up to 65535.
    head = bytes([0x81, len(data)]) if len(data) < 126 else bytes([0x81, 126]) + len(data).to_bytes(2, "big")
    return head + data
class Handler(socketserver.StreamRequestHandler):
    def setup(self):
        self.request.settimeout(30)
        self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()
    def read_frame(self):
        head = self.rfile.read(2)
        if len(head) < 2:
            return None, b""
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(self.rfile.read(2), "big")
        elif length == 127:
            length = int.from_bytes(self.rfile.read(8), "big")
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
        return head[0] & 0x0F, data
    def handle(self):
        request = self.rfile.readline(8192).decode("latin-1").split()
        if len(request) < 2:
            return
        path, headers = request[1], {}
        while True:
            line = self.rfile.readline(8192).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        say("connection", path)
        nonce = headers.get("sec-websocket-key", "")
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        head = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
        if path == "/good":
            head.append("Sec-WebSocket-Accept: " + accept(nonce))
            head += ["Sec-WebSocket-Protocol: " + offered[0]] if offered else []
        elif path == "/bad-accept":
            head.append("Sec-WebSocket-Accept: " + accept("not " + nonce))
        elif path == "/unoffered-protocol":
            head += ["Sec-WebSocket-Accept: " + accept(nonce), "Sec-WebSocket-Protocol: admin"]
        elif path == "/two-protocols":
            head.append("Sec-WebSocket-Accept: " + accept(nonce))
            head += ["Sec-WebSocket-Protocol: " + p for p in offered[:2]]
        elif path == "/ok-without-switching":
            head = ["HTTP/1.1 200 OK", "Content-Type: text/plain", "Content-Length: 16"]
        else:
            head = ["HTTP/1.1 404 Not Found", "Content-Length: 0"]
        answer = ("\r\n".join(head) + "\r\n\r\n").encode()
        if path == "/ok-without-switching":
            answer += b"not a websocket\n"
        if path == "/good":
            self.wfile.write(answer)
            while True:
                opcode, data = self.read_frame()
                if opcode != 1:
                    break
                say("message", len(data))
                self.wfile.write(text_frame(data))
            self.wfile.write(b"\x88\x00")
            return
        if head[0].startswith("HTTP/1.1 404"):
            self.wfile.write(answer)
            return
        # The frame follows the answer in the same write: whoever reads the answer has it too.
        self.wfile.write(answer + text_frame(b"rogue-frame " + path.encode()))
        say("rogue-frame", path)
        # Held open until the peer goes (bounded by the socket's timeout).
        while self.request.recv(65536):
            pass
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    def handle_error(self, request, client_address):
        say("error", sys.exc_info()[1])
with Server((address, port), Handler) as server:
    say("ready")
    server.serve_forever()
"#;

/// A gRPC server without generated code (generic handlers, bytes in and out) under TLS:
/// `/pkg.Service/Echo` answers `echo:` and the request (and echoes the call's `authorization` in
/// its trailing metadata), `/pkg.Service/Fail` fails with
/// FAILED_PRECONDITION and trailing metadata, `/pkg.Service/Secret` answers its secret.
/// Every call it receives is printed.
const GRPC_SERVER: &str = r#"
import sys, grpc
from concurrent import futures
address, cert, key = sys.argv[1:4]
def echo(request, context):
    print("call Echo", flush=True)
    # The credential the call carried, echoed back (the gateway must not let it through).
    seen = dict(context.invocation_metadata()).get("authorization", "")
    context.set_trailing_metadata((("x-served-by", "grpc-fixture"), ("x-seen-authorization", seen)))
    return b"echo:" + request
def fail(request, context):
    print("call Fail", flush=True)
    context.set_trailing_metadata((("x-failure-detail", "precondition-x"),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the precondition failed")
def secret(request, context):
    print("call Secret", flush=True)
    return b"the-secret"
same = lambda b: b
handlers = {
    name: grpc.unary_unary_rpc_method_handler(f, request_deserializer=same, response_serializer=same)
    for name, f in (("Echo", echo), ("Fail", fail), ("Secret", secret))
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("pkg.Service", handlers),))
credentials = grpc.ssl_server_credentials(((open(key, "rb").read(), open(cert, "rb").read()),))
server.add_secure_port(address, credentials)
server.start()
print("ready", flush=True)
server.wait_for_termination()
"#;

/// The host name nginx serves (jobs reach it with curl --resolve or an /etc/hosts-free URL).
pub const HOST: &str = "api.test";

pub struct Nginx {
    process: Process,
    _fcgiwrap: Process,
    /// The one credential /git/ accepts (`Authorization: Bearer <token>`): jobs never hold it,
    /// the gateway injects it.
    pub token: String,
    /// Bare repositories served under /git/ (`<name>.git`).
    pub git_root: PathBuf,
    pub addr: Ipv4Addr,
    /// The CA that issued nginx's certificate (the gateway's `ca_file` for the target).
    pub ca: PathBuf,
    pub dir: PathBuf,
    access_log: PathBuf,
    pki: TestPki,
    remote_ip: Ipv4Addr,
}

impl Nginx {
    pub fn start(ns: &Netns, dir: &Path) -> Result<Nginx> {
        let dir = dir.join("nginx");
        let www = dir.join("www");
        fs::create_dir_all(www.join("files"))?;
        let pki = TestPki::new(&dir, "web")?;
        let (cert, key) = pki.issue(
            "web-server",
            &format!("DNS:{HOST},DNS:*.svc.test,IP:{}", ns.remote_ip),
        )?;
        let access_log = dir.join("access.log");
        let token = format!("tok-{}", crate::unique_id().repeat(3));
        let git_root = dir.join("git");
        fs::create_dir_all(&git_root)?;
        let fcgi_socket = dir.join("fcgiwrap.sock");
        let fcgiwrap = Process::spawn(
            "fcgiwrap",
            std::process::Command::new("/usr/sbin/fcgiwrap")
                .arg("-s")
                .arg(format!("unix:{}", fcgi_socket.display())),
            dir.join("fcgiwrap.log"),
        )?;
        let d = dir.display();
        let config = dir.join("nginx.conf");
        fs::write(
            &config,
            format!(
                r#"
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format gw escape=json '{{"method":"$request_method","uri":"$request_uri","host":"$http_host","auth":"$http_authorization","api_key":"$http_x_api_key","override":"$http_x_http_method_override","range":"$http_range","accept_encoding":"$http_accept_encoding","content_encoding":"$sent_http_content_encoding","protocol":"$server_protocol","status":$status,"body":"$request_body","debug":"$http_x_debug"}}';
    access_log {d}/access.log gw;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    types {{ application/json json; text/event-stream sse; image/png png; text/html html; }}
    keepalive_requests 100000;
    server {{
        listen {ip}:80;
        listen {ip}:443 ssl http2;
        listen {ip}:8443 ssl http2;
        listen {ip}:9443 ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        server_name {HOST} *.svc.test;
        location = /whoami {{ return 200 "auth=$http_authorization key=$http_x_api_key\n"; }}
        # Pre-compressed files (NAME.gz) for clients that accept gzip.
        location /files/ {{ root {www}; gzip_static on; }}
        # Compressed on the fly: no Content-Length, chunked on HTTP/1.1.
        location /gzip/ {{
            alias {www}/files/;
            gzip on;
            gzip_types application/json text/event-stream;
            gzip_min_length 1;
        }}
        # A content coding no one decodes.
        location /odd/ {{ alias {www}/files/; add_header Content-Encoding compress; }}
        # A response header a masking detector finds (`always`: on every status).
        location = /account {{ add_header X-Account-SSN 123-45-6789 always; return 200 "ok\n"; }}
        # Reads the request body (proxied to this server), so the access log shows it.
        location = /upload {{ proxy_pass http://{ip}:80/uploaded; }}
        location = /mcp {{
            default_type application/json;
            return 200 '{{"jsonrpc":"2.0","id":1,"result":{{"ok":true}}}}';
        }}
        location ~ ^/git(/.*)$ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            fastcgi_pass unix:{fcgi};
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
            fastcgi_param GIT_PROJECT_ROOT {git};
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param PATH_INFO $1;
        }}
        # WebSocket: upgraded and proxied to the echo server (`Nginx::websocket_echo`).
        location /ws/ {{
            proxy_pass http://{ip}:{WEBSOCKET_PORT};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 60s;
        }}
        location / {{ return 200 "$request_method $request_uri\n"; }}
    }}
}}
"#,
                ip = ns.remote_ip,
                cert = cert.display(),
                key = key.display(),
                www = www.display(),
                fcgi = fcgi_socket.display(),
                git = git_root.display(),
            ),
        )?;
        let mut cmd = ns.command("/usr/sbin/nginx");
        cmd.arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"])
            .arg("-e")
            .arg(dir.join("error.log"));
        let process = Process::spawn("nginx", &mut cmd, dir.join("nginx.out"))?;
        let nginx = Nginx {
            process,
            _fcgiwrap: fcgiwrap,
            token,
            git_root,
            addr: ns.remote_ip,
            ca: pki.ca.clone(),
            dir: dir.clone(),
            access_log,
            pki,
            remote_ip: ns.remote_ip,
        };
        let up = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(dir.join("nginx.pid")).is_ok_and(|p| !p.trim().is_empty())
        });
        ensure!(
            up,
            "nginx did not start: {}",
            fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Ok(nginx)
    }

    /// Starts the WebSocket echo server nginx proxies /ws/ to; its output lists what reached it.
    pub fn websocket_echo(&self, ns: &Netns) -> Result<Process> {
        let script = self.dir.join("ws-echo.py");
        fs::write(&script, WEBSOCKET_ECHO)?;
        let mut cmd = ns.command("/usr/bin/python3");
        cmd.arg(&script)
            .arg(self.remote_ip.to_string())
            .arg(WEBSOCKET_PORT.to_string());
        let process = Process::spawn("ws-echo", &mut cmd, self.dir.join("ws-echo.log"))?;
        let up = wait_until(Duration::from_secs(20), || {
            process.output().contains("ready")
        });
        ensure!(up, "websocket echo did not start: {}", process.output());
        Ok(process)
    }

    /// Starts the misbehaving WebSocket server on `MISBEHAVING_WEBSOCKET_PORT`, with a
    /// certificate of nginx's CA for `HOST`; its output lists what reached it and what it wrote.
    pub fn misbehaving_websocket(&self, ns: &Netns) -> Result<Process> {
        let (cert, key) = self.pki.issue(
            "ws-misbehaving",
            &format!("DNS:{HOST},IP:{}", self.remote_ip),
        )?;
        let script = self.dir.join("ws-misbehaving.py");
        fs::write(&script, MISBEHAVING_WEBSOCKET)?;
        let mut cmd = ns.command("/usr/bin/python3");
        cmd.arg(&script)
            .arg(self.remote_ip.to_string())
            .arg(MISBEHAVING_WEBSOCKET_PORT.to_string())
            .arg(&cert)
            .arg(&key);
        let process = Process::spawn(
            "ws-misbehaving",
            &mut cmd,
            self.dir.join("ws-misbehaving.log"),
        )?;
        let up = wait_until(Duration::from_secs(20), || {
            process.output().contains("ready")
        });
        ensure!(
            up,
            "misbehaving WebSocket server did not start: {}",
            process.output()
        );
        Ok(process)
    }

    /// Starts the gRPC server on `GRPC_PORT`, with a certificate of nginx's CA for `HOST`; its
    /// output lists the calls that reached it.
    pub fn grpc_server(&self, ns: &Netns) -> Result<Process> {
        let (cert, key) = self.pki.issue("grpc-server", &format!("DNS:{HOST}"))?;
        let script = self.dir.join("grpc-server.py");
        fs::write(&script, GRPC_SERVER)?;
        let mut cmd = ns.command("/usr/bin/python3");
        cmd.arg(&script)
            .arg(format!("{}:{GRPC_PORT}", self.remote_ip))
            .arg(&cert)
            .arg(&key);
        let process = Process::spawn("grpc-server", &mut cmd, self.dir.join("grpc.log"))?;
        let up = wait_until(Duration::from_secs(20), || {
            process.output().contains("ready")
        });
        ensure!(up, "gRPC server did not start: {}", process.output());
        Ok(process)
    }

    /// A file nginx serves under /files/.
    pub fn put_file(&self, name: &str, contents: &[u8]) -> Result<()> {
        fs::write(self.dir.join("www/files").join(name), contents)?;
        Ok(())
    }

    /// A bare repository served at /git/<name>.git, with one commit on main.
    pub fn git_repository(&self, name: &str) -> Result<PathBuf> {
        let bare = self.git_root.join(format!("{name}.git"));
        let work = self.dir.join(format!("{name}-seed"));
        let git = |args: &[&str], dir: &Path| -> Result<()> {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=seed", "-c", "user.email=seed@test"])
                .args(args)
                .current_dir(dir)
                .output()?;
            ensure!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        fs::create_dir_all(&work)?;
        git(&["init", "-q", "-b", "main"], &work)?;
        fs::write(work.join("README"), "seeded\n")?;
        git(&["add", "README"], &work)?;
        git(&["commit", "-q", "-m", "seed"], &work)?;
        git(
            &[
                "clone",
                "-q",
                "--bare",
                ".",
                bare.to_str().unwrap_or_default(),
            ],
            &work,
        )?;
        // Pushes are open to anyone nginx lets through (nginx checks the credential).
        git(&["config", "http.receivepack", "true"], &bare)?;
        Ok(bare)
    }

    /// Every request nginx logged, oldest first.
    pub fn requests(&self) -> Result<Vec<Value>> {
        // Bodies are logged as nginx received them: a git pack is not UTF-8.
        let bytes = fs::read(&self.access_log).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("access log line {l}")))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (a SIGKILL would orphan them).
        self.process.stop(libc::SIGTERM, Duration::from_secs(10));
    }
}
