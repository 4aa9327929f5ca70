//! `peercache status [--json|--markdown]`: the running daemon's peers and figures.
//!
//! Finds the daemon through `$PEERCACHE_HOME/serve.json` and asks its local API once
//! (`GET <base>/api/status`, which holds `/api/peers` and `/api/cache/stats` as they are at that
//! moment, plus the rest), so every figure printed comes from one snapshot.
//!
//! - no flag: a few lines for people;
//! - `--json`: the `/api/status` object as it is;
//! - `--markdown`: a job summary, for `peercache status --markdown >> "$GITHUB_STEP_SUMMARY"`.
//!
//! Without a running daemon (or when it does not answer) it prints one line on stderr and exits
//! 3, the contract's "cannot be reached" code; nothing goes to stdout, so a job summary gets no
//! half-written section. The base URL (which holds the API's capability) is never printed.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::config::Settings;
use crate::daemon::api::{last_seen_text, preferred_addr};
use crate::daemon::client::{self, Endpoint};
use crate::daemon::state;
use crate::error::{Exit, UserError};

/// How long the daemon may take to answer.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Arguments of `peercache status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the daemon's /api/status object as JSON
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print a Markdown job summary (for >> "$GITHUB_STEP_SUMMARY")
    #[arg(long)]
    pub markdown: bool,
}

/// Runs `status`.
pub fn run(settings: &Settings, args: StatusArgs) -> anyhow::Result<Exit> {
    let status = fetch_status(settings)?;
    let text = if args.json {
        let mut text = crate::logging::defuse_json(serde_json::to_string_pretty(&status)?);
        text.push('\n');
        text
    } else if args.markdown {
        markdown(&status, state::now_secs())
    } else {
        plain(&status, state::now_secs())
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))?;
    Ok(Exit::Ok)
}

/// `/api/status` of the daemon named in serve.json.
fn fetch_status(settings: &Settings) -> anyhow::Result<Value> {
    let home = &settings.home;
    let Some(info) = state::live(home) else {
        return Err(UserError::unreachable(format!(
            "no peercache daemon is running for {}; start one with 'peercache serve --daemon' (or set PEERCACHE_HOME to its state dir)",
            home.display()
        ))
        .into());
    };
    let unreachable = |why: String| -> anyhow::Error {
        UserError::unreachable(format!(
            "the peercache daemon (pid {}) does not answer at its local API: {why}",
            info.pid
        ))
        .into()
    };
    let endpoint = Endpoint::parse(&info.api_url)
        .ok_or_else(|| unreachable(format!("{} names no usable API address", state::SERVE_FILE)))?;
    let response = client::get(&endpoint, "/api/status", &[], TIMEOUT)
        .map_err(|e| unreachable(e.to_string()))?;
    if response.status != 200 {
        return Err(unreachable(format!(
            "/api/status answered {}",
            response.status
        )));
    }
    serde_json::from_slice(&response.body)
        .map_err(|e| unreachable(format!("/api/status is not JSON ({e})")))
}

/// The value at `path` (object keys), if every step exists.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn num(value: &Value, path: &[&str]) -> u64 {
    at(value, path).and_then(Value::as_u64).unwrap_or(0)
}

fn float(value: &Value, path: &[&str]) -> f64 {
    at(value, path).and_then(Value::as_f64).unwrap_or(0.0)
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// `3 s`, `5 min`, `2 h 10 min`.
fn duration_text(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// `HH:MM:SS UTC` of an epoch time.
fn time_of_day(secs: u64) -> String {
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

fn percent(rate: f64) -> String {
    format!("{:.1} %", rate * 100.0)
}

fn sharing_text(status: &Value) -> String {
    if status["sharing"]["enabled"].as_bool() == Some(true) {
        let n = num(status, &["peers", "peer_count"]);
        let scope = text(status, &["sharing", "scope"])
            .map(|s| format!(", scope {s}"))
            .unwrap_or_default();
        format!(
            "on, {n} verified peer{}{scope}",
            if n == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "off: {}",
            text(status, &["sharing", "reason"]).unwrap_or("peer sharing is off")
        )
    }
}

/// `4990 of 5000, resets 13:00:00 UTC (seen 12:00:01 UTC)`, or `not seen yet`.
/// AutoNAT's verdict, the relay reservations held and the hole punches made, on one line.
fn reach_text(status: &Value) -> String {
    let reachability = text(status, &["peers", "reachability"]).unwrap_or("unknown");
    let relays: Vec<&str> = status["peers"]["relays"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let relays = if relays.is_empty() {
        "no relay reservation".to_string()
    } else {
        format!("relayed through {}", relays.join(", "))
    };
    format!(
        "{reachability} (AutoNAT); {relays}; hole punches: {} tried, {} TCP and {} QUIC succeeded",
        num(status, &["swarm", "hole_punches_attempted"]),
        num(status, &["swarm", "hole_punches_tcp"]),
        num(status, &["swarm", "hole_punches_quic"]),
    )
}

/// What this node did for the swarm's revalidations (and, on a hub, the entries it keeps).
fn revalidation_text(status: &Value) -> String {
    let done = num(status, &["swarm", "revalidations_for_others"]);
    let free = num(status, &["swarm", "revalidations_unchanged"]);
    format!(
        "{done} revalidations done for members ({free} free 304s, {} changed); {} entries kept from announcements, {} fetched with its own token (hub quota)",
        done.saturating_sub(free),
        num(status, &["swarm", "entries_mirrored"]),
        num(status, &["swarm", "own_token_fetches"]),
    )
}

fn rate_limit_text(status: &Value) -> String {
    let rate = &status["rate_limit"];
    let Some(remaining) = rate["remaining"].as_u64() else {
        return "not seen yet (no call to GitHub since the daemon started)".into();
    };
    let mut out = remaining.to_string();
    if let Some(limit) = rate["limit"].as_u64() {
        let _ = write!(out, " of {limit}");
    }
    if let Some(reset) = rate["reset"].as_u64() {
        let _ = write!(out, ", resets {}", time_of_day(reset));
    }
    if let Some(seen) = rate["seen_at"].as_u64() {
        let _ = write!(out, " (seen {})", time_of_day(seen));
    }
    out
}

fn peers(status: &Value) -> &[Value] {
    status["peers"]["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn addrs(peer: &Value) -> Vec<String> {
    peer["multiaddrs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn endpoints(status: &Value) -> &[Value] {
    status["endpoints"]["top"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The default output: a few lines for people.
pub fn plain(status: &Value, now: u64) -> String {
    let r = |key: &str| num(status, &["requests", key]);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "peercache {}, up {}",
        text(status, &["version"]).unwrap_or("?"),
        duration_text(num(status, &["uptime_secs"]))
    );
    let _ = writeln!(
        out,
        "node:          {}",
        text(status, &["peer_id"]).unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "upstream:      {}",
        text(status, &["upstream"]).unwrap_or("?")
    );
    let _ = writeln!(out, "peer sharing:  {}", sharing_text(status));
    let _ = writeln!(out, "reach:         {}", one_line(&reach_text(status)));
    let _ = writeln!(out, "for the swarm: {}", revalidation_text(status));
    let _ = writeln!(
        out,
        "requests:      {} ({}: {} local, {} peer; {} revalidated, {} stale, {} from GitHub, {} failed)",
        r("total"),
        plural(r("hits"), "hit"),
        r("local_hits"),
        r("peer_hits"),
        r("revalidated"),
        r("stale_served"),
        r("upstream"),
        r("errors"),
    );
    let _ = writeln!(
        out,
        "hit rate:      {}",
        percent(float(status, &["requests", "hit_rate"]))
    );
    let _ = writeln!(
        out,
        "GitHub calls:  {} made, {} saved",
        r("upstream_calls"),
        r("upstream_calls_saved")
    );
    let _ = writeln!(out, "rate limit:    {}", rate_limit_text(status));
    let _ = writeln!(
        out,
        "cache:         {}, {:.2} MB; {}, {}",
        plural(num(status, &["store", "entries"]), "entry"),
        num(status, &["store", "bytes"]) as f64 / (1024.0 * 1024.0),
        plural(
            num(status, &["store", "integrity_failures"]),
            "integrity failure"
        ),
        plural(num(status, &["store", "evictions"]), "eviction"),
    );
    let list = peers(status);
    if !list.is_empty() {
        let _ = writeln!(out, "peers:");
        for p in list {
            let addrs = addrs(p);
            let _ = writeln!(
                out,
                "  {}  {}  {}  {}  {}",
                one_line(p["peer_id"].as_str().unwrap_or("?")),
                one_line(p["runner_name"].as_str().unwrap_or("-")),
                one_line(p["connection"].as_str().unwrap_or("-")),
                one_line(preferred_addr(&addrs).unwrap_or("-")),
                last_seen_text(p["last_seen"].as_u64().unwrap_or(0), now),
            );
        }
    }
    let top = endpoints(status);
    if !top.is_empty() {
        let _ = writeln!(out, "top endpoints by hits:");
        for e in top {
            let _ = writeln!(
                out,
                "  {}  {} of {}",
                one_line(e["endpoint"].as_str().unwrap_or("?")),
                plural(num(e, &["hits"]), "hit"),
                plural(num(e, &["requests"]), "request"),
            );
        }
    }
    out
}

/// `1 hit`, `2 hits`, `0 entries`.
fn plural(n: u64, word: &str) -> String {
    match (n, word.strip_suffix('y')) {
        (1, _) => format!("{n} {word}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {word}s"),
    }
}

/// Untrusted text on one terminal line: control characters become spaces.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::logging::defuse(&flat)
}

/// Untrusted text as Markdown text in a table cell: no markup, no HTML, no cell break.
pub fn md_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("&#124;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '#' | '!' | '~' | '{' | '}' | '+'
            | '-' | '.' | ':' | '"' | '\'' | '$' | '^' | '=' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// peercache's own text in a table cell: only what could break the table or become HTML.
fn md_plain(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "&#124;")
        .replace(['\r', '\n'], " ")
}

/// Text as a Markdown code span in a table cell.
fn md_code(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| match c {
            '`' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    format!("`{}`", clean.replace('|', "\\|"))
}

/// The job summary.
pub fn markdown(status: &Value, now: u64) -> String {
    let r = |key: &str| num(status, &["requests", key]);
    let mut out = String::new();
    let _ = writeln!(out, "## peercache\n");
    let _ = writeln!(
        out,
        "Node {} · peer sharing {} · up {} · peercache {}\n",
        md_code(text(status, &["peer_id"]).unwrap_or("?")),
        md_plain(&sharing_text(status)),
        duration_text(num(status, &["uptime_secs"])),
        md_plain(text(status, &["version"]).unwrap_or("?")),
    );

    let _ = writeln!(out, "| requests | hits | hit rate | misses |");
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} |\n",
        r("total"),
        r("hits"),
        percent(float(status, &["requests", "hit_rate"])),
        r("misses"),
    );

    let _ = writeln!(out, "### Answers by source\n");
    let _ = writeln!(out, "| source | answers |");
    let _ = writeln!(out, "|---|---:|");
    for (label, key) in [
        ("local cache (hit)", "local_hits"),
        ("peer (hit)", "peer_hits"),
        ("revalidated (304 from GitHub)", "revalidated"),
        ("stale (GitHub unusable)", "stale_served"),
        ("GitHub", "upstream"),
        ("failed", "errors"),
    ] {
        let _ = writeln!(out, "| {label} | {} |", r(key));
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "### GitHub API\n");
    let _ = writeln!(
        out,
        "| calls made | calls saved | rate limit remaining (last seen) |"
    );
    let _ = writeln!(out, "|---:|---:|---|");
    let _ = writeln!(
        out,
        "| {} | {} | {} |\n",
        r("upstream_calls"),
        r("upstream_calls_saved"),
        md_plain(&rate_limit_text(status)),
    );

    let list = peers(status);
    let _ = writeln!(out, "### Peers ({})\n", list.len());
    if list.is_empty() {
        let _ = writeln!(out, "No verified peers.\n");
    } else {
        let _ = writeln!(out, "{}\n", md_plain(&reach_text(status)));
        let _ = writeln!(
            out,
            "| peer id | runner | connection | address | last seen |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for p in list {
            let addrs = addrs(p);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                md_code(p["peer_id"].as_str().unwrap_or("?")),
                md_text(p["runner_name"].as_str().unwrap_or("—")),
                md_text(p["connection"].as_str().unwrap_or("—")),
                preferred_addr(&addrs).map(md_code).unwrap_or_default(),
                last_seen_text(p["last_seen"].as_u64().unwrap_or(0), now),
            );
        }
        let _ = writeln!(out);
    }

    let top = endpoints(status);
    let _ = writeln!(out, "### Top endpoints by hits\n");
    if top.is_empty() {
        let _ = writeln!(out, "No requests yet.\n");
    } else {
        let _ = writeln!(
            out,
            "| endpoint | hits | requests | local | peer | revalidated | stale | GitHub | failed |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for e in top {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                md_code(e["endpoint"].as_str().unwrap_or("?")),
                num(e, &["hits"]),
                num(e, &["requests"]),
                num(e, &["local_hits"]),
                num(e, &["peer_hits"]),
                num(e, &["revalidated"]),
                num(e, &["stale_served"]),
                num(e, &["upstream"]),
                num(e, &["errors"]),
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "<sub>A hit is an answer from a fresh local or peer entry, without a call to GitHub; a revalidation called GitHub (a 304, free of primary quota) and is not a hit. Calls saved = hits.</sub>"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_names_cannot_break_the_summary() {
        let cell = md_text("evil | <img src=x> **bold** `code`\n# heading");
        assert!(!cell.contains('|'), "{cell}");
        assert!(!cell.contains('<'), "{cell}");
        assert!(!cell.contains('\n'), "{cell}");
        assert!(cell.contains("\\*\\*bold\\*\\*"), "{cell}");
        assert_eq!(md_code("/a|b`c"), "`/a\\|b'c`");
    }

    #[test]
    fn a_summary_without_requests_or_peers_says_so() {
        let status = serde_json::json!({
            "version": "0.1.0", "peer_id": "12D3KooWx", "uptime_secs": 5,
            "sharing": {"enabled": false, "reason": "no secret"},
            "peers": {"enabled": false, "active": false, "peer_count": 0, "peers": []},
            "requests": {"total": 0}, "rate_limit": null, "endpoints": {"top": []},
        });
        let md = markdown(&status, 0);
        assert!(md.contains("No verified peers."), "{md}");
        assert!(md.contains("No requests yet."), "{md}");
        assert!(md.contains("not seen yet"), "{md}");
        assert!(md.contains("peer sharing off: no secret"), "{md}");
    }

    #[test]
    fn reach_and_connections_show_in_text_and_summary() {
        let status = serde_json::json!({
            "version": "0.1.0", "peer_id": "12D3KooWx", "uptime_secs": 5,
            "sharing": {"enabled": true, "reason": null},
            "peers": {"enabled": true, "active": true, "peer_count": 1,
                "reachability": "private",
                "relays": ["/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWhub/p2p-circuit"],
                "peers": [{"peer_id": "12D3KooWpeer", "runner_name": "r1", "connection": "relayed",
                    "multiaddrs": [], "last_seen": 0}]},
            "swarm": {"hole_punches_attempted": 3, "hole_punches_tcp": 1, "hole_punches_quic": 1},
            "requests": {"total": 0}, "rate_limit": null, "endpoints": {"top": []},
        });
        let text = plain(&status, 0);
        assert!(
            text.contains("reach:         private (AutoNAT); relayed through /ip4/198.18.0.2/tcp/4001/p2p/12D3KooWhub/p2p-circuit; hole punches: 3 tried, 1 TCP and 1 QUIC succeeded"),
            "{text}"
        );
        assert!(text.contains("  12D3KooWpeer  r1  relayed  "), "{text}");
        let md = markdown(&status, 0);
        assert!(md.contains("| connection |"), "{md}");
        assert!(md.contains("| relayed |"), "{md}");
        assert!(md.contains("private (AutoNAT)"), "{md}");
    }
}
