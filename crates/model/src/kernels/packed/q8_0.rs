//! Q8_0 weights in the packed layout: per 16-row tile and 32-number
//! block, `[8 k-quads][16 rows][4 bytes]` of weights `+ 128`, beside the
//! rows' f16 scales. Packing them is load-time work ([`crate::quant`]).

use super::{Lines, BLOCK, TILE};

/// One `[n, k]` Q8_0 weight (`n` a multiple of 16, `k` of 32), repacked.
#[derive(Debug, Clone)]
pub struct PackedQ8 {
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// `[n / 16][k / 32][16]`: each row's block scale, as Q8_0 stores it.
    pub(crate) scales: Vec<half::f16>,
    /// `[n / 16][k / 32][8][16][4]`: weights + 128.
    pub(crate) quads: Lines,
}

impl PackedQ8 {
    /// Whether this CPU runs the packed kernel.
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `top` above `bottom` (both `[_, k]`): one `[n_top + n_bottom, k]`
    /// weight. Tiles hold whole rows, so their tiles simply follow on.
    pub fn stack(mut top: PackedQ8, bottom: PackedQ8) -> PackedQ8 {
        assert_eq!(top.k, bottom.k, "stacked weights differ in width");
        top.n += bottom.n;
        top.scales.extend(bottom.scales);
        top.quads.extend(bottom.quads);
        top
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Tile `tile`'s block scales and packed weights.
    pub(crate) fn tile(&self, tile: usize) -> (&[half::f16], &[u8]) {
        let blocks = self.k / BLOCK;
        let scales = &self.scales[tile * blocks * TILE..][..blocks * TILE];
        let quads = &self.quads[tile * blocks * TILE * BLOCK..][..blocks * TILE * BLOCK];
        (scales, quads)
    }

    /// Bytes a full read takes.
    pub fn bytes(&self) -> usize {
        self.quads.len() + self.scales.len() * 2
    }

    /// The weight's numbers, `[n, k]` row-major, as Q8_0 dequantizes them
    /// (each byte times its block's scale).
    pub fn dequantize(&self) -> Vec<f32> {
        let blocks = self.k / BLOCK;
        let mut out = vec![0f32; self.n * self.k];
        for (row, out) in out.chunks_exact_mut(self.k).enumerate() {
            let (tile, r) = (row / TILE, row % TILE);
            for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                let scale = self.scales[(tile * blocks + b) * TILE + r].to_f32();
                let base = (tile * blocks + b) * TILE * BLOCK;
                for (i, o) in out.iter_mut().enumerate() {
                    let q = self.quads[base + (i / 4 * TILE + r) * 4 + i % 4] as i16 - 128;
                    *o = q as f32 * scale;
                }
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vnni {
    use std::arch::x86_64::*;

    use super::super::{Row, ROWS};
    use super::{BLOCK, TILE};
    use crate::kernels::x86::{prefetch, tile_prefetches};

    /// How far ahead of the block in use the weights are prefetched, on
    /// CPUs that want it (`x86::tile_prefetches`; 4 KB;
    /// past a tile's end, into the next tile, which is usually the next
    /// one the thread takes). Without it the kernel waited on its weight
    /// loads; 4 or 16 blocks ahead were slower than 8 (see the benches'
    /// README).
    const PREFETCH_BLOCKS: usize = 8;

    /// The 16 dots of one tile's rows with each of the first `R` of `rows`:
    /// every weight quad is loaded once for all of them. Below four rows,
    /// each row keeps two integer sums (even and odd quads) so that the
    /// VNNI instructions do not wait on each other; from four, the rows'
    /// sums are independent enough, and one each saves an add per block.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX-512VNNI; `R` is at most
    /// [`ROWS`] (the lengths are checked).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile<const R: usize>(
        rows: &[Row],
        scales: &[half::f16],
        quads: &[u8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let blocks = rows[0].scales.len();
        assert!(scales.len() >= blocks * TILE && quads.len() >= blocks * TILE * BLOCK);
        for row in &rows[..R] {
            assert!(row.q.len() >= blocks * BLOCK && row.offsets.len() >= blocks);
        }
        let chains = if R >= 4 { 1 } else { 2 };
        let qp = quads.as_ptr();
        let on = tile_prefetches(R);
        let mut total = [_mm512_setzero_ps(); R];
        for b in 0..blocks {
            let ahead = qp.wrapping_add((b + PREFETCH_BLOCKS) * BLOCK * TILE);
            prefetch(on, ahead, BLOCK * TILE / 64);
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            for pair in 0..BLOCK / 8 {
                for (half, quad) in [2 * pair, 2 * pair + 1].into_iter().enumerate() {
                    let half = half % chains;
                    let w = _mm512_loadu_si512(qp.add((b * BLOCK / 4 + quad) * 64) as *const _);
                    for (a, row) in acc.iter_mut().zip(rows) {
                        let x = (row.q.as_ptr().add(b * BLOCK + quad * 4) as *const i32)
                            .read_unaligned();
                        a[half] = _mm512_dpbusd_epi32(a[half], w, _mm512_set1_epi32(x));
                    }
                }
            }
            let w_scales =
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(b * TILE) as *const _));
            for ((t, a), row) in total.iter_mut().zip(&acc).zip(rows) {
                // (w + 128)·x summed, less 128·Σx: the block's exact dot.
                let sum = if chains == 1 {
                    a[0]
                } else {
                    _mm512_add_epi32(a[0], a[1])
                };
                let dot = _mm512_add_epi32(sum, _mm512_set1_epi32(row.offsets[b]));
                let scale = _mm512_mul_ps(w_scales, _mm512_set1_ps(row.scales[b]));
                *t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *t);
            }
        }
        for (o, t) in out.iter_mut().zip(&total) {
            _mm512_storeu_ps(o.as_mut_ptr(), *t);
        }
    }
}
