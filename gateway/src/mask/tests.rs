use super::*;

fn masked(d: Detector, text: &str) -> String {
    match redact(text.as_bytes(), &[d]) {
        Some((out, _)) => String::from_utf8(out).unwrap(),
        None => text.to_string(),
    }
}

#[test]
fn emails() {
    assert_eq!(
        masked(Detector::Email, "mail alice.smith+x@mail.example.com now"),
        "mail [masked:email] now"
    );
    assert_eq!(masked(Detector::Email, "a@b"), "a@b");
    assert_eq!(masked(Detector::Email, "@home.org"), "@home.org");
    assert_eq!(
        masked(Detector::Email, "{\"to\":\"bob@x.io\"}"),
        "{\"to\":\"[masked:email]\"}"
    );
}

#[test]
fn credit_cards_need_luhn_and_a_card_prefix() {
    assert_eq!(
        masked(Detector::CreditCard, "card 4111 1111 1111 1111."),
        "card [masked:credit_card]."
    );
    assert_eq!(
        masked(Detector::CreditCard, "5500-0000-0000-0004"),
        "[masked:credit_card]"
    );
    // Luhn fails.
    assert_eq!(
        masked(Detector::CreditCard, "4111111111111112"),
        "4111111111111112"
    );
    // Luhn passes but no card starts with 0.
    assert_eq!(
        masked(Detector::CreditCard, "0000000000000000"),
        "0000000000000000"
    );
    // Part of a longer identifier.
    assert_eq!(
        masked(Detector::CreditCard, "x4111111111111111"),
        "x4111111111111111"
    );
}

#[test]
fn ssns() {
    assert_eq!(
        masked(Detector::UsSsn, "ssn: 123-45-6789"),
        "ssn: [masked:us_ssn]"
    );
    assert_eq!(masked(Detector::UsSsn, "000-12-3456"), "000-12-3456");
    assert_eq!(masked(Detector::UsSsn, "666-12-3456"), "666-12-3456");
    assert_eq!(masked(Detector::UsSsn, "2024-01-1500"), "2024-01-1500");
}

#[test]
fn phones() {
    assert_eq!(
        masked(Detector::Phone, "call +44 20 7946 0958 today"),
        "call [masked:phone] today"
    );
    assert_eq!(masked(Detector::Phone, "(555) 123-4567"), "[masked:phone]");
    assert_eq!(masked(Detector::Phone, "555.123.4567"), "[masked:phone]");
    assert_eq!(masked(Detector::Phone, "id 5551234567"), "id 5551234567");
    assert_eq!(masked(Detector::Phone, "2024-01-15"), "2024-01-15");
}

#[test]
fn ibans_need_mod97() {
    assert_eq!(
        masked(Detector::Iban, "pay DE89 3704 0044 0532 0130 00 OK"),
        "pay [masked:iban] OK"
    );
    assert_eq!(
        masked(Detector::Iban, "GB82WEST12345698765432"),
        "[masked:iban]"
    );
    assert_eq!(
        masked(Detector::Iban, "GB82WEST12345698765433"),
        "GB82WEST12345698765433"
    );
}

#[test]
fn keys_and_tokens() {
    assert_eq!(
        masked(Detector::AwsAccessKey, "key=AKIAIOSFODNN7EXAMPLE;"),
        "key=[masked:aws_access_key];"
    );
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl";
    assert_eq!(
        masked(Detector::Jwt, &format!("Bearer {jwt}")),
        "Bearer [masked:jwt]"
    );
    let pem = "x\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\nabc\n-----END RSA PRIVATE KEY-----\ny";
    assert_eq!(
        masked(Detector::PrivateKey, pem),
        "x\n[masked:private_key]\ny"
    );
    let cert = "-----BEGIN CERTIFICATE-----\nMIIE\n-----END CERTIFICATE-----";
    assert_eq!(masked(Detector::PrivateKey, cert), cert);
}

/// A header that is not a private key's must not make the scan skip past a key that follows it
/// (the text up to the next `-----`, here the key's own header, was skipped).
#[test]
fn a_header_that_is_not_a_key_hides_no_key_after_it() {
    let text =
        "-----BEGIN x -----BEGIN RSA PRIVATE KEY-----\nMIIsecret\n-----END RSA PRIVATE KEY-----";
    assert_eq!(
        masked(Detector::PrivateKey, text),
        "-----BEGIN x [masked:private_key]"
    );
    let long = format!(
        "-----BEGIN {} -----BEGIN EC PRIVATE KEY-----\nMIIsecret",
        "L".repeat(50)
    );
    assert!(!masked(Detector::PrivateKey, &long).contains("MIIsecret"));
}

fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut out = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

fn col(name: &str, table_oid: u32, column: i16, type_oid: u32, binary: bool) -> ResultColumn {
    ResultColumn {
        name: name.into(),
        table_oid,
        column,
        type_oid,
        binary,
    }
}

fn masker(columns: &[&str], detectors: &[Detector]) -> Masker {
    Masker {
        rules: vec!["test".into()],
        columns: columns
            .iter()
            .map(|c| ColumnPattern::parse(c).unwrap())
            .collect(),
        detectors: detectors.to_vec(),
    }
}

#[test]
fn rows_keep_their_shape_and_types() {
    let m = masker(&["users.ssn"], &[Detector::Email]);
    let columns = [
        col("id", 1000, 1, values::INT4, false),
        col("note", 1000, 2, values::TEXT, false),
        col("x", 1000, 3, values::INT8, false),
        col("nothing", 0, 0, values::TEXT, false),
    ];
    // The catalog said users.ssn is (1000, 3).
    let covered = Coverage::new(vec![CoveredTable {
        oid: 1000,
        schema: "public".into(),
        name: "users".into(),
        columns: vec![CatalogColumn {
            attnum: 3,
            name: "x".into(),
            type_oid: values::INT8,
            generated: false,
            covered: true,
        }],
    }]);
    let plan = m.plan(&columns, &covered);
    assert_eq!(
        plan.actions,
        [
            Action::Keep,
            Action::Detect,
            Action::Replace,
            Action::Detect
        ]
    );
    let body = row(&[Some(b"7"), Some(b"mail a@b.org"), Some(b"123456789"), None]);
    let (out, n) = plan.apply(&body).unwrap().unwrap();
    assert_eq!(n, 2);
    let values = row_values(&out).unwrap();
    assert_eq!(
        values,
        [
            Some(&b"7"[..]),
            Some(&b"mail [masked:email]"[..]),
            Some(&b"0"[..]),
            None
        ]
    );
    // Nothing sensitive: the row is forwarded as it was.
    let clean = row(&[Some(b"8"), Some(b"hello"), None, None]);
    assert_eq!(plan.apply(&clean).unwrap(), None);
}

#[test]
fn covered_binary_columns_are_masked_by_type_or_nulled() {
    let m = masker(&["secret*"], &[]);
    let columns = [
        col("secret_n", 0, 0, values::INT8, true),
        col("secret_t", 0, 0, values::TEXT, true),
        col("secret_arr", 0, 0, 1007, true),
    ];
    let plan = m.plan(&columns, &Coverage::default());
    let body = row(&[
        Some(&[0, 0, 0, 0, 0, 0, 0, 42]),
        Some(b"top"),
        Some(b"\x00\x01"),
    ]);
    let (out, _) = plan.apply(&body).unwrap().unwrap();
    assert_eq!(
        row_values(&out).unwrap(),
        [Some(&[0u8; 8][..]), Some(&b"[masked]"[..]), None]
    );
}

#[test]
fn output_names_match_bare_patterns_only() {
    let m = masker(&["*email*", "users.phone"], &[]);
    let columns = [
        col("user_email", 0, 0, values::TEXT, false),
        col("phone", 0, 0, values::TEXT, false),
    ];
    let plan = m.plan(&columns, &Coverage::default());
    assert_eq!(plan.actions, [Action::Replace, Action::Keep]);
    assert!(!plan.is_noop());
}

#[test]
fn malformed_rows_are_errors_not_panics() {
    let plan = masker(&[], &[Detector::Email])
        .plan(&[col("a", 0, 0, values::TEXT, false)], &Coverage::default());
    for bad in [
        &b""[..],
        b"\x00",
        b"\x00\x01\x00\x00",
        b"\x00\x01\x00\x00\x00\x09ab",
        b"\xff\xff",
    ] {
        assert!(plan.apply(bad).is_err(), "{bad:?}");
    }
    assert!(matches!(
        plan.apply(&row(&[None, None])),
        Err(MaskError::ColumnCount { .. })
    ));
}

#[test]
fn column_patterns() {
    let p = ColumnPattern::parse("public.users.email").unwrap();
    assert!(p.matches("public", "users", "email"));
    assert!(!p.matches("other", "users", "email"));
    assert!(ColumnPattern::parse("a.b.c.d").is_err());
    assert!(ColumnPattern::parse("it's").is_err());
    assert!(ColumnPattern::parse("a..b").is_err());
}

/// Each side takes from a rule only what applies to it: a rule of `json_fields` alone does not
/// make masking apply to postgres results (it would refuse what it cannot mask), and a rule of
/// `columns` alone does not apply to HTTP bodies.
#[test]
fn postgres_and_body_masking_take_their_own_keys() {
    let rule =
        |name: &str, columns: &[&str], fields: &[&str], detectors: &[Detector]| MaskingRule {
            name: name.into(),
            targets: vec!["*".into()],
            columns: columns
                .iter()
                .map(|c| ColumnPattern::parse(c).unwrap())
                .collect(),
            json_fields: fields
                .iter()
                .map(|f| JsonField::parse(f).unwrap())
                .collect(),
            detectors: detectors.to_vec(),
        };
    let json_only = [rule("j", &[], &["ssn"], &[])];
    assert!(Masker::for_target(&json_only, "db").is_none());
    assert!(body::BodyRules::for_target(&json_only, "api").is_some());
    let columns_only = [rule("c", &["ssn"], &[], &[])];
    assert!(Masker::for_target(&columns_only, "db").is_some());
    assert!(body::BodyRules::for_target(&columns_only, "api").is_none());
    let both = [
        rule("c", &["ssn"], &[], &[]),
        rule("d", &[], &["token"], &[Detector::Email]),
    ];
    let b = body::BodyRules::for_target(&both, "api").unwrap();
    assert_eq!(b.rules, vec!["d".to_string()]);
    assert_eq!(b.detectors, vec![Detector::Email]);
    let m = Masker::for_target(&both, "db").unwrap();
    assert_eq!(m.rules, vec!["c".to_string(), "d".to_string()]);
}

/// What a job typed (a command line, a Docker request) is masked with the detectors of every
/// rule, whichever targets they name; rules without detectors add nothing (their keys name
/// values in traffic), and no detector at all means nothing to mask.
#[test]
fn typed_text_is_masked_with_every_rules_detectors() {
    let rule = |name: &str, target: &str, columns: &[&str], detectors: &[Detector]| MaskingRule {
        name: name.into(),
        targets: vec![target.into()],
        columns: columns
            .iter()
            .map(|c| ColumnPattern::parse(c).unwrap())
            .collect(),
        json_fields: Vec::new(),
        detectors: detectors.to_vec(),
    };
    assert!(body::BodyRules::every_detector(&[]).is_none());
    assert!(body::BodyRules::every_detector(&[rule("c", "db", &["ssn"], &[])]).is_none());
    let rules = [
        rule("c", "db", &["ssn"], &[]),
        rule("db-pii", "db", &[], &[Detector::Email, Detector::UsSsn]),
        rule(
            "api-pii",
            "api",
            &[],
            &[Detector::UsSsn, Detector::AwsAccessKey],
        ),
    ];
    let every = body::BodyRules::every_detector(&rules).unwrap();
    assert_eq!(every.rules, ["db-pii", "api-pii"]);
    assert_eq!(
        every.detectors,
        [Detector::Email, Detector::UsSsn, Detector::AwsAccessKey]
    );
    assert_eq!(
        every.mask_str("https://other/v1?ssn=123%2D45%2D6789&to=bob@x.io"),
        "https://other/v1?ssn=%5Bmasked%3Aus_ssn%5D&to=[masked:email]"
    );
    let mut detail = serde_json::json!({
        "path": "/containers/json?filters=ssn%3D123-45-6789",
        "command": ["/bin/true", "123-45-6789"],
        "mounts": [{"source": "/home/bob@x.io"}],
        "status": 200,
        "decision": "allow",
    });
    every.mask_json_strings(&mut detail);
    assert_eq!(
        detail,
        serde_json::json!({
            "path": "/containers/json?filters=ssn%3D%5Bmasked%3Aus_ssn%5D",
            "command": ["/bin/true", "[masked:us_ssn]"],
            "mounts": [{"source": "/home/[masked:email]"}],
            "status": 200,
            "decision": "allow",
        })
    );
}
