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
