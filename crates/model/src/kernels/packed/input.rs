//! The packed kernels' input: each row quantized to int8 per 32-number
//! block, with the block's scale, its sum, the sum's `-128` multiple
//! that undoes the Q8_0 weights' `+128` offset, and the `-32` multiples of
//! its two halves' sums that undo the Q6_K levels' `+32` (Q6_K scales
//! weights 16 at a time).

use super::BLOCK;

/// One input row's block quantized as Q8_0 quantizes weights: scale
/// `max |x| / 127`, numbers rounded to the nearest multiple (ties to even,
/// as the vector instructions round). The kernel's vector version computes
/// the same numbers.
#[cfg(test)]
pub(super) fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * inv).round_ties_even() as i8;
    }
    scale
}

/// Inputs quantized per block: `[rows][width]` numbers, a scale and a sum
/// per block.
pub(super) struct Quantized {
    pub(super) q: Vec<i8>,
    pub(super) scales: Vec<f32>,
    pub(super) sums: Vec<i32>,
    /// `-128 ·` each sum: the Q8_0 kernel's correction for its `+128`.
    pub(super) offsets: Vec<i32>,
    /// `-32 ·` each block's first 16 numbers' sum, then its last 16's:
    /// the Q6_K kernel's correction for its levels' `+32`.
    pub(super) half_offsets: Vec<i32>,
}

impl Quantized {
    /// Room for `len` numbers (whole blocks).
    pub(super) fn zeroed(len: usize) -> Quantized {
        let blocks = len / BLOCK;
        Quantized {
            q: vec![0; len],
            scales: vec![0.0; blocks],
            sums: vec![0; blocks],
            offsets: vec![0; blocks],
            half_offsets: vec![0; 2 * blocks],
        }
    }

    pub(super) fn view(&self) -> QuantizedView<'_> {
        QuantizedView {
            q: &self.q,
            scales: &self.scales,
            sums: &self.sums,
            offsets: &self.offsets,
            half_offsets: &self.half_offsets,
        }
    }
}

/// A [`Quantized`] input, borrowed.
pub(super) struct QuantizedView<'a> {
    pub(super) q: &'a [i8],
    pub(super) scales: &'a [f32],
    pub(super) sums: &'a [i32],
    pub(super) offsets: &'a [i32],
    pub(super) half_offsets: &'a [i32],
}

impl<'a> QuantizedView<'a> {
    /// Views of the `k` numbers from each of `starts` (block boundaries).
    pub(super) fn rows(&self, starts: impl Iterator<Item = usize>, k: usize) -> Vec<Row<'a>> {
        let blocks = k / BLOCK;
        starts
            .map(|start| {
                let first = start / BLOCK;
                Row {
                    q: &self.q[start..][..k],
                    scales: &self.scales[first..][..blocks],
                    sums: &self.sums[first..][..blocks],
                    offsets: &self.offsets[first..][..blocks],
                    half_offsets: &self.half_offsets[2 * first..][..2 * blocks],
                }
            })
            .collect()
    }
}

/// Every block of `x` quantized (see [`vnni::quantize`]) into the
/// buffers of its blocks.
pub(super) fn quantize_into(
    x: &[f32],
    q: &mut [i8],
    scales: &mut [f32],
    sums: &mut [i32],
    offsets: &mut [i32],
    half_offsets: &mut [i32],
) {
    let blocks = x.len() / BLOCK;
    assert!(q.len() == x.len() && scales.len() == blocks);
    assert!(sums.len() == blocks && offsets.len() == blocks);
    assert!(half_offsets.len() == 2 * blocks);
    // SAFETY: only reached once `available` has checked the CPU.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        vnni::quantize(x, q, scales, sums, offsets, half_offsets)
    };
}

/// Every block of `x` quantized.
pub(super) fn quantize_rows(x: &[f32]) -> Quantized {
    let mut out = Quantized::zeroed(x.len());
    let Quantized {
        q,
        scales,
        sums,
        offsets,
        half_offsets,
    } = &mut out;
    quantize_into(x, q, scales, sums, offsets, half_offsets);
    out
}

/// One quantized input row.
pub(crate) struct Row<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) scales: &'a [f32],
    pub(crate) sums: &'a [i32],
    pub(crate) offsets: &'a [i32],
    /// Per block, `-32 ·` the sums of its two halves of 16.
    pub(crate) half_offsets: &'a [i32],
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// Each 32-number block of `x`: scale `max |x| / 127`, the numbers over
    /// it rounded to the nearest integer (ties to even), their sum, and
    /// the offsets of the sum and of its halves' sums.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512BW (the lengths are checked).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize(
        x: &[f32],
        q: &mut [i8],
        scales: &mut [f32],
        sums: &mut [i32],
        offsets: &mut [i32],
        half_offsets: &mut [i32],
    ) {
        let blocks = x.len() / BLOCK;
        assert!(q.len() >= blocks * BLOCK && scales.len() >= blocks);
        assert!(sums.len() >= blocks && offsets.len() >= blocks);
        assert!(half_offsets.len() >= 2 * blocks);
        for b in 0..blocks {
            let p = x.as_ptr().add(b * BLOCK);
            let (v0, v1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let scale = max / 127.0;
            let inv = _mm512_set1_ps(if scale == 0.0 { 0.0 } else { 1.0 / scale });
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let q0 = _mm512_cvtps_epi32(_mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(v0, inv)));
            let q1 = _mm512_cvtps_epi32(_mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(v1, inv)));
            let dst = q.as_mut_ptr().add(b * BLOCK);
            _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(dst.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
            scales[b] = scale;
            let (h0, h1) = (_mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1));
            half_offsets[2 * b] = -32 * h0;
            half_offsets[2 * b + 1] = -32 * h1;
            sums[b] = h0 + h1;
            offsets[b] = -128 * sums[b];
        }
    }
}
