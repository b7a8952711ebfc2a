//! Q8_0 weights into the packed layout of [`PackedQ8`]: from candle's
//! blocks, or straight from f32 numbers by GGML's own arithmetic.

use crate::kernels::packed::{Lines, PackedQ8, BLOCK, Q8_0_BYTES, TILE};
use crate::kernels::parallel::{for_ranges_if, Disjoint};

/// A `[n, k]` Q8_0 weight in the packed layout: `[n / 16 tiles][k / 32
/// blocks]` of 16 scales and `[8 k-quads][16 rows][4 bytes]` numbers stored
/// `+ 128`. `block(row, b, q)` gives row `row`'s block `b`: its scale, its
/// 32 numbers into `q`. With `parallel`, tiles are filled on the compute
/// pool (each one's scales and numbers are contiguous): repacking a GGUF
/// file's blocks one tile after another made most of its load. Callers
/// that already split a weight over threads of their own pass `false`.
fn pack(
    n: usize,
    k: usize,
    parallel: bool,
    block: impl Fn(usize, usize, &mut [i8; BLOCK]) -> half::f16 + Sync,
) -> PackedQ8 {
    let blocks = k / BLOCK;
    let mut scales = vec![half::f16::ZERO; n * blocks];
    let mut quads = Lines::zeroed(n * k);
    let tile_scales = blocks * TILE;
    let tile_quads = blocks * TILE * BLOCK;
    let (scale_out, quad_out) = (Disjoint::new(&mut scales), Disjoint::new(&mut quads));
    let fill = |tiles: std::ops::Range<usize>| {
        let mut q = [0i8; BLOCK];
        for tile in tiles {
            // SAFETY: each tile's scales and numbers are its own ranges,
            // inside the buffers, which outlive the parallel call.
            let (scales, quads) = unsafe {
                (
                    scale_out.slice(tile * tile_scales..(tile + 1) * tile_scales),
                    quad_out.slice(tile * tile_quads..(tile + 1) * tile_quads),
                )
            };
            for r in 0..TILE {
                for b in 0..blocks {
                    scales[b * TILE + r] = block(tile * TILE + r, b, &mut q);
                    // A quad of four numbers at a time, each `+ 128`
                    // (flipping a byte's top bit): byte by byte this
                    // loop made most of a GGUF file's load.
                    let out = &mut quads[b * TILE * BLOCK..][..TILE * BLOCK];
                    for (quad, four) in q.as_chunks::<4>().0.iter().enumerate() {
                        let word = u32::from_ne_bytes(four.map(|v| v as u8)) ^ 0x8080_8080;
                        out[(quad * TILE + r) * 4..][..4].copy_from_slice(&word.to_ne_bytes());
                    }
                }
            }
        }
    };
    for_ranges_if(parallel, n / TILE, fill);
    PackedQ8 {
        n,
        k,
        scales,
        quads,
    }
}

impl PackedQ8 {
    /// `data`: candle's Q8_0 blocks of a `[n, k]` weight, row-major. `None`
    /// when the shape does not tile.
    pub fn new(data: &[u8], n: usize, k: usize) -> Option<PackedQ8> {
        if !n.is_multiple_of(TILE) || !k.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = k / BLOCK;
        assert_eq!(
            data.len(),
            n * blocks * Q8_0_BYTES,
            "not a [n, k] Q8_0 weight"
        );
        Some(pack(n, k, true, |row, b, q| {
            let block = &data[(row * blocks + b) * Q8_0_BYTES..][..Q8_0_BYTES];
            for (q, &byte) in q.iter_mut().zip(&block[2..]) {
                *q = byte as i8;
            }
            half::f16::from_le_bytes([block[0], block[1]])
        }))
    }

    /// `w` (`[n, k]` f32, row-major) quantized to Q8_0 as candle (GGML)
    /// quantizes it, and packed: the same bytes as [`Self::new`] on
    /// candle's blocks, without them. Per 32 numbers `d = max|x| / 127`
    /// (stored as f16) and `q = round(x · (1/d))`, halves away from zero.
    /// candle does it one number at a time, with a call to `roundf` each,
    /// which made most of loading a model as q8_0.
    /// `None` when the shape does not tile or the CPU lacks the kernels.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Option<PackedQ8> {
        if !Self::available() || !n.is_multiple_of(TILE) || !k.is_multiple_of(BLOCK) {
            return None;
        }
        assert_eq!(w.len(), n * k, "not a [n, k] weight");
        // `pack_rows` calls this on row parts of its own threads.
        Some(pack(n, k, false, |row, b, q| {
            let x = &w[row * k + b * BLOCK..][..BLOCK];
            // SAFETY: `available` checked the CPU's features above.
            #[cfg(target_arch = "x86_64")]
            let d = unsafe { vnni::quantize_q8_0(x, q) };
            #[cfg(not(target_arch = "x86_64"))]
            let d = {
                let _ = (x, q);
                0.0
            };
            half::f16::from_f32(d)
        }))
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// One block of 32 weights as GGML's Q8_0 quantizes it (see
    /// `PackedQ8::quantize`): returns `d`, `q` takes the numbers. The same
    /// f32 operations as candle's scalar loop, so the same results; its
    /// `roundf` (halves away from zero) is a truncation plus one where the
    /// dropped fraction is at least a half.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512BW (`x` is checked to hold a block).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_q8_0(x: &[f32], q: &mut [i8; BLOCK]) -> f32 {
        assert!(x.len() >= BLOCK);
        let p = x.as_ptr();
        let (v0, v1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let round = |v: __m512| {
            const TRUNC: i32 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
            let t = _mm512_roundscale_ps::<TRUNC>(v);
            let half = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
                _mm512_abs_ps(_mm512_sub_ps(v, t)),
                _mm512_set1_ps(0.5),
            );
            // ±1 with `v`'s sign.
            let one = _mm512_or_ps(_mm512_set1_ps(1.0), _mm512_and_ps(v, _mm512_set1_ps(-0.0)));
            _mm512_cvttps_epi32(_mm512_mask_add_ps(t, half, t, one))
        };
        let (q0, q1) = (round(_mm512_mul_ps(v0, id)), round(_mm512_mul_ps(v1, id)));
        let dst = q.as_mut_ptr();
        _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(dst.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
        d
    }
}
