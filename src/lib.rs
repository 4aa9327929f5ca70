//! peercache: share cached GitHub API responses between CI runners.
//!
//! The crate is organised by concern: [`config`] resolves settings, [`cache`] stores responses
//! content-addressed on disk, [`github`] talks to the REST API, [`resolver`] walks the tiers
//! (local cache, upstream) for one request, and [`cmd`] holds one module per subcommand.

pub mod access;
pub mod actions;
pub mod alloc;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod error;
pub mod github;
pub mod jq;
pub mod logging;
pub mod memo;
pub mod p2p;
pub mod registry;
pub mod resolver;
pub mod secret;
