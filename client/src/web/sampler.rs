//! The background sampler behind the cluster page's plots: once a second, `client serve` reads
//! the leader's `/metrics` and keeps what it says about commits (a bounded ring in the app's
//! state, [`SAMPLES_KEPT`] long). The plots are drawn from that ring by the pure
//! `view::plot`, which also explains how a failed scrape or a new leader breaks a line.
//!
//! One request a second per client, to the leader only; nothing is sampled while nobody is
//! leading (the samples then say the scrape failed).

use std::time::Duration;

use super::state::now_ms;
use super::view::plot::{parse_scrape, Sample, Scrape};
use super::AppState;
use crate::run::base_url;

/// How often the leader's `/metrics` is read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How far back the plots reach.
pub const PLOT_WINDOW: Duration = Duration::from_secs(600);
/// Samples kept: the window, and one more to take the first difference from.
pub(super) const SAMPLES_KEPT: usize = (PLOT_WINDOW.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize + 1;
/// A scrape slower than the interval would pile up; the leader answers `/metrics` from memory.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// A `/metrics` page larger than this is not the agent's.
const MAX_SCRAPE_BYTES: usize = 1 << 20;

/// Samples the leader's metrics every [`SAMPLE_INTERVAL`], for as long as `client serve` runs.
pub async fn run(state: AppState) {
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        sample_once(&state).await;
    }
}

/// Reads the metrics of the leader the supervisor names (or, without a supervisor's answer,
/// the one this client sends commits to) and records the sample.
pub(super) async fn sample_once(state: &AppState) {
    let leader = match state.cluster().await {
        Ok(cluster) => cluster.leader,
        Err(_) => Some(state.leader()),
    };
    let sample = match leader {
        Some(node) => {
            let scrape = match scrape(state.http(), &node).await {
                Ok(scrape) => Some(scrape),
                Err(e) => {
                    tracing::debug!(%node, error = %e, "cannot read the leader's metrics for the plots");
                    None
                }
            };
            Sample { at_ms: now_ms(), node, scrape }
        }
        None => Sample { at_ms: now_ms(), node: String::new(), scrape: None },
    };
    state.record_sample(sample);
}

/// `GET /metrics` of `node`, read for the plots.
async fn scrape(http: &reqwest::Client, node: &str) -> Result<Scrape, String> {
    let response = http
        .get(format!("{}/metrics", base_url(node)))
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .map_err(|e| crate::run::root_cause(&e))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| crate::run::root_cause(&e))?;
    if bytes.len() > MAX_SCRAPE_BYTES {
        return Err(format!("{} bytes is not a metrics page", bytes.len()));
    }
    Ok(parse_scrape(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, Fake};
    use crate::web::test_support::{get_page, post_form, state_for, supervisor_of};

    #[tokio::test]
    async fn the_sampler_reads_the_leader_s_commits_and_the_page_plots_them() {
        let leader = fake_agent::start(Fake::default()).await;
        let supervisor = supervisor_of(&[(&leader, "leader")]).await;
        let state = state_for(&leader, Some(&supervisor.address));
        let html = get_page(&state, "/cluster/").await.body;
        assert!(html.contains(r#"<svg id="plot-commits""#), "{html}");
        assert!(html.contains("no data yet"), "{html}");

        sample_once(&state).await;
        post_form(&state, "/create/", "transaction=w%281%3D1%29").await;
        post_form(&state, "/create/", "transaction=w%281%3D2%29").await;
        sample_once(&state).await;
        let samples = state.samples();
        let commits: Vec<_> = samples.iter().map(|s| (s.node.as_str(), s.scrape.as_ref().map(|s| s.commits))).collect();
        assert_eq!(commits, [(leader.as_str(), Some(0.0)), (leader.as_str(), Some(2.0))]);
        let html = get_page(&state, "/cluster/").await.body;
        assert!(html.contains(r#"<path class="line rate""#), "{html}");
        assert!(html.contains(r#"<path class="line p50""#), "{html}");

        // A leader that does not answer: the sample says so (and the line will break there).
        supervisor.set_status(serde_json::json!({"leader": fake_agent::closed_port().await}));
        state.forget_cluster().await;
        sample_once(&state).await;
        assert_eq!(state.samples().last().map(|s| s.scrape.is_none()), Some(true));
    }

    #[test]
    fn the_ring_holds_ten_minutes_and_one() {
        assert_eq!(SAMPLES_KEPT, 601);
        let state = state_for("127.0.0.1:1", None);
        for at_ms in 0..(SAMPLES_KEPT as u64 + 5) {
            state.record_sample(Sample { at_ms, node: "a".into(), scrape: None });
        }
        let samples = state.samples();
        assert_eq!((samples.len(), samples[0].at_ms), (SAMPLES_KEPT, 5));
    }
}
