//! Tests of body masking. Every masking test also checks that the output does not depend on how
//! the input is chunked (`chunked` splits it at every offset).

mod decode;
mod fields;
mod json;
mod large;
mod properties;
mod sse;
mod text;

use std::sync::Arc;

use super::*;

pub(super) fn rules(fields: &[&str], detectors: &[Detector]) -> Arc<BodyRules> {
    let fields = fields
        .iter()
        .map(|f| JsonField::parse(f).unwrap_or_else(|e| panic!("{f}: {e}")))
        .collect();
    Arc::new(BodyRules::new(
        vec!["test".into()],
        fields,
        detectors.to_vec(),
    ))
}

pub(super) fn masker(
    rules: &Arc<BodyRules>,
    content_type: &str,
    content_encoding: Option<&str>,
    limits: &BodyLimits,
) -> BodyMasker {
    BodyMasker::new(rules, Some(content_type), content_encoding, limits)
        .expect("maskable")
        .expect("masking applies")
}

/// Feeds `chunks` and finishes: the output, or the first error.
pub(super) fn run<'a>(
    m: &mut BodyMasker,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&m.push(c)?);
    }
    out.extend_from_slice(&m.finish()?);
    Ok(out)
}

/// Masks `input` in one piece, then split at every offset (and three ways for short inputs, and
/// byte by byte), and checks that every split gives the same result. Returns it.
pub(super) fn chunked(make: &dyn Fn() -> BodyMasker, input: &[u8]) -> Result<Vec<u8>, BodyError> {
    let whole = run(&mut make(), [input]);
    let same = |got: Result<Vec<u8>, BodyError>, how: &str| match (&whole, &got) {
        (Ok(a), Ok(b)) => assert_eq!(
            String::from_utf8_lossy(a),
            String::from_utf8_lossy(b),
            "{how} of {:?}",
            String::from_utf8_lossy(input)
        ),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "{how} of {:?}: {got:?} but in one piece {whole:?}",
            String::from_utf8_lossy(input)
        ),
    };
    for i in 0..=input.len() {
        same(
            run(&mut make(), [&input[..i], &input[i..]]),
            &format!("split at {i}"),
        );
        if input.len() <= 48 {
            for j in i..=input.len() {
                same(
                    run(&mut make(), [&input[..i], &input[i..j], &input[j..]]),
                    &format!("split at {i} and {j}"),
                );
            }
        }
    }
    same(run(&mut make(), input.chunks(1)), "byte by byte");
    whole
}

/// JSON masking of `input` with `rules`, checked for chunking; the output as text.
pub(super) fn json_with(
    rules: &Arc<BodyRules>,
    limits: &BodyLimits,
    input: &[u8],
) -> Result<String, BodyError> {
    let make = || masker(rules, "application/json", None, limits);
    chunked(&make, input).map(|o| String::from_utf8(o).expect("UTF-8 output"))
}

pub(super) fn json(
    fields: &[&str],
    detectors: &[Detector],
    input: &str,
) -> Result<String, BodyError> {
    json_with(
        &rules(fields, detectors),
        &BodyLimits::default(),
        input.as_bytes(),
    )
}

#[test]
fn urls_and_header_values_are_masked_as_typed_and_percent_decoded() {
    let r = rules(
        &["ssn"],
        &[Detector::Email, Detector::UsSsn, Detector::CreditCard],
    );
    let shown = |text: &str| r.mask_str(text).into_owned();
    assert_eq!(
        shown("/v1/users?ssn=123-45-6789&mail=alice@example.com"),
        "/v1/users?ssn=[masked:us_ssn]&mail=[masked:email]"
    );
    // Encoded, the match is replaced by encoded text; `+` is a space, as in a query.
    assert_eq!(
        shown("/v1?ssn=123%2D45%2D6789"),
        "/v1?ssn=%5Bmasked%3Aus_ssn%5D"
    );
    assert_eq!(
        shown("card=4111+1111+1111+1111&x=1"),
        "card=%5Bmasked%3Acredit_card%5D&x=1"
    );
    // Both forms in one text; nothing matched: the text as it was (json_fields do not apply).
    assert_eq!(
        shown("a=alice@example.com&b=alice%40example.com"),
        "a=[masked:email]&b=%5Bmasked%3Aemail%5D"
    );
    assert!(r.mask_text(b"/v1/users?ssn=12&x=%41+b").is_none());
    // Text the detectors cannot scan in parts is not shown at all.
    let long = format!("x=%41{}", "a".repeat(70 * 1024));
    let (note, _) = r.mask_text(long.as_bytes()).expect("refused");
    assert!(note.starts_with(b"[not shown: "), "{:?}", &note[..40]);
    // No detectors, nothing to do.
    assert!(rules(&["ssn"], &[]).mask_text(b"123-45-6789").is_none());
}

#[test]
fn a_message_is_masked_whole_as_json_or_text() {
    let r = rules(&["ssn"], &[Detector::Email]);
    let (json, n) = r
        .mask_message(br#"{"ssn": 1, "m": "alice@example.com"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(json, br#"{"ssn": "[masked]", "m": "[masked:email]"}"#);
    assert_eq!(n, 2);
    let (text, _) = r.mask_message(b"mail alice@example.com").unwrap().unwrap();
    assert_eq!(text, b"mail [masked:email]");
    assert_eq!(r.mask_message(b"nothing").unwrap(), None);
    // Starts like JSON and is not: an error, never passed on as text.
    assert!(r.mask_message(br#"{"ssn": 1"#).is_err());
    assert!(r.mask_message(br#"{"ssn" 1}"#).is_err());
}

#[test]
fn a_request_sample_is_masked_as_a_response_would_be() {
    let r = rules(&["ssn"], &[Detector::Email]);
    let doc = br#"{"ssn":"123-45-6789","note":"alice@example.com"}"#;
    let shown = r.mask_sample(Some("application/json"), None, doc, true);
    assert_eq!(shown, br#"{"ssn":"[masked]","note":"[masked:email]"}"#);
    // A sample cut short keeps only what the masking could finish.
    let cut = r.mask_sample(Some("application/json"), None, &doc[..30], false);
    assert!(!String::from_utf8_lossy(&cut).contains("123-45"), "{cut:?}");
    // Text, and a body the masking cannot read (which is not shown).
    let text = r.mask_sample(Some("text/plain"), None, b"mail alice@example.com", true);
    assert_eq!(text, b"mail [masked:email]");
    let binary = r.mask_sample(Some("image/png"), None, b"alice@example.com", true);
    assert!(binary.starts_with(b"[not recorded: "), "{binary:?}");
    assert!(r.mask_sample(None, None, b"", true).is_empty());
}
