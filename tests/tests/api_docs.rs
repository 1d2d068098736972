//! docs/api.md is generated: the guide in docs/api-intro.md, then a reference rendered from the
//! three programs' OpenAPI documents (`e2e::api_docs`). This test fails when the file is not what
//! the code gives today, and rewrites it when run with `UPDATE_API_DOCS=1`:
//!
//! ```sh
//! UPDATE_API_DOCS=1 cargo test -p e2e --test api_docs
//! ```
//!
//! The documents are rendered as the programs describe themselves with a cluster token configured,
//! so that the reference shows which endpoints need it. No program is started.

use std::path::{Path, PathBuf};

use e2e::api_docs::{anchors, links, render, Program};

const REGENERATE: &str = "UPDATE_API_DOCS=1 cargo test -p e2e --test api_docs";

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn document(json: String) -> serde_json::Value {
    serde_json::from_str(&json).expect("an OpenAPI document is JSON")
}

/// docs/api.md as the guide and today's documents make it.
fn generated() -> String {
    let guide = std::fs::read_to_string(docs().join("api-intro.md")).expect("docs/api-intro.md is readable");
    let programs = [
        Program { id: "agent", title: "Agent", document: document(agent::openapi::json(true, true)) },
        Program { id: "supervisor", title: "Supervisor", document: document(supervisor::openapi::json(true)) },
        Program { id: "client", title: "Web client", document: document(client::openapi::json(true)) },
    ];
    render(&guide, &programs)
}

#[test]
fn docs_api_md_is_generated_from_the_openapi_documents() {
    let path = docs().join("api.md");
    let expected = generated();
    if std::env::var("UPDATE_API_DOCS").is_ok_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, &expected).expect("docs/api.md is writable");
        eprintln!("wrote {}", path.display());
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        let (line, (found, wanted)) = actual
            .lines()
            .chain(std::iter::repeat(""))
            .zip(expected.lines().chain(std::iter::repeat("")))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("", "")));
        panic!(
            "docs/api.md is not what docs/api-intro.md and the OpenAPI documents give (first difference at line {}):\n  \
             the file:  {found}\n  generated: {wanted}\n\nRegenerate it (do not edit it by hand) with\n\n    {REGENERATE}\n",
            line + 1
        );
    }
}

/// Every link of the page leads somewhere: an anchor of the page, or a file of the repository.
#[test]
fn every_link_in_docs_api_md_resolves() {
    let text = generated();
    let anchors = anchors(&text);
    let mut broken = Vec::new();
    for link in links(&text) {
        if link.starts_with("http://") || link.starts_with("https://") {
            continue;
        }
        let ok = match link.split_once('#') {
            Some(("", anchor)) => anchors.contains(anchor),
            Some((file, _)) => docs().join(file).exists(),
            None => docs().join(&link).exists(),
        };
        if !ok {
            broken.push(link);
        }
    }
    assert!(broken.is_empty(), "links in docs/api.md (or docs/api-intro.md) that lead nowhere: {broken:?}");
}
