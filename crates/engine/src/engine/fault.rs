//! Faults injected on purpose, for tests only (the `fault-injection`
//! feature, which no release build has): they prove that a failed step
//! costs only its own requests and that a dead engine is noticed.
//!
//! A fault is armed by a token id: a request whose prompt contains it
//! trips it, so a test chooses which request fails.

/// Which faults are armed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A step holding a sequence whose prompt contains this token panics
    /// in the middle (after the forward pass, while streaming its tokens).
    pub step_panic_token: Option<u32>,
    /// The engine thread panics outside any step when it takes a request
    /// whose prompt contains this token: the engine cannot go on.
    pub loop_panic_token: Option<u32>,
}

impl Faults {
    /// Faults from `FERROSEEK_FAULT_STEP_PANIC_TOKEN` and
    /// `FERROSEEK_FAULT_LOOP_PANIC_TOKEN` (token ids); unset or unparsable
    /// variables arm nothing.
    pub fn from_env() -> Self {
        let token = |name: &str| std::env::var(name).ok()?.trim().parse().ok();
        Faults {
            step_panic_token: token("FERROSEEK_FAULT_STEP_PANIC_TOKEN"),
            loop_panic_token: token("FERROSEEK_FAULT_LOOP_PANIC_TOKEN"),
        }
    }

    /// Panics mid-step when `prompt` holds the step fault's token.
    pub(super) fn in_step(&self, prompt: &[u32]) {
        if let Some(t) = self.step_panic_token.filter(|t| prompt.contains(t)) {
            panic!("injected fault: a step holding token {t} panics");
        }
    }

    /// Panics outside a step when `prompt` holds the loop fault's token.
    pub(super) fn in_loop(&self, prompt: &[u32]) {
        if let Some(t) = self.loop_panic_token.filter(|t| prompt.contains(t)) {
            panic!("injected fault: the engine loop panics on token {t}");
        }
    }
}
