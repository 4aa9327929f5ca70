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
    /// The HTTP method: only GET (other methods: use the daemon's $PEERCACHE_API/gh base URL)
    #[arg(short = 'X', long = "method", value_name = "METHOD")]
    method: Option<String>,
    /// Add a query parameter, as `gh api -X GET -f key=value` (repeatable)
    #[arg(short = 'f', long = "raw-field", value_name = "KEY=VALUE")]
    raw_fields: Vec<String>,
    /// Add a query parameter with gh's magic: {owner}/{repo} filled in, @FILE read (repeatable)
    #[arg(short = 'F', long = "field", value_name = "KEY=VALUE")]
    fields: Vec<String>,
    /// Add a request header, e.g. -H 'Accept: application/vnd.github.raw+json' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Follow Link rel="next" and print one merged JSON array
    #[arg(long)]
    paginate: bool,
    /// With --paginate: print one JSON array whose elements are the pages, as `gh api --slurp`
    #[arg(long, requires = "paginate", conflicts_with = "jq")]
    slurp: bool,
    /// Filter the answer with a jq expression (jaq); strings are printed raw, as gh does
    #[arg(short = 'q', long = "jq", value_name = "EXPRESSION")]
    jq: Option<String>,
    /// Print nothing on success (the exit code still tells)
    #[arg(long)]
    silent: bool,
    /// Print the status line and headers (with x-peercache-source) before the body
    #[arg(short = 'i', long = "include")]
    include: bool,
    /// Freshness TTL in seconds for this call [env: PEERCACHE_TTL; default 300]
    #[arg(long, value_name = "SECONDS")]
    ttl: Option<String>,
    /// Freshness TTL as gh's --cache takes it: 90s, 5m, 1h, 1h30m
    #[arg(long, value_name = "DURATION", conflicts_with = "ttl")]
    cache: Option<String>,
    /// Use the local cache directly, never a running daemon
    #[arg(long)]
    no_daemon: bool,
}

impl FetchArgs {
    /// The TTL flag in seconds (`--ttl`, or `--cache` converted), for the settings.
    pub fn ttl_flag(&self) -> anyhow::Result<Option<String>> {
        match (&self.ttl, &self.cache) {
            (Some(ttl), _) => Ok(Some(ttl.clone())),
            (None, Some(cache)) => match parse_go_duration(cache) {
                Some(secs) => Ok(Some(secs.to_string())),
                None => usage(format!(
                    "invalid --cache {cache:?}: expected a duration such as 90s, 5m, 1h or 1h30m"
                )),
            },
            (None, None) => Ok(None),
        }
    }
}

/// A duration in Go's syntax (`gh api --cache`): a sequence of decimal numbers with units
/// `ns`, `us`, `ms`, `s`, `m`, `h` (`1h30m`, `1.5h`, `90s`), as whole seconds (rounded up).
pub fn parse_go_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut nanos = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    let secs = (nanos / 1e9).ceil();
    (secs.is_finite() && secs < 1e15).then_some(secs as u64)
}

/// Runs `fetch` and returns the exit code of the contract.
pub fn run(settings: &Settings, args: FetchArgs) -> anyhow::Result<Exit> {
    if let Some(method) = &args.method
        && !method.eq_ignore_ascii_case("GET")
    {
        return usage(format!(
            "fetch only reads (GET), so -X {method} is not supported: send {method} requests to the daemon's base URL $PEERCACHE_API/gh (see docs/clients.md), which passes them to GitHub"
        ));
    }
    let filter = match &args.jq {
        Some(code) => Some(crate::jq::Filter::new(code).map_err(UserError::usage)?),
        None => None,
    };
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
            Err(
                ResolveError::Unreachable(message)
                | ResolveError::RateLimited {
                    reason: message, ..
                },
            ) => {
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
    let output = Output {
        include: args.include,
        silent: args.silent,
        slurp: args.slurp,
        filter,
    };
    print_pages(&pages, &output)
}

/// How the answer is printed.
struct Output {
    include: bool,
    silent: bool,
    slurp: bool,
    filter: Option<crate::jq::Filter>,
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
                .with_home_repository(self.settings.repository.clone())
                .with_max_entry(self.settings.max_entry);
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
    if let Some(ttl) = args.ttl_flag()? {
        let flag = if args.ttl.is_some() {
            "--ttl"
        } else {
            "--cache"
        };
        request.ttl = parse_ttl(&Raw {
            value: ttl,
            origin: Origin::Flag(flag),
        })?;
    }
    add_fields(&mut request.url, args, repository.as_deref())?;
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

/// `-f`/`-F` fields as query parameters, in the order given (`gh api -X GET` does the same).
fn add_fields(
    url: &mut url::Url,
    args: &FetchArgs,
    repository: Option<&str>,
) -> anyhow::Result<()> {
    let (owner, repo) = repository
        .and_then(|r| r.split_once('/'))
        .map_or((None, None), |(o, r)| (Some(o), Some(r)));
    let split = |flag: &str, field: &str| -> anyhow::Result<(String, String)> {
        match field.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => usage(format!("invalid {flag} {field:?}: expected key=value")),
        }
    };
    let mut pairs = Vec::new();
    for field in &args.raw_fields {
        pairs.push(split("-f", field)?);
    }
    for field in &args.fields {
        let (key, mut value) = split("-F", field)?;
        if let Some(path) = value.strip_prefix('@') {
            let bytes = if path == "-" {
                let mut buf = Vec::new();
                io::Read::read_to_end(&mut io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(path).map_err(|e| {
                    UserError::usage(format!("-F {key}=@{path}: cannot read {path}: {e}"))
                })?
            };
            value = String::from_utf8_lossy(&bytes).into_owned();
        } else if value == "null" {
            // gh sends a null field as an empty parameter.
            value.clear();
        } else {
            for (placeholder, fill) in [("{owner}", owner), ("{repo}", repo)] {
                if value.contains(placeholder) {
                    let Some(fill) = fill else {
                        return usage(format!(
                            "-F {key}={value}: {placeholder} needs GITHUB_REPOSITORY=owner/repo"
                        ));
                    };
                    value = value.replace(placeholder, fill);
                }
            }
        }
        pairs.push((key, value));
    }
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(())
}

/// Writes the answer to stdout and picks the exit code; an error status also gets a stderr line.
fn print_pages(pages: &[Resolved], output: &Output) -> anyhow::Result<Exit> {
    let include = output.include;
    let last = pages.last().expect("at least one page");
    let (body, exit) = if !last.is_success() {
        eprintln!("peercache: {}", http_error_line(last));
        (last.body.clone(), Exit::Http)
    } else if output.silent {
        (bytes::Bytes::new(), Exit::Ok)
    } else if let Some(filter) = &output.filter {
        // As gh does: the filter runs on each page.
        let mut out = Vec::new();
        for page in pages {
            match filter.run(&page.body) {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(why) => {
                    eprintln!("peercache: --jq: {why}");
                    return Ok(Exit::Http);
                }
            }
        }
        (out.into(), Exit::Ok)
    } else if output.slurp {
        (slurp_pages(pages)?.into(), Exit::Ok)
    } else if pages.len() == 1 {
        (last.body.clone(), Exit::Ok)
    } else {
        (merge_pages(pages)?.into(), Exit::Ok)
    };

    // Head and body go out in one write: stdout is line-buffered, and a write per header line
    // costs a syscall each and wakes the reader of the pipe each time.
    let mut text = Vec::with_capacity(body.len() + 1024);
    if include {
        let shown = if last.is_success() { &pages[0] } else { last };
        let reason = reqwest::StatusCode::from_u16(shown.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        // Writing into a Vec cannot fail.
        let _ = writeln!(text, "HTTP/1.1 {} {reason}", shown.status);
        for (name, value) in &shown.headers {
            let _ = writeln!(text, "{name}: {value}");
        }
        let _ = writeln!(text, "x-peercache-source: {}", combined_source(pages));
        text.push(b'\n');
    }
    text.extend_from_slice(&body);
    let mut out = io::stdout().lock();
    let written = out.write_all(&text).and_then(|()| out.flush());
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

/// `--slurp`: one JSON array whose elements are the pages, each as GitHub sent it.
fn slurp_pages(pages: &[Resolved]) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![b'['];
    for (i, page) in pages.iter().enumerate() {
        let body = trim_ascii(&page.body);
        if serde_json::from_slice::<&RawValue>(body).is_err() {
            anyhow::bail!("--slurp needs JSON pages, but page {} is not JSON", i + 1);
        }
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(body);
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

#[cfg(test)]
mod tests {
    use super::parse_go_duration;

    #[test]
    fn durations_as_gh_takes_them() {
        assert_eq!(parse_go_duration("1h"), Some(3600));
        assert_eq!(parse_go_duration("60m"), Some(3600));
        assert_eq!(parse_go_duration("3600s"), Some(3600));
        assert_eq!(parse_go_duration("1h30m"), Some(5400));
        assert_eq!(parse_go_duration("1.5h"), Some(5400));
        assert_eq!(parse_go_duration("500ms"), Some(1));
        assert_eq!(parse_go_duration("0"), Some(0));
        for bad in ["", "1", "h", "1d", "soon", "1h-5m", "1e400h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }
}
