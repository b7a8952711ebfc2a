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

use crate::kernels::parallel::{self, Disjoint};

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
    /// Callable where [`Simd::detect`] found AVX-512.
    #[cfg(target_arch = "x86_64")]
    one_row: unsafe fn(&[W], &[f32], usize) -> f32,
    /// Callable where [`Simd::detect`] found AVX2 (or AVX-512).
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
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod blocked512;

#[cfg(test)]
mod tests;
