//! Indexed search (DESIGN §4): data fields a definition declares under `index:`, the bytes
//! their values are kept under, and the filters `ListInstances` answers from them.
//!
//! A definition says which data fields are indexed and with what type (`index: { customer_id:
//! string, amount: number }`). Apply keeps, for every instance of a version that declares a
//! field, one entry per field whose value has the declared type: (workflow, field, encoded
//! value, instance id). The encoding sorts as the values do (numbers numerically, strings by
//! their UTF-8 bytes), so equality, ranges and prefixes are each one range of keys. Strings
//! are kept to their first [`INDEX_VALUE_BYTES_MAX`] bytes: a scan may then return more than
//! matches, never fewer, and every candidate is checked against the filter itself.

use serde_json::Value;

use crate::definition::IndexType;

/// Most indexed fields per definition.
pub const INDEX_FIELDS_MAX: usize = 8;
/// Longest indexed field name (a top-level data field or a dotted path), in bytes.
pub const INDEX_FIELD_NAME_MAX: usize = 64;
/// Bytes of a string value kept in its index entry.
pub const INDEX_VALUE_BYTES_MAX: usize = 256;
/// Most data filters in one list request.
pub const DATA_FILTERS_MAX: usize = 8;

const TAG_NUMBER: u8 = b'n';
const TAG_STRING: u8 = b's';

/// A value as indexed.
#[derive(Clone, Debug, PartialEq)]
pub enum IndexValue {
    Number(f64),
    String(String),
}

impl IndexValue {
    /// The bytes it is kept under: they sort as the values do.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            IndexValue::Number(n) => {
                // IEEE 754 bits made to sort as the numbers: flip every bit of a negative,
                // the sign bit of a positive (-0.0 and 0.0 are one value).
                let n = if *n == 0.0 { 0.0 } else { *n };
                let bits = n.to_bits();
                let sortable = if bits >> 63 == 1 {
                    !bits
                } else {
                    bits | (1 << 63)
                };
                let mut out = vec![TAG_NUMBER];
                out.extend_from_slice(&sortable.to_be_bytes());
                out
            }
            IndexValue::String(s) => {
                let mut out = vec![TAG_STRING];
                out.extend(string_bytes(s));
                out.push(0);
                out
            }
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            IndexValue::Number(_) => "number",
            IndexValue::String(_) => "string",
        }
    }
}

/// A string's bytes in its entry: cut to the bound on a character boundary, NUL (the
/// terminator) kept as 0x01 (a candidate, checked exactly).
fn string_bytes(s: &str) -> impl Iterator<Item = u8> + '_ {
    let mut end = s.len().min(INDEX_VALUE_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.as_bytes()[..end].iter().map(|&b| b.max(1))
}

/// The value at `path` (dot-separated) in `data`, when it has type `ty`.
pub fn value_at(data: &Value, path: &str, ty: IndexType) -> Option<IndexValue> {
    let mut v = data;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    match (ty, v) {
        (IndexType::Number, Value::Number(n)) => n.as_f64().map(IndexValue::Number),
        (IndexType::String, Value::String(s)) => Some(IndexValue::String(s.clone())),
        _ => None,
    }
}

/// The entries of an instance's data for a definition's index: (field, encoded value).
pub fn entries<'a>(
    index: &'a std::collections::BTreeMap<String, IndexType>,
    data: &'a Value,
) -> impl Iterator<Item = (&'a str, Vec<u8>)> + 'a {
    index
        .iter()
        .filter_map(|(field, ty)| Some((field.as_str(), value_at(data, field, *ty)?.encode())))
}

/// The instance id of an entry key, given the length of its (workflow, field) prefix.
pub fn entry_id(key: &[u8], prefix_len: usize) -> Option<String> {
    let rest = key.get(prefix_len..)?;
    let id = match *rest.first()? {
        TAG_NUMBER => rest.get(9..)?,
        TAG_STRING => &rest[rest.iter().position(|&b| b == 0)? + 1..],
        _ => return None,
    };
    String::from_utf8(id.to_vec()).ok()
}

/// How a filter compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
    Prefix,
}

impl Op {
    pub fn parse(text: &str) -> Result<Op, String> {
        Ok(match text {
            "eq" | "=" | "==" => Op::Eq,
            "lt" | "<" => Op::Lt,
            "le" | "<=" => Op::Le,
            "gt" | ">" => Op::Gt,
            "ge" | ">=" => Op::Ge,
            "prefix" | "^=" => Op::Prefix,
            other => {
                return Err(format!(
                    "`{other}` is not a comparison; use eq, lt, le, gt, ge or prefix (=, <, <=, >, >=, ^=)"
                ));
            }
        })
    }
}

/// One condition on an indexed data field.
#[derive(Clone, Debug, PartialEq)]
pub struct DataFilter {
    pub field: String,
    pub ty: IndexType,
    pub op: Op,
    pub value: IndexValue,
}

impl DataFilter {
    /// A filter on `field` (indexed with type `ty`) comparing with `value_json` (a JSON
    /// number for a number field; a JSON string, or bare text, for a string field).
    pub fn new(field: &str, ty: IndexType, op: Op, value_json: &str) -> Result<DataFilter, String> {
        let parsed: Option<Value> = serde_json::from_str(value_json).ok();
        let value = match (ty, parsed) {
            (IndexType::Number, Some(Value::Number(n))) => {
                IndexValue::Number(n.as_f64().ok_or("number out of range")?)
            }
            (IndexType::Number, _) => {
                return Err(format!(
                    "`{field}` is indexed as a number; compare it with a number, not `{value_json}`"
                ));
            }
            (IndexType::String, Some(Value::String(s))) => IndexValue::String(s),
            (IndexType::String, Some(Value::Number(_) | Value::Bool(_) | Value::Null))
            | (IndexType::String, None) => IndexValue::String(value_json.to_string()),
            (IndexType::String, Some(_)) => {
                return Err(format!(
                    "`{field}` is indexed as a string; compare it with a string, not `{value_json}`"
                ));
            }
        };
        if op == Op::Prefix && ty != IndexType::String {
            return Err(format!(
                "`{field}` is a number: prefix compares strings; use a range (ge and lt) instead"
            ));
        }
        Ok(DataFilter {
            field: field.to_string(),
            ty,
            op,
            value,
        })
    }

    /// Whether `data` passes the filter (a missing value, or one of another type, does not).
    pub fn matches(&self, data: &Value) -> bool {
        let Some(v) = value_at(data, &self.field, self.ty) else {
            return false;
        };
        match (&v, &self.value) {
            (IndexValue::Number(a), IndexValue::Number(b)) => match self.op {
                Op::Eq => a == b,
                Op::Lt => a < b,
                Op::Le => a <= b,
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Prefix => false,
            },
            (IndexValue::String(a), IndexValue::String(b)) => match self.op {
                Op::Eq => a == b,
                Op::Lt => a < b,
                Op::Le => a <= b,
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Prefix => a.starts_with(b.as_str()),
            },
            _ => false,
        }
    }

    /// The range of encoded values (after the (workflow, field) prefix) holding every
    /// candidate: from `start` (inclusive) to `end` (exclusive; `None`: the prefix's end).
    pub fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let tag = match self.value {
            IndexValue::Number(_) => TAG_NUMBER,
            IndexValue::String(_) => TAG_STRING,
        };
        let type_start = vec![tag];
        let type_end = Some(vec![tag + 1]);
        let point = self.value.encode();
        // For a string, the bytes without the terminator: every string that starts with them.
        let stem: Vec<u8> = match &self.value {
            IndexValue::String(s) => std::iter::once(TAG_STRING).chain(string_bytes(s)).collect(),
            IndexValue::Number(_) => point.clone(),
        };
        let after = |mut k: Vec<u8>| {
            k.push(0xff);
            k
        };
        match self.op {
            Op::Eq => (point.clone(), Some(after(point))),
            Op::Prefix => (stem.clone(), Some(after(stem))),
            // Truncated strings may tie with the bound: keep ties (checked exactly later).
            Op::Lt | Op::Le => (type_start, Some(after(stem))),
            Op::Gt | Op::Ge => (stem, type_end),
        }
    }

    /// The filter as written, for messages.
    pub fn describe(&self) -> String {
        let op = match self.op {
            Op::Eq => "=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Prefix => "^=",
        };
        let value = match &self.value {
            IndexValue::Number(n) => n.to_string(),
            IndexValue::String(s) => format!("{s:?}"),
        };
        format!("{}{op}{value} ({})", self.field, self.value.type_name())
    }
}

/// Checks a definition's `index:` names: 1 to 64 bytes of letters, digits, `_`, `-`, and `.`
/// between path segments.
pub fn check_field_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= INDEX_FIELD_NAME_MAX
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an indexable field name: use 1 to {INDEX_FIELD_NAME_MAX} letters, digits, `_` or `-`, with `.` between the segments of a nested field"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encoded_values_sort_as_the_values() {
        let numbers = [
            -1e300, -2.5, -1.0, -0.0, 0.0, 1e-9, 1.0, 2.5, 10_000.0, 1e300,
        ];
        let encoded: Vec<Vec<u8>> = numbers
            .iter()
            .map(|n| IndexValue::Number(*n).encode())
            .collect();
        assert!(encoded.windows(2).all(|w| w[0] <= w[1]), "{encoded:?}");
        assert_eq!(encoded[3], encoded[4], "-0 and 0 are one value");
        let strings = ["", "a", "ab", "b", "é"];
        let encoded: Vec<Vec<u8>> = strings
            .iter()
            .map(|s| IndexValue::String((*s).into()).encode())
            .collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
    }

    fn entry(value: &IndexValue, id: &str) -> Vec<u8> {
        let mut k = b"prefix".to_vec();
        k.extend(value.encode());
        k.extend(id.as_bytes());
        k
    }

    #[test]
    fn every_match_lies_within_the_bounds_and_ids_come_back() {
        let long = "x".repeat(INDEX_VALUE_BYTES_MAX + 10);
        let values = [
            IndexValue::Number(-3.0),
            IndexValue::Number(0.0),
            IndexValue::Number(10_000.0),
            IndexValue::Number(25_000.5),
            IndexValue::String("C-1".into()),
            IndexValue::String("C-10".into()),
            IndexValue::String("C-2".into()),
            IndexValue::String("D".into()),
            IndexValue::String(long.clone()),
            IndexValue::String(format!("{long}y")),
        ];
        let filters = [
            ("amount", IndexType::Number, Op::Ge, "10000"),
            ("amount", IndexType::Number, Op::Lt, "0"),
            ("amount", IndexType::Number, Op::Eq, "25000.5"),
            ("c", IndexType::String, Op::Eq, "\"C-1\""),
            ("c", IndexType::String, Op::Prefix, "C-1"),
            ("c", IndexType::String, Op::Gt, "C-2"),
            ("c", IndexType::String, Op::Le, "C-10"),
            ("c", IndexType::String, Op::Eq, &format!("{long:?}")),
        ];
        for (field, ty, op, text) in filters {
            let f = DataFilter::new(field, ty, op, text).unwrap();
            let (start, end) = f.bounds();
            let (start, end) = (entry_prefix(&start), end.map(|e| entry_prefix(&e)));
            for (n, v) in values.iter().enumerate() {
                let data = match v {
                    IndexValue::Number(x) => json!({ field: x }),
                    IndexValue::String(s) => json!({ field: s }),
                };
                let k = entry(v, &format!("i-{n}"));
                assert_eq!(entry_id(&k, 6).as_deref(), Some(format!("i-{n}").as_str()));
                if f.matches(&data) {
                    let inside = k >= start && end.as_ref().is_none_or(|e| k < *e);
                    assert!(inside, "{} matches {v:?} outside its bounds", f.describe());
                }
            }
        }
    }

    fn entry_prefix(suffix: &[u8]) -> Vec<u8> {
        let mut k = b"prefix".to_vec();
        k.extend_from_slice(suffix);
        k
    }

    #[test]
    fn filters_check_types_and_say_how_to_write_them() {
        let e = DataFilter::new("amount", IndexType::Number, Op::Eq, "lots").unwrap_err();
        assert!(e.contains("indexed as a number"), "{e}");
        let e = DataFilter::new("amount", IndexType::Number, Op::Prefix, "1").unwrap_err();
        assert!(e.contains("use a range"), "{e}");
        let bare = DataFilter::new("c", IndexType::String, Op::Eq, "C-1").unwrap();
        assert!(bare.matches(&json!({"c": "C-1"})));
        assert!(!bare.matches(&json!({"c": 1})));
        let nested = DataFilter::new("customer.id", IndexType::String, Op::Eq, "7").unwrap();
        assert!(nested.matches(&json!({"customer": {"id": "7"}})));
        assert!(Op::parse("~").unwrap_err().contains("prefix"));
        assert!(check_field_name("customer.id").is_ok());
        assert!(check_field_name("a..b").is_err());
    }
}
