//! How many FUSE workers wait on `/dev/fuse` at a time.
//!
//! fuser starts `--threads` workers, each blocked in `read` on its clone of `/dev/fuse`.
//! The kernel hands a request to the reader that has waited longest, so with 16 readers a
//! single synchronous writer is served by a different, cold thread each time (measured
//! 1.7–1.9x slower than with two readers). This pool keeps only a few workers reading:
//!
//! - a worker that takes a request and finds no other worker reading wakes a parked one,
//!   so requests in flight never wait for a reader while fewer than the maximum serve;
//! - a worker that finishes a request while at least [`MAX_IDLE`] others are reading, and
//!   the pool has not had to grow for [`Pool::shrink_after`], parks (it is then in no
//!   kernel queue) instead of reading again.
//!
//! A single writer is thus served by two workers; a queue of 16 grows the pool to 16 and
//! keeps it there while it lasts. Parking is done in the guard's drop, after the
//! request's reply has been sent, so it never delays an answer.
//!
//! Parked workers must leave when the mount goes away (fuser joins every worker before
//! its session ends): each parked worker looks at the device every [`CHECK_EVERY`] and
//! goes back to `read` (which then fails with ENODEV) once the connection is gone.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// A finishing worker parks when at least this many others are reading.
pub const MAX_IDLE: usize = 2;

/// How often a parked worker checks whether the connection still exists.
pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The default time without growth before workers park again.
pub const SHRINK_AFTER: Duration = Duration::from_millis(100);

/// Whether the connection is still there; `false` sends every parked worker back.
type Alive = Box<dyn Fn() -> bool + Send + Sync>;

/// Sizes the set of workers reading `/dev/fuse`; see the module docs.
pub struct Pool {
    /// Workers not parked (reading or serving).
    active: AtomicUsize,
    /// Workers serving a request (between [`Pool::serve`] and the guard's drop).
    busy: AtomicUsize,
    state: Mutex<State>,
    wake: Condvar,
    shrink_after: Duration,
    alive: OnceLock<Alive>,
}

struct State {
    parked: usize,
    /// Wake-ups granted to parked workers and not yet taken.
    tickets: usize,
    last_grow: Instant,
    closed: bool,
    /// The most workers ever active at once (for tests and `status`).
    peak_active: usize,
}

impl Pool {
    /// A pool of `workers` workers (all reading at first), which park again once the pool
    /// has not grown for `shrink_after`.
    pub fn new(workers: usize, shrink_after: Duration) -> Pool {
        let workers = workers.max(1);
        Pool {
            active: AtomicUsize::new(workers),
            busy: AtomicUsize::new(0),
            state: Mutex::new(State {
                parked: 0,
                tickets: 0,
                last_grow: Instant::now(),
                closed: false,
                peak_active: workers,
            }),
            wake: Condvar::new(),
            shrink_after,
            alive: OnceLock::new(),
        }
    }

    /// Watches the FUSE device (a duplicate of the session's descriptor): parked workers
    /// leave once polling it reports an error (the connection is gone).
    pub fn watch_device(&self, dev: OwnedFd) {
        self.watch(Box::new(move || {
            let mut fds = [rustix::event::PollFd::from_borrowed_fd(
                std::os::fd::AsFd::as_fd(&dev),
                rustix::event::PollFlags::empty(),
            )];
            match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
                Ok(_) => !fds[0]
                    .revents()
                    .intersects(rustix::event::PollFlags::ERR | rustix::event::PollFlags::HUP),
                Err(rustix::io::Errno::INTR) => true,
                Err(_) => false,
            }
        }));
    }

    /// Sets the liveness check (once; later calls are ignored).
    pub fn watch(&self, alive: Alive) {
        let _ = self.alive.set(alive);
    }

    /// Sends every parked worker back and parks none from now on.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Called by a worker that has taken a request; the returned guard's drop ends it.
    pub fn serve(&self) -> Serving<'_> {
        let busy = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
        if self.active.load(Ordering::SeqCst) <= busy {
            self.grow();
        }
        Serving {
            pool: self,
            counted: std::cell::Cell::new(true),
        }
    }

    /// Wakes one parked worker, if any, since no worker is left reading.
    fn grow(&self) {
        let mut st = self.lock();
        if st.parked > st.tickets {
            st.tickets += 1;
            st.last_grow = Instant::now();
            let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            st.peak_active = st.peak_active.max(active);
            drop(st);
            self.wake.notify_one();
        }
    }

    fn done(&self) {
        let busy = self.busy.load(Ordering::SeqCst);
        let others_reading = self
            .active
            .load(Ordering::SeqCst)
            .saturating_sub(busy)
            .saturating_sub(1);
        if others_reading >= MAX_IDLE {
            self.maybe_park();
        }
    }

    fn maybe_park(&self) {
        let mut st = self.lock();
        if st.closed || st.last_grow.elapsed() < self.shrink_after {
            return;
        }
        // Re-checked under the lock: grows happen under it too.
        let busy = self.busy.load(Ordering::SeqCst);
        let active = self.active.load(Ordering::SeqCst);
        if active.saturating_sub(busy).saturating_sub(1) < MAX_IDLE {
            return;
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        st.parked += 1;
        loop {
            if st.tickets > 0 {
                // `grow` already counted this worker as active again.
                st.tickets -= 1;
                st.parked -= 1;
                return;
            }
            if st.closed {
                st.parked -= 1;
                self.active.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let (next, timeout) = match self.wake.wait_timeout(st, CHECK_EVERY) {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            st = next;
            if timeout.timed_out() && st.tickets == 0 && !st.closed {
                let alive = self.alive.get().is_none_or(|alive| alive());
                if !alive {
                    st.closed = true;
                    self.wake.notify_all();
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (no update spans one).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Workers not parked.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Workers parked now.
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// The most workers active at once since the start.
    pub fn peak_active(&self) -> usize {
        self.lock().peak_active
    }

    /// Time without growth before workers park.
    pub fn shrink_after(&self) -> Duration {
        self.shrink_after
    }
}

/// A request being served; dropping it (after the reply) may park the worker.
pub struct Serving<'a> {
    pool: &'a Pool,
    /// Still counted in [`Pool::busy`].
    counted: std::cell::Cell<bool>,
}

impl Serving<'_> {
    /// Called just before the reply is sent: the worker counts as reading again. The
    /// writer answered may send its next request before this worker is back from the
    /// callback; still counted busy, it would make the pool grow for nothing (one
    /// writer then kept every worker awake).
    pub fn replying(&self) {
        if self.counted.replace(false) {
            self.pool.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.replying();
        self.pool.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::{mpsc, Arc};

    type Job = Box<dyn FnOnce() + Send>;
    /// The switch that releases blocked jobs.
    type Gate = Arc<(Mutex<bool>, Condvar)>;

    /// Stands in for fuser: `n` workers take jobs from one queue (the kernel's) and serve
    /// each inside the pool's guard.
    struct Fake {
        pool: Arc<Pool>,
        tx: Option<mpsc::Sender<Job>>,
        exited: mpsc::Receiver<()>,
        n: usize,
    }

    impl Fake {
        fn new(n: usize) -> Fake {
            let pool = Arc::new(Pool::new(n, Duration::ZERO));
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let (exit_tx, exited) = mpsc::channel();
            for _ in 0..n {
                let (pool, rx, exit_tx) = (pool.clone(), rx.clone(), exit_tx.clone());
                std::thread::spawn(move || {
                    loop {
                        let job = match rx.lock().unwrap().recv() {
                            Ok(job) => job,
                            Err(_) => break,
                        };
                        let _serving = pool.serve();
                        job();
                    }
                    let _ = exit_tx.send(());
                });
            }
            Fake {
                pool,
                tx: Some(tx),
                exited,
                n,
            }
        }

        fn run(&self, job: Job) {
            self.tx.as_ref().unwrap().send(job).unwrap();
        }

        /// A single synchronous writer, until the pool has shrunk to `MAX_IDLE` workers
        /// (a worker finishing while the next job is being served does not park, so it
        /// may take a few more jobs than workers).
        fn settle(&self) {
            for _ in 0..1000 {
                if self.pool.active() == MAX_IDLE {
                    break;
                }
                self.sequential(1);
            }
        }

        /// One job at a time, `k` times: a single synchronous writer.
        fn sequential(&self, k: usize) {
            for _ in 0..k {
                let (done_tx, done_rx) = mpsc::channel();
                self.run(Box::new(move || done_tx.send(()).unwrap()));
                done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            }
        }

        /// Starts `k` jobs that block until released; returns how many started (waiting
        /// generously for `expect` of them, briefly for more), and the release switch.
        fn blocked(&self, k: usize, expect: usize) -> (usize, Gate, mpsc::Receiver<()>) {
            let gate = Arc::new((Mutex::new(false), Condvar::new()));
            let (started_tx, started_rx) = mpsc::channel();
            let (finished_tx, finished_rx) = mpsc::channel();
            for _ in 0..k {
                let (gate, started_tx, finished_tx) =
                    (gate.clone(), started_tx.clone(), finished_tx.clone());
                self.run(Box::new(move || {
                    let _ = started_tx.send(());
                    let (lock, cv) = &*gate;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                    let _ = finished_tx.send(());
                }));
            }
            let mut started = 0;
            while started < expect && started_rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                started += 1;
            }
            // Any beyond `expect` would come at once; wait a little for more, to show a
            // pool that serves more than it may.
            while started < k && started_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                started += 1;
            }
            (started, gate, finished_rx)
        }

        fn shutdown(mut self) -> usize {
            self.tx = None;
            let mut exited = 0;
            while exited < self.n && self.exited.recv_timeout(Duration::from_secs(10)).is_ok() {
                exited += 1;
            }
            exited
        }
    }

    fn release(gate: &(Mutex<bool>, Condvar)) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    #[test]
    fn a_single_writer_leaves_two_workers_reading() {
        let fake = Fake::new(8);
        fake.settle();
        fake.sequential(50);
        // One reader serving, one waiting; one more for a moment when the next job is
        // taken before the last worker has counted itself done.
        assert!(
            fake.pool.active() <= MAX_IDLE + 1,
            "{} active",
            fake.pool.active()
        );
        assert!(fake.pool.parked() >= 8 - MAX_IDLE - 1);
        fake.pool.close();
        assert_eq!(fake.shutdown(), 8);
    }

    #[test]
    fn the_pool_grows_to_serve_every_blocked_request() {
        let fake = Fake::new(8);
        fake.settle();
        assert_eq!(fake.pool.active(), MAX_IDLE);
        let (started, gate, finished) = fake.blocked(6, 6);
        assert_eq!(started, 6, "parked workers were woken for blocked requests");
        release(&gate);
        for _ in 0..6 {
            finished.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        fake.pool.close();
        assert_eq!(fake.shutdown(), 8);
    }

    #[test]
    fn the_pool_never_exceeds_its_workers() {
        let fake = Fake::new(4);
        fake.settle();
        let (started, gate, finished) = fake.blocked(6, 4);
        assert_eq!(started, 4, "no more than the maximum serve at once");
        assert!(fake.pool.peak_active() <= 4);
        release(&gate);
        for _ in 0..6 {
            finished.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        fake.pool.close();
        assert_eq!(fake.shutdown(), 4);
    }

    #[test]
    fn parked_workers_leave_when_the_connection_goes() {
        let fake = Fake::new(8);
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        fake.pool
            .watch(Box::new(move || flag.load(Ordering::SeqCst)));
        fake.settle();
        assert!(fake.pool.parked() >= 8 - MAX_IDLE - 1);
        // A worker still serving when the connection goes (unmount with a busy worker).
        let (started, gate, finished) = fake.blocked(1, 1);
        assert_eq!(started, 1);
        alive.store(false, Ordering::SeqCst);
        release(&gate);
        finished.recv_timeout(Duration::from_secs(10)).unwrap();
        // No close(): the liveness check alone must bring every parked worker back.
        let pool = fake.pool.clone();
        assert_eq!(fake.shutdown(), 8, "every worker left");
        assert_eq!(pool.parked(), 0);
    }
}
