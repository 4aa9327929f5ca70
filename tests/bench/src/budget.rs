//! The API budget: N nodes each run a job that asks for the same E endpoints, all at once or
//! one after another, and the stand-in counts what reaches "GitHub"; then, once every entry is
//! older than the TTL, the same jobs again, and the share of the revalidations answered by a
//! free 304.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fakehub::FakeHub;
use serde::Serialize;

use crate::bench::{BODY, Bench, api_get};
use crate::common::swarm::SwarmNode;

/// How many requests one job has in flight (a job's parallel steps and matrix legs).
pub const WORKERS_PER_JOB: usize = 10;
/// Delay between the starts of consecutive jobs in the staggered round.
pub const STAGGER: Duration = Duration::from_millis(250);
/// The TTL of the revalidation round: every entry is older than this when it starts.
pub const REVALIDATION_TTL_SECS: u64 = 5;
/// Share of the resources that change upstream before the revalidation round.
pub const CHANGED_PERCENT: usize = 10;

/// One round of jobs.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// `together` or `staggered` (or `revalidation`).
    pub mode: &'static str,
    /// Requests the jobs made (nodes × endpoints).
    pub requests: usize,
    /// Requests that reached the stand-in GitHub API.
    pub upstream_calls: u64,
    /// Of those, the ones that cost rate-limit quota.
    pub paid_calls: u64,
    /// Answers by `x-peercache-source`.
    pub by_source: BTreeMap<String, u64>,
    /// From the first job's start to the last answer.
    pub wall_ms: f64,
}

/// The revalidation round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Revalidation {
    /// The round itself.
    pub round: Round,
    /// Resources changed upstream before it.
    pub changed: usize,
    /// Upstream calls for resources that did not change.
    pub unchanged_calls: u64,
    /// Of those, the ones answered by a 304 that cost no quota.
    pub unchanged_free_304: u64,
    /// `unchanged_free_304 / unchanged_calls`.
    pub free_share: f64,
}

/// Jobs of different repositories of one owner (scope `owner`) asking for another
/// repository's endpoints: each token proves once that it can see that repository.
#[derive(Debug, Clone, Serialize)]
pub struct OwnerScope {
    /// The round (all jobs at once).
    pub round: Round,
    /// Conditional requests for the repository object that proved a token's access.
    pub proofs: u64,
    /// Of those, the ones answered by a 304 that cost no quota.
    pub free_proofs: u64,
}

/// Every round for one swarm size.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetRun {
    /// Nodes (jobs).
    pub nodes: usize,
    /// Endpoints each job asks for.
    pub endpoints: usize,
    /// Upstream calls the jobs would make without sharing (each job its own cache).
    pub without_sharing: usize,
    /// All jobs start at the same moment.
    pub together: Round,
    /// Job i starts i × 250 ms after job 0.
    pub staggered: Round,
    /// The together round's endpoints again, after the TTL.
    pub revalidation: Revalidation,
    /// The same size of swarm in scope `owner`, with access proofs.
    pub owner_scope: OwnerScope,
}

/// The rounds for `nodes` nodes × `endpoints` endpoints, on a swarm of their own.
pub fn run(bench: &Bench, nodes: usize, endpoints: usize) -> anyhow::Result<BudgetRun> {
    let hub = bench.hub();
    let together_set: Vec<String> = (0..endpoints)
        .map(|i| format!("repos/octo/swarm/contents/together{i}"))
        .collect();
    let staggered_set: Vec<String> = (0..endpoints)
        .map(|i| format!("repos/octo/swarm/contents/staggered{i}"))
        .collect();
    let mut bodies: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, endpoint) in together_set.iter().chain(&staggered_set).enumerate() {
        let body = fakehub::repo_body(i, BODY);
        hub.put_json(&format!("/{endpoint}"), body.clone());
        bodies.insert(endpoint.clone(), body);
    }
    let swarm = bench.swarm(&hub, &format!("budget{nodes}-node"), nodes);

    let together = round(
        &hub,
        &swarm,
        &together_set,
        &bodies,
        "together",
        Duration::ZERO,
        None,
    )?;
    let together_done = Instant::now();
    let staggered = round(
        &hub,
        &swarm,
        &staggered_set,
        &bodies,
        "staggered",
        STAGGER,
        None,
    )?;

    // Every together-round entry must be older than the revalidation TTL.
    let ttl = Duration::from_secs(REVALIDATION_TTL_SECS);
    if let Some(left) = (ttl + Duration::from_millis(500)).checked_sub(together_done.elapsed()) {
        std::thread::sleep(left);
    }
    let changed = endpoints * CHANGED_PERCENT / 100;
    for (i, endpoint) in together_set.iter().take(changed).enumerate() {
        let body = fakehub::repo_body(1_000_000 + i, BODY);
        hub.put_json(&format!("/{endpoint}"), body.clone());
        bodies.insert(endpoint.clone(), body);
    }
    let round2 = round(
        &hub,
        &swarm,
        &together_set,
        &bodies,
        "revalidation",
        Duration::ZERO,
        Some(REVALIDATION_TTL_SECS),
    )?;
    let changed_paths: Vec<String> = together_set[..changed]
        .iter()
        .map(|e| format!("/{e}"))
        .collect();
    let stats = hub.stats();
    let unchanged: Vec<_> = stats
        .requests
        .iter()
        .filter(|r| !changed_paths.iter().any(|p| p == r.path()))
        .collect();
    let unchanged_calls = unchanged.len() as u64;
    let unchanged_free_304 = unchanged
        .iter()
        .filter(|r| r.status == 304 && !r.quota_spent)
        .count() as u64;
    let revalidation = Revalidation {
        round: round2,
        changed,
        unchanged_calls,
        unchanged_free_304,
        free_share: if unchanged_calls == 0 {
            1.0
        } else {
            unchanged_free_304 as f64 / unchanged_calls as f64
        },
    };
    for node in &swarm {
        anyhow::ensure!(node.alive(), "{} died during the rounds", node.name);
    }
    drop(swarm);
    let owner_scope = owner_round(bench, nodes, endpoints)?;
    Ok(BudgetRun {
        nodes,
        endpoints,
        without_sharing: nodes * endpoints,
        together,
        staggered,
        revalidation,
        owner_scope,
    })
}

/// The repository the owner-scope round reads: none of its jobs belongs to it.
const LIBRARY: &str = "octo/library";

/// N jobs of N repositories of `octo` (scope `owner`) ask at once for E endpoints of
/// [`LIBRARY`]: E calls, plus one conditional request for the repository per token that was
/// served another token's copy.
fn owner_round(bench: &Bench, nodes: usize, endpoints: usize) -> anyhow::Result<OwnerScope> {
    let hub = bench.hub();
    hub.put_json(
        &format!("/repos/{LIBRARY}"),
        format!(r#"{{"full_name":"{LIBRARY}","private":true}}"#).into_bytes(),
    );
    hub.set_private(LIBRARY);
    let set: Vec<String> = (0..endpoints)
        .map(|i| format!("repos/{LIBRARY}/contents/owner{i}"))
        .collect();
    let mut bodies: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, endpoint) in set.iter().enumerate() {
        let body = fakehub::repo_body(i, BODY);
        hub.put_json(&format!("/{endpoint}"), body.clone());
        bodies.insert(endpoint.clone(), body);
    }
    let swarm = bench.swarm_with(&hub, &format!("owner{nodes}-node"), nodes, |i| {
        vec![
            ("PEERCACHE_SCOPE", "owner".to_string()),
            ("GITHUB_REPOSITORY", format!("octo/job{i}")),
        ]
    });
    let round = round(
        &hub,
        &swarm,
        &set,
        &bodies,
        "owner scope",
        Duration::ZERO,
        None,
    )?;
    let stats = hub.stats();
    let proof_path = format!("/repos/{LIBRARY}");
    let proofs: Vec<_> = stats
        .requests
        .iter()
        .filter(|r| r.path() == proof_path)
        .collect();
    let free_proofs = proofs
        .iter()
        .filter(|r| r.status == 304 && !r.quota_spent)
        .count() as u64;
    for node in &swarm {
        anyhow::ensure!(
            node.alive(),
            "{} died during the owner-scope round",
            node.name
        );
    }
    Ok(OwnerScope {
        round,
        proofs: proofs.len() as u64,
        free_proofs,
    })
}

/// Every node runs a job asking for every endpoint of `set`, WORKERS_PER_JOB at a time; job i
/// starts `i × stagger` after job 0. Every answer must be a 200 with the stand-in's body.
fn round(
    hub: &FakeHub,
    swarm: &[SwarmNode],
    set: &[String],
    bodies: &BTreeMap<String, Vec<u8>>,
    mode: &'static str,
    stagger: Duration,
    ttl_secs: Option<u64>,
) -> anyhow::Result<Round> {
    hub.reset_stats();
    let sources: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // Every thread exists before the first job starts.
    let start = Instant::now() + Duration::from_millis(200);
    std::thread::scope(|scope| {
        for (i, node) in swarm.iter().enumerate() {
            let next = AtomicUsize::new(0);
            let (sources, errors) = (&sources, &errors);
            let job_start = start + stagger * i as u32;
            scope.spawn(move || {
                std::thread::sleep(job_start.saturating_duration_since(Instant::now()));
                std::thread::scope(|workers| {
                    for _ in 0..WORKERS_PER_JOB {
                        workers.spawn(|| {
                            loop {
                                let at = next.fetch_add(1, Ordering::Relaxed);
                                let Some(endpoint) = set.get(at) else { break };
                                let r = api_get(node, endpoint, ttl_secs);
                                if r.status != 200 || r.body != bodies[endpoint] {
                                    errors.lock().unwrap().push(format!(
                                        "{} {endpoint}: status {} ({} bytes, source {})",
                                        node.name,
                                        r.status,
                                        r.body.len(),
                                        r.source()
                                    ));
                                }
                                *sources.lock().unwrap().entry(r.source()).or_insert(0) += 1;
                            }
                        });
                    }
                });
            });
        }
    });
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    let errors = errors.into_inner().unwrap();
    anyhow::ensure!(
        errors.is_empty(),
        "{} of the {mode} round's answers were wrong, e.g. {}",
        errors.len(),
        errors[0]
    );
    let stats = hub.stats();
    Ok(Round {
        mode,
        requests: swarm.len() * set.len(),
        upstream_calls: stats.total,
        paid_calls: stats.quota_spent.values().sum(),
        by_source: sources.into_inner().unwrap(),
        wall_ms,
    })
}
