//! Writing JSON by hand, for hot paths: the same bytes `serde_json` writes,
//! without going through `Serialize`. A string is scanned eight bytes at a
//! time for characters that need escaping (most strings have none), which
//! on wasm32 is several times faster than escaping byte by byte.
//!
//! ```
//! use sluice_guest::json;
//! let mut out = Vec::new();
//! out.extend_from_slice(b"{\"n\":");
//! json::write_i64(&mut out, -42);
//! out.extend_from_slice(b",\"s\":");
//! json::write_str(&mut out, "a \"quoted\" word\n");
//! out.push(b'}');
//! assert_eq!(out, br#"{"n":-42,"s":"a \"quoted\" word\n"}"#);
//! ```

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// True when some byte of `w` is zero (no false negatives; a false positive
/// only costs the slow path).
#[inline]
fn has_zero(w: u64) -> bool {
    w.wrapping_sub(ONES) & !w & HIGHS != 0
}

/// True when some byte of `w` may need escaping: a control character, `"`
/// or `\`.
#[inline]
fn may_need_escape(w: u64) -> bool {
    // Bytes below 0x20: subtracting 0x20 borrows into the high bit.
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0;
    control || has_zero(w ^ (ONES * b'"' as u64)) || has_zero(w ^ (ONES * b'\\' as u64))
}

#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Append `s` as a quoted, escaped JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if !may_need_escape(w) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        if needs_escape(b) {
            out.extend_from_slice(&bytes[start..i]);
            escape(out, b);
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// Append an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Append a signed integer.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain ascii, longer than eight bytes".into(),
            "é, ü and 日本 pass through".into(),
            "\"\\\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f} all escapes".into(),
        ];
        // Every byte below 0x80 at every position of a word.
        for b in 0u8..0x80 {
            for at in 0..9 {
                let mut s = "abcdefghijklmnop".to_string();
                s.insert(at, b as char);
                cases.push(s);
            }
        }
        for s in cases {
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
        for v in [0, 7, 10, 99, 12345, i64::MAX, i64::MIN, -1] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
        let mut out = Vec::new();
        write_u64(&mut out, u64::MAX);
        assert_eq!(String::from_utf8(out).unwrap(), u64::MAX.to_string());
    }
}
