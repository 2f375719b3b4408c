use std::io::Write;

use super::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

const DOC: &str = r#"{"users":[{"ssn":"123-45-6789","mail":"alice@example.com"},{"ssn":"987-65-4321","mail":"bob\u0040example.com"}]}"#;
const MASKED: &str = r#"{"users":[{"ssn":"[masked]","mail":"[masked:email]"},{"ssn":"[masked]","mail":"[masked:email]"}]}"#;

fn encoded() -> Vec<(&'static str, Vec<u8>)> {
    let d = DOC.as_bytes();
    vec![
        ("gzip", gzip(d)),
        ("x-gzip", gzip(d)),
        ("deflate", zlib(d)),
        ("deflate", raw_deflate(d)),
        ("br", brotli(d)),
        ("zstd", zstd(d)),
        ("identity", d.to_vec()),
    ]
}

fn make(coding: &str) -> impl Fn() -> BodyMasker + use<> {
    let r = rules(&["ssn"], &[Detector::Email]);
    let coding = coding.to_string();
    move || {
        masker(
            &r,
            "application/json",
            Some(&coding),
            &BodyLimits::default(),
        )
    }
}

#[test]
fn every_coding_is_decoded_and_masked_however_it_is_chunked() {
    for (coding, body) in encoded() {
        let got = chunked(&make(coding), &body).unwrap_or_else(|e| panic!("{coding}: {e}"));
        assert_eq!(String::from_utf8(got).unwrap(), MASKED, "{coding}");
        let m = make(coding)();
        let changes = m.header_changes();
        assert_eq!(
            changes.remove.contains(&"content-encoding"),
            coding != "identity",
            "{coding}"
        );
        assert!(changes.remove.contains(&"content-length") && changes.weaken_etag);
    }
}

#[test]
fn gzip_members_are_all_decoded() {
    let mut body = gzip(br#"{"ssn":1,"#);
    body.extend(gzip(br#""b":{"ssn":2}}"#));
    assert_eq!(
        run(&mut make("gzip")(), [&body[..]]).unwrap(),
        br#"{"ssn":"[masked]","b":{"ssn":"[masked]"}}"#
    );
}

#[test]
fn truncated_or_trailing_encoded_bodies_are_errors() {
    for (coding, body) in encoded().into_iter().filter(|(c, _)| *c != "identity") {
        let cut = &body[..body.len() - 3];
        let got = run(&mut make(coding)(), [cut]);
        assert!(got.is_err(), "{coding} truncated: {got:?}");
        let mut extra = body.clone();
        extra.extend_from_slice(b"garbage!");
        let got = run(&mut make(coding)(), [&extra[..]]);
        assert!(got.is_err(), "{coding} with trailing bytes: {got:?}");
        let got = run(&mut make(coding)(), [&b"not compressed at all"[..]]);
        assert!(got.is_err(), "{coding} not encoded: {got:?}");
    }
    // An empty body is empty, whatever its coding says.
    for coding in ["gzip", "deflate", "br", "zstd"] {
        assert_eq!(run(&mut make(coding)(), []).unwrap(), b"");
    }
}

/// Encodes `n` bytes of `fill` in pieces (no large buffer), returning the encoded body.
fn bomb(coding: &str, fill: u8, n: usize) -> Vec<u8> {
    let chunk = vec![fill; 1024 * 1024];
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(&mut out, flate2::Compression::best());
            for _ in 0..n / chunk.len() {
                e.write_all(&chunk).unwrap();
            }
            e.finish().unwrap();
        }
        "br" => {
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
            for _ in 0..n / chunk.len() {
                e.write_all(&chunk).unwrap();
            }
        }
        _ => {
            let mut e = zstd::stream::Encoder::new(&mut out, 3).unwrap();
            for _ in 0..n / chunk.len() {
                e.write_all(&chunk).unwrap();
            }
            e.finish().unwrap();
        }
    }
    out
}

#[test]
fn decompression_bombs_are_stopped_by_ratio_and_size() {
    let r = rules(&[], &[Detector::Email]);
    for coding in ["gzip", "br", "zstd"] {
        // 64 MiB of newlines: gzip about 1000:1, br and zstd far more.
        let body = bomb(coding, b'\n', 64 * 1024 * 1024);
        let mut m = masker(&r, "text/plain", Some(coding), &BodyLimits::default());
        let mut err = None;
        for c in body.chunks(16 * 1024) {
            match m.push(c) {
                Ok(out) => assert!(out.len() <= 16 * 1024 * 200 + 2 * 1024 * 1024, "{coding}"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err, Some(BodyError::Ratio { ratio: 200 }), "{coding}");
        // The absolute bound, with the ratio out of the way.
        let limits = BodyLimits {
            max_ratio: u64::MAX / 2,
            max_decoded_bytes: 8 * 1024 * 1024,
            ..BodyLimits::default()
        };
        let mut m = masker(&r, "text/plain", Some(coding), &limits);
        let got = run(&mut m, body.chunks(64 * 1024));
        assert_eq!(
            got,
            Err(BodyError::DecodedTooLarge {
                max: 8 * 1024 * 1024
            }),
            "{coding}"
        );
    }
}

/// A bomb after a long honest start: the ratio of one push counts, not only the body's.
#[test]
fn a_bomb_late_in_the_body_is_stopped_at_its_push() {
    let r = rules(&[], &[Detector::Email]);
    let mut plain = Vec::new();
    let mut x: u32 = 1;
    for _ in 0..4 * 1024 * 1024 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        plain.push(b"abcdefgh \n"[(x >> 16) as usize % 10]);
    }
    let mut e = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    e.write_all(&plain).unwrap();
    e.flush().unwrap();
    let honest_len = e.get_ref().len();
    e.write_all(&vec![b'\n'; 64 * 1024 * 1024]).unwrap();
    let body = e.finish().unwrap();
    let mut m = masker(&r, "text/plain", Some("zstd"), &BodyLimits::default());
    for c in body[..honest_len].chunks(16 * 1024) {
        m.push(c).unwrap();
    }
    assert_eq!(
        m.push(&body[honest_len..]).unwrap_err(),
        BodyError::Ratio { ratio: 200 }
    );
}

#[test]
fn zstd_frames_asking_for_a_large_window_are_refused() {
    let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    e.window_log(27).unwrap();
    e.long_distance_matching(true).unwrap();
    e.write_all(DOC.as_bytes()).unwrap();
    let body = e.finish().unwrap();
    let got = run(&mut make("zstd")(), [&body[..]]);
    assert!(
        matches!(
            got,
            Err(BodyError::Decode {
                encoding: "zstd",
                ..
            })
        ),
        "{got:?}"
    );
}

/// A body no rule reads (a form, when only `json_fields` apply) is still decoded when encoded:
/// what follows the masking (the credential's echo filter) reads plain bytes.
#[test]
fn an_encoded_body_no_rule_reads_is_decoded_all_the_same() {
    let r = rules(&["ssn"], &[]);
    let form = b"token=Bearer%20abc&x=1";
    let limits = BodyLimits::default();
    let none = BodyMasker::new(&r, Some("application/x-www-form-urlencoded"), None, &limits);
    assert!(matches!(none, Ok(None)), "{none:?}");
    let mut m = masker(
        &r,
        "application/x-www-form-urlencoded",
        Some("gzip"),
        &limits,
    );
    assert_eq!(run(&mut m, [gzip(form).as_slice()]).unwrap(), form);
    assert!(
        m.header_changes().remove.contains(&"content-encoding"),
        "{:?}",
        m.header_changes()
    );
}
