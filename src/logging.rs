//! Logging: `tracing` to stderr, filtered by `PEERCACHE_LOG` (`--log`, `RUST_LOG`); stdout belongs
//! to each command's output.
//!
//! Inside GitHub Actions (`GITHUB_ACTIONS=true`) two things are added:
//!
//! - every warning and error is also written as a workflow command, `::warning::…` or
//!   `::error::…`, so that it shows up as an annotation on the run; its text is escaped as the
//!   runner requires (`%` → `%25`, `\r` → `%0D`, `\n` → `%0A`), so a message cannot end the
//!   command early or start another;
//! - long phases (the daemon's startup) sit between `::group::TITLE` and `::endgroup::`, which
//!   the log viewer folds ([`group`]).
//!
//! Everywhere, a log line that spans several lines has its continuation lines indented, and no
//! line can carry a workflow command: the runner takes `##[…]` anywhere in a line and `::…::`
//! at the start of a trimmed line, and peer ids, runner names and other untrusted text end up in
//! messages, so both are defused in every line written ([`defuse`]; also for the few lines
//! printed outside `tracing`, such as the one-line errors and `status`).
//!
//! Tokens and the swarm secret never reach a log: they are held in [`crate::secret::Secret`],
//! whose `Debug` and `Display` print `<redacted>`.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Whether this process runs inside a GitHub Actions job.
pub fn in_actions() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// Installs the global subscriber: `filter` is an `EnvFilter` directive (`info`,
/// `peercache=debug`, …; an invalid one falls back to `info`); `with_time` for the daemon, whose
/// log is read later. Does nothing when a subscriber is already installed.
pub fn init(filter: &str, with_time: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(LineSafeStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let fmt = if with_time {
        fmt.boxed()
    } else {
        fmt.without_time().boxed()
    };
    let annotations = in_actions().then_some(Annotations);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(annotations)
        .try_init();
}

/// Escapes the data of a workflow command as GitHub's toolkit does (`escapeData`).
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// An open `::group::`; `::endgroup::` is written when it is dropped. Outside GitHub Actions it
/// writes nothing.
#[must_use = "the group ends when this is dropped"]
pub struct Group {
    open: bool,
}

/// Starts a folded group in the job's log (only inside GitHub Actions).
pub fn group(title: &str) -> Group {
    let open = in_actions();
    if open {
        write_stderr(format!("::group::{}\n", escape_data(title)).as_bytes());
    }
    Group { open }
}

impl Group {
    /// Ends the group now.
    pub fn end(self) {}
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.open {
            write_stderr(b"::endgroup::\n");
        }
    }
}

fn write_stderr(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes).and_then(|()| err.flush());
}

/// Makes one formatted event safe for a job's log: continuation lines are indented, a carriage
/// return shows as `\r`, and nothing in it can be taken for a workflow command (see [`defuse`]).
fn neutralize(text: &[u8]) -> Vec<u8> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() + 8);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\n    ");
        }
        let text = String::from_utf8_lossy(line);
        out.extend_from_slice(defuse_commands(text.replace('\r', "\\r")).as_bytes());
    }
    out.push(b'\n');
    out
}

/// Text chosen by someone else (a peer id from a registry, a runner name, a URL), made safe to
/// print on one line of a GitHub Actions log.
///
/// The runner takes `##[command]` anywhere in a line, and `::command::` at the start of a line
/// once it is trimmed: `##[` becomes `##\[`, a leading `::` becomes `\::`, and control
/// characters (line breaks among them, which would start a new line) are shown escaped.
pub fn defuse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    defuse_commands(out)
}

/// JSON text (of untrusted strings) that may be printed into a job's log: `##[` inside a string
/// becomes `#\u0023[`, the same JSON value. (No line of JSON starts with `::`, and `#` occurs
/// only inside strings.)
pub fn defuse_json(json: String) -> String {
    if json.contains("##[") {
        json.replace("##[", "#\\u0023[")
    } else {
        json
    }
}

/// One line with `##[` made `##\\[` and a leading `::` (after blanks) made `\\::`.
fn defuse_commands(line: String) -> String {
    let mut out = if line.contains("##[") {
        line.replace("##[", "##\\[")
    } else {
        line
    };
    let indent = out.len() - out.trim_start().len();
    if out[indent..].starts_with("::") {
        out.insert(indent, '\\');
    }
    out
}

/// stderr, one formatted event at a time (see [`neutralize`]).
struct LineSafeStderr;

impl<'a> MakeWriter<'a> for LineSafeStderr {
    type Writer = EventBuffer;

    fn make_writer(&'a self) -> EventBuffer {
        EventBuffer(Vec::new())
    }
}

/// Collects one event's text; written to stderr in one piece when dropped.
struct EventBuffer(Vec<u8>);

impl std::io::Write for EventBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuffer {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            write_stderr(&neutralize(&self.0));
        }
    }
}

/// Writes warnings and errors as workflow commands (annotations).
struct Annotations;

impl<S: Subscriber> Layer<S> for Annotations {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let command = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            _ => return,
        };
        let mut text = MessageText::default();
        event.record(&mut text);
        let line = format!(
            "::{command}::peercache: {}\n",
            escape_data(&text.0).replace("##[", "##\\[")
        );
        write_stderr(line.as_bytes());
    }
}

/// An event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_command_data_is_escaped_like_the_toolkit_does() {
        assert_eq!(escape_data("100% done"), "100%25 done");
        assert_eq!(
            escape_data("a\r\n::error::injected"),
            "a%0D%0A::error::injected"
        );
        assert_eq!(
            escape_data("%0A"),
            "%250A",
            "escapes are themselves escaped"
        );
    }

    #[test]
    fn continuation_lines_are_indented() {
        assert_eq!(neutralize(b"one line\n"), b"one line\n");
        assert_eq!(
            neutralize(b"peer joined (x\n::error::boom)\n"),
            b"peer joined (x\n    \\::error::boom)\n"
        );
        assert_eq!(neutralize(b"a\rb"), b"a\\rb\n");
    }

    #[test]
    fn nothing_untrusted_can_become_a_workflow_command() {
        assert_eq!(
            neutralize(b" WARN skipping peer ##[error]owned\n  ::warning::x\n"),
            b" WARN skipping peer ##\\[error]owned\n      \\::warning::x\n"
        );
        assert_eq!(defuse("::error::boom"), "\\::error::boom");
        assert_eq!(defuse("  ::set-output"), "  \\::set-output");
        assert_eq!(defuse("a::b"), "a::b");
        assert_eq!(defuse("x\n::error::y"), "x\\n::error::y");
        assert_eq!(defuse("x##[group]y"), "x##\\[group]y");
        assert_eq!(defuse("bell\u{7}"), "bell\\u{7}");
        let json = serde_json::json!({"runner_name": "##[error]x"}).to_string();
        let safe = defuse_json(json);
        assert!(!safe.contains("##["), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["runner_name"], "##[error]x", "the same value");
        for hostile in [
            "##[error]a",
            "::error::a",
            " \t::a",
            "a\n::b",
            "##[##[",
            "\u{85}::x",
        ] {
            let safe = defuse(hostile);
            assert!(!safe.contains("##["), "{safe}");
            assert!(!safe.trim_start().starts_with("::"), "{safe}");
            assert!(!safe.contains('\n') && !safe.contains('\r'), "{safe}");
        }
    }
}
