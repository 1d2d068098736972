//! Prometheus metrics, served at `GET /metrics`. Every name starts with `rmw_`; the list, with
//! what each means, is in docs/api.md.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: from a fast local commit to a failover-length stall.
const SECONDS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
/// Transactions per round: group commit at work.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the process-wide recorder. Called once by `main`; without it (unit tests) the
/// metrics macros record nothing.
pub fn install() -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full("rmw_batch_size".into()), BATCH)?
        .install_recorder()?;
    let _ = HANDLE.set(handle);
    Ok(())
}

/// The metrics in Prometheus text format, if a recorder is installed.
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}
