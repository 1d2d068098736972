//! The cluster page's plots: commits per second and the p50/p99 commit latency over the last
//! minutes, from the leader's `/metrics` as `client serve` samples it once a second.
//!
//! Three pure steps, each tested alone:
//! 1. [`parse_scrape`]: one `/metrics` text into the two things plotted, the commit counter
//!    (`rmw_commits_total`) and the committed transactions' latency histogram
//!    (`rmw_commit_seconds_bucket{outcome="commit"}`, cumulative counts per upper bound `le`).
//! 2. [`series`]: consecutive samples into points, each from the difference of two scrapes of
//!    the same node: the rate is the counter's increase over the time between them, the
//!    quantiles come from the histogram's increase ([`quantile`], interpolated within a bucket
//!    as Prometheus's `histogram_quantile` does). A failed scrape, a new leader or a counter
//!    that went down (the agent restarted) breaks the line instead of drawing a false slope.
//! 3. [`svg`]: the points as an inline SVG chart, axes and labels included; no script, no font
//!    of its own (the page's style sheet colours it).
//!
//! Invariant, as for every view builder: no I/O and no clock; the sampler passes the times in.

use std::fmt::Write as _;

/// What one scrape of the leader's `/metrics` says about commits.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Scrape {
    /// `rmw_commits_total`: transactions committed by that node as leader (0 before its first).
    pub(crate) commits: f64,
    /// `rmw_commit_seconds_bucket{outcome="commit"}`: (upper bound in seconds, cumulative
    /// count), ascending, the last one `+Inf`.
    pub(crate) buckets: Vec<(f64, f64)>,
}

/// One sample the sampler took: when, from which node, and what it got (`None`: the scrape
/// failed, which breaks the plotted line).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) at_ms: u64,
    pub(crate) node: String,
    pub(crate) scrape: Option<Scrape>,
}

/// One plotted moment: the rate and latencies between a sample and the one before it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    pub(crate) at_ms: u64,
    pub(crate) commits_per_sec: f64,
    /// Seconds; `None` when nothing committed in the interval.
    pub(crate) p50: Option<f64>,
    pub(crate) p99: Option<f64>,
}

/// Reads the commit counter and the commit latency histogram out of Prometheus text. Lines it
/// does not need, or cannot read, are skipped: a node that committed nothing yet has neither
/// series, which reads as zero.
pub(crate) fn parse_scrape(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        match name {
            "rmw_commits_total" => scrape.commits += value,
            "rmw_commit_seconds_bucket" => {
                let labels = parse_labels(labels);
                let label = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
                if label("outcome") != Some("commit") {
                    continue;
                }
                let bound = match label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse::<f64>() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                scrape.buckets.push((bound, value));
            }
            _ => {}
        }
    }
    scrape.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    scrape
}

/// `a="x",b="y"` into pairs (the values this module reads hold no quotes or commas).
fn parse_labels(labels: &str) -> Vec<(&str, &str)> {
    labels
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.trim(), value.trim().trim_matches('"')))
        })
        .collect()
}

/// The `q` quantile (0 to 1) of a histogram given as cumulative counts per upper bound,
/// ascending with `+Inf` last: linear within the bucket that holds the rank, from the bucket
/// below's bound (0 for the first). A rank in the `+Inf` bucket reads as the highest finite
/// bound. `None` for an empty histogram.
pub(crate) fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank && count > lower.1 {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let within = (rank - lower.1) / (count - lower.1);
            return Some(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// The histogram's increase from `before` to `after` (same bounds), or `None` when the bounds
/// differ or a count went down.
fn bucket_increase(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<Vec<(f64, f64)>> {
    if before.is_empty() {
        return Some(after.to_vec());
    }
    if before.len() != after.len() {
        return None;
    }
    before.iter().zip(after).map(|(&(b, x), &(a, y))| (b == a && y >= x).then_some((a, y - x))).collect()
}

/// The points between consecutive samples, in runs: a new run starts after a failed scrape, a
/// change of leader, or counters that went down (a restarted agent).
pub(crate) fn series(samples: &[Sample]) -> Vec<Vec<Point>> {
    let mut runs: Vec<Vec<Point>> = Vec::new();
    let mut run: Vec<Point> = Vec::new();
    for pair in samples.windows(2) {
        let point = match (&pair[0], &pair[1]) {
            (
                Sample { at_ms: t0, node: n0, scrape: Some(before) },
                Sample { at_ms: t1, node: n1, scrape: Some(after) },
            ) if n0 == n1 && t1 > t0 && after.commits >= before.commits => {
                bucket_increase(&before.buckets, &after.buckets).map(|increase| Point {
                    at_ms: *t1,
                    commits_per_sec: (after.commits - before.commits) * 1000.0 / (t1 - t0) as f64,
                    p50: quantile(&increase, 0.5),
                    p99: quantile(&increase, 0.99),
                })
            }
            _ => None,
        };
        match point {
            Some(point) => run.push(point),
            None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// One line of a chart: its name in the legend, its CSS class, and its runs of (time in Unix
/// ms, value).
pub(crate) struct Line {
    pub(crate) name: &'static str,
    pub(crate) class: &'static str,
    pub(crate) runs: Vec<Vec<(u64, f64)>>,
}

/// The commits-per-second line of `runs`.
pub(crate) fn rate_line(runs: &[Vec<Point>]) -> Line {
    Line {
        name: "commits/s",
        class: "rate",
        runs: runs.iter().map(|run| run.iter().map(|p| (p.at_ms, p.commits_per_sec)).collect()).collect(),
    }
}

/// A latency line of `runs` in milliseconds (`pick` chooses p50 or p99); an interval without
/// commits has no latency, so it breaks the line.
pub(crate) fn latency_line(
    runs: &[Vec<Point>],
    name: &'static str,
    class: &'static str,
    pick: fn(&Point) -> Option<f64>,
) -> Line {
    let mut out = Vec::new();
    for run in runs {
        let mut current = Vec::new();
        for point in run {
            match pick(point) {
                Some(seconds) => current.push((point.at_ms, seconds * 1000.0)),
                None if !current.is_empty() => out.push(std::mem::take(&mut current)),
                None => {}
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    Line { name, class, runs: out }
}

/// The cluster page's two charts over the `window_ms` before `end_ms`: commits per second, and
/// the p50 and p99 commit latency in milliseconds.
pub(crate) fn charts(samples: &[Sample], end_ms: u64, window_ms: u64) -> Vec<String> {
    let runs = series(samples);
    let rate = svg("plot-commits", "Commits per second", "/s", &[rate_line(&runs)], end_ms, window_ms);
    let latency = svg(
        "plot-latency",
        "Commit latency",
        "ms",
        &[latency_line(&runs, "p50", "p50", |p| p.p50), latency_line(&runs, "p99", "p99", |p| p.p99)],
        end_ms,
        window_ms,
    );
    vec![rate, latency]
}

/// The chart's size in its own units; the page scales it to its width.
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 170.0;
/// Room for the value labels on the left and the time labels below.
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 20.0;

/// The smallest "round" number (1, 2 or 5 times a power of ten) at or above `value`: the top
/// of the value axis.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|top| *top >= value * 0.999_999).unwrap_or(10.0 * power)
}

/// A value label: no needless decimals.
fn label(value: f64) -> String {
    if value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A chart of `lines` over the `window_ms` before `end_ms`, as an inline `<svg>` element: a
/// frame, the value axis from 0 (labelled at 0, half and top, in `unit`), the time axis
/// (labelled in minutes before `end_ms`), a legend, and one `<path>` per line. Without any
/// point it says "no data yet".
pub(crate) fn svg(id: &str, title: &str, unit: &str, lines: &[Line], end_ms: u64, window_ms: u64) -> String {
    let start_ms = end_ms.saturating_sub(window_ms);
    let visible = |&(at, value): &(u64, f64)| at >= start_ms && at <= end_ms && value.is_finite();
    let top = nice_ceiling(
        lines.iter().flat_map(|l| l.runs.iter().flatten()).filter(|p| visible(p)).map(|p| p.1).fold(0.0, f64::max),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |at: u64| LEFT + plot_w * (at.saturating_sub(start_ms)) as f64 / window_ms.max(1) as f64;
    let y = |value: f64| TOP + plot_h * (1.0 - (value / top).clamp(0.0, 1.0));

    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg id="{id}" class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(title)
    );
    let _ = write!(out, r#"<text class="title" x="{LEFT}" y="14">{}</text>"#, escape(title));
    // The legend, right-aligned on the title's line.
    let mut legend_x = WIDTH - RIGHT;
    for line in lines.iter().rev() {
        let _ = write!(
            out,
            r#"<text class="legend {}" x="{legend_x:.1}" y="14" text-anchor="end">— {}</text>"#,
            line.class,
            escape(line.name)
        );
        legend_x -= 8.0 * (line.name.chars().count() as f64 + 3.0);
    }
    // The axes: the value axis at the left with its grid lines, the time axis below.
    for value in [0.0, top / 2.0, top] {
        let at = y(value);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 4.0,
            at + 4.0,
            label(value)
        );
    }
    let _ = write!(
        out,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}"/><line class="axis" x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/>"#,
        TOP + plot_h,
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h
    );
    let _ = write!(out, r#"<text class="tick unit" x="4" y="{:.1}">{}</text>"#, TOP - 8.0 + 4.0, escape(unit));
    let minutes = window_ms / 60_000;
    for (at, text, anchor) in [
        (start_ms, format!("−{minutes} min"), "start"),
        (start_ms + window_ms / 2, format!("−{} min", minutes as f64 / 2.0), "middle"),
        (end_ms, "now".to_string(), "end"),
    ] {
        let _ = write!(
            out,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
            x(at),
            HEIGHT - 5.0,
            text
        );
    }

    let mut drawn = false;
    for line in lines {
        let mut d = String::new();
        for run in &line.runs {
            let points: Vec<_> = run.iter().filter(|p| visible(p)).collect();
            for (i, &&(at, value)) in points.iter().enumerate() {
                let _ = write!(d, "{}{:.1} {:.1} ", if i == 0 { "M" } else { "L" }, x(at), y(value));
            }
            // A lone point is a dot, not nothing.
            if let [&(at, value)] = points.as_slice() {
                let _ = write!(d, "L{:.1} {:.1} ", x(at) + 1.0, y(value));
            }
        }
        if !d.is_empty() {
            drawn = true;
            let _ = write!(out, r#"<path class="line {}" d="{}"/>"#, line.class, d.trim_end());
        }
    }
    if !drawn {
        let _ = write!(
            out,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no data yet</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP rmw_commits_total Transactions committed by this node as leader (count).
# TYPE rmw_commits_total counter
rmw_commits_total 12
# TYPE rmw_commit_seconds histogram
rmw_commit_seconds_bucket{outcome="commit",le="0.001"} 2
rmw_commit_seconds_bucket{outcome="commit",le="0.01"} 10
rmw_commit_seconds_bucket{outcome="commit",le="+Inf"} 12
rmw_commit_seconds_sum{outcome="commit"} 0.05
rmw_commit_seconds_count{outcome="commit"} 12
rmw_commit_seconds_bucket{outcome="abort",le="0.001"} 7
rmw_commit_seconds_bucket{outcome="abort",le="0.01"} 7
rmw_commit_seconds_bucket{outcome="abort",le="+Inf"} 7
rmw_applied_lsn 40
"#;

    fn sample(at_ms: u64, node: &str, commits: f64, buckets: &[(f64, f64)]) -> Sample {
        Sample { at_ms, node: node.into(), scrape: Some(Scrape { commits, buckets: buckets.to_vec() }) }
    }

    #[test]
    fn a_scrape_reads_the_commit_counter_and_the_committed_transactions_histogram() {
        let scrape = parse_scrape(METRICS);
        assert_eq!(scrape.commits, 12.0);
        assert_eq!(scrape.buckets, vec![(0.001, 2.0), (0.01, 10.0), (f64::INFINITY, 12.0)], "aborts left out");
        assert_eq!(parse_scrape("# nothing yet\n"), Scrape::default(), "a fresh leader: zero, no buckets");
        assert_eq!(parse_scrape("rmw_commits_total x\nnot prometheus at all"), Scrape::default());
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_that_holds_the_rank() {
        let buckets = [(0.001, 2.0), (0.01, 10.0), (f64::INFINITY, 12.0)];
        // The 6th of 12 is half-way through the second bucket's 8.
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.0055).abs() < 1e-9, "{p50}");
        // The 1st: half-way through the first bucket, from 0.
        assert!((quantile(&buckets, 1.0 / 12.0).unwrap() - 0.0005).abs() < 1e-9);
        // In +Inf: the highest finite bound.
        assert_eq!(quantile(&buckets, 0.99), Some(0.01));
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None, "nothing to rank");
        assert_eq!(quantile(&[], 0.5), None);
        // Empty buckets below the rank are skipped.
        assert_eq!(quantile(&[(0.001, 0.0), (0.002, 0.0), (0.005, 4.0), (f64::INFINITY, 4.0)], 1.0), Some(0.005));
    }

    #[test]
    fn points_are_rates_and_quantiles_of_the_increase_and_breaks_split_the_runs() {
        let b = |fast: f64, slow: f64| vec![(0.001, fast), (0.01, fast + slow), (f64::INFINITY, fast + slow)];
        let samples = vec![
            sample(1_000, "a", 10.0, &b(10.0, 0.0)),
            // 20 more in 2 s, all fast.
            sample(3_000, "a", 30.0, &b(30.0, 0.0)),
            // 10 more in 1 s, all slow.
            sample(4_000, "a", 40.0, &b(30.0, 10.0)),
            // The scrape failed: the line breaks.
            Sample { at_ms: 5_000, node: "a".into(), scrape: None },
            sample(6_000, "a", 40.0, &b(30.0, 10.0)),
            // Nothing in 1 s: a rate of 0 and no latency.
            sample(7_000, "a", 40.0, &b(30.0, 10.0)),
            // Another leader: its counters are not comparable.
            sample(8_000, "b", 3.0, &b(3.0, 0.0)),
            sample(9_000, "b", 5.0, &b(5.0, 0.0)),
            // The agent restarted: counters went down.
            sample(10_000, "b", 1.0, &b(1.0, 0.0)),
        ];
        let runs = series(&samples);
        // p50 in whole microseconds.
        let micros = |s: Option<f64>| s.map(|s| (s * 1e6).round());
        let printed: Vec<Vec<(u64, f64, Option<f64>)>> =
            runs.iter().map(|r| r.iter().map(|p| (p.at_ms, p.commits_per_sec, micros(p.p50))).collect()).collect();
        assert_eq!(
            printed,
            vec![
                vec![(3_000, 10.0, Some(500.0)), (4_000, 10.0, Some(5500.0))],
                vec![(7_000, 0.0, None)],
                vec![(9_000, 2.0, Some(500.0))],
            ]
        );
        let p50 = latency_line(&runs, "p50", "p50", |p| p.p50);
        let ms: Vec<Vec<(u64, f64)>> =
            p50.runs.iter().map(|r| r.iter().map(|&(at, v)| (at, (v * 1e3).round() / 1e3)).collect()).collect();
        assert_eq!(ms, vec![vec![(3_000, 0.5), (4_000, 5.5)], vec![(9_000, 0.5)]], "no latency, no point");
        assert_eq!(series(&samples[..1]), Vec::<Vec<Point>>::new());
    }

    #[test]
    fn the_chart_has_axes_a_legend_and_a_path_through_the_points() {
        let line = Line { name: "commits/s", class: "rate", runs: vec![vec![(50_000, 0.0), (100_000, 8.0)]] };
        let svg = svg("commits", "Commits per second", "/s", &[line], 100_000, 100_000);
        assert!(svg.starts_with(r#"<svg id="commits" class="plot" viewBox="0 0 480 170" role="img""#), "{svg}");
        assert!(svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains(r#"<text class="title" x="44" y="14">Commits per second</text>"#), "{svg}");
        assert!(svg.contains(">— commits/s</text>"), "{svg}");
        // Axes, and the value axis up to 10 (the round number above 8), labelled 0, 5, 10.
        assert_eq!(svg.matches(r#"<line class="axis""#).count(), 2, "{svg}");
        for tick in [">0</text>", ">5</text>", ">10</text>", ">now</text>"] {
            assert!(svg.contains(tick), "{tick} in {svg}");
        }
        // Half-way along x (50 s of 100 s) at 0, then the right end at 8 of 10.
        assert!(svg.contains(r#"<path class="line rate" d="M258.0 150.0 L472.0 47.6"/>"#), "{svg}");
        assert!(!svg.contains("no data yet"), "{svg}");
    }

    #[test]
    fn a_chart_without_points_says_so_and_old_points_fall_out_of_the_window() {
        let empty = svg("p", "Latency", "ms", &[Line { name: "p50", class: "p50", runs: vec![] }], 600_000, 600_000);
        assert!(empty.contains(">no data yet</text>"), "{empty}");
        assert!(!empty.contains("<path"), "{empty}");
        assert!(empty.contains(">−10 min</text>") && empty.contains(">−5 min</text>"), "{empty}");
        let old = Line { name: "p50", class: "p50", runs: vec![vec![(1_000, 3.0)]] };
        let svg = svg("p", "Latency", "ms", &[old], 2_000_000, 600_000);
        assert!(svg.contains("no data yet"), "{svg}");
        // A lone point is drawn as a dot.
        let one = Line { name: "p50", class: "p50", runs: vec![vec![(600_000, 2.0)]] };
        let dot = super::svg("p", "Latency", "ms", &[one], 600_000, 600_000);
        assert!(dot.contains(r#"d="M472.0 22.0 L473.0 22.0""#), "{dot}");
    }

    #[test]
    fn the_page_has_a_rate_chart_and_a_latency_chart() {
        let b = vec![(0.001, 5.0), (f64::INFINITY, 5.0)];
        let samples = vec![sample(1_000, "a", 0.0, &[]), sample(2_000, "a", 5.0, &b)];
        let drawn = charts(&samples, 2_000, 600_000);
        assert_eq!(drawn.len(), 2);
        assert!(drawn[0].starts_with(r#"<svg id="plot-commits""#) && drawn[0].contains(r#"class="line rate""#));
        assert!(drawn[1].contains(r#"class="line p50""#) && drawn[1].contains(r#"class="line p99""#));
        assert!(charts(&[], 2_000, 600_000).iter().all(|c| c.contains("no data yet")));
    }

    #[test]
    fn round_tops_and_labels() {
        assert_eq!(
            [0.0, 0.3, 1.0, 1.2, 4.0, 7.5, 99.0, 101.0].map(nice_ceiling),
            [1.0, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0, 200.0]
        );
        assert_eq!([0.0, 0.25, 2.5, 150.0].map(label), ["0", "0.25", "2.5", "150"]);
        assert_eq!(escape("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
