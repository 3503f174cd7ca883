//! The file digests of OPA's bundle-signing scheme.
//!
//! Unstructured files (`policy.wasm`, `*.rego`) are hashed as bytes. Structured ones
//! (`data.json`, `data.yaml`, `.manifest`) are hashed over a canonical JSON form so the
//! signature does not depend on whitespace or key order: objects with keys sorted,
//! no whitespace, numbers as written, strings escaped like Go's `encoding/json` without
//! HTML escaping. That is what `opa sign` computes, so bundles signed by either tool
//! verify with the other.

use sha2::{Digest, Sha256};

/// Nesting deeper than this is refused (the parser is recursive).
const MAX_DEPTH: usize = 512;

/// OPA treats these base names as structured documents.
pub fn is_structured(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    matches!(
        base,
        "data.json" | "data.yaml" | ".manifest" | ".signatures.json"
    )
}

/// Hex SHA-256 of a bundle file as OPA computes it.
pub fn file_digest(name: &str, bytes: &[u8]) -> Result<String, String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let hashed = if base == "data.yaml" {
        let value: serde_json::Value =
            yaml_serde::from_slice(bytes).map_err(|e| format!("{name}: {e}"))?;
        canonical(&serde_json::to_vec(&value).map_err(|e| format!("{name}: {e}"))?)
            .map_err(|e| format!("{name}: {e}"))?
    } else if is_structured(name) {
        canonical(bytes).map_err(|e| format!("{name}: {e}"))?
    } else {
        return Ok(hex::encode(Sha256::digest(bytes)));
    };
    Ok(hex::encode(Sha256::digest(hashed)))
}

/// The canonical JSON encoding of `bytes`.
pub fn canonical(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut p = Parser { s: bytes, i: 0 };
    let mut out = Vec::with_capacity(bytes.len());
    p.ws();
    p.value(&mut out, 0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing characters at byte {}", p.i));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, lit: &[u8]) -> Result<(), String> {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(format!("invalid JSON at byte {}", self.i))
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("JSON nested too deeply".into());
        }
        match self.peek() {
            Some(b'{') => self.object(out, depth),
            Some(b'[') => {
                self.i += 1;
                out.push(b'[');
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        self.value(out, depth + 1)?;
                        self.ws();
                        match self.peek() {
                            Some(b',') => {
                                self.i += 1;
                                out.push(b',');
                            }
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("expected , or ] at byte {}", self.i)),
                        }
                    }
                }
                out.push(b']');
                Ok(())
            }
            Some(b'"') => {
                let s = self.string()?;
                encode_string(&s, out);
                Ok(())
            }
            Some(b't') => self
                .expect(b"true")
                .map(|()| out.extend_from_slice(b"true")),
            Some(b'f') => self
                .expect(b"false")
                .map(|()| out.extend_from_slice(b"false")),
            Some(b'n') => self
                .expect(b"null")
                .map(|()| out.extend_from_slice(b"null")),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => Err(format!("invalid JSON at byte {}", self.i)),
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
        self.i += 1;
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(format!("expected a key at byte {}", self.i));
                }
                let key = self.string()?;
                self.ws();
                self.expect(b":")?;
                self.ws();
                let mut v = Vec::new();
                self.value(&mut v, depth + 1)?;
                // Like a Go map: the last duplicate wins.
                members.retain(|(k, _)| *k != key);
                members.push((key, v));
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(format!("expected , or }} at byte {}", self.i)),
                }
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(b'{');
        for (n, (k, v)) in members.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            encode_string(k, out);
            out.push(b':');
            out.extend_from_slice(v);
        }
        out.push(b'}');
        Ok(())
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits = |p: &mut Self| {
            let s = p.i;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i > s
        };
        if !digits(self) {
            return Err(format!("invalid number at byte {start}"));
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !digits(self) {
                return Err(format!("invalid number at byte {start}"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return Err(format!("invalid number at byte {start}"));
            }
        }
        out.extend_from_slice(&self.s[start..self.i]);
        Ok(())
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err("unterminated string".into());
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode()?,
                        _ => return Err(format!("invalid escape at byte {}", self.i)),
                    };
                    let mut tmp = [0u8; 4];
                    buf.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                }
                c if c < 0x20 => {
                    return Err(format!("control character in string at byte {}", self.i));
                }
                c => buf.push(c),
            }
        }
        // Go replaces invalid UTF-8 with U+FFFD; so does from_utf8_lossy.
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or("truncated \\u escape")?;
        let h = std::str::from_utf8(h).map_err(|_| "invalid \\u escape")?;
        let v = u32::from_str_radix(h, 16).map_err(|_| "invalid \\u escape")?;
        self.i += 4;
        Ok(v)
    }

    fn unicode(&mut self) -> Result<char, String> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
            let save = self.i;
            self.i += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return Ok(char::from_u32(c).unwrap_or('\u{FFFD}'));
            }
            self.i = save;
        }
        Ok(char::from_u32(hi).unwrap_or('\u{FFFD}'))
    }
}

/// Go's `encoding/json` string encoding with `SetEscapeHTML(false)`.
fn encode_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_keys_drops_whitespace_and_keeps_number_text() {
        let got = canonical(br#" { "b": [1, 2.50, 1e3], "a": {"y": null, "x": true} } "#).unwrap();
        assert_eq!(got, br#"{"a":{"x":true,"y":null},"b":[1,2.50,1e3]}"#);
    }

    #[test]
    fn escapes_strings_like_go_without_html_escaping() {
        let got = canonical("\"<a&b>\\u0008\\/\u{2028}\\ud83d\\ude00\"".as_bytes()).unwrap();
        assert_eq!(got, "\"<a&b>\\u0008/\\u2028\u{1F600}\"".as_bytes());
    }

    #[test]
    fn whitespace_and_order_do_not_change_the_digest() {
        let a = file_digest("data.json", br#"{"x": 1, "y": [true]}"#).unwrap();
        let b = file_digest("data.json", b"{\"y\":[true],\n\"x\":1}").unwrap();
        assert_eq!(a, b);
        assert_ne!(
            file_digest("policy.wasm", b"\0asm").unwrap(),
            file_digest("policy.wasm", b"\0asn").unwrap()
        );
        assert!(canonical(b"{\"a\":1} x").is_err());
    }
}
