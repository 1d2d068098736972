//! The leader's own view of a step: how many rounds it ran, how big they were and how long
//! each phase took, from the difference of its `/metrics` histograms before and after the step.
//! This is the profile of the commit path: it says whether a round is slow or simply small.

use std::collections::HashMap;

use serde::Serialize;

/// Sums and counts of the leader's histograms, keyed by series (name and labels).
#[derive(Debug, Clone, Default)]
pub struct Scrape(HashMap<String, (f64, f64)>);

/// Means over one step's rounds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rounds {
    pub rounds: u64,
    pub mean_batch: f64,
    /// Phase one: PREPARE on every member, as the leader waits for it.
    pub prepare_ms: f64,
    /// Phase two: the decision, durable on every member.
    pub decide_ms: f64,
    /// PostgreSQL's part of phase one on the leader itself (one PREPARE TRANSACTION per round).
    pub store_prepare_ms: f64,
    /// The leader's own COMMIT PREPARED.
    pub store_commit_ms: f64,
}

const BATCH: &str = "rmw_batch_size";
const PREPARE: &str = "rmw_phase_seconds{phase=\"prepare\"}";
const DECIDE: &str = "rmw_phase_seconds{phase=\"decide\"}";
const STORE_PREPARE: &str = "rmw_store_seconds{op=\"prepare\"}";
const STORE_COMMIT: &str = "rmw_store_seconds{op=\"commit_prepared\"}";
const SERIES: [&str; 5] = [BATCH, PREPARE, DECIDE, STORE_PREPARE, STORE_COMMIT];

impl Scrape {
    /// Reads the `_sum` and `_count` lines of the series above from Prometheus text.
    pub fn parse(text: &str) -> Scrape {
        let mut out: HashMap<String, (f64, f64)> = HashMap::new();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (key, is_sum) = match strip_suffix(series, "_sum") {
                Some(key) => (key, true),
                None => match strip_suffix(series, "_count") {
                    Some(key) => (key, false),
                    None => continue,
                },
            };
            if SERIES.contains(&key.as_str()) {
                let (sum, count) = out.entry(key).or_default();
                *if is_sum { sum } else { count } = value;
            }
        }
        Scrape(out)
    }

    /// Fetches and parses `<base_url>/metrics`; empty when it cannot.
    pub async fn fetch(http: &reqwest::Client, base_url: &str) -> Scrape {
        let text = async { http.get(format!("{base_url}/metrics")).send().await?.text().await };
        text.await.map(|t| Scrape::parse(&t)).unwrap_or_default()
    }

    /// The rounds run between `self` (before) and `after`; None if the batch counter did not
    /// grow (no round ran, or the leader restarted and its counters began again).
    pub fn rounds_until(&self, after: &Scrape) -> Option<Rounds> {
        let delta = |key: &str| {
            let (s0, c0) = self.0.get(key).copied().unwrap_or_default();
            let (s1, c1) = after.0.get(key).copied()?;
            (c1 > c0).then(|| ((s1 - s0) / (c1 - c0), c1 - c0))
        };
        let (mean_batch, rounds) = delta(BATCH)?;
        let ms = |key: &str| delta(key).map_or(0.0, |(mean, _)| mean * 1000.0);
        Some(Rounds {
            rounds: rounds as u64,
            mean_batch,
            prepare_ms: ms(PREPARE),
            decide_ms: ms(DECIDE),
            store_prepare_ms: ms(STORE_PREPARE),
            store_commit_ms: ms(STORE_COMMIT),
        })
    }
}

/// The series `name{labels}` (or `name`) of a `name_sum{labels}` (or `name_sum`) line.
fn strip_suffix(series: &str, suffix: &str) -> Option<String> {
    match series.split_once('{') {
        Some((name, labels)) => Some(format!("{}{{{labels}", name.strip_suffix(suffix)?)),
        None => series.strip_suffix(suffix).map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE rmw_batch_size histogram
rmw_batch_size_bucket{le=\"1\"} 3
rmw_batch_size_sum 10
rmw_batch_size_count 5
rmw_phase_seconds_sum{phase=\"prepare\"} 0.010
rmw_phase_seconds_count{phase=\"prepare\"} 5
rmw_phase_seconds_sum{phase=\"decide\"} 0.005
rmw_phase_seconds_count{phase=\"decide\"} 5
";
    const AFTER: &str = "\
rmw_batch_size_sum 110
rmw_batch_size_count 15
rmw_phase_seconds_sum{phase=\"prepare\"} 0.040
rmw_phase_seconds_count{phase=\"prepare\"} 15
rmw_phase_seconds_sum{phase=\"decide\"} 0.025
rmw_phase_seconds_count{phase=\"decide\"} 15
";

    #[test]
    fn means_come_from_the_difference() {
        let rounds = Scrape::parse(BEFORE).rounds_until(&Scrape::parse(AFTER)).expect("rounds");
        assert_eq!(rounds.rounds, 10);
        assert!((rounds.mean_batch - 10.0).abs() < 1e-9);
        assert!((rounds.prepare_ms - 3.0).abs() < 1e-9);
        assert!((rounds.decide_ms - 2.0).abs() < 1e-9);
        assert_eq!(rounds.store_commit_ms, 0.0);
    }

    #[test]
    fn no_new_round_is_none() {
        assert_eq!(Scrape::parse(AFTER).rounds_until(&Scrape::parse(AFTER)), None);
        assert_eq!(Scrape::default().rounds_until(&Scrape::default()), None);
    }
}
