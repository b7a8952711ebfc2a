//! `y = x · Wᵀ` for the few rows of a decode step, reading each weight once.
//!
//! Decoding is memory-bound: a step's cost is reading the weights. candle's
//! CPU matmul streams an f32 weight at about half the machine's bandwidth
//! for one row, and for a bf16 weight first converts the whole weight to
//! f32 on every call. This kernel walks the weight's rows once, in parallel
//! over output rows; each weight row (a few KB, so it stays in L1) is
//! multiplied with every input row before the next is read, so a step reads
//! the weight exactly once whatever the batch. bf16 weights are widened to
//! f32 in registers (a bf16 is the top half of an f32), so a bf16 checkpoint
//! reads half the bytes of f32 and computes in f32.
//!
//! AVX2 + FMA (+ F16C for Q8_0 scales) is chosen at run time where the CPU
//! has it; elsewhere a plain loop the compiler vectorises.

use std::ops::Range;

use half::bf16;

use crate::parallel::{self, Disjoint};

/// A weight `[n, k]`, row-major.
#[derive(Clone, Copy)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    /// GGML's Q8_0 blocks as candle stores them: per 32 weights, an f16
    /// scale then 32 i8 (34 bytes); `k` a multiple of 32.
    Q8_0(&'a [u8]),
}

/// Weights per Q8_0 block, and the bytes of one block.
pub const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 34;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ`.
pub fn matmul_rows(x: &[f32], m: usize, k: usize, w: WeightRows<'_>, n: usize) -> Vec<f32> {
    matmul_groups(x, m, k, &[w], n)
}

impl WeightRows<'_> {
    /// Bytes of the whole weight.
    fn bytes(&self) -> usize {
        match self {
            WeightRows::F32(w) => w.len() * 4,
            WeightRows::Bf16(w) => w.len() * 2,
            WeightRows::Q8_0(w) => w.len(),
        }
    }

    fn check(&self, n: usize, k: usize) {
        match self {
            WeightRows::F32(w) => assert_eq!(w.len(), n * k, "w is not [n, k]"),
            WeightRows::Bf16(w) => assert_eq!(w.len(), n * k, "w is not [n, k]"),
            WeightRows::Q8_0(w) => {
                assert_eq!(k % Q8_0_BLOCK, 0, "Q8_0 rows are whole blocks");
                assert_eq!(
                    w.len(),
                    n * k / Q8_0_BLOCK * Q8_0_BYTES,
                    "w is not [n, k] in Q8_0"
                );
            }
        }
    }
}

/// Several independent maps over consecutive slices of each input row (the
/// per-head matrices of absorbed attention): with `g = ws.len()`, `x` is
/// `[m, g·k]`, `ws[i]` is `[n, k]`, and the result is `[m, g·n]` whose
/// columns `i·n..(i+1)·n` are `x[:, i·k..(i+1)·k] · ws[i]ᵀ`. All groups are
/// split over the pool in one call.
pub fn matmul_groups(x: &[f32], m: usize, k: usize, ws: &[WeightRows<'_>], n: usize) -> Vec<f32> {
    matmul_many(x, m, k, ws, n, Input::Sliced)
}

/// Several maps of the same input (an MLP's gate and up projections): `x`
/// is `[m, k]`, `ws[i]` is `[n, k]`, and the result is `[m, g·n]` whose
/// columns `i·n..(i+1)·n` are `x · ws[i]ᵀ`, all in one call on the pool.
pub fn matmul_shared(x: &[f32], m: usize, k: usize, ws: &[WeightRows<'_>], n: usize) -> Vec<f32> {
    matmul_many(x, m, k, ws, n, Input::Shared)
}

/// What each weight of [`matmul_many`] multiplies.
#[derive(Clone, Copy, PartialEq)]
enum Input {
    /// Its own `k`-wide slice of each input row.
    Sliced,
    /// The whole input row.
    Shared,
}

fn matmul_many(
    x: &[f32],
    m: usize,
    k: usize,
    ws: &[WeightRows<'_>],
    n: usize,
    input: Input,
) -> Vec<f32> {
    let groups = ws.len();
    let (stride, offset) = match input {
        Input::Sliced => (groups * k, k),
        Input::Shared => (k, 0),
    };
    assert_eq!(x.len(), m * stride, "x is not [m, groups * k] or [m, k]");
    ws.iter().for_each(|w| w.check(n, k));
    let columns = groups * n;
    let mut out = vec![0f32; m * columns];
    let dst = Disjoint::new(&mut out);
    let simd = Simd::detect();
    // Several rows on AVX-512: the register-blocked kernel.
    #[cfg(target_arch = "x86_64")]
    let blocked = blocked_kernel() && m >= 2 && k.is_multiple_of(16);
    // The output columns `cols` (each one weight row), computed for every
    // input row, four input rows per pass over a weight row. A range is
    // walked one group at a time, so the group and its weight kind are found
    // once per run of columns, not per column (a grouped weight row is only
    // a few blocks).
    let work = |cols: Range<usize>| {
        let mut c = cols.start;
        while c < cols.end {
            let g = c / n;
            let first = g * n;
            let js = c - first..cols.end.min(first + n) - first;
            c = first + js.end;
            let xg = &x[g * offset..];
            let store = |j: usize, i: usize, dots: &[f32]| {
                for (r, d) in dots.iter().enumerate() {
                    // SAFETY: in bounds, and column first + j belongs to this range only.
                    unsafe { dst.write((i + r) * columns + first + j, *d) };
                }
            };
            #[cfg(target_arch = "x86_64")]
            if blocked {
                let store_row = |i: usize, j: usize, values: &[f32]| {
                    let start = i * columns + first + j;
                    // SAFETY: in bounds, and these columns belong to this range only.
                    unsafe { dst.slice(start..start + values.len()) }.copy_from_slice(values);
                };
                // SAFETY: `Simd::detect` found AVX-512F/BW, AVX2, FMA and F16C.
                unsafe { blocked512::columns(ws[g], js, m, stride, k, xg, store_row) };
                continue;
            }
            match ws[g] {
                WeightRows::F32(w) => each_tile(js, m, stride, k, xg, store, |j, xs, t| {
                    F32_TILES.run(simd, &w[j * k..(j + 1) * k], xs, stride, t, k)
                }),
                WeightRows::Bf16(w) => each_tile(js, m, stride, k, xg, store, |j, xs, t| {
                    BF16_TILES.run(simd, &w[j * k..(j + 1) * k], xs, stride, t, k)
                }),
                WeightRows::Q8_0(w) => {
                    let row = k / Q8_0_BLOCK * Q8_0_BYTES;
                    each_tile(js, m, stride, k, xg, store, |j, xs, t| {
                        Q8_0_TILES.run(simd, &w[j * row..(j + 1) * row], xs, stride, t, k)
                    })
                }
            }
        }
    };
    // Handing work to the pool costs a microsecond or two: a small weight
    // (an expert's slice of a decode step) is read on this thread.
    let bytes: usize = ws.iter().map(WeightRows::bytes).sum();
    if bytes * m.div_ceil(4) < SERIAL_BYTES {
        work(0..columns);
    } else {
        parallel::for_ranges(columns, work);
    }
    out
}

/// For each weight row `j` of `js`: `dot` of it with every input row of `x`
/// (`m` rows, `stride` apart, the first `k` numbers each), at most four rows
/// a call, and `store(j, first_row, dots)`.
#[inline(always)]
fn each_tile(
    js: Range<usize>,
    m: usize,
    stride: usize,
    k: usize,
    x: &[f32],
    store: impl Fn(usize, usize, &[f32]),
    dot: impl Fn(usize, &[f32], usize) -> Dots,
) {
    for j in js {
        let mut i = 0;
        while i < m {
            let t = (m - i).min(4);
            let dots = dot(j, &x[i * stride..(i + t - 1) * stride + k], t);
            store(j, i, &dots[..t]);
            i += t;
        }
    }
}

/// Weights smaller than this (times the row tiles) are read on one thread.
const SERIAL_BYTES: usize = 256 << 10;

/// How far ahead of the current column the SIMD tiles prefetch (on CPUs
/// that want it: `x86::prefetches`).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 8192;

/// Whether inputs of two rows or more take the register-blocked AVX-512
/// kernel (else the AVX2 or portable tiles).
pub fn blocked_kernel() -> bool {
    Simd::detect() == Simd::Avx512
}

/// The instruction set the tiles run on, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F and BW (+ AVX2, FMA, F16C): one-row tiles on 16 lanes;
    /// several rows take the register-blocked kernel (or, when `k` is not
    /// a multiple of 16, the AVX2 tiles).
    Avx512,
}

impl Simd {
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") {
                    return Simd::Avx512;
                }
                return Simd::Avx2;
            }
        }
        Simd::Portable
    }
}

/// One weight kind's tiles: a weight row's dots with `t` (≤ 4) input rows
/// on each instruction set (on AVX-512, one row on 16 lanes; several rows as
/// on AVX2).
struct Tiles<W: 'static> {
    #[cfg(target_arch = "x86_64")]
    one_row: unsafe fn(&[W], &[f32], usize) -> f32,
    #[cfg(target_arch = "x86_64")]
    avx2: unsafe fn(&[W], &[f32], usize, usize, usize, &mut Dots),
    portable: fn(&[W], &[f32], usize, usize, usize, &mut Dots),
}

/// A tile's dots, one per input row (the first `t` of them).
type Dots = [f32; 4];

impl<W> Tiles<W> {
    /// The row `w`'s dots with the `t` input rows of `xs` (`stride` apart,
    /// `k` numbers each), on `simd`'s path; the first `t` count.
    fn run(&self, simd: Simd, w: &[W], xs: &[f32], stride: usize, t: usize, k: usize) -> Dots {
        let mut dots = [0f32; 4];
        // SAFETY: `Simd::detect` found the features each path needs.
        #[cfg(target_arch = "x86_64")]
        match simd {
            Simd::Avx512 if t == 1 => {
                dots[0] = unsafe { (self.one_row)(w, xs, k) };
                return dots;
            }
            Simd::Avx512 | Simd::Avx2 => {
                unsafe { (self.avx2)(w, xs, stride, t, k, &mut dots) };
                return dots;
            }
            Simd::Portable => {}
        }
        let _ = simd;
        (self.portable)(w, xs, stride, t, k, &mut dots);
        dots
    }
}

const F32_TILES: Tiles<f32> = Tiles {
    #[cfg(target_arch = "x86_64")]
    one_row: avx512::dot_f32,
    #[cfg(target_arch = "x86_64")]
    avx2: avx2::dot_tile_f32,
    portable: |w, xs, stride, t, k, dots| dot_tile_scalar(w, xs, stride, t, k, dots, |v| v),
};

const BF16_TILES: Tiles<bf16> = Tiles {
    #[cfg(target_arch = "x86_64")]
    one_row: avx512::dot_bf16,
    #[cfg(target_arch = "x86_64")]
    avx2: avx2::dot_tile_bf16,
    portable: |w, xs, stride, t, k, dots| dot_tile_scalar(w, xs, stride, t, k, dots, bf16::to_f32),
};

const Q8_0_TILES: Tiles<u8> = Tiles {
    #[cfg(target_arch = "x86_64")]
    one_row: avx512::dot_q8_0,
    #[cfg(target_arch = "x86_64")]
    avx2: avx2::dot_tile_q8_0,
    portable: dot_tile_q8_0_scalar,
};

/// The portable body of the dense tiles: `widen` gives a weight as f32.
fn dot_tile_scalar<W: Copy>(
    w: &[W],
    xs: &[f32],
    stride: usize,
    t: usize,
    k: usize,
    dots: &mut [f32; 4],
    widen: impl Fn(W) -> f32,
) {
    for (r, d) in dots[..t].iter_mut().enumerate() {
        *d = w
            .iter()
            .zip(&xs[r * stride..r * stride + k])
            .map(|(&a, b)| widen(a) * b)
            .sum();
    }
}

/// The portable Q8_0 tile: per block, the integer weights times the inputs,
/// scaled.
fn dot_tile_q8_0_scalar(
    w: &[u8],
    xs: &[f32],
    stride: usize,
    t: usize,
    k: usize,
    dots: &mut [f32; 4],
) {
    for (r, d) in dots[..t].iter_mut().enumerate() {
        let x = &xs[r * stride..r * stride + k];
        *d = w
            .chunks_exact(Q8_0_BYTES)
            .zip(x.chunks_exact(Q8_0_BLOCK))
            .map(|(b, x)| {
                let scale = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                let dot: f32 = b[2..].iter().zip(x).map(|(&q, v)| q as i8 as f32 * v).sum();
                scale * dot
            })
            .sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use half::bf16;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Eight bf16 at `p` widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_bf16(p: *const bf16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    /// One weight row (`$load(c)` gives its 8 weights at column `c`,
    /// `$scalar(c)` one) against `t` ≤ 4 input rows.
    macro_rules! tile {
        ($name:ident, $inner:ident, $elem:ty, $load:expr, $scalar:expr) => {
            /// `T` is a constant so that the accumulators live in registers.
            #[inline]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $inner<const T: usize>(
                w: &[$elem],
                xs: &[f32],
                stride: usize,
                k: usize,
                dots: &mut [f32; 4],
            ) {
                let wp = w.as_ptr();
                let xp = xs.as_ptr();
                // Two accumulators per input row hide the FMA latency.
                let mut a0 = [_mm256_setzero_ps(); T];
                let mut a1 = [_mm256_setzero_ps(); T];
                let main = k / 16 * 16;
                let on = prefetches();
                let mut c = 0;
                while c < main {
                    // Where the hardware prefetcher alone leaves the weight
                    // stream short of the bandwidth (see `prefetches`), the
                    // bytes a few rows of work ahead are asked for.
                    prefetch(on, (wp.add(c) as *const u8).wrapping_add(PREFETCH_BYTES), 1);
                    let w0 = $load(wp.add(c));
                    let w1 = $load(wp.add(c + 8));
                    for r in 0..T {
                        let x = xp.add(r * stride + c);
                        a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), a0[r]);
                        a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), a1[r]);
                    }
                    c += 16;
                }
                for r in 0..T {
                    let mut s = hsum(_mm256_add_ps(a0[r], a1[r]));
                    for cc in main..k {
                        s += $scalar(*wp.add(cc)) * *xp.add(r * stride + cc);
                    }
                    dots[r] = s;
                }
            }

            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn $name(
                w: &[$elem],
                xs: &[f32],
                stride: usize,
                t: usize,
                k: usize,
                dots: &mut [f32; 4],
            ) {
                match t {
                    1 => $inner::<1>(w, xs, stride, k, dots),
                    2 => $inner::<2>(w, xs, stride, k, dots),
                    3 => $inner::<3>(w, xs, stride, k, dots),
                    _ => $inner::<4>(w, xs, stride, k, dots),
                }
            }
        };
    }

    use super::PREFETCH_BYTES;
    use crate::layers::x86::{prefetch, prefetches};

    tile!(dot_tile_f32, tile_f32, f32, load_f32, |v: f32| v);
    tile!(dot_tile_bf16, tile_bf16, bf16, load_bf16, |v: bf16| v
        .to_f32());

    /// Q8_0 rows: per block, the 32 weights are widened once and used for
    /// every input row; the block's dot is scaled into the running sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_tile<const T: usize>(
        w: &[u8],
        xs: &[f32],
        stride: usize,
        k: usize,
        dots: &mut [f32; 4],
    ) {
        let wp = w.as_ptr();
        let xp = xs.as_ptr();
        let mut total = [_mm256_setzero_ps(); T];
        for b in 0..k / 32 {
            let block = wp.add(b * 34);
            // The f16 scale, widened by the F16C instruction (half's portable
            // conversion is a call per block, which dominated the kernel).
            let bits = u16::from_le_bytes([*block, *block.add(1)]);
            let scale = _mm256_cvtph_ps(_mm_set1_epi16(bits as i16));
            let q = block.add(2);
            let mut wv = [_mm256_setzero_ps(); 4];
            for (i, v) in wv.iter_mut().enumerate() {
                let bytes = _mm_loadl_epi64(q.add(8 * i) as *const __m128i);
                *v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            }
            for (r, tot) in total.iter_mut().enumerate() {
                let x = xp.add(r * stride + b * 32);
                let mut acc = _mm256_mul_ps(wv[0], _mm256_loadu_ps(x));
                acc = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(x.add(8)), acc);
                acc = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(x.add(16)), acc);
                acc = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(x.add(24)), acc);
                *tot = _mm256_fmadd_ps(scale, acc, *tot);
            }
        }
        for r in 0..T {
            dots[r] = hsum(total[r]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_tile_q8_0(
        w: &[u8],
        xs: &[f32],
        stride: usize,
        t: usize,
        k: usize,
        dots: &mut [f32; 4],
    ) {
        match t {
            1 => q8_0_tile::<1>(w, xs, stride, k, dots),
            2 => q8_0_tile::<2>(w, xs, stride, k, dots),
            3 => q8_0_tile::<3>(w, xs, stride, k, dots),
            _ => q8_0_tile::<4>(w, xs, stride, k, dots),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

/// One weight row against one input row with 16-lane AVX-512 vectors: half
/// the instructions per weight of the AVX2 tiles, which a single row needs
/// to keep up with memory (most of all Q8_0, whose widening is the work).
/// From two rows on the AVX2 tiles are as fast or faster (benches/kernels.rs:
/// m = 1 q8_0 17 -> 27 GB/s, bf16 31 -> 38-49, f32 20 -> 22; m = 4 slower).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use half::bf16;
    use std::arch::x86_64::*;

    use super::PREFETCH_BYTES;
    use crate::layers::x86::{prefetch, prefetches};

    /// Sixteen bf16 at `p` widened to f32.
    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    /// A dense weight row's dot with `x`, 32 columns a step.
    macro_rules! dot {
        ($name:ident, $elem:ty, $load:expr, $scalar:expr) => {
            #[target_feature(enable = "avx512f,avx512bw")]
            pub unsafe fn $name(w: &[$elem], x: &[f32], k: usize) -> f32 {
                assert!(w.len() >= k && x.len() >= k);
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                let main = k / 32 * 32;
                let on = prefetches();
                let mut c = 0;
                while c < main {
                    prefetch(on, (wp.add(c) as *const u8).wrapping_add(PREFETCH_BYTES), 1);
                    a0 = _mm512_fmadd_ps($load(wp.add(c)), _mm512_loadu_ps(xp.add(c)), a0);
                    a1 =
                        _mm512_fmadd_ps($load(wp.add(c + 16)), _mm512_loadu_ps(xp.add(c + 16)), a1);
                    c += 32;
                }
                let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
                for cc in main..k {
                    s += $scalar(*wp.add(cc)) * *xp.add(cc);
                }
                s
            }
        };
    }

    dot!(dot_f32, f32, load_f32, |v: f32| v);
    dot!(dot_bf16, bf16, load_bf16, |v: bf16| v.to_f32());

    /// A Q8_0 row's dot with `x`: per block, the 32 weights are widened to
    /// two vectors, scaled, and multiplied into two running sums.
    #[target_feature(enable = "avx512f,avx512bw,f16c")]
    pub unsafe fn dot_q8_0(w: &[u8], x: &[f32], k: usize) -> f32 {
        assert!(w.len() >= k / 32 * 34 && x.len() >= k);
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let on = prefetches();
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for b in 0..k / 32 {
            let block = wp.add(b * 34);
            prefetch(on, block.wrapping_add(PREFETCH_BYTES), 1);
            let bits = u16::from_le_bytes([*block, *block.add(1)]);
            let scale = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
            let widen = |i: usize| {
                let q = _mm_loadu_si128(block.add(2 + 16 * i) as *const __m128i);
                _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)))
            };
            let (w0, w1) = (widen(0), widen(1));
            let x = xp.add(b * 32);
            a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), a0);
            a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x.add(16)), a1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }
}

/// Several input rows at once with AVX-512: a register-blocked kernel. A
/// block of up to 16 weight rows is widened to f32 once per 256 columns (a
/// 16 KB buffer that stays in L1; f32 weights are read in place), then every
/// four input rows meet every four weight rows in sixteen accumulators, with
/// one horizontal sum per four outputs. The dot tiles instead widen a
/// weight row once per four input rows and sum every output horizontally,
/// which leaves them compute-bound well below the memory speed from four
/// rows on.
#[cfg(target_arch = "x86_64")]
mod blocked512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use half::bf16;

    use super::{WeightRows, Q8_0_BYTES};
    use crate::layers::x86::reduce4;

    /// Weight rows per block, and columns per widened chunk.
    const J: usize = 16;
    const KC: usize = 256;

    /// For weight rows `js` of `w` (`[n, k]`, `k` a multiple of 16): their
    /// dots with every input row of `x` (`m` rows `stride` apart), handed to
    /// `store(row, first weight row, dots)` a row's run of outputs at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub unsafe fn columns(
        w: WeightRows<'_>,
        js: Range<usize>,
        m: usize,
        stride: usize,
        k: usize,
        x: &[f32],
        store: impl Fn(usize, usize, &[f32]),
    ) {
        assert!(k.is_multiple_of(16) && x.len() >= (m - 1) * stride + k);
        let mut wide = vec![0f32; J * KC];
        let mut sums = vec![0f32; m * J];
        let mut j0 = js.start;
        while j0 < js.end {
            let rows = (js.end - j0).min(J);
            sums.iter_mut().for_each(|s| *s = 0.0);
            let mut k0 = 0;
            while k0 < k {
                let kc = (k - k0).min(KC);
                // The block's weights for columns k0..k0 + kc, as f32 rows
                // `wstride` apart.
                let (wp, wstride) = match w {
                    WeightRows::F32(w) => (w.as_ptr().add(j0 * k + k0), k),
                    WeightRows::Bf16(w) => {
                        for r in 0..rows {
                            widen_bf16(&w[(j0 + r) * k + k0..][..kc], &mut wide[r * KC..]);
                        }
                        (wide.as_ptr(), KC)
                    }
                    WeightRows::Q8_0(w) => {
                        let row = k / 32 * Q8_0_BYTES;
                        for r in 0..rows {
                            let blocks = &w[(j0 + r) * row + k0 / 32 * Q8_0_BYTES..];
                            widen_q8_0(&blocks[..kc / 32 * Q8_0_BYTES], &mut wide[r * KC..]);
                        }
                        (wide.as_ptr(), KC)
                    }
                };
                let mut r0 = 0;
                while r0 < m {
                    let xr = x.as_ptr().add(r0 * stride + k0);
                    let sr = sums.as_mut_ptr().add(r0 * J);
                    match (m - r0).min(4) {
                        4 => block::<4>(xr, stride, wp, wstride, rows, kc, sr),
                        3 => block::<3>(xr, stride, wp, wstride, rows, kc, sr),
                        2 => block::<2>(xr, stride, wp, wstride, rows, kc, sr),
                        _ => block::<1>(xr, stride, wp, wstride, rows, kc, sr),
                    }
                    r0 += 4;
                }
                k0 += kc;
            }
            for i in 0..m {
                store(i, j0, &sums[i * J..][..rows]);
            }
            j0 += rows;
        }
    }

    /// `sums[i·J + c] += x_i · w_c` over `kc` columns for `R` input rows and
    /// the block's `rows` weight rows, four weight rows at a time.
    #[inline(always)]
    unsafe fn block<const R: usize>(
        x: *const f32,
        stride: usize,
        w: *const f32,
        wstride: usize,
        rows: usize,
        kc: usize,
        sums: *mut f32,
    ) {
        let mut c = 0;
        while c + 4 <= rows {
            micro::<R, 4>(x, stride, w.add(c * wstride), wstride, kc, sums.add(c));
            c += 4;
        }
        while c < rows {
            micro::<R, 1>(x, stride, w.add(c * wstride), wstride, kc, sums.add(c));
            c += 1;
        }
    }

    /// `R` input rows against `C` ≤ 4 weight rows: `R·C` independent sums.
    #[inline(always)]
    unsafe fn micro<const R: usize, const C: usize>(
        x: *const f32,
        stride: usize,
        w: *const f32,
        wstride: usize,
        kc: usize,
        sums: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut c = 0;
        while c < kc {
            let wv: [__m512; C] = std::array::from_fn(|j| _mm512_loadu_ps(w.add(j * wstride + c)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(r * stride + c));
                for (a, wv) in acc.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wv, *a);
                }
            }
            c += 16;
        }
        for (r, acc) in acc.iter().enumerate() {
            let total = reduce4(acc);
            let s = sums.add(r * J);
            for (i, t) in total[..C].iter().enumerate() {
                *s.add(i) += t;
            }
        }
    }

    /// `src` (bf16) widened into the start of `dst`.
    #[inline(always)]
    unsafe fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
        assert!(dst.len() >= src.len() && src.len().is_multiple_of(16));
        for (i, chunk) in src.chunks_exact(16).enumerate() {
            let h = _mm256_loadu_si256(chunk.as_ptr() as *const __m256i);
            let v = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
            _mm512_storeu_ps(dst.as_mut_ptr().add(16 * i), _mm512_castsi512_ps(v));
        }
    }

    /// Q8_0 blocks `src` dequantized into the start of `dst`.
    #[inline(always)]
    unsafe fn widen_q8_0(src: &[u8], dst: &mut [f32]) {
        assert!(dst.len() >= src.len() / Q8_0_BYTES * 32);
        for (b, block) in src.chunks_exact(Q8_0_BYTES).enumerate() {
            let bits = u16::from_le_bytes([block[0], block[1]]);
            let scale = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
            for i in 0..2 {
                let q = _mm_loadu_si128(block.as_ptr().add(2 + 16 * i) as *const __m128i);
                let v = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
                _mm512_storeu_ps(dst.as_mut_ptr().add(32 * b + 16 * i), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    /// Whether this CPU runs `simd` (detection picks only the widest).
    fn simd_available(simd: Simd) -> bool {
        matches!(
            (Simd::detect(), simd),
            (_, Simd::Portable) | (Simd::Avx512, _) | (Simd::Avx2, Simd::Avx2)
        )
    }

    #[test]
    fn portable_tiles_equal_the_simd_ones() {
        let k = 200;
        let x: Vec<f32> = (0..4 * k)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 9.0)
            .collect();
        let w: Vec<f32> = (0..k).map(|i| ((i * 5 % 19) as f32 - 9.0) / 7.0).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let q = candle_core::quantized::QTensor::quantize(
            &candle_core::Tensor::from_vec(w[..192].to_vec(), (1, 192), &candle_core::Device::Cpu)
                .unwrap(),
            candle_core::quantized::GgmlDType::Q8_0,
        )
        .unwrap();
        let q = q.data().unwrap().to_vec();
        let xq: Vec<f32> = x.chunks(k).flat_map(|r| r[..192].to_vec()).collect();
        for t in 1..=4 {
            let run = |simd: Simd| {
                [
                    F32_TILES.run(simd, &w, &x, k, t, k),
                    BF16_TILES.run(simd, &wb, &x, k, t, k),
                    Q8_0_TILES.run(simd, &q, &xq, 192, t, 192),
                ]
            };
            let portable = run(Simd::Portable);
            for simd in [Simd::Avx2, Simd::Avx512] {
                if !simd_available(simd) {
                    continue;
                }
                let simd_dots = run(simd);
                for (p, s) in portable.iter().flatten().zip(simd_dots.iter().flatten()) {
                    assert!(
                        (p - s).abs() < 1e-4 * (1.0 + p.abs()),
                        "{simd:?}, t = {t}: {p} vs {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn shared_input_equals_one_call_per_weight() {
        let (m, k, n) = (3, 48, 10);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        let w: Vec<Vec<f32>> = (0..2)
            .map(|s| {
                (0..n * k)
                    .map(|i| ((i * 7 + s) % 31) as f32 / 15.0 - 1.0)
                    .collect()
            })
            .collect();
        let both = matmul_shared(
            &x,
            m,
            k,
            &[WeightRows::F32(&w[0]), WeightRows::F32(&w[1])],
            n,
        );
        let one: Vec<Vec<f32>> = w
            .iter()
            .map(|w| matmul_rows(&x, m, k, WeightRows::F32(w), n))
            .collect();
        for i in 0..m {
            for g in 0..2 {
                assert_eq!(&both[i * 2 * n + g * n..][..n], &one[g][i * n..][..n]);
            }
        }
    }

    #[test]
    fn q8_0_matches_candle_dequantized() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        for (m, k, n) in [
            (1, 32, 3),
            (3, 96, 40),
            (4, 256, 17),
            (6, 64, 33),
            (5, 544, 37),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 17 % 89) as f32 - 44.0) / 40.0)
                .collect();
            let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
            let deq = crate::layers::testing::dequantized(&q);
            let expected = reference(&x, m, k, &deq, n);
            let data = q.data().unwrap();
            let got = matmul_rows(&x, m, k, WeightRows::Q8_0(&data), n);
            for i in 0..m * n {
                assert!(
                    (expected[i] - got[i]).abs() < 1e-4 * (1.0 + expected[i].abs()),
                    "q8_0 {m}x{k}x{n} at {i}: {} vs {}",
                    expected[i],
                    got[i]
                );
            }
        }
    }

    #[test]
    fn matches_a_plain_matmul_for_every_shape_edge() {
        for (m, k, n) in [
            (1, 16, 3),
            (3, 37, 40),
            (4, 64, 17),
            (7, 200, 65),
            (9, 5, 33),
            (1, 1024, 1),
            (5, 544, 37),
            (2, 16, 4),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 17 % 89) as f32 - 44.0) / 40.0)
                .collect();
            let expected = reference(&x, m, k, &w, n);
            let got = matmul_rows(&x, m, k, WeightRows::F32(&w), n);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wr: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let expected_b = reference(&x, m, k, &wr, n);
            let got_b = matmul_rows(&x, m, k, WeightRows::Bf16(&wb), n);
            for i in 0..m * n {
                assert!(
                    (expected[i] - got[i]).abs() < 1e-4 * (1.0 + expected[i].abs()),
                    "f32 {m}x{k}x{n} at {i}"
                );
                assert!(
                    (expected_b[i] - got_b[i]).abs() < 1e-4 * (1.0 + expected_b[i].abs()),
                    "bf16 {m}x{k}x{n} at {i}"
                );
            }
        }
    }
}
