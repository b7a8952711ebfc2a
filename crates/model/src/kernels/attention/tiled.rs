//! The expanded form on AMX bf16 tiles (`AttentionDType::Bf16`): its
//! up-projection and both attention products as [`tiles::matmul`]s.
//!
//! Per call, each head's queries are scaled and rounded to bf16 (`A` rows,
//! the `nope` and `rope` parts apart) and its `W_UKᵀ` and `W_UV` packed as
//! `B` operands. Per pass, the latent rows are rounded once into `A` rows
//! (exact on a bf16 cache) and their shared `k_pe` parts packed; each
//! head's keys (`c · W_UKᵀ`) and values (`c · W_UVᵀ`) are tile products
//! of those, a [`UP_ROWS`] at a time through an f32 scratch that stays in
//! the core's cache, packed as the `B` operands of the scores and of the
//! weighted sums. A tile's scores are then two products (`nope` and
//! `rope` parts), its weights rounded to bf16, and its outputs one product.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::expanded::{Softmax, TileRows, KEY_TILE, QUERY_TILE};
use super::tiles::Layout::{ByColumns, ByRows};
#[cfg(target_arch = "x86_64")]
use super::tiles::Term;
use super::tiles::{self, Layout, Packed, DEPTH, ROWS};
use super::UpProjection;
use crate::kernels::parallel::Disjoint;
#[cfg(target_arch = "x86_64")]
use crate::kernels::x86::exp512;

/// Rows of the latents one task up-projects at a time.
const UP_ROWS: usize = KEY_TILE;

/// `n` rounded up to a multiple of `m`.
fn up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// The shapes of a call's operands, and each buffer's numbers per head (or
/// per pass).
#[derive(Clone, Copy, Default)]
struct Geometry {
    heads: usize,
    /// Query rows per head, padded to 16.
    new: usize,
    nope: usize,
    rope: usize,
    rank: usize,
    v_dim: usize,
    /// Context rows per pass, padded to 32.
    rows: usize,
}

impl Geometry {
    fn q_nope(&self) -> usize {
        self.new * up(self.nope, DEPTH)
    }
    fn q_pe(&self) -> usize {
        self.new * up(self.rope, DEPTH)
    }
    fn uk(&self) -> usize {
        up(self.rank, DEPTH) * up(self.nope, ROWS)
    }
    fn uv(&self) -> usize {
        up(self.v_dim, ROWS) * up(self.rank, DEPTH)
    }
    fn latents(&self) -> usize {
        self.rows * up(self.rank, DEPTH)
    }
    fn k_pe(&self) -> usize {
        self.rows * up(self.rope, DEPTH)
    }
    fn keys(&self) -> usize {
        self.rows * up(self.nope, DEPTH)
    }
    fn values(&self) -> usize {
        self.rows * up(self.v_dim, ROWS)
    }
}

/// The buffers, kept from call to call with the expanded form's others.
#[derive(Default)]
pub(super) struct TileOperands {
    q_nope: Vec<u16>,
    q_pe: Vec<u16>,
    uk: Vec<u16>,
    uv: Vec<u16>,
    latents: Vec<u16>,
    k_pe: Vec<u16>,
    keys: Vec<u16>,
    values: Vec<u16>,
    geometry: Geometry,
}

impl TileOperands {
    /// Sized for a call of `new` query rows and passes of `pass_rows`,
    /// zeroed (the paddings stay so).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prepare(
        &mut self,
        heads: usize,
        new: usize,
        (nope, rope, rank, v_dim): (usize, usize, usize, usize),
        pass_rows: usize,
    ) -> &mut TileOperands {
        let g = Geometry {
            heads,
            new: up(new, ROWS),
            nope,
            rope,
            rank,
            v_dim,
            rows: up(pass_rows, DEPTH),
        };
        for (buffer, n) in [
            (&mut self.q_nope, heads * g.q_nope()),
            (&mut self.q_pe, heads * g.q_pe()),
            (&mut self.uk, 2 * heads * g.uk()),
            (&mut self.uv, 2 * heads * g.uv()),
            (&mut self.latents, g.latents()),
            (&mut self.k_pe, g.k_pe()),
            (&mut self.keys, heads * g.keys()),
            (&mut self.values, heads * g.values()),
        ] {
            buffer.clear();
            buffer.resize(n, 0);
        }
        self.geometry = g;
        self
    }

    /// Where the tasks write.
    pub(super) fn destinations(&mut self) -> Destinations {
        Destinations {
            q_nope: Disjoint::new(&mut self.q_nope),
            q_pe: Disjoint::new(&mut self.q_pe),
            uk: Disjoint::new(&mut self.uk),
            uv: Disjoint::new(&mut self.uv),
            latents: Disjoint::new(&mut self.latents),
            k_pe: Disjoint::new(&mut self.k_pe),
            keys: Disjoint::new(&mut self.keys),
            values: Disjoint::new(&mut self.values),
            geometry: self.geometry,
        }
    }
}

/// [`TileOperands`] written by several tasks, each its own heads or rows.
pub(super) struct Destinations {
    q_nope: Disjoint<u16>,
    q_pe: Disjoint<u16>,
    uk: Disjoint<u16>,
    uv: Disjoint<u16>,
    latents: Disjoint<u16>,
    k_pe: Disjoint<u16>,
    keys: Disjoint<u16>,
    values: Disjoint<u16>,
    geometry: Geometry,
}

impl Destinations {
    /// Head `h`'s query rows (`[new, nope + rope]`) times `scale`, rounded,
    /// and its up-projection matrices packed.
    ///
    /// # Safety
    /// No other task writes or reads head `h`'s operands meanwhile.
    pub(super) unsafe fn head(&self, h: usize, queries: &[f32], scale: f32, w: &UpProjection) {
        let g = self.geometry;
        let (nope, rope, rank, v_dim) = (g.nope, g.rope, g.rank, g.v_dim);
        let (ln, lr) = (up(nope, DEPTH), up(rope, DEPTH));
        let q_nope = self.q_nope.slice(h * g.q_nope()..(h + 1) * g.q_nope());
        let q_pe = self.q_pe.slice(h * g.q_pe()..(h + 1) * g.q_pe());
        for ((q, n), p) in queries
            .chunks_exact(nope + rope)
            .zip(q_nope.chunks_exact_mut(ln))
            .zip(q_pe.chunks_exact_mut(lr))
        {
            for (d, q) in n.iter_mut().zip(&q[..nope]) {
                *d = tiles::bf16_bits(q * scale);
            }
            for (d, q) in p.iter_mut().zip(&q[nope..]) {
                *d = tiles::bf16_bits(q * scale);
            }
        }
        // `W_UKᵀ` (`[rank, nope]`) sums over the latents' `rank`: by
        // columns; `W_UV` (`[v_dim, rank]`) too, by rows. Each as the bf16
        // nearest and the bf16 nearest to what that leaves: their two
        // products carry about 16 bits of the f32 matrix.
        let uk = &w.uk[h * rank * nope..][..rank * nope];
        let uv = &w.uv[h * v_dim * rank..][..v_dim * rank];
        let uk_pair = self.uk.slice(2 * h * g.uk()..2 * (h + 1) * g.uk());
        pack_split(ByColumns, uk, (rank, nope, nope), uk_pair);
        let uv_pair = self.uv.slice(2 * h * g.uv()..2 * (h + 1) * g.uv());
        pack_split(ByRows, uv, (v_dim, rank, rank), uv_pair);
    }

    /// The pass's latent rows from `first` (a multiple of 16) on, `rows`
    /// (widened, `rank + rope` apart): their `c_kv` parts rounded as `A`
    /// rows, their `k_pe` parts packed as the keys' shared `B` operand.
    ///
    /// # Safety
    /// No other task writes or reads those rows' operands meanwhile.
    pub(super) unsafe fn latents(&self, first: usize, rows: &[f32]) {
        let g = self.geometry;
        let (rank, width) = (g.rank, g.rank + g.rope);
        let count = rows.len() / width;
        assert!(first.is_multiple_of(ROWS));
        let (lr, lk) = (up(rank, DEPTH), up(g.rope, DEPTH));
        let a = self.latents.slice(first * lr..(first + count) * lr);
        for (a, row) in a.chunks_exact_mut(lr).zip(rows.chunks_exact(width)) {
            for (d, v) in a.iter_mut().zip(&row[..rank]) {
                *d = tiles::bf16_bits(*v);
            }
        }
        tiles::pack(
            ByRows,
            &rows[rank..],
            (count, g.rope, width),
            self.k_pe.slice(first * lk..(first + up(count, ROWS)) * lk),
        );
    }

    /// Head `h`'s keys (`c · W_UKᵀ`) and values (`c · W_UVᵀ`) of the pass's
    /// `rows` latent rows, on tiles, packed; `scratch` holds a [`UP_ROWS`]
    /// of them at a time in f32.
    ///
    /// # Safety
    /// The AMX bf16 products are available; [`Self::latents`] wrote the
    /// rows and [`Self::head`] head `h`'s matrices, and no task writes
    /// them meanwhile; no other task writes or reads head `h`'s keys and
    /// values.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn up_project(&self, h: usize, rows: usize, scratch: &mut Vec<f32>) {
        let g = self.geometry;
        let (lr, ln, n16, v16) = (
            up(g.rank, DEPTH),
            up(g.nope, DEPTH),
            up(g.nope, ROWS),
            up(g.v_dim, ROWS),
        );
        let latents = self.latents.view(0..g.latents());
        let (uk, uv) = (g.uk(), g.uv());
        let uk = |part: usize| {
            let at = (2 * h + part) * uk;
            Packed::new(ByColumns, self.uk.view(at..at + uk), g.rank, g.nope)
        };
        let uv = |part: usize| {
            let at = (2 * h + part) * uv;
            Packed::new(ByRows, self.uv.view(at..at + uv), g.v_dim, g.rank)
        };
        let (uk, uv) = ([uk(0), uk(1)], [uv(0), uv(1)]);
        let keys = self.keys.slice(h * g.keys()..(h + 1) * g.keys());
        let values = self.values.slice(h * g.values()..(h + 1) * g.values());
        scratch.resize(UP_ROWS * n16.max(v16), 0.0);
        for first in (0..rows).step_by(UP_ROWS) {
            let count = UP_ROWS.min(rows - first);
            let blocks = count.div_ceil(ROWS);
            let a = latents[first * lr..].as_ptr();
            let out = scratch.as_mut_ptr();
            let keys_of = uk.map(|b| Term { a, lda: lr, b });
            tiles::matmul(blocks, &keys_of, out, n16, false);
            tiles::pack(
                ByRows,
                scratch,
                (count, g.nope, n16),
                &mut keys[first * ln..],
            );
            let values_of = uv.map(|b| Term { a, lda: lr, b });
            tiles::matmul(blocks, &values_of, out, v16, false);
            tiles::pack(
                ByColumns,
                scratch,
                (count, g.v_dim, v16),
                &mut values[first * v16..],
            );
        }
    }

    /// The operands, read-only.
    ///
    /// # Safety
    /// No task writes them while the view lives.
    pub(super) unsafe fn view(&self) -> View<'_> {
        let g = self.geometry;
        View {
            q_nope: self.q_nope.view(0..g.heads * g.q_nope()),
            q_pe: self.q_pe.view(0..g.heads * g.q_pe()),
            k_pe: self.k_pe.view(0..g.k_pe()),
            keys: self.keys.view(0..g.heads * g.keys()),
            values: self.values.view(0..g.heads * g.values()),
            geometry: g,
        }
    }
}

/// [`TileOperands`], read by the attention's items.
pub(super) struct View<'a> {
    q_nope: &'a [u16],
    q_pe: &'a [u16],
    k_pe: &'a [u16],
    keys: &'a [u16],
    values: &'a [u16],
    geometry: Geometry,
}

/// One head's operands for a tile of query rows: its queries' two parts
/// (rows `lda` apart) and the pass's keys' two parts and values, packed.
pub(super) struct HeadOperands<'a> {
    q_nope: &'a [u16],
    q_pe: &'a [u16],
    k_nope: Packed<'a>,
    k_pe: Packed<'a>,
    values: Packed<'a>,
}

impl View<'_> {
    /// Head `h`'s operands for the query rows from `first_row` on, against
    /// the pass's `rows` rows.
    pub(super) fn head(&self, h: usize, first_row: usize, rows: usize) -> HeadOperands<'_> {
        let g = self.geometry;
        let (ln, lr) = (up(g.nope, DEPTH), up(g.rope, DEPTH));
        HeadOperands {
            q_nope: &self.q_nope[h * g.q_nope() + first_row * ln..(h + 1) * g.q_nope()],
            q_pe: &self.q_pe[h * g.q_pe() + first_row * lr..(h + 1) * g.q_pe()],
            k_nope: Packed::new(ByRows, &self.keys[h * g.keys()..][..g.keys()], rows, g.nope),
            k_pe: Packed::new(ByRows, self.k_pe, rows, g.rope),
            values: Packed::new(
                ByColumns,
                &self.values[h * g.values()..][..g.values()],
                rows,
                g.v_dim,
            ),
        }
    }
}

/// `w` packed as `layout` twice into the halves of `pair`: the bf16
/// nearest to each number, then the bf16 nearest to what that leaves.
fn pack_split(layout: Layout, w: &[f32], shape: (usize, usize, usize), pair: &mut [u16]) {
    let (high, low) = pair.split_at_mut(pair.len() / 2);
    tiles::pack(layout, w, shape, high);
    let residues: Vec<f32> = w
        .iter()
        .map(|&v| v - f32::from_bits((tiles::bf16_bits(v) as u32) << 16))
        .collect();
    tiles::pack(layout, &residues, shape, low);
}

/// A thread's buffers for [`attend`]: the scores, the weights in bf16 and
/// the outputs, padded.
#[derive(Default)]
pub(super) struct Scratch {
    scores: Vec<f32>,
    weights: Vec<u16>,
    outputs: Vec<f32>,
}

/// `tile`'s attention to the pass's `rows` rows from context position
/// `first` (see `TileRows::attend`), with both products on tiles: `acc`,
/// `maxima`, `sums` its running outputs.
///
/// # Safety
/// The AMX bf16 products are available; `ops` are the tile's head's, from
/// its first query row, against those rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn attend(
    tile: &TileRows,
    (first, rows): (usize, usize),
    ops: &HeadOperands,
    scratch: &mut Scratch,
    acc: &mut [f32],
    maxima: &mut [f32],
    sums: &mut [f32],
) {
    let (n, v_dim) = (tile.rows(), tile.v_dim);
    let blocks = n.div_ceil(ROWS);
    let padded = blocks * ROWS;
    let (ln, lr) = (ops.k_nope.k_chunks * DEPTH, ops.k_pe.k_chunks * DEPTH);
    assert!(ops.q_nope.len() >= padded * ln && ops.q_pe.len() >= padded * lr);
    let v16 = ops.values.n_blocks * ROWS;
    let Scratch {
        scores,
        weights,
        outputs,
    } = scratch;
    scores.resize(QUERY_TILE * KEY_TILE, 0.0);
    weights.resize(QUERY_TILE * KEY_TILE, 0);
    outputs.resize(QUERY_TILE * v16, 0.0);
    // The running outputs, padded to 16 rows of `v16`.
    let out = &mut outputs[..padded * v16];
    out.fill(0.0);
    for (o, a) in out.chunks_exact_mut(v16).zip(acc.chunks_exact(v_dim)) {
        o[..v_dim].copy_from_slice(a);
    }
    // The padding rows' weights stay 0.
    weights[n * KEY_TILE..padded * KEY_TILE].fill(0);
    // Rows past the tile's last query position are seen by none.
    let end = rows.min((tile.positions + n).saturating_sub(first));
    for k0 in (0..end).step_by(KEY_TILE) {
        let kt = KEY_TILE.min(end - k0);
        let s = &mut scores[..padded * KEY_TILE];
        let scores_of = [
            Term {
                a: ops.q_nope.as_ptr(),
                lda: ln,
                b: ops.k_nope.n_range(k0, kt),
            },
            Term {
                a: ops.q_pe.as_ptr(),
                lda: lr,
                b: ops.k_pe.n_range(k0, kt),
            },
        ];
        tiles::matmul(blocks, &scores_of, s.as_mut_ptr(), KEY_TILE, false);
        let width = kt.div_ceil(DEPTH) * DEPTH;
        let rows_of = Softmax {
            positions: tile.positions,
            from: first + k0,
            kt,
            v_dim: v16,
        };
        weigh(
            &rows_of,
            &s[..n * KEY_TILE],
            width,
            weights,
            out,
            maxima,
            sums,
        );
        let sums_of = Term {
            a: weights.as_ptr(),
            lda: KEY_TILE,
            b: ops.values.k_range(k0, kt),
        };
        tiles::matmul(blocks, &[sums_of], out.as_mut_ptr(), v16, true);
    }
    for (a, o) in acc.chunks_exact_mut(v_dim).zip(out.chunks_exact(v16)) {
        a.copy_from_slice(&o[..v_dim]);
    }
}

/// The online softmax of a tile's scores `s` (rows [`KEY_TILE`] apart, as
/// `rows` places them), written as bf16 weights `w` (rows [`KEY_TILE`]
/// apart, `width` of each: 0 past the keys a row sees); each row's running
/// maximum, sum and outputs `out` (rows `rows.v_dim` apart) moved onto its
/// new maximum first, so that the weights need no second pass.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW; `width` is at most [`KEY_TILE`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn weigh(
    rows: &Softmax,
    s: &[f32],
    width: usize,
    w: &mut [u16],
    out: &mut [f32],
    maxima: &mut [f32],
    sums: &mut [f32],
) {
    let lanes = |n: usize| (((1u32 << n.min(16)) - 1) & 0xffff) as __mmask16;
    for (r, row) in s.chunks_exact(KEY_TILE).enumerate() {
        let seen = (rows.positions + r + 1)
            .saturating_sub(rows.from)
            .min(rows.kt);
        let weights = &mut w[r * KEY_TILE..][..width];
        if seen == 0 {
            weights.fill(0);
            continue;
        }
        let mut top = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in (0..seen).step_by(16) {
            let m = lanes(seen - c);
            top = _mm512_mask_max_ps(top, m, top, _mm512_maskz_loadu_ps(m, row[c..].as_ptr()));
        }
        let max = maxima[r].max(_mm512_reduce_max_ps(top));
        let mut sum = _mm512_setzero_ps();
        for c in (0..width).step_by(16) {
            let m = lanes(seen.saturating_sub(c));
            let v = _mm512_maskz_loadu_ps(m, row[c..].as_ptr());
            let e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(v, _mm512_set1_ps(max))));
            sum = _mm512_add_ps(sum, e);
            let bf16 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(tiles::rounded(e)));
            _mm256_storeu_si256(weights[c..].as_mut_ptr() as *mut __m256i, bf16);
        }
        let factor = (maxima[r] - max).exp();
        maxima[r] = max;
        sums[r] = sums[r] * factor + _mm512_reduce_add_ps(sum);
        if factor != 1.0 {
            let o = &mut out[r * rows.v_dim..][..rows.v_dim];
            o.iter_mut().for_each(|v| *v *= factor);
        }
    }
}
