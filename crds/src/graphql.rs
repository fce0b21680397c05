//! The types a `graphql` interface declares for its operations' arguments
//! and answers: `String`, `Int`, `Float`, `Boolean`, `ID` and `JSON` (any
//! JSON value), `[T]` for a list of `T`, a trailing `!` for non-null —
//! GraphQL's own notation, parsed here so that validation names the field
//! of a type that does not parse.

use std::fmt;

/// A named type a field may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    String,
    Int,
    Float,
    Boolean,
    Id,
    Json,
}

impl Scalar {
    /// Its name in the schema.
    pub fn name(self) -> &'static str {
        match self {
            Scalar::String => "String",
            Scalar::Int => "Int",
            Scalar::Float => "Float",
            Scalar::Boolean => "Boolean",
            Scalar::Id => "ID",
            Scalar::Json => "JSON",
        }
    }
}

/// A field's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GqlType {
    Named { scalar: Scalar, non_null: bool },
    List { of: Box<GqlType>, non_null: bool },
}

/// Lists nest at most this deep (`[[[Int]]]`).
pub const MAX_LIST_DEPTH: usize = 3;

/// The longest type written (`[[[String!]!]!]!` is 16).
const MAX_TYPE_LEN: usize = 32;

impl GqlType {
    /// Parses GraphQL type notation.
    ///
    /// # Errors
    /// What is wrong with `s`, for a validation message.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_TYPE_LEN {
            return Err(format!("a type is at most {MAX_TYPE_LEN} characters"));
        }
        let t = parse(s.trim(), 0)?;
        Ok(t)
    }

    pub fn non_null(&self) -> bool {
        match self {
            GqlType::Named { non_null, .. } | GqlType::List { non_null, .. } => *non_null,
        }
    }
}

fn parse(s: &str, depth: usize) -> Result<GqlType, String> {
    let (body, non_null) = match s.strip_suffix('!') {
        Some(b) => (b, true),
        None => (s, false),
    };
    if let Some(inner) = body.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("`{s}`: a `[` without its `]`"))?;
        if depth >= MAX_LIST_DEPTH {
            return Err(format!("lists nest at most {MAX_LIST_DEPTH} deep"));
        }
        return Ok(GqlType::List {
            of: Box::new(parse(inner, depth + 1)?),
            non_null,
        });
    }
    let scalar = match body {
        "String" => Scalar::String,
        "Int" => Scalar::Int,
        "Float" => Scalar::Float,
        "Boolean" => Scalar::Boolean,
        "ID" => Scalar::Id,
        "JSON" => Scalar::Json,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(format!(
                "`{shown}` is not a type: use String, Int, Float, Boolean, ID or JSON, \
                 [T] for a list, T! for non-null"
            ));
        }
    };
    Ok(GqlType::Named { scalar, non_null })
}

impl fmt::Display for GqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bang = if self.non_null() { "!" } else { "" };
        match self {
            GqlType::Named { scalar, .. } => write!(f, "{}{bang}", scalar.name()),
            GqlType::List { of, .. } => write!(f, "[{of}]{bang}"),
        }
    }
}

/// Whether `name` is a GraphQL name sluice accepts for a field or an
/// argument: letters, digits and `_`, not starting with a digit, not `__`
/// (reserved for introspection), at most 64 characters.
pub fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_');
    first_ok
        && name.len() <= 64
        && !name.starts_with("__")
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_print_back() {
        for t in ["String", "Int!", "[ID]", "[Float!]!", "[[JSON]]", "Boolean"] {
            assert_eq!(GqlType::parse(t).unwrap().to_string(), t);
        }
        for bad in ["", "Str", "[Int", "Int!!", "[[[[Int]]]]", "[]", "!"] {
            assert!(GqlType::parse(bad).is_err(), "{bad}");
        }
        assert!(GqlType::parse(&"[".repeat(40)).is_err());
    }

    #[test]
    fn names_are_graphql_names_and_not_reserved() {
        assert!(is_name("greet") && is_name("_x1") && is_name("A"));
        assert!(!is_name("") && !is_name("1a") && !is_name("__type") && !is_name("a-b"));
        assert!(!is_name(&"a".repeat(65)));
    }
}
