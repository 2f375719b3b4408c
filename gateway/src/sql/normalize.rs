//! Cache keys that ignore the values of numeric literals: `… WHERE id = 42` and `… WHERE id = 7`
//! classify alike (no query's classification depends on a number's value), so clients that inline
//! values (the simple protocol) still hit the classification cache. Which results may be shared
//! under such a key is decided by the classifier (settings, for one, carry their values).
//!
//! Only plain digit runs outside quotes and comments are replaced, and only where they stand
//! alone (not part of an identifier, a `$1` parameter, a decimal or exponent). Text this scanner
//! does not fully understand (backslash escapes, dollar quoting, block comments) gets no key, and
//! is cached by its exact text as before.

/// The text with every standalone digit run replaced by `0`; `None` when the text holds no such
/// run (use the text itself) or cannot be scanned safely.
pub(super) fn literal_free_key(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if b.contains(&b'\\') || sql.contains("/*") {
        return None;
    }
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `sql` already accounted for in `out`
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => i = skip_quoted(b, i, q)?,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n);
            }
            // `$1` parameters are fine; `$tag$` or `$$` starts a dollar-quoted string.
            b'$' => {
                if !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let standalone = (start == 0 || !is_word(b[start - 1]) && b[start - 1] != b'.')
                    && (i == b.len() || !is_word(b[i]) && b[i] != b'.');
                if standalone && &sql[start..i] != "0" {
                    let o = out.get_or_insert_with(|| String::with_capacity(sql.len()));
                    o.push_str(&sql[copied..start]);
                    o.push('0');
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    let mut o = out?;
    o.push_str(&sql[copied..]);
    Some(o)
}

/// Part of an identifier or keyword (non-ASCII bytes included: identifiers may be Unicode).
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Index just past the quoted string or identifier opening at `start` (a doubled quote is an
/// escaped one); `None` when it is not closed.
fn skip_quoted(b: &[u8], start: usize, q: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let n = b[i..].iter().position(|&c| c == q)?;
        i += n + 1;
        if b.get(i) == Some(&q) {
            i += 1;
        } else {
            return Some(i);
        }
    }
}
