//! `client serve`: a small web page to type a transaction into and see what happened.
//!
//! `GET /create/` shows the form; `POST /create/` runs the transaction with the same
//! [`Runner::run`] as `client run` and shows the result under the form, keeping what was typed.
//! Every piece of text that reaches the page goes through [`html_escape`].

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{Html, Redirect};
use axum::routing::get;
use axum::{Form, Json, Router};
use protocol::Outcome;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::run::{abort_reason, describe_writes, role_name, RunError, RunReport, Runner};

/// What the text box shows on a fresh form: the original system's example.
pub const SAMPLE_TRANSACTION: &str = "r(1)w(2=22)r(3)w(5=34)";
/// Largest form the page accepts. A transaction of a thousand operations fits many times over.
const MAX_FORM_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    /// The agent transactions are sent to (`host:port`); a 421 is followed to the leader, and
    /// the supervisor's `/leader_changed/` replaces it.
    pub agent: Arc<std::sync::RwLock<String>>,
    pub runner: Runner,
}

impl AppState {
    pub fn new(agent: &str, runner: Runner) -> AppState {
        AppState { agent: Arc::new(std::sync::RwLock::new(agent.to_string())), runner }
    }

    /// The agent to send the next transaction to.
    pub fn agent(&self) -> String {
        self.agent.read().map_or_else(|p| p.into_inner().clone(), |a| a.clone())
    }

    fn set_agent(&self, leader: &str) {
        match self.agent.write() {
            Ok(mut agent) => *agent = leader.to_string(),
            Err(p) => *p.into_inner() = leader.to_string(),
        }
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/create/") }))
        .route("/health", get(health))
        .route("/create/", get(show_form).post(create))
        .route("/leader_changed/", axum::routing::post(leader_changed))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn show_form(State(state): State<AppState>) -> Html<String> {
    Html(page(&state.agent(), SAMPLE_TRANSACTION, ""))
}

/// The supervisor announces a new leader (as the original did, with an address for a port).
async fn leader_changed(State(state): State<AppState>, body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    match serde_json::from_slice::<protocol::LeaderChanged>(&body) {
        Ok(change) => {
            tracing::info!(leader = %change.leader, term = ?change.term, "the supervisor announced a new leader");
            state.set_agent(&change.leader);
            Json(json!({ "leader": change.leader })).into_response()
        }
        Err(e) => (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({ "error": "bad_request", "message": format!("expected {{\"leader\": \"host:port\"}}: {e}") })),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct CreateForm {
    /// Missing is the same as empty: the page then says what to type.
    #[serde(default)]
    transaction: String,
}

async fn create(State(state): State<AppState>, Form(form): Form<CreateForm>) -> Html<String> {
    let text = form.transaction;
    let agent = state.agent();
    let result = state.runner.run(&agent, &text, None).await;
    match &result {
        Ok(report) => tracing::info!(
            transaction = %report.transaction,
            aborted = report.aborted(),
            latency_ms = report.latency.as_millis() as u64,
            "ran a transaction"
        ),
        Err(RunError::Parse(_)) => {}
        Err(e) => tracing::warn!("transaction {text:?} failed: {e}"),
    }
    let section = match &result {
        Ok(report) => report_html(report),
        Err(error) => error_html(&text, error),
    };
    Html(page(&agent, &text, &section))
}

/// The whole page: the form, with `text` in the box, then `result` (already HTML).
fn page(agent: &str, text: &str, result: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Transaction</title>
<style>
body {{ font-family: sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; }}
input[type=text] {{ font-family: monospace; font-size: 1.1rem; width: 100%; box-sizing: border-box; padding: .4rem; }}
table {{ border-collapse: collapse; margin: .5rem 0; }}
td, th {{ border: 1px solid #bbb; padding: .2rem .6rem; text-align: left; }}
.commit {{ color: #176b2c; }} .abort {{ color: #a12020; }} .error {{ color: #a12020; }}
pre {{ background: #f4f4f4; padding: .5rem; }}
</style>
</head>
<body>
<h1>Run a transaction</h1>
<p>Reads <code>r(account)</code> and writes <code>w(account=balance)</code>, for example
<code>{sample}</code>. Sent to the agent at <code>{agent}</code>.</p>
<form method="post" action="/create/">
<input type="text" id="transaction" name="transaction" value="{text}" autofocus spellcheck="false">
<p><button type="submit">Run</button></p>
</form>
{result}
</body>
</html>
"#,
        sample = html_escape(SAMPLE_TRANSACTION),
        agent = html_escape(agent),
        text = html_escape(text),
    )
}

fn report_html(report: &RunReport) -> String {
    let mut out = String::from("<section id=\"result\">\n");
    let outcome = match &report.commit {
        None => "<h2 id=\"outcome\" class=\"commit\">READ (read-only, nothing to commit)</h2>".to_string(),
        Some(c) if c.commit == Outcome::Commit => "<h2 id=\"outcome\" class=\"commit\">COMMIT</h2>".to_string(),
        Some(_) => "<h2 id=\"outcome\" class=\"abort\">ABORT</h2>".to_string(),
    };
    out.push_str(&outcome);
    out.push('\n');
    for note in &report.notes {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", html_escape(note));
    }

    out.push_str("<table>\n");
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", html_escape(name), html_escape(&value));
    };
    row("transaction", report.transaction.clone());
    if let Some(commit) = &report.commit {
        row("txn_id", commit.txn_id.to_string());
        match commit.commit {
            Outcome::Commit => {
                row("commit_ts", commit.commit_ts.map_or("?".into(), |t| t.to_string()));
                row("lsn", commit.lsn.map_or("?".into(), |l| l.to_string()));
                row("written", describe_writes(&report.writes));
            }
            Outcome::Abort => {
                row("reason", abort_reason(commit));
                if let Some(key) = commit.key {
                    row("key", key.to_string());
                }
            }
        }
    }
    if let Some(read) = &report.read {
        row("read timestamp", read.timestamp.to_string());
        row("read from", format!("{} ({}) at {}, lsn {}", read.node, role_name(read.role), read.agent, read.lsn));
    }
    row("latency", format!("{:.1} ms", report.latency.as_secs_f64() * 1000.0));
    out.push_str("</table>\n");

    if let Some(read) = &report.read {
        out.push_str("<h3>Values read</h3>\n<table id=\"values\">\n<tr><th>account</th><th>balance</th></tr>\n");
        for (account, balance) in &read.values {
            let balance = balance.map_or_else(|| "(no such account)".to_string(), |b| b.to_string());
            let _ = writeln!(out, "<tr><td>{account}</td><td>{}</td></tr>", html_escape(&balance));
        }
        out.push_str("</table>\n");
    }
    out.push_str("</section>\n");
    out
}

fn error_html(text: &str, error: &RunError) -> String {
    let mut out = String::from("<section id=\"result\">\n");
    match error {
        RunError::Parse(e) => {
            let _ = writeln!(out, "<h2 class=\"error\">Not a transaction</h2>");
            let _ = writeln!(out, "<p id=\"error\" class=\"error\">{}</p>", html_escape(&e.to_string()));
            // Point at the column under a copy of the input.
            let caret = " ".repeat(e.column.saturating_sub(1)) + "^";
            let _ = writeln!(out, "<pre>{}\n{}</pre>", html_escape(text), caret);
        }
        RunError::Rejected(message) => {
            let _ = writeln!(out, "<h2 class=\"error\">Refused by the agent</h2>");
            let _ = writeln!(out, "<p id=\"error\" class=\"error\">{}</p>", html_escape(message));
        }
        RunError::Unavailable(message) => {
            let _ = writeln!(out, "<h2 class=\"error\">Cluster unavailable</h2>");
            let _ = writeln!(out, "<p id=\"error\" class=\"error\">{}</p>", html_escape(message));
        }
    }
    out.push_str("</section>\n");
    out
}

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, Fake};
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use std::collections::BTreeMap;
    use tower::ServiceExt;

    async fn app_for(agent: &str) -> Router {
        app(AppState::new(agent, Runner::new().unwrap()))
    }

    async fn send(router: Router, request: Request<Body>) -> (StatusCode, String, Option<String>) {
        let response = router.oneshot(request).await.unwrap();
        let code = response.status();
        let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (code, String::from_utf8(bytes.to_vec()).unwrap(), location)
    }

    fn post_form(body: &str) -> Request<Body> {
        Request::post("/create/")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn root_redirects_to_the_form_and_the_form_has_the_sample() {
        let (code, _, location) =
            send(app_for("127.0.0.1:1").await, Request::get("/").body(Body::empty()).unwrap()).await;
        assert!(code.is_redirection());
        assert_eq!(location.as_deref(), Some("/create/"));

        let (code, html, _) =
            send(app_for("127.0.0.1:1").await, Request::get("/create/").body(Body::empty()).unwrap()).await;
        assert_eq!(code, StatusCode::OK);
        assert!(html.contains(r#"name="transaction" value="r(1)w(2=22)r(3)w(5=34)""#), "{html}");

        let (code, body, _) =
            send(app_for("127.0.0.1:1").await, Request::get("/health").body(Body::empty()).unwrap()).await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
    }

    #[tokio::test]
    async fn a_parse_error_is_shown_inline_keeping_the_escaped_input() {
        // r(1)"<b> url-encoded
        let (code, html, _) = send(app_for("127.0.0.1:1").await, post_form("transaction=r%281%29%22%3Cb%3E")).await;
        assert_eq!(code, StatusCode::OK);
        assert!(html.contains(r#"value="r(1)&quot;&lt;b&gt;""#), "{html}");
        assert!(html.contains("column 5"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
    }

    #[tokio::test]
    async fn a_transaction_runs_and_shows_values_and_outcome() {
        let fake = Fake { balances: BTreeMap::from([(1, 100)]), ..Fake::default() };
        let agent = fake_agent::start(fake).await;
        let (code, html, _) = send(app_for(&agent).await, post_form("transaction=r%281%29w%282%3D22%29r%283%29")).await;
        assert_eq!(code, StatusCode::OK);
        assert!(html.contains(r#"<h2 id="outcome" class="commit">COMMIT</h2>"#), "{html}");
        assert!(html.contains("<tr><td>1</td><td>100</td></tr>"), "{html}");
        assert!(html.contains("<tr><td>3</td><td>(no such account)</td></tr>"), "{html}");
        assert!(html.contains("<th>commit_ts</th><td>2000</td>"), "{html}");
        assert!(html.contains("<th>latency</th>"), "{html}");
        assert!(html.contains(r#"value="r(1)w(2=22)r(3)""#), "{html}");
    }

    #[tokio::test]
    async fn an_unreachable_agent_is_reported() {
        let closed = fake_agent::closed_port().await;
        let (_, html, _) = send(app_for(&closed).await, post_form("transaction=r%281%29")).await;
        assert!(html.contains("Cluster unavailable"), "{html}");
    }

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(html_escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
