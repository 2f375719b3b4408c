use super::*;

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(kind);
    p.extend_from_slice(body);
    p
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn open(id: u32, path: &str, flags: u32) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(string(path.as_bytes()));
    body.extend(flags.to_be_bytes());
    body.extend(0u32.to_be_bytes()); // attrs: no flags
    packet(OPEN, &body)
}

#[test]
fn framing_splits_and_joins_packets() {
    let mut f = Framer::default();
    let a = open(1, "/tmp/a", PFLAG_READ);
    let b = open(2, "/tmp/b", PFLAG_WRITE | PFLAG_CREAT);
    let mut both = a.clone();
    both.extend(&b);
    f.push(&both[..3]);
    assert!(f.next_packet().is_none());
    f.push(&both[3..a.len() + 2]);
    assert_eq!(f.next_packet().unwrap().unwrap().as_ref(), a.as_slice());
    assert!(f.next_packet().is_none());
    f.push(&both[a.len() + 2..]);
    assert_eq!(f.next_packet().unwrap().unwrap().as_ref(), b.as_slice());
    assert_eq!(f.buffered(), 0);
}

#[test]
fn oversized_packets_are_refused_before_they_are_buffered() {
    let mut f = Framer::default();
    f.push(&(64u32 << 20).to_be_bytes());
    assert_eq!(f.next_packet(), Some(Err(SftpError::TooLarge(64 << 20))));
}

#[test]
fn requests_become_typed_operations() {
    assert_eq!(
        parse_request(&open(7, "/etc/passwd", PFLAG_READ)).unwrap(),
        Request::Open {
            id: 7,
            path: "/etc/passwd".into(),
            read: true,
            write: false
        }
    );
    let mut body = 9u32.to_be_bytes().to_vec();
    body.extend(string(b"/a"));
    body.extend(string(b"/b"));
    assert_eq!(
        parse_request(&packet(RENAME, &body)).unwrap(),
        Request::Paths {
            id: 9,
            op: "rename",
            checks: vec![
                (SshOperationKind::SftpDelete, "/a".into()),
                (SshOperationKind::SftpWrite, "/b".into())
            ],
            logged: true
        }
    );
    let mut body = 3u32.to_be_bytes().to_vec();
    body.extend(string(b"evil@example.com"));
    assert!(matches!(
        parse_request(&packet(EXTENDED, &body)).unwrap(),
        Request::Unsupported { id: 3, .. }
    ));
    // Truncated bodies are errors, not panics.
    assert_eq!(
        parse_request(&packet(REMOVE, &[0, 0, 0, 1, 0, 0, 0, 9, b'x'])),
        Err(SftpError::Malformed(REMOVE))
    );
}

#[test]
fn handles_sizes_and_close_are_followed() {
    let mut t = Tracker::default();
    t.expect(
        1,
        Pending::Open(OpenFile {
            path: "/tmp/x".into(),
            mode: "read",
            ..Default::default()
        }),
    );
    let mut body = 1u32.to_be_bytes().to_vec();
    body.extend(string(b"h1"));
    let r = parse_response(&packet(HANDLE, &body)).unwrap();
    assert_eq!(t.response(&r), Completed::Nothing);
    assert_eq!(t.path_of(b"h1"), Some("/tmp/x"));
    t.expect(2, Pending::Read(b"h1".to_vec()));
    let mut body = 2u32.to_be_bytes().to_vec();
    body.extend(string(&[0u8; 100]));
    t.response(&parse_response(&packet(DATA, &body)).unwrap());
    t.expect(3, Pending::Close(b"h1".to_vec()));
    let status = status(3, FX_OK, "");
    assert_eq!(
        t.response(&parse_response(&status).unwrap()),
        Completed::Closed {
            path: "/tmp/x".into(),
            mode: "read",
            bytes_read: 100,
            bytes_written: 0
        }
    );
}

#[test]
fn paths_the_gateway_cannot_show_as_they_are_are_refused() {
    let open_path = |path: &[u8]| {
        let mut body = 5u32.to_be_bytes().to_vec();
        body.extend(string(path));
        body.extend(PFLAG_WRITE.to_be_bytes());
        body.extend(0u32.to_be_bytes());
        parse_request(&packet(OPEN, &body))
    };
    assert_eq!(
        open_path(b"/tmp/ok\0/../../etc/x"),
        Err(SftpError::BadPath("contains a NUL byte"))
    );
    assert_eq!(
        open_path(b"/tmp/\xff"),
        Err(SftpError::BadPath("is not UTF-8"))
    );
    assert_eq!(
        open_path(&[b'a'; MAX_PATH + 1]),
        Err(SftpError::BadPath("longer than 4096 bytes"))
    );
    assert!(open_path(&[b'a'; MAX_PATH]).is_ok());
    // Both names of a rename are paths.
    let mut body = 9u32.to_be_bytes().to_vec();
    body.extend(string(b"/a"));
    body.extend(string(b"/b\0"));
    assert_eq!(
        parse_request(&packet(RENAME, &body)),
        Err(SftpError::BadPath("contains a NUL byte"))
    );
}

#[test]
fn the_gateways_own_questions_and_their_answers() {
    assert_eq!(init().as_ref(), [0, 0, 0, 5, INIT, 0, 0, 0, 3]);
    let q = realpath(7, "/etc/x");
    assert_eq!(
        parse_request(&q).unwrap(),
        Request::Paths {
            id: 7,
            op: "realpath",
            checks: vec![(SshOperationKind::SftpList, "/etc/x".into())],
            logged: false
        }
    );
    let mut body = 7u32.to_be_bytes().to_vec();
    body.extend(1u32.to_be_bytes());
    body.extend(string(b"/etc/x"));
    body.extend(string(b"long name"));
    body.extend(0u32.to_be_bytes());
    assert_eq!(
        answer(&packet(NAME, &body)).unwrap(),
        (Some(7), Answer::Name("/etc/x".into()))
    );
    // ATTRS: size, uid/gid, then permissions (a directory).
    let mut body = 8u32.to_be_bytes().to_vec();
    body.extend((ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS).to_be_bytes());
    body.extend(4096u64.to_be_bytes());
    body.extend([0u8; 8]);
    body.extend(0o040755u32.to_be_bytes());
    assert_eq!(
        answer(&packet(ATTRS, &body)).unwrap(),
        (Some(8), Answer::Attrs { directory: true })
    );
    assert_eq!(
        answer(&status(9, FX_NO_SUCH_FILE, "no")).unwrap(),
        (Some(9), Answer::Status(FX_NO_SUCH_FILE))
    );
}
