//! The local API's worker threads, and which one serves a connection.
//!
//! Each worker is a thread with a single-threaded runtime; a connection stays on one worker
//! from its first byte to its close, so its readiness, its handler and its answer never wake
//! another thread (on the daemon's shared multi-threaded runtime, those hand-offs cost hot hits
//! about a tenth of their throughput; docs/performance-hot-hits.md).
//!
//! When there is a worker for each CPU the daemon may run on, each is pinned to its CPU, and a
//! connection goes to the worker on the CPU its client sends from (`SO_INCOMING_CPU`: on
//! loopback, the CPU that ran the client's send). The client's request and the daemon's answer
//! then stay on one CPU, its caches warm, and neither side's wake-up crosses to the other CPU.
//! Under `wrk` on two cores this served ~140k–160k hot hits a second where any other placement
//! served ~90k–110k (docs/performance-hot-hits.md). A worker already serving more than its
//! share of the connections (by [`SLACK`]) is passed over for the least busy one, so that
//! clients that all connected from one CPU do not all land on one worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc::UnboundedSender;

/// A connection's work, run on the worker that serves it.
pub type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Connections a worker may serve beyond the least busy one's before it is passed over for
/// connections from its own CPU.
const SLACK: usize = 2;

/// The API's worker threads.
pub struct Workers {
    workers: Vec<Worker>,
    /// The next worker in turn when no CPU decides.
    next: AtomicUsize,
}

struct Worker {
    queue: UnboundedSender<Job>,
    /// The CPU this worker is pinned to, when it is.
    cpu: Option<usize>,
    /// Connections it serves now.
    live: Arc<AtomicUsize>,
}

/// Counts a connection as its worker's until dropped.
pub struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// One worker a core, at most four (the API serves one job's steps, not a fleet); each
    /// pinned to a CPU of its own when there are as many workers as CPUs allowed. The workers
    /// that cannot start are left out; with none, connections are served on the caller's
    /// runtime.
    pub fn start() -> Workers {
        let count = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let allowed = allowed_cpus();
        let pinned = allowed.len() == count;
        let mut workers = Vec::with_capacity(count);
        for n in 0..count {
            let cpu = allowed.get(n).copied().filter(|_| pinned);
            match start_one(n, workers.len(), cpu) {
                Ok(queue) => workers.push(Worker {
                    queue,
                    cpu,
                    live: Arc::new(AtomicUsize::new(0)),
                }),
                Err(e) => tracing::warn!("local API: worker {n} cannot start: {e}"),
            }
        }
        Workers {
            workers,
            next: AtomicUsize::new(0),
        }
    }

    /// Hands a connection whose client sends from `cpu` to a worker (see the module's doc),
    /// with `job` made for it.
    pub fn run(&self, cpu: Option<usize>, job: impl FnOnce(Serving) -> Job) {
        if self.workers.is_empty() {
            let serving = Serving(Arc::new(AtomicUsize::new(1)));
            tokio::spawn(job(serving));
            return;
        }
        let live = self.live();
        let cpus: Vec<Option<usize>> = self.workers.iter().map(|w| w.cpu).collect();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let worker = &self.workers[place(cpu, &cpus, &live, turn)];
        worker.live.fetch_add(1, Ordering::Relaxed);
        let job = job(Serving(Arc::clone(&worker.live)));
        if let Err(unsent) = worker.queue.send(job) {
            // That worker's thread is gone (it cannot panic: the binary aborts): serve here.
            tokio::spawn(unsent.0);
        }
    }
}

impl Workers {
    /// The connections each worker serves now.
    fn live(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.live.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether the workers are pinned to CPUs, so that connections go by their client's CPU.
    pub fn places_by_cpu(&self) -> bool {
        self.workers.iter().any(|w| w.cpu.is_some())
    }
}

impl super::conn::Placement for Workers {
    fn belongs_elsewhere(&self, socket: &tokio::net::TcpStream) -> bool {
        let Some(here) = WORKER.get() else {
            return false;
        };
        let Some(cpu) = incoming_cpu(socket) else {
            return false;
        };
        let live = self.live();
        let least = live.iter().copied().min().unwrap_or(0);
        // Strictly within the slack: with this connection, it is still within it.
        self.workers
            .iter()
            .position(|w| w.cpu == Some(cpu))
            .is_some_and(|there| there != here && live[there] < least + SLACK)
    }
}

thread_local! {
    /// The index of the worker this thread is, on a worker thread.
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The worker for a connection from `cpu`: the one pinned there unless it serves more than
/// [`SLACK`] connections beyond the least busy; otherwise the least busy, the first from
/// `turn` on among equals.
fn place(cpu: Option<usize>, cpus: &[Option<usize>], live: &[usize], turn: usize) -> usize {
    let least = live.iter().copied().min().unwrap_or(0);
    if let Some(at) = cpu.and_then(|cpu| cpus.iter().position(|&c| c == Some(cpu)))
        && live[at] <= least + SLACK
    {
        return at;
    }
    (0..live.len())
        .map(|i| (turn + i) % live.len())
        .find(|&i| live[i] == least)
        .unwrap_or(0)
}

/// Starts worker thread `n`, at `index` among those started.
fn start_one(n: usize, index: usize, cpu: Option<usize>) -> std::io::Result<UnboundedSender<Job>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (queue, mut jobs) = tokio::sync::mpsc::unbounded_channel::<Job>();
    std::thread::Builder::new()
        .name(format!("peercache-api-{n}"))
        .spawn(move || {
            WORKER.set(Some(index));
            if let Some(cpu) = cpu
                && let Err(e) = pin_to(cpu)
            {
                tracing::debug!("local API: worker {n} cannot be pinned to CPU {cpu}: {e}");
            }
            // Ends when the server drops its queues; the connections still open then are
            // dropped with the runtime.
            runtime.block_on(async move {
                while let Some(job) = jobs.recv().await {
                    tokio::spawn(job);
                }
            });
        })?;
    Ok(queue)
}

/// The CPU that handled the socket's last incoming packet (`SO_INCOMING_CPU`).
pub fn incoming_cpu(socket: &impl std::os::fd::AsRawFd) -> Option<usize> {
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cpu`, and `len` is its size.
    let ok = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&mut cpu as *mut libc::c_int).cast(),
            &mut len,
        )
    } == 0;
    usize::try_from(cpu).ok().filter(|_| ok)
}

/// The CPUs this process may run on, lowest first (none when they cannot be read).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most the size given into `set`.
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    if !ok {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads the set, and `cpu` is below its size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET writes within it (`cpu` comes from
    // `allowed_cpus`, below its size).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity only reads the set.
    match unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_worker_on_its_cpu_while_that_one_is_not_far_busier() {
        let cpus = [Some(0), Some(1)];
        assert_eq!(place(Some(1), &cpus, &[0, 0], 0), 1);
        assert_eq!(place(Some(0), &cpus, &[0, 0], 1), 0);
        // Within the slack of the least busy, it still goes to its CPU's worker.
        assert_eq!(place(Some(0), &cpus, &[2, 0], 1), 0);
        // Beyond it, to the least busy.
        assert_eq!(place(Some(0), &cpus, &[3, 0], 0), 1);
    }

    #[test]
    fn without_a_cpu_a_connection_goes_to_the_least_busy_worker_in_turn() {
        let unpinned = [None, None, None];
        assert_eq!(place(Some(0), &unpinned, &[1, 0, 0], 0), 1);
        assert_eq!(place(None, &unpinned, &[1, 0, 0], 1), 1);
        assert_eq!(place(None, &unpinned, &[1, 0, 0], 2), 2);
        assert_eq!(place(None, &unpinned, &[0, 0, 0], 4), 1);
        // A CPU no worker is pinned to decides nothing.
        assert_eq!(place(Some(7), &[Some(0), Some(1)], &[0, 1], 1), 0);
    }

    #[test]
    fn thirty_two_connections_from_one_cpu_are_spread_within_the_slack() {
        let cpus = [Some(0), Some(1)];
        let mut live = [0usize, 0];
        for turn in 0..32 {
            live[place(Some(0), &cpus, &live, turn)] += 1;
        }
        assert!(live[0] - live[1] <= SLACK + 1, "{live:?}");
        assert!(live[0] >= live[1], "{live:?}");
    }
}
