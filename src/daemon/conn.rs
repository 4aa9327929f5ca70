//! One connection to the local API.
//!
//! What clients send the API is almost only HTTP/1.1 `GET`s without a body, and a job asks
//! for the same things again and again. Those are read here: the head is parsed in place
//! (httparse, no allocation), and an answer kept for the same head ([`super::hot`]) is written
//! at once, its head as it was sent plus `date`, and its body as shared bytes, in one `writev`.
//! Any other `GET` goes to the router, and its answer is written here (and kept when the full
//! path says it may be).
//!
//! Anything else (a body, `HEAD`, another method, HTTP/1.0, `Expect`, `Upgrade`,
//! `Connection: close`, a head too large or malformed) hands the connection, with what it
//! already sent, to hyper for the rest of its life: hyper answers it exactly as it always has.
//!
//! Either way the server's limits hold: a head must arrive whole within the header timeout
//! (between keep-alive requests too), and a connection stops at the next request boundary once
//! the server drains.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::api::Api;
use super::hot::{self, Ticket};

/// Most bytes of a request head read here; a larger one is hyper's to refuse.
const MAX_HEAD: usize = 64 << 10;
/// Answers in a row on one connection before the thread's other connections get a turn.
const ANSWERS_BEFORE_YIELD: u32 = 16;
/// Answers on one connection between two checks of the CPU its client sends from.
const ANSWERS_BEFORE_PLACEMENT_CHECK: u32 = 64;
/// Most header lines read here; more are hyper's to handle.
const MAX_HEADERS: usize = 32;

/// What every connection of the API shares.
pub struct Shared {
    /// The API, for its kept answers.
    pub api: Arc<Api>,
    /// Everything that is not a kept answer.
    pub router: Router,
    /// hyper's settings, for the connections handed to it.
    pub http: hyper::server::conn::http1::Builder,
    /// Time a connection has to send a whole request head.
    pub header_timeout: Duration,
    /// Says when a connection's client sends from another worker's CPU; `None` when
    /// connections stay where they are.
    pub placement: Option<Arc<dyn Placement>>,
}

/// Which worker a connection belongs to (see `super::workers`).
pub trait Placement: Send + Sync {
    /// Whether the client of `socket` sends from a CPU another worker is for, which has room.
    fn belongs_elsewhere(&self, socket: &TcpStream) -> bool;
}

/// Serves one connection until it closes, fails, idles past the header timeout, or the server
/// drains (`stop` turns true), or its client has moved to another CPU (see [`Shared::placement`]).
/// `read` is what was already read from it; its first request head is timed from `since`.
pub async fn serve<S: Stream>(
    mut stream: S,
    shared: Arc<Shared>,
    watcher: Watcher,
    mut stop: watch::Receiver<bool>,
    since: tokio::time::Instant,
    read: Vec<u8>,
) -> Served<S> {
    let mut first_since = Some(since);
    let mut buf: Vec<u8> = read;
    buf.reserve(4096);
    let mut answered = 0u32;
    loop {
        // A client that sends its next request as soon as it has an answer finds this loop
        // ready again at once: every few answers, the thread's other connections go first, so
        // that one busy connection cannot hold the thread (hyper's own loop yields likewise).
        answered = answered.wrapping_add(1);
        if answered.is_multiple_of(ANSWERS_BEFORE_YIELD) {
            tokio::task::yield_now().await;
        }
        if answered.is_multiple_of(ANSWERS_BEFORE_PLACEMENT_CHECK)
            && let (Some(placement), Some(socket)) = (&shared.placement, stream.socket())
            && placement.belongs_elsewhere(socket)
        {
            return Served::Moves {
                stream,
                read: buf,
                watcher,
            };
        }
        let since = first_since.take().unwrap_or_else(tokio::time::Instant::now);
        let deadline = since + shared.header_timeout;
        let head = loop {
            match Head::parse(&buf) {
                Parsed::Complete(head) => break head,
                Parsed::Partial if buf.len() < MAX_HEAD => {}
                Parsed::Partial | Parsed::Other => {
                    hand_off(stream, buf, &shared, watcher).await;
                    return Served::Ended;
                }
            }
            if *stop.borrow() {
                return Served::Ended;
            }
            buf.reserve(4096);
            tokio::select! {
                read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => match read {
                    Ok(Ok(n)) if n > 0 => {}
                    // Closed, failed, or no whole head in time.
                    _ => return Served::Ended,
                },
                _ = stop.changed() => return Served::Ended,
            }
        };
        if !head.is_plain_get(&buf) {
            hand_off(stream, buf, &shared, watcher).await;
            return Served::Ended;
        }
        let fingerprint = hot::fingerprint(head.target(&buf), head.headers(&buf));
        let now = SystemTime::now();
        if let Some(fingerprint) = &fingerprint
            && let Some(kept) = shared.api.hot.answer(&shared.api, fingerprint, now)
        {
            buf.drain(..head.len);
            let date = date_line(now);
            let mut slices = [
                IoSlice::new(&kept.head),
                IoSlice::new(date.as_bytes()),
                IoSlice::new(b"\r\n"),
                IoSlice::new(kept.body()),
            ];
            if write_all_vectored(&mut stream, &mut slices).await.is_err() {
                return Served::Ended;
            }
            continue;
        }
        let Some(request) = head.to_request(&buf) else {
            hand_off(stream, buf, &shared, watcher).await;
            return Served::Ended;
        };
        buf.drain(..head.len);
        let Ok(mut response) = TowerToHyperService::new(shared.router.clone())
            .call(request)
            .await;
        let ticket = response.extensions_mut().remove::<Ticket>();
        if write_response(&mut stream, response, fingerprint.zip(ticket), &shared.api)
            .await
            .is_err()
        {
            return Served::Ended;
        }
    }
}

/// How serving a connection ended.
pub enum Served<S> {
    /// It closed, failed, timed out, went to hyper or drained.
    Ended,
    /// Its client sends from another CPU now, whose worker is to serve it: the stream, what was
    /// read from it and not answered yet, and its place in the drain.
    Moves {
        /// The connection.
        stream: S,
        /// Bytes read and not answered yet.
        read: Vec<u8>,
        /// Its place in the graceful drain.
        watcher: Watcher,
    },
}

/// What a connection runs over: a TCP stream here, an in-memory pipe in the fuzz target.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket under the stream, when there is one.
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl Stream for TcpStream {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Stream for tokio::io::DuplexStream {}

/// Where a request head ends and what it holds, as offsets into the read buffer.
struct Head {
    len: usize,
    get: bool,
    http11: bool,
    target: (u32, u32),
    /// Each header's name and value, as (start, end) offsets.
    headers: [[u32; 4]; MAX_HEADERS],
    count: usize,
}

// The head stays on the stack, once per request: boxing it would allocate for every request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Complete(Head),
    Partial,
    /// Not for this loop (malformed, too many headers): hyper's.
    Other,
}

impl Head {
    fn parse(buf: &[u8]) -> Parsed {
        if buf.is_empty() {
            return Parsed::Partial;
        }
        let mut lines =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(buf, &mut lines) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        // Offsets fit in u32: a head is read here only up to MAX_HEAD bytes (and a little more).
        let at = |part: &[u8]| {
            let start = part.as_ptr() as usize - buf.as_ptr() as usize;
            (start as u32, (start + part.len()) as u32)
        };
        let (Some(method), Some(path), Some(version)) =
            (request.method, request.path, request.version)
        else {
            return Parsed::Other;
        };
        let mut head = Head {
            len,
            get: method == "GET",
            http11: version == 1,
            target: at(path.as_bytes()),
            headers: [[0; 4]; MAX_HEADERS],
            count: request.headers.len(),
        };
        for (slot, line) in head.headers.iter_mut().zip(request.headers.iter()) {
            let (name, value) = (at(line.name.as_bytes()), at(line.value));
            *slot = [name.0, name.1, value.0, value.1];
        }
        Parsed::Complete(head)
    }

    fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.target.0 as usize..self.target.1 as usize]
    }

    fn headers<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone + 'a {
        self.headers[..self.count].iter().map(|&[n0, n1, v0, v1]| {
            (
                &buf[n0 as usize..n1 as usize],
                &buf[v0 as usize..v1 as usize],
            )
        })
    }

    /// An HTTP/1.1 `GET` by path, without a body, that keeps the connection open and asks for
    /// no upgrade or `100 Continue`: what this loop answers.
    fn is_plain_get(&self, buf: &[u8]) -> bool {
        self.get
            && self.http11
            && self.target(buf).starts_with(b"/")
            && self.headers(buf).all(|(name, value)| {
                let is = |other: &str| name.eq_ignore_ascii_case(other.as_bytes());
                if is("content-length") {
                    value == b"0"
                } else if is("connection") {
                    !mentions(value, b"close") && !mentions(value, b"upgrade")
                } else {
                    !(is("transfer-encoding") || is("expect") || is("upgrade"))
                }
            })
    }

    /// The request for the router; `None` when a part is not valid HTTP (hyper then answers).
    fn to_request(&self, buf: &[u8]) -> Option<Request<Body>> {
        let uri = Uri::try_from(self.target(buf)).ok()?;
        let mut headers = HeaderMap::with_capacity(self.count);
        for (name, value) in self.headers(buf) {
            headers.append(
                HeaderName::from_bytes(name).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            );
        }
        let mut request = Request::new(Body::empty());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// Whether `value` holds `word`, whatever its case.
fn mentions(value: &[u8], word: &[u8]) -> bool {
    value
        .windows(word.len())
        .any(|window| window.eq_ignore_ascii_case(word))
}

/// Writes the router's answer: its head (kept with `keep` when given), `date`, and its body,
/// framed by its length when known, else chunked. A body that fails midway ends the connection
/// without its last chunk, so the client never takes a cut body for a whole one.
async fn write_response(
    stream: &mut impl Stream,
    response: axum::response::Response,
    keep: Option<(hot::Fingerprint, Ticket)>,
    api: &Api,
) -> std::io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let length = if bodiless {
        Some(0)
    } else {
        axum::body::HttpBody::size_hint(&body).exact()
    };
    let head = Bytes::from(head_of(parts.status, &parts.headers, length, bodiless));
    if let Some((fingerprint, ticket)) = keep {
        api.hot.keep(fingerprint, head.clone(), ticket);
    }
    let date = date_line(SystemTime::now());
    let (first, rest_chunked) = match length {
        Some(_) if bodiless => (None, false),
        Some(_) => (next_data(&mut body).await?, false),
        None => (None, true),
    };
    let first = first.unwrap_or_default();
    let mut slices = [
        IoSlice::new(&head),
        IoSlice::new(date.as_bytes()),
        IoSlice::new(b"\r\n"),
        IoSlice::new(&first),
    ];
    write_all_vectored(stream, &mut slices).await?;
    if bodiless {
        return Ok(());
    }
    let mut sent = first.len() as u64;
    while let Some(data) = next_data(&mut body).await? {
        sent += data.len() as u64;
        if rest_chunked {
            let size = format!("{:x}\r\n", data.len());
            let mut slices = [
                IoSlice::new(size.as_bytes()),
                IoSlice::new(&data),
                IoSlice::new(b"\r\n"),
            ];
            write_all_vectored(stream, &mut slices).await?;
        } else {
            stream.write_all(&data).await?;
        }
    }
    match length {
        Some(expected) if expected != sent => Err(std::io::Error::other(
            "a body ended at another length than it announced",
        )),
        Some(_) => Ok(()),
        None => stream.write_all(b"0\r\n\r\n").await,
    }
}

/// The next data of a body (trailers are skipped), `None` at its end.
async fn next_data(body: &mut Body) -> std::io::Result<Option<Bytes>> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// A response head without `date` and the blank line: the status line, the headers (the
/// framing ones are this writer's own), and the framing.
fn head_of(
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
    bodiless: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == axum::http::header::CONTENT_LENGTH
            || name == axum::http::header::TRANSFER_ENCODING
            || name == axum::http::header::DATE
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match length {
        _ if bodiless => {}
        Some(length) => {
            head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
        }
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head
}

thread_local! {
    /// This thread's `date:` line and the second it names.
    static DATE: std::cell::RefCell<(u64, Arc<str>)> =
        std::cell::RefCell::new((u64::MAX, Arc::from("")));
}

/// `date: <IMF-fixdate>\r\n` for `now`, worked out once a second per thread.
fn date_line(now: SystemTime) -> Arc<str> {
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != second {
            *cell = (
                second,
                Arc::from(format!("date: {}\r\n", httpdate::fmt_http_date(now))),
            );
        }
        Arc::clone(&cell.1)
    })
}

/// Writes every slice, with as few calls as the socket allows.
async fn write_all_vectored(
    stream: &mut impl Stream,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Hands the connection, with the bytes already read from it, to hyper.
async fn hand_off<S: Stream>(stream: S, read: Vec<u8>, shared: &Shared, watcher: Watcher) {
    let io = TokioIo::new(Rewind {
        read,
        at: 0,
        stream,
    });
    let service = TowerToHyperService::new(shared.router.clone());
    let _ = watcher
        .watch(shared.http.serve_connection(io, service))
        .await;
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewind<S> {
    read: Vec<u8>,
    at: usize,
    stream: S,
}

impl<S: Stream> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.read.len() {
            let n = out.remaining().min(this.read.len() - this.at);
            out.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, out)
    }
}

impl<S: Stream> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
