//! What users and servers hand the URL layer: a `fetch` endpoint, a `Link` header (its
//! `rel="next"` target is followed by `--paginate` and the registries), a registry spec, and the
//! daemon's base URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercache::config::{Origin, Raw};
use url::Url;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Url::parse("https://api.github.com").unwrap();
    let ghes = Url::parse("https://ghe.example/api/v3").unwrap();
    for base in [&base, &ghes] {
        if let Ok(url) = peercache::github::endpoint_url(base, text, Some("octo/hello")) {
            assert!(
                peercache::github::on_api_host(base, &url),
                "{url} is off {base}"
            );
        }
    }
    if let Some(next) = peercache::github::next_link(text)
        && let Ok(next) = Url::parse(&next)
    {
        let _ = peercache::github::on_api_host(&base, &next);
    }
    let _ = peercache::registry::parse_specs(&[Raw {
        value: text.to_string(),
        origin: Origin::Env("PEERCACHE_REGISTRY"),
    }]);
    let _ = peercache::daemon::client::Endpoint::parse(text);
});
