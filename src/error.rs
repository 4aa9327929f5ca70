//! Errors that reach the user, with the exit code each one maps to.
//!
//! The contract fixes the exit codes: 0 for a 2xx answer, 1 for an HTTP error status, 2 for bad
//! usage or configuration, 3 when the upstream cannot be reached and nothing is cached.
//! Anything that is not a [`UserError`] is unexpected and exits 1.

use std::fmt;

/// The process exit codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A 2xx answer was printed.
    Ok = 0,
    /// The API answered with an error status (the body is still printed).
    Http = 1,
    /// Bad usage or configuration.
    Usage = 2,
    /// The upstream could not be reached (or may not be called yet) and nothing is cached.
    Unreachable = 3,
}

/// An error whose one-line message is meant for the user, with the exit code it maps to.
#[derive(Debug)]
pub struct UserError {
    /// The exit code the process ends with.
    pub exit: Exit,
    /// One line: what is wrong and how to fix it.
    pub message: String,
}

impl UserError {
    /// Bad usage or configuration (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        UserError {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    /// Upstream unreachable and nothing cached (exit 3).
    pub fn unreachable(message: impl Into<String>) -> Self {
        UserError {
            exit: Exit::Unreachable,
            message: message.into(),
        }
    }

    /// An HTTP error status (exit 1).
    pub fn http(message: impl Into<String>) -> Self {
        UserError {
            exit: Exit::Http,
            message: message.into(),
        }
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// Shorthand for returning a usage error from a function that returns `anyhow::Result`.
pub fn usage<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(UserError::usage(message).into())
}
