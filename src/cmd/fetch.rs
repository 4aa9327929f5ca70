//! `peercache fetch ENDPOINT`: GET through the cache, like `gh api`.

use std::io::{self, Write};

use clap::Args;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::value::RawValue;

use crate::cache::{Cache, DEFAULT_ACCEPT, DEFAULT_API_VERSION};
use crate::config::{Origin, ProcessEnv, Raw, Settings, parse_ttl};
use crate::daemon::client::ClientError;
use crate::daemon::remote::Remote;
use crate::error::{Exit, UserError, usage};
use crate::github::{GitHub, endpoint_url, next_link, on_api_host};
use crate::resolver::{Request, ResolveError, Resolved, Resolver, Source};
use crate::secret::Secret;

/// Arguments of `peercache fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// repos/{owner}/{repo}/… ({owner}/{repo} from GITHUB_REPOSITORY), a path, or a full URL on the API host
    #[arg(value_name = "ENDPOINT")]
    endpoint: String,
    /// Add a request header, e.g. -H 'Accept: application/vnd.github.raw+json' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Follow Link rel="next" and print one merged JSON array
    #[arg(long)]
    paginate: bool,
    /// Print the status line and headers (with x-peercache-source) before the body
    #[arg(short = 'i', long = "include")]
    include: bool,
    /// Freshness TTL in seconds for this call [env: PEERCACHE_TTL; default 300]
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<String>,
    /// Use the local cache directly, never a running daemon
    #[arg(long)]
    no_daemon: bool,
}

/// Runs `fetch` and returns the exit code of the contract.
pub fn run(settings: &Settings, args: FetchArgs) -> anyhow::Result<Exit> {
    let mut request = build_request(settings, &args)?;
    if args.paginate && !request.url.query_pairs().any(|(k, _)| k == "per_page") {
        // As `gh api --paginate` does: fewer pages, fewer calls.
        request.url.query_pairs_mut().append_pair("per_page", "100");
    }
    // The daemon forwards only Accept, X-GitHub-Api-Version and Authorization.
    let use_daemon = !args.no_daemon && request.extra_headers.is_empty();
    let mut tiers = Tiers::new(settings, use_daemon);

    let mut pages: Vec<Resolved> = Vec::new();
    loop {
        let resolved = match tiers.resolve(&request)? {
            Ok(resolved) => resolved,
            Err(ResolveError::Unreachable(message)) => {
                return Err(UserError::unreachable(message).into());
            }
            Err(ResolveError::Local(e)) => return Err(e),
        };
        let next = if args.paginate && resolved.is_success() {
            resolved.link().and_then(next_link)
        } else {
            None
        };
        let failed = !resolved.is_success();
        pages.push(resolved);
        if failed {
            break;
        }
        match next {
            Some(next) => {
                let url = url::Url::parse(&next)
                    .ok()
                    .filter(|u| on_api_host(&settings.api_url, u));
                let Some(url) = url else {
                    return Err(anyhow::anyhow!(
                        "GitHub's Link header points off the API host ({next}); stopping pagination"
                    ));
                };
                if pages.len() > 10_000 {
                    return Err(anyhow::anyhow!(
                        "more than 10000 pages; stopping pagination"
                    ));
                }
                request.url = url;
            }
            None => break,
        }
    }
    print_pages(&pages, args.include)
}

/// Where requests go: a running daemon when there is one, else this process's own resolver
/// (built only when needed: the daemon path needs no runtime, TLS or cache dir of its own).
struct Tiers<'a> {
    settings: &'a Settings,
    daemon: Option<Remote>,
    direct: Option<(Resolver, tokio::runtime::Runtime)>,
}

impl<'a> Tiers<'a> {
    fn new(settings: &'a Settings, use_daemon: bool) -> Tiers<'a> {
        let daemon = if use_daemon {
            Remote::find(settings)
        } else {
            None
        };
        Tiers {
            settings,
            daemon,
            direct: None,
        }
    }

    /// The request's outcome; the outer error is a local failure.
    fn resolve(&mut self, request: &Request) -> anyhow::Result<Result<Resolved, ResolveError>> {
        if let Some(daemon) = &self.daemon {
            match daemon.resolve(request) {
                Ok(outcome) => return Ok(outcome),
                Err(e @ ClientError::Connect { .. }) => {
                    tracing::debug!(
                        "the daemon (pid {}) is not reachable ({e}); using the cache directly",
                        daemon.pid()
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        "the daemon (pid {}) gave no usable answer ({e}); using the cache directly",
                        daemon.pid()
                    );
                }
            }
            self.daemon = None;
        }
        if self.direct.is_none() {
            let cache = Cache::open(&self.settings.cache_dir, self.settings.max_size)?;
            let resolver = Resolver::new(cache, GitHub::new()?, &self.settings.api_url)
                .with_home_repository(self.settings.repository.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            self.direct = Some((resolver, runtime));
        }
        let (resolver, runtime) = self.direct.as_ref().expect("built above");
        Ok(runtime.block_on(resolver.resolve(request)))
    }
}

/// The request for the endpoint with the user's headers and the settings' token and TTL.
fn build_request(settings: &Settings, args: &FetchArgs) -> anyhow::Result<Request> {
    let repository = Settings::repository(&ProcessEnv);
    let url = endpoint_url(&settings.api_url, &args.endpoint, repository.as_deref())?;
    let mut request = Request {
        url,
        accept: DEFAULT_ACCEPT.to_string(),
        api_version: DEFAULT_API_VERSION.to_string(),
        token: settings.token.clone(),
        extra_headers: Vec::new(),
        ttl: settings.ttl,
    };
    if let Some(ttl) = &args.ttl {
        request.ttl = parse_ttl(&Raw {
            value: ttl.clone(),
            origin: Origin::Flag("--ttl"),
        })?;
    }
    for header in &args.headers {
        let Some((name, value)) = header.split_once(':') else {
            return usage(format!("invalid -H {header:?}: expected 'Name: value'"));
        };
        let (name, value) = (name.trim(), value.trim());
        let parsed_name = HeaderName::from_bytes(name.as_bytes());
        let parsed_value = HeaderValue::from_str(value);
        let (Ok(parsed_name), Ok(parsed_value)) = (parsed_name, parsed_value) else {
            return usage(format!(
                "invalid -H {name:?}: expected 'Name: value' with a valid header name and value"
            ));
        };
        match parsed_name.as_str() {
            "accept" => request.accept = value.to_string(),
            "x-github-api-version" => request.api_version = value.to_string(),
            "authorization" => request.token = Some(Secret::new(value)),
            "host" | "if-none-match" | "if-modified-since" | "content-length" => {
                return usage(format!(
                    "-H {name:?} is not allowed: peercache sets it itself (it sends conditional requests on its own)"
                ));
            }
            _ => request.extra_headers.push((parsed_name, parsed_value)),
        }
    }
    Ok(request)
}

/// Writes the answer to stdout and picks the exit code; an error status also gets a stderr line.
fn print_pages(pages: &[Resolved], include: bool) -> anyhow::Result<Exit> {
    let last = pages.last().expect("at least one page");
    let (body, exit) = if !last.is_success() {
        eprintln!("peercache: {}", http_error_line(last));
        (last.body.clone(), Exit::Http)
    } else if pages.len() == 1 {
        (last.body.clone(), Exit::Ok)
    } else {
        (merge_pages(pages)?, Exit::Ok)
    };

    let mut out = io::stdout().lock();
    let written = (|| -> io::Result<()> {
        if include {
            let shown = if last.is_success() { &pages[0] } else { last };
            let reason = reqwest::StatusCode::from_u16(shown.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            writeln!(out, "HTTP/1.1 {} {reason}", shown.status)?;
            for (name, value) in &shown.headers {
                writeln!(out, "{name}: {value}")?;
            }
            writeln!(out, "x-peercache-source: {}", combined_source(pages))?;
            writeln!(out)?;
        }
        out.write_all(&body)?;
        out.flush()
    })();
    match written {
        Ok(()) => Ok(exit),
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(exit),
        Err(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
    }
}

/// The source to report for several pages: the least cached one, `stale` above all.
fn combined_source(pages: &[Resolved]) -> Source {
    pages
        .iter()
        .map(|p| p.source)
        .max()
        .unwrap_or(Source::Local)
}

/// One merged JSON array: the elements of array pages in order, byte for byte; pages that are
/// not arrays become elements themselves (as `gh api --paginate --slurp` does).
fn merge_pages(pages: &[Resolved]) -> anyhow::Result<Vec<u8>> {
    let mut elements: Vec<&[u8]> = Vec::new();
    let parsed: Vec<Option<Vec<&RawValue>>> = pages
        .iter()
        .map(|p| serde_json::from_slice::<Vec<&RawValue>>(&p.body).ok())
        .collect();
    for (page, items) in pages.iter().zip(&parsed) {
        match items {
            Some(items) => elements.extend(items.iter().map(|raw| raw.get().as_bytes())),
            None => {
                let body = trim_ascii(&page.body);
                if serde_json::from_slice::<&RawValue>(body).is_err() {
                    anyhow::bail!(
                        "--paginate needs JSON pages, but {} is not JSON",
                        page.entry.as_ref().map_or("a page", |e| e.url.as_str())
                    );
                }
                elements.push(body);
            }
        }
    }
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(element);
    }
    out.push(b']');
    Ok(out)
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// `GitHub answered 404 Not Found for URL: message`.
fn http_error_line(resolved: &Resolved) -> String {
    let reason = reqwest::StatusCode::from_u16(resolved.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let message = serde_json::from_slice::<serde_json::Value>(&resolved.body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .map(|m| format!(": {}", m.replace('\n', " ")))
        .unwrap_or_default();
    format!("GitHub answered {} {reason}{message}", resolved.status)
}
