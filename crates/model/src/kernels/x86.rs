//! Small AVX-512 helpers the kernels share.

use std::arch::x86_64::*;

/// The sums of `H <= 4` vectors, in order (the rest zero).
///
/// # Safety
/// Only from code compiled with AVX-512F, on a CPU that has it.
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
///
/// # Safety
/// None beyond x86_64 itself: a prefetch never faults, wherever `p` points.
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
/// misses. AMD's hardware prefetcher keeps the stream going alone, and the
/// extra requests only get in its way (measurements in
/// `crates/model/benches/README.md`). So: on except on AMD CPUs (but see
/// [`tile_prefetches`]);
/// `FERROSEEK_PREFETCH=on|off` overrides (read once).
pub(crate) fn prefetches() -> bool {
    forced().unwrap_or_else(|| !amd())
}

/// [`prefetches`] for a packed-kernel tile that takes `rows` input rows
/// per weight load. A full tile of 8 rows spends 64 VNNI instructions on
/// each 64 bytes of weights, and there even AMD's hardware prefetcher falls
/// behind; from 4 rows prefetching was slower there (see the benches'
/// README).
pub(crate) fn tile_prefetches(rows: usize) -> bool {
    forced().unwrap_or_else(|| !amd() || rows >= 8)
}

/// `FERROSEEK_PREFETCH`'s setting, read once: `Some(on)`, or `None` for
/// the CPU's default.
fn forced() -> Option<bool> {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("FERROSEEK_PREFETCH").as_deref() {
        Ok("on" | "1") => Some(true),
        Ok("off" | "0") => Some(false),
        _ => None,
    })
}

/// Whether the AMX tiles can run the product whose CPUID bit (leaf 7,
/// EDX) is `product_bit`: the CPU has AMX-TILE, that product and
/// AVX-512BW, and Linux gives the process the tile state when asked
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, which a process
/// must do before its first tile instruction; the grant covers all of its
/// threads). `FERROSEEK_AMX=off` says no (for measuring against the
/// AVX-512 kernels). The callers keep the answer.
pub(crate) fn amx_granted(product_bit: u32) -> bool {
    if std::env::var("FERROSEEK_AMX").is_ok_and(|v| v == "off") {
        return false;
    }
    // SAFETY: leaf 7 exists on every CPU with AVX-512, and reads as zeros
    // past the highest leaf elsewhere.
    #[allow(unused_unsafe)]
    let leaf = unsafe { __cpuid_count(7, 0) };
    let has = |bit: u32| leaf.edx >> bit & 1 == 1;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // AMX-TILE is bit 24.
    has(24)
        && has(product_bit)
        && std::is_x86_feature_detected!("avx512bw")
        // SAFETY: the call takes two integers and changes only what the
        // process may use.
        && unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
}

/// An AMX tile configuration (palette 1): each tile's bytes per row and
/// rows, in the layout `ldtilecfg` reads.
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Tile `t` of `bytes_per_row[t]` bytes by `rows[t]` rows; the tiles
    /// past `shapes` unused.
    pub(crate) const fn new(shapes: &[(u16, u8)]) -> TileConfig {
        let mut bytes_per_row = [0u16; 16];
        let mut rows = [0u8; 16];
        let mut t = 0;
        while t < shapes.len() {
            (bytes_per_row[t], rows[t]) = shapes[t];
            t += 1;
        }
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row,
            rows,
        }
    }

    /// Configures this thread's tiles so (`ldtilecfg`).
    ///
    /// # Safety
    /// [`amx_granted`] said yes.
    #[inline(always)]
    pub(crate) unsafe fn load(&self) {
        std::arch::asm!("ldtilecfg [{}]", in(reg) self as *const TileConfig, options(nostack, readonly));
    }
}

/// Whether the CPU's vendor is AMD (or Hygon, which builds AMD's cores),
/// found once.
fn amd() -> bool {
    static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMD.get_or_init(vendor_is_amd)
}

fn vendor_is_amd() -> bool {
    // SAFETY: leaf 0 exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let id = unsafe { __cpuid(0) };
    let mut vendor = [0u8; 12];
    for (chunk, reg) in vendor.chunks_exact_mut(4).zip([id.ebx, id.edx, id.ecx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    matches!(&vendor, b"AuthenticAMD" | b"HygonGenuine")
}

/// `e^x` in each lane, within 2 ulp of `f32::exp` over the range where the
/// result is a normal number (Cephes' `expf`: `x = k·ln 2 + r` with `ln 2`
/// in two parts, a degree-7 polynomial for `e^r` on |r| ≤ ln 2 / 2, and
/// `scalef` for `2^k`). Below about -87.3 it gives 0 or a subnormal, above
/// about 88.7 infinity; NaN stays NaN. For the kernels' softmax and silu,
/// where glibc's scalar `expf` (a call a number) was a visible share of a
/// decode step.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp512(x: __m512) -> __m512 {
    // Past these the result is 0 or infinity already; clamping keeps
    // infinite inputs from making `x - k·ln 2` a NaN (NaN passes through:
    // max and min return their second operand when either is NaN).
    let x = _mm512_min_ps(
        _mm512_set1_ps(89.0),
        _mm512_max_ps(_mm512_set1_ps(-104.0), x),
    );
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let k =
        _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_2e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(p, k)
}

/// `e^x` in each lane for `x` up to 88, within 2 ulp of `f32::exp` where
/// the result is a normal number: [`exp512`]'s arithmetic on AVX2, `2^k`
/// built in the exponent bits (no `scalef` there), so results that would
/// be subnormal (below about -87.3) are 0. NaN stays NaN; `x` above 88 is
/// out of its domain (the softmax's arguments are at most 0).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp256(x: __m256) -> __m256 {
    let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.3));
    // `max(lo, x)` and `min(hi, ..)` return `x` when it is NaN.
    let x = _mm256_min_ps(
        _mm256_set1_ps(88.0),
        _mm256_max_ps(_mm256_set1_ps(-87.3), x),
    );
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let k = _mm256_round_ps::<NEAREST>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_2e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_fmadd_ps(
        p,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // 2^k for k in -126..=127: k + 127 in the exponent field.
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(k),
        _mm256_set1_epi32(127),
    )));
    _mm256_andnot_ps(tiny, _mm256_mul_ps(p, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest distance in ulp from `f32::exp` of `exp` over vectors of
    /// `N` numbers `spread` apart, starting every 0.0117 from -87 to `to`.
    fn worst_ulp<const N: usize>(to: f32, spread: f32, exp: impl Fn([f32; N]) -> [f32; N]) -> f32 {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < to {
            let v: [f32; N] = std::array::from_fn(|i| x + i as f32 * spread);
            for (got, v) in exp(v).iter().zip(v) {
                let want = v.exp();
                let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs() as f32;
                worst = worst.max(ulp);
            }
            x += 0.0117;
        }
        worst
    }

    /// Within 2 ulp of `f32::exp` wherever the result is normal and `x` at
    /// most 88, exact at 0, 0 below, NaN for NaN.
    #[test]
    fn exp256_matches_the_scalar_exp() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let exp = |v: [f32; 8]| {
            let mut out = [0f32; 8];
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp256(_mm256_loadu_ps(v.as_ptr()))) };
            out
        };
        let worst = worst_ulp(87.9, 0.001_37, exp);
        assert!(worst <= 2.0, "{worst} ulp");
        let edges = exp([
            0.0,
            -0.0,
            -88.0,
            -200.0,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0,
            -1.0,
        ]);
        assert_eq!(edges[..5], [1.0, 1.0, 0.0, 0.0, 0.0]);
        assert!(edges[5].is_nan());
        for (got, x) in edges[6..].iter().zip([1f32, -1.0]) {
            assert!((got - x.exp()).abs() <= 2.0 * f32::EPSILON * x.exp());
        }
    }

    /// Within 2 ulp of `f32::exp` wherever the result is normal, exact at
    /// 0, 0 far below, infinity far above, NaN for NaN.
    #[test]
    fn exp512_matches_the_scalar_exp() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let exp = |v: [f32; 16]| {
            let mut out = [0f32; 16];
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp512(_mm512_loadu_ps(v.as_ptr()))) };
            out
        };
        let worst = worst_ulp(88.5, 0.000_713, exp);
        assert!(worst <= 2.0, "{worst} ulp");
        let edges = exp([
            0.0,
            -0.0,
            -200.0,
            f32::NEG_INFINITY,
            100.0,
            f32::INFINITY,
            f32::NAN,
            1.0,
            -1.0,
            0.5,
            -103.0,
            88.0,
            -87.0,
            1e-8,
            -1e-8,
            10.0,
        ]);
        assert_eq!(edges[..2], [1.0, 1.0]);
        assert_eq!(edges[2..4], [0.0, 0.0]);
        assert_eq!(edges[4..6], [f32::INFINITY; 2]);
        assert!(edges[6].is_nan());
        assert_eq!(edges[13..15], [1.0, 1.0]);
    }
}
