//! `$PEERCACHE_HOME/peercache.yml`: YAML into the settings file, then every key read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercache::config::{ALLOWED_KEYS, FileSettings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = FileSettings::parse(text) {
        for key in ALLOWED_KEYS {
            let _ = file.get(key);
        }
    }
});
