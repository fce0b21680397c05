//! A pre-scan of a JSON body's shape, before any `serde_json::Value` is
//! built: a `Value` costs tens of bytes per element whatever the input's
//! size (`[0,0,0,…]` is two bytes an element), so the nesting depth and the
//! number of elements are checked on the bytes first.
//!
//! ```text
//! bytes ─▶ one pass, O(1) memory: strings skipped (escapes honoured),
//!          depth on `[`/`{`, an element at each first item and each `,`
//!       ─▶ Ok, or the first limit exceeded
//! ```
//!
//! The scan only counts; it does not validate. Whatever it lets through is
//! parsed by `serde_json`, which refuses malformed JSON itself.

/// A limit a body exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeError {
    /// Arrays and objects nested deeper than the limit.
    TooDeep { limit: usize },
    /// More array items plus object members than the limit.
    TooManyElements { limit: usize },
}

/// Checks that `body` nests at most `max_depth` arrays/objects and holds at
/// most `max_elements` array items plus object members, counted over the
/// whole body.
///
/// # Errors
/// The first limit exceeded, found as soon as the scan passes it.
pub fn check(body: &[u8], max_depth: usize, max_elements: usize) -> Result<(), ShapeError> {
    let mut depth = 0usize;
    let mut elements = 0usize;
    // After `[`, `{` or `,`: the next significant byte starts an element,
    // unless it closes an empty container.
    let mut expect_item = false;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if expect_item {
            expect_item = false;
            if b != b']' && b != b'}' {
                elements += 1;
                if elements > max_elements {
                    return Err(ShapeError::TooManyElements {
                        limit: max_elements,
                    });
                }
            }
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(ShapeError::TooDeep { limit: max_depth });
                }
                expect_item = true;
            }
            // Unbalanced closers are malformed JSON, which serde refuses.
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => expect_item = true,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(s: &str) -> Result<(), ShapeError> {
        check(s.as_bytes(), 3, 5)
    }

    #[test]
    fn nesting_up_to_the_limit_passes_and_one_more_is_refused() {
        assert_eq!(shape(r#"[[["a"]]]"#), Ok(()));
        assert_eq!(shape(r#"{"a":{"b":[1]}}"#), Ok(()));
        assert_eq!(shape("[[[[]]]]"), Err(ShapeError::TooDeep { limit: 3 }));
    }

    #[test]
    fn items_and_members_count_over_the_whole_body() {
        assert_eq!(shape("[1,2,3,4,5]"), Ok(()));
        assert_eq!(shape("[]"), Ok(()));
        assert_eq!(shape("{}"), Ok(()));
        assert_eq!(
            shape("[1,2,3,4,5,6]"),
            Err(ShapeError::TooManyElements { limit: 5 })
        );
        // Two members, each an array of two items: six elements.
        assert_eq!(
            shape(r#"{"a":[1,2],"b":[3,4]}"#),
            Err(ShapeError::TooManyElements { limit: 5 })
        );
        assert_eq!(shape(r#"{"a":[1,2],"b":[3]}"#), Ok(()));
    }

    #[test]
    fn brackets_and_commas_inside_strings_are_not_structure() {
        assert_eq!(shape(r#"["[[[[,,,,,,]]]]"]"#), Ok(()));
        assert_eq!(shape(r#"["a\"[[[[,,,,,,", "b"]"#), Ok(()));
        assert_eq!(
            shape(r#"["\\", [[[1]]]]"#),
            Err(ShapeError::TooDeep { limit: 3 })
        );
    }

    #[test]
    fn hostile_bytes_never_panic() {
        for body in [
            &b"]]]]}}}}"[..],
            b"\"unterminated",
            b"\\\\\\",
            b"\xff\xfe[",
            b"",
            b",,,,",
        ] {
            let _ = check(body, 3, 5);
        }
        // A million openers stop at the limit, not at the end of the body.
        let deep = vec![b'['; 1 << 20];
        assert_eq!(
            check(&deep, 64, usize::MAX),
            Err(ShapeError::TooDeep { limit: 64 })
        );
    }
}
