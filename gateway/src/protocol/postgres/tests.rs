use bytes::BytesMut;

use super::frame::{FrameError, split, split_startup};

#[test]
fn frames_split_only_when_whole() {
    let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x0dSELECT 1\x00S\x00\x00"[..]);
    let f = split(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(f.tag, b'Q');
    assert_eq!(f.body(), b"SELECT 1\x00");
    // The Sync is not complete yet.
    assert_eq!(split(&mut buf, 1024).unwrap(), None);
    buf.extend_from_slice(b"\x00\x04");
    assert_eq!(split(&mut buf, 1024).unwrap().unwrap().tag, b'S');
    assert!(buf.is_empty());
}

#[test]
fn lying_lengths_are_errors() {
    let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x02"[..]);
    assert!(matches!(
        split(&mut buf, 1024),
        Err(FrameError::BadLength { .. })
    ));
    let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
    assert!(matches!(
        split(&mut buf, 1024),
        Err(FrameError::BadLength { .. })
    ));
    let mut buf = BytesMut::from(&b"Q\x00\x10\x00\x00"[..]);
    assert!(matches!(
        split(&mut buf, 1024),
        Err(FrameError::TooLarge { .. })
    ));
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x03abcd"[..]);
    assert!(split_startup(&mut buf).is_err());
    let mut buf = BytesMut::from(&b"\x00\x01\x00\x00abcd"[..]);
    assert!(split_startup(&mut buf).is_err());
}

#[test]
fn pgwire_decoders_never_panic_on_garbage() {
    use pgwire::messages::{
        extendedquery::{Bind, Parse},
        response::ErrorResponse,
    };
    // Whole frames whose bodies lie about their contents.
    for bytes in [
        &b"E\x00\x00\x00\x05X"[..],
        b"B\x00\x00\x00\x08\x00\x00\xff\xff",
        b"P\x00\x00\x00\x06\x00\x00",
        b"B\x00\x00\x00\x0a\x00\x00\x00\x01\x00\x05",
    ] {
        let _ = super::wire::decode::<ErrorResponse>("ErrorResponse", bytes);
        let _ = super::wire::decode::<Bind>("Bind", bytes);
        let _ = super::wire::decode::<Parse>("Parse", bytes);
    }
}

/// The two directions of a session driven with frames, without root or a server: the test plays
/// the client on one pipe and the server on the other.
mod session {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::super::{
        Context, backend, frame::FrameReader, frontend, journal, session::SessionSettings, state,
        wire,
    };
    use crate::{
        approval::Approvals,
        config::Config,
        identity::Identity,
        mask::Coverage,
        record::{NewSession, SessionKind, Store},
        sql::Classifier,
    };

    const CONFIG: &str = r#"
[[targets]]
name = "db"
protocol = "postgres"
address = "10.0.0.5:5432"

[[rules]]
name = "no-delete"
action = "deny"
targets = ["db"]
unauthenticated = true
[rules.sql]
kinds = ["delete"]

[[rules]]
name = "jobs"
action = "allow"
targets = ["db"]
unauthenticated = true
"#;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = cstr(name);
        b.extend_from_slice(&cstr(sql));
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(b'P', &b)
    }

    fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        let mut b = cstr(portal);
        b.extend_from_slice(&cstr(stmt));
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        msg(b'B', &b)
    }

    fn execute(portal: &str) -> Vec<u8> {
        let mut b = cstr(portal);
        b.extend_from_slice(&0i32.to_be_bytes());
        msg(b'E', &b)
    }

    fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    fn error(code: &str, text: &str) -> Vec<u8> {
        wire::GatewayError::error(
            Box::leak(code.to_string().into_boxed_str()),
            text.to_string(),
        )
        .encode()
        .to_vec()
    }

    /// Reads whole messages from `side` until one of type `until` has arrived.
    async fn read_until(
        side: &mut DuplexStream,
        buf: &mut BytesMut,
        until: u8,
    ) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            while let Ok(Some(f)) = super::super::frame::split(buf, 1 << 20) {
                let tag = f.tag;
                out.push((tag, f.body().to_vec()));
                if tag == until {
                    return out;
                }
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), side.read_buf(buf))
                .await
                .expect("an answer within 5 s")
                .expect("read");
            assert!(n > 0, "closed before {:?}", char::from(until));
        }
    }

    #[tokio::test]
    async fn a_refused_reparse_leaves_the_statement_the_server_kept_and_its_execution_is_recorded_as_it()
     {
        let dir = std::env::temp_dir().join(format!("gw-pg-session-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config::parse(CONFIG, "t").unwrap();
        let store = Store::open(&dir).unwrap();
        let session_id = store
            .insert_session(NewSession {
                kind: SessionKind::Proxied,
                job_id: None,
                target: Some("db".into()),
                protocol: Some("postgres".into()),
                destination: "10.0.0.5:5432".into(),
                process: None,
                identity: Identity::unauthenticated(),
                decision: "allow".into(),
                rule: None,
                reason: None,
                started_at: crate::time::now(),
                ended_at: None,
            })
            .await
            .unwrap();
        let approvals = Approvals::start(&config.approvals, &[], &config.rules, store.clone())
            .await
            .unwrap();
        let policy = config.policy();
        let identity = Identity::unauthenticated();
        let classifier = Classifier::default();
        let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = Context {
            policy: &policy,
            identity: &identity,
            target: &config.targets[0],
            session_id,
            journal: journal::Journal::new(&store, session_id, 5, 1 << 20),
            masker: None,
            coverage: Coverage::default(),
            session: SessionSettings {
                encoding: Default::default(),
                limits: Default::default(),
                search_path: vec!["public".into()],
                user: "app".into(),
            },
            approvals: &approvals,
            classifier: &classifier,
            process: None,
            job_id: None,
            notices,
            client_watch: None,
        };
        let shared = state::Shared::default();
        let (mut client, client_gw) = tokio::io::duplex(1 << 16);
        let (mut server, server_gw) = tokio::io::duplex(1 << 16);
        let (client_read, client_write) = tokio::io::split(client_gw);
        let (server_read, server_write) = tokio::io::split(server_gw);
        let mut fe = frontend::Frontend::new(&ctx, &shared);
        let mut be = backend::Backend::new(&ctx, &shared, notices_rx);
        let sessions = async {
            tokio::join!(
                fe.run(FrameReader::new(client_read, 1 << 20), server_write),
                be.run(FrameReader::new(server_read, 1 << 20), client_write),
            );
        };
        let script = async {
            let (mut from_gw, mut to_client) = (BytesMut::new(), BytesMut::new());
            // s is prepared and the server keeps it.
            client
                .write_all(&[parse("s", "SELECT id FROM t WHERE id = 1"), sync()].concat())
                .await
                .unwrap();
            let got = read_until(&mut server, &mut from_gw, b'S').await;
            assert_eq!(got[0].0, b'P');
            server
                .write_all(&[msg(b'1', &[]), msg(b'Z', b"I")].concat())
                .await
                .unwrap();
            read_until(&mut client, &mut to_client, b'Z').await;
            // A re-Parse of s that policy refuses: the server gets a Parse that fails (the name
            // exists anyway), the client the gateway's refusal.
            client
                .write_all(&[parse("s", "DELETE FROM t WHERE id = 1"), sync()].concat())
                .await
                .unwrap();
            let got = read_until(&mut server, &mut from_gw, b'S').await;
            assert!(String::from_utf8_lossy(&got[0].1).contains(frontend::REFUSED_SQL));
            server
                .write_all(
                    &[
                        error("42P05", "prepared statement \"s\" already exists"),
                        msg(b'Z', b"I"),
                    ]
                    .concat(),
                )
                .await
                .unwrap();
            let answer = read_until(&mut client, &mut to_client, b'Z').await;
            assert!(
                String::from_utf8_lossy(&answer[0].1).contains("no-delete"),
                "{answer:?}"
            );
            // Executing s runs what the server kept: recorded as that.
            client
                .write_all(&[bind("", "s"), execute(""), sync()].concat())
                .await
                .unwrap();
            let got = read_until(&mut server, &mut from_gw, b'S').await;
            assert_eq!(
                got.iter().map(|m| m.0).collect::<Vec<_>>(),
                [b'B', b'E', b'S']
            );
            server
                .write_all(
                    &[
                        msg(b'2', &[]),
                        msg(b'C', &cstr("SELECT 0")),
                        msg(b'Z', b"I"),
                    ]
                    .concat(),
                )
                .await
                .unwrap();
            read_until(&mut client, &mut to_client, b'Z').await;
            client.write_all(&msg(b'X', &[])).await.unwrap();
        };
        tokio::select! {
            () = sessions => {}
            () = script => {}
        }
        ctx.journal.flush();
        let shown = store.session_page(session_id, 0, 100).await.unwrap();
        let executed: Vec<String> = shown
            .events
            .iter()
            .filter(|e| e.kind == "sql" && e.detail["decision"] == "allow")
            .map(|e| e.detail["sql"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(executed, ["SELECT id FROM t WHERE id = 1"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
