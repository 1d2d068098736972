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
