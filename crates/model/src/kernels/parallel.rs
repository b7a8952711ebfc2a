//! The one compute pool the decode kernels share with candle.
//!
//! candle runs its element-wise ops and quantized matmuls on a persistent
//! pool of its own (`candle_core::utils::barrier_pool`: worker threads that
//! spin briefly between calls, then park). Were our kernels on a second pool
//! (rayon's), the two would take turns waking each other's threads, and a
//! worker spinning in one would steal a core from the other: on a 2-core
//! machine that halves the speed of whatever runs next. So the decode
//! kernels run on candle's pool too: during a decode step every parallel
//! op is on the same threads, which stay hot from one op to the next.
//! Its size is `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the
//! number of physical cores ([`set_threads`] sets both).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Threads of the pool, the calling thread included (read once, as candle
/// reads them once when it starts the pool).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(threads_from_env)
}

/// Fixes the size of both compute pools, candle's and rayon's (candle's
/// GEMM for prefill runs on rayon), to `requested` threads, or else to the
/// default: sets `CANDLE_NUM_THREADS` and `RAYON_NUM_THREADS`, which the
/// pools read when they start. Call it before any compute thread exists
/// (at the start of `main`). Setting them also matters when the default is
/// wanted: without `RAYON_NUM_THREADS`, candle looks up the core count in
/// `/proc/cpuinfo` on every f32 matmul. Returns the size.
pub fn set_threads(requested: Option<usize>) -> usize {
    let n = requested
        .filter(|&n| n > 0)
        .unwrap_or_else(threads_from_env);
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    n
}

fn threads_from_env() -> usize {
    let from_env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
    };
    from_env("CANDLE_NUM_THREADS")
        .or_else(|| from_env("RAYON_NUM_THREADS"))
        .unwrap_or_else(candle_core::utils::get_num_threads)
}

/// Calls `f` on disjoint ranges covering `0..items`, in parallel on the
/// pool (the calling thread takes part). Each thread takes, in turn, a
/// range of a quarter (on two threads) of the items still left, so the
/// last ranges are single items and the threads finish together. candle's
/// `execute_chunked` takes fixed ranges of an eighth of a thread's share,
/// and a decode step's ~57 calls each ended with one thread waiting out
/// the other's last range (measurements in `crates/model/benches/README.md`).
///
/// A nested call, from inside `f`, runs inline (see [`team`]).
pub(crate) fn for_ranges(items: usize, f: impl Fn(Range<usize>) + Sync) {
    if items == 0 {
        return;
    }
    team(|member| member.share(items, &f));
}

/// [`for_ranges`] where `parallel`, else `f(0..items)` on the calling
/// thread: for work that callers running on threads of their own (not the
/// pool's) also do, where calling the pool from those threads would only
/// crowd the cores.
pub(crate) fn for_ranges_if(parallel: bool, items: usize, f: impl Fn(Range<usize>) + Sync) {
    if parallel {
        for_ranges(items, f);
    } else {
        f(0..items);
    }
}

/// Most [`Member::share`] calls one [`team`] call may make.
const SHARES: usize = 8;

/// One [`team`] call's threads.
struct Team {
    threads: usize,
    /// Threads at the barrier now, and how many barriers have opened.
    arrived: AtomicUsize,
    opened: AtomicUsize,
    /// Each share's next unclaimed item.
    cursors: [AtomicUsize; SHARES],
    /// Set when a thread's closure panics: the others leave the barrier
    /// (panicking too) instead of waiting for it forever.
    failed: AtomicBool,
    /// The first panic's payload, raised again on the calling thread once
    /// the pool's call is over.
    panic: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

/// The panic of a thread that left a barrier because another thread of
/// its team had panicked.
struct Secondary;

/// One thread's part in a [`team`] call.
pub(crate) struct Member<'a> {
    team: &'a Team,
    /// Shares this thread has taken part in so far.
    shares: usize,
}

impl Member<'_> {
    /// Calls `f` on disjoint ranges covering `0..items`, shared with the
    /// team's other threads as [`for_ranges`] shares them. Every thread of
    /// the team must make the same `share` calls in the same order (a
    /// call's items are handed out by the thread that gets there first,
    /// and none waits for the others: put a [`Member::barrier`] between
    /// calls whose items depend on each other).
    pub fn share(&mut self, items: usize, mut f: impl FnMut(Range<usize>)) {
        assert!(
            self.shares < SHARES,
            "more than {SHARES} shares in one team call"
        );
        let cursor = &self.team.cursors[self.shares];
        self.shares += 1;
        let share = 2 * self.team.threads;
        let mut start = cursor.load(Ordering::Relaxed);
        while start < items {
            // A share of what is left: the last grabs are single items.
            let end = start + ((items - start) / share).max(1);
            match cursor.compare_exchange_weak(start, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    f(start..end);
                    start = cursor.load(Ordering::Relaxed);
                }
                Err(now) => start = now,
            }
        }
    }

    /// Waits until every thread of the team has reached this barrier:
    /// whatever any of them wrote before it is seen by all after it.
    pub fn barrier(&self) {
        let team = self.team;
        if team.threads == 1 {
            return;
        }
        let opened = team.opened.load(Ordering::Acquire);
        if team.arrived.fetch_add(1, Ordering::AcqRel) + 1 == team.threads {
            team.arrived.store(0, Ordering::Relaxed);
            team.opened.store(opened.wrapping_add(1), Ordering::Release);
            return;
        }
        while team.opened.load(Ordering::Acquire) == opened {
            if team.failed.load(Ordering::Relaxed) {
                std::panic::panic_any(Secondary);
            }
            std::hint::spin_loop();
        }
    }
}

thread_local! {
    /// Set on a thread inside a [`team`] call (its calling thread and the
    /// pool's workers) and on [`map_on_threads`]' threads: pool calls
    /// from there run inline.
    static CALLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Threads a job may split its work over: the pool's size, or 1 on a
/// thread that is already one of several working side by side (inside a
/// [`team`] call or [`map_on_threads`]).
pub(crate) fn spare_threads() -> usize {
    if CALLING.get() {
        1
    } else {
        threads()
    }
}

/// `f(i)` for every `i` in `0..items`, on [`threads`] threads of their own
/// (the calling thread one of them), each taking the next item as it
/// finishes one; the results in item order, or the first item's error.
/// For coarse, independent jobs made of many small parallel ones (a
/// model's layers, or a layer's experts, at load: each weight's copy and
/// repacking would otherwise be a pool call of its own, the other thread
/// parked between them). Inside `f`, pool calls run inline ([`spare_threads`] is 1; a
/// single item runs on the calling thread as any other call would), but
/// candle's own parallel ops still go to candle's pool, one call at a
/// time.
///
/// Without `parallel`, the items run one after another on the calling
/// thread (a model loaded onto a GPU is built in order).
pub(crate) fn map_on_threads<T: Send, E: Send>(
    parallel: bool,
    items: usize,
    f: impl Fn(usize) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<Vec<T>, E> {
    let workers = if parallel {
        spare_threads().min(items)
    } else {
        1
    };
    if workers <= 1 {
        return (0..items).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        CALLING.set(true);
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            let result = f(i);
            let failed = result.is_err();
            done.push((i, result));
            if failed {
                // No more items for anyone: the load fails anyway.
                next.store(items, Ordering::Relaxed);
                break;
            }
        }
        done
    };
    let mut done = std::thread::scope(|s| {
        let others: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
        // The calling thread's mark is put back however its part ends.
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                CALLING.set(self.0);
            }
        }
        let _restore = Restore(CALLING.get());
        let mut done = work();
        for other in others {
            done.extend(
                other
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
        }
        done
    });
    done.sort_by_key(|(i, _)| *i);
    // Items after a failure may be missing; the first error comes first.
    done.into_iter().map(|(_, result)| result).collect()
}

/// Runs `f` once on every thread of the pool (the calling thread
/// included), each with its [`Member`]: work split into phases, the
/// threads sharing each phase's items ([`Member::share`]) and waiting for
/// each other between phases ([`Member::barrier`]), all in one parallel
/// region. Serial steps between regions (quantizing a kernel's input,
/// say) leave the other threads idle; in a team they are shared too.
///
/// A nested call, from inside `f`, runs inline, its team the calling
/// thread alone: on the pool's calling thread, which holds the pool's
/// lock while it works, it would wait on itself, and on a worker it would
/// wait for that lock. (candle's own parallel ops, such as a quantized
/// matmul, must still not be called from inside `f`.)
pub(crate) fn team(f: impl Fn(&mut Member) + Sync) {
    let new_team = |threads| Team {
        threads,
        arrived: AtomicUsize::new(0),
        opened: AtomicUsize::new(0),
        cursors: std::array::from_fn(|_| AtomicUsize::new(0)),
        failed: AtomicBool::new(false),
        panic: std::sync::Mutex::new(None),
    };
    if CALLING.get() {
        f(&mut Member {
            team: &new_team(1),
            shares: 0,
        });
        return;
    }
    /// Clears the mark however the call ends (a panic in `f` included).
    struct Unmark;
    impl Drop for Unmark {
        fn drop(&mut self) {
            CALLING.set(false);
        }
    }
    CALLING.set(true);
    let _unmark = Unmark;
    let pool = candle_core::utils::barrier_pool();
    let team = new_team(pool.n_workers() + 1);
    pool.execute(|_| {
        CALLING.set(true);
        let mut member = Member {
            team: &team,
            shares: 0,
        };
        // No panic may leave the pool's call: it would poison the pool's
        // lock, and every later call would fail.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut member)));
        if let Err(payload) = run {
            team.failed.store(true, Ordering::Relaxed);
            let mut first = team.panic.lock().unwrap_or_else(|e| e.into_inner());
            // The panic that started it, not a barrier's that followed.
            let secondary = |p: &Box<dyn std::any::Any + Send>| p.is::<Secondary>();
            if first
                .as_ref()
                .is_none_or(|p| secondary(p) && !secondary(&payload))
            {
                *first = Some(payload);
            }
        }
    });
    if let Some(payload) = team.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(payload);
    }
}

/// A mutable buffer that parallel tasks write at disjoint indices.
#[derive(Clone, Copy)]
pub(crate) struct Disjoint<T>(*mut T);

// SAFETY: every task writes indices no other task writes, and the buffer
// outlives the parallel call (every user upholds both).
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    pub(crate) fn new(buffer: &mut [T]) -> Self {
        Disjoint(buffer.as_mut_ptr())
    }

    /// # Safety
    /// `index` lies inside the buffer and no other task touches it.
    pub(crate) unsafe fn write(&self, index: usize, value: T) {
        *self.0.add(index) = value;
    }

    /// # Safety
    /// `range` lies inside the buffer and no task writes it while the
    /// returned slice lives.
    pub(crate) unsafe fn view(&self, range: Range<usize>) -> &[T] {
        std::slice::from_raw_parts(self.0.add(range.start), range.len())
    }

    /// # Safety
    /// `range` lies inside the buffer and no other task touches it while
    /// the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, range: Range<usize>) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(range.start), range.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item is covered exactly once, for item counts around the
    /// shares' edges (none, one, fewer than the threads, many).
    #[test]
    fn every_item_once() {
        for items in [0, 1, 2, 3, 4, 7, 8, 9, 100, 1000] {
            let seen: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
            for_ranges(items, |range| {
                for i in range {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(
                seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                "{items} items"
            );
        }
    }

    /// Results come back in item order, every item once; inside, pool
    /// calls run inline (unless there is one item); the first failing
    /// item's error is the answer.
    #[test]
    fn map_on_threads_keeps_order_and_the_first_error() {
        for items in [0, 1, 2, 3, 17, 200] {
            let out = map_on_threads(true, items, |i| {
                // Side by side, a job's own splits run inline; one job
                // alone has the pool.
                let alone = items == 1 || threads() == 1;
                assert_eq!(spare_threads() == 1, !alone || threads() == 1);
                let sum = AtomicUsize::new(0);
                for_ranges(10, |r| {
                    sum.fetch_add(r.len(), Ordering::Relaxed);
                });
                Ok::<_, String>(i * 10 + sum.load(Ordering::Relaxed))
            })
            .unwrap();
            assert_eq!(out, (0..items).map(|i| i * 10 + 10).collect::<Vec<_>>());
        }
        let failed = map_on_threads(true, 100, |i| {
            if i % 30 == 29 {
                Err(format!("item {i}"))
            } else {
                Ok(i)
            }
        });
        assert_eq!(failed, Err("item 29".to_string()));
        assert_eq!(spare_threads(), threads(), "the caller's mark is put back");
    }

    /// Every phase sees everything the phases before the barrier wrote:
    /// each item of the second sums all of the first's outputs.
    #[test]
    fn a_barrier_separates_phases() {
        for round in 0..50 {
            let n = 64 + round;
            let first: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let second: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            team(|member| {
                member.share(n, |range| {
                    for i in range {
                        first[i].store(i + 1, Ordering::Relaxed);
                    }
                });
                member.barrier();
                member.share(n, |range| {
                    for i in range {
                        let total = first.iter().map(|v| v.load(Ordering::Relaxed)).sum();
                        second[i].store(total, Ordering::Relaxed);
                    }
                });
            });
            let want = n * (n + 1) / 2;
            assert!(second.iter().all(|v| v.load(Ordering::Relaxed) == want));
        }
    }

    /// A panic in one thread's part reaches the caller instead of leaving
    /// the others waiting at a barrier, and the pool works after it.
    #[test]
    fn a_panic_in_a_team_reaches_the_caller() {
        let result = std::panic::catch_unwind(|| {
            team(|member| {
                member.share(100, |range| assert!(!range.contains(&57), "item 57"));
                member.barrier();
                member.barrier();
            })
        });
        // The panic that started it, whichever thread raised it first.
        let payload = result.unwrap_err();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or(payload.downcast_ref::<String>().map(String::as_str));
        assert_eq!(message, Some("item 57"));
        let count = AtomicUsize::new(0);
        for_ranges(10, |range| {
            count.fetch_add(range.len(), Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }

    /// A call from inside a call finishes (it used to wait forever when the
    /// calling thread made it) and covers every item once.
    #[test]
    fn nested_calls_run_inline() {
        let count = AtomicUsize::new(0);
        for_ranges(64, |outer| {
            for _ in outer {
                for_ranges(8, |inner| {
                    count.fetch_add(inner.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), 64 * 8);
    }
}
