//! The local API's accept loop: HTTP/1.1 on loopback with a connection limit and a
//! header-read timeout, drained gracefully on shutdown. Accepted connections are served by a
//! few threads of their own, each with a single-threaded runtime ([`super::workers`]); each
//! connection's requests are read by [`super::conn`], which answers plain `GET`s itself and hands
//! anything else to hyper.
//!
//! axum's own `serve` has neither limit, so 1,100 idle connections used to exhaust the file
//! descriptors and starve authorised requests. Here a connection past the limit gets a 503 and
//! is closed at once, and a connection that does not send a complete request head within
//! [`Limits::header_timeout`] (also between keep-alive requests) is closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::Served;
use super::workers::{Workers, incoming_cpu};

/// The answer to a connection past the limit, written without waiting.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 61\r\n\r\n{\"message\":\"the peercache daemon is at its connection limit\"}";

/// The server's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a connection has to send a whole request head.
    pub header_timeout: Duration,
}

impl Limits {
    /// The daemon's limits: `PEERCACHE_API_MAX_CONNECTIONS` (default 512) connections, but
    /// never more than a quarter of the file descriptors (libp2p and the cache need the rest),
    /// and 5 s for a request head.
    pub fn from_env() -> Limits {
        let wanted = std::env::var("PEERCACHE_API_MAX_CONNECTIONS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(512);
        let fds = open_files_limit().unwrap_or(1024);
        Limits {
            max_connections: wanted.min((fds / 4).max(16) as usize),
            header_timeout: Duration::from_secs(5),
        }
    }
}

/// The soft `RLIMIT_NOFILE`.
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    ok.then_some(limit.rlim_cur)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a daemon with many peers and clients
/// needs more than the usual 1,024); returns the new soft limit.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above; setrlimit only reads the struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Some(limit.rlim_cur);
            }
            return Some(raised.rlim_cur);
        }
    }
    Some(limit.rlim_cur)
}

/// Serves `router` (and the kept answers of `api`) on `listener` until `stop` resolves, then
/// drains open connections: each stops at its next request boundary.
pub async fn serve(
    listener: TcpListener,
    api: Arc<super::api::Api>,
    router: axum::Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let workers = Arc::new(Workers::start());
    let shared = Arc::new(super::conn::Shared {
        api,
        router,
        http,
        header_timeout: limits.header_timeout,
        placement: workers
            .places_by_cpu()
            .then(|| Arc::clone(&workers) as Arc<dyn super::conn::Placement>),
    });
    let (draining, drain_seen) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (or a connection reset before accept): wait a little
                // instead of spinning.
                tracing::debug!("local API: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(
                "local API: {} connections open; refused one more",
                limits.max_connections
            );
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            shared: Arc::clone(&shared),
            watcher: graceful.watcher(),
            drain_seen: drain_seen.clone(),
            permit,
        };
        let workers = Arc::clone(&workers);
        let accepted_at = tokio::time::Instant::now();
        tokio::spawn(async move {
            // The worker is chosen once the first bytes are in: the CPU that sent them is the
            // one the client runs on now (at accept, only its handshake had come, from
            // wherever it connected). The header timeout runs from the accept.
            let mut drain_seen = connection.drain_seen.clone();
            let first = tokio::select! {
                first = tokio::time::timeout_at(
                    accepted_at + connection.shared.header_timeout,
                    stream.readable(),
                ) => first,
                _ = drain_seen.changed() => return,
            };
            if matches!(first, Ok(Ok(()))) {
                let cpu = incoming_cpu(&stream);
                hand_to_worker(&workers, stream, cpu, Vec::new(), accepted_at, connection);
            }
        });
    }
    drop(listener);
    let _ = draining.send(true);
    // The caller bounds the drain (and aborts this task when it takes too long): connections
    // handed to hyper finish their request, the others stop at their next request boundary,
    // and every connection gives its permit back as it ends.
    graceful.shutdown().await;
    let _ = permits.acquire_many(limits.max_connections as u32).await;
    drop(workers);
}

/// What goes with a connection from worker to worker.
struct Connection {
    shared: Arc<super::conn::Shared>,
    watcher: Watcher,
    drain_seen: tokio::sync::watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
}

/// Hands `stream` (with `read`, the bytes read from it and not answered yet) to the worker for
/// `cpu`, its client's, and serves it there until it ends or moves on again.
fn hand_to_worker(
    workers: &Arc<Workers>,
    stream: tokio::net::TcpStream,
    cpu: Option<usize>,
    read: Vec<u8>,
    since: tokio::time::Instant,
    connection: Connection,
) {
    let Ok(stream) = stream.into_std() else {
        return;
    };
    let next = Arc::clone(workers);
    workers.run(cpu, move |serving| {
        Box::pin(async move {
            // Registered with the worker's own reactor (this runs there): its readiness wakes
            // that thread alone.
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            let Connection {
                shared,
                watcher,
                drain_seen,
                permit,
            } = connection;
            let served = super::conn::serve(
                stream,
                Arc::clone(&shared),
                watcher,
                drain_seen.clone(),
                since,
                read,
            )
            .await;
            drop(serving);
            if let Served::Moves {
                stream,
                read,
                watcher,
            } = served
            {
                let connection = Connection {
                    shared,
                    watcher,
                    drain_seen,
                    permit,
                };
                let cpu = incoming_cpu(&stream);
                if let Some(cpu) = cpu {
                    tracing::debug!(
                        "local API: a connection moved to the worker on CPU {cpu}, where its client sends from now"
                    );
                }
                let since = tokio::time::Instant::now();
                hand_to_worker(&next, stream, cpu, read, since, connection);
            }
        })
    });
}

/// Answers a connection past the limit with a 503 and closes it. What the client already sent
/// is read (briefly, a little) first: closing a socket with unread data would reset it, and the
/// client would never see the 503 and its `retry-after`.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left = 16usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => left -= 1,
            }
        }
    })
    .await;
}
