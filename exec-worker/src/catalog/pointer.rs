//! RFC 6901 JSON pointers, parsed once at build time and resolved per call.
//!
//! `serde_json::Value::pointer` re-splits and re-unescapes the text on every
//! lookup and silently accepts malformed escapes such as `~2`; catalog nodes
//! resolve the same pointer on every request, so they keep the decoded
//! reference tokens instead and refuse malformed pointers at start-up.

use std::fmt;

use serde_json::Value;

/// A parsed JSON pointer (`""` is the whole document, `/a/0/b~1c` a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The pointer as written, for messages.
    text: String,
    /// Decoded reference tokens (`~1` → `/`, `~0` → `~`).
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `text` as an RFC 6901 pointer.
    ///
    /// # Errors
    /// A non-empty pointer not starting with `/`, or a `~` not followed by
    /// `0` or `1`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "JSON pointer `{text}` must be empty (the whole input) or start with `/`"
            ));
        };
        let tokens = rest
            .split('/')
            .map(|raw| {
                unescape(raw).ok_or_else(|| {
                    format!(
                "JSON pointer `{text}`: `~` must be followed by `0` (for `~`) or `1` (for `/`)"
            )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value `self` points at in `doc`, or `None` when there is none.
    ///
    /// Array indices follow RFC 6901: decimal digits without leading zeros;
    /// `-` (one past the end) never resolves.
    pub fn resolve<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.tokens.iter().try_fold(doc, |v, token| match v {
            Value::Object(map) => map.get(token),
            Value::Array(items) => array_index(token).and_then(|i| items.get(i)),
            _ => None,
        })
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0" || (!token.starts_with('0') && !token.is_empty());
    if canonical && token.bytes().all(|b| b.is_ascii_digit()) {
        token.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get<'v>(p: &str, doc: &'v Value) -> Option<&'v Value> {
        Pointer::parse(p).unwrap().resolve(doc)
    }

    #[test]
    fn empty_pointer_is_the_whole_document() {
        let doc = json!({"a": 1});
        assert_eq!(get("", &doc), Some(&doc));
    }

    #[test]
    fn rfc6901_examples_resolve() {
        let doc = json!({
            "foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3,
            "g|h": 4, "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8
        });
        assert_eq!(get("/foo", &doc), Some(&json!(["bar", "baz"])));
        assert_eq!(get("/foo/0", &doc), Some(&json!("bar")));
        assert_eq!(get("/", &doc), Some(&json!(0)));
        assert_eq!(get("/a~1b", &doc), Some(&json!(1)));
        assert_eq!(get("/c%d", &doc), Some(&json!(2)));
        assert_eq!(get("/ ", &doc), Some(&json!(7)));
        assert_eq!(get("/m~0n", &doc), Some(&json!(8)));
    }

    #[test]
    fn non_canonical_or_out_of_range_indices_do_not_resolve() {
        let doc = json!([10, 20]);
        assert_eq!(get("/1", &doc), Some(&json!(20)));
        assert_eq!(get("/01", &doc), None);
        assert_eq!(get("/2", &doc), None);
        assert_eq!(get("/-", &doc), None);
        assert_eq!(get("/+1", &doc), None);
        assert_eq!(get("/", &doc), None);
    }

    #[test]
    fn descending_into_a_scalar_does_not_resolve() {
        assert_eq!(get("/a/b", &json!({"a": "text"})), None);
    }

    #[test]
    fn malformed_pointers_are_refused() {
        assert!(Pointer::parse("a/b")
            .unwrap_err()
            .contains("start with `/`"));
        assert!(Pointer::parse("/a~2").unwrap_err().contains('~'));
        assert!(Pointer::parse("/a~").is_err());
    }
}
