//! The exchange protocol's codec: libp2p's CBOR codec with a deadline on reading a request.
//!
//! request-response already bounds a whole inbound stream (read, answer, write) by its request
//! timeout, but it drops a stream whose request never finished without a word: nothing reaches
//! the event loop. A peer sending its request a byte a second (slowloris) would then hold
//! streams unseen. Requests are tiny (at most [`MAX_REQUEST_BYTES`]), so a request not read
//! within [`REQUEST_READ_TIMEOUT`] comes from a slow or stalled peer: its stream is closed and
//! a line says so.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{AsyncRead, AsyncWrite};
use libp2p::request_response::{self, cbor};

use super::*;

/// How long an inbound request may take to arrive once its stream is open.
pub(super) const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one line per this long about cut streams (a hostile peer must not flood the log).
const CUT_LOG_INTERVAL_MS: u64 = 10_000;

/// Streams cut since the last line, and when that line was written.
static CUT_SINCE_LINE: AtomicU64 = AtomicU64::new(0);
static LAST_LINE_MS: AtomicU64 = AtomicU64::new(0);

/// CBOR requests and responses, size-capped, with a deadline on each request's arrival.
#[derive(Clone)]
pub(super) struct ExchangeCodec {
    cbor: cbor::codec::Codec<Request, Response>,
}

impl ExchangeCodec {
    pub(super) fn new() -> Self {
        ExchangeCodec {
            cbor: cbor::codec::Codec::default()
                .set_request_size_maximum(MAX_REQUEST_BYTES)
                .set_response_size_maximum(MAX_RESPONSE_BYTES),
        }
    }
}

/// Counts a cut stream; says so at most once per [`CUT_LOG_INTERVAL_MS`].
fn note_cut_stream() {
    CUT_SINCE_LINE.fetch_add(1, Ordering::Relaxed);
    let now = now_ms();
    let last = LAST_LINE_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= CUT_LOG_INTERVAL_MS
        && LAST_LINE_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let cut = CUT_SINCE_LINE.swap(0, Ordering::Relaxed).max(1);
        tracing::info!(
            "closed {cut} exchange stream(s) whose request did not arrive within \
             {REQUEST_READ_TIMEOUT:?}: a slow or stalled peer (slowloris?); nothing waits on them"
        );
    }
}

impl request_response::Codec for ExchangeCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        match tokio::time::timeout(REQUEST_READ_TIMEOUT, self.cbor.read_request(protocol, io)).await
        {
            Ok(read) => read,
            Err(_) => {
                note_cut_stream();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request did not arrive in time",
                ))
            }
        }
    }

    async fn read_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.cbor.read_response(protocol, io).await
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        request: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.cbor.write_request(protocol, io, request).await
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        response: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.cbor.write_response(protocol, io, response).await
    }
}
