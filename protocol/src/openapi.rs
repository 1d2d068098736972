//! Schemas the `ToSchema` derives cannot infer (feature `openapi`): account numbers are an
//! alias of `i64`, and a write set's keys are account numbers written as JSON strings.
//!
//! Each schema is exactly as strict as the parsing in [`crate::wire`], no more: a value the
//! schema refuses is one every endpoint refuses too (schemathesis checks this against a real
//! agent, see `tests/tests/schemathesis.rs`).

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::KnownFormat;

use crate::MAX_SET_LEN;

fn int64() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
}

/// A read set: account numbers (0 or more), at most [`MAX_SET_LEN`].
pub fn accounts() -> Schema {
    ArrayBuilder::new()
        .items(int64().minimum(Some(0)))
        .max_items(Some(MAX_SET_LEN))
        .description(Some(format!("Account numbers (0 or more), at most {MAX_SET_LEN}.")))
        .build()
        .into()
}

/// A write set (or the values of a read): account number, as a JSON object key, to balance.
///
/// Keys are parsed as `i64` (Rust's `str::parse`: an optional sign, then digits), so the
/// pattern lets a sign through; a negative account is refused later with a message that says
/// so.
pub fn account_map() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[+-]?[0-9]+$"))))
        .additional_properties(Some(int64()))
        .max_properties(Some(MAX_SET_LEN))
        .description(Some(format!(
            "Account number (a decimal string, 0 or more) to balance (a 64-bit integer), at most {MAX_SET_LEN} accounts."
        )))
        .build()
        .into()
}
