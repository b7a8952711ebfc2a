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
use std::sync::atomic::{AtomicUsize, Ordering};

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
/// the other's last range: on a Zen 4 EPYC, median ms a decode step of
/// the benchmark model, ten alternating rounds, fixed -> shrinking ranges:
/// batch 1 q8_0 4.41 -> 4.09, q4_k 3.28 -> 3.04, bf16 7.23 -> 7.13;
/// batch 8 q8_0 10.99 -> 10.75, q4_k 9.71 -> 9.40.
///
/// A nested call, from inside `f`, runs inline: on the calling thread,
/// which holds the pool's lock while it takes its share, it would wait on
/// itself, and on a worker it would wait for that lock. (candle's own
/// parallel ops, such as a quantized matmul, must still not be called from
/// inside `f`.)
pub fn for_ranges(items: usize, f: impl Fn(Range<usize>) + Sync) {
    thread_local! {
        static CALLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if items == 0 {
        return;
    }
    if CALLING.get() {
        f(0..items);
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
    let share = 2 * (pool.n_workers() + 1);
    let cursor = AtomicUsize::new(0);
    pool.execute(|_| {
        CALLING.set(true);
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
    });
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
