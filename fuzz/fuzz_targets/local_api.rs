//! A request on the daemon's local API port, as any process on the host may send it: the
//! daemon's own connection loop (`src/daemon/conn.rs`: its head parser, its kept answers, its
//! writer, and the hand-off to hyper's HTTP/1.1 for anything but a plain GET) with a short
//! header-read timeout, then the capability check and every route of `src/daemon/api.rs` (and
//! `/gh`'s endpoint handling), over an in-memory pipe. Upstream is a stand-in on loopback that
//! answers 404 at once.
//!
//! Checked: no panic, and nothing but an error answer without the capability (a stranger must
//! learn nothing from the port). `@CAP@` in an input stands for the capability, so the fuzzer
//! reaches the routes behind it.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use peercache::daemon::{api, conn, gh, hot, metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAPABILITY: &str = "0123456789abcdef0123456789abcdef";
const PLACEHOLDER: &[u8] = b"@CAP@";

struct World {
    runtime: tokio::runtime::Runtime,
    shared: Arc<conn::Shared>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let shared = runtime.block_on(async {
            // The stand-in upstream: answers every request 404 at once, as GitHub does for what
            // it does not know.
            let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let upstream_url: url::Url = format!("http://{}/", upstream.local_addr().unwrap())
                .parse()
                .unwrap();
            tokio::spawn(async move {
                while let Ok((socket, _)) = upstream.accept().await {
                    let not_found = hyper::service::service_fn(|_| async {
                        hyper::Response::builder()
                            .status(404)
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(socket), not_found),
                    );
                }
            });
            let cache = peercache::cache::Cache::open(&dir.path().join("cache"), 1 << 20).unwrap();
            let github = peercache::github::GitHub::new().unwrap();
            let resolver =
                peercache::resolver::Resolver::new(cache.clone(), github.clone(), &upstream_url);
            let api = Arc::new(api::Api {
                capability: CAPABILITY.into(),
                origin: "http://127.0.0.1:1".into(),
                upstream: upstream_url,
                resolver,
                github,
                cache,
                default_token: None,
                default_ttl: Duration::from_secs(60),
                peers: None,
                sharing_reason: Some("fuzzing".into()),
                scope: "fuzz".into(),
                peer_id: "fuzz".into(),
                observer: metrics::Observer::new(),
                limit_figures: gh::LimitFigures::default(),
                bases: api::Bases::new("http://127.0.0.1:1", CAPABILITY),
                sent: gh::SentBodies::default(),
                hot: hot::HotAnswers::default(),
                libp2p_registry: Default::default(),
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(200))
                .keep_alive(true);
            Arc::new(conn::Shared {
                router: api::router(Arc::clone(&api)),
                api,
                http,
                header_timeout: Duration::from_millis(200),
                placement: None,
            })
        });
        World {
            runtime,
            shared,
            _dir: dir,
        }
    })
}

/// `data` with every placeholder replaced by the capability.
fn with_capability(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    let mut rest = data;
    while !rest.is_empty() {
        if rest.starts_with(PLACEHOLDER) {
            out.extend_from_slice(CAPABILITY.as_bytes());
            rest = &rest[PLACEHOLDER.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let request = with_capability(data);
    let authorised = request
        .windows(CAPABILITY.len())
        .any(|w| w == CAPABILITY.as_bytes());
    let answer = world.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let (_stop, drain_seen) = tokio::sync::watch::channel(false);
        let connection = conn::serve(
            server,
            Arc::clone(&world.shared),
            graceful.watcher(),
            drain_seen,
            tokio::time::Instant::now(),
            Vec::new(),
        );
        let exchange = async {
            let _ = client.write_all(&request).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let (_, answer) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(connection, exchange)
        })
        .await
        .expect("the connection ends within 5 s of its input");
        answer
    });
    if !authorised {
        for status in [&b"HTTP/1.1 2"[..], b"HTTP/1.1 3"] {
            assert!(
                !answer.windows(status.len()).any(|w| w == status),
                "answered without the capability: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
});
