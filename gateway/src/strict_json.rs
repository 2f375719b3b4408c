//! JSON read one way only, for bodies whose meaning the gateway decides on before a server reads
//! them: parsers differ on which of two equal keys wins (Go's `encoding/json` and Python take the
//! last, others the first), so an object with a key twice, at any depth, is refused. serde_json
//! already refuses what else could be read two ways: a byte order mark, trailing bytes, lone
//! surrogates, invalid UTF-8, non-finite numbers, and nesting deeper than 128.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses a body: `Ok(None)` when it is empty (whitespace only).
pub fn parse(body: &[u8]) -> Result<Option<Value>, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<StrictValue>(body).map(|v| Some(v.0))
}

/// A JSON value whose objects have no key twice.
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("the key {key:?} appears twice")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_that_reads_two_ways_is_refused() {
        for body in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"x":{"b":[{"c":1,"c":1}]}}"#,
            "\u{feff}{}".as_bytes(),
            br#"{} {}"#,
            br#"["\ud800"]"#,
            b"[\"\xff\"]",
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        assert!(
            parse(br#"{"a":1,"a":2}"#)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert_eq!(parse(b" \n").unwrap(), None);
        assert_eq!(
            parse(br#"{"a":[1,{"b":null}]}"#).unwrap(),
            Some(serde_json::json!({"a": [1, {"b": null}]}))
        );
    }
}
