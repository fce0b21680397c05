//! The json-map template language: JSON with `${<pointer>}` substitutions.
//!
//! ```text
//! manifest JSON ──compile (start-up)──▶ Template ──evaluate(input) (per call)──▶ JSON
//! ```
//!
//! # Syntax
//! A template is any JSON value. Numbers, booleans, null and object keys are
//! literal; arrays and objects are walked recursively; only strings are
//! interpreted:
//! - a string that is exactly `"${<pointer>}"` becomes the input's value at
//!   that RFC 6901 pointer, with its JSON type (object, number, …);
//! - `${<pointer>}` inside a longer string is replaced by the value's text:
//!   strings without quotes, anything else as compact JSON;
//! - `${}` (empty pointer) is the whole input;
//! - `${<pointer> ?? <json>}` falls back to the JSON literal after `??` when
//!   the input has no value at the pointer (an explicit `null` is a value);
//! - `$${` is a literal `${`; any other `$` is literal.
//!
//! Whitespace around the pointer and the default is ignored, so `${ /a }` is
//! `${/a}`. A pointer cannot contain `}` or `??`.
//!
//! Templates are parsed once, when the node is built; a malformed one is a
//! configuration error, and evaluation never reparses.

use serde_json::{Map, Value};

use super::pointer::Pointer;

/// A compiled template, ready to evaluate against any number of inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    root: Compiled,
}

/// Why a template could not be evaluated against an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The input has no value at a pointer that has no default.
    #[error(
        "input has no value at `{pointer}` (used by {at}); \
         give a default with `${{{pointer} ?? <json>}}`"
    )]
    Missing {
        /// The pointer as written in the template.
        pointer: String,
        /// Where in the template it is used, e.g. `template/user/name`.
        at: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Compiled {
    /// A subtree without substitutions, cloned as is.
    Literal(Value),
    /// A string that is exactly one substitution: keeps the value's type.
    Whole(Expr),
    /// A string mixing text and substitutions: always a string.
    Text(Vec<Part>),
    Array(Vec<Compiled>),
    Object(Vec<(String, Compiled)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Expr(Expr),
}

#[derive(Debug, Clone, PartialEq)]
struct Expr {
    pointer: Pointer,
    default: Option<Value>,
    /// The template location, for error messages.
    at: String,
}

// === impl Template ===

impl Template {
    /// Compiles `template`. `origin` names it in messages (`template`, `tag`)
    /// and prefixes the location of each substitution.
    ///
    /// # Errors
    /// An unclosed `${`, a malformed pointer, or a default that is not a JSON
    /// literal; the message gives the location and the offending string.
    pub fn compile(template: &Value, origin: &str) -> Result<Self, String> {
        Ok(Self {
            root: compile_value(template, origin)?,
        })
    }

    /// Whether the template has no substitution at all (always evaluates to
    /// the same value).
    pub fn is_literal(&self) -> bool {
        matches!(self.root, Compiled::Literal(_))
    }

    /// Evaluates the template against `input`.
    ///
    /// # Errors
    /// [`TemplateError::Missing`] for the first pointer without a value and
    /// without a default.
    pub fn evaluate(&self, input: &Value) -> Result<Value, TemplateError> {
        self.root.evaluate(input)
    }
}

fn compile_value(v: &Value, at: &str) -> Result<Compiled, String> {
    let compiled = match v {
        Value::String(s) => compile_string(s, at)?,
        Value::Array(items) => {
            let items = items
                .iter()
                .enumerate()
                .map(|(i, item)| compile_value(item, &format!("{at}/{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            if items.iter().all(|c| matches!(c, Compiled::Literal(_))) {
                Compiled::Literal(v.clone())
            } else {
                Compiled::Array(items)
            }
        }
        Value::Object(map) => {
            let fields = map
                .iter()
                .map(|(k, item)| {
                    Ok((
                        k.clone(),
                        compile_value(item, &format!("{at}/{}", escape(k)))?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            if fields
                .iter()
                .all(|(_, c)| matches!(c, Compiled::Literal(_)))
            {
                Compiled::Literal(v.clone())
            } else {
                Compiled::Object(fields)
            }
        }
        other => Compiled::Literal(other.clone()),
    };
    Ok(compiled)
}

/// Splits a template string into literal text and substitutions.
fn compile_string(s: &str, at: &str) -> Result<Compiled, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            text.push_str("${");
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let (expr, after) = compile_expr(body, s, at)?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Expr(expr));
            rest = after;
        } else {
            text.push('$');
            rest = &tail[1..];
        }
    }
    text.push_str(rest);

    if parts.is_empty() {
        return Ok(Compiled::Literal(Value::String(text)));
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    if let [Part::Expr(_)] = parts.as_slice() {
        if let Some(Part::Expr(expr)) = parts.pop() {
            return Ok(Compiled::Whole(expr));
        }
    }
    Ok(Compiled::Text(parts))
}

/// Parses `<pointer> [?? <json>]}` at the start of `body` (just after `${`);
/// returns the expression and the text after its closing `}`.
fn compile_expr<'s>(body: &'s str, whole: &str, at: &str) -> Result<(Expr, &'s str), String> {
    let brace = body.find('}');
    let fallback = body.find("??").filter(|q| brace.is_none_or(|b| *q < b));
    let (pointer_text, default, after) = match (fallback, brace) {
        (Some(q), _) => {
            let (default, after) = compile_default(&body[q + 2..], whole, at)?;
            (&body[..q], Some(default), after)
        }
        (None, Some(b)) => (&body[..b], None, &body[b + 1..]),
        (None, None) => {
            return Err(format!(
                "{at}: unclosed `${{` in `{whole}` (write `$${{` for a literal `${{`)"
            ))
        }
    };
    let pointer =
        Pointer::parse(pointer_text.trim()).map_err(|e| format!("{at}: in `{whole}`: {e}"))?;
    Ok((
        Expr {
            pointer,
            default,
            at: at.to_owned(),
        },
        after,
    ))
}

/// Parses the JSON literal after `??` and the `}` that must follow it.
fn compile_default<'s>(text: &'s str, whole: &str, at: &str) -> Result<(Value, &'s str), String> {
    let hint =
        "the default after `??` must be a JSON literal such as `0`, `null`, `\"text\"` or `[]`";
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let value = match values.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(format!("{at}: in `{whole}`: {hint} ({e})")),
        None => return Err(format!("{at}: in `{whole}`: {hint}, found nothing")),
    };
    let after = text[values.byte_offset()..].trim_start();
    match after.strip_prefix('}') {
        Some(after) => Ok((value, after)),
        None => Err(format!(
            "{at}: in `{whole}`: expected `}}` after the default"
        )),
    }
}

/// Escapes an object key as a JSON pointer reference token.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

// === impl Compiled ===

impl Compiled {
    fn evaluate(&self, input: &Value) -> Result<Value, TemplateError> {
        Ok(match self {
            Compiled::Literal(v) => v.clone(),
            Compiled::Whole(expr) => expr.lookup(input)?.clone(),
            Compiled::Text(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(expr) => match expr.lookup(input)? {
                            Value::String(s) => out.push_str(s),
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(out)
            }
            Compiled::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|c| c.evaluate(input))
                    .collect::<Result<_, _>>()?,
            ),
            Compiled::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, c)| Ok((k.clone(), c.evaluate(input)?)))
                    .collect::<Result<Map<_, _>, _>>()?,
            ),
        })
    }
}

impl Expr {
    fn lookup<'v>(&'v self, input: &'v Value) -> Result<&'v Value, TemplateError> {
        self.pointer
            .resolve(input)
            .or(self.default.as_ref())
            .ok_or_else(|| TemplateError::Missing {
                pointer: self.pointer.as_str().to_owned(),
                at: self.at.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(template: Value, input: Value) -> Result<Value, TemplateError> {
        Template::compile(&template, "template")
            .unwrap()
            .evaluate(&input)
    }

    fn compile_err(template: Value) -> String {
        Template::compile(&template, "template").unwrap_err()
    }

    #[test]
    fn whole_string_substitution_preserves_the_value_type() {
        let input = json!({"n": 3, "b": true, "o": {"x": [1, 2]}, "z": null, "s": "hi"});
        let out = eval(
            json!({"n": "${/n}", "b": "${/b}", "o": "${/o}", "z": "${/z}", "s": "${/s}"}),
            input.clone(),
        );
        assert_eq!(out, Ok(input));
    }

    #[test]
    fn embedded_substitution_renders_text() {
        let input = json!({"name": "Ada", "age": 36, "tags": ["a", "b"], "none": null});
        let out = eval(
            json!("${/name} is ${/age}, tags=${/tags}, none=${/none}"),
            input,
        );
        assert_eq!(out, Ok(json!("Ada is 36, tags=[\"a\",\"b\"], none=null")));
    }

    #[test]
    fn empty_pointer_is_the_whole_input() {
        let input = json!({"a": 1});
        assert_eq!(
            eval(json!({"wrapped": "${}"}), input.clone()),
            Ok(json!({"wrapped": input}))
        );
        assert_eq!(
            eval(json!("in: ${}"), json!({"a": 1})),
            Ok(json!("in: {\"a\":1}"))
        );
    }

    #[test]
    fn objects_and_arrays_recurse_with_literal_keys() {
        let out = eval(
            json!({"${/k}": ["${/a}", 2, {"deep": "x${/a}"}], "lit": [true, null]}),
            json!({"a": 1, "k": "ignored"}),
        );
        assert_eq!(
            out,
            Ok(json!({"${/k}": [1, 2, {"deep": "x1"}], "lit": [true, null]}))
        );
    }

    #[test]
    fn double_dollar_escapes_a_literal_substitution() {
        assert_eq!(eval(json!("$${/a}"), json!({"a": 1})), Ok(json!("${/a}")));
        assert_eq!(
            eval(json!("cost: $5, ${/a}$"), json!({"a": 1})),
            Ok(json!("cost: $5, 1$"))
        );
        assert_eq!(eval(json!("$$${/a}"), json!({"a": 1})), Ok(json!("$${/a}")));
        assert!(Template::compile(&json!("$${/a}"), "t")
            .unwrap()
            .is_literal());
    }

    #[test]
    fn escaped_pointer_tokens_resolve() {
        assert_eq!(
            eval(json!("${/a~1b/m~0n}"), json!({"a/b": {"m~n": 7}})),
            Ok(json!(7))
        );
    }

    #[test]
    fn defaults_apply_only_when_the_value_is_missing() {
        let input = json!({"present": null});
        assert_eq!(eval(json!("${/absent ?? 0}"), input.clone()), Ok(json!(0)));
        assert_eq!(
            eval(json!("${/absent??\"none\"}"), input.clone()),
            Ok(json!("none"))
        );
        assert_eq!(
            eval(json!("${ /absent ?? {\"a\": [1, \"}\"]} }"), input.clone()),
            Ok(json!({"a": [1, "}"]}))
        );
        assert_eq!(
            eval(json!("${/present ?? 1}"), input.clone()),
            Ok(Value::Null)
        );
        assert_eq!(eval(json!("n=${/absent ?? 5}!"), input), Ok(json!("n=5!")));
    }

    #[test]
    fn missing_pointer_without_default_names_pointer_and_location() {
        let err = eval(
            json!({"out": {"who": "${/user/name}"}}),
            json!({"user": {}}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            TemplateError::Missing {
                pointer: "/user/name".into(),
                at: "template/out/who".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("`/user/name`") && msg.contains("template/out/who"),
            "{msg}"
        );
        assert!(msg.contains("${/user/name ?? <json>}"), "{msg}");
    }

    #[test]
    fn unclosed_substitution_is_a_compile_error() {
        let msg = compile_err(json!({"a": ["ok", "${/x"]}));
        assert!(
            msg.contains("unclosed") && msg.contains("template/a/1"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_pointer_is_a_compile_error() {
        assert!(compile_err(json!("${x}")).contains("start with `/`"));
        assert!(compile_err(json!("${/a~2}")).contains('~'));
    }

    #[test]
    fn default_that_is_not_json_is_a_compile_error() {
        assert!(compile_err(json!("${/a ?? none}")).contains("JSON literal"));
        assert!(compile_err(json!("${/a ??}")).contains("JSON literal"));
        assert!(compile_err(json!("${/a ?? 1 2}")).contains("expected `}`"));
        assert!(compile_err(json!("${/a ?? 1")).contains("expected `}`"));
    }

    #[test]
    fn templates_without_substitutions_are_literal() {
        let t = Template::compile(&json!({"a": [1, "two", {"b": "$ x"}]}), "t").unwrap();
        assert!(t.is_literal());
        assert_eq!(
            t.evaluate(&Value::Null),
            Ok(json!({"a": [1, "two", {"b": "$ x"}]}))
        );
    }
}
