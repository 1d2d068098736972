//! Checks of the documentation that need no cluster:
//!
//! - the monitoring examples in docs/monitoring/ parse (the Grafana dashboard as JSON, the alert
//!   rules and the scrape configuration as YAML), and every metric they name is one the agent,
//!   the supervisor or the client records (their sources are read for its name);
//! - the README and docs/ stand on their own: no reference to a design document, an issue or a
//!   file outside the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files_under(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Every `rmw_...` name in a text, as written (with `_bucket`, `_sum`, `_count` if it has them).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("rmw_") {
        let before = rest[..at].chars().next_back();
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        // `rmw_` inside a longer word (a job name `rmw-agent` has a dash, not an underscore).
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        names.insert(name);
    }
    names
}

/// The Rust sources of the three programs, concatenated.
fn program_sources() -> String {
    let mut files = Vec::new();
    for program in ["agent", "supervisor", "client"] {
        files_under(&repo().join(program).join("src"), "rs", &mut files);
    }
    files.iter().map(|f| read(f)).collect::<Vec<_>>().join("\n")
}

/// Fails naming every metric of `names` that no program records. A histogram's series
/// (`_bucket`, `_sum`, `_count`) count as the histogram.
fn assert_recorded(names: &BTreeSet<String>, sources: &str, file: &str) {
    let unknown: Vec<&String> = names
        .iter()
        .filter(|name| {
            let base =
                ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name);
            !sources.contains(&format!("\"{name}\"")) && !sources.contains(&format!("\"{base}\""))
        })
        .collect();
    assert!(unknown.is_empty(), "{file} names metrics that no program records: {unknown:?}");
}

fn monitoring(file: &str) -> PathBuf {
    repo().join("docs/monitoring").join(file)
}

/// The job names of the scrape configuration.
fn scrape_jobs() -> BTreeSet<String> {
    let config: serde_yaml::Value =
        serde_yaml::from_str(&read(&monitoring("prometheus.yml"))).expect("prometheus.yml is YAML");
    let jobs: BTreeSet<String> = config["scrape_configs"]
        .as_sequence()
        .expect("prometheus.yml has scrape_configs")
        .iter()
        .map(|job| job["job_name"].as_str().expect("every scrape config has a job_name").to_string())
        .collect();
    assert_eq!(jobs, ["rmw-agent", "rmw-client", "rmw-supervisor"].map(String::from).into());
    jobs
}

/// Every `job="..."` a query selects is a job of the scrape configuration.
fn assert_known_jobs(expr: &str, jobs: &BTreeSet<String>, what: &str) {
    for piece in expr.split("job=\"").skip(1) {
        let job = piece.split('"').next().unwrap_or_default();
        assert!(jobs.contains(job), "{what}: job {job:?} is not scraped by prometheus.yml: {expr}");
    }
}

#[test]
fn the_alert_rules_parse_and_name_real_metrics() {
    let jobs = scrape_jobs();
    let rules: serde_yaml::Value = serde_yaml::from_str(&read(&monitoring("alerts.yml"))).expect("alerts.yml is YAML");
    let mut alerts = BTreeSet::new();
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("alerts.yml has groups") {
        for rule in group["rules"].as_sequence().expect("every group has rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert").to_string();
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{alert} has no expr"));
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{alert} has no summary");
            assert!(rule["labels"]["severity"].as_str().is_some(), "{alert} has no severity");
            assert_known_jobs(expr, &jobs, &alert);
            names.extend(metric_names(expr));
            alerts.insert(alert);
        }
    }
    for wanted in [
        "RmwWritesUnavailable",
        "RmwNodeDown",
        "RmwLagGrowing",
        "RmwFailoverHappened",
        "RmwRecoveriesFailing",
        "RmwNotEnoughReplicas",
    ] {
        assert!(alerts.contains(wanted), "alerts.yml has no {wanted}: {alerts:?}");
    }
    assert!(names.len() >= 5, "{names:?}");
    assert_recorded(&names, &program_sources(), "alerts.yml");
}

#[test]
fn the_dashboard_parses_and_names_real_metrics() {
    let jobs = scrape_jobs();
    let dashboard: Value =
        serde_json::from_str(&read(&monitoring("grafana-dashboard.json"))).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("the dashboard has panels");
    let mut names = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_i64().expect("every panel has an id")), "{title}: a panel id twice");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title} has no targets"));
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert_known_jobs(expr, &jobs, title);
            names.extend(metric_names(expr));
        }
    }
    // What an operator looks at first (docs/operations.md, "Metrics").
    for wanted in [
        "rmw_commits_total",
        "rmw_aborts_total",
        "rmw_commit_seconds_bucket",
        "rmw_phase_seconds_bucket",
        "rmw_node_lag",
        "rmw_node_alive",
        "rmw_writes_available",
        "rmw_failovers_total",
    ] {
        assert!(names.contains(wanted), "the dashboard shows no {wanted}: {names:?}");
    }
    assert_recorded(&names, &program_sources(), "grafana-dashboard.json");
}

#[test]
fn metric_names_finds_whole_names_only() {
    let names = metric_names(r#"sum(rate(rmw_commits_total{job="rmw-agent"}[1m])) / xrmw_no rmw_a_bucket"#);
    assert_eq!(names, ["rmw_a_bucket", "rmw_commits_total"].map(String::from).into());
}

/// A reference that points out of the repository, if the line holds one.
fn outside_reference(line: &str) -> Option<&'static str> {
    let words: Vec<&str> = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '/')).collect();
    for pair in words.windows(2) {
        let numbered = pair[1].chars().next().is_some_and(|c| c.is_ascii_digit());
        if pair[0] == "DESIGN" && numbered {
            return Some("a section of a design document");
        }
        if pair[0].eq_ignore_ascii_case("issue") && numbered {
            return Some("an issue number");
        }
    }
    if line.contains("DESIGN.md") {
        return Some("a design document");
    }
    if line.contains("../../") || line.contains("shared/") {
        return Some("a path outside the repository");
    }
    if line.contains("outside the repository") {
        return Some("something kept outside the repository");
    }
    None
}

#[test]
fn the_docs_refer_to_nothing_outside_the_repository() {
    let mut files = vec![repo().join("README.md")];
    files_under(&repo().join("docs"), "md", &mut files);
    assert!(files.len() > 4, "{files:?}");
    let mut found = Vec::new();
    for file in &files {
        for (n, line) in read(file).lines().enumerate() {
            if let Some(what) = outside_reference(line) {
                found.push(format!("{}:{}: {what}: {line}", file.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the docs must stand on their own (bring the rule into docs/, e.g. docs/architecture.md's \"The rules\"):\n{}",
        found.join("\n")
    );
}

#[test]
fn outside_references_are_recognised() {
    assert!(outside_reference("after the first replica's: DESIGN 4)").is_some());
    assert!(outside_reference("the targets of issue 7 (met or not)").is_some());
    assert!(outside_reference("[`DESIGN.md`](../../shared/DESIGN.md)").is_some());
    assert!(outside_reference("the rules in [architecture.md](architecture.md#the-rules)").is_none());
    assert!(outside_reference("an issue with 3 nodes").is_none());
}
