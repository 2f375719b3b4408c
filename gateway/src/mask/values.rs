//! Neutral values by PostgreSQL type, in text and binary format, so that a masked column still
//! parses as its declared type. Types without a neutral value become NULL.

pub(super) const BOOL: u32 = 16;
pub(super) const BYTEA: u32 = 17;
pub(super) const CHAR: u32 = 18;
pub(super) const NAME: u32 = 19;
pub(super) const INT8: u32 = 20;
pub(super) const INT2: u32 = 21;
pub(super) const INT4: u32 = 23;
pub(super) const TEXT: u32 = 25;
pub(super) const OID: u32 = 26;
pub(super) const JSON: u32 = 114;
pub(super) const XML: u32 = 142;
pub(super) const FLOAT4: u32 = 700;
pub(super) const FLOAT8: u32 = 701;
pub(super) const UNKNOWN: u32 = 705;
pub(super) const INET: u32 = 869;
pub(super) const BPCHAR: u32 = 1042;
pub(super) const VARCHAR: u32 = 1043;
pub(super) const DATE: u32 = 1082;
pub(super) const TIME: u32 = 1083;
pub(super) const TIMESTAMP: u32 = 1114;
pub(super) const TIMESTAMPTZ: u32 = 1184;
pub(super) const NUMERIC: u32 = 1700;
pub(super) const UUID: u32 = 2950;
pub(super) const JSONB: u32 = 3802;
pub(super) const TEXT_ARRAY: u32 = 1009;
pub(super) const VARCHAR_ARRAY: u32 = 1015;

/// Types whose values are text that detectors can read: text-ish types in either format (their
/// binary form is the text itself), JSON, XML, and text arrays in text format.
pub fn is_textual(type_oid: u32, binary: bool) -> bool {
    match type_oid {
        TEXT | VARCHAR | BPCHAR | NAME | CHAR | UNKNOWN | JSON | JSONB | XML => true,
        TEXT_ARRAY | VARCHAR_ARRAY => !binary,
        // Extension types (citext, …) have unstable OIDs: in text format they are text.
        t if t >= 16384 => !binary,
        _ => false,
    }
}

/// The neutral value of a type; `None` means NULL.
pub fn replacement(type_oid: u32, binary: bool) -> Option<&'static [u8]> {
    if binary {
        return match type_oid {
            TEXT | VARCHAR | BPCHAR | NAME | UNKNOWN | JSON | XML => Some(b"[masked]"),
            JSONB => Some(b"\x01\"[masked]\""),
            CHAR => Some(b"*"),
            BOOL => Some(&[0]),
            INT2 => Some(&[0; 2]),
            INT4 | OID | FLOAT4 | DATE => Some(&[0; 4]),
            INT8 | FLOAT8 | TIME | TIMESTAMP | TIMESTAMPTZ => Some(&[0; 8]),
            // ndigits 0, weight 0, sign positive, dscale 0: zero.
            NUMERIC => Some(&[0; 8]),
            UUID => Some(&[0; 16]),
            BYTEA => Some(b""),
            _ => None,
        };
    }
    match type_oid {
        TEXT | VARCHAR | BPCHAR | NAME | UNKNOWN => Some(b"[masked]"),
        CHAR => Some(b"*"),
        JSON | JSONB => Some(b"\"[masked]\""),
        XML => Some(b"<masked/>"),
        BOOL => Some(b"f"),
        INT2 | INT4 | INT8 | OID | NUMERIC | FLOAT4 | FLOAT8 => Some(b"0"),
        DATE => Some(b"1970-01-01"),
        TIME => Some(b"00:00:00"),
        TIMESTAMP => Some(b"1970-01-01 00:00:00"),
        TIMESTAMPTZ => Some(b"1970-01-01 00:00:00+00"),
        UUID => Some(b"00000000-0000-0000-0000-000000000000"),
        BYTEA => Some(b"\\x"),
        INET => Some(b"0.0.0.0"),
        // Text-format values of unknown (extension) types: a text mask is the best guess and never
        // leaks; drivers that parse such types strictly get NULL from the entry below instead.
        t if t >= 16384 => Some(b"[masked]"),
        _ => None,
    }
}
