//! `peercache fetch` beside Debian's `gh api` (2.23) for the same answers of the stand-in
//! GitHub: gh reaches it through its development host `github.localhost` with the stand-in as
//! its HTTP proxy (as tests/bench does), peercache directly. gh 2.23 has no `--slurp`; that
//! case is compared with what gh prints for each page, wrapped as newer gh's `--slurp` does.

mod common;

use std::process::Command;

use common::Sandbox;

const TOKEN: &str = "token-of-a-gh-job";

fn gh(sb: &Sandbox, args: &[&str]) -> Vec<u8> {
    let dir = sb.root.path().join("gh");
    let out = Command::new("gh")
        .arg("api")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("GH_HOST", "github.localhost")
        .env("GH_TOKEN", TOKEN)
        .env("HTTP_PROXY", sb.hub.url())
        .env("HTTPS_PROXY", sb.hub.url())
        .env("GH_NO_UPDATE_NOTIFIER", "1")
        .env("GH_PROMPT_DISABLED", "1")
        .output()
        .expect("Debian's gh (scripts/ensure-tools.sh installs it)");
    assert!(
        out.status.success(),
        "gh api {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fetch(sb: &Sandbox, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["fetch"];
    all.extend_from_slice(args);
    sb.run(Some(TOKEN), &all).ok().stdout
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn seed(sb: &Sandbox) {
    let repos: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "name": format!("repo-{i}"),
                "private": i % 2 == 0,
                "stars": i * 3,
                "ratio": i as f64 / 4.0,
                "description": if i == 3 { serde_json::Value::Null } else { format!("<b>repo</b> & {i}").into() },
                "owner": {"login": "octo", "id": 7, "avatar": "x"},
            })
        })
        .collect();
    sb.hub.put_list("/orgs/octo/repos", repos);
}

#[test]
fn fetch_prints_what_gh_api_prints() {
    let sb = Sandbox::new();
    seed(&sb);
    // Not compared: a fractional number printed on its own, which gh 2.23 rounds to two
    // decimals (0.5 → "0.50") and newer gh prints in full, as fetch does.
    for jq in [
        ".[].name",
        ".[0]",
        ".[].description",
        ".[] | .stars, .private",
        "map(.id) | add",
        ".[0].owner | keys",
        "[.[].ratio]",
    ] {
        assert_eq!(
            text(&fetch(&sb, &["orgs/octo/repos", "--jq", jq])),
            text(&gh(&sb, &["orgs/octo/repos", "--jq", jq])),
            "--jq {jq}"
        );
    }
    assert_eq!(
        text(&fetch(
            &sb,
            &["orgs/octo/repos", "-q", ".[].name", "-f", "per_page=5"]
        )),
        text(&gh(
            &sb,
            &[
                "-X",
                "GET",
                "orgs/octo/repos",
                "-q",
                ".[].name",
                "-f",
                "per_page=5"
            ]
        )),
        "-f per_page=5"
    );
    assert_eq!(
        fetch(
            &sb,
            &[
                "-X",
                "GET",
                "orgs/octo/repos",
                "-F",
                "per_page=5",
                "-F",
                "page=2"
            ]
        ),
        gh(
            &sb,
            &[
                "-X",
                "GET",
                "orgs/octo/repos",
                "-F",
                "per_page=5",
                "-F",
                "page=2"
            ]
        ),
        "-F per_page=5 -F page=2"
    );
    assert_eq!(
        fetch(&sb, &["orgs/octo/repos", "--cache", "1h"]),
        gh(&sb, &["orgs/octo/repos", "--cache", "1h"]),
        "--cache 1h"
    );
    assert_eq!(
        text(&fetch(
            &sb,
            &[
                "orgs/octo/repos",
                "--paginate",
                "-f",
                "per_page=5",
                "--jq",
                ".[].name"
            ]
        )),
        text(&gh(
            &sb,
            &[
                "-X",
                "GET",
                "orgs/octo/repos",
                "--paginate",
                "-f",
                "per_page=5",
                "--jq",
                ".[].name"
            ]
        )),
        "--paginate --jq"
    );
    // --paginate --slurp: the pages gh prints, as one array of pages.
    let pages: Vec<String> = (1..=3)
        .map(|page| {
            let page = format!("page={page}");
            text(&gh(
                &sb,
                &[
                    "-X",
                    "GET",
                    "orgs/octo/repos",
                    "-f",
                    "per_page=5",
                    "-f",
                    &page,
                ],
            ))
        })
        .collect();
    assert_eq!(
        text(&fetch(
            &sb,
            &[
                "orgs/octo/repos",
                "--paginate",
                "--slurp",
                "-f",
                "per_page=5"
            ]
        )),
        format!("[{}]", pages.join(","))
    );
    // --silent prints nothing and still succeeds.
    assert!(fetch(&sb, &["orgs/octo/repos", "--silent"]).is_empty());
}

#[test]
fn fetch_refuses_what_it_cannot_do_with_the_fix() {
    let sb = Sandbox::new();
    seed(&sb);
    let post = sb.run(None, &["fetch", "-X", "POST", "orgs/octo/repos"]);
    assert!(post.fails_with(2).contains("/gh"));
    let bad_jq = sb.run(None, &["fetch", "orgs/octo/repos", "--jq", ".["]);
    assert!(bad_jq.fails_with(2).contains("jq"));
    let bad_cache = sb.run(None, &["fetch", "orgs/octo/repos", "--cache", "soon"]);
    assert!(bad_cache.fails_with(2).contains("--cache"));
    let slurp_alone = sb.run(None, &["fetch", "orgs/octo/repos", "--slurp"]);
    assert_eq!(slurp_alone.code, 2);
    assert_eq!(sb.hub.total(), 0);
}
