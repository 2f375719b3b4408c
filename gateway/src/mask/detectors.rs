//! Value detectors: find sensitive substrings in text without regular expressions (each scanner
//! starts from a cheap anchor byte, so text without '@', digits or key prefixes costs one pass).

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    /// 13-19 digits (spaces or dashes allowed between), a card prefix, Luhn check digit.
    CreditCard,
    /// US social security number in its dashed form `123-45-6789`.
    UsSsn,
    /// E.164 (`+` and 8-15 digits) or a North-American number written with separators.
    Phone,
    /// International bank account number, mod-97 checked.
    Iban,
    AwsAccessKey,
    Jwt,
    /// PEM private key blocks.
    PrivateKey,
}

impl Detector {
    pub const ALL: &'static [Detector] = &[
        Detector::Email,
        Detector::CreditCard,
        Detector::UsSsn,
        Detector::Phone,
        Detector::Iban,
        Detector::AwsAccessKey,
        Detector::Jwt,
        Detector::PrivateKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CreditCard => "credit_card",
            Detector::UsSsn => "us_ssn",
            Detector::Phone => "phone",
            Detector::Iban => "iban",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::Jwt => "jwt",
            Detector::PrivateKey => "private_key",
        }
    }

    pub fn parse(s: &str) -> Option<Detector> {
        Self::ALL.iter().copied().find(|d| d.as_str() == s)
    }

    /// What a match is replaced with: no quotes, commas, tabs or backslashes, so that it is safe
    /// inside JSON strings, array literals and COPY text/CSV.
    pub fn replacement(self) -> &'static str {
        match self {
            Detector::Email => "[masked:email]",
            Detector::CreditCard => "[masked:credit_card]",
            Detector::UsSsn => "[masked:us_ssn]",
            Detector::Phone => "[masked:phone]",
            Detector::Iban => "[masked:iban]",
            Detector::AwsAccessKey => "[masked:aws_access_key]",
            Detector::Jwt => "[masked:jwt]",
            Detector::PrivateKey => "[masked:private_key]",
        }
    }

    pub fn find(self, text: &[u8]) -> Vec<Range<usize>> {
        match self {
            Detector::Email => emails(text),
            Detector::CreditCard => cards(text),
            Detector::UsSsn => ssns(text),
            Detector::Phone => phones(text),
            Detector::Iban => ibans(text),
            Detector::AwsAccessKey => aws_keys(text),
            Detector::Jwt => jwts(text),
            Detector::PrivateKey => private_keys(text),
        }
    }
}

/// Replaces every match of `detectors` in `text`; `None` when nothing matched.
/// Overlapping matches merge (the earlier detector in `detectors` names the merged span).
pub fn redact(text: &[u8], detectors: &[Detector]) -> Option<(Vec<u8>, usize)> {
    let spans = spans(text, detectors);
    if spans.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for (r, d) in &spans {
        out.extend_from_slice(&text[at..r.start]);
        out.extend_from_slice(d.replacement().as_bytes());
        at = r.end;
    }
    out.extend_from_slice(&text[at..]);
    Some((out, spans.len()))
}

/// The spans [`redact`] replaces: in order, not overlapping, each with the detector it names.
pub fn spans(text: &[u8], detectors: &[Detector]) -> Vec<(Range<usize>, Detector)> {
    let mut found: Vec<(Range<usize>, Detector)> = Vec::new();
    for &d in detectors {
        for r in d.find(text) {
            found.push((r, d));
        }
    }
    found.sort_by_key(|(r, _)| (r.start, std::cmp::Reverse(r.end)));
    let mut out: Vec<(Range<usize>, Detector)> = Vec::with_capacity(found.len());
    for (r, d) in found {
        if out.last().is_some_and(|(last, _)| r.start < last.end) {
            continue; // inside a span already replaced
        }
        out.push((r, d));
    }
    out
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// True when `r` is not glued to letters or digits on either side.
fn bounded(text: &[u8], r: &Range<usize>) -> bool {
    let before = r.start == 0 || !is_word(text[r.start - 1]);
    let after = r.end >= text.len() || !is_word(text[r.end]);
    before && after
}

fn emails(text: &[u8]) -> Vec<Range<usize>> {
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let domain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = memchr(b'@', &text[from..]).map(|i| i + from) {
        from = at + 1;
        let mut start = at;
        while start > 0 && local(text[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < text.len() && domain(text[end]) {
            end += 1;
        }
        while end > at + 1 && (text[end - 1] == b'.' || text[end - 1] == b'-') {
            end -= 1;
        }
        while start < at && text[start] == b'.' {
            start += 1;
        }
        if start == at || end <= at + 1 {
            continue;
        }
        let dom = &text[at + 1..end];
        let Some(dot) = dom.iter().rposition(|&b| b == b'.') else {
            continue;
        };
        let tld = &dom[dot + 1..];
        if dot == 0 || tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
            continue;
        }
        out.push(start..end);
        from = end;
    }
    out
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Runs of digits with optional single separators from `seps` between them: (range, digits).
fn digit_runs(text: &[u8], seps: &[u8]) -> Vec<(Range<usize>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_digit() || (i > 0 && is_word(text[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = Vec::new();
        let mut end = i;
        while i < text.len() {
            let b = text[i];
            if b.is_ascii_digit() {
                digits.push(b - b'0');
                i += 1;
                end = i;
            } else if seps.contains(&b) && i + 1 < text.len() && text[i + 1].is_ascii_digit() {
                i += 1;
            } else {
                break;
            }
        }
        out.push((start..end, digits));
        i = end.max(start + 1);
    }
    out
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn cards(text: &[u8]) -> Vec<Range<usize>> {
    digit_runs(text, b" -")
        .into_iter()
        .filter(|(r, d)| {
            (13..=19).contains(&d.len()) && (2..=6).contains(&d[0]) && luhn(d) && bounded(text, r)
        })
        .map(|(r, _)| r)
        .collect()
}

fn ssns(text: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    if text.len() < 11 {
        return out;
    }
    for i in 0..=text.len() - 11 {
        let w = &text[i..i + 11];
        let shape = w.iter().enumerate().all(|(j, &b)| match j {
            3 | 6 => b == b'-',
            _ => b.is_ascii_digit(),
        });
        if !shape || !bounded(text, &(i..i + 11)) {
            continue;
        }
        let area = &w[0..3];
        let valid = area != b"000"
            && area != b"666"
            && area[0] != b'9'
            && &w[4..6] != b"00"
            && &w[7..11] != b"0000";
        if valid {
            out.push(i..i + 11);
        }
    }
    out
}

fn phones(text: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let starts =
            (b == b'+' || b == b'(' || b.is_ascii_digit()) && (i == 0 || !is_word(text[i - 1]));
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = 0;
        let mut seps = 0;
        let mut j = if b == b'+' { i + 1 } else { i };
        let mut end = j;
        while j < text.len() {
            let c = text[j];
            if c.is_ascii_digit() {
                digits += 1;
                j += 1;
                end = j;
            } else if b" -.()".contains(&c) && seps < 8 {
                seps += 1;
                j += 1;
            } else {
                break;
            }
        }
        let r = start..end;
        let ok = if b == b'+' {
            (8..=15).contains(&digits) && text.get(start + 1).is_some_and(u8::is_ascii_digit)
        } else {
            let written = &text[start..end];
            (digits == 10 || (digits == 11 && written[0] == b'1'))
                && seps > 0
                && north_american(written)
        };
        if ok && bounded(text, &r) {
            out.push(r);
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// `(555) 123-4567`, `555-123-4567`, `555.123.4567`, `1 555 123 4567`: groups of 3, 3 and 4.
fn north_american(written: &[u8]) -> bool {
    let groups: Vec<usize> = written
        .split(|b| !b.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .map(<[u8]>::len)
        .collect();
    matches!(groups.as_slice(), [3, 3, 4] | [1, 3, 3, 4])
}

fn ibans(text: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 15 <= text.len() {
        let w = &text[i..];
        let head = w[0].is_ascii_uppercase()
            && w[1].is_ascii_uppercase()
            && w[2].is_ascii_digit()
            && w[3].is_ascii_digit()
            && (i == 0 || !is_word(text[i - 1]));
        if !head {
            i += 1;
            continue;
        }
        // Collect alphanumerics, allowing single spaces between groups; remember group ends.
        let mut chars = Vec::new();
        let mut ends = Vec::new();
        let mut j = i;
        while j < text.len() && chars.len() < 34 {
            let c = text[j];
            if c.is_ascii_digit() || c.is_ascii_uppercase() {
                chars.push(c);
                j += 1;
                if j == text.len() || !(text[j].is_ascii_digit() || text[j].is_ascii_uppercase()) {
                    ends.push((chars.len(), j));
                }
            } else if c == b' ' && j + 1 < text.len() && text[j + 1].is_ascii_alphanumeric() {
                j += 1;
            } else {
                break;
            }
        }
        let found = ends.iter().rev().find(|(n, end)| {
            (15..=34).contains(n) && mod97(&chars[..*n]) && bounded(text, &(i..*end))
        });
        match found {
            Some(&(_, end)) => {
                out.push(i..end);
                i = end;
            }
            None => i += 1,
        }
    }
    out
}

fn mod97(iban: &[u8]) -> bool {
    let mut rem = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn aws_keys(text: &[u8]) -> Vec<Range<usize>> {
    const PREFIXES: [&[u8]; 4] = [b"AKIA", b"ASIA", b"AGPA", b"AIDA"];
    let mut out = Vec::new();
    if text.len() < 20 {
        return out;
    }
    for i in 0..=text.len() - 20 {
        let w = &text[i..i + 20];
        if PREFIXES.iter().any(|p| w.starts_with(p))
            && w[4..]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && bounded(text, &(i..i + 20))
        {
            out.push(i..i + 20);
        }
    }
    out
}

fn jwts(text: &[u8]) -> Vec<Range<usize>> {
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find(&text[from..], b"eyJ").map(|i| i + from) {
        from = at + 3;
        if at > 0 && b64(text[at - 1]) {
            continue;
        }
        // header.payload.signature, the payload a JSON object too.
        let mut j = at;
        let mut parts = 0;
        loop {
            let s = j;
            while j < text.len() && b64(text[j]) {
                j += 1;
            }
            if j == s && parts < 2 {
                break;
            }
            parts += 1;
            if parts == 3 || j >= text.len() || text[j] != b'.' {
                break;
            }
            if parts == 1 && !text[j + 1..].starts_with(b"eyJ") {
                break;
            }
            j += 1;
        }
        if parts == 3 {
            out.push(at..j);
            from = j;
        }
    }
    out
}

fn private_keys(text: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find(&text[from..], b"-----BEGIN ").map(|i| i + from) {
        let header_end = match find(&text[at + 11..], b"-----") {
            Some(e) => at + 11 + e,
            None => break,
        };
        let label = &text[at + 11..header_end];
        if !label.ends_with(b"PRIVATE KEY") || label.len() > 40 {
            // Not a key's header: its `-----` may open the next header, which is searched from here.
            from = at + 11;
            continue;
        }
        from = header_end + 5;
        let end = match find(&text[from..], b"-----END ") {
            Some(e) => {
                let tail = from + e + 9;
                find(&text[tail..], b"-----").map_or(text.len(), |t| tail + t + 5)
            }
            // A truncated block is still a key.
            None => text.len(),
        };
        out.push(at..end);
        from = end;
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
