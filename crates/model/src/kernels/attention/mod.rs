//! Absorbed multi-head latent attention read straight out of the paged cache
//! (DeepSeek-V2 paper, §2.1.2 and appendix C: the key projection is folded into
//! the query, the value projection is applied after attention).
//!
//! Each query row is `[q_lat (kv_lora_rank) | q_pe (qk_rope_head_dim)]` and each
//! cache row is `[c_kv | k_pe]`, so a score is one dot product of `latent_width`
//! numbers and the output is the attention-weighted sum of the `c_kv` parts. The
//! cache is read in place through each sequence's block table: nothing is gathered
//! into a contiguous copy. Work is split over (token, group of heads); within an
//! item every cache row is loaded once and used for all of its heads.
//!
//! - `plan`: how a call's tokens split into work items, and how split
//!   contexts merge.
//! - `unfused`: the attention step alone ([`absorbed_attention`]), between
//!   the per-head matrices the caller runs.
//! - `fused` and `phased`: the per-head matrices (`matrices`) and the
//!   attention in one parallel region, for few tokens and for any number.
//! - `item`: one work item's scores, softmax and weighted sums, with the
//!   `avx2` and `avx512` inner loops.
//! - `expanded`: the expanded form for prompts, where it costs less: per-head
//!   keys and values rebuilt from the latents, then tiled matrix products
//!   (in f32, or on AMX bf16 tiles where asked and the CPU has them:
//!   `tiles`).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod expanded;
mod fused;
mod item;
mod matrices;
mod phased;
mod plan;
#[cfg(test)]
mod tests;
mod tiled;
mod tiles;
mod unfused;

pub use expanded::{expanded_attention, expanded_pays, UpProjection};
pub(crate) use fused::{fused_absorbed_attention, fused_pays};
pub(crate) use matrices::HeadMatrices;
pub(crate) use phased::{phased_absorbed_attention, phases_fit};
pub use unfused::absorbed_attention;

/// Whether this CPU multiplies bf16 on AMX tiles, as the expanded form does
/// where asked (`AttentionDType::Bf16`).
pub fn bf16_tiles_available() -> bool {
    tiles::available()
}

/// Where one sequence's tokens sit in the flattened batch and in the cache.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpan<'a> {
    /// Row of its first new token in the batch.
    pub start: usize,
    pub num_new: usize,
    /// Tokens already in the cache before this step.
    pub num_cached: usize,
    pub block_table: &'a [u32],
}

/// Geometry of a call.
#[derive(Debug, Clone, Copy)]
pub struct LatentShape {
    pub heads: usize,
    /// `kv_lora_rank`: the part of each row that is also the value.
    pub rank: usize,
    /// `kv_lora_rank + qk_rope_head_dim`.
    pub width: usize,
    pub block_size: usize,
}

/// A number of the latent cache: f32, or bf16 (half the bytes a decode
/// step reads at long context), widened to f32 as the kernels load it, so
/// that the arithmetic is f32 whatever the storage.
pub trait Latent: Copy + Default + Send + Sync + 'static {
    /// The storage's nearest value to `v` (bf16: rounded to nearest even).
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;

    /// Whether widening costs enough that the absorbed kernel widens rows
    /// once into a scratch for all heads rather than as each reads them.
    const WIDEN_FIRST: bool = false;

    /// `rows` as f32 rows, where `Self` is f32.
    fn as_f32<'r, 'c>(_rows: &'r [&'c [Self]]) -> Option<&'r [&'c [f32]]> {
        None
    }

    /// `dst` := `src`, widened.
    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }

    /// Sixteen numbers from `p` as f32 lanes, those `m` masks off neither
    /// read nor faulted on (zero).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512BW; the unmasked lanes lie in memory
    /// `p` may read.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self, m: std::arch::x86_64::__mmask16) -> std::arch::x86_64::__m512;

    /// Eight numbers from `p` as f32 lanes.
    ///
    /// # Safety
    /// The CPU has AVX2; the eight lie in memory `p` may read.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Latent for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> f32 {
        v
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn as_f32<'r, 'c>(rows: &'r [&'c [f32]]) -> Option<&'r [&'c [f32]]> {
        Some(rows)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32, m: std::arch::x86_64::__mmask16) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_maskz_loadu_ps(m, p)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Latent for half::bf16 {
    #[inline(always)]
    fn from_f32(v: f32) -> half::bf16 {
        half::bf16::from_f32(v)
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }

    /// A bf16 is the top half of an f32: widening is a shift of each
    /// 16-bit lane into the top of a 32-bit one.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(
        p: *const half::bf16,
        m: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let bits = _mm256_maskz_loadu_epi16(m, p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let bits = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    }
}

/// fp8 e4m3 (`--kv-cache-dtype fp8`): 4 significant bits, ±448 at most
/// (larger numbers saturate). Widened through f16: an e4m3 number's bits
/// moved into an f16's are the number times 2⁻⁸, subnormals included, and
/// the f16-to-f32 conversion is exact. The vector loads sign-extend each
/// byte to 16 bits and shift it left by 7, which puts the sign in bit 15
/// and the exponent and mantissa in place; [`F16_BITS`] clears bit 14, the
/// sign's second copy.
impl Latent for float8::F8E4M3 {
    const WIDEN_FIRST: bool = true;

    #[inline(always)]
    fn from_f32(v: f32) -> float8::F8E4M3 {
        float8::F8E4M3::from_f32(v)
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        float8::F8E4M3::to_f32(&self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(
        p: *const float8::F8E4M3,
        m: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let words = _mm256_cvtepi8_epi16(_mm_maskz_loadu_epi8(m, p as *const i8));
        let half = _mm256_and_si256(_mm256_slli_epi16::<7>(words), _mm256_set1_epi16(F16_BITS));
        _mm512_mul_ps(_mm512_cvtph_ps(half), _mm512_set1_ps(256.0))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const float8::F8E4M3) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let words = _mm_cvtepi8_epi16(_mm_loadl_epi64(p as *const __m128i));
        let half = _mm_and_si128(_mm_slli_epi16::<7>(words), _mm_set1_epi16(F16_BITS));
        _mm256_mul_ps(_mm256_cvtph_ps(half), _mm256_set1_ps(256.0))
    }
}

/// Every bit of an f16 but its exponent's highest (see the fp8 loads).
#[cfg(target_arch = "x86_64")]
const F16_BITS: i16 = !0x4000;

/// The dot product of `a` with `b`, widened.
#[inline(always)]
pub(crate) fn dot<E: Latent>(a: &[f32], b: &[E]) -> f32 {
    // Eight independent accumulators let the compiler keep them in vector lanes.
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y.to_f32();
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy<E: Latent>(out: &mut [f32], alpha: f32, x: &[E]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += alpha * v.to_f32();
    }
}

/// Per head of a work item: the largest score and the sum of `exp(score -
/// max)` over its rows; its output rows are left unnormalised.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RowStats {
    pub(super) max: f32,
    pub(super) sum: f32,
}

/// The head-major scores' block of `R` keys from `keys[t]` on: the keys
/// (the last block repeats its final one to fill), how many are real, and
/// the next block's rows, to be asked for while this one is computed (the
/// last block asks for its own again, which costs nothing).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn key_block<'k, const R: usize>(
    keys: &[&'k [f32]],
    t: usize,
) -> ([&'k [f32]; R], usize, [*const f32; R]) {
    let take = (keys.len() - t).min(R);
    let block = std::array::from_fn(|r| keys[t + r.min(take - 1)]);
    let next = std::array::from_fn(|r| keys[(t + R + r).min(keys.len() - 1)].as_ptr());
    (block, take, next)
}

/// `rows` := the cache rows at positions `positions` of `span`'s context,
/// read in place through its block table.
pub(super) fn context_rows<'c, E: Latent>(
    span: &SeqSpan,
    positions: std::ops::Range<usize>,
    cache: &'c [E],
    shape: LatentShape,
    rows: &mut Vec<&'c [E]>,
) {
    let LatentShape {
        width, block_size, ..
    } = shape;
    rows.clear();
    rows.extend(positions.map(|t| {
        let slot = span.block_table[t / block_size] as usize * block_size + t % block_size;
        &cache[slot * width..(slot + 1) * width]
    }));
}
