//! Inputs and expected answers of the orders example
//! (`examples/orders.yaml`, `examples/orders-redis.yaml`):
//!
//! ```text
//!   classify ──priority──▶ rush ───────────────────▶ summarize
//!            └─(default)─▶ standard ──▶ price ─────▶ summarize
//! ```

use serde_json::{json, Value};

/// An order with a caller-chosen `id`; every third one is a priority order.
pub fn input(id: &str, i: usize) -> Value {
    let kind = if i.is_multiple_of(3) {
        "priority"
    } else {
        "bulk"
    };
    json!({"id": id, "type": kind, "items": i % 7 + 1})
}

/// What the pipeline answers for `input`: the summary names the order's own
/// id, so an answer that belongs to another caller never matches.
///
/// # Panics
/// When `input` lacks `id`, `type` or `items`.
pub fn expected(input: &Value) -> Value {
    let id = &input["id"];
    let items = &input["items"];
    let rush = input["type"] == "priority";
    let lane = if rush { "rush" } else { "standard" };
    let price = if rush { 0 } else { 5 };
    assert!(!id.is_null() && !items.is_null(), "not an order: {input}");
    json!({
        "order": id,
        "status": "accepted",
        "summary": format!("{items} item(s) in the {lane} lane"),
        "price": price,
    })
}
