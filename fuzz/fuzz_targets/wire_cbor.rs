//! The exchange protocol's messages as a stranger sends them: CBOR read by the very codec the
//! node uses (libp2p's request-response CBOR codec over peercache's `Request`/`Response`).
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec as _;
use libp2p::request_response::cbor::codec::Codec;
use peercache::p2p::protocol::{EXCHANGE_PROTOCOL, Request, Response};

fuzz_target!(|data: &[u8]| {
    let protocol = StreamProtocol::new(EXCHANGE_PROTOCOL);
    let mut codec = Codec::<Request, Response>::default();
    let _ = block_on(codec.read_request(&protocol, &mut Cursor::new(data)));
    let _ = block_on(codec.read_response(&protocol, &mut Cursor::new(data)));
});
