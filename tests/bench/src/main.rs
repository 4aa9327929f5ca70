//! peercache's benchmark driver, run by `scripts/bench.sh`: the API budget a swarm saves,
//! latency by source, throughput beside nginx and `gh api --cache`, footprint, and scale.
//!
//! Everything it needs runs on this machine: the stand-in GitHub API (in process, 50 ms on every
//! answer), the daemons (the binary given with `--binary`), wrk, nginx and gh. It prints a table,
//! and writes `report.json`, `report.md` and `report.png` to `--out`.

#[path = "../../common/mod.rs"]
mod common;

mod bench;
mod budget;
mod chart;
mod footprint;
mod latency;
mod report;
mod scale;
mod stats;
mod swarm_revalidation;
mod versus;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use bench::{BODY, Bench, UPSTREAM_LATENCY};
use report::{Machine, Outcome, Report};

/// Measures peercache against a stand-in GitHub API on this machine.
#[derive(Debug, Parser)]
#[command(name = "peercache-bench")]
struct Args {
    /// The peercache binary to measure (scripts/bench.sh passes the static musl build).
    #[arg(long)]
    binary: PathBuf,
    /// A small swarm (3 nodes × 20 endpoints) and few samples; under a minute.
    #[arg(long)]
    quick: bool,
    /// Where report.json, report.md and report.png go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Only these sections (comma-separated: budget, latency, throughput, gh, footprint, scale).
    #[arg(long, value_delimiter = ',', value_parser = ["budget", "revalidation", "latency", "throughput", "gh", "footprint", "scale"])]
    only: Vec<String>,
    /// Daemons of the scale section.
    #[arg(long, default_value_t = 200)]
    scale_nodes: usize,
    /// `PEERCACHE_FULL_MESH` for the scale section's daemons (unset: the default, 32); a
    /// number above `--scale-nodes` measures a full mesh of that size instead.
    #[arg(long)]
    scale_full_mesh: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A failed expectation inside a section is reported as that section's failure, on one line.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("a check failed");
        eprintln!("peercache-bench: {message}");
    }));
    match run(&args) {
        Ok(report) if failed(&report) => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peercache-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn failed(report: &Report) -> bool {
    report.budget.iter().any(Outcome::failed)
        || report.latency.failed()
        || report.throughput.failed()
        || report.gh.failed()
        || report.footprint.failed()
        || report.scale.failed()
}

/// Runs `section` unless `--only` leaves it out; a panic inside it is its failure.
fn section<T>(args: &Args, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> Outcome<T> {
    if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
        return Outcome::skipped("left out by --only");
    }
    eprintln!("==> {name}");
    let started = std::time::Instant::now();
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => Outcome::from_result(result),
        Err(_) => Outcome::Failed {
            failed: "a check failed (see the message above)".into(),
        },
    };
    eprintln!("    {name}: {:.1} s", started.elapsed().as_secs_f64());
    if let Some(why) = outcome.reason() {
        eprintln!("    {name}: {why}");
    }
    outcome
}

fn have(tool: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(format!(
            "{tool} is not installed (scripts/bench.sh installs it with apt-get when it can)"
        ))
    }
}

fn run(args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.binary.is_file(),
        "--binary {}: no such file; build it with scripts/build-static.sh",
        args.binary.display()
    );
    let binary = std::fs::canonicalize(&args.binary)?;
    let machine = Machine::here();
    let bench = Bench::new(binary.clone())?;
    let quick = args.quick;

    let (sizes, endpoints): (&[usize], usize) = if quick {
        (&[3], 20)
    } else {
        (&[1, 5, 10, 20], 100)
    };
    let mut budget = Vec::new();
    for &nodes in sizes {
        budget.push(section(args, "budget", || {
            budget::run(&bench, nodes, endpoints)
        }));
    }
    let mut revalidation = Vec::new();
    for &nodes in sizes {
        revalidation.push(section(args, "revalidation", || {
            swarm_revalidation::run(&bench, nodes, endpoints)
        }));
    }
    let latency = section(args, "latency", || {
        latency::run(&bench, if quick { 20 } else { 200 })
    });
    let throughput = if quick {
        Outcome::skipped("--quick")
    } else if let Err(why) = have("wrk").and(have("nginx")) {
        Outcome::skipped(why)
    } else {
        // Five interleaved rounds of 5 s per server, best of each.
        section(args, "throughput", || versus::throughput(&bench, 5, 5))
    };
    let gh = if quick {
        Outcome::skipped("--quick")
    } else if let Err(why) = have("gh") {
        Outcome::skipped(why)
    } else {
        section(args, "gh", || versus::gh_cache(&bench, 5, 100, 100))
    };
    let footprint = section(args, "footprint", || {
        footprint::run(&bench, if quick { &[2] } else { &[10, 20] })
    });
    let scale = if quick {
        Outcome::skipped("--quick")
    } else {
        section(args, "scale", || {
            scale::run(&bench, args.scale_nodes, 20, args.scale_full_mesh)
        })
    };
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = Report {
        date,
        machine,
        binary: binary.display().to_string(),
        quick,
        upstream_latency_ms: UPSTREAM_LATENCY.as_millis() as u64,
        body_bytes: BODY,
        budget,
        revalidation,
        latency,
        throughput,
        gh,
        footprint,
        start_to_ready: footprint::start_to_ready(&bench),
        scale,
    };

    println!(
        "peercache benchmarks, {}: {} cores ({}), {}; binary {}",
        report.date, report.machine.cpus, report.machine.cpu, report.machine.kernel, report.binary
    );
    println!(
        "stand-in GitHub API on loopback: {} ms on every answer, {} KB bodies",
        report.upstream_latency_ms,
        report.body_bytes / 1024
    );
    print!("{}", report::text_table(&report));
    println!();
    print!("{}", report::savings(&report));

    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    let markdown = args.out.join("report.md");
    std::fs::write(
        &markdown,
        format!(
            "Measured {} on {} cores ({}), load average at the start {}.\n\n{}\n{}",
            report.date,
            report.machine.cpus,
            report.machine.cpu,
            report.machine.load_at_start,
            report::markdown_table(&report),
            report::savings(&report)
        ),
    )?;
    let png = args.out.join("report.png");
    match chart::draw(&report, &png) {
        Ok(()) => println!(
            "written: {}, {}, {}",
            json.display(),
            markdown.display(),
            png.display()
        ),
        Err(e) => {
            println!("written: {}, {}", json.display(), markdown.display());
            eprintln!("peercache-bench: no chart: {e:#}");
        }
    }
    Ok(report)
}
