use std::collections::HashMap;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

fn load(flags: &Flags, pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
    Settings::load_from(flags, &env_of(pairs))
}

fn message(result: anyhow::Result<Settings>) -> String {
    let err = result.expect_err("expected an error");
    let user = err.downcast_ref::<UserError>().expect("a user error");
    assert_eq!(user.exit, crate::error::Exit::Usage);
    user.message.clone()
}

#[test]
fn defaults_follow_xdg() {
    let s = load(&Flags::default(), &[("HOME", "/home/u")]).unwrap();
    assert_eq!(s.home, PathBuf::from("/home/u/.local/state/peercache"));
    assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/peercache"));
    assert_eq!(s.api_url.as_str(), "https://api.github.com/");
    assert_eq!(s.ttl, Duration::from_secs(300));
    assert_eq!(s.port, Port::Auto);
    assert!(s.mdns && s.p2p);
    assert_eq!(s.log, "info");
    assert_eq!(s.max_size, 512 * 1024 * 1024);
    assert_eq!(s.registries[0].value, "dir:/home/u/.cache/peercache/peers");
    assert!(s.token.is_none());
}

#[test]
fn xdg_variables_and_actions_runner_temp() {
    let s = load(
        &Flags::default(),
        &[
            ("HOME", "/h"),
            ("XDG_STATE_HOME", "/state"),
            ("XDG_CACHE_HOME", "/xc"),
        ],
    )
    .unwrap();
    assert_eq!(s.home, PathBuf::from("/state/peercache"));
    assert_eq!(s.cache_dir, PathBuf::from("/xc/peercache"));
    let s = load(
        &Flags::default(),
        &[
            ("HOME", "/h"),
            ("GITHUB_ACTIONS", "true"),
            ("RUNNER_TEMP", "/rt"),
        ],
    )
    .unwrap();
    assert_eq!(s.home, PathBuf::from("/rt/peercache"));
}

#[test]
fn precedence_flag_env_legacy_file_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(FILE_NAME),
        "ttl: 40\nport: 9100\ncache_dir: /from-file\n",
    )
    .unwrap();
    let home = dir.path().to_str().unwrap();

    let s = load(&Flags::default(), &[("PEERCACHE_HOME", home)]).unwrap();
    assert_eq!(s.ttl, Duration::from_secs(40));
    assert_eq!(s.port, Port::Fixed(9100));
    assert_eq!(s.cache_dir, PathBuf::from("/from-file"));

    let s = load(
        &Flags::default(),
        &[
            ("PEERCACHE_HOME", home),
            ("CACHE_DEFAULT_TTL", "30"),
            ("CACHE_DIR", "/legacy"),
        ],
    )
    .unwrap();
    assert_eq!(s.ttl, Duration::from_secs(30));
    assert_eq!(s.cache_dir, PathBuf::from("/legacy"));

    let s = load(
        &Flags::default(),
        &[
            ("PEERCACHE_HOME", home),
            ("CACHE_DEFAULT_TTL", "30"),
            ("PEERCACHE_TTL", "20"),
            ("PEERCACHE_CACHE_DIR", "/new"),
        ],
    )
    .unwrap();
    assert_eq!(s.ttl, Duration::from_secs(20));
    assert_eq!(s.cache_dir, PathBuf::from("/new"));

    let flags = Flags {
        ttl: Some("10".into()),
        cache_dir: Some("/flag".into()),
        ..Flags::default()
    };
    let s = load(&flags, &[("PEERCACHE_HOME", home), ("PEERCACHE_TTL", "20")]).unwrap();
    assert_eq!(s.ttl, Duration::from_secs(10));
    assert_eq!(s.cache_dir, PathBuf::from("/flag"));
}

#[test]
fn legacy_aliases_are_accepted() {
    let s = load(
        &Flags::default(),
        &[
            ("HOME", "/h"),
            ("IPFS_ACCELERATE_CACHE_DIR", "/ipfs"),
            ("GITHUB_API_URL", "https://ghe.example/api/v3/"),
            ("GITHUB_TOKEN", "t1"),
            ("P2P_LISTEN_PORT", "9001"),
            (
                "P2P_BOOTSTRAP_PEERS",
                "/ip4/10.0.0.1/tcp/9000/p2p/A, /ip4/10.0.0.2/tcp/9000/p2p/B",
            ),
            ("CACHE_ENABLE_P2P", "false"),
        ],
    )
    .unwrap();
    assert_eq!(s.cache_dir, PathBuf::from("/ipfs"));
    assert_eq!(s.api_url.as_str(), "https://ghe.example/api/v3");
    assert_eq!(s.token.as_ref().unwrap().expose(), "t1");
    assert_eq!(s.port, Port::Fixed(9001));
    assert_eq!(s.bootstrap_peers.len(), 2);
    assert_eq!(s.bootstrap_peers[1].value, "/ip4/10.0.0.2/tcp/9000/p2p/B");
    assert!(!s.p2p);
}

#[test]
fn token_chain_and_empty_values() {
    let s = load(
        &Flags::default(),
        &[
            ("HOME", "/h"),
            ("GITHUB_TOKEN", "c"),
            ("GH_TOKEN", "b"),
            ("PEERCACHE_TOKEN", ""),
        ],
    )
    .unwrap();
    assert_eq!(s.token.unwrap().expose(), "b");
}

const STRONG: &str = "Xo3kP9vR2mT7qL5wZ8nB1yC4";
const PAT: &str = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";

#[test]
fn secret_rules() {
    let secret = |pairs: &[(&str, &str)]| {
        let mut all = vec![("HOME", "/h")];
        all.extend_from_slice(pairs);
        load(&Flags::default(), &all).unwrap().secret
    };
    assert!(matches!(
        secret(&[("PEERCACHE_SECRET", STRONG)]),
        SwarmSecret::Set { .. }
    ));
    assert!(matches!(
        secret(&[("CACHE_P2P_SHARED_SECRET", STRONG)]),
        SwarmSecret::Set { .. }
    ));
    // A long-lived token serves only when asked to, and the reason says how.
    match secret(&[("GH_TOKEN", PAT)]) {
        SwarmSecret::Missing { reason } => {
            assert!(
                reason.contains("PEERCACHE_SECRET_FROM_TOKEN=true"),
                "{reason}"
            )
        }
        other => panic!("a ghp_ token must not silently be the secret: {other:?}"),
    }
    assert!(matches!(
        secret(&[("GH_TOKEN", PAT), ("PEERCACHE_SECRET_FROM_TOKEN", "true")]),
        SwarmSecret::Set { .. }
    ));
    assert!(matches!(
        secret(&[
            (
                "GITHUB_TOKEN",
                "github_pat_11ABCDEFG0aBcDeFgHiJkL_mNoPqRsTuVwXyZ0123456789"
            ),
            ("PEERCACHE_SECRET_FROM_TOKEN", "1"),
        ]),
        SwarmSecret::Set { .. }
    ));
    match secret(&[
        ("GITHUB_TOKEN", "ghs_jobtoken"),
        ("PEERCACHE_SECRET_FROM_TOKEN", "true"),
    ]) {
        SwarmSecret::Missing { reason } => assert!(reason.contains("job token"), "{reason}"),
        other => panic!("a ghs_ token must never be the secret: {other:?}"),
    }
    assert!(matches!(secret(&[]), SwarmSecret::Missing { .. }));
}

#[test]
fn weak_secrets_are_refused_with_the_fix() {
    for (name, value) in [
        ("PEERCACHE_SECRET", "s3cret"),
        ("CACHE_P2P_SHARED_SECRET", "swarm-secret"),
        (
            "PEERCACHE_SECRET",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ),
    ] {
        let err = load(&Flags::default(), &[("HOME", "/h"), (name, value)]).unwrap_err();
        let user = err.downcast_ref::<UserError>().expect("a user error");
        assert_eq!(user.exit as u8, 2);
        assert!(
            user.message.contains(name) && user.message.contains("peercache secret"),
            "{}",
            user.message
        );
        assert!(
            !user.message.contains(value),
            "the secret is not echoed: {}",
            user.message
        );
    }
    let err = load(
        &Flags::default(),
        &[
            ("HOME", "/h"),
            ("GH_TOKEN", "ghp_x"),
            ("PEERCACHE_SECRET_FROM_TOKEN", "yes"),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("PEERCACHE_SECRET"), "{err}");
}

#[test]
fn bad_values_name_the_setting() {
    let flags = Flags {
        ttl: Some("abc".into()),
        ..Flags::default()
    };
    let m = message(load(&flags, &[("HOME", "/h")]));
    assert!(m.contains("--ttl") && m.contains("whole number"), "{m}");

    let m = message(load(
        &Flags::default(),
        &[("HOME", "/h"), ("PEERCACHE_PORT", "70000")],
    ));
    assert!(m.contains("PEERCACHE_PORT") && m.contains("65535"), "{m}");

    let m = message(load(
        &Flags::default(),
        &[("HOME", "/h"), ("PEERCACHE_API_URL", "ftp://x")],
    ));
    assert!(
        m.contains("PEERCACHE_API_URL") && m.contains("https://api.github.com"),
        "{m}"
    );

    let m = message(load(
        &Flags::default(),
        &[("HOME", "/h"), ("PEERCACHE_MAX_SIZE", "lots")],
    ));
    assert!(m.contains("PEERCACHE_MAX_SIZE"), "{m}");

    let m = message(load(
        &Flags::default(),
        &[("HOME", "/h"), ("PEERCACHE_MDNS", "maybe")],
    ));
    assert!(
        m.contains("PEERCACHE_MDNS") && m.contains("true or false"),
        "{m}"
    );
}

#[test]
fn malformed_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), "ttl: [unclosed\n").unwrap();
    let m = message(load(
        &Flags::default(),
        &[
            ("HOME", "/h"),
            ("PEERCACHE_HOME", dir.path().to_str().unwrap()),
        ],
    ));
    assert!(m.contains(FILE_NAME) && m.contains("fix or remove"), "{m}");
    assert!(!m.contains('\n'));

    std::fs::write(dir.path().join(FILE_NAME), "token: ghp_secret\n").unwrap();
    let m = message(load(
        &Flags::default(),
        &[
            ("HOME", "/h"),
            ("PEERCACHE_HOME", dir.path().to_str().unwrap()),
        ],
    ));
    assert!(m.contains("token") && !m.contains("ghp_secret"), "{m}");

    std::fs::write(dir.path().join(FILE_NAME), "ttl: nope\n").unwrap();
    let m = message(load(
        &Flags::default(),
        &[
            ("HOME", "/h"),
            ("PEERCACHE_HOME", dir.path().to_str().unwrap()),
        ],
    ));
    assert!(m.contains("'ttl' in") && m.contains("whole number"), "{m}");
}

#[test]
fn sizes() {
    let raw = |v: &str| Raw {
        value: v.into(),
        origin: Origin::Env("PEERCACHE_MAX_SIZE"),
    };
    assert_eq!(parse_size(&raw("1024")).unwrap(), 1024);
    assert_eq!(parse_size(&raw("512MiB")).unwrap(), 512 << 20);
    assert_eq!(parse_size(&raw("2G")).unwrap(), 2 << 30);
    assert_eq!(parse_size(&raw("64 kb")).unwrap(), 64 << 10);
    assert!(parse_size(&raw("0")).is_err());
    assert!(parse_size(&raw("99999999999999999999T")).is_err());
}

#[test]
fn max_entry_defaults_under_the_wire_limit_and_refuses_more() {
    let s = load(&Flags::default(), &[("HOME", "/h")]).unwrap();
    assert_eq!(s.max_entry, 16 * 1024 * 1024);
    let s = load(
        &Flags::default(),
        &[("HOME", "/h"), ("PEERCACHE_MAX_ENTRY", "32MiB")],
    )
    .unwrap();
    assert_eq!(s.max_entry, super::MAX_ENTRY_LIMIT);
    let m = message(load(
        &Flags::default(),
        &[("HOME", "/h"), ("PEERCACHE_MAX_ENTRY", "33554433")],
    ));
    assert!(
        m.contains("PEERCACHE_MAX_ENTRY") && m.contains("at most 32MiB"),
        "{m}"
    );
    let file = FileSettings::parse("max_entry: 2MiB\n").unwrap();
    assert_eq!(file.get("max_entry").as_deref(), Some("2MiB"));
}
