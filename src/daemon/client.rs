//! A tiny HTTP/1.1 client for the local API, over a plain `TcpStream`.
//!
//! `fetch` talks to a daemon on loopback; building a TLS-capable client and an async runtime
//! for that would cost more than the whole local hit. One request per connection
//! (`Connection: close`), the answer read to the end, then parsed.
//!
//! A request may legitimately wait a long time (the daemon may be waiting for GitHub), so a
//! wedged or flooded daemon cannot be told from a slow answer by the answer itself. Each
//! request is therefore pipelined behind a `GET /api/ping` that a live daemon answers at once:
//! no 204 within [`FIRST_BYTE_TIMEOUT`] and the caller gives up on the daemon (and `fetch`
//! uses the cache directly), at the cost of no extra round trip.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An answer of the local API.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (first of that name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request to the daemon got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (the daemon is gone, or the port is wrong).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The API's address.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// The connection broke, timed out, or the answer was not HTTP.
    #[error("{0}")]
    Broken(String),
}

/// A base URL of the local API split into what a request needs.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` for the `Host` header and the connection.
    pub authority: String,
    /// The path prefix (`/<capability>`), without a trailing slash.
    pub prefix: String,
}

impl Endpoint {
    /// Splits `http://HOST:PORT/PREFIX`; only plain `http` on an IP address is accepted.
    pub fn parse(base: &str) -> Option<Endpoint> {
        let rest = base.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        authority.parse::<SocketAddr>().ok()?;
        Some(Endpoint {
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// Sends `GET <prefix><path>` with these headers and reads the whole answer.
pub fn get(
    endpoint: &Endpoint,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, ClientError> {
    send(endpoint, "GET", path, headers, None, timeout)
}

/// Sends `POST <prefix><path>` with a JSON body and reads the whole answer.
pub fn post_json(
    endpoint: &Endpoint,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, ClientError> {
    send(
        endpoint,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body),
        timeout,
    )
}

/// How long a connection to the daemon may take (loopback: a live daemon accepts at once).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the daemon may take to answer the liveness check ahead of each request.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);

fn send(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let addr = endpoint
        .authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ClientError::Broken(format!("bad address {}", endpoint.authority)))?;
    let connect = |source| ClientError::Connect {
        addr: endpoint.authority.clone(),
        source,
    };
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(connect)?;
    let broken = |e: io::Error| ClientError::Broken(format!("talking to the daemon: {e}"));
    stream
        .set_read_timeout(Some(FIRST_BYTE_TIMEOUT.min(timeout)))
        .map_err(broken)?;
    stream.set_write_timeout(Some(timeout)).map_err(broken)?;
    let _ = stream.set_nodelay(true);

    let mut request = format!(
        "GET {}/api/ping HTTP/1.1\r\nHost: {}\r\n\r\n",
        endpoint.prefix, endpoint.authority
    );
    request.push_str(&format!(
        "{method} {}{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: {}\r\n",
        endpoint.prefix,
        path,
        endpoint.authority,
        crate::github::USER_AGENT_VALUE
    ));
    for (name, value) in headers {
        if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            return Err(ClientError::Broken(format!(
                "header {name:?} cannot be sent"
            )));
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).map_err(broken)?;

    let mut raw = Vec::with_capacity(16 * 1024);
    let answer_start = read_ping_answer(&mut stream, &mut raw)?;
    stream.set_read_timeout(Some(timeout)).map_err(broken)?;
    stream.read_to_end(&mut raw).map_err(broken)?;
    parse_response(&raw[answer_start..]).map_err(ClientError::Broken)
}

/// Reads the answer to the liveness check into `raw` (and whatever follows it) and returns
/// where the real answer starts.
fn read_ping_answer(stream: &mut TcpStream, raw: &mut Vec<u8>) -> Result<usize, ClientError> {
    let deadline = std::time::Instant::now() + FIRST_BYTE_TIMEOUT;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]);
            if !head.starts_with("HTTP/1.1 204") {
                let status = head.lines().next().unwrap_or_default().to_string();
                return Err(ClientError::Broken(format!(
                    "the daemon did not pass the liveness check ({status}): is serve.json current?"
                )));
            }
            return Ok(end + 4);
        }
        if std::time::Instant::now() >= deadline || raw.len() > 64 * 1024 {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(ClientError::Broken(
                    "the daemon closed the connection without answering".into(),
                ));
            }
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Broken(format!("talking to the daemon: {e}"))),
        }
    }
    Err(ClientError::Broken(format!(
        "the daemon accepted the connection but did not answer within {} s",
        FIRST_BYTE_TIMEOUT.as_secs()
    )))
}

/// Parses a whole HTTP/1.1 answer: status line, headers, and a body framed by
/// `Content-Length`, `Transfer-Encoding: chunked`, or the end of the connection.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("the daemon's answer has no header end")?;
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| "the daemon's answer has non-UTF-8 headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let rest = &raw[head_end + 4..];
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = value("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad content-length {length:?}"))?;
        if rest.len() < length {
            return Err(format!(
                "the answer was cut off ({} of {length} bytes)",
                rest.len()
            ));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("cut-off chunk header")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk header")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        // A hostile size such as ffffffffffffffff must not overflow `size + 2`.
        if size.checked_add(2).is_none_or(|need| data.len() < need) {
            return Err("the answer was cut off inside a chunk".into());
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err("a chunk does not end where its size says".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_chunk_sizes_are_errors_not_panics() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nab"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffe\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn parses_length_framed_and_chunked_answers() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}extra";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, b"{}");

        let raw = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"abcde");

        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8080/abc").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.prefix, "/abc");
        let e = Endpoint::parse("http://[::1]:9/").unwrap();
        assert_eq!(e.prefix, "");
        assert!(Endpoint::parse("https://127.0.0.1:1/x").is_none());
        assert!(Endpoint::parse("http://localhost:1/x").is_none());
    }
}
