//! Attention in the expanded form, for prompts: each head's keys and values
//! rebuilt from the cached latents through `kv_b_proj`, then a causal,
//! tiled, online-softmax attention (flash-attention style) whose products
//! are matrix products.
//!
//! The absorbed form scores every head against `rank + rope`-wide latent
//! rows and sums `rank`-wide ones, per token: the right trade for one
//! decoding token, which reads each cache row once for all heads. A prompt
//! of many tokens pays that width on every (query, key) pair; rebuilding
//! `nope + rope`-wide keys and `v_head_dim`-wide values once per row of the
//! context costs less there, and the attention becomes matrix products of
//! many query rows against many key rows ([`expanded_pays`] decides).
//!
//! One sequence at a time ([`expanded_attention`]): the context is taken in
//! passes of rows whose per-head keys and values fit a fixed budget; each
//! pass is one parallel region of three phases (the latent rows gathered
//! out of the paged cache; per head, its keys and values; per head and tile
//! of query rows, the tile's scores, softmax and weighted sums against the
//! pass's rows), and each query row's running maximum, sum and unnormalised
//! output carry over from pass to pass. A long cached prefix is thus
//! up-projected once per call, whatever the number of query rows.

use super::item::{softmax_row, Path};
use super::tiled::{self, TileOperands};
use super::{Latent, LatentShape, RowStats, SeqSpan};
use crate::kernels::parallel::{self, Disjoint};

/// Query rows of one work item on AMX tiles.
pub(super) const QUERY_TILE: usize = 64;
/// Most query rows of one work item in f32. Each of its products packs its
/// key (or value) tile, so the fewer tiles the less packing: `gemm`'s
/// packing took a sixth of the time of 512 prompt rows after 7680 cached
/// ones at 64 rows (perf), and 128 rows took 8% less time than 64. On the
/// 2-vCPU Xeon without AMX, 256 rows took 3-6% less time than 128 for an
/// 8192-token prompt in chunks of 2048 and 2-7% less for 512 prompt rows
/// after 7680 cached ones (five alternated rounds each, in process, q8_0,
/// the benchmark model); 384 and 512 were no faster than 256.
const F32_QUERY_TILE: usize = 256;
/// Fewest query rows of one work item in f32.
const F32_QUERY_TILE_MIN: usize = 64;

/// Query rows of one f32 work item for `new` prompt rows of `heads` heads:
/// [`F32_QUERY_TILE`], halved (down to [`F32_QUERY_TILE_MIN`]) while the
/// items would number fewer than four per thread, so that a short prompt
/// still keeps a large pool busy.
fn f32_query_tile(heads: usize, new: usize, threads: usize) -> usize {
    let mut tile = F32_QUERY_TILE;
    while tile > F32_QUERY_TILE_MIN && heads * new.div_ceil(tile) < 4 * threads {
        tile /= 2;
    }
    tile
}
/// Key rows one score product takes.
pub(super) const KEY_TILE: usize = 256;
/// Most numbers one pass's per-head keys and values may take (32 MB).
const PASS_BUDGET: usize = 8 << 20;

/// The relative speeds of the two forms, in multiply-adds per unit of time:
/// the absorbed kernel's dot products, and the matrix products of the
/// expanded form (its attention and its up-projection). From
/// `FERROSEEK_BENCH_ONLY=forms cargo bench -p ferroseek-model --bench
/// forward`, which times both forms on prompts of several lengths.
const ABSORBED_RATE: usize = 1;
const EXPANDED_RATE: usize = 2;

/// `kv_b_proj` per head, dense f32: what rebuilds a head's keys and values
/// from the latents.
pub struct UpProjection<'a> {
    /// `W_UKᵀ` per head, `[heads, rank, nope]` (as MLA's absorbed `w_uk`
    /// holds it).
    pub uk: &'a [f32],
    /// `W_UV` per head, `[heads, v_dim, rank]`.
    pub uv: &'a [f32],
    pub nope: usize,
    pub v_dim: usize,
}

/// Whether the expanded form costs less than the absorbed one for a
/// sequence of `num_new` query rows after `num_cached` cached ones, by the
/// multiply-adds each does at its measured rate: the absorbed form's
/// `width + rank` per (query, key) pair and head, against the expanded
/// form's `nope + rope + v_dim` per pair and the up-projection's
/// `rank · (nope + v_dim)` per context row.
pub fn expanded_pays(
    num_new: usize,
    num_cached: usize,
    shape: LatentShape,
    nope: usize,
    v_dim: usize,
) -> bool {
    let LatentShape { rank, width, .. } = shape;
    let rope = width - rank;
    let context = num_cached + num_new;
    // Pairs per head: each query row sees the cached rows and the new rows
    // up to itself.
    let pairs = num_new * num_cached + num_new * (num_new + 1) / 2;
    let absorbed = pairs * (width + rank) * EXPANDED_RATE;
    let expanded =
        (pairs * (nope + rope + v_dim) + context * rank * (nope + v_dim)) * ABSORBED_RATE;
    expanded < absorbed
}

/// `dst` (`m × n`, row stride `ldd`) := (`dst` if `accumulate`, else 0) +
/// `scale · lhs · rhs`, each operand given by its row and column strides,
/// on the calling thread.
///
/// # Safety
/// Every element the strides reach lies inside its buffer, and `dst`
/// overlaps neither operand.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// One sequence's attention in the expanded form. `q_nope`: its `[num_new,
/// heads, nope]` query parts, `q_pe`: their rotated `[num_new, heads,
/// rope]` parts, `cache`: the layer's `[slots, width]` rows. Writes `out`
/// (`[num_new, heads, v_dim]`): per head, softmax(scale · q·kᵀ) · v, token
/// `j` seeing context positions `0..=num_cached + j`. With `bf16_products`,
/// where the CPU has AMX-BF16, both products take bf16 operands
/// (`AttentionDType::Bf16`).
#[allow(clippy::too_many_arguments)]
pub fn expanded_attention<E: Latent>(
    q_nope: &[f32],
    q_pe: &[f32],
    cache: &[E],
    span: &SeqSpan,
    shape: LatentShape,
    scale: f32,
    up: &UpProjection,
    bf16_products: bool,
    out: &mut [f32],
) {
    let per_row = shape.heads * (up.nope + shape.width - shape.rank + up.v_dim);
    let rows = (PASS_BUDGET / per_row).max(KEY_TILE) / KEY_TILE * KEY_TILE;
    let tiles = bf16_products && super::tiles::available();
    let query_tile = f32_query_tile(shape.heads, span.num_new, parallel::threads());
    attention_in_passes(
        q_nope,
        q_pe,
        cache,
        span,
        shape,
        scale,
        up,
        (rows, query_tile),
        tiles,
        out,
    )
}

/// [`expanded_attention`] with passes of `pass_rows` context rows and work
/// items of `f32_tile` query rows, its two products on AMX bf16 tiles
/// (items of [`QUERY_TILE`] rows) when `tiles` ([`TileOperands`]).
#[allow(clippy::too_many_arguments)]
fn attention_in_passes<E: Latent>(
    q_nope: &[f32],
    q_pe: &[f32],
    cache: &[E],
    span: &SeqSpan,
    shape: LatentShape,
    scale: f32,
    up: &UpProjection,
    (pass_rows, f32_tile): (usize, usize),
    tiles: bool,
    out: &mut [f32],
) {
    let LatentShape {
        heads,
        rank,
        width,
        block_size,
    } = shape;
    let (nope, v_dim) = (up.nope, up.v_dim);
    let rope = width - rank;
    let dq = nope + rope;
    let (new, cached) = (span.num_new, span.num_cached);
    let context = cached + new;
    // No larger than the context: the buffers below are sized by it.
    let pass_rows = pass_rows.min(context);
    assert_eq!(q_nope.len(), new * heads * nope, "q_nope's size");
    assert_eq!(q_pe.len(), new * heads * rope, "q_pe's size");
    assert_eq!(up.uk.len(), heads * rank * nope, "W_UK's size");
    assert_eq!(up.uv.len(), heads * v_dim * rank, "W_UV's size");
    assert_eq!(out.len(), new * heads * v_dim, "the output's size");

    let mut workspace = WORKSPACE.take();
    let Workspace {
        queries,
        acc,
        maxima,
        sums,
        latents,
        keys,
        values,
        operands,
    } = &mut workspace;
    // Per head, its query rows `[q_nope | q_pe]`: `[heads, new, dq]`.
    let queries = filled(queries, heads * new * dq, 0.0);
    let mut operands =
        tiles.then(|| operands.prepare(heads, new, (nope, rope, rank, v_dim), pass_rows));
    let dst = Disjoint::new(queries);
    let packed = operands.as_mut().map(|o| o.destinations());
    parallel::for_ranges(heads, |hs| {
        for h in hs {
            // SAFETY: head `h`'s rows are this task's alone.
            let rows = unsafe { dst.slice(h * new * dq..(h + 1) * new * dq) };
            for (t, q) in rows.chunks_exact_mut(dq).enumerate() {
                let at = t * heads + h;
                q[..nope].copy_from_slice(&q_nope[at * nope..][..nope]);
                q[nope..].copy_from_slice(&q_pe[at * rope..][..rope]);
            }
            if let Some(packed) = &packed {
                // SAFETY: as above.
                unsafe { packed.head(h, rows, scale, up) };
            }
        }
    });
    // Per head and query row: the unnormalised output, the running maximum
    // and sum.
    let acc = filled(acc, heads * new * v_dim, 0.0);
    let maxima = filled(maxima, heads * new, f32::NEG_INFINITY);
    let sums = filled(sums, heads * new, 0.0);

    let query_tile = if operands.is_some() {
        QUERY_TILE
    } else {
        f32_tile
    };
    let tiles = new.div_ceil(query_tile);
    let latents = reused(latents, pass_rows * width);
    // Per head, the pass's keys `[rows, dq]` and values `[rows, v_dim]` (on
    // tiles, packed in the operands instead).
    let f32_rows = if operands.is_some() { 0 } else { pass_rows };
    let keys = reused(keys, heads * f32_rows * dq);
    let values = reused(values, heads * f32_rows * v_dim);
    let path = Path::detect();
    for first in (0..context).step_by(pass_rows) {
        let rows = pass_rows.min(context - first);
        // Query tiles whose last row sees the pass's first row, latest
        // (largest) first so that the last items handed out are small.
        let seen = (0..tiles)
            .rev()
            .filter(|&i| cached + ((i + 1) * query_tile).min(new) > first)
            .collect::<Vec<_>>();
        let (lat_dst, key_dst, value_dst) = (
            Disjoint::new(latents),
            Disjoint::new(keys),
            Disjoint::new(values),
        );
        let (acc_dst, max_dst, sum_dst) = (
            Disjoint::new(acc),
            Disjoint::new(maxima),
            Disjoint::new(sums),
        );
        let queries = &*queries;
        let packed = operands.as_mut().map(|o| o.destinations());
        parallel::team(|member| {
            // The pass's latent rows, out of the paged cache.
            member.share(rows.div_ceil(KEY_TILE), |blocks| {
                for b in blocks {
                    for r in b * KEY_TILE..((b + 1) * KEY_TILE).min(rows) {
                        let t = first + r;
                        let slot =
                            span.block_table[t / block_size] as usize * block_size + t % block_size;
                        // SAFETY: row `r` is this task's alone.
                        let dst = unsafe { lat_dst.slice(r * width..(r + 1) * width) };
                        path.widen(&cache[slot * width..(slot + 1) * width], dst);
                    }
                    if let Some(packed) = &packed {
                        let block = b * KEY_TILE..((b + 1) * KEY_TILE).min(rows);
                        // SAFETY: the block's rows are this task's alone.
                        unsafe {
                            let rows = lat_dst.view(block.start * width..block.end * width);
                            packed.latents(block.start, rows);
                        }
                    }
                }
            });
            member.barrier();
            // SAFETY: nothing writes the latents after the barrier.
            let latents = unsafe { lat_dst.view(0..rows * width) };
            // Per head, its keys `[c · W_UKᵀ | k_pe]` and values `c · W_UVᵀ`.
            let mut scratch = vec![];
            member.share(heads, |hs| {
                for h in hs {
                    #[cfg(target_arch = "x86_64")]
                    if let Some(packed) = &packed {
                        // SAFETY: the tiles are there (`tiles` is only set
                        // then); head `h`'s keys and values are this task's
                        // alone, and the latents were written before the
                        // barrier.
                        unsafe { packed.up_project(h, rows, &mut scratch) };
                        continue;
                    }
                    // SAFETY: head `h`'s keys and values are this task's alone.
                    let k = unsafe { key_dst.slice(h * pass_rows * dq..(h + 1) * pass_rows * dq) };
                    let v = unsafe {
                        value_dst.slice(h * pass_rows * v_dim..(h + 1) * pass_rows * v_dim)
                    };
                    // SAFETY: the shapes and strides stay inside the buffers.
                    unsafe {
                        product(
                            (rows, nope, rank),
                            k.as_mut_ptr(),
                            dq,
                            false,
                            latents.as_ptr(),
                            (width, 1),
                            up.uk[h * rank * nope..].as_ptr(),
                            (nope, 1),
                            1.0,
                        );
                        product(
                            (rows, v_dim, rank),
                            v.as_mut_ptr(),
                            v_dim,
                            false,
                            latents.as_ptr(),
                            (width, 1),
                            up.uv[h * v_dim * rank..].as_ptr(),
                            (1, rank),
                            1.0,
                        );
                    }
                    for (key, lat) in k.chunks_exact_mut(dq).zip(latents.chunks_exact(width)) {
                        key[nope..].copy_from_slice(&lat[rank..]);
                    }
                }
            });
            member.barrier();
            // SAFETY: nothing writes the keys and values after the barrier.
            let (keys, values) = unsafe {
                (
                    key_dst.view(0..heads * f32_rows * dq),
                    value_dst.view(0..heads * f32_rows * v_dim),
                )
            };
            let mut scores = vec![0f32; query_tile * KEY_TILE];
            let mut scratch = tiled::Scratch::default();
            // SAFETY: nothing writes the packed operands after the barrier.
            let packed = packed.as_ref().map(|p| unsafe { p.view() });
            member.share(heads * seen.len(), |items| {
                for item in items {
                    // Head by head: a thread's next items read the keys
                    // and values its last ones left in its caches.
                    let (h, tile) = (item / seen.len(), seen[item % seen.len()]);
                    let q_rows = tile * query_tile..((tile + 1) * query_tile).min(new);
                    let at = h * new + q_rows.start;
                    let n = q_rows.len();
                    // SAFETY: head `h`'s rows of this tile are this task's alone.
                    let (acc, maxima, sums) = unsafe {
                        (
                            acc_dst.slice(at * v_dim..(at + n) * v_dim),
                            max_dst.slice(at..at + n),
                            sum_dst.slice(at..at + n),
                        )
                    };
                    let tile = TileRows {
                        queries: &queries[at * dq..(at + n) * dq],
                        scale,
                        positions: cached + q_rows.start,
                        dq,
                        v_dim,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if let Some(packed) = &packed {
                        let ops = packed.head(h, q_rows.start, rows);
                        // SAFETY: the tiles are there; the operands are
                        // head `h`'s from the tile's first row.
                        unsafe {
                            tiled::attend(
                                &tile,
                                (first, rows),
                                &ops,
                                &mut scratch,
                                acc,
                                maxima,
                                sums,
                            )
                        };
                        continue;
                    }
                    let head_keys = &keys[h * pass_rows * dq..][..rows * dq];
                    let head_values = &values[h * pass_rows * v_dim..][..rows * v_dim];
                    tile.attend(
                        path,
                        first,
                        head_keys,
                        head_values,
                        &mut scores,
                        acc,
                        maxima,
                        sums,
                    );
                }
            });
        });
    }
    // `[heads, new, v_dim]` normalised into `[new, heads, v_dim]`.
    let (acc, sums) = (&*acc, &*sums);
    let dst = Disjoint::new(out);
    parallel::for_ranges(new, |ts| {
        for t in ts {
            // SAFETY: token `t`'s row is this task's alone.
            let row = unsafe { dst.slice(t * heads * v_dim..(t + 1) * heads * v_dim) };
            for (h, o) in row.chunks_exact_mut(v_dim).enumerate() {
                let src = &acc[(h * new + t) * v_dim..][..v_dim];
                let sum = sums[h * new + t];
                o.iter_mut().zip(src).for_each(|(o, s)| *o = s / sum);
            }
        }
    });
    WORKSPACE.set(workspace);
}

/// The buffers of [`attention_in_passes`], kept from call to call on each
/// thread: a long prompt's take tens of MB, and fresh ones cost a page
/// fault per 4 KB (where a zeroed page was read before it was written, a
/// copy and a TLB flush on every core: a fifth of an 8k prompt's time on
/// AMX tiles, measured).
#[derive(Default)]
struct Workspace {
    queries: Vec<f32>,
    acc: Vec<f32>,
    maxima: Vec<f32>,
    sums: Vec<f32>,
    latents: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    operands: TileOperands,
}

thread_local! {
    static WORKSPACE: std::cell::Cell<Workspace> = std::cell::Cell::default();
}

/// `buffer` as `n` copies of `value`, each written (its memory kept).
fn filled<T: Copy>(buffer: &mut Vec<T>, n: usize, value: T) -> &mut [T] {
    buffer.clear();
    buffer.resize(n, value);
    buffer
}

/// `n` numbers of `buffer`, whatever an earlier call left in them: for
/// buffers every pass writes before it reads them (the latents, keys and
/// values: 31 MB a layer at 16 heads, which [`filled`] would zero on every
/// call). Grown, with zeros, only where it is shorter.
fn reused(buffer: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buffer.len() < n {
        buffer.resize(n, 0.0);
    }
    &mut buffer[..n]
}

/// One head's tile of query rows.
pub(super) struct TileRows<'a> {
    /// `[rows, dq]`.
    queries: &'a [f32],
    /// Of the scores.
    scale: f32,
    /// Context position of the first row.
    pub(super) positions: usize,
    dq: usize,
    pub(super) v_dim: usize,
}

impl TileRows<'_> {
    /// Adds the key rows `keys` (`[rows, dq]`, context positions from
    /// `first`) and their `values` to the tile's running outputs `acc`
    /// (`[rows, v_dim]`), maxima and sums, a [`KEY_TILE`] at a time, each
    /// query row seeing the positions up to its own.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        path: Path,
        first: usize,
        keys: &[f32],
        values: &[f32],
        scores: &mut [f32],
        acc: &mut [f32],
        maxima: &mut [f32],
        sums: &mut [f32],
    ) {
        let (dq, v_dim) = (self.dq, self.v_dim);
        let n = self.queries.len() / dq;
        let rows = keys.len() / dq;
        // Rows past the tile's last query position are seen by none.
        let end = rows.min((self.positions + n).saturating_sub(first));
        for k0 in (0..end).step_by(KEY_TILE) {
            let kt = KEY_TILE.min(end - k0);
            let s = &mut scores[..n * kt];
            // SAFETY: `n × dq` queries, `kt × dq` keys from `k0`, `n × kt` scores.
            unsafe {
                product(
                    (n, kt, dq),
                    s.as_mut_ptr(),
                    kt,
                    false,
                    self.queries.as_ptr(),
                    (dq, 1),
                    keys[k0 * dq..].as_ptr(),
                    (1, dq),
                    self.scale,
                );
            }
            let rows = Softmax {
                positions: self.positions,
                from: first + k0,
                kt,
                v_dim,
            };
            match path {
                // SAFETY: `Path::detect` found AVX-512F, AVX2 and FMA.
                #[cfg(target_arch = "x86_64")]
                Path::Avx512 => unsafe { rows.update_avx512(s, acc, maxima, sums) },
                _ => rows.update(s, acc, maxima, sums, softmax_row),
            }
            // SAFETY: `n × kt` weights, `kt × v_dim` values from `k0`, `n × v_dim` outputs.
            unsafe {
                product(
                    (n, v_dim, kt),
                    acc.as_mut_ptr(),
                    v_dim,
                    true,
                    s.as_ptr(),
                    (kt, 1),
                    values[k0 * v_dim..].as_ptr(),
                    (v_dim, 1),
                    1.0,
                );
            }
        }
    }

    /// Its number of query rows.
    pub(super) fn rows(&self) -> usize {
        self.queries.len() / self.dq
    }
}

/// The online softmax of one tile of scores against `kt` keys from context
/// position `from`, its first query row at position `positions`; the
/// outputs' rows `v_dim` apart.
pub(super) struct Softmax {
    pub(super) positions: usize,
    pub(super) from: usize,
    pub(super) kt: usize,
    pub(super) v_dim: usize,
}

impl Softmax {
    /// Per row of `scores` (`[rows, kt]`): the keys it sees (positions up
    /// to its own) turned into `exp(score - max)`, the others into 0, `max`
    /// being the row's new running maximum (its old one or its largest
    /// score), so that the weights are ready to be added as weights of the
    /// values in one pass; its running sum and output `acc` moved onto
    /// that maximum. `softmax` as [`softmax_row`].
    #[inline(always)]
    fn update(
        &self,
        scores: &mut [f32],
        acc: &mut [f32],
        maxima: &mut [f32],
        sums: &mut [f32],
        softmax: impl Fn(&mut [f32], f32) -> RowStats,
    ) {
        let (kt, v_dim) = (self.kt, self.v_dim);
        for (r, row) in scores.chunks_exact_mut(kt).enumerate() {
            let seen = (self.positions + r + 1).saturating_sub(self.from).min(kt);
            if seen == 0 {
                row.fill(0.0);
                continue;
            }
            let stats = softmax(&mut row[..seen], maxima[r]);
            row[seen..].fill(0.0);
            let old = (maxima[r] - stats.max).exp();
            maxima[r] = stats.max;
            sums[r] = sums[r] * old + stats.sum;
            if old != 1.0 {
                acc[r * v_dim..(r + 1) * v_dim]
                    .iter_mut()
                    .for_each(|v| *v *= old);
            }
        }
    }

    /// [`Self::update`] compiled for AVX-512, with its vector `exp`.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn update_avx512(
        &self,
        scores: &mut [f32],
        acc: &mut [f32],
        maxima: &mut [f32],
        sums: &mut [f32],
    ) {
        self.update(scores, acc, maxima, sums, |s, floor| unsafe {
            super::avx512::softmax_row(s, floor)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::absorbed_attention;
    use crate::kernels::attention::tests::{bf16_and_widened, fill};

    /// The expanded form gives the absorbed form's outputs (its attended
    /// latents through `W_UV`), for prompts with and without a cached
    /// prefix that cross query tiles, key tiles, passes and cache blocks
    /// (in a scrambled order), with one query tile, and one row alone; in
    /// f32 items of the most and the fewest query rows alike; on the cache
    /// in bf16, what it gives on those values widened to f32; and
    /// with its products on AMX bf16 tiles (where the CPU has them), that
    /// within bf16's rounding.
    #[test]
    fn expanded_equals_absorbed() {
        let (heads, rank, rope, nope, v_dim, block_size) = (3, 40, 8, 24, 20, 16);
        let width = rank + rope;
        let shape = LatentShape {
            heads,
            rank,
            width,
            block_size,
        };
        let blocks = 48;
        let (narrow, cache) = bf16_and_widened(&fill(blocks * block_size * width, 1));
        let table: Vec<u32> = (0..blocks as u32).map(|b| b * 29 % blocks as u32).collect();
        let uk = fill(heads * rank * nope, 2);
        let uv = fill(heads * v_dim * rank, 3);
        let up = UpProjection {
            uk: &uk,
            uv: &uv,
            nope,
            v_dim,
        };
        let scale = 0.15;
        for (new, cached, pass_rows) in [
            (300, 0, 256),
            (300, 0, 512),
            (130, 400, 256),
            (64, 700, 768),
            (1, 500, 256),
            (5, 0, 256),
        ] {
            let span = SeqSpan {
                start: 0,
                num_new: new,
                num_cached: cached,
                block_table: &table,
            };
            let q_nope = fill(new * heads * nope, 4);
            let q_pe = fill(new * heads * rope, 5);
            let run = |cache: &dyn Fn(&mut [f32], bool), tiles: bool| {
                let mut out = vec![0f32; new * heads * v_dim];
                cache(&mut out, tiles);
                out
            };
            let passes = (pass_rows, F32_QUERY_TILE);
            let on_f32 = |out: &mut [f32], tiles: bool| {
                attention_in_passes(
                    &q_nope, &q_pe, &cache, &span, shape, scale, &up, passes, tiles, out,
                )
            };
            let on_narrow = |out: &mut [f32], tiles: bool| {
                attention_in_passes(
                    &q_nope, &q_pe, &narrow, &span, shape, scale, &up, passes, tiles, out,
                )
            };
            let got = run(&on_f32, false);
            // The smallest f32 items: the same numbers, to rounding.
            let mut small = vec![0f32; new * heads * v_dim];
            let passes = (pass_rows, F32_QUERY_TILE_MIN);
            attention_in_passes(
                &q_nope, &q_pe, &cache, &span, shape, scale, &up, passes, false, &mut small,
            );
            for (i, (a, b)) in small.iter().zip(&got).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{new} after {cached}, number {i}: items of {F32_QUERY_TILE_MIN} rows {a}, \
                     of {F32_QUERY_TILE} {b}"
                );
            }
            let on_bf16 = run(&on_narrow, false);
            for (i, (a, b)) in on_bf16.iter().zip(&got).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{new} after {cached}, number {i}: bf16 {a}, widened {b}"
                );
            }
            if crate::kernels::attention::bf16_tiles_available() {
                let on_tiles = run(&on_narrow, true);
                // bf16 queries, keys, weights and values: measured, at most
                // 0.0102 on outputs of 0.2 to 1.2 on average.
                for (i, (a, b)) in on_tiles.iter().zip(&on_bf16).enumerate() {
                    assert!(
                        (a - b).abs() <= 0.02 * (1.0 + b.abs()),
                        "{new} after {cached}, number {i}: on tiles {a}, in f32 {b}"
                    );
                }
            }

            // The absorbed form: q_lat = W_UKᵀ-absorbed queries, then W_UV.
            let mut queries = vec![0f32; new * heads * width];
            for t in 0..new {
                for h in 0..heads {
                    let q = &mut queries[(t * heads + h) * width..][..width];
                    let qn = &q_nope[(t * heads + h) * nope..][..nope];
                    for (r, lat) in q[..rank].iter_mut().enumerate() {
                        *lat = (0..nope)
                            .map(|d| uk[(h * rank + r) * nope + d] * qn[d])
                            .sum();
                    }
                    q[rank..].copy_from_slice(&q_pe[(t * heads + h) * rope..][..rope]);
                }
            }
            let latents = absorbed_attention(&queries, &cache, &[span], shape, scale);
            for t in 0..new {
                for h in 0..heads {
                    let lat = &latents[(t * heads + h) * rank..][..rank];
                    for d in 0..v_dim {
                        let want: f32 = (0..rank)
                            .map(|r| uv[(h * v_dim + d) * rank + r] * lat[r])
                            .sum();
                        let have = got[(t * heads + h) * v_dim + d];
                        assert!(
                            (want - have).abs() < 1e-4,
                            "{new} new after {cached}, passes of {pass_rows}: token {t} head {h} \
                             value {d}: expanded {have}, absorbed {want}"
                        );
                    }
                }
            }
        }
    }

    /// f32 query tiles are as large as four items a thread allow.
    #[test]
    fn query_tiles_keep_every_thread_busy() {
        // 2048 rows of 16 heads: 128 items of 256 rows, plenty for 2 or 32
        // threads; 64 threads get 256 items of 128 rows.
        assert_eq!(f32_query_tile(16, 2048, 2), 256);
        assert_eq!(f32_query_tile(16, 2048, 32), 256);
        assert_eq!(f32_query_tile(16, 2048, 64), 128);
        // 512 rows: 32 items of 256 rows on 2 threads; 16 threads need 64.
        assert_eq!(f32_query_tile(16, 512, 2), 256);
        assert_eq!(f32_query_tile(16, 512, 16), 128);
        // Never below the floor, however many threads.
        assert_eq!(f32_query_tile(16, 100, 64), F32_QUERY_TILE_MIN);
        assert_eq!(f32_query_tile(128, 512, 8), 256);
    }

    /// One decoding token never pays for the up-projection; a long prompt
    /// does, with or without a cached prefix.
    #[test]
    fn the_expanded_form_is_for_prompts() {
        let shape = LatentShape {
            heads: 16,
            rank: 512,
            width: 576,
            block_size: 16,
        };
        assert!(!expanded_pays(1, 8000, shape, 128, 128));
        assert!(!expanded_pays(4, 100, shape, 128, 128));
        assert!(expanded_pays(2048, 0, shape, 128, 128));
        assert!(expanded_pays(512, 7500, shape, 128, 128));
    }
}
