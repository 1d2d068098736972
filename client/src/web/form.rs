//! `/create/`: the transaction form. GET shows it; POST runs the transaction with the same
//! [`Runner::run`](crate::run::Runner::run) as `client run` and shows the outcome under the form,
//! keeping what was typed.

use std::time::Instant;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use uuid::Uuid;

use super::page::render;
use super::state::now_ms;
use super::view::form::{
    error_view, history_of_error, history_of_report, read_choices, refused_view, result_view, Choice, ErrorView,
    ResultView,
};
use super::AppState;
use crate::metrics::FormOutcome;
use crate::run::{ReadFrom, RunError, RunOptions};
use crate::status::NodeReport;

/// What the text box shows on a fresh form: the original system's example.
pub const SAMPLE_TRANSACTION: &str = "r(1)w(2=22)r(3)w(5=34)";

#[derive(Template)]
#[template(path = "create.html")]
struct CreatePage {
    active: &'static str,
    sample: &'static str,
    leader: String,
    text: String,
    read_choices: Vec<Choice>,
    result: Option<ResultView>,
    error: Option<ErrorView>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateForm {
    /// The transaction. Missing is the same as empty: the page then says what to type.
    #[serde(default)]
    transaction: String,
    /// The same under the name the original system's form used, so that its scripts still
    /// work: either field may carry the transaction (both, only if they agree).
    #[serde(default)]
    content: String,
    /// `leader` (the default), `any`, or a node's address.
    #[serde(default)]
    read_from: String,
    /// To run a commit again whose outcome is unknown.
    #[serde(default)]
    txn_id: String,
    /// A client API key to send instead of the one `client serve` was given (agents run with
    /// `--api-keys` need one). Used for this transaction only, never shown again.
    #[serde(default)]
    api_key: String,
}

/// `GET /create/`: the transaction form.
#[utoipa::path(get, path = "/create/", tag = "pages",
    responses((status = 200, description = "The form, with the sample transaction", body = String, content_type = "text/html")))]
pub(crate) async fn show_form(State(state): State<AppState>) -> Response {
    let cluster = state.cluster().await.ok();
    render(&CreatePage {
        active: "create",
        sample: SAMPLE_TRANSACTION,
        leader: state.leader(),
        text: SAMPLE_TRANSACTION.to_string(),
        read_choices: read_choices(cluster.as_ref(), "leader"),
        result: None,
        error: None,
    })
}

/// `POST /create/`: runs the transaction typed in the form and shows the outcome under it.
#[utoipa::path(post, path = "/create/", tag = "pages",
    request_body(content = CreateForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The form again, with the outcome (COMMIT, ABORT with the reason, the values read) or what is wrong with the input", body = String, content_type = "text/html"),
        (status = 400, description = "The form gave `transaction` and `content` with different texts (the form again, saying so), or could not be read", body = String, content_type = "text/html"),
        (status = 413, description = "The form is over 64 KiB", body = String, content_type = "text/plain"),
        (status = 415, description = "Not `application/x-www-form-urlencoded`", body = String, content_type = "text/plain"),
        (status = 422, description = "The form could not be read", body = String, content_type = "text/plain"),
    ))]
pub(crate) async fn create(State(state): State<AppState>, Form(form): Form<CreateForm>) -> Response {
    let typed = form.transaction.clone();
    let text = match transaction_text(form.transaction, form.content) {
        Ok(text) => text,
        Err(refusal) => {
            crate::metrics::transaction(FormOutcome::Refused, None);
            let cluster = state.cached_cluster().await;
            let mut response = render(&CreatePage {
                active: "create",
                sample: SAMPLE_TRANSACTION,
                leader: state.leader(),
                text: typed,
                read_choices: read_choices(cluster.as_ref(), "leader"),
                result: None,
                error: Some(refused_view(&refusal)),
            });
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let leader = state.leader();
    let selected = if form.read_from.is_empty() { "leader".to_string() } else { form.read_from };
    // Only a read from elsewhere than the leader needs the supervisor's list of nodes now.
    let cluster = if selected == "leader" { state.cached_cluster().await } else { state.cluster().await.ok() };
    let page = |result, error| CreatePage {
        active: "create",
        sample: SAMPLE_TRANSACTION,
        leader: state.leader(),
        text: text.clone(),
        read_choices: read_choices(cluster.as_ref(), &selected),
        result,
        error,
    };

    let nodes = cluster.as_ref().map(|c| c.nodes.as_slice()).unwrap_or_default();
    // Only "any node" takes a turn of the rotation.
    let turn = if selected == "any" { state.next_any_turn() } else { 0 };
    let options = match run_options(nodes, &selected, &form.txn_id, turn) {
        Ok(options) => options,
        Err(refusal) => {
            crate::metrics::transaction(FormOutcome::Refused, None);
            return render(&page(None, Some(refused_view(&refusal))));
        }
    };
    let runner = match form.api_key.trim() {
        "" => state.runner().clone(),
        key if protocol::api_keys::is_key_text(key) => state.runner().clone().with_api_key(Some(key)),
        _ => {
            crate::metrics::transaction(FormOutcome::Refused, None);
            return render(&page(None, Some(refused_view(&FormError::NotAKey))));
        }
    };
    let started = Instant::now();
    let result = runner.run(&leader, &text, &options).await;
    crate::metrics::transaction(FormOutcome::of(&result), Some(started.elapsed()));
    match &result {
        Ok(report) => {
            tracing::info!(
                transaction = %report.transaction,
                outcome = report.headline(),
                leader = ?report.leader,
                latency_ms = report.latency.as_millis() as u64,
                "ran a transaction"
            );
            if let Some(found) = report.leader.as_ref().filter(|l| **l != leader) {
                tracing::info!(leader = %found, "following the leader this run found");
                state.set_leader(found);
            }
            state.record_run(history_of_report(report, now_ms()));
        }
        Err(RunError::Parse(_)) => {}
        Err(e) => {
            tracing::warn!("transaction {text:?} failed: {e}");
            state.record_run(history_of_error(&text, e, now_ms()));
        }
    }
    match result {
        Ok(report) => render(&page(Some(result_view(&report)), None)),
        Err(error) => render(&page(None, Some(error_view(&text, &error)))),
    }
}

/// Why the form's choices cannot be run; nothing is sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum FormError {
    /// `transaction` and `content` both hold a text, and not the same one: which to run is
    /// anyone's guess.
    #[error("the form gave two different transactions, {transaction:?} as transaction and {content:?} as content; send one of the two fields")]
    TwoTexts { transaction: String, content: String },
    /// The `txn_id` field holds something else than a UUID.
    #[error("txn_id {given:?} is not a UUID: {reason}")]
    NotAUuid { given: String, reason: String },
    /// The API key field holds something no agent's keys file could (the key is not repeated).
    #[error(
        "the API key given is not one: keys are {MIN_KEY_LEN} to {MAX_KEY_LEN} ASCII letters, digits, '-', '_' and '.'",
        MIN_KEY_LEN = protocol::api_keys::MIN_KEY_LEN,
        MAX_KEY_LEN = protocol::api_keys::MAX_KEY_LEN
    )]
    NotAKey,
    /// "Read from" names an address the supervisor does not list (the menu only offers those).
    #[error("{address:?} is not a node of the cluster as the supervisor lists it; choose another place to read from")]
    NotANode { address: String },
}

/// The transaction the form carries: `transaction`, or `content` as the original system's form
/// named it. Either may be missing or empty; both given must agree.
fn transaction_text(transaction: String, content: String) -> Result<String, FormError> {
    if transaction.is_empty() || transaction == content {
        Ok(if transaction.is_empty() { content } else { transaction })
    } else if content.is_empty() {
        Ok(transaction)
    } else {
        Err(FormError::TwoTexts { transaction, content })
    }
}

/// Reads the form's choices into [`RunOptions`], or says what is wrong with them. `nodes` are
/// the supervisor's; `turn` rotates "any node" reads over the live ones.
fn run_options(nodes: &[NodeReport], read_from: &str, txn_id: &str, turn: usize) -> Result<RunOptions, FormError> {
    let txn_id = match txn_id.trim() {
        "" => None,
        id => Some(
            Uuid::parse_str(id).map_err(|e| FormError::NotAUuid { given: id.to_string(), reason: e.to_string() })?,
        ),
    };
    let read_from = match read_from {
        "leader" => ReadFrom::Leader,
        "any" => {
            let mut alive: Vec<String> = nodes.iter().filter(|n| n.alive).map(|n| n.address.clone()).collect();
            if alive.is_empty() {
                ReadFrom::Leader
            } else {
                let start = turn % alive.len();
                alive.rotate_left(start);
                ReadFrom::Nodes(alive)
            }
        }
        address => {
            if !nodes.iter().any(|n| n.address == address) {
                return Err(FormError::NotANode { address: address.to_string() });
            }
            ReadFrom::Nodes(vec![address.to_string()])
        }
    };
    Ok(RunOptions { txn_id, read_from })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, Fake, FakeSupervisor};
    use crate::run::Runner;
    use crate::web::test_support::{get_page, post_form, state_for, supervisor_of};
    use crate::web::HISTORY_LEN;
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn the_form_s_choices_become_run_options_or_a_refusal() {
        let cluster: crate::status::SupervisorStatus =
            serde_json::from_str(crate::status::tests::AFTER_FAILOVER).unwrap();
        let nodes = &cluster.nodes;
        let read_from = |choice: &str, turn| run_options(nodes, choice, "", turn).map(|o| o.read_from);
        assert_eq!(read_from("leader", 0), Ok(ReadFrom::Leader));
        // The live nodes, from the turn's one on (127.0.0.1:8002 is down).
        let any = |turn| read_from("any", turn).unwrap();
        assert_eq!(any(0), ReadFrom::Nodes(vec!["127.0.0.1:8000".into(), "127.0.0.1:8001".into()]));
        assert_eq!(any(3), ReadFrom::Nodes(vec!["127.0.0.1:8001".into(), "127.0.0.1:8000".into()]));
        assert_eq!(run_options(&[], "any", "", 0).map(|o| o.read_from), Ok(ReadFrom::Leader), "no node known");
        assert_eq!(read_from("127.0.0.1:8002", 0), Ok(ReadFrom::Nodes(vec!["127.0.0.1:8002".into()])));
        assert_eq!(read_from("example.com:80", 0), Err(FormError::NotANode { address: "example.com:80".into() }));

        let id = Uuid::new_v4();
        assert_eq!(run_options(nodes, "leader", &format!(" {id} "), 0).map(|o| o.txn_id), Ok(Some(id)));
        let refusal = run_options(nodes, "leader", "nope", 0).unwrap_err();
        assert!(matches!(&refusal, FormError::NotAUuid { given, .. } if given == "nope"), "{refusal:?}");
        assert!(refusal.to_string().starts_with("txn_id \"nope\" is not a UUID: "), "{refusal}");
    }

    #[test]
    fn the_transaction_comes_from_either_field_and_both_must_agree() {
        let text = |t: &str, c: &str| transaction_text(t.to_string(), c.to_string());
        assert_eq!(text("r(1)", ""), Ok("r(1)".into()));
        assert_eq!(text("", "r(1)"), Ok("r(1)".into()));
        assert_eq!(text("r(1)", "r(1)"), Ok("r(1)".into()));
        assert_eq!(text("", ""), Ok(String::new()), "the page then says what to type");
        let refusal = text("r(1)", "r(2)").unwrap_err();
        assert_eq!(refusal, FormError::TwoTexts { transaction: "r(1)".into(), content: "r(2)".into() });
        assert!(refusal.to_string().contains("send one of the two fields"), "{refusal}");
    }

    #[tokio::test]
    async fn the_original_form_s_content_field_runs_and_two_texts_are_refused() {
        let agent = fake_agent::start(Fake { balances: BTreeMap::from([(1, 100)]), ..Fake::default() }).await;
        let state = state_for(&agent, None);
        let sent = post_form(&state, "/create/", "content=r%281%29w%282%3D22%29").await;
        assert_eq!(sent.code, StatusCode::OK);
        assert!(sent.body.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{}", sent.body);
        assert!(sent.body.contains(r#"value="r(1)w(2=22)""#), "{}", sent.body);

        let sent = post_form(&state, "/create/", "transaction=w%281%3D1%29&content=w%281%3D2%29").await;
        assert_eq!(sent.code, StatusCode::BAD_REQUEST);
        assert!(sent.body.contains("two different transactions"), "{}", sent.body);
        assert_eq!(state.history().len(), 1, "nothing was run for the refused form");
    }

    #[tokio::test]
    async fn a_parse_error_is_shown_inline_keeping_the_escaped_input() {
        let state = state_for("127.0.0.1:1", None);
        // r(1)"<b> url-encoded
        let sent = post_form(&state, "/create/", "transaction=r%281%29%22%3Cb%3E").await;
        assert_eq!(sent.code, StatusCode::OK);
        let html = sent.body;
        assert!(html.contains(r#"value="r(1)&#34;&#60;b&#62;""#), "{html}");
        assert!(html.contains("error at column 5"), "{html}");
        assert!(html.contains("r(1)<mark>&#34;</mark>&#60;b&#62;\n    ^ column 5</pre>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains(r#"aria-invalid="true""#), "{html}");
        assert!(state.history().is_empty(), "a parse error sends nothing");
    }

    #[tokio::test]
    async fn a_transaction_runs_and_shows_values_outcome_and_leader() {
        let fake = Fake { balances: BTreeMap::from([(1, 100)]), ..Fake::default() };
        let agent = fake_agent::start(fake).await;
        let state = state_for(&agent, None);
        let sent = post_form(&state, "/create/", "transaction=r%281%29w%282%3D22%29r%283%29").await;
        assert_eq!(sent.code, StatusCode::OK);
        let html = sent.body;
        assert!(html.contains(r#"<section id="result" class="card result commit">"#), "{html}");
        assert!(html.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{html}");
        assert!(html.contains("The transaction committed"), "{html}");
        assert!(html.contains("<tr><td>1</td><td>100</td></tr>"), "{html}");
        assert!(html.contains(r#"<tr><td>3</td><td><span class="muted">no such account</span></td></tr>"#), "{html}");
        assert!(html.contains(r#"<td id="fact-commit_ts">2000</td>"#), "{html}");
        assert!(html.contains(r#"<td id="fact-lsn">4</td>"#), "{html}");
        assert!(html.contains(&format!(r#"<td id="fact-leader">node0 at {agent}</td>"#)), "{html}");
        assert!(html.contains(r#"<td id="fact-latency">"#), "{html}");
        assert!(html.contains(r#"value="r(1)w(2=22)r(3)""#), "{html}");

        let history = state.history();
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].outcome, history[0].leader.as_deref()), (FormOutcome::Commit, Some(agent.as_str())));
    }

    #[tokio::test]
    async fn an_abort_shows_the_reason_and_the_key() {
        let fake = Fake { stale_account: Some(1), balances: BTreeMap::from([(1, 100)]), ..Fake::default() };
        let agent = fake_agent::start(fake).await;
        let state = state_for(&agent, None);
        let html = post_form(&state, "/create/", "transaction=r%281%29w%281%3D5%29").await.body;
        assert!(html.contains(r#"<h2 id="outcome">ABORT</h2>"#), "{html}");
        assert!(html.contains("nothing was written: account 1 was changed by another transaction"), "{html}");
        assert!(html.contains(r#"<td id="fact-reason">stale_read</td>"#), "{html}");
        assert!(html.contains(r#"<td id="fact-key">1</td>"#), "{html}");
    }

    #[tokio::test]
    async fn the_form_follows_the_leader_a_replica_names_and_remembers_it() {
        let leader = fake_agent::start(Fake::default()).await;
        let replica = fake_agent::start(Fake::replica_of(&leader)).await;
        let state = state_for(&replica, None);
        let html = post_form(&state, "/create/", "transaction=w%281%3D1%29").await.body;
        assert!(html.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{html}");
        assert!(html.contains("is not the leader; sent /commit/ to the leader"), "{html}");
        assert_eq!(state.leader(), leader);
    }

    #[tokio::test]
    async fn read_only_transactions_can_read_from_a_chosen_node() {
        let leader = fake_agent::start(Fake { balances: BTreeMap::from([(1, 7)]), ..Fake::default() }).await;
        let replica_fake = Fake { balances: BTreeMap::from([(1, 7)]), ..Fake::replica_of(&leader) };
        let replica = fake_agent::start(replica_fake).await;
        let supervisor = supervisor_of(&[(&leader, "leader"), (&replica, "replica")]).await;
        let state = state_for(&leader, Some(&supervisor.address));

        let form = get_page(&state, "/create/").await.body;
        assert!(form.contains(&format!(r#"<option value="{replica}">{replica} (node1, replica)</option>"#)), "{form}");

        let body = format!("transaction=r%281%29&read_from={replica}");
        let html = post_form(&state, "/create/", &body).await.body;
        assert!(html.contains(r#"<h2 id="outcome">READ</h2>"#), "{html}");
        assert!(html.contains(&format!("node1 (replica) at {replica}")), "{html}");
        assert!(html.contains(&format!(r#"<option value="{replica}" selected>"#)), "{html}");

        let html = post_form(&state, "/create/", "transaction=r%281%29&read_from=127.0.0.1%3A1").await.body;
        assert!(html.contains("is not a node of the cluster"), "{html}");
        let html = post_form(&state, "/create/", "transaction=r%281%29&txn_id=nope").await.body;
        assert!(html.contains("is not a UUID"), "{html}");
    }

    #[tokio::test]
    async fn an_unavailable_cluster_is_explained_and_an_unknown_commit_can_be_retried() {
        let closed = fake_agent::closed_port().await;
        let state = state_for(&closed, Some(&fake_agent::closed_port().await));
        let html = post_form(&state, "/create/", "transaction=r%281%29").await.body;
        assert!(html.contains("The cluster is unavailable"), "{html}");
        assert!(html.contains("the cluster seems to be stopped"), "{html}");
        assert_eq!(state.history()[0].outcome, FormOutcome::Unavailable);

        let deposed = Fake { unavailable_commits: fake_agent::counter(100), name_txn_in_503: true, ..Fake::default() };
        let agent = fake_agent::start(deposed.clone()).await;
        let supervisor = FakeSupervisor::start(Some(agent.clone())).await;
        let runner = Runner::new()
            .unwrap()
            .with_supervisor(Some(&supervisor.address))
            .with_follow_budget(Duration::from_millis(300));
        let state = AppState::new(&agent, runner).unwrap();
        let html = post_form(&state, "/create/", "transaction=w%281%3D1%29").await.body;
        let id = deposed.tries()[0].transaction.txn_id.unwrap();
        assert!(html.contains(&format!(r#"<input type="hidden" name="txn_id" value="{id}">"#)), "{html}");
        assert!(html.contains("Run it again with the same txn_id"), "{html}");

        // Running it again sends the same id.
        deposed.unavailable_commits.store(0, Ordering::SeqCst);
        let html = post_form(&state, "/create/", &format!("transaction=w%281%3D1%29&txn_id={id}")).await.body;
        assert!(html.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{html}");
        assert_eq!(deposed.commits()[0].transaction.txn_id, Some(id));
    }

    #[tokio::test]
    async fn history_keeps_the_last_twenty() {
        let agent = fake_agent::start(Fake::default()).await;
        let state = state_for(&agent, None);
        for i in 0..(HISTORY_LEN + 3) {
            post_form(&state, "/create/", &format!("transaction=w%28{i}%3D1%29")).await;
        }
        let history = state.history();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history[0].transaction, format!("w({}=1)", HISTORY_LEN + 2));
    }
}
