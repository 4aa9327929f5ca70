//! Deterministic synthetic repositories for benchmarks.
//!
//! Benchmarks on different machines (and peers in one benchmark) must agree
//! on every byte, so nothing here depends on time or randomness.

use serde_json::json;

use crate::FakeHub;

/// The repository [`generate_resources`] puts its resources in.
pub const GENERATED_REPO: &str = "octo/swarm";

/// Puts `n` JSON resources `/repos/octo/swarm/contents/r{i}` (i from 0), each `size` bytes when
/// `size` allows, and the repository object `/repos/octo/swarm` they belong to (a token shows it
/// can see the repository with a conditional request for it).
pub fn generate_resources(hub: &FakeHub, n: usize, size: usize) {
    hub.put_json(&format!("/repos/{GENERATED_REPO}"), repo_body(n, 0));
    for i in 0..n {
        hub.put_json(&generated_path(i), repo_body(i, size));
    }
}

/// The path of the `i`-th resource of [`generate_resources`].
pub fn generated_path(i: usize) -> String {
    format!("/repos/{GENERATED_REPO}/contents/r{i}")
}

/// The body [`generate_resources`] stores for repository `i`: a repo-like
/// JSON object padded to exactly `size` bytes, or its bare size (~650 bytes) if larger.
pub fn repo_body(i: usize, size: usize) -> Vec<u8> {
    let mut doc = json!({
        "id": 100_000 + i,
        "node_id": format!("R_kgDO{i:08X}"),
        "name": format!("repo{i}"),
        "full_name": format!("octo/repo{i}"),
        "private": false,
        "owner": {
            "login": "octo",
            "id": 583_231,
            "type": "Organization",
            "site_admin": false,
            "url": "https://api.github.com/users/octo",
        },
        "html_url": format!("https://github.com/octo/repo{i}"),
        "description": format!("Synthetic repository number {i} for peercache benchmarks"),
        "fork": i.is_multiple_of(7),
        "url": format!("https://api.github.com/repos/octo/repo{i}"),
        "created_at": "2020-01-01T00:00:00Z",
        "updated_at": "2024-06-01T12:00:00Z",
        "stargazers_count": (i * 7919) % 5000,
        "forks_count": (i * 104_729) % 300,
        "language": "Rust",
        "topics": ["cache", "ci", format!("topic-{}", i % 10)],
        "license": { "key": "mit", "name": "MIT License", "spdx_id": "MIT" },
        "default_branch": "main",
        "padding": "",
    });
    let bare = serde_json::to_vec(&doc).unwrap_or_default().len();
    // Padding characters are alphanumeric, so they need no JSON escaping and
    // each adds exactly one byte: the result hits `size` exactly.
    doc["padding"] = json!(padding(i, size.saturating_sub(bare)));
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Pseudo-random (per repository) alphanumerics, so bodies do not compress
/// to nothing, which would flatter any compression on the transfer path.
fn padding(seed: usize, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    if state == 0 {
        // xorshift never leaves zero.
        state = 1;
    }
    (0..len)
        .map(|_| {
            // xorshift64*: tiny, deterministic and good enough for filler.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            char::from(ALPHABET[(r >> 32) as usize % ALPHABET.len()])
        })
        .collect()
}
