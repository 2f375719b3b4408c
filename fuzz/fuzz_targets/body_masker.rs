//! Arbitrary bytes as an HTTP response body of each kind (JSON, event stream, form, text) and
//! coding, fed in one piece, cut in two and byte by byte: nothing may panic, and for unencoded
//! bodies the result (output or refusal) may not depend on the cuts.
#![no_main]

use std::sync::{Arc, LazyLock};

use gateway::mask::{
    Detector, JsonField,
    body::{BodyLimits, BodyMasker, BodyRules},
};
use libfuzzer_sys::fuzz_target;

static RULES: LazyLock<Arc<BodyRules>> = LazyLock::new(|| {
    let fields = ["ssn", "*token*", "users[*].email", "$.a[1]"]
        .iter()
        .map(|f| JsonField::parse(f).expect("valid"))
        .collect();
    Arc::new(BodyRules::new(
        vec!["fuzz".into()],
        fields,
        Detector::ALL.to_vec(),
    ))
});

const LIMITS: BodyLimits = BodyLimits {
    max_token_bytes: 64,
    max_depth: 16,
    max_event_bytes: 256,
    max_decoded_bytes: 1 << 20,
    max_ratio: 200,
};

fn run<'a>(
    content_type: &str,
    coding: Option<&str>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, ()> {
    let mut m = BodyMasker::new(&RULES, Some(content_type), coding, &LIMITS)
        .expect("maskable")
        .expect("applies");
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&m.push(c).map_err(drop)?);
    }
    out.extend_from_slice(&m.finish().map_err(drop)?);
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = [
        "application/json",
        "text/event-stream",
        "application/x-www-form-urlencoded",
        "text/plain",
    ][usize::from(selector & 3)];
    let coding = [None, Some("gzip"), Some("br"), Some("zstd")][usize::from((selector >> 2) & 3)];
    let cut = usize::from(selector >> 4) * body.len() / 16;
    let whole = run(content_type, coding, [body]);
    let split = run(content_type, coding, [&body[..cut], &body[cut..]]);
    let bytewise = run(content_type, coding, body.chunks(1));
    if coding.is_none() {
        assert_eq!(whole, split, "cut at {cut}");
        assert_eq!(whole, bytewise, "byte by byte");
    }
});
