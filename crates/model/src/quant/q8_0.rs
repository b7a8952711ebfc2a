//! Q8_0 weights into the packed layout of [`PackedQ8`]: from candle's
//! blocks, or straight from f32 numbers by GGML's own arithmetic.

use crate::kernels::packed::{Lines, PackedQ8, BLOCK, Q8_0_BYTES, TILE};

/// Row `row`'s block `b` (of `blocks` a row) of a Q8_0 weight into the
/// packed layout: its scale `d`, its 32 numbers `q` stored `+ 128` as
/// `[8 k-quads][16 rows][4 bytes]` of its tile.
fn put_block(
    scales: &mut [half::f16],
    quads: &mut [u8],
    (row, b, blocks): (usize, usize, usize),
    d: half::f16,
    q: impl Iterator<Item = i8>,
) {
    let (tile, r) = (row / TILE, row % TILE);
    scales[(tile * blocks + b) * TILE + r] = d;
    let base = (tile * blocks + b) * TILE * BLOCK;
    for (i, q) in q.enumerate() {
        let (quad, byte) = (i / 4, i % 4);
        quads[base + (quad * TILE + r) * 4 + byte] = (q as i16 + 128) as u8;
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
        let mut scales = vec![half::f16::ZERO; n * blocks];
        let mut quads = Lines::zeroed(n * k);
        for row in 0..n {
            for b in 0..blocks {
                let block = &data[(row * blocks + b) * Q8_0_BYTES..][..Q8_0_BYTES];
                let d = half::f16::from_le_bytes([block[0], block[1]]);
                let q = block[2..].iter().map(|&q| q as i8);
                put_block(&mut scales, &mut quads, (row, b, blocks), d, q);
            }
        }
        Some(PackedQ8 {
            n,
            k,
            scales,
            quads,
        })
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
        let blocks = k / BLOCK;
        let mut scales = vec![half::f16::ZERO; n * blocks];
        let mut quads = Lines::zeroed(n * k);
        let mut q = [0i8; BLOCK];
        for row in 0..n {
            for b in 0..blocks {
                let x = &w[row * k + b * BLOCK..][..BLOCK];
                // SAFETY: `available` checked the CPU's features above.
                #[cfg(target_arch = "x86_64")]
                let d = unsafe { vnni::quantize_q8_0(x, &mut q) };
                #[cfg(not(target_arch = "x86_64"))]
                let d = 0.0;
                let d = half::f16::from_f32(d);
                put_block(
                    &mut scales,
                    &mut quads,
                    (row, b, blocks),
                    d,
                    q.iter().copied(),
                );
            }
        }
        Some(PackedQ8 {
            n,
            k,
            scales,
            quads,
        })
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
