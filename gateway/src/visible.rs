//! Text a job controls, made safe to show to people: every control character (C0, DEL, C1), bidi
//! override/isolate and invisible formatting character is replaced by a visible escape (`\x1b`,
//! `\u{202e}`), so that it can neither drive root's terminal nor make text read differently on a
//! page or in a chat client than what runs. Every human-facing output uses this: CLI tables and
//! details, `sessions show`, the approvals page and webhook text. Machine output (`--json`) does not.

use std::fmt::Write as _;

/// Characters that are escaped: controls, and those that change how the text around them reads
/// without showing themselves (bidi controls, zero-width and other invisible formatting).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'                    // soft hyphen
            | '\u{034F}'                  // combining grapheme joiner
            | '\u{061C}'                  // Arabic letter mark
            | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'     // Mongolian selectors and vowel separator
            | '\u{200B}'..='\u{200F}'     // zero width space/joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}'     // line and paragraph separators
            | '\u{202A}'..='\u{202E}'     // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}'     // word joiner, invisible operators, bidi isolates
            | '\u{FE00}'..='\u{FE0F}'     // variation selectors
            | '\u{FEFF}'                  // zero width no-break space
            | '\u{FFF9}'..='\u{FFFB}'     // interlinear annotation
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}') // tags, variation selectors supplement
}

fn escape(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

fn escaped(s: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if hidden(c) && !keep(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    out
}

/// One line: every hidden character escaped, line breaks and tabs included (tables, one-line
/// summaries, chat text).
pub fn line(s: &str) -> String {
    escaped(s, |_| false)
}

/// A block of text: line breaks and tabs stay (a multi-line statement reads as written), every
/// other hidden character is escaped.
pub fn text(s: &str) -> String {
    escaped(s, |c| c == '\n' || c == '\t')
}

/// Whether `s` has a character [`line`] would escape.
pub fn has_hidden(s: &str) -> bool {
    s.chars().any(hidden)
}

/// Every string in `value` (keys and values) through [`line`].
pub fn json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if has_hidden(s) => *s = line(s),
        Value::Array(items) => items.iter_mut().for_each(json),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut v) in entries {
                json(&mut v);
                map.insert(line(&k), v);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_bidi_and_invisible_characters_show() {
        assert_eq!(line("a\u{1b}[2Jb\u{7}"), "a\\x1b[2Jb\\x07");
        assert_eq!(line("x\u{202e}cba\u{202c}"), "x\\u{202e}cba\\u{202c}");
        assert_eq!(
            line("zero\u{200b}width\u{feff}"),
            "zero\\u{200b}width\\u{feff}"
        );
        assert_eq!(line("c1\u{85}\u{9b}31m"), "c1\\u{85}\\u{9b}31m");
        assert_eq!(line("del\u{7f}"), "del\\x7f");
        assert_eq!(line("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(line("tag\u{e0041}"), "tag\\u{e0041}");
        assert_eq!(text("a\n\tb\u{1b}"), "a\n\tb\\x1b");
        // Ordinary text, accents and other scripts are left alone; escaping twice changes nothing.
        let plain = "SELECT 'Zoë', 'ß', '日本', 'مرحبا' -- ok \\ fine";
        assert_eq!(line(plain), plain);
        assert_eq!(line(&line("a\u{1b}\u{202e}")), line("a\u{1b}\u{202e}"));
    }

    #[test]
    fn json_strings_and_keys() {
        let mut v = serde_json::json!({ "k\u{1b}": ["\u{202e}x", 1, null], "ok": "fine" });
        json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({ "k\\x1b": ["\\u{202e}x", 1, null], "ok": "fine" })
        );
    }
}
