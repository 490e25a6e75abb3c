//! Masking secret values found in step outputs, errors and log lines.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::{Secret, SecretValues};

/// Shorter values are not masked: masking `"1"` or `"on"` would mangle unrelated text, and such
/// values are not secrets worth the name.
pub const MIN_MASKED_LEN: usize = 6;

/// What a masked secret is replaced with.
const MASK: &str = "[redacted]";

/// Masks every occurrence of the secrets it knows in text and JSON values.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Plaintexts and their common encodings, longest first so overlapping secrets mask fully.
    needles: Vec<Secret>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} needles)", self.needles.len())
    }
}

impl Redactor {
    /// A redactor for a credential's values.
    pub fn new(values: &SecretValues) -> Self {
        let mut r = Redactor::default();
        r.add_all(values);
        r
    }

    /// Adds a credential's values.
    pub fn add_all(&mut self, values: &SecretValues) {
        for v in values.values() {
            self.add(v);
        }
    }

    /// Adds one secret (and its base64 form, as it appears inside Basic auth headers).
    pub fn add(&mut self, secret: &Secret) {
        let s = secret.expose();
        if s.chars().count() < MIN_MASKED_LEN {
            return;
        }
        for n in [s.to_string(), STANDARD.encode(s)] {
            if !self.needles.iter().any(|x| x.expose() == n) {
                self.needles.push(Secret::new(n));
            }
        }
        self.needles
            .sort_by_key(|n| std::cmp::Reverse(n.expose().len()));
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every known secret masked.
    pub fn text(&self, text: &str) -> String {
        mask_text(text, self.needles.iter().map(Secret::expose))
    }

    /// Masks every string (and object key) inside `v`, in place; true if anything changed.
    pub fn value(&self, v: &mut Value) -> bool {
        if self.is_empty() {
            return false;
        }
        match v {
            Value::String(s) if self.contains(s) => {
                *s = self.text(s);
                true
            }
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| self.value(item) | changed),
            Value::Object(map) => {
                let mut changed = false;
                if map.keys().any(|k| self.contains(k)) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.text(&k), v);
                    }
                    changed = true;
                }
                for item in map.values_mut() {
                    changed |= self.value(item);
                }
                changed
            }
            _ => false,
        }
    }

    fn contains(&self, s: &str) -> bool {
        self.needles.iter().any(|n| s.contains(n.expose()))
    }
}

/// `text` with every needle replaced by `[redacted]`.
pub fn mask_text<'a>(text: &str, needles: impl Iterator<Item = &'a str>) -> String {
    let mut out = text.to_string();
    for n in needles {
        if !n.is_empty() && out.contains(n) {
            out = out.replace(n, MASK);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_values_keys_and_base64() {
        let mut vals = SecretValues::new();
        vals.insert("token", Secret::new("ghp_canary123"));
        vals.insert("short", Secret::new("abc"));
        let r = Redactor::new(&vals);
        let mut v = json!({
            "headers": {"authorization": "Bearer ghp_canary123"},
            "echo": ["x", format!("Basic {}", STANDARD.encode("ghp_canary123"))],
            "ghp_canary123": 1,
            "abc": "abc stays"
        });
        assert!(r.value(&mut v));
        let s = v.to_string();
        assert!(!s.contains("ghp_canary123"), "{s}");
        assert!(!s.contains(&STANDARD.encode("ghp_canary123")), "{s}");
        assert!(s.contains("abc stays"));
        assert_eq!(
            r.text("token ghp_canary123 failed"),
            "token [redacted] failed"
        );
        let mut clean = json!({"a": "b"});
        assert!(!r.value(&mut clean));
    }

    #[test]
    fn secret_debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2-canary");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        let mut v = SecretValues::new();
        v.insert("token", s);
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
