//! GitHub Actions integration: an injection-safe writer for `$GITHUB_ENV` and `$GITHUB_OUTPUT`.
//!
//! The runner reads these files as `NAME=VALUE` lines, or `NAME<<DELIM`, the value's lines and a
//! line `DELIM` for values with line breaks. A value written naively (`NAME=$value`) that holds a
//! newline followed by `OTHER=x` defines a second variable: script injection, the classic way to set
//! `LD_PRELOAD` or `PATH` for every later step. The writer here cannot be talked into that:
//!
//! - names of environment variables must match `[A-Za-z_][A-Za-z0-9_]*`; output names may also
//!   hold `-` (`[A-Za-z_][A-Za-z0-9_-]*`, as step ids do: the contract's outputs are `peer-id`,
//!   `peer-count`); neither can hold `=`, `<<` or a line break;
//! - a value without `\n` and `\r` is written as `NAME=VALUE` (the runner splits at the first `=`,
//!   and a validated name holds neither `=` nor `<<`);
//! - any other value uses the heredoc form with a fresh delimiter `ghadelimiter_<32 random hex>`,
//!   regenerated should it occur anywhere in the value, so no line of the value can end the block;
//! - each record is one `write_all` on a file opened with `O_APPEND`, so records from concurrent
//!   writers do not interleave, and a record starts on a line of its own even when someone left
//!   the file without a final newline.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::UserError;

/// The variable naming the file of environment variables for later steps.
pub const GITHUB_ENV: &str = "GITHUB_ENV";
/// The variable naming the file of step outputs.
pub const GITHUB_OUTPUT: &str = "GITHUB_OUTPUT";

/// Appends NAME=VALUE to the file named by the variable `GITHUB_ENV`.
pub fn set_env(name: &str, value: &str) -> anyhow::Result<()> {
    if !valid_env_name(name) {
        return Err(bad_name(name, "[A-Za-z_][A-Za-z0-9_]*"));
    }
    append_to(&file_of(GITHUB_ENV)?, name, value)
}

/// Appends NAME=VALUE to the file named by `GITHUB_OUTPUT`.
pub fn set_output(name: &str, value: &str) -> anyhow::Result<()> {
    append_to(&file_of(GITHUB_OUTPUT)?, name, value)
}

/// The same, to an explicit file (tests, and callers that resolved the path already).
///
/// Takes the names [`set_output`] takes (`[A-Za-z_][A-Za-z0-9_-]*`); [`set_env`] is stricter.
pub fn append_to(path: &Path, name: &str, value: &str) -> anyhow::Result<()> {
    let record = format_record(name, value)?;
    // Read access only to look at the last byte; a file we may only write is appended to as is.
    let open = |read: bool| {
        OpenOptions::new()
            .read(read)
            .append(true)
            .create(true)
            .open(path)
    };
    let file = open(true)
        .or_else(|_| open(false))
        .with_context(|| format!("cannot open {} for appending", path.display()))?;
    // A file left without a final newline would glue our record onto its last line.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut last = [0u8; 1];
    let glued = len > 0 && file.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n';
    let bytes = if glued {
        [b"\n".as_slice(), record.as_bytes()].concat()
    } else {
        record.into_bytes()
    };
    (&file)
        .write_all(&bytes)
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// The file a GitHub Actions variable names, or a clear error outside a workflow step.
pub fn file_of(variable: &str) -> anyhow::Result<PathBuf> {
    match std::env::var_os(variable) {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(UserError::usage(format!(
            "--github-env needs {variable}, which GitHub Actions sets; run this inside a workflow step"
        ))
        .into()),
    }
}

/// Whether `name` is a safe environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_name(name: &str) -> bool {
    valid_name(name, false)
}

/// Whether `name` is a safe output name: `[A-Za-z_][A-Za-z0-9_-]*`.
pub fn valid_output_name(name: &str) -> bool {
    valid_name(name, true)
}

fn valid_name(name: &str, dash: bool) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (dash && c == '-'))
}

fn bad_name(name: &str, pattern: &str) -> anyhow::Error {
    UserError::usage(format!(
        "cannot write the variable {name:?}: a name must match {pattern}"
    ))
    .into()
}

/// One record, ending in a newline: `NAME=VALUE`, or the heredoc form for a value with a line
/// break. Safe to print where a script may append it to `$GITHUB_ENV` itself.
pub fn format_record(name: &str, value: &str) -> anyhow::Result<String> {
    if !valid_output_name(name) {
        return Err(bad_name(name, "[A-Za-z_][A-Za-z0-9_-]*"));
    }
    if !value.contains(['\n', '\r']) {
        return Ok(format!("{name}={value}\n"));
    }
    let delimiter = loop {
        let candidate = format!("ghadelimiter_{}", random_hex());
        if !value.contains(&candidate) {
            break candidate;
        }
    };
    Ok(format!("{name}<<{delimiter}\n{value}\n{delimiter}\n"))
}

/// 128 random bits as 32 hex digits.
fn random_hex() -> String {
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// How the runner splits the file into lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnd {
    /// Linux and macOS runners: only `\n` ends a line.
    Lf,
    /// Windows runners: `\r\n` ends a line too.
    CrLf,
}

/// Parses a `$GITHUB_ENV`/`$GITHUB_OUTPUT` file the way the runner does (its `FileCommandManager`):
/// each line is `NAME=VALUE` when an `=` comes before any `<<`, else `NAME<<DELIM` followed by the
/// value's lines up to a line equal to `DELIM`. Empty lines are skipped. For tests, here and of
/// the callers: they read back what was written and check that no extra variable appeared.
pub fn parse_runner_file(text: &str, line_end: LineEnd) -> anyhow::Result<Vec<(String, String)>> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let lf = rest.find('\n');
        let crlf = match line_end {
            LineEnd::CrLf => rest.find("\r\n"),
            LineEnd::Lf => None,
        };
        match (crlf, lf) {
            (Some(c), Some(l)) if c < l => {
                lines.push(&rest[..c]);
                rest = &rest[c + 2..];
            }
            (_, Some(l)) => {
                lines.push(&rest[..l]);
                rest = &rest[l + 1..];
            }
            (_, None) => {
                lines.push(rest);
                rest = "";
            }
        }
    }
    let newline = match line_end {
        LineEnd::Lf => "\n",
        LineEnd::CrLf => "\r\n",
    };
    let mut vars = Vec::new();
    let mut lines = lines.into_iter();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let equals = line.find('=');
        let heredoc = line.find("<<");
        match (equals, heredoc) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                anyhow::ensure!(e > 0, "invalid format {line:?}: the name is empty");
                vars.push((line[..e].to_string(), line[e + 1..].to_string()));
            }
            (_, Some(h)) => {
                let (name, delimiter) = (&line[..h], &line[h + 2..]);
                anyhow::ensure!(
                    !name.is_empty(),
                    "invalid format {line:?}: the name is empty"
                );
                anyhow::ensure!(
                    !delimiter.is_empty(),
                    "invalid format {line:?}: no delimiter"
                );
                let mut value = Vec::new();
                loop {
                    match lines.next() {
                        Some(l) if l == delimiter => break,
                        Some(l) => value.push(l),
                        None => anyhow::bail!("matching delimiter not found {delimiter:?}"),
                    }
                }
                vars.push((name.to_string(), value.join(newline)));
            }
            _ => anyhow::bail!("invalid format {line:?}"),
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests;
