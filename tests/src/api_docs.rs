//! docs/api.md: the hand-written guide (docs/api-intro.md, copied verbatim) followed by a
//! reference that [`render`] makes from the OpenAPI documents the programs serve at
//! `GET /openapi.json`. `tests/tests/api_docs.rs` checks that the file is what today's documents
//! give, and rewrites it with `UPDATE_API_DOCS=1`.
//!
//! The reference shows, per endpoint: its summary and description, whether it needs the cluster
//! token, its parameters, its request body (the fields as a table) and every answer with its
//! status, body type and headers. Then every schema once, with its fields; a name that two
//! programs define differently (each has its own `Health`) gets an entry per definition.
//!
//! Invariants:
//! - Pure: JSON in, Markdown out; no I/O, no clock.
//! - Deterministic, and independent of the order of a JSON object's keys (`serde_json` sorts
//!   them here): endpoints are grouped by tag in the order the document lists its tags, then
//!   sorted by path and method; answers by status; a schema's required fields come first in the
//!   order of its `required` list (the declaration order), then the optional ones by name;
//!   schemas by name.
//! - Every endpoint and schema entry has a stable explicit anchor (`agent-read`,
//!   `schema-readrequest`) that the guide can link to; [`anchors`] and [`links`] let a test
//!   check that no link is broken.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One program's OpenAPI document, and how the reference names the program.
pub struct Program {
    /// Lower case, the prefix of its endpoints' anchors: `agent`.
    pub id: &'static str,
    /// For headings and prose: `Agent`, `Web client`.
    pub title: &'static str,
    pub document: Value,
}

/// The first lines of the generated file: it is generated, from what, and how to regenerate it.
pub const HEADER: &str = "<!--
  Generated: do not edit. The guide (everything before \"Reference\") is docs/api-intro.md; the
  reference is rendered by tests/src/api_docs.rs from the programs' OpenAPI documents (the
  `#[utoipa::path]` annotations and the `ToSchema` types). After changing either, run
      UPDATE_API_DOCS=1 cargo test -p e2e --test api_docs
-->
";

/// The HTTP methods an OpenAPI path item may hold, in the order the reference lists them.
const METHODS: [&str; 8] = ["get", "post", "put", "patch", "delete", "head", "options", "trace"];

const SCHEMA_REF: &str = "#/components/schemas/";

/// The whole of docs/api.md: `HEADER`, the guide, then the reference for `programs`.
pub fn render(guide: &str, programs: &[Program]) -> String {
    let schemas = Schemas::collect(programs);
    let mut out = Markdown::default();
    out.0.push_str(HEADER);
    out.0.push('\n');
    out.block(guide);
    out.block("# Reference");
    let sections: Vec<String> = programs
        .iter()
        .map(|p| format!("[{} endpoints](#{})", p.title, slug(&format!("{} endpoints", p.title))))
        .chain(["[Schemas](#schemas)".to_string()])
        .collect();
    out.block(&format!(
        "Generated from the OpenAPI documents the programs serve at `GET /openapi.json`, as they \
         describe themselves with a cluster token and client API keys configured: {}. Without a cluster \
         token, the endpoints that need it are open and never answer 401; without API keys (the default), \
         `/read/` and `/commit/` are open.",
        sections.join(", ")
    ));
    for program in programs {
        Context { program, schemas: &schemas }.render_program(&mut out);
    }
    schemas.render(&mut out);
    let mut text = out.0.trim_end().to_string();
    text.push('\n');
    text
}

/// Markdown being written: blocks separated by blank lines.
#[derive(Default)]
struct Markdown(String);

impl Markdown {
    fn block(&mut self, text: &str) {
        self.0.push_str(text.trim_end());
        self.0.push_str("\n\n");
    }

    fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut text = format!("| {} |\n|{}\n", header.join(" | "), " --- |".repeat(header.len()));
        for row in rows {
            let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
            text.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        self.block(&text);
    }
}

/// Every schema of every program, by name; identical definitions share one entry.
struct Schemas<'a> {
    by_name: BTreeMap<&'a str, Vec<Definition<'a>>>,
}

/// One definition of a schema name, and the programs whose documents hold exactly it.
struct Definition<'a> {
    schema: &'a Value,
    programs: Vec<&'a Program>,
    anchor: String,
}

impl<'a> Schemas<'a> {
    fn collect(programs: &'a [Program]) -> Self {
        let mut by_name: BTreeMap<&'a str, Vec<Definition<'a>>> = BTreeMap::new();
        for program in programs {
            let Some(schemas) = program.document["components"]["schemas"].as_object() else { continue };
            for (name, schema) in schemas {
                let definitions = by_name.entry(name.as_str()).or_default();
                match definitions.iter_mut().find(|d| d.schema == schema) {
                    Some(definition) => definition.programs.push(program),
                    None => definitions.push(Definition { schema, programs: vec![program], anchor: String::new() }),
                }
            }
        }
        for (name, definitions) in &mut by_name {
            let several = definitions.len() > 1;
            for definition in definitions {
                definition.anchor = match several {
                    false => format!("schema-{}", name.to_lowercase()),
                    true => format!("schema-{}-{}", name.to_lowercase(), definition.programs[0].id),
                };
            }
        }
        Schemas { by_name }
    }

    /// The definition of `name` that `program`'s document holds.
    fn find(&self, program: &Program, name: &str) -> Option<&Definition<'a>> {
        self.by_name.get(name)?.iter().find(|d| d.programs.iter().any(|p| p.id == program.id))
    }

    fn render(&self, out: &mut Markdown) {
        out.block("## Schemas");
        out.block(
            "Every type named above, by name. In a table of fields the required ones come first: they are \
             always in an answer and must be in a request. An optional field may be absent, or null where its \
             type allows it.",
        );
        for (name, definitions) in &self.by_name {
            for definition in definitions {
                let program = definition.programs[0];
                let context = Context { program, schemas: self };
                let titles: Vec<&str> = definition.programs.iter().map(|p| p.title).collect();
                out.block(&format!("<a id=\"{}\"></a>", definition.anchor));
                match definitions.len() {
                    1 => out.block(&format!("### `{name}`")),
                    _ => out.block(&format!("### `{name}` ({})", titles.join(", "))),
                }
                context.render_schema(out, definition.schema);
                out.block(&format!("Used by: {}.", titles.join(", ")));
            }
        }
    }
}

/// Renders within one program's document: `$ref`s resolve to that program's definitions.
struct Context<'a> {
    program: &'a Program,
    schemas: &'a Schemas<'a>,
}

impl Context<'_> {
    fn render_program(&self, out: &mut Markdown) {
        let document = &self.program.document;
        out.block(&format!("## {} endpoints", self.program.title));
        if let Some(description) = document["info"]["description"].as_str() {
            // The documents point readers here; here that is noise.
            let description = description.trim_end().trim_end_matches("See docs/api.md.").trim_end();
            out.block(&self.prose(description));
        }
        if let Some(schemes) = document["components"]["securitySchemes"].as_object() {
            for (name, scheme) in schemes {
                let what = scheme["description"].as_str().map(|d| self.prose(d)).unwrap_or_default();
                out.block(&format!(
                    "Endpoints marked {} need the `{name}` credential when the program has one configured. {what}",
                    marker(name)
                ));
            }
        }

        let operations = operations(document);
        let rows: Vec<Vec<String>> = operations
            .iter()
            .map(|op| {
                let needs = credential(op.operation).map(marker).unwrap_or_default();
                let summary = self.summary(op).map(|s| first_sentence(&s)).unwrap_or_default();
                vec![format!("[`{}`](#{})", op.title(), self.anchor(op)), needs.to_string(), summary]
            })
            .collect();
        out.table(&["endpoint", "needs", "what it does"], &rows);

        let mut tag = None;
        for op in &operations {
            if tag != Some(&op.tag) {
                tag = Some(&op.tag);
                out.block(&format!("### {}", capitalize(&op.tag.name)));
                if let Some(description) = &op.tag.description {
                    out.block(&format!("{}.", self.prose(description).trim_end_matches('.')));
                }
            }
            self.render_operation(out, op);
        }
    }

    fn anchor(&self, op: &Operation) -> String {
        let id = op.operation["operationId"].as_str().map(str::to_string).unwrap_or_else(|| op.title());
        format!("{}-{}", self.program.id, slug(&id).replace('-', "_"))
    }

    /// The summary, without the `METHOD /path: ` the handlers' doc comments start with (the
    /// heading says it), and the description.
    fn summary(&self, op: &Operation) -> Option<String> {
        let summary = op.operation["summary"].as_str()?;
        let summary = summary.strip_prefix(&format!("`{}`: ", op.title())).unwrap_or(summary);
        Some(capitalize(&self.prose(summary)))
    }

    fn render_operation(&self, out: &mut Markdown, op: &Operation) {
        let operation = op.operation;
        out.block(&format!("<a id=\"{}\"></a>", self.anchor(op)));
        out.block(&format!("#### `{}`", op.title()));
        if let Some(summary) = self.summary(op) {
            out.block(&summary);
        }
        if let Some(description) = operation["description"].as_str() {
            out.block(&self.prose(description));
        }
        out.block(match credential(operation) {
            Some(API_KEY) => {
                "**API key:** required when the agent runs with `--api-keys` (`Authorization: Bearer <key>`; \
                 without a known key 401, with a key of too narrow a scope 403; nothing changes)."
            }
            Some(_) => {
                "**Cluster token:** required (`Authorization: Bearer <token>`; without it, 401 and nothing changes)."
            }
            None => "**Cluster token:** not needed.",
        });

        if let Some(parameters) = operation["parameters"].as_array().filter(|p| !p.is_empty()) {
            out.block("Parameters:");
            let rows: Vec<Vec<String>> = parameters
                .iter()
                .map(|p| {
                    vec![
                        format!("`{}`", p["name"].as_str().unwrap_or("?")),
                        p["in"].as_str().unwrap_or("?").to_string(),
                        self.type_text(&p["schema"]),
                        yes_no(p["required"].as_bool().unwrap_or(false)),
                        p["description"].as_str().map(|d| self.prose(d)).unwrap_or_default(),
                    ]
                })
                .collect();
            out.table(&["name", "in", "type", "required", "description"], &rows);
        }

        if let Some(body) = operation.get("requestBody") {
            self.render_request_body(out, body);
        }

        out.block("Answers:");
        let mut rows = Vec::new();
        for (status, response) in operation["responses"].as_object().into_iter().flatten() {
            let mut description = response["description"].as_str().map(|d| self.prose(d)).unwrap_or_default();
            for (name, header) in response["headers"].as_object().into_iter().flatten() {
                let about = header["description"].as_str().map(|d| format!(": {}", self.prose(d))).unwrap_or_default();
                description = format!("{}. Header `{name}`{about}.", description.trim_end_matches('.'));
            }
            rows.push(vec![status.clone(), self.content_text(&response["content"]), description]);
        }
        out.table(&["status", "body", "meaning"], &rows);
    }

    fn render_request_body(&self, out: &mut Markdown, body: &Value) {
        let required = if body["required"].as_bool().unwrap_or(false) { "required" } else { "optional" };
        let mut text = format!("Request body ({required}): {}.", self.content_text(&body["content"]));
        if let Some(description) = body["description"].as_str() {
            text = format!("{text} {}.", self.prose(description).trim_end_matches('.'));
        }
        out.block(&text);
        // The fields of the (first) body type, so that the request reads without a jump.
        let schema = body["content"].as_object().and_then(|c| c.values().next()).map(|media| &media["schema"]);
        let schema = match schema.and_then(|s| s["$ref"].as_str()) {
            Some(reference) => {
                let name = reference.strip_prefix(SCHEMA_REF).unwrap_or(reference);
                self.schemas.find(self.program, name).map(|d| d.schema)
            }
            None => schema,
        };
        if let Some(schema) = schema.filter(|s| s.get("properties").is_some()) {
            self.render_fields(out, schema);
        }
    }

    /// The body of an answer or request: its type for JSON, else its media type.
    fn content_text(&self, content: &Value) -> String {
        let Some(content) = content.as_object().filter(|c| !c.is_empty()) else { return "none".into() };
        let kinds: Vec<String> = content
            .iter()
            .map(|(media, body)| match (media.as_str(), &body["schema"]) {
                ("application/json", schema) if schema.get("$ref").is_some() => self.type_text(schema),
                ("application/json", schema) => format!("JSON {}", self.type_text(schema)),
                (media, schema) if schema.get("$ref").is_some() => format!("{} as `{media}`", self.type_text(schema)),
                (media, _) => format!("`{media}`"),
            })
            .collect();
        kinds.join(" or ")
    }

    fn render_schema(&self, out: &mut Markdown, schema: &Value) {
        if let Some(description) = schema["description"].as_str() {
            out.block(&self.prose(description));
        }
        if schema.get("properties").is_some() {
            self.render_fields(out, schema);
        } else if let Some(values) = schema["enum"].as_array() {
            out.block(&format!("A {}: {}.", schema["type"].as_str().unwrap_or("value"), enumeration(values)));
        } else if schema.get("oneOf").is_some() || schema.get("anyOf").is_some() {
            out.block(&format!("One of: {}.", self.type_text(schema)));
        } else {
            out.block(&format!("Type: {}.", self.type_text(schema)));
        }
    }

    /// An object's fields as a table, required ones first.
    fn render_fields(&self, out: &mut Markdown, schema: &Value) {
        let properties = schema["properties"].as_object();
        let required: Vec<&str> =
            schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let mut names: Vec<&str> =
            required.iter().copied().filter(|n| properties.is_some_and(|p| p.contains_key(*n))).collect();
        let optional: BTreeSet<&str> =
            properties.into_iter().flatten().map(|(n, _)| n.as_str()).filter(|n| !required.contains(n)).collect();
        names.extend(optional);
        let rows: Vec<Vec<String>> = names
            .iter()
            .map(|name| {
                let field = &schema["properties"][*name];
                vec![
                    format!("`{name}`"),
                    self.type_text(field),
                    yes_no(required.contains(name)),
                    description_of(field).map(|d| self.prose(d)).unwrap_or_default(),
                ]
            })
            .collect();
        out.table(&["field", "type", "required", "description"], &rows);
        if schema["additionalProperties"] == Value::Bool(false) {
            out.block("Unknown fields are refused.");
        }
    }

    /// A schema's type in words, with its bounds: `integer (int64) ≥ 0 or null`,
    /// `array of [`LogEntry`](#schema-logentry)`.
    fn type_text(&self, schema: &Value) -> String {
        if let Some(reference) = schema["$ref"].as_str() {
            return self.link(reference.strip_prefix(SCHEMA_REF).unwrap_or(reference));
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(parts) = schema[key].as_array() {
                let types: Vec<String> = parts.iter().filter(|p| !is_null(p)).map(|p| self.type_text(p)).collect();
                let mut text = types.join(" or ");
                if parts.iter().any(is_null) {
                    text.push_str(" or null");
                }
                return text;
            }
        }
        if let Some(parts) = schema["allOf"].as_array() {
            // The parts without a type only add constraints, which the description states.
            let typed: Vec<String> = parts
                .iter()
                .filter(|p| p.get("$ref").is_some() || p.get("type").is_some())
                .map(|p| self.type_text(p))
                .collect();
            let mut text = typed.join(" and ");
            if typed.len() < parts.len() {
                text.push_str(", restricted as described");
            }
            return text;
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(types) => types.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut words: Vec<String> = types.iter().filter(|t| **t != "null").map(|t| self.one_type(t, schema)).collect();
        if words.is_empty() {
            words.push("any".into());
        }
        let mut text = words.join(" or ");
        if types.contains(&"null") {
            text.push_str(" or null");
        }
        text
    }

    fn one_type(&self, kind: &str, schema: &Value) -> String {
        let bound = |key: &str| schema.get(key).filter(|v| v.is_number()).map(Value::to_string);
        match kind {
            "array" => {
                let mut text = match schema.get("items").filter(|i| i.as_object().is_some_and(|o| !o.is_empty())) {
                    Some(items) => format!("array of {}", self.type_text(items)),
                    None => "array".into(),
                };
                text.push_str(&counts(bound("minItems"), bound("maxItems"), "items"));
                text
            }
            "object" => {
                let mut text = match schema.get("additionalProperties").filter(|v| v.is_object()) {
                    Some(values) => {
                        let keys = schema.get("propertyNames").map_or("string".into(), |k| self.type_text(k));
                        format!("object mapping {keys} to {}", self.type_text(values))
                    }
                    None => "object".into(),
                };
                text.push_str(&counts(bound("minProperties"), bound("maxProperties"), "entries"));
                text
            }
            _ => {
                let mut text = match schema["format"].as_str() {
                    Some(format) => format!("{kind} ({format})"),
                    None => kind.to_string(),
                };
                match (bound("minimum"), bound("maximum")) {
                    (Some(min), Some(max)) => text.push_str(&format!(" from {min} to {max}")),
                    (Some(min), None) => text.push_str(&format!(" ≥ {min}")),
                    (None, Some(max)) => text.push_str(&format!(" ≤ {max}")),
                    (None, None) => {}
                }
                if let Some(values) = schema["enum"].as_array() {
                    text.push_str(&format!(": {}", enumeration(values)));
                }
                if let Some(pattern) = schema["pattern"].as_str() {
                    text.push_str(&format!(" matching `{pattern}`"));
                }
                if let Some(max) = bound("maxLength") {
                    text.push_str(&format!(" (at most {max} characters)"));
                }
                text
            }
        }
    }

    fn link(&self, name: &str) -> String {
        match self.schemas.find(self.program, name) {
            Some(definition) => format!("[`{name}`](#{})", definition.anchor),
            None => format!("`{name}`"),
        }
    }

    /// A description as Markdown: rustdoc's intra-doc links (``[`ErrorBody`]``) become links to
    /// the schema, or plain code when there is none; the lines of a paragraph are joined.
    fn prose(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("[`") {
            let Some(len) = rest[start + 2..].find("`]") else { break };
            let end = start + 2 + len + 2;
            out.push_str(&rest[..start]);
            let path = &rest[start + 2..end - 2];
            if rest[end..].starts_with('(') {
                out.push_str(&rest[start..end]);
            } else {
                out.push_str(&self.link(path.rsplit("::").next().unwrap_or(path)));
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        let paragraphs: Vec<String> =
            out.split("\n\n").map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" ")).collect();
        paragraphs.join("\n\n")
    }
}

/// A tag of a document, and where it stands in the document's list.
#[derive(PartialEq)]
struct Tag {
    position: usize,
    name: String,
    description: Option<String>,
}

struct Operation<'a> {
    tag: Tag,
    method: &'static str,
    path: &'a str,
    operation: &'a Value,
}

impl Operation<'_> {
    fn title(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }
}

/// The document's operations: by tag (in the document's order of tags, untagged last), then by
/// path, then by method.
fn operations(document: &Value) -> Vec<Operation<'_>> {
    let tags: Vec<&Value> = document["tags"].as_array().into_iter().flatten().collect();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            let Some(operation) = item.get(method) else { continue };
            let name = operation["tags"][0].as_str().unwrap_or("other");
            let position = tags.iter().position(|t| t["name"] == name).unwrap_or(tags.len());
            let description = tags.get(position).and_then(|t| t["description"].as_str()).map(str::to_string);
            let tag = Tag { position, name: name.to_string(), description };
            operations.push(Operation { tag, method, path, operation });
        }
    }
    let method_rank = |m: &str| METHODS.iter().position(|x| *x == m);
    operations.sort_by(|a, b| {
        (a.tag.position, &a.tag.name, a.path, method_rank(a.method)).cmp(&(
            b.tag.position,
            &b.tag.name,
            b.path,
            method_rank(b.method),
        ))
    });
    operations
}

/// The name of the client API key scheme (the agent's `--api-keys`).
const API_KEY: &str = "api_key";

/// The credential an operation needs, by the name of its security scheme.
fn credential(operation: &Value) -> Option<&str> {
    operation["security"]
        .as_array()?
        .iter()
        .find_map(|requirement| requirement.as_object()?.keys().next())
        .map(|k| k.as_str())
}

/// How the endpoint tables mark the endpoints that need scheme `name`.
fn marker(name: &str) -> &'static str {
    match name {
        API_KEY => "*key*",
        _ => "*token*",
    }
}

fn is_null(schema: &Value) -> bool {
    schema["type"] == "null"
}

/// A field's description, also when utoipa put it on the `$ref` inside a nullable `oneOf`.
fn description_of(schema: &Value) -> Option<&str> {
    schema["description"].as_str().or_else(|| {
        ["oneOf", "anyOf", "allOf"]
            .iter()
            .flat_map(|key| schema[*key].as_array().into_iter().flatten())
            .find_map(|part| part["description"].as_str())
    })
}

fn counts(min: Option<String>, max: Option<String>, what: &str) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("; {min} to {max} {what}"),
        (Some(min), None) => format!("; at least {min} {what}"),
        (None, Some(max)) => format!("; at most {max} {what}"),
        (None, None) => String::new(),
    }
}

/// `` `a`, `b` or `c` ``.
fn enumeration(values: &[Value]) -> String {
    let words: Vec<String> =
        values.iter().map(|v| format!("`{}`", v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.join(""),
    }
}

fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_string()
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Up to the first `. ` (a summary for the index), keeping the period.
fn first_sentence(text: &str) -> String {
    match text.find(". ") {
        Some(end) => text[..=end].to_string(),
        None => text.to_string(),
    }
}

/// Text for a table cell: one line, `|` escaped (also inside code spans, as GFM wants).
fn cell(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

/// The anchor GitHub gives a heading with this text: lower case, code marks and punctuation
/// dropped, spaces to hyphens.
pub fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown text defines: its headings' (with GitHub's `-1`, `-2` for repeats)
/// and its `<a id="...">`s. Headings inside fenced code blocks do not count.
pub fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(text) = line.trim_start_matches('#').strip_prefix(' ').filter(|_| line.starts_with('#')) {
            let base = slug(text.trim());
            let repeats = seen.entry(base.clone()).or_default();
            anchors.insert(if *repeats == 0 { base.clone() } else { format!("{base}-{repeats}") });
            *repeats += 1;
        }
        let mut rest = line;
        while let Some(start) = rest.find("<a id=\"") {
            rest = &rest[start + 7..];
            if let Some(end) = rest.find('"') {
                anchors.insert(rest[..end].to_string());
            }
        }
    }
    anchors
}

/// The targets of a Markdown text's inline links (`[text](target)`), outside fenced code.
pub fn links(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let mut rest = line;
        while let (false, Some(start)) = (fenced, rest.find("](")) {
            rest = &rest[start + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].to_string());
            }
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn program(document: Value) -> Program {
        Program { id: "agent", title: "Agent", document }
    }

    fn document() -> Value {
        json!({
            "info": {"title": "Agent", "description": "Runs beside PostgreSQL. See docs/api.md."},
            "tags": [{"name": "transactions", "description": "Reads and commits"}, {"name": "operations"}],
            "paths": {
                "/status": {"get": {"tags": ["operations"], "operationId": "status",
                    "responses": {"200": {"description": "Where it stands"}}}},
                "/read/": {"post": {"tags": ["transactions"], "operationId": "read",
                    "summary": "`POST /read/`: the balances\nof some accounts.",
                    "security": [{"cluster_token": []}],
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ReadRequest"}}}},
                    "responses": {
                        "503": {"description": "Down", "headers": {"Retry-After": {"description": "Seconds"}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
                        "200": {"description": "The values | read",
                            "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
            },
            "components": {"schemas": {
                "ReadRequest": {"type": "object", "required": ["zeta", "alpha"], "additionalProperties": false,
                    "properties": {
                        "alpha": {"type": "array", "items": {"type": "integer", "format": "int64", "minimum": 0},
                            "maxItems": 1000},
                        "zeta": {"type": ["integer", "null"], "format": "int64"},
                        "beta": {"oneOf": [{"$ref": "#/components/schemas/ErrorBody", "description": "See [`ErrorBody`]."},
                            {"type": "null"}]}}},
                "ErrorBody": {"type": "object", "properties": {"error": {"type": "string"}}}}}
        })
    }

    #[test]
    fn types_read_as_words_with_their_bounds() {
        let programs = [program(document())];
        let schemas = Schemas::collect(&programs);
        let context = Context { program: &programs[0], schemas: &schemas };
        let text = |s: Value| context.type_text(&s);
        assert_eq!(
            text(json!({"type": ["integer", "null"], "format": "int64", "minimum": 0})),
            "integer (int64) ≥ 0 or null"
        );
        assert_eq!(text(json!({"type": "integer", "minimum": 1, "maximum": 10})), "integer from 1 to 10");
        assert_eq!(
            text(json!({"type": "array", "items": {"$ref": "#/components/schemas/ErrorBody"}, "maxItems": 3})),
            "array of [`ErrorBody`](#schema-errorbody); at most 3 items"
        );
        assert_eq!(
            text(json!({"type": "object", "additionalProperties": {"type": "integer"},
                "propertyNames": {"type": "string", "pattern": "^[0-9]+$"}})),
            "object mapping string matching `^[0-9]+$` to integer"
        );
        assert_eq!(text(json!({"type": "string", "enum": ["a", "b", "c"]})), "string: `a`, `b` or `c`");
        assert_eq!(text(json!({"$ref": "#/components/schemas/Missing"})), "`Missing`");
        assert_eq!(
            context.prose("Uses [`protocol::ErrorBody`] and [`Other`],\nnot more."),
            "Uses [`ErrorBody`](#schema-errorbody) and `Other`, not more."
        );
    }

    #[test]
    fn the_reference_orders_by_tag_then_path_and_puts_required_fields_first() {
        let text = render("# Guide\n\nSee [the read](#agent-read).", &[program(document())]);
        assert!(text.starts_with(HEADER), "{text}");
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("no {needle:?} in\n{text}"));
        assert!(at("# Guide") < at("# Reference"));
        assert!(at("#### `POST /read/`") < at("#### `GET /status`"), "transactions come first, as tagged");
        assert!(at("| `zeta` |") < at("| `alpha` |") && at("| `alpha` |") < at("| `beta` |"), "{text}");
        assert!(at("| 200 |") < at("| 503 |"));
        assert!(text.contains("The balances of some accounts."), "the summary, without its `POST /read/`: prefix");
        assert!(text.contains("**Cluster token:** required"));
        assert!(text.contains("The values \\| read"), "a | in a cell is escaped");
        assert!(text.contains("Down. Header `Retry-After`: Seconds."));
        assert!(text.contains("Unknown fields are refused."));
        assert!(text.contains("Runs beside PostgreSQL.\n"), "the self-reference is dropped");
        assert!(!text.contains("\n\n\n"));
        let anchors = anchors(&text);
        for link in links(&text) {
            let target = link.strip_prefix('#').unwrap();
            assert!(anchors.contains(target), "a link to {link}, which is not an anchor of\n{text}");
        }
    }

    #[test]
    fn a_schema_two_programs_define_differently_gets_an_entry_each() {
        let health =
            |fields: Value| json!({"components": {"schemas": {"Health": {"type": "object", "properties": fields}}}});
        let programs = [
            Program {
                id: "agent",
                title: "Agent",
                document: health(json!({"status": {"type": "string"}, "role": {"type": "string"}})),
            },
            Program { id: "client", title: "Client", document: health(json!({"status": {"type": "string"}})) },
            Program { id: "supervisor", title: "Supervisor", document: health(json!({"status": {"type": "string"}})) },
        ];
        let text = render("# Guide", &programs);
        assert!(text.contains("### `Health` (Agent)"), "{text}");
        assert!(text.contains("### `Health` (Client, Supervisor)"), "{text}");
        assert!(text.contains("<a id=\"schema-health-client\"></a>"), "{text}");
    }

    #[test]
    fn anchors_follow_github_and_skip_code_blocks() {
        let text = "# `GET /openapi.json`\n## Drills\n## Drills\n```sh\n# not a heading\n```\n<a id=\"x-y\"></a>\n";
        let expected: BTreeSet<String> = ["get-openapijson", "drills", "drills-1", "x-y"].map(String::from).into();
        assert_eq!(anchors(text), expected);
        assert_eq!(links("[a](#b) and [c](d.md#e)\n```\n[f](#g)\n```"), ["#b", "d.md#e"]);
    }
}
