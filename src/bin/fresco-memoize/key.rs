//! Keys given as JSON on the command line.
//!
//! A memoizer stores the postcard encoding of its (keyfunc'd) Rust key. postcard writes
//! no field names and no types, so a JSON value finds an entry only if it makes the same
//! serde calls as the Rust key did. [`Key::from_json`] maps JSON to serde calls thus:
//!
//! | JSON                 | serde call          | matches Rust keys of type                      |
//! |----------------------|---------------------|------------------------------------------------|
//! | `42` (0 or more)     | `u64`               | `u16`, `u32`, `u64`, `usize` (`u8` below 128)  |
//! | `-42`                | `i64`               | `i16`, `i32`, `i64`, `isize`, negative values  |
//! | `1.5`                | `f64`               | `f64`                                          |
//! | `"text"`             | `str`               | `String`, `&str`, `char` (one character)       |
//! | `true`               | `bool`              | `bool`                                         |
//! | `[a, b]`             | tuple               | tuples, structs (fields in order), `[T; N]`    |
//! | `{"x": a, "y": b}`   | tuple of the values | structs, fields in declaration order           |
//! | `null`               | unit                | `()`                                           |
//!
//! A one-entry object whose key starts with `$` names the serde type instead, for what
//! plain JSON cannot tell apart: `{"$u8": 7}`, `{"$i64": 5}` (every integer type;
//! `$u128`/`$i128` also take a string), `{"$f32": 1.5}`, `{"$some": v}`,
//! `{"$none": null}`, `{"$seq": [..]}` (`Vec<T>`, `&[T]`: a sequence with a length),
//! `{"$map": [[k, v], ..]}`, `{"$variant": 2}` or `{"$variant": [2, v]}` (an enum
//! variant by index, with its payload).
//!
//! Nothing is guessed: an object with a `$` key and any other key, a plain integer beyond
//! 64 bits and a `$f32` that overflows are errors, not a struct, a float or infinity.

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple};
use serde_json::Value;

/// A key parsed from JSON, ready to serialize as the Rust key it describes.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Unit,
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    U128(u128),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    I128(i128),
    F32(f32),
    F64(f64),
    Str(String),
    Tuple(Vec<Key>),
    Seq(Vec<Key>),
    Map(Vec<(Key, Key)>),
    None,
    Some(Box<Key>),
    UnitVariant(u32),
    Variant(u32, Box<Key>),
}

const TAGS: &str = "$u8 $u16 $u32 $u64 $u128 $i8 $i16 $i32 $i64 $i128 $f32 $f64 $some $none \
                    $seq $map $variant";

impl Key {
    /// Parses JSON text. Errors say what is wrong, in terms of the table above.
    pub fn parse(text: &str) -> Result<Key, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("--key is not JSON: {e}"))?;
        Key::from_json(&value)
    }

    /// Maps a JSON value (see the module docs).
    pub fn from_json(v: &Value) -> Result<Key, String> {
        Ok(match v {
            Value::Null => Key::Unit,
            Value::Bool(b) => Key::Bool(*b),
            Value::Number(n) => number(n)?,
            Value::String(text) => Key::Str(text.clone()),
            Value::Array(items) => Key::Tuple(all(items)?),
            Value::Object(map) => {
                let tags: Vec<&str> = map
                    .keys()
                    .map(String::as_str)
                    .filter(|k| k.starts_with('$'))
                    .collect();
                if let [tag] = tags[..]
                    && map.len() == 1
                {
                    return tagged(&tag[1..], &map[tag]);
                }
                // A struct's fields never start with `$`: several tags, or a tag among
                // fields, is a mistake, not a struct to guess at.
                if !tags.is_empty() {
                    return Err(format!(
                        "an object with a `$` tag must have that one key only, got {}; \
                         nest tags instead, e.g. {{\"$some\": {{\"$u8\": 1}}}}",
                        Value::Object(map.clone())
                    ));
                }
                Key::Tuple(map.values().map(Key::from_json).collect::<Result<_, _>>()?)
            }
        })
    }
}

fn all(items: &[Value]) -> Result<Vec<Key>, String> {
    items.iter().map(Key::from_json).collect()
}

/// A plain JSON number: an integer that fits `u64` or `i64`, or a finite float. An
/// integer literal beyond 64 bits is refused rather than rounded to a float (serde_json's
/// `arbitrary_precision` keeps the literal, so the two can be told apart).
fn number(n: &serde_json::Number) -> Result<Key, String> {
    if let Some(u) = n.as_u64() {
        return Ok(Key::U64(u));
    }
    if let Some(i) = n.as_i64() {
        return Ok(Key::I64(i));
    }
    let text = n.to_string();
    if !text.contains(['.', 'e', 'E']) {
        return Err(format!(
            "{text} does not fit a 64-bit integer; for a 128-bit key write \
             {{\"$u128\": \"{text}\"}} or {{\"$i128\": \"{text}\"}}"
        ));
    }
    n.as_f64()
        .map(Key::F64)
        .ok_or_else(|| format!("{text} is beyond the range of f64"))
}

/// An integer of a tagged type, given as a JSON integer or a string of digits: the
/// literal itself is parsed, so nothing is rounded on the way.
fn int<T: TryFrom<i128>>(tag: &str, v: &Value) -> Result<T, String> {
    let wide: Option<i128> = match v {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    };
    wide.and_then(|w| T::try_from(w).ok())
        .ok_or_else(|| format!("`${tag}` needs an integer in its range, got {v}"))
}

fn float(tag: &str, v: &Value) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("`${tag}` needs a finite number, got {v}"))
}

/// An `f32`: refused if the number overflows it (it would become infinity).
fn float32(v: &Value) -> Result<f32, String> {
    let wide = float("f32", v)?;
    let narrow = wide as f32;
    if narrow.is_infinite() {
        return Err(format!(
            "`$f32` needs a number within f32's range (about ±3.4e38), got {v}"
        ));
    }
    Ok(narrow)
}

fn array<'a>(tag: &str, v: &'a Value) -> Result<&'a [Value], String> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| format!("`${tag}` needs an array, got {v}"))
}

fn tagged(tag: &str, v: &Value) -> Result<Key, String> {
    Ok(match tag {
        "u8" => Key::U8(int(tag, v)?),
        "u16" => Key::U16(int(tag, v)?),
        "u32" => Key::U32(int(tag, v)?),
        "u64" => Key::U64(int(tag, v)?),
        "i8" => Key::I8(int(tag, v)?),
        "i16" => Key::I16(int(tag, v)?),
        "i32" => Key::I32(int(tag, v)?),
        "i64" => Key::I64(int(tag, v)?),
        "i128" => Key::I128(int(tag, v)?),
        // Beyond i128's range: parsed as u128 directly.
        "u128" => Key::U128(
            match v {
                Value::Number(n) => n.to_string().parse().ok(),
                Value::String(text) => text.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("`$u128` needs an integer in its range, got {v}"))?,
        ),
        "f32" => Key::F32(float32(v)?),
        "f64" => Key::F64(float(tag, v)?),
        "none" => Key::None,
        "some" => Key::Some(Box::new(Key::from_json(v)?)),
        "seq" => Key::Seq(all(array(tag, v)?)?),
        "map" => Key::Map(
            array(tag, v)?
                .iter()
                .map(|pair| match pair.as_array().map(Vec::as_slice) {
                    Some([k, v]) => Ok((Key::from_json(k)?, Key::from_json(v)?)),
                    _ => Err(format!("`$map` needs [key, value] pairs, got {pair}")),
                })
                .collect::<Result<_, _>>()?,
        ),
        "variant" => match v {
            Value::Array(parts) => match parts.as_slice() {
                [index, payload] => {
                    Key::Variant(int(tag, index)?, Box::new(Key::from_json(payload)?))
                }
                _ => return Err("`$variant` needs an index or [index, payload]".into()),
            },
            index => Key::UnitVariant(int(tag, index)?),
        },
        other => return Err(format!("unknown key tag `${other}`; known: {TAGS}")),
    })
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Key::Unit => s.serialize_unit(),
            Key::Bool(b) => s.serialize_bool(*b),
            Key::U8(n) => s.serialize_u8(*n),
            Key::U16(n) => s.serialize_u16(*n),
            Key::U32(n) => s.serialize_u32(*n),
            Key::U64(n) => s.serialize_u64(*n),
            Key::U128(n) => s.serialize_u128(*n),
            Key::I8(n) => s.serialize_i8(*n),
            Key::I16(n) => s.serialize_i16(*n),
            Key::I32(n) => s.serialize_i32(*n),
            Key::I64(n) => s.serialize_i64(*n),
            Key::I128(n) => s.serialize_i128(*n),
            Key::F32(n) => s.serialize_f32(*n),
            Key::F64(n) => s.serialize_f64(*n),
            Key::Str(text) => s.serialize_str(text),
            Key::Tuple(items) => {
                let mut t = s.serialize_tuple(items.len())?;
                for item in items {
                    t.serialize_element(item)?;
                }
                t.end()
            }
            Key::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Key::Map(pairs) => {
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Key::None => s.serialize_none(),
            Key::Some(inner) => s.serialize_some(inner),
            Key::UnitVariant(index) => s.serialize_unit_variant("", *index, ""),
            Key::Variant(index, payload) => s.serialize_newtype_variant("", *index, "", payload),
        }
    }
}
