//! An HTTP answer on the loopback socket `fetch` and `status` talk to the daemon over (a hostile
//! local process may listen there): status line, headers, content-length and chunked bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = peercache::daemon::client::parse_response(data) {
        let _ = response.header("content-type");
    }
});
