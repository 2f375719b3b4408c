//! Client encodings as PostgreSQL names them, which of them the gateway accepts, and decoding SQL
//! text sent in them.
//!
//! The server converts what a client sends from its `client_encoding` before lexing it. In some
//! encodings (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) a multibyte character may end in an ASCII byte
//! such as `\`, so the same bytes lex differently: text one way to the gateway and another to the
//! server. Sessions are therefore pinned to encodings whose multibyte sequences never contain ASCII
//! bytes: UTF8 and the single-byte sets.

/// An accepted client encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientEncoding {
    #[default]
    Utf8,
    /// No conversion; a UTF8 server still checks the bytes are UTF-8, and so does the gateway.
    SqlAscii,
    /// ISO 8859-1: each byte is the code point of the same value.
    Latin1,
    /// Another single-byte set, decoded with its table.
    SingleByte(&'static str, &'static encoding_rs::Encoding),
}

/// Why a client encoding is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    #[error(
        "client encoding {0:?} is not allowed through the gateway: its multibyte characters can contain ASCII bytes, so the server would read statements differently from the gateway; use UTF8"
    )]
    Unsafe(String),
    #[error("client encoding {0:?} is not supported by the gateway; use UTF8")]
    Unsupported(String),
}

/// PostgreSQL's normalisation of encoding names: lower case, only letters and digits.
fn clean(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Encodings whose multibyte characters may contain ASCII bytes (client-only in PostgreSQL).
const UNSAFE: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "uhc",
    "win949",
    "windows949",
    "gb18030",
    "johab",
];

impl ClientEncoding {
    /// Resolves a `client_encoding` value as the server would, or says why it is refused.
    pub fn parse(value: &str) -> Result<ClientEncoding, EncodingError> {
        let c = clean(value);
        if UNSAFE.contains(&c.as_str()) {
            return Err(EncodingError::Unsafe(value.to_string()));
        }
        let single = |pg: &'static str, label: &str| {
            encoding_rs::Encoding::for_label(label.as_bytes())
                .map(|e| ClientEncoding::SingleByte(pg, e))
                .ok_or_else(|| EncodingError::Unsupported(value.to_string()))
        };
        Ok(match c.as_str() {
            "utf8" | "unicode" => ClientEncoding::Utf8,
            "sqlascii" => ClientEncoding::SqlAscii,
            "latin1" | "iso88591" => ClientEncoding::Latin1,
            "latin2" | "iso88592" => single("LATIN2", "iso-8859-2")?,
            "latin3" | "iso88593" => single("LATIN3", "iso-8859-3")?,
            "latin4" | "iso88594" => single("LATIN4", "iso-8859-4")?,
            "latin5" | "iso88599" => single("LATIN5", "windows-1254")?,
            "latin6" | "iso885910" => single("LATIN6", "iso-8859-10")?,
            "latin7" | "iso885913" => single("LATIN7", "iso-8859-13")?,
            "latin8" | "iso885914" => single("LATIN8", "iso-8859-14")?,
            "latin9" | "iso885915" => single("LATIN9", "iso-8859-15")?,
            "latin10" | "iso885916" => single("LATIN10", "iso-8859-16")?,
            "iso88595" => single("ISO_8859_5", "iso-8859-5")?,
            "iso88596" => single("ISO_8859_6", "iso-8859-6")?,
            "iso88597" => single("ISO_8859_7", "iso-8859-7")?,
            "iso88598" => single("ISO_8859_8", "iso-8859-8")?,
            "koi8" | "koi8r" => single("KOI8R", "koi8-r")?,
            "koi8u" => single("KOI8U", "koi8-u")?,
            "win866" | "windows866" | "alt" => single("WIN866", "ibm866")?,
            "win874" | "windows874" => single("WIN874", "windows-874")?,
            "win" | "win1251" | "windows1251" => single("WIN1251", "windows-1251")?,
            "win1250" | "windows1250" => single("WIN1250", "windows-1250")?,
            "win1252" | "windows1252" => single("WIN1252", "windows-1252")?,
            "win1253" | "windows1253" => single("WIN1253", "windows-1253")?,
            "win1254" | "windows1254" => single("WIN1254", "windows-1254")?,
            "win1255" | "windows1255" => single("WIN1255", "windows-1255")?,
            "win1256" | "windows1256" => single("WIN1256", "windows-1256")?,
            "win1257" | "windows1257" => single("WIN1257", "windows-1257")?,
            "win1258" | "windows1258" | "abc" | "tcvn" | "tcvn5712" | "vscii" => {
                single("WIN1258", "windows-1258")?
            }
            _ => return Err(EncodingError::Unsupported(value.to_string())),
        })
    }

    /// The name the gateway sends the server (and compares its reports with).
    pub fn name(self) -> &'static str {
        match self {
            ClientEncoding::Utf8 => "UTF8",
            ClientEncoding::SqlAscii => "SQL_ASCII",
            ClientEncoding::Latin1 => "LATIN1",
            ClientEncoding::SingleByte(name, _) => name,
        }
    }

    /// Whether a value the server reports names this encoding.
    pub fn is(self, reported: &str) -> bool {
        ClientEncoding::parse(reported).is_ok_and(|e| e.name() == self.name())
    }

    /// The text of `raw` as the server will read it; `None` when the bytes are not valid in this
    /// encoding (the server refuses such text too).
    pub fn decode(self, raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            ClientEncoding::Utf8 | ClientEncoding::SqlAscii => std::str::from_utf8(raw)
                .ok()
                .map(std::borrow::Cow::Borrowed),
            ClientEncoding::Latin1 => Some(if raw.is_ascii() {
                std::borrow::Cow::Borrowed(std::str::from_utf8(raw).ok()?)
            } else {
                std::borrow::Cow::Owned(raw.iter().map(|&b| char::from(b)).collect())
            }),
            ClientEncoding::SingleByte(_, e) => {
                e.decode_without_bom_handling_and_without_replacement(raw)
            }
        }
    }
}

/// PostgreSQL's rule for the byte length of the character starting at a byte.
pub type CharLen = fn(&[u8]) -> usize;

/// The multibyte encodings a server could be switched to behind the gateway's back (by server-side
/// code), each with PostgreSQL's rule for the length of the character starting at a byte.
pub const FOREIGN_READINGS: &[(&str, CharLen)] = &[
    ("SJIS", sjis_len),
    ("BIG5", two_if_high),
    ("GBK", two_if_high),
    ("UHC", two_if_high),
    ("GB18030", gb18030_len),
    ("JOHAB", johab_len),
];

fn two_if_high(s: &[u8]) -> usize {
    if s[0] & 0x80 != 0 { 2 } else { 1 }
}

fn sjis_len(s: &[u8]) -> usize {
    match s[0] {
        // Half-width katakana: one byte.
        0xa1..=0xdf => 1,
        b if b & 0x80 != 0 => 2,
        _ => 1,
    }
}

fn gb18030_len(s: &[u8]) -> usize {
    if s[0] & 0x80 == 0 {
        1
    } else if s.get(1).is_some_and(|b| (0x30..=0x39).contains(b)) {
        4
    } else {
        2
    }
}

fn johab_len(s: &[u8]) -> usize {
    match s[0] {
        0x8e => 2,
        0x8f => 3,
        b if b & 0x80 != 0 => 2,
        _ => 1,
    }
}

/// `raw` as the lexer would see it under a multibyte encoding with character lengths `len`:
/// ASCII bytes that stand alone are kept, every multibyte character becomes one placeholder
/// letter. `None` when no ASCII byte is swallowed by a multibyte character (the reading then has
/// the same structure as the text itself).
pub fn foreign_reading(raw: &[u8], len: CharLen) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut swallowed = false;
    let mut i = 0;
    while i < raw.len() {
        let n = len(&raw[i..]).max(1);
        if n == 1 {
            if raw[i] & 0x80 != 0 {
                out.push('\u{e9}');
            } else {
                out.push(char::from(raw[i]));
            }
        } else {
            let end = (i + n).min(raw.len());
            swallowed |= raw[i + 1..end].iter().any(|b| b & 0x80 == 0);
            out.push('\u{e9}');
        }
        i += n;
    }
    swallowed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_like_postgres_and_unsafe_ones_are_refused() {
        assert_eq!(ClientEncoding::parse("UTF-8"), Ok(ClientEncoding::Utf8));
        assert_eq!(ClientEncoding::parse("unicode"), Ok(ClientEncoding::Utf8));
        assert_eq!(
            ClientEncoding::parse("SQL_ASCII"),
            Ok(ClientEncoding::SqlAscii)
        );
        assert_eq!(
            ClientEncoding::parse("iso-8859-1"),
            Ok(ClientEncoding::Latin1)
        );
        assert_eq!(ClientEncoding::parse("LATIN2").unwrap().name(), "LATIN2");
        for bad in [
            "GBK",
            "sjis",
            "Shift_JIS",
            "BIG5",
            "win936",
            "GB18030",
            "UHC",
            "johab",
        ] {
            assert!(
                matches!(ClientEncoding::parse(bad), Err(EncodingError::Unsafe(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            ClientEncoding::parse("EUC_JP"),
            Err(EncodingError::Unsupported(_))
        ));
        assert!(ClientEncoding::Utf8.is("UTF8"));
        assert!(!ClientEncoding::Utf8.is("GBK"));
    }

    #[test]
    fn decoding_follows_the_encoding() {
        assert_eq!(ClientEncoding::Utf8.decode(b"caf\xc3\xa9").unwrap(), "café");
        assert!(ClientEncoding::Utf8.decode(b"caf\xe9").is_none());
        assert_eq!(ClientEncoding::Latin1.decode(b"caf\xe9").unwrap(), "café");
        let latin2 = ClientEncoding::parse("latin2").unwrap();
        assert_eq!(latin2.decode(b"\xb1").unwrap(), "ą");
    }

    #[test]
    fn a_backslash_swallowed_by_gbk_is_seen() {
        // 中 in UTF-8 is E4 B8 AD; GBK pairs E4 B8 and then AD with the backslash.
        let raw = "E'中\\'; DELETE".as_bytes();
        let gbk = foreign_reading(raw, two_if_high).expect("a byte is swallowed");
        assert!(!gbk.contains('\\'), "{gbk}");
        // Latin text keeps its ASCII bytes under every reading.
        assert_eq!(foreign_reading("'é a'".as_bytes(), two_if_high), None);
    }
}
