//! What happens when a step fails. A step runs under `catch_unwind`: when
//! the model errs or anything in the step panics, every request that had a
//! sequence in the step gets an `Error` event and leaves (its blocks return
//! to the pool), sequences and requests left without their other half go
//! too, and the scheduler's bookkeeping is checked; if a panic broke it,
//! every request fails and the block pool starts afresh. Nothing else a
//! step touches outlives it: the model holds no request state, the cache
//! rows of the failed sequences are in blocks no one holds now, and a block
//! is registered for prefix reuse only after its forward succeeded.
//! [`MAX_FAILED_STEPS`] failures in a row, with no good step between, stop
//! the engine: something is wrong beyond any one request.

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::{Submission, Worker, MAX_FAILED_STEPS};
use crate::request::Event;

impl Worker {
    /// One step; a failure in it costs only the requests it held. `Err`
    /// (with the last failure) once [`MAX_FAILED_STEPS`] failed in a row.
    pub(super) fn guarded_step(&mut self) -> std::result::Result<(), String> {
        let mut in_step = None;
        let error = match panic::catch_unwind(AssertUnwindSafe(|| self.step(&mut in_step))) {
            Ok(Ok(())) => {
                self.failed_steps = 0;
                return Ok(());
            }
            Ok(Err(e)) => format!("the model failed: {e}"),
            Err(payload) => format!("the engine failed: {}", panic_message(payload.as_ref())),
        };
        self.failed_steps += 1;
        self.shared
            .failed_steps_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            failed_in_a_row = self.failed_steps,
            "a step failed; its requests get an error: {error}"
        );
        // Work not known yet (the scheduler itself failed): every request.
        let failed = in_step.unwrap_or_else(|| self.groups.keys().copied().collect());
        self.fail_requests(&failed, &error);
        self.drop_orphans(&error);
        if let Err(broken) = self.sched.check() {
            tracing::error!(
                "after the failed step, {broken}; every request fails and the cache starts empty"
            );
            let all: HashSet<u64> = self.groups.keys().copied().collect();
            self.fail_requests(&all, &error);
            for seq in self.sched.clear() {
                if !seq.data.admitted {
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        if self.failed_steps >= MAX_FAILED_STEPS {
            return Err(error);
        }
        Ok(())
    }

    /// Removes the sequences of requests `failed`, running or waiting, and
    /// sends each request the error.
    fn fail_requests(&mut self, failed: &HashSet<u64>, error: &str) {
        let shared = &self.shared;
        self.sched.remove_where(|s| {
            let gone = failed.contains(&s.id().request);
            if gone && !s.data.admitted {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            gone
        });
        for k in failed {
            if let Some(mut g) = self.groups.remove(k) {
                g.span
                    .in_scope(|| tracing::error!("request failed: {error}"));
                g.send(Event::Error(error.to_string()));
            }
        }
    }

    /// After a panic: a sequence whose request is gone, or a request none of
    /// whose sequences is left, goes too.
    fn drop_orphans(&mut self, error: &str) {
        let groups = &self.groups;
        let shared = &self.shared;
        self.sched.remove_where(|s| {
            let orphan = !groups.contains_key(&s.id().request);
            if orphan && !s.data.admitted {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            orphan
        });
        let live: HashSet<u64> = self.sched.ids().map(|id| id.request).collect();
        let lost: HashSet<u64> = self
            .groups
            .keys()
            .filter(|k| !live.contains(k))
            .copied()
            .collect();
        self.fail_requests(&lost, error);
    }

    /// The engine cannot go on: it stops taking requests, answers every one
    /// it holds or that is on its way with an error, and marks itself failed.
    pub(super) fn give_up(&mut self, rx: &mpsc::Receiver<Submission>, last: &str) {
        tracing::error!("{MAX_FAILED_STEPS} steps failed in a row; the engine stops");
        self.shared.accepting.store(false, Ordering::SeqCst);
        self.shared.failed.store(true, Ordering::SeqCst);
        let error = format!("the engine stopped after repeated failures; the last: {last}");
        let all: HashSet<u64> = self.groups.keys().copied().collect();
        self.fail_requests(&all, &error);
        while let Ok(s) = rx.try_recv() {
            let _ = s.tx.try_send(Event::Error(error.clone()));
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        self.publish();
    }
}

/// What a panic said, for the error its requests get.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}
