//! What the programs' OpenAPI documents share (feature `openapi`): the schemas the `ToSchema`
//! derives cannot infer (account numbers are an alias of `i64`, a write set's keys are account
//! numbers written as JSON strings, and the transaction bodies' rules across fields), and the
//! cluster token's place in a document ([`apply_cluster_token`]).
//!
//! Each schema is exactly as strict as the parsing in [`crate::wire`], no more: a value the
//! schema refuses is one every endpoint refuses too (schemathesis checks this against a real
//! agent, see `tests/tests/schemathesis.rs`).

use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, KnownFormat, OpenApi, PathItem, Ref, ResponseBuilder};

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
/// serde_json parses such a key as a JSON number in quotes: digits without a leading zero,
/// with an optional minus sign; a negative account is then refused by validation. So the keys
/// the agent accepts are the canonical decimals of 0 or more, at most 19 digits (the `i64`
/// range itself is beyond a pattern: a 19-digit key above it is refused by the agent alone).
pub fn account_map() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new().schema_type(Type::String).pattern(Some("^(0|[1-9][0-9]*)$")).max_length(Some(19)),
        ))
        .additional_properties(Some(int64()))
        .max_properties(Some(MAX_SET_LEN))
        .description(Some(format!(
            "Account number (a decimal string without sign or leading zeros) to balance (a 64-bit integer), at most {MAX_SET_LEN} accounts."
        )))
        .build()
        .into()
}

/// `TransactionBody`, by reference: a document that uses the two schemas below must list
/// `TransactionBody` among its components.
fn transaction_body() -> Ref {
    Ref::from_schema_name("TransactionBody")
}

/// A schema that only adds constraints to the properties it names (no `type` of its own).
fn constraints() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::AnyValue)
}

fn non_empty_reads() -> ObjectBuilder {
    constraints().required("read_set").property("read_set", ArrayBuilder::new().min_items(Some(1)))
}

/// `ReadRequest.transaction`: a non-empty read set, no writes (`time_stamp` and `txn_id` are
/// ignored).
pub fn read_transaction() -> Schema {
    AllOfBuilder::new()
        .item(transaction_body())
        .item(non_empty_reads().property("write_set", ObjectBuilder::new().max_properties(Some(0))))
        .description(Some("The accounts to read: `read_set` non-empty; `write_set` empty or absent."))
        .build()
        .into()
}

/// `CommitRequest.transaction`: reads or writes or both; reads need the read's timestamp.
pub fn commit_transaction() -> Schema {
    let non_empty_writes =
        constraints().required("write_set").property("write_set", ObjectBuilder::new().min_properties(Some(1)));
    let no_reads = constraints().property("read_set", ArrayBuilder::new().max_items(Some(0)));
    let timestamped = constraints().required("time_stamp").property("time_stamp", int64().minimum(Some(0)));
    AllOfBuilder::new()
        .item(transaction_body())
        .item(AnyOfBuilder::new().item(non_empty_reads()).item(non_empty_writes))
        .item(AnyOfBuilder::new().item(no_reads).item(timestamped))
        .item(constraints().property("time_stamp", constraints().minimum(Some(0))))
        .description(Some(
            "A `read_set`, a `write_set` or both; with a non-empty `read_set`, the `time_stamp` its read returned \
             (0 or more).",
        ))
        .build()
        .into()
}

/// The name of the bearer scheme in the documents. An operation annotated with
/// `security(("cluster_token" = []))` is one that requires the token when one is configured.
pub const CLUSTER_TOKEN: &str = "cluster_token";

/// Program `A`'s document as it serves it: with (`token_configured`) or without a cluster
/// token (see [`apply_cluster_token`]).
pub fn document<A: utoipa::OpenApi>(token_configured: bool) -> OpenApi {
    let mut doc = A::openapi();
    apply_cluster_token(&mut doc, token_configured);
    doc
}

/// [`document`] as JSON text, as `GET /openapi.json` serves it.
pub fn json<A: utoipa::OpenApi>(token_configured: bool) -> String {
    document::<A>(token_configured).to_json().expect("the OpenAPI document serializes")
}

/// Makes `doc` describe a program as configured. With a token, declares the `cluster_token`
/// bearer scheme and adds the 401 answer (an `ErrorBody`, which the document must list) to
/// every operation that names it; without one those operations are open, so their security
/// requirement goes.
pub fn apply_cluster_token(doc: &mut OpenApi, token_configured: bool) {
    let unauthorized = ResponseBuilder::new()
        .description("The cluster token is missing or wrong; nothing changed")
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build();
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            let guarded = op.security.as_ref().is_some_and(|s| !s.is_empty());
            if !guarded {
                continue;
            }
            if token_configured {
                op.responses.responses.insert("401".into(), unauthorized.clone().into());
            } else {
                op.security = None;
            }
        }
    }
    if token_configured {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "The cluster token (`--cluster-token-file`, or `CLUSTER_TOKEN`): `Authorization: Bearer <token>`.".into(),
        );
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(CLUSTER_TOKEN, SecurityScheme::Http(scheme));
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch].into_iter().flatten()
}
