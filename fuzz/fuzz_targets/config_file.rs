//! `$PEERCACHE_HOME/peercache.yml`: YAML into the settings file, then every key read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercache::config::FileSettings;

const KEYS: &[&str] = &[
    "cache_dir",
    "api_url",
    "port",
    "bootstrap_peers",
    "ttl",
    "registry",
    "mdns",
    "p2p",
    "log",
    "max_size",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = FileSettings::parse(text) {
        for key in KEYS {
            let _ = file.get(key);
        }
    }
});
