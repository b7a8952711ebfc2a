//! Small AVX-512 helpers the kernels share.

use std::arch::x86_64::*;

/// The sums of `H <= 4` vectors, in order (the rest zero).
#[inline(always)]
pub(crate) unsafe fn reduce4<const H: usize>(acc: &[__m512; H]) -> [f32; 4] {
    let mut y = [_mm256_setzero_ps(); 4];
    for (y, a) in y.iter_mut().zip(acc) {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a)));
        *y = _mm256_add_ps(_mm512_castps512_ps256(*a), high);
    }
    // Per 128-bit lane: [Σy0, Σy1, Σy2, Σy3] of that lane's halves.
    let s = _mm256_hadd_ps(_mm256_hadd_ps(y[0], y[1]), _mm256_hadd_ps(y[2], y[3]));
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), s);
    out
}

/// Asks for the `lines` cache lines from `p` on, when `on` (the kernels pass
/// [`prefetches`], read once per call). A prefetch never faults: `p` may
/// lie past the weight's end.
#[inline(always)]
pub(crate) unsafe fn prefetch(on: bool, p: *const u8, lines: usize) {
    if on {
        for line in 0..lines {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line * 64) as *const i8);
        }
    }
}

/// Whether the weight-streaming kernels (the decode matmul's tiles and the
/// packed VNNI kernels) prefetch their weights in software, a few KB ahead
/// of the bytes in use. Intel's cores need it: without it the loads wait on
/// misses (on an Emerald Rapids Xeon, a q8_0 decode step of the benchmark
/// model took 5.5 ms without, 3.6-3.9 ms with). AMD's hardware prefetcher
/// keeps the stream going alone, and the extra requests only get in its
/// way: on a Zen 4 EPYC, median ms a step, prefetch on -> off, batch 1:
/// f32 16.7 -> 14.1, bf16 8.4 -> 7.1, q8_0 4.8 -> 4.2, q4_k 3.4 -> 2.8
/// (batch 8: q8_0 equal, q4_k 11.0 -> 10.2). So: on except on AMD CPUs;
/// `FERROSEEK_PREFETCH=on|off` overrides (read once).
pub(crate) fn prefetches() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("FERROSEEK_PREFETCH").as_deref() {
        Ok("on" | "1") => true,
        Ok("off" | "0") => false,
        _ => !amd(),
    })
}

/// Whether the CPU's vendor is AMD (or Hygon, which builds AMD's cores).
fn amd() -> bool {
    // SAFETY: leaf 0 exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let id = unsafe { __cpuid(0) };
    let mut vendor = [0u8; 12];
    for (chunk, reg) in vendor.chunks_exact_mut(4).zip([id.ebx, id.edx, id.ecx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    matches!(&vendor, b"AuthenticAMD" | b"HygonGenuine")
}
