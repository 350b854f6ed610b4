//! The values of the Watchman protocol, as one type for both encodings:
//! JSON (a line per PDU) and BSER (`serde_bser`). File names are bytes:
//! BSER carries them losslessly as byte strings; JSON, which cannot, gets
//! them as UTF-8 with invalid bytes replaced (what Watchman itself does).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// Nesting deeper than this is refused (a request is small).
pub const DEPTH_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Str(String),
    Bytes(Vec<u8>),
    Array(Vec<Val>),
    /// In insertion order (Watchman's responses are small objects).
    Object(Vec<(String, Val)>),
}

impl Val {
    pub fn obj<const N: usize>(pairs: [(&str, Val); N]) -> Val {
        Val::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> Val {
        Val::Str(s.into())
    }

    /// A path: a string if it is UTF-8, else bytes.
    pub fn path(p: &[u8]) -> Val {
        match std::str::from_utf8(p) {
            Ok(s) => Val::Str(s.to_string()),
            Err(_) => Val::Bytes(p.to_vec()),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Val> {
        match self {
            Val::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn set(&mut self, key: &str, v: Val) {
        if let Val::Object(m) = self {
            match m.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = v,
                None => m.push((key.to_string(), v)),
            }
        }
    }

    /// A string or byte string, as bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Val::Str(s) => Some(s.as_bytes()),
            Val::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A string (a byte string that is UTF-8 counts).
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    pub fn as_array(&self) -> Option<&[Val]> {
        match self {
            Val::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Real(r) if r.fract() == 0.0 && r.abs() < 9.0e15 => Some(*r as i64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The JSON form (byte strings become text, invalid bytes replaced).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Val::Null => J::Null,
            Val::Bool(b) => J::Bool(*b),
            Val::Int(i) => J::from(*i),
            Val::Real(r) => serde_json::Number::from_f64(*r).map_or(J::Null, J::Number),
            Val::Str(s) => J::String(s.clone()),
            Val::Bytes(b) => J::String(String::from_utf8_lossy(b).into_owned()),
            Val::Array(a) => J::Array(a.iter().map(Val::to_json).collect()),
            Val::Object(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }
}

impl Serialize for Val {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::Null => s.serialize_unit(),
            Val::Bool(b) => s.serialize_bool(*b),
            Val::Int(i) => s.serialize_i64(*i),
            Val::Real(r) => s.serialize_f64(*r),
            Val::Str(v) => s.serialize_str(v),
            Val::Bytes(b) => s.serialize_bytes(b),
            Val::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Val::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// BSER version 1 has no UTF-8 string type (0x0d came with version 2):
/// every string, keys included, is sent as a byte string.
pub struct AsV1<'a>(pub &'a Val);

struct BytesKey<'a>(&'a str);

impl Serialize for BytesKey<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_bytes())
    }
}

impl Serialize for AsV1<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Val::Str(v) => s.serialize_bytes(v.as_bytes()),
            Val::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&AsV1(v))?;
                }
                seq.end()
            }
            Val::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(&BytesKey(k), &AsV1(v))?;
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

struct ValVisitor {
    depth: usize,
}

/// Deserialises one level deeper (bounded by [`DEPTH_MAX`]).
struct Nested(usize);

impl<'de> de::DeserializeSeed<'de> for Nested {
    type Value = Val;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        if self.0 > DEPTH_MAX {
            return Err(de::Error::custom("nested too deeply"));
        }
        d.deserialize_any(ValVisitor { depth: self.0 })
    }
}

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Watchman value")
    }
    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val, E> {
        i64::try_from(v)
            .map(Val::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val, E> {
        Ok(Val::Real(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val, E> {
        Ok(Val::Str(v.to_string()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Val, E> {
        // BSER byte strings: text when they are UTF-8 (clients send
        // command names and paths this way).
        Ok(Val::path(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Nested(self.depth + 1))? {
            out.push(v);
        }
        Ok(Val::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        let mut out: Vec<(String, Val)> = Vec::new();
        while let Some(k) = map.next_key_seed(Nested(self.depth + 1))? {
            let key = match k {
                Val::Str(s) => s,
                Val::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                _ => return Err(de::Error::custom("object keys must be strings")),
            };
            let v = map.next_value_seed(Nested(self.depth + 1))?;
            out.push((key, v));
        }
        Ok(Val::Object(out))
    }
}

impl<'de> Deserialize<'de> for Val {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Val, D::Error> {
        d.deserialize_any(ValVisitor { depth: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_both_encodings() {
        let v = Val::obj([
            ("a", Val::Int(-5)),
            (
                "b",
                Val::Array(vec![Val::Bool(true), Val::Null, Val::Real(1.5)]),
            ),
            ("name", Val::Bytes(b"bad\xff\nname".to_vec())),
            ("big", Val::Int(1 << 40)),
        ]);
        let bser = serde_bser::ser::serialize(Vec::new(), &v).unwrap();
        let back: Val = serde_bser::from_slice(&bser).unwrap();
        assert_eq!(back, v);
        let json = serde_json::to_string(&v.to_json()).unwrap();
        let back: Val = serde_json::from_str(&json).unwrap();
        assert_eq!(back.get("a"), Some(&Val::Int(-5)));
        assert_eq!(
            back.get("name").and_then(Val::as_str),
            Some("bad\u{fffd}\nname")
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(serde_json::from_str::<Val>(&deep).is_err());
    }
}
