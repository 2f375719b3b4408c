use super::*;

const NONE: &[Detector] = &[];

fn limits(max_token_bytes: usize, max_depth: usize) -> BodyLimits {
    BodyLimits {
        max_token_bytes,
        max_depth,
        ..BodyLimits::default()
    }
}

#[test]
fn unmasked_json_passes_byte_for_byte() {
    let doc = "\u{feff} {\"a\" : [1, -0.5e-3, 2E+10, true, false, null, \"x\\n\\u00e9\\ud83d\\ude00 é\"] ,\n\t\"b\":{} , \"c\":[]}\r\n";
    assert_eq!(json(&["ssn"], NONE, doc).unwrap(), doc);
    assert_eq!(json(&["ssn"], &[Detector::Email], doc).unwrap(), doc);
    assert_eq!(json(&["ssn"], NONE, "").unwrap(), "");
    assert_eq!(json(&["ssn"], NONE, " \n ").unwrap(), " \n ");
}

#[test]
fn key_globs_mask_at_any_depth_whatever_the_value() {
    let got = json(
        &["ssn", "*token*"],
        NONE,
        r#"{"ssn":"1","x":{"SSN":{"deep":[1,{"a":2}]},"arr":[{"ssn":[1, 2]},{"ssn":12.5e3}]},"access_token":null,"TokenType":true,"tok":1}"#,
    )
    .unwrap();
    assert_eq!(
        got,
        r#"{"ssn":"[masked]","x":{"SSN":"[masked]","arr":[{"ssn":"[masked]"},{"ssn":"[masked]"}]},"access_token":"[masked]","TokenType":"[masked]","tok":1}"#
    );
}

#[test]
fn whitespace_around_a_masked_value_stays_and_inside_it_goes() {
    let got = json(
        &["ssn"],
        NONE,
        "{ \"ssn\" : {\n \"a\" : [ 1 , 2 ]\n} ,\n \"b\" : 1 }",
    )
    .unwrap();
    assert_eq!(got, "{ \"ssn\" : \"[masked]\" ,\n \"b\" : 1 }");
}

#[test]
fn paths_start_at_the_top_level_value() {
    let doc = r#"{"users":[{"ssn":"a","name":"n"},{"ssn":1}],"ssn":"top","data":{"items":[{"card":1},{"card":2}]}}"#;
    assert_eq!(
        json(&["users[*].ssn", "data.items[1].card"], NONE, doc).unwrap(),
        r#"{"users":[{"ssn":"[masked]","name":"n"},{"ssn":"[masked]"}],"ssn":"top","data":{"items":[{"card":1},{"card":"[masked]"}]}}"#
    );
    assert_eq!(
        json(&["$.ssn"], NONE, doc).unwrap(),
        doc.replace(r#""ssn":"top""#, r#""ssn":"[masked]""#)
    );
    assert_eq!(
        json(
            &["[*].email", "$[2]"],
            NONE,
            r#"[{"email":"e"},{"email":{"x":1}},[3]]"#
        )
        .unwrap(),
        r#"[{"email":"[masked]"},{"email":"[masked]"},"[masked]"]"#
    );
    // Each top-level value of a stream (NDJSON) is a root.
    assert_eq!(
        json(&["$.ssn"], NONE, "{\"ssn\":1}\n{\"ssn\":2}\n").unwrap(),
        "{\"ssn\":\"[masked]\"}\n{\"ssn\":\"[masked]\"}\n"
    );
}

/// The attacker's ways to write a masked key so that a naive comparison misses it.
#[test]
fn keys_are_compared_as_the_client_reads_them() {
    let got = json(
        &["ssn"],
        NONE,
        r#"{"\u0073sn":"1","s\u0053N":"2","\u0073\u0073\u006E":"3","ssn":"4","ssn":"5"}"#,
    )
    .unwrap();
    assert_eq!(
        got,
        r#"{"\u0073sn":"[masked]","s\u0053N":"[masked]","\u0073\u0073\u006E":"[masked]","ssn":"[masked]","ssn":"[masked]"}"#
    );
    // A key that only looks like the field once unescaped is not it (`\\` is a backslash).
    assert_eq!(
        json(&["ssn"], NONE, r#"{"s\\sn":"x","ss\/n":"y"}"#).unwrap(),
        r#"{"s\\sn":"x","ss\/n":"y"}"#
    );
}

#[test]
fn detectors_read_strings_unescaped_and_keys_too() {
    let got = json(
        &[],
        &[Detector::Email, Detector::UsSsn],
        r#"{"note":"mail alice@example.com now","esc":"bob\u0040example.com","alice@example.com":"123\u002d45-6789","plain":"nothing"}"#,
    )
    .unwrap();
    assert_eq!(
        got,
        r#"{"note":"mail [masked:email] now","esc":"[masked:email]","[masked:email]":"[masked:us_ssn]","plain":"nothing"}"#
    );
}

#[test]
fn numbers_with_a_detected_value_become_strings() {
    let got = json(
        &[],
        &[Detector::CreditCard],
        r#"{"n":4111111111111111,"e":4.111111111111111e15,"neg":-41111111111111110E-1,"small":42,"f":1.5}"#,
    )
    .unwrap();
    assert_eq!(
        got,
        r#"{"n":"[masked:credit_card]","e":"[masked:credit_card]","neg":"[masked:credit_card]","small":42,"f":1.5}"#
    );
}

#[test]
fn a_pem_key_in_a_string_is_masked_whole() {
    let key = r#"{"k":"x\n-----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\/abc=\n-----END RSA PRIVATE KEY-----\ny"}"#;
    assert_eq!(
        json(&[], &[Detector::PrivateKey], key).unwrap(),
        r#"{"k":"x\n[masked:private_key]\ny"}"#
    );
}

#[test]
fn invalid_json_is_an_error_where_it_is_found() {
    for doc in [
        "{\"a\":1,}",
        "[1,]",
        "{\"a\" 1}",
        "{\"a\":01}",
        "{\"a\":-}",
        "{\"a\":1.}",
        "{\"a\":1e}",
        "{\"a\":1e+}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":\"\u{1}\"}",
        "{\"a\":\"\\q\"}",
        "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00\"}",
        "{\"a\":\"\\ud800\\u0041\"}",
        "{\"a\":\"\\ud800x\"}",
        "{\"a\":1]",
        "[1}",
        "{1:2}",
        "{\"a\":1}}",
        "]",
        "NaN",
        "'a'",
        "// comment\n{}",
        "{\"a\":1} x",
        "\u{feff}\u{feff}{}",
        "{} \u{feff}",
        "{\"a\":",
        "\"abc",
        "-",
        "[",
        "{\"a\":1.5e",
    ] {
        let got = json(&["ssn"], &[Detector::Email], doc);
        assert!(
            matches!(got, Err(BodyError::Json { .. })),
            "{doc:?}: {got:?}"
        );
    }
    // Top-level numbers end with the body.
    assert_eq!(json(&["ssn"], NONE, "12").unwrap(), "12");
}

#[test]
fn invalid_utf8_in_strings_is_an_error() {
    let r = rules(&["ssn"], &[Detector::Email]);
    for bytes in [
        &b"\"\xC0\x80\""[..],    // overlong
        b"\"\xED\xA0\x80\"",     // a surrogate, UTF-8 encoded
        b"\"\xF5\x80\x80\x80\"", // beyond U+10FFFF
        b"\"\xE2\x82\"",         // truncated
        b"\"\x80\"",             // a lone continuation byte
        b"{\"\xFF\":1}",         // in a key
        b"\xEF\xBB{}",           // half a byte order mark
    ] {
        let got = json_with(&r, &BodyLimits::default(), bytes);
        assert!(
            matches!(got, Err(BodyError::Json { .. })),
            "{bytes:?}: {got:?}"
        );
    }
}

#[test]
fn the_error_position_is_where_the_input_went_wrong() {
    let r = rules(&["ssn"], NONE);
    let mut m = masker(&r, "application/json", None, &BodyLimits::default());
    assert_eq!(&m.push(b"{\"a\":[1,").unwrap()[..], b"{\"a\":[1,");
    let e = m.push(b" 2,]}").unwrap_err();
    assert_eq!(
        e,
        BodyError::Json {
            at: 11,
            reason: "expected a value"
        }
    );
    // Refused for good: nothing more comes out.
    assert_eq!(m.push(b"3]}").unwrap_err(), e);
    assert_eq!(m.finish().unwrap_err(), e);
}

#[test]
fn nesting_is_bounded_inside_masked_values_too() {
    let l = limits(64 * 1024, 4);
    let r = rules(&["ssn"], NONE);
    assert_eq!(json_with(&r, &l, b"[[[[1]]]]").unwrap(), "[[[[1]]]]");
    assert!(matches!(
        json_with(&r, &l, b"[[[[[1]]]]]"),
        Err(BodyError::TooDeep { max: 4, .. })
    ));
    assert!(matches!(
        json_with(&r, &l, b"{\"ssn\":[[[[]]]]}"),
        Err(BodyError::TooDeep { .. })
    ));
    // A million opening brackets cost a bounded stack.
    let deep = "[".repeat(1_000_000);
    let mut m = masker(&r, "application/json", None, &BodyLimits::default());
    assert!(matches!(
        m.push(deep.as_bytes()),
        Err(BodyError::TooDeep { max: 128, .. })
    ));
}

#[test]
fn keys_and_detected_numbers_are_bounded() {
    let l = limits(16, 128);
    let r = rules(&["ssn"], NONE);
    assert_eq!(
        json_with(&r, &l, b"{\"0123456789abcdef\":1}").unwrap(),
        "{\"0123456789abcdef\":1}"
    );
    assert!(matches!(
        json_with(&r, &l, b"{\"0123456789abcdefg\":1}"),
        Err(BodyError::TokenTooLong { max: 16, .. })
    ));
    let r = rules(&[], &[Detector::CreditCard]);
    assert!(matches!(
        json_with(&r, &l, b"[12345678901234567]"),
        Err(BodyError::TokenTooLong { .. })
    ));
    // Without detectors a number streams through, however long.
    let r = rules(&["ssn"], NONE);
    let long = format!("[{}]", "7".repeat(1000));
    assert_eq!(json_with(&r, &l, long.as_bytes()).unwrap(), long);
}

#[test]
fn long_strings_stream_in_bounded_memory() {
    let l = limits(1024, 128);
    // Under a masked field: read and dropped.
    let r = rules(&["ssn"], &[Detector::Email]);
    let mut m = masker(&r, "application/json", None, &l);
    let mut out = m.push(b"{\"ssn\":\"").unwrap().to_vec();
    let filler = "alice@example.com ".repeat(1000);
    for _ in 0..100 {
        out.extend_from_slice(&m.push(filler.as_bytes()).unwrap());
        assert!(m.buffered() < 8 * 1024, "{}", m.buffered());
    }
    out.extend_from_slice(&m.push(b"\",\"a\":1}").unwrap());
    out.extend_from_slice(&m.finish().unwrap());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"ssn\":\"[masked]\",\"a\":1}"
    );
    assert_eq!(m.masked(), 1);
    // Read by the detectors: emitted in pieces, every match found.
    let mut m = masker(&r, "application/json", None, &l);
    let mut out = m.push(b"{\"note\":\"").unwrap().to_vec();
    for _ in 0..100 {
        out.extend_from_slice(&m.push(filler.as_bytes()).unwrap());
        assert!(m.buffered() < 16 * 1024, "{}", m.buffered());
    }
    out.extend_from_slice(&m.push(b"\"}").unwrap());
    out.extend_from_slice(&m.finish().unwrap());
    assert_eq!(m.masked(), 100_000);
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains('@'));
    assert_eq!(
        text.len(),
        "{\"note\":\"\"}".len() + 100_000 * "[masked:email] ".len()
    );
}

#[test]
fn text_that_cannot_be_scanned_in_parts_is_refused() {
    let l = limits(1024, 128);
    let r = rules(&[], &[Detector::Email]);
    let word = format!("{{\"a\":\"{}\"}}", "x".repeat(2000));
    assert!(matches!(
        json_with(&r, &l, word.as_bytes()),
        Err(BodyError::Unscannable { max: 1024 })
    ));
    // A PEM block longer than the window, even with newlines in it.
    let r = rules(&[], &[Detector::PrivateKey]);
    let pem = format!(
        "{{\"a\":\"-----BEGIN RSA PRIVATE KEY-----\\n{}\\n-----END RSA PRIVATE KEY-----\"}}",
        "MIIE\\n".repeat(400)
    );
    assert!(matches!(
        json_with(&r, &l, pem.as_bytes()),
        Err(BodyError::Unscannable { .. })
    ));
    // A certificate is no key: its newlines are places to cut.
    let cert = pem.replace("RSA PRIVATE KEY", "CERTIFICATE");
    assert_eq!(json_with(&r, &l, cert.as_bytes()).unwrap(), cert);
}

/// The worst case for the window: every character escaped (6 raw bytes and an escape record per
/// decoded byte), and no place to cut until the window is full.
#[test]
fn an_all_escapes_string_is_the_window_worst_case() {
    let max = 64 * 1024;
    let r = rules(&[], &[Detector::Email]);
    let mut m = masker(&r, "application/json", None, &BodyLimits::default());
    m.push(b"[\"").unwrap();
    let mut worst = 0;
    let escaped = "\\u0061".repeat(1024);
    let mut refused = None;
    for _ in 0..80 {
        match m.push(escaped.as_bytes()) {
            Ok(_) => worst = worst.max(m.buffered()),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(refused, Some(BodyError::Unscannable { max }));
    assert!(
        worst <= 24 * max,
        "{worst} bytes buffered for a {max}-byte window"
    );
    // With a place every character (a comma), nothing accumulates.
    let mut m = masker(&r, "application/json", None, &BodyLimits::default());
    m.push(b"[\"").unwrap();
    let escaped = "\\u002c".repeat(1024);
    for _ in 0..200 {
        m.push(escaped.as_bytes()).unwrap();
        assert!(m.buffered() <= 64 * 1024, "{}", m.buffered());
    }
}
