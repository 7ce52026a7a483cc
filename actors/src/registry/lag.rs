//! The server's own lag: how late the event loops that run sessions are.
//!
//! Sessions (their actors, pipeline stages and processors) run on the HTTP worker thread
//! that accepted them, one cooperative event loop per worker. When a worker has more work
//! than time, everything on it waits its turn: every session of that worker gets its
//! events late, by about as much as the loop is behind. So the figure that predicts
//! whether one more session would hurt the sessions already admitted is each worker's
//! *scheduling delay*: a small ticker on every worker asks to be woken every
//! [`TICK`] and records how late it actually woke.
//!
//! Measuring the loop rather than, say, the age of the oldest queued chunk covers every
//! cause at once (a slow processor, a flood of connects, a CPU the host took away) and
//! costs nothing per chunk. It does not see a pipeline that is behind because a client
//! sends faster than real time on an idle loop; that is backpressure's job, not
//! admission's.
//!
//! Contract:
//! - A worker reports the **largest lateness over the last [`WINDOW`]** (about 1 s of
//!   ticks), so one punctual tick in the middle of an overload does not reopen admission
//!   for a moment, and the figure falls back only once a whole window was calm.
//! - A worker whose ticker has not run for longer than its period is late by at least the
//!   overdue time, and is read as such: a loop blocked outright (a processor stuck in
//!   `process`) shows its lag while it is blocked, not only once it wakes.
//! - The server's lag is the **maximum over workers**.
//! - Lock-free: each worker writes its own slot of two atomics once per tick; a read (once
//!   per admission, `/ready`, `/metrics`) is a pass over `workers` slots.
//!
//! # Load: what the lag does not see
//!
//! A saturated loop is not late to its timers: tokio polls timers between bounded batches
//! of tasks, so the ticker stays within a few ms while the sessions fall seconds behind,
//! their audio waiting unread in the kernel's socket buffers (measured: 740 real-time
//! sessions admitted on two cores, lag under 30 ms, events 430 ms late). So the ticker also
//! reads its thread's scheduler statistics (`/proc/thread-self/schedstat`: time on a CPU
//! and time runnable but waiting for one) and reports the worker's **load**: the share of
//! the last [`WINDOW`] the thread was running or wanted to run. Near 100 % the worker has no
//! spare time and its sessions' backlog grows; waiting time counts, so a CPU taken by
//! another process on the host shows too. Linux only: elsewhere the load reads 0.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often each worker's ticker asks to be woken.
pub const TICK: Duration = Duration::from_millis(50);
/// How far back a worker's figure looks: the largest lateness of this many last ticks.
pub const WINDOW: Duration = Duration::from_secs(1);
const WINDOW_TICKS: usize = (WINDOW.as_millis() / TICK.as_millis()) as usize;

/// One worker's figures, written only by that worker's ticker.
#[derive(Default)]
struct Slot {
    /// Held by a running ticker; a free slot reads as no lag.
    claimed: AtomicBool,
    /// When the ticker last woke, µs since the monitor's epoch.
    last_tick_us: AtomicU64,
    /// The largest lateness over the last [`WINDOW`], µs.
    window_max_us: AtomicU64,
    /// The worker's load over the last [`WINDOW`], per mille (see the module docs).
    window_load_permille: AtomicU64,
}

/// Per-worker event-loop lag, shared by the workers (writers) and the registry, `/ready`
/// and `/metrics` (readers). See the module docs.
pub struct LagMonitor {
    /// Distinguishes monitors on a thread that has seen several (servers in one process).
    id: u64,
    epoch: Instant,
    slots: Box<[Slot]>,
}

thread_local! {
    /// Ids of the monitors this thread already runs a ticker for.
    static TICKING: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl LagMonitor {
    /// A monitor with room for `workers` tickers. Twice as many slots as workers are kept,
    /// so a worker thread replaced after a crash finds a free one even before the old
    /// ticker has released its slot.
    pub fn new(workers: usize) -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let slots = (0..workers.max(1) * 2).map(|_| Slot::default()).collect();
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Relaxed),
            epoch: Instant::now(),
            slots,
        })
    }

    /// A monitor no ticker writes to: its lag is always zero (a registry built without one).
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            id: 0,
            epoch: Instant::now(),
            slots: Box::new([]),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The server's lag now: the largest over workers of the worst lateness in the last
    /// [`WINDOW`], or of how overdue a ticker is if it has not run since.
    pub fn lag(&self) -> Duration {
        let now = self.now_us();
        let period = TICK.as_micros() as u64;
        let worst = self
            .slots
            .iter()
            .filter(|s| s.claimed.load(Relaxed))
            .map(|s| {
                let overdue = now
                    .saturating_sub(s.last_tick_us.load(Relaxed))
                    .saturating_sub(period);
                s.window_max_us.load(Relaxed).max(overdue)
            })
            .max()
            .unwrap_or(0);
        Duration::from_micros(worst)
    }

    /// The most loaded worker's share of the last [`WINDOW`] spent running or waiting to
    /// run, per mille (1000 = never idle). 0 where the scheduler statistics are not readable.
    pub fn load_permille(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.claimed.load(Relaxed))
            .map(|s| s.window_load_permille.load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Starts this thread's ticker for this monitor on the current actix arbiter, unless
    /// one already runs here; returns whether one runs now. Call it from code that runs on
    /// every worker thread (the HTTP server's app factory); calling it again is cheap.
    pub fn tick_on_this_thread(self: &Arc<Self>) -> bool {
        let already = TICKING.with(|t| t.borrow().contains(&self.id));
        if already {
            return true;
        }
        let Some(arbiter) = actix::Arbiter::try_current() else {
            return false;
        };
        let Some(lease) = self.claim() else {
            tracing::warn!("no free lag slot for this worker; its lag is not measured");
            return false;
        };
        if !arbiter.spawn(ticker(lease)) {
            return false;
        }
        TICKING.with(|t| t.borrow_mut().push(self.id));
        true
    }

    fn claim(self: &Arc<Self>) -> Option<Lease> {
        let index = self.slots.iter().position(|s| {
            s.claimed
                .compare_exchange(false, true, Relaxed, Relaxed)
                .is_ok()
        })?;
        let slot = &self.slots[index];
        slot.window_max_us.store(0, Relaxed);
        slot.window_load_permille.store(0, Relaxed);
        slot.last_tick_us.store(self.now_us(), Relaxed);
        Some(Lease {
            monitor: self.clone(),
            index,
        })
    }
}

#[cfg(test)]
impl LagMonitor {
    /// Makes the monitor report `lag` (a worker that keeps ticking, that late) until the
    /// returned hold is dropped.
    pub(crate) fn hold_lag(self: &Arc<Self>, lag: Duration) -> impl Drop {
        let lease = self.claim().expect("a free slot");
        let slot = lease.slot();
        // Never overdue, however slowly the test runs.
        slot.last_tick_us.store(u64::MAX, Relaxed);
        slot.window_max_us
            .store(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX), Relaxed);
        lease
    }
}

/// A ticker's hold on its slot; dropping it (the worker stopped) frees the slot, so a
/// worker that is gone is not read as one that is blocked.
struct Lease {
    monitor: Arc<LagMonitor>,
    index: usize,
}

impl Lease {
    fn slot(&self) -> &Slot {
        &self.monitor.slots[self.index]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let slot = self.slot();
        slot.window_max_us.store(0, Relaxed);
        slot.window_load_permille.store(0, Relaxed);
        slot.claimed.store(false, Relaxed);
    }
}

/// The scheduler statistics of the thread that opened it, kept open: each reading is one
/// `pread`, not an open, read and close every tick.
struct ThreadDemand(Option<std::fs::File>);

impl ThreadDemand {
    /// Opens this thread's statistics (`/proc/thread-self` names the opening thread).
    fn of_this_thread() -> Self {
        Self(std::fs::File::open("/proc/thread-self/schedstat").ok())
    }

    /// The thread's time on a CPU plus time runnable and waiting for one since it started,
    /// ns; `None` where the file is not readable.
    fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.0.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let running = fields.next()?.ok()?;
        let waiting = fields.next()?.ok()?;
        Some(running.saturating_add(waiting))
    }
}

/// Share of the wall time between two `(wall µs, demand ns)` samples the thread was running
/// or waiting to run, per mille.
fn load_between(old: (u64, u64), new: (u64, u64)) -> u64 {
    let wall_us = new.0.saturating_sub(old.0);
    if wall_us == 0 {
        return 0;
    }
    new.1.saturating_sub(old.1) / wall_us
}

/// Wakes every [`TICK`] and publishes the largest lateness of the last [`WINDOW_TICKS`]
/// wake-ups. The next wake-up is planned from when this one happened, so one long stall
/// counts once rather than as a burst of catch-up ticks.
async fn ticker(lease: Lease) {
    let mut recent = [0u64; WINDOW_TICKS];
    // (wall µs, demand ns) at each of the last ticks; the oldest is a window ago.
    let stats = ThreadDemand::of_this_thread();
    let start = (lease.monitor.now_us(), stats.read());
    let mut demand = [start; WINDOW_TICKS];
    let mut next = 0;
    let mut due = tokio::time::Instant::now() + TICK;
    loop {
        tokio::time::sleep_until(due).await;
        let woke = tokio::time::Instant::now();
        let late =
            u64::try_from(woke.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
        recent[next] = late;
        let now = (lease.monitor.now_us(), stats.read());
        let oldest = demand[(next + 1) % WINDOW_TICKS];
        demand[next] = now;
        next = (next + 1) % WINDOW_TICKS;
        let slot = lease.slot();
        if let ((w0, Some(d0)), (w1, Some(d1))) = (oldest, now) {
            slot.window_load_permille
                .store(load_between((w0, d0), (w1, d1)), Relaxed);
        }
        slot.window_max_us
            .store(recent.iter().copied().max().unwrap_or(0), Relaxed);
        slot.last_tick_us.store(lease.monitor.now_us(), Relaxed);
        due = woke + TICK;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_workers_no_lag() {
        assert_eq!(LagMonitor::disabled().lag(), Duration::ZERO);
        assert_eq!(LagMonitor::new(2).lag(), Duration::ZERO);
    }

    #[test]
    fn an_overdue_ticker_counts_as_lag_and_a_released_slot_does_not() {
        let monitor = LagMonitor::new(1);
        let lease = monitor.claim().expect("a free slot");
        // Its last tick was long ago: the worker is read as blocked since.
        lease.slot().last_tick_us.store(0, Relaxed);
        let blocked_for = Duration::from_millis(200);
        while monitor.now_us() < (blocked_for + TICK).as_micros() as u64 {
            std::thread::yield_now();
        }
        assert!(monitor.lag() >= blocked_for, "{:?}", monitor.lag());
        drop(lease);
        assert_eq!(monitor.lag(), Duration::ZERO);
    }

    /// A thread spinning for 300 ms reads as fully loaded over that span; the load is
    /// per mille of wall time.
    #[test]
    fn a_busy_thread_reads_as_loaded() {
        let stats = ThreadDemand::of_this_thread();
        let Some(before) = stats.read() else {
            return; // Not Linux: documented to read 0.
        };
        let wall = Instant::now();
        while wall.elapsed() < Duration::from_millis(300) {
            std::hint::spin_loop();
        }
        let after = stats.read().expect("readable");
        let wall_us = wall.elapsed().as_micros() as u64;
        let load = load_between((0, before), (wall_us, after));
        assert!(load >= 900, "{load}");
        assert_eq!(load_between((5, 0), (5, 1_000)), 0, "no time passed");
    }

    #[test]
    fn the_worst_worker_is_the_server_lag() {
        let monitor = LagMonitor::new(2);
        let a = monitor.claim().expect("slot");
        let b = monitor.claim().expect("slot");
        a.slot().window_max_us.store(3_000, Relaxed);
        b.slot().window_max_us.store(40_000, Relaxed);
        let lag = monitor.lag();
        assert!(lag >= Duration::from_millis(40), "{lag:?}");
    }

    /// Waits (bounded) until the ticker of slot 0 has run after `since` (µs).
    async fn ticked_after(monitor: &LagMonitor, since: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = monitor.slots[0].last_tick_us.load(Relaxed);
            if last > since {
                return last;
            }
            assert!(Instant::now() < deadline, "the ticker never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix::test]
    async fn a_blocked_loop_is_measured_by_its_ticker() {
        let monitor = LagMonitor::new(1);
        assert!(monitor.tick_on_this_thread());
        assert!(monitor.tick_on_this_thread(), "second call is a no-op");
        let ticked = ticked_after(&monitor, monitor.slots[0].last_tick_us.load(Relaxed)).await;
        // Block this thread, the ticker's only one, well past a tick.
        std::thread::sleep(Duration::from_millis(300));
        // While blocked: overdue by at least 300 - 50 ms.
        assert!(
            monitor.lag() >= Duration::from_millis(250),
            "{:?}",
            monitor.lag()
        );
        // Once it ran again, its window holds the late wake-up.
        ticked_after(&monitor, ticked).await;
        assert!(
            monitor.lag() >= Duration::from_millis(250),
            "{:?}",
            monitor.lag()
        );
    }
}
