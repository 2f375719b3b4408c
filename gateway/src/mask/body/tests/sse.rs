use super::*;

fn sse(
    fields: &[&str],
    detectors: &[Detector],
    limits: BodyLimits,
    input: &str,
) -> Result<String, BodyError> {
    let r = rules(fields, detectors);
    let make = || masker(&r, "text/event-stream", None, &limits);
    chunked(&make, input.as_bytes()).map(|o| String::from_utf8(o).unwrap())
}

fn plain(fields: &[&str], detectors: &[Detector], input: &str) -> Result<String, BodyError> {
    sse(fields, detectors, BodyLimits::default(), input)
}

#[test]
fn events_without_matches_pass_byte_for_byte() {
    let doc = "\u{feff}: keepalive\r\n\r\nevent: update\nid: 7\ndata: {\"a\":1}\n\ndata: [DONE]\r\rretry: 10\n\n";
    assert_eq!(plain(&["ssn"], &[Detector::Email], doc).unwrap(), doc);
}

#[test]
fn json_data_goes_through_the_json_masker() {
    assert_eq!(
        plain(&["ssn"], &[], "data: {\"ssn\":\"1\",\"a\":2}\n\n").unwrap(),
        "data: {\"ssn\":\"[masked]\",\"a\":2}\n\n"
    );
    // Data split over lines is one document; escapes are read.
    assert_eq!(
        plain(
            &["ssn"],
            &[Detector::Email],
            "event: e\ndata: {\"ssn\":\ndata:\"x\", \"m\":\"bob\\u0040example.com\"}\r\n\r\n"
        )
        .unwrap(),
        "event: e\ndata: {\"ssn\":\ndata: \"[masked]\", \"m\":\"[masked:email]\"}\n\r\n"
    );
    // A BOM opens the stream and is not part of the field name.
    assert_eq!(
        plain(&["ssn"], &[], "\u{feff}data: {\"ssn\":1}\n\n").unwrap(),
        "\u{feff}data: {\"ssn\":\"[masked]\"}\n\n"
    );
}

#[test]
fn other_data_and_lines_go_through_the_detectors() {
    assert_eq!(
        plain(
            &[],
            &[Detector::Email],
            ": from alice@example.com\nevent: bob@example.com\ndata: hi carol@example.com\n\n"
        )
        .unwrap(),
        ": from [masked:email]\nevent: [masked:email]\ndata: hi [masked:email]\n\n"
    );
}

/// Broken JSON cannot be checked for fields: it is replaced, not let through as text.
#[test]
fn data_that_looks_like_broken_json_is_replaced_whole() {
    assert_eq!(
        plain(&["ssn"], &[], "data: {\"ssn\":\"123\"\n\ndata: [DONE]\n\n").unwrap(),
        "data: [masked]\n\ndata: [DONE]\n\n"
    );
}

#[test]
fn an_unfinished_last_event_is_masked_too() {
    assert_eq!(
        plain(&["ssn"], &[], "data: {\"ssn\":1}").unwrap(),
        "data: {\"ssn\":\"[masked]\"}\n"
    );
}

#[test]
fn events_and_their_json_are_bounded() {
    let l = BodyLimits {
        max_event_bytes: 64,
        max_depth: 4,
        ..BodyLimits::default()
    };
    let long = format!("data: {}\n\n", "x".repeat(100));
    assert_eq!(
        sse(&["ssn"], &[], l, &long),
        Err(BodyError::EventTooLarge { max: 64 })
    );
    // Too deep is refused, not passed on as text.
    assert!(matches!(
        sse(&["ssn"], &[], l, "data: [[[[[1]]]]]\n\n"),
        Err(BodyError::TooDeep { .. })
    ));
}
