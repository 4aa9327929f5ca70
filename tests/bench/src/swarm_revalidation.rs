//! Paid calls per TTL period: N jobs ask for E endpoints (half single resources with
//! `Last-Modified`, half collections without, whose ETags are bound to the token), the TTL
//! passes, 10 % change, and jobs ask again — with and without a hub, with the same runners
//! (persistent) or new ones with new tokens and empty caches (ephemeral, as hosted runners and
//! ARC pods are). The goal: paid = changed in every row.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::{BODY, Bench, api_get};
use crate::common::swarm::{SwarmNode, wait_for};

/// The TTL the jobs ask with; every entry is older than this when the second round starts.
const TTL_SECS: u64 = 3;
/// Share of the endpoints that change between the rounds.
const CHANGED_PERCENT: usize = 10;

/// One configuration's second round.
#[derive(Debug, Clone, Serialize)]
pub struct Period {
    /// `persistent` or `ephemeral`.
    pub runners: &'static str,
    /// Whether a hub (`serve --hub` with a token of its own) is in the swarm.
    pub hub: bool,
    /// Endpoints that changed.
    pub changed: usize,
    /// Calls of the second round that cost quota (the jobs' tokens and the hub's).
    pub paid: u64,
    /// Of those, the hub's own.
    pub paid_by_hub: u64,
    /// All upstream calls of the second round.
    pub upstream_calls: u64,
    /// The hub's own-token fetches during the first round (its quota, in the background).
    pub hub_fetches_round1: u64,
}

/// Every configuration for one swarm size.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmRevalidation {
    /// Jobs per round.
    pub nodes: usize,
    /// Endpoints each job asks for (half collections).
    pub endpoints: usize,
    /// Persistent and ephemeral runners, without and with a hub.
    pub periods: Vec<Period>,
}

/// The four configurations for `nodes` jobs × `endpoints` endpoints.
pub fn run(bench: &Bench, nodes: usize, endpoints: usize) -> anyhow::Result<SwarmRevalidation> {
    let mut periods = Vec::new();
    for (runners, hub) in [
        ("persistent", false),
        ("persistent", true),
        ("ephemeral", false),
        ("ephemeral", true),
    ] {
        periods.push(period(bench, nodes, endpoints, runners, hub)?);
    }
    Ok(SwarmRevalidation {
        nodes,
        endpoints,
        periods,
    })
}

fn single(i: usize) -> String {
    format!("repos/octo/swarm/contents/period-single{i}")
}

fn collection(i: usize) -> String {
    format!("repos/octo/swarm/releases/period-c{i}/assets")
}

fn items(i: usize, version: usize) -> Vec<serde_json::Value> {
    (0..20)
        .map(|n| serde_json::json!({"id": i * 1000 + n, "name": format!("asset-{i}-{n}"), "version": version}))
        .collect()
}

/// Every job asks for every endpoint once (10 at a time each); every answer must be a 200
/// with the current body.
fn round(
    jobs: &[SwarmNode],
    endpoints: &[String],
    current: &(dyn Fn(&str) -> Vec<u8> + Sync),
) -> anyhow::Result<()> {
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for job in jobs {
            for chunk in endpoints.chunks(endpoints.len().div_ceil(10).max(1)) {
                let errors = &errors;
                scope.spawn(move || {
                    for endpoint in chunk {
                        let r = api_get(job, endpoint, Some(TTL_SECS));
                        let same = serde_json::from_slice::<serde_json::Value>(&r.body).ok()
                            == serde_json::from_slice::<serde_json::Value>(&current(endpoint)).ok();
                        if r.status != 200 || !same {
                            errors.lock().unwrap().push(format!(
                                "{} {endpoint}: status {}, source {}",
                                job.name,
                                r.status,
                                r.source()
                            ));
                        }
                    }
                });
            }
        }
    });
    let errors = errors.into_inner().unwrap();
    anyhow::ensure!(
        errors.is_empty(),
        "{} answers were wrong or stale, e.g. {}",
        errors.len(),
        errors[0]
    );
    Ok(())
}

fn period(
    bench: &Bench,
    nodes: usize,
    endpoints: usize,
    runners: &'static str,
    with_hub: bool,
) -> anyhow::Result<Period> {
    let api = bench.hub();
    let half = endpoints / 2;
    let set: Vec<String> = (0..half)
        .map(single)
        .chain((0..endpoints - half).map(collection))
        .collect();
    for i in 0..half {
        api.put_json(&format!("/{}", single(i)), fakehub::repo_body(i, BODY));
    }
    for i in 0..endpoints - half {
        api.put_list(&format!("/{}", collection(i)), items(i, 1));
    }
    let tag = format!(
        "{runners}-{}-{nodes}",
        if with_hub { "hub" } else { "nohub" }
    );
    let hub = with_hub.then(|| {
        bench.node(
            &api,
            &format!("{tag}-hub"),
            Vec::new(),
            vec![("PEERCACHE_HUB", "true".to_string())],
        )
    });
    let seeds: Vec<String> = hub.iter().map(SwarmNode::bootstrap_addr).collect();
    let start_jobs = |round: usize| -> Vec<SwarmNode> {
        let mut jobs: Vec<SwarmNode> = Vec::new();
        for i in 0..nodes {
            let bootstrap = seeds
                .iter()
                .cloned()
                .chain(jobs.first().map(SwarmNode::bootstrap_addr))
                .collect();
            jobs.push(bench.node(
                &api,
                &format!("{tag}-r{round}-job{i}"),
                bootstrap,
                Vec::new(),
            ));
        }
        let members = (nodes - 1 + usize::from(with_hub)) as u64;
        for job in &jobs {
            wait_for(
                &format!("{} to verify {members} members", job.name),
                Duration::from_secs(120),
                || job.peer_count() >= members,
            );
        }
        jobs
    };
    let hub_auth = format!("Bearer token-of-{tag}-hub");
    let paid_by_hub = |records: &[fakehub::RequestRecord]| {
        records
            .iter()
            .filter(|r| r.quota_spent && r.authorization.as_deref() == Some(hub_auth.as_str()))
            .count() as u64
    };

    let jobs = start_jobs(1);
    round(&jobs, &set, &|e| original(e, half))?;
    let round1_done = Instant::now();
    if let Some(hub) = &hub {
        // The hub keeps every entry and fetches each collection once with its own token.
        wait_for(
            "the hub to keep the swarm's entries",
            Duration::from_secs(120),
            || {
                let s = hub.swarm();
                s["entries_mirrored"].as_u64().unwrap_or(0) >= endpoints as u64
                    && s["own_token_fetches"].as_u64().unwrap_or(0) >= (endpoints - half) as u64
            },
        );
    }
    let hub_fetches_round1 = paid_by_hub(&api.stats().requests);
    let jobs = if runners == "ephemeral" {
        for job in jobs {
            job.kill(libc::SIGTERM);
            wait_for("a job to end", Duration::from_secs(30), || !job.alive());
            let _ = std::fs::remove_dir_all(job.home.parent().unwrap());
        }
        None
    } else {
        Some(jobs)
    };
    let ttl = Duration::from_secs(TTL_SECS) + Duration::from_millis(600);
    if let Some(left) = ttl.checked_sub(round1_done.elapsed()) {
        std::thread::sleep(left);
    }
    // 10 % change: as many singles as collections.
    let changed = endpoints * CHANGED_PERCENT / 100;
    let changed_singles = changed / 2;
    let changed_collections = changed - changed_singles;
    for i in 0..changed_singles {
        api.put_json(
            &format!("/{}", single(i)),
            fakehub::repo_body(1_000_000 + i, BODY),
        );
    }
    for i in 0..changed_collections {
        api.put_list(&format!("/{}", collection(i)), items(i, 2));
    }
    let current = |e: &str| -> Vec<u8> {
        if let Some(i) = e.strip_prefix("repos/octo/swarm/contents/period-single") {
            let i: usize = i.parse().unwrap_or(0);
            fakehub::repo_body(
                if i < changed_singles {
                    1_000_000 + i
                } else {
                    i
                },
                BODY,
            )
        } else {
            let i: usize = e
                .trim_start_matches("repos/octo/swarm/releases/period-c")
                .trim_end_matches("/assets")
                .parse()
                .unwrap_or(0);
            serde_json::to_vec(&items(i, if i < changed_collections { 2 } else { 1 }))
                .unwrap_or_default()
        }
    };
    api.reset_stats();
    let jobs = match jobs {
        Some(jobs) => jobs,
        None => start_jobs(2),
    };
    round(&jobs, &set, &current)?;
    let stats = api.stats();
    for node in jobs.iter().chain(hub.iter()) {
        anyhow::ensure!(node.alive(), "{} died during the rounds", node.name);
    }
    Ok(Period {
        runners,
        hub: with_hub,
        changed,
        paid: stats.quota_spent.values().sum(),
        paid_by_hub: paid_by_hub(&stats.requests),
        upstream_calls: stats.total,
        hub_fetches_round1,
    })
}

/// The first round's body of an endpoint.
fn original(endpoint: &str, _half: usize) -> Vec<u8> {
    if let Some(i) = endpoint.strip_prefix("repos/octo/swarm/contents/period-single") {
        fakehub::repo_body(i.parse().unwrap_or(0), BODY)
    } else {
        let i: usize = endpoint
            .trim_start_matches("repos/octo/swarm/releases/period-c")
            .trim_end_matches("/assets")
            .parse()
            .unwrap_or(0);
        serde_json::to_vec(&items(i, 1)).unwrap_or_default()
    }
}
