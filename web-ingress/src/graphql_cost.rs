//! What a GraphQL document may cost, checked before the GraphQL library
//! parses or validates it: the parser recurses once per nesting level with
//! no bound of its own, and the library's depth and complexity checks
//! expand every fragment spread anew (a chain of fragments that each spread
//! the next twice doubles the work per fragment). Both are cut off here on
//! the text and on the parsed document, in time linear in their size.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// Deepest nesting of `{`, `[` and `(` in a document's text.
pub const MAX_NESTING: usize = 128;

/// Fragment definitions in a document, at most.
pub const MAX_FRAGMENTS: usize = 64;

/// The deepest nesting of `{`, `[` and `(` in `query`, outside strings,
/// block strings and comments.
pub fn nesting(query: &str) -> usize {
    let bytes = query.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    // `\"""` is an escaped triple quote inside a block string.
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Fields `doc` selects in all its operations with every fragment spread
/// expanded, saturating; `u64::MAX` for a fragment that spreads itself
/// (validation refuses it too). Each fragment is counted once and reused,
/// so this costs the document's size, not its expansion.
pub fn expanded_fields(doc: &ExecutableDocument) -> u64 {
    let mut memo: HashMap<&str, Option<u64>> = HashMap::new();
    let operations: Vec<_> = doc.operations.iter().map(|(_, op)| op).collect();
    operations.iter().fold(0u64, |sum, op| {
        sum.saturating_add(count(&op.node.selection_set.node, doc, &mut memo))
    })
}

fn count<'d>(
    set: &'d SelectionSet,
    doc: &'d ExecutableDocument,
    memo: &mut HashMap<&'d str, Option<u64>>,
) -> u64 {
    set.items.iter().fold(0u64, |sum, item| {
        let n = match &item.node {
            Selection::Field(f) => {
                1u64.saturating_add(count(&f.node.selection_set.node, doc, memo))
            }
            Selection::InlineFragment(f) => count(&f.node.selection_set.node, doc, memo),
            Selection::FragmentSpread(s) => {
                let name = s.node.fragment_name.node.as_str();
                match memo.get(name) {
                    Some(Some(n)) => *n,
                    // Being counted: a cycle.
                    Some(None) => u64::MAX,
                    None => match doc.fragments.get(&s.node.fragment_name.node) {
                        // Unknown: validation refuses it.
                        None => 0,
                        Some(def) => {
                            memo.insert(name, None);
                            let n = count(&def.node.selection_set.node, doc, memo);
                            memo.insert(name, Some(n));
                            n
                        }
                    },
                }
            }
        };
        sum.saturating_add(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(q: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(q).expect("parses")
    }

    #[test]
    fn nesting_counts_brackets_outside_strings_and_comments() {
        assert_eq!(nesting("{ a { b(x: [1, [2]]) } }"), 5);
        assert_eq!(nesting(r#"{ a(s: "{{{[[[") }"#), 2);
        assert_eq!(nesting("{ a } # {{{{{{\n"), 1);
        assert_eq!(nesting("{ a(s: \"\"\" {{{ \\\"\"\" {{ \"\"\") }"), 2);
        assert_eq!(nesting(&"[".repeat(300_000)), 300_000);
        assert_eq!(nesting("\"unterminated {{{"), 0);
    }

    #[test]
    fn fragments_are_expanded_once_each_and_cycles_saturate() {
        assert_eq!(expanded_fields(&parsed("{ a b { c } }")), 3);
        assert_eq!(
            expanded_fields(&parsed("{ ...F ...F } fragment F on Query { a b }")),
            4
        );
        // Thirty fragments each spreading the next twice: 2^30 fields,
        // counted without expanding them.
        let mut q = String::from("{ ...F0 }");
        for i in 0..30 {
            q.push_str(&format!(
                " fragment F{i} on Query {{ ...F{} ...F{} }}",
                i + 1,
                i + 1
            ));
        }
        q.push_str(" fragment F30 on Query { __typename }");
        assert_eq!(expanded_fields(&parsed(&q)), 1 << 30);
        assert_eq!(
            expanded_fields(&parsed("{ ...A } fragment A on Query { ...A }")),
            u64::MAX
        );
    }
}
