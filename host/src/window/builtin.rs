//! Built-in window aggregates: count, sum, min, max, computed natively.
//!
//! An accumulator is 9 bytes: a tag (0: integer, 1: float) and the number,
//! little-endian. Integers stay integers until a float joins them.

use serde::Serialize;

use super::Window;
use crate::spec::BuiltinAggregate;

/// A built-in aggregate over one field of JSON values (or the value itself).
#[derive(Debug, Clone)]
pub(crate) struct Builtin {
    pub kind: BuiltinAggregate,
    pub field: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn encode(self) -> [u8; 9] {
        let mut b = [0u8; 9];
        match self {
            Num::Int(i) => b[1..].copy_from_slice(&i.to_le_bytes()),
            Num::Float(f) => {
                b[0] = 1;
                b[1..].copy_from_slice(&f.to_le_bytes());
            }
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Num> {
        let n: [u8; 8] = b.get(1..9)?.try_into().ok()?;
        match b.first()? {
            0 => Some(Num::Int(i64::from_le_bytes(n))),
            1 => Some(Num::Float(f64::from_le_bytes(n))),
            _ => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn combine(self, other: Num, kind: BuiltinAggregate) -> Num {
        match (kind, self, other) {
            (BuiltinAggregate::Count | BuiltinAggregate::Sum, Num::Int(a), Num::Int(b)) => match a.checked_add(b) {
                Some(s) => Num::Int(s),
                None => Num::Float(a as f64 + b as f64),
            },
            (BuiltinAggregate::Count | BuiltinAggregate::Sum, a, b) => Num::Float(a.as_f64() + b.as_f64()),
            (BuiltinAggregate::Min, Num::Int(a), Num::Int(b)) => Num::Int(a.min(b)),
            (BuiltinAggregate::Min, a, b) => Num::Float(a.as_f64().min(b.as_f64())),
            (BuiltinAggregate::Max, Num::Int(a), Num::Int(b)) => Num::Int(a.max(b)),
            (BuiltinAggregate::Max, a, b) => Num::Float(a.as_f64().max(b.as_f64())),
        }
    }
}

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Num::Int(i) => s.serialize_i64(i),
            Num::Float(f) => s.serialize_f64(f),
        }
    }
}

impl Builtin {
    fn number(&self, value: &[u8]) -> Result<Num, String> {
        let n = match &self.field {
            None => serde_json::from_slice::<serde_json::Number>(value)
                .map_err(|_| format!("the value is not a number (aggregate `{}` without `field`)", self.name()))?,
            Some(f) => {
                let doc: serde_json::Value = serde_json::from_slice(value).map_err(|e| format!("the value is not JSON: {e}"))?;
                match doc.get(f) {
                    Some(serde_json::Value::Number(n)) => n.clone(),
                    Some(_) => return Err(format!("field `{f}` is not a number")),
                    None => return Err(format!("field `{f}` is missing")),
                }
            }
        };
        Ok(match n.as_i64() {
            Some(i) => Num::Int(i),
            None => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
        })
    }

    /// The aggregate's name, used as the result field.
    pub fn name(&self) -> &'static str {
        match self.kind {
            BuiltinAggregate::Count => "count",
            BuiltinAggregate::Sum => "sum",
            BuiltinAggregate::Min => "min",
            BuiltinAggregate::Max => "max",
        }
    }

    /// Add a record's value to an accumulator (none: a new one).
    pub fn add(&self, acc: Option<&[u8]>, value: &[u8]) -> Result<[u8; 9], String> {
        let x = match self.kind {
            BuiltinAggregate::Count => Num::Int(1),
            _ => self.number(value)?,
        };
        Ok(match acc.and_then(Num::decode) {
            None => x,
            Some(a) => a.combine(x, self.kind),
        }
        .encode())
    }

    /// Merge two accumulators.
    pub fn merge(&self, a: &[u8], b: &[u8]) -> [u8; 9] {
        match (Num::decode(a), Num::decode(b)) {
            (Some(a), Some(b)) => a.combine(b, self.kind).encode(),
            (Some(x), None) | (None, Some(x)) => x.encode(),
            (None, None) => Num::Int(0).encode(),
        }
    }

    /// The result record's value: `{"key", "start", "end", <name>}`; a
    /// global window has null bounds.
    pub fn result(&self, key: &[u8], w: &Window, acc: &[u8]) -> Vec<u8> {
        let n = Num::decode(acc).unwrap_or(Num::Int(0));
        let bounds = (!w.is_global()).then_some((w.start, w.end));
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"{\"key\":");
        let _ = serde_json::to_writer(&mut out, &String::from_utf8_lossy(key));
        out.extend_from_slice(b",\"start\":");
        let _ = serde_json::to_writer(&mut out, &bounds.map(|b| b.0));
        out.extend_from_slice(b",\"end\":");
        let _ = serde_json::to_writer(&mut out, &bounds.map(|b| b.1));
        out.extend_from_slice(b",\"");
        out.extend_from_slice(self.name().as_bytes());
        out.extend_from_slice(b"\":");
        let _ = serde_json::to_writer(&mut out, &n);
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_stay_integers_until_a_float_arrives() {
        let b = Builtin {
            kind: BuiltinAggregate::Sum,
            field: Some("x".into()),
        };
        let a = b.add(None, br#"{"x": 2}"#).unwrap();
        let a = b.add(Some(&a), br#"{"x": 3}"#).unwrap();
        let w = Window { start: 0, end: 10 };
        assert_eq!(b.result(b"k", &w, &a), br#"{"key":"k","start":0,"end":10,"sum":5}"#);
        let a = b.add(Some(&a), br#"{"x": 0.5}"#).unwrap();
        assert_eq!(b.result(b"k", &w, &a), br#"{"key":"k","start":0,"end":10,"sum":5.5}"#);
        assert!(b.add(Some(&a), br#"{"y": 1}"#).unwrap_err().contains("`x` is missing"));
        let m = Builtin {
            kind: BuiltinAggregate::Max,
            field: None,
        };
        let x = m.merge(&m.add(None, b"7").unwrap(), &m.add(None, b"-2").unwrap());
        assert_eq!(
            m.result(b"k", &Window::GLOBAL, &x),
            br#"{"key":"k","start":null,"end":null,"max":7}"#
        );
    }
}
