//! What a request is about, read the way the upstream will read it: the host it names, its path
//! and its query, each in one form only. A request that could be read two ways (two hosts, a path
//! with dot segments or encoded slashes, a method override) is refused rather than guessed at:
//! the gateway decides on exactly what the server acts on, and forwards the request's own bytes.

use http::{HeaderMap, Method, StatusCode, Uri, header};
use percent_encoding::percent_decode;

/// Why a request is refused before policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
}

impl Refusal {
    fn bad(detail: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            title: "Request refused by the gateway",
            detail: detail.into(),
        }
    }

    fn misdirected(detail: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::MISDIRECTED_REQUEST,
            title: "Host not served by this target",
            detail: detail.into(),
        }
    }
}

/// The host names a target serves, and what the connection already said about the host.
#[derive(Debug, Clone, Copy)]
pub struct HostRules<'a> {
    /// Lower case; `*.example.com` stands for one label. Empty: any host.
    pub hosts: &'a [String],
    /// The TLS server name the job's client sent, if any.
    pub sni: Option<&'a str>,
    /// The port the job dialled.
    pub port: u16,
}

/// A request in the one form policy and upstream both see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Upper case.
    pub method: String,
    /// Lower case, without port or brackets.
    pub host: String,
    /// What goes upstream as `Host` / `:authority`, as the job wrote it.
    pub authority: String,
    /// Percent-decoded path (see [`path`]).
    pub path: String,
    /// The path and query as received, forwarded unchanged.
    pub path_and_query: String,
    /// Decoded parameters: split at `&`, and also at `;` when there is one (servers differ).
    pub query: Vec<(String, String)>,
    /// How the request asks for a WebSocket, if it does.
    pub websocket: Option<WebSocket>,
}

/// The two ways a job opens a WebSocket; both are the same GET to policy and to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebSocket {
    /// HTTP/1.1: a GET with `Upgrade: websocket` (RFC 6455), answered with 101.
    Upgrade,
    /// HTTP/2: a CONNECT with `:protocol = websocket` (RFC 8441), answered with 200; read as the
    /// GET the upstream gets, so that one rule covers a WebSocket on either version.
    ExtendedConnect,
}

/// Headers with which a client asks frameworks to act on another method than the request line's.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Reads a request's method, host, path and query; refuses what could be read more than one way.
/// `protocol` is HTTP/2's `:protocol` (RFC 8441), which only an extended CONNECT carries.
pub fn read(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    protocol: Option<&str>,
    rules: &HostRules<'_>,
) -> Result<Reading, Refusal> {
    let mut method_name = method.as_str().to_ascii_uppercase();
    let extended_connect = extended_connect(&method_name, protocol, headers)?;
    if extended_connect {
        // What the upstream gets, and what rules are written for.
        method_name = "GET".into();
    }
    match method_name.as_str() {
        "CONNECT" => {
            return Err(Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                title: "Method not allowed through the gateway",
                detail: "CONNECT tunnels are not relayed: the gateway must see each request".into(),
            });
        }
        "TRACE" | "TRACK" => {
            return Err(Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                title: "Method not allowed through the gateway",
                detail: format!(
                    "{method_name} echoes the request, with the credentials the gateway adds"
                ),
            });
        }
        _ => {}
    }
    for name in METHOD_OVERRIDES {
        if headers.contains_key(*name) {
            return Err(Refusal::bad(format!(
                "the {name} header asks the server for another method than {method_name}; the gateway decides on the method the server acts on, so send that method instead"
            )));
        }
    }
    let websocket = if extended_connect {
        Some(WebSocket::ExtendedConnect)
    } else {
        upgrade(method, headers)?.then_some(WebSocket::Upgrade)
    };
    if headers.contains_key("http2-settings") {
        return Err(Refusal::bad("HTTP2-Settings without a supported upgrade"));
    }
    if let Some(expect) = headers.get(header::EXPECT)
        && !expect.as_bytes().eq_ignore_ascii_case(b"100-continue")
    {
        return Err(Refusal {
            status: StatusCode::EXPECTATION_FAILED,
            title: "Expectation not supported",
            detail: "only Expect: 100-continue is supported".into(),
        });
    }
    let (host, authority) = host(uri, headers, rules)?;
    let raw_path = uri.path();
    if raw_path == "*" || !raw_path.starts_with('/') {
        return Err(Refusal::bad(format!(
            "request target {raw_path:?} is not a path"
        )));
    }
    let path = path(raw_path)?;
    let raw_query = uri.query().unwrap_or("");
    let query = query(raw_query)?;
    if let Some((name, _)) = query.iter().find(|(k, _)| k == "_method") {
        return Err(Refusal::bad(format!(
            "the {name} query parameter asks the server for another method than {method_name}; send that method instead"
        )));
    }
    let path_and_query = match uri.query() {
        Some(q) => format!("{raw_path}?{q}"),
        None => raw_path.to_string(),
    };
    Ok(Reading {
        method: method_name,
        host,
        authority,
        path,
        path_and_query,
        query,
        websocket,
    })
}

/// Whether the request is a WebSocket's extended CONNECT (RFC 8441): a CONNECT whose `:protocol`
/// is `websocket`, with `Sec-WebSocket-Version: 13` and none of HTTP/1.1's handshake (the gateway
/// makes its own toward the upstream: a key the job chose is never answered). Any other
/// `:protocol` is refused, as is a `:protocol` on another method.
fn extended_connect(
    method: &str,
    protocol: Option<&str>,
    headers: &HeaderMap,
) -> Result<bool, Refusal> {
    let Some(protocol) = protocol else {
        return Ok(false);
    };
    if method != "CONNECT" {
        return Err(Refusal::bad(format!(
            ":protocol on a {method}: only an extended CONNECT carries it (RFC 8441)"
        )));
    }
    if !protocol.eq_ignore_ascii_case("websocket") {
        return Err(Refusal {
            status: StatusCode::NOT_IMPLEMENTED,
            title: "Protocol not relayed",
            detail: format!(
                ":protocol {protocol:?}: only websocket is relayed through the gateway"
            ),
        });
    }
    for (name, shown) in [
        (header::CONNECTION, "Connection"),
        (header::UPGRADE, "Upgrade"),
        (header::SEC_WEBSOCKET_KEY, "Sec-WebSocket-Key"),
        (header::SEC_WEBSOCKET_ACCEPT, "Sec-WebSocket-Accept"),
    ] {
        if headers.contains_key(name) {
            return Err(Refusal::bad(format!(
                "{shown} is part of HTTP/1.1's WebSocket handshake; a WebSocket over HTTP/2 has none"
            )));
        }
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    if !matches!((versions.next(), versions.next()), (Some(v), None) if v == "13") {
        return Err(Refusal::bad(
            "a WebSocket over HTTP/2 has one Sec-WebSocket-Version: 13",
        ));
    }
    Ok(true)
}

/// Whether the request asks for a WebSocket (HTTP/1.1 `Upgrade: websocket`, on a GET with
/// `Connection: upgrade`, version 13); any other upgrade (h2c, TLS) is refused, as is a
/// WebSocket asked for in a way a server could read differently.
fn upgrade(method: &Method, headers: &HeaderMap) -> Result<bool, Refusal> {
    let asked = headers.contains_key(header::UPGRADE) || connection_has(headers, "upgrade");
    if !asked {
        return Ok(false);
    }
    let not_relayed = |detail: &str| Refusal {
        status: StatusCode::NOT_IMPLEMENTED,
        title: "Protocol upgrade not relayed",
        detail: detail.into(),
    };
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let (Some(one), None) = (upgrades.next(), upgrades.next()) else {
        return Err(not_relayed(
            "only Upgrade: websocket is relayed, in one Upgrade header",
        ));
    };
    if !one.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return Err(not_relayed(&format!(
            "Upgrade {:?}: only websocket is relayed through the gateway",
            String::from_utf8_lossy(one.as_bytes())
        )));
    }
    if method != Method::GET || !connection_has(headers, "upgrade") {
        return Err(Refusal::bad(
            "a WebSocket upgrade is a GET with Connection: upgrade",
        ));
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let one_version = matches!((versions.next(), versions.next()), (Some(v), None) if v == "13");
    let one_key = matches!((keys.next(), keys.next()), (Some(_), None));
    if !one_version || !one_key {
        return Err(Refusal::bad(
            "a WebSocket upgrade has one Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
        ));
    }
    Ok(true)
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The host the request is for: one `Host` header, the URI's authority, or both agreeing; in the
/// target's hosts; the same as the TLS server name; on the port the job dialled.
fn host(
    uri: &Uri,
    headers: &HeaderMap,
    rules: &HostRules<'_>,
) -> Result<(String, String), Refusal> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::bad("more than one Host header"));
    }
    let header = match header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Refusal::bad("the Host header is not ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let from_uri = uri.authority().map(|a| a.as_str().to_string());
    let authority = match (header, from_uri) {
        (Some(h), Some(u)) if !h.eq_ignore_ascii_case(&u) => {
            return Err(Refusal::bad(format!(
                "the Host header ({h:?}) and the request target ({u:?}) name different hosts"
            )));
        }
        (Some(h), _) => h,
        (None, Some(u)) => u,
        (None, None) => return Err(Refusal::bad("the request names no host (Host header)")),
    };
    if authority.contains('@') {
        return Err(Refusal::bad("user information in the host is not accepted"));
    }
    let (name, port) = split_authority(&authority)
        .ok_or_else(|| Refusal::bad(format!("{authority:?} is not a host[:port]")))?;
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name).to_string();
    if let Some(port) = port
        && port != rules.port
    {
        return Err(Refusal::misdirected(format!(
            "the request is for port {port}, the connection is to port {}",
            rules.port
        )));
    }
    if let Some(sni) = rules.sni
        && !sni.eq_ignore_ascii_case(&name)
    {
        return Err(Refusal::misdirected(format!(
            "the request is for {name:?}, the TLS connection for {sni:?}"
        )));
    }
    if !rules.hosts.is_empty() && !rules.hosts.iter().any(|h| host_matches(h, &name)) {
        return Err(Refusal::misdirected(format!(
            "{name:?} is not a host of this target"
        )));
    }
    Ok((name, authority))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; `None` when malformed.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (v6, None),
            p => (v6, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (authority, None),
        }
    };
    let valid_name = name.contains(':')
        || (!name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !valid_name {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((name, port))
}

/// `*.example.com` covers one label (as a certificate's wildcard does).
pub fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

/// The path decoded, refused when decoding could make it mean something else to some server:
/// dot segments (as typed or encoded, also before a `;`), empty segments, encoded `/`, `\`, `;`
/// or NUL, a raw `\`, malformed or double encoding, bytes that are not UTF-8.
fn path(raw: &str) -> Result<String, Refusal> {
    let refuse = |why: &str| Err(Refusal::bad(format!("path {raw:?}: {why}")));
    if raw.contains('\\') {
        return refuse("contains a backslash");
    }
    let segments: Vec<&str> = raw[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut decoded = String::with_capacity(raw.len());
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() && i != last {
            return refuse("has an empty segment (//)");
        }
        if let Err(why) = check_escapes(segment) {
            return refuse(why);
        }
        let text = percent_decode(segment.as_bytes())
            .decode_utf8()
            .map_err(|_| Refusal::bad(format!("path {raw:?}: is not UTF-8 once decoded")))?;
        let before_params = text.split(';').next().unwrap_or("");
        if before_params == "." || before_params == ".." {
            return refuse("has a . or .. segment");
        }
        if text.contains(['/', '\\', '\0']) {
            return refuse("encodes /, \\ or NUL");
        }
        if segment.to_ascii_lowercase().contains("%3b") {
            return refuse("encodes ;");
        }
        if double_encoded(&text) {
            return refuse("is encoded twice (%25 followed by hex digits)");
        }
        decoded.push('/');
        decoded.push_str(&text);
    }
    Ok(decoded)
}

/// Every `%` starts two hex digits.
fn check_escapes(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err("has a % that is not followed by two hex digits");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn double_encoded(decoded: &str) -> bool {
    let b = decoded.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// The query's parameters, `+` read as a space. Split at `&`; when a `;` is present, the
/// parameters split at both are added too, because some servers treat `;` as a separator.
fn query(raw: &str) -> Result<Vec<(String, String)>, Refusal> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    check_escapes(raw).map_err(|why| Refusal::bad(format!("query {raw:?}: {why}")))?;
    let mut out = pairs(raw.split('&'));
    if raw.contains(';') {
        for p in pairs(raw.split(['&', ';'])) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

fn pairs<'a>(parts: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_decode(spaced.as_bytes())
            .decode_utf8_lossy()
            .into_owned()
    };
    parts
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> HostRules<'static> {
        static HOSTS: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["api.example".into(), "*.svc.example".into()]);
        HostRules {
            hosts: &HOSTS,
            sni: None,
            port: 443,
        }
    }

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Result<Reading, Refusal> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        read(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &target.parse().unwrap(),
            &map,
            None,
            &rules(),
        )
    }

    fn get(target: &str) -> Result<Reading, Refusal> {
        req("GET", target, &[("host", "api.example")])
    }

    #[test]
    fn a_plain_request_reads_as_written() {
        let r = req(
            "get",
            "/items/%61bc?x=1&y=a+b",
            &[("host", "API.example:443")],
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.host, "api.example");
        assert_eq!(r.authority, "API.example:443");
        assert_eq!(r.path, "/items/abc");
        assert_eq!(r.path_and_query, "/items/%61bc?x=1&y=a+b");
        assert_eq!(
            r.query,
            [("x".into(), "1".into()), ("y".into(), "a b".into())]
        );
        assert_eq!(get("/").unwrap().path, "/");
        assert_eq!(get("/a/").unwrap().path, "/a/");
    }

    #[test]
    fn paths_that_servers_could_read_differently_are_refused() {
        for target in [
            "/a/../admin",
            "/a/./admin",
            "/a/%2e%2e/admin",
            "/a/%2E./admin",
            "/a/..;/admin",
            "/a//admin",
            "//admin",
            "/a%2fadmin",
            "/a%5cadmin",
            "/a%00",
            "/a%3bx",
            "/a%zz",
            "/a%4",
            "/a%252e%252e/admin",
            "/a%ff",
        ] {
            let e = get(target).expect_err(target);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{target}");
        }
    }

    #[test]
    fn the_host_must_be_one_of_the_targets_and_agree_everywhere() {
        assert_eq!(
            req("GET", "/", &[("host", "a.svc.example")]).unwrap().host,
            "a.svc.example"
        );
        for (target, headers, status) in [
            ("/", vec![("host", "evil.example")], 421),
            ("/", vec![("host", "a.b.svc.example")], 421),
            ("/", vec![("host", "svc.example")], 421),
            ("/", vec![("host", "api.example:8443")], 421),
            (
                "/",
                vec![("host", "api.example"), ("host", "evil.example")],
                400,
            ),
            ("http://evil.example/", vec![("host", "api.example")], 400),
            ("/", vec![("host", "u@api.example")], 400),
            ("/", vec![("host", "api.example:x")], 400),
            ("/", vec![], 400),
        ] {
            let e = req("GET", target, &headers).expect_err(target);
            assert_eq!(e.status.as_u16(), status, "{target} {headers:?}");
        }
        // An absolute-form target alone names the host.
        assert_eq!(
            req("GET", "http://api.example/x", &[]).unwrap().host,
            "api.example"
        );
        // A trailing dot is the same name.
        assert_eq!(
            req("GET", "/", &[("host", "api.example.")]).unwrap().host,
            "api.example"
        );
    }

    #[test]
    fn the_tls_server_name_and_the_host_must_agree() {
        let hosts = vec!["*.example".to_string()];
        let rules = HostRules {
            hosts: &hosts,
            sni: Some("a.example"),
            port: 443,
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "b.example".parse().unwrap());
        let e = read(&Method::GET, &"/".parse().unwrap(), &headers, None, &rules).unwrap_err();
        assert_eq!(e.status, StatusCode::MISDIRECTED_REQUEST);
    }

    #[test]
    fn only_well_formed_websocket_upgrades_pass() {
        let host = ("host", "api.example");
        let ws = [
            host,
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ];
        assert_eq!(
            req("GET", "/ws", &ws).unwrap().websocket,
            Some(WebSocket::Upgrade)
        );
        assert_eq!(get("/ws").unwrap().websocket, None);
        let without = |name: &str| -> Vec<(&str, &str)> {
            ws.iter().copied().filter(|(k, _)| *k != name).collect()
        };
        for (method, headers, status) in [
            ("POST", ws.to_vec(), 400),
            ("GET", without("connection"), 400),
            ("GET", without("sec-websocket-key"), 400),
            ("GET", without("sec-websocket-version"), 400),
            (
                "GET",
                [ws.to_vec(), vec![("sec-websocket-key", "x")]].concat(),
                400,
            ),
            ("GET", [ws.to_vec(), vec![("upgrade", "h2c")]].concat(), 501),
            (
                "GET",
                vec![host, ("upgrade", "h2c"), ("connection", "upgrade")],
                501,
            ),
        ] {
            let e = req(method, "/ws", &headers).expect_err(method);
            assert_eq!(e.status.as_u16(), status, "{method} {headers:?}");
        }
    }

    fn extended(
        method: &str,
        protocol: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reading, Refusal> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        read(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &"https://api.example/ws?x=1".parse().unwrap(),
            &map,
            Some(protocol),
            &rules(),
        )
    }

    #[test]
    fn an_extended_connect_reads_as_the_get_of_its_websocket() {
        let version = ("sec-websocket-version", "13");
        let r = extended("CONNECT", "websocket", &[version]).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.websocket, Some(WebSocket::ExtendedConnect));
        assert_eq!(
            (r.host.as_str(), r.path_and_query.as_str()),
            ("api.example", "/ws?x=1")
        );
        for (method, protocol, headers, status) in [
            ("GET", "websocket", vec![version], 400),
            ("CONNECT", "connect-udp", vec![version], 501),
            ("CONNECT", "websocket", vec![], 400),
            (
                "CONNECT",
                "websocket",
                vec![("sec-websocket-version", "8")],
                400,
            ),
            ("CONNECT", "websocket", vec![version, version], 400),
            (
                "CONNECT",
                "websocket",
                vec![version, ("sec-websocket-key", "x")],
                400,
            ),
            (
                "CONNECT",
                "websocket",
                vec![version, ("sec-websocket-accept", "x")],
                400,
            ),
            (
                "CONNECT",
                "websocket",
                vec![version, ("upgrade", "websocket")],
                400,
            ),
            (
                "CONNECT",
                "websocket",
                vec![version, ("connection", "upgrade")],
                400,
            ),
            (
                "CONNECT",
                "websocket",
                vec![version, ("host", "other.example")],
                400,
            ),
        ] {
            let e = extended(method, protocol, &headers).expect_err(method);
            assert_eq!(e.status.as_u16(), status, "{method} {protocol} {headers:?}");
        }
    }

    #[test]
    fn method_overrides_tunnels_echoes_and_upgrades_are_refused() {
        let host = ("host", "api.example");
        for (method, target, extra, status) in [
            ("POST", "/", Some(("X-HTTP-Method-Override", "DELETE")), 400),
            ("POST", "/", Some(("x-http-method", "DELETE")), 400),
            ("POST", "/", Some(("x-method-override", "DELETE")), 400),
            ("POST", "/?_method=DELETE", None, 400),
            ("TRACE", "/", None, 405),
            ("GET", "/", Some(("upgrade", "websocket")), 400),
            ("GET", "/", Some(("connection", "keep-alive, Upgrade")), 501),
            ("GET", "/", Some(("expect", "something")), 417),
        ] {
            let mut headers = vec![host];
            headers.extend(extra);
            let e = req(method, target, &headers).expect_err(method);
            assert_eq!(e.status.as_u16(), status, "{method} {target} {extra:?}");
        }
        assert!(req("POST", "/", &[host, ("expect", "100-Continue")]).is_ok());
    }

    #[test]
    fn semicolons_in_the_query_give_both_readings() {
        let r = get("/s?q=1;force=true&b=2").unwrap();
        assert!(r.query.contains(&("q".into(), "1;force=true".into())));
        assert!(r.query.contains(&("force".into(), "true".into())));
        assert!(r.query.contains(&("b".into(), "2".into())));
        assert_eq!(
            get("/s?%66orce=true").unwrap().query,
            [("force".into(), "true".into())]
        );
        assert!(get("/s?a=%zz").is_err());
    }
}
