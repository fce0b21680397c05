//! The json-map template language and its JSON pointers.
//!
//! The input is `<template>\n<input JSON>`. The template line is compiled as
//! a JSON document when it is one, else as a template string (the `${…}`
//! syntax); a compiled template is evaluated against the input (or a fixed
//! sample when the rest is not JSON). The same line is also parsed as a
//! pointer and resolved. None of it may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sluice_exec_worker::catalog::pointer::Pointer;
use sluice_exec_worker::catalog::template::Template;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (line, rest) = text.split_once('\n').unwrap_or((text, ""));
    let input: Value = serde_json::from_str(rest).unwrap_or_else(
        |_| json!({"a": [1, "two", {"b": null}], "s": "x", "n": 3.5, "": {"~": 1}}),
    );
    let template: Value =
        serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_string()));
    if let Ok(t) = Template::compile(&template, "template") {
        let _ = t.is_literal();
        let _ = t.evaluate(&input);
    }
    if let Ok(p) = Pointer::parse(line) {
        let _ = p.resolve(&input);
        let _ = p.as_str();
    }
});
