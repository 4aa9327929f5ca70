//! The run's report: the figures as JSON, as a table for the terminal and as a Markdown table
//! for the README, each figure beside its target.

use serde::Serialize;

use crate::budget::BudgetRun;
use crate::footprint::Footprint;
use crate::latency::Row;
use crate::scale::Scale;
use crate::stats::Summary;
use crate::versus::{GhCache, Throughput};

/// A section's result: measured, skipped (a tool is missing, or `--quick`), or failed.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome<T> {
    /// The figures.
    Measured(T),
    /// Why the section did not run.
    Skipped {
        /// The reason.
        skipped: String,
    },
    /// What went wrong.
    Failed {
        /// The error.
        failed: String,
    },
}

impl<T> Outcome<T> {
    /// From a section's result.
    pub fn from_result(result: anyhow::Result<T>) -> Outcome<T> {
        match result {
            Ok(value) => Outcome::Measured(value),
            Err(e) => Outcome::Failed {
                failed: format!("{e:#}"),
            },
        }
    }

    /// A skipped section.
    pub fn skipped(why: impl Into<String>) -> Outcome<T> {
        Outcome::Skipped {
            skipped: why.into(),
        }
    }

    /// The figures, when measured.
    pub fn measured(&self) -> Option<&T> {
        match self {
            Outcome::Measured(value) => Some(value),
            _ => None,
        }
    }

    /// Why there are no figures, when there are none.
    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::Measured(_) => None,
            Outcome::Skipped { skipped } => Some(format!("not measured: {skipped}")),
            Outcome::Failed { failed } => Some(format!("FAILED: {failed}")),
        }
    }

    /// Whether the section failed.
    pub fn failed(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When (UTC).
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// The binary measured.
    pub binary: String,
    /// `--quick`.
    pub quick: bool,
    /// The stand-in's latency on every answer.
    pub upstream_latency_ms: u64,
    /// Body size of every resource.
    pub body_bytes: usize,
    /// API budget, per swarm size.
    pub budget: Vec<Outcome<BudgetRun>>,
    /// Paid calls per TTL period, with and without a hub, per swarm size.
    pub revalidation: Vec<Outcome<crate::swarm_revalidation::SwarmRevalidation>>,
    /// Latency by source.
    pub latency: Outcome<Vec<Row>>,
    /// Local API against nginx.
    pub throughput: Outcome<Throughput>,
    /// `gh api --cache` beside it.
    pub gh: Outcome<GhCache>,
    /// Binary and memory.
    pub footprint: Outcome<Footprint>,
    /// `serve --daemon`, start to ready, over every daemon of the run.
    pub start_to_ready: Option<Summary>,
    /// Many daemons.
    pub scale: Outcome<Scale>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores available.
    pub cpus: usize,
    /// `uname -sr`.
    pub kernel: String,
    /// CPU model.
    pub cpu: String,
    /// `/proc/loadavg` when the run started.
    pub load_at_start: String,
}

impl Machine {
    /// This machine.
    pub fn here() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let kernel = std::process::Command::new("uname")
            .arg("-sr")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            cpu,
            load_at_start: read("/proc/loadavg").trim().to_string(),
        }
    }
}

/// Whether a figure met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No target.
    None,
    /// Met.
    Met,
    /// Missed.
    Missed,
}

/// One line of the table.
pub struct Line {
    /// What was measured.
    pub figure: String,
    /// The figure.
    pub value: String,
    /// The target, if any.
    pub target: String,
    /// Met or missed.
    pub verdict: Verdict,
}

fn line(figure: impl Into<String>, value: impl Into<String>) -> Line {
    Line {
        figure: figure.into(),
        value: value.into(),
        target: String::new(),
        verdict: Verdict::None,
    }
}

fn judged(figure: impl Into<String>, value: impl Into<String>, target: &str, met: bool) -> Line {
    Line {
        figure: figure.into(),
        value: value.into(),
        target: target.into(),
        verdict: if met { Verdict::Met } else { Verdict::Missed },
    }
}

/// "1 job", "5 jobs".
fn jobs(n: usize) -> String {
    if n == 1 {
        "1 job".into()
    } else {
        format!("{n} jobs")
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn p50_p99(s: &Summary) -> String {
    format!("{:.2} / {:.2} ms", s.p50_ms, s.p99_ms)
}

/// The table's lines, in reading order, with a heading (`None` figure text) per section.
pub fn lines(report: &Report) -> Vec<(String, Vec<Line>)> {
    let mut sections = Vec::new();

    let mut budget = Vec::new();
    for run in &report.budget {
        let Some(b) = run.measured() else {
            budget.push(line("a budget run", run.reason().unwrap_or_default()));
            continue;
        };
        let target = format!("= {}", b.endpoints);
        for round in [&b.together, &b.staggered] {
            budget.push(judged(
                format!(
                    "{} × {} endpoints, started {}: upstream calls",
                    jobs(b.nodes),
                    b.endpoints,
                    round.mode
                ),
                format!("{} of {}", round.upstream_calls, b.without_sharing),
                &target,
                round.upstream_calls == b.endpoints as u64,
            ));
        }
        let r = &b.revalidation;
        budget.push(line(
            format!(
                "  after the TTL ({} of {} changed): upstream calls, paid",
                r.changed, b.endpoints
            ),
            format!(
                "{} of {}, {} paid",
                r.round.upstream_calls, b.without_sharing, r.round.paid_calls
            ),
        ));
        budget.push(judged(
            "  revalidations of unchanged resources answered by a free 304",
            format!(
                "{:.1}% ({} of {})",
                r.free_share * 100.0,
                r.unchanged_free_304,
                r.unchanged_calls
            ),
            "≥ 95%",
            r.free_share >= 0.95,
        ));
        let o = &b.owner_scope;
        budget.push(judged(
            format!(
                "  scope owner, {} of other repositories: upstream calls, paid, access proofs",
                jobs(b.nodes)
            ),
            format!(
                "{} of {}, {} paid, {} proofs ({} free 304s)",
                o.round.upstream_calls,
                b.without_sharing,
                o.round.paid_calls,
                o.proofs,
                o.free_proofs
            ),
            &format!("≤ {} + 1 free 304 per token", b.endpoints),
            o.round.paid_calls <= b.endpoints as u64
                && o.proofs == o.free_proofs
                && o.proofs <= b.nodes as u64,
        ));
    }
    if let Some(gh) = report.gh.measured() {
        budget.push(line(
            format!(
                "`gh api --cache {}s`, {} × {} endpoints: upstream calls",
                gh.cache_secs,
                jobs(gh.jobs),
                gh.endpoints
            ),
            format!("{} of {}", gh.first_round_calls, gh.jobs * gh.endpoints),
        ));
        budget.push(line(
            "  after its cache time: upstream calls, paid",
            format!("{}, {} paid", gh.second_round_calls, gh.second_round_paid),
        ));
    } else if let Some(why) = report.gh.reason() {
        budget.push(line("`gh api --cache` beside it", why));
    }
    sections.push((
        "API budget (the stand-in GitHub API counts the calls)".to_string(),
        budget,
    ));

    let mut periods = Vec::new();
    for run in &report.revalidation {
        let Some(r) = run.measured() else {
            periods.push(line("a revalidation run", run.reason().unwrap_or_default()));
            continue;
        };
        for p in &r.periods {
            let hub_note = if p.hub {
                format!(
                    " ({} of them the hub's; it spent {} in the first period, in the background)",
                    p.paid_by_hub, p.hub_fetches_round1
                )
            } else {
                String::new()
            };
            periods.push(judged(
                format!(
                    "{} × {} endpoints (half collections), {} runners, {}: paid calls after the TTL",
                    jobs(r.nodes),
                    r.endpoints,
                    p.runners,
                    if p.hub { "with a hub" } else { "no hub" }
                ),
                format!(
                    "{} paid of {} calls, {} changed{hub_note}",
                    p.paid, p.upstream_calls, p.changed
                ),
                &format!("= {}", p.changed),
                p.paid == p.changed as u64,
            ));
        }
    }
    if !periods.is_empty() {
        sections.push((
            "Paid calls per TTL period (10 % changed; the jobs' tokens and the hub's)".to_string(),
            periods,
        ));
    }

    let mut latency = Vec::new();
    match report.latency.measured() {
        Some(rows) => {
            for row in rows {
                let ways = [
                    ("whole-process `fetch`, no daemon", &row.fetch_alone),
                    (
                        "whole-process `fetch` via the daemon",
                        &row.fetch_via_daemon,
                    ),
                    ("local HTTP API", &row.api),
                ];
                for (way, summary) in ways {
                    let Some(s) = summary else { continue };
                    let figure = format!("{}: {way}, p50 / p99", row.source);
                    let (target, limit) = match (row.source, way.starts_with("whole")) {
                        ("local", true) => ("p50 < 5 ms", 5.0),
                        ("peer", _) => ("p50 < 15 ms", 15.0),
                        _ => ("", f64::INFINITY),
                    };
                    latency.push(if target.is_empty() {
                        line(figure, p50_p99(s))
                    } else {
                        judged(figure, p50_p99(s), target, s.p50_ms < limit)
                    });
                }
                if let (Some(fetch), Some(floor)) = (&row.fetch_via_daemon, &row.spawn_true) {
                    let ratio = fetch.p50_ms / floor.p50_ms;
                    latency.push(judged(
                        format!(
                            "{}-hit `fetch` via the daemon p50 ≤ 2× `/bin/true` (same run, spawned alike)",
                            row.source
                        ),
                        format!(
                            "{:.2} ms / {:.2} ms = {ratio:.2}×",
                            fetch.p50_ms, floor.p50_ms
                        ),
                        "≤ 2×",
                        ratio <= 2.0,
                    ));
                }
                if !row.other_sources.is_empty() {
                    latency.push(line(
                        format!(
                            "  {} samples answered by another source (left out)",
                            row.source
                        ),
                        format!("{:?}", row.other_sources),
                    ));
                }
            }
        }
        None => latency.push(line("latency", report.latency.reason().unwrap_or_default())),
    }
    if let Some(gh) = report.gh.measured()
        && let Some(s) = &gh.cached_hit
    {
        latency.push(line(
            "`gh api --cache` answered from its cache, p50 / p99",
            p50_p99(s),
        ));
        if let Some(p) = &gh.peercache_local_hit {
            latency.push(line(
                "  `peercache fetch` local hit, measured beside it",
                p50_p99(p),
            ));
        }
    }
    sections.push((
        format!(
            "Latency by source ({} KB bodies, stand-in latency {} ms)",
            report.body_bytes / 1024,
            report.upstream_latency_ms
        ),
        latency,
    ));

    let mut throughput = Vec::new();
    match report.throughput.measured() {
        Some(t) => {
            let label = format!(
                "wrk -t{} -c{}, best of {} interleaved {} s runs",
                t.threads, t.connections, t.rounds, t.seconds
            );
            let figures = |w: &crate::versus::WrkRun| {
                format!(
                    "{:.0}, {:.2} / {:.2} ms",
                    w.requests_per_sec, w.p50_ms, w.p99_ms
                )
            };
            throughput.push(line(
                format!("local API, cached hits ({label}): req/s, p50 / p99"),
                figures(&t.peercache_api),
            ));
            throughput.push(line(
                format!("local API, cached hits with their URLs rewritten ({label})"),
                figures(&t.peercache_api_rewritten),
            ));
            throughput.push(line(
                format!("nginx, the same bodies as static files ({label})"),
                figures(&t.nginx_static),
            ));
            let each = |pick: fn(&crate::versus::Round) -> f64| {
                t.runs
                    .iter()
                    .map(|r| format!("{:.0}", pick(r)))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            throughput.push(line(
                "  every round, req/s: peercache / rewritten / nginx",
                format!(
                    "{}; {}; {}",
                    each(|r| r.peercache_api),
                    each(|r| r.peercache_api_rewritten),
                    each(|r| r.nginx_static)
                ),
            ));
            throughput.push(judged(
                "cached hits ≥ 1.0× nginx (same run, interleaved, best of n)",
                format!("{:.2}×", t.ratio),
                "≥ 1.0× nginx",
                t.ratio >= 1.0,
            ));
            throughput.push(line(
                "  the same with their URLs rewritten",
                format!("{:.2}×", t.ratio_rewritten),
            ));
        }
        None => throughput.push(line(
            "throughput",
            report.throughput.reason().unwrap_or_default(),
        )),
    }
    sections.push(("Throughput on cached hits".to_string(), throughput));

    let mut footprint = Vec::new();
    match report.footprint.measured() {
        Some(f) => {
            footprint.push(line(
                "binary size",
                format!(
                    "{:.1} MB ({} bytes{})",
                    f.binary_bytes as f64 / 1_000_000.0,
                    f.binary_bytes,
                    f.binary_kind
                        .as_deref()
                        .map(|k| format!(", {k}"))
                        .unwrap_or_default()
                ),
            ));
            footprint.push(judged(
                "daemon RSS, idle",
                mb(f.rss_idle_kb),
                "< 25 MB",
                f.rss_idle_kb < 25 * 1024,
            ));
            for r in &f.rss_with_peers {
                footprint.push(line(
                    format!("daemon RSS with {} peers", r.peers),
                    mb(r.rss_kb),
                ));
            }
            footprint.push(line(
                "  the same after every node fetched 100 endpoints",
                mb(f.rss_after_traffic_kb),
            ));
        }
        None => footprint.push(line(
            "footprint",
            report.footprint.reason().unwrap_or_default(),
        )),
    }
    if let Some(s) = &report.start_to_ready {
        footprint.push(line(
            format!(
                "`serve --daemon`, start to ready, p50 / p99 ({} starts)",
                s.samples
            ),
            p50_p99(s),
        ));
    }
    sections.push(("Footprint".to_string(), footprint));

    let mut scale = Vec::new();
    match report.scale.measured() {
        Some(s) => {
            let mesh = match s.full_mesh {
                Some(n) if n >= s.nodes => "a full mesh".to_string(),
                Some(n) => format!("full mesh up to {n}"),
                None => "the default overlay".to_string(),
            };
            scale.push(line(
                format!("{} daemons ({mesh}): all started and ready", s.nodes),
                format!("{:.1} s", s.start_all_ms / 1000.0),
            ));
            scale.push(line(
                "  then, until every node has a neighbour in every bucket holding members",
                match s.settle_ms {
                    Some(ms) => format!("{:.1} s", ms / 1000.0),
                    None => format!("not within 300 s ({} nodes short)", s.unsettled),
                },
            ));
            scale.push(line(
                "  then, until quiet (every node's connections steady for 10 s, 2 % moved)",
                match s.quiet_ms {
                    Some(ms) => format!("{:.1} s", ms / 1000.0),
                    None => "not within 180 s (the fetch round started anyway)".to_string(),
                },
            ));
            if let Some(p) = &s.peers {
                scale.push(line(
                    "  verified neighbours per node, p50 / max",
                    format!("{:.0} / {:.0} of {}", p.p50, p.max, s.nodes - 1),
                ));
            }
            scale.push(judged(
                format!(
                    "{} nodes × {} endpoints, all at once: upstream calls",
                    s.nodes, s.endpoints
                ),
                format!("{} of {}", s.upstream_calls, s.requests),
                &format!("= {}", s.endpoints),
                s.upstream_calls == s.endpoints as u64 && s.answered == s.requests,
            ));
            let sources: Vec<String> = s
                .by_source
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            scale.push(line(
                "  until the last answer; answers by source",
                format!(
                    "{:.1} s; {} ({} of {} right{})",
                    s.fetch_ms / 1000.0,
                    sources.join(", "),
                    s.answered,
                    s.requests,
                    if s.resent > 0 {
                        format!(
                            "; {} sent again, that the driver had sent after the daemon's 5 s \
                             header-read timeout",
                            s.resent
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
            let claims: Vec<String> = s
                .claims
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            scale.push(line(
                "  claim counters, summed over the nodes",
                if claims.is_empty() {
                    "none".to_string()
                } else {
                    claims.join(", ")
                },
            ));
            if let Some(c) = &s.connections {
                scale.push(judged(
                    "  connections per node, most at any moment: p50 / max",
                    format!("{:.0} / {}", c.p50, s.max_connections),
                    "max ≤ 64 (bounded)",
                    s.max_connections <= 64,
                ));
            }
            if let Some(c) = &s.fetch_connections {
                scale.push(line(
                    "    during the fetch round alone: p50 / max",
                    format!(
                        "{:.0} / {:.0} ({} of {} nodes sampled during it)",
                        c.p50, c.max, s.fetch_sampled, s.nodes
                    ),
                ));
            }
            if !s.busiest.is_empty() {
                let busiest: Vec<String> = s
                    .busiest
                    .iter()
                    .map(|(node, count, at)| format!("{node} {count} at {at:.0} s"))
                    .collect();
                scale.push(line(
                    "    the nodes with the most (first seen, since the first start)",
                    busiest.join("; "),
                ));
            }
            if let Some(r) = &s.rss_kb {
                scale.push(line(
                    "  daemon RSS per node after, p50 / max",
                    format!("{} / {}", mb(r.p50 as u64), mb(r.max as u64)),
                ));
            }
        }
        None => scale.push(line("scale", report.scale.reason().unwrap_or_default())),
    }
    sections.push(("Scale".to_string(), scale));
    sections
}

fn mark(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::None => "",
        Verdict::Met => "met",
        Verdict::Missed => "MISSED",
    }
}

/// The table for the terminal.
pub fn text_table(report: &Report) -> String {
    let sections = lines(report);
    let width = sections
        .iter()
        .flat_map(|(_, ls)| ls.iter().map(|l| l.figure.chars().count()))
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    for (heading, ls) in sections {
        out.push_str(&format!("\n{heading}\n"));
        for l in ls {
            let target = if l.target.is_empty() {
                String::new()
            } else {
                format!("  target {} ({})", l.target, mark(l.verdict))
            };
            out.push_str(&format!(
                "  {:<width$}  {}{target}\n",
                l.figure,
                l.value,
                width = width
            ));
        }
    }
    out
}

/// The table in Markdown, for the README.
pub fn markdown_table(report: &Report) -> String {
    let mut out = String::from("| figure | measured | target |\n|---|---:|---|\n");
    for (heading, ls) in lines(report) {
        out.push_str(&format!("| **{heading}** | | |\n"));
        for l in ls {
            let target = match l.verdict {
                Verdict::None => String::new(),
                Verdict::Met => format!("{} ✓", l.target),
                Verdict::Missed => format!("{} **missed**", l.target),
            };
            out.push_str(&format!(
                "| {} | {} | {target} |\n",
                l.figure.replace('|', "\\|"),
                l.value.replace('|', "\\|")
            ));
        }
    }
    out
}

/// What the run saved, in a few sentences.
pub fn savings(report: &Report) -> String {
    let mut out = String::new();
    for b in report.budget.iter().filter_map(Outcome::measured) {
        let calls = b.together.upstream_calls;
        let saved = b.without_sharing as u64 - calls.min(b.without_sharing as u64);
        out.push_str(&format!(
            "{} asked for the same {} endpoints ({} requests): GitHub saw {} calls, {} saved \
             ({:.0}%); staggered: {} calls. After the TTL, {} calls, {} of them paid ({} free 304s).\n",
            jobs(b.nodes),
            b.endpoints,
            b.without_sharing,
            calls,
            saved,
            saved as f64 * 100.0 / b.without_sharing as f64,
            b.staggered.upstream_calls,
            b.revalidation.round.upstream_calls,
            b.revalidation.round.paid_calls,
            b.revalidation.unchanged_free_304,
        ));
    }
    out
}
