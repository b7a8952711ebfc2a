//! Intel AMX bf16 tiles for the expanded form's two products (scores and
//! weighted sums), where the cache is bf16: the operands rounded to bf16,
//! the products summed in f32 by `tdpbf16ps`, 16 × 16 outputs from a
//! 16 × 32 `A` tile and a 32 × 16 `B` tile per instruction (about fifteen
//! times the AVX-512 FMA rate of a core).
//!
//! `A` operands are row-major bf16 rows (a multiple of 32 wide). `B`
//! operands are packed once per pass into tiles of the VNNI layout the
//! instruction reads: the element at (`k`, `n`) of a tile is at
//! `(k / 2)·32 + n·2 + k % 2`, pairs of consecutive `k` side by side. Stable
//! Rust has no AMX intrinsics: the instructions are inline assembly, behind
//! run-time detection.

#[cfg(target_arch = "x86_64")]
use std::arch::asm;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use crate::kernels::x86::TileConfig;

/// Rows of an `A` tile or of the outputs; columns of a `B` tile.
pub(super) const ROWS: usize = 16;
/// The `k` extent of one tile product: 32 bf16 (64 bytes) per row.
pub(super) const DEPTH: usize = 32;
/// bf16 numbers in one packed `B` tile.
pub(super) const TILE: usize = ROWS * DEPTH;

/// Whether this CPU runs the AMX bf16 products: it has AMX-TILE and
/// AMX-BF16, and Linux gave the process the tile state. Read once;
/// `FERROSEEK_AMX=off` turns it off.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // CPUID leaf 7, EDX bit 22: AMX-BF16.
        *AVAILABLE.get_or_init(|| crate::kernels::x86::amx_granted(22))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The tiles' shapes (palette 1): every tile 16 rows of 64 bytes. `tmm0`
/// to `tmm3` hold a 2 × 2 block of outputs (f32), `tmm4` and `tmm5` two
/// `A` tiles, `tmm6` and `tmm7` two `B` tiles.
#[cfg(target_arch = "x86_64")]
const CONFIG: TileConfig = TileConfig::new(&[(64, ROWS as u8); 8]);

/// A packed `B` operand: `n_blocks` blocks of 16 columns by `k_chunks`
/// chunks of 32 rows, tile (`j`, `c`) at `j·n_step + c·k_step` numbers from
/// `data`.
#[derive(Clone, Copy)]
pub(super) struct Packed<'a> {
    pub(super) data: &'a [u16],
    pub(super) n_blocks: usize,
    pub(super) k_chunks: usize,
    pub(super) n_step: usize,
    pub(super) k_step: usize,
}

impl Packed<'_> {
    fn tile(&self, j: usize, c: usize) -> *const u16 {
        let at = j * self.n_step + c * self.k_step;
        assert!(at + TILE <= self.data.len(), "a B tile past its buffer");
        self.data[at..].as_ptr()
    }
}

#[cfg(target_arch = "x86_64")]
/// Loads tile `$t` from `$p`, rows `$stride` bytes apart.
macro_rules! load {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(
            concat!("tileloadd ", $t, ", [{p} + {s} * 1]"),
            p = in(reg) $p,
            s = in(reg) $stride,
            options(nostack, readonly),
        )
    };
}

#[cfg(target_arch = "x86_64")]
/// Stores tile `$t` to `$p`, rows `$stride` bytes apart.
macro_rules! store {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(
            concat!("tilestored [{p} + {s} * 1], ", $t),
            p = in(reg) $p,
            s = in(reg) $stride,
            options(nostack),
        )
    };
}

#[cfg(target_arch = "x86_64")]
/// Output tile `$c` (f32, rows `$stride` bytes apart at `$p`): loaded when
/// `$accumulate`, else zeroed.
macro_rules! start {
    ($c:literal, $accumulate:expr, $p:expr, $stride:expr) => {
        if $accumulate {
            load!($c, $p, $stride);
        } else {
            asm!(concat!("tilezero ", $c), options(nostack, nomem));
        }
    };
}

/// One term of a tile product: `A` rows, `lda` bf16 apart, times a packed
/// `B` (as many `A` columns as its `32·k_chunks` rows).
#[cfg(target_arch = "x86_64")]
pub(super) struct Term<'a> {
    pub(super) a: *const u16,
    pub(super) lda: usize,
    pub(super) b: Packed<'a>,
}

/// `c` (`16·m_blocks` rows, `ldc` f32 apart) := (`c` if `accumulate`,
/// else 0) + the sum of the `terms`' products, over `16·n_blocks` columns
/// (every term's `B` has them). Each output is a sum of exact products of
/// the bf16 operands, in f32. The outputs stay in tiles over all terms.
///
/// On the Xeon this was measured on, a tile load or store takes about four
/// times a tile product, so the 2 × 2 blocks (four loads for four
/// products) set the pace: about 0.9 TFLOP/s a core.
///
/// # Safety
/// [`available`] said yes; each term's `a` holds `16·m_blocks` rows of its
/// `B`'s depth, and `c` the outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn matmul(
    m_blocks: usize,
    terms: &[Term],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let Some(n_blocks) = terms.first().map(|t| t.b.n_blocks) else {
        return;
    };
    assert!(terms.iter().all(|t| t.b.n_blocks == n_blocks));
    CONFIG.load();
    let c_stride = ldc * 4;
    let a_tile = |t: &Term, i: usize, k: usize| t.a.add(i * ROWS * t.lda + k * DEPTH);
    let c_tile = |i: usize, j: usize| c.add(i * ROWS * ldc + j * ROWS);
    for i in (0..m_blocks).step_by(2) {
        for j in (0..n_blocks).step_by(2) {
            if i + 1 < m_blocks && j + 1 < n_blocks {
                // A 2 × 2 block: each tile loaded feeds two products.
                start!("tmm0", accumulate, c_tile(i, j), c_stride);
                start!("tmm1", accumulate, c_tile(i, j + 1), c_stride);
                start!("tmm2", accumulate, c_tile(i + 1, j), c_stride);
                start!("tmm3", accumulate, c_tile(i + 1, j + 1), c_stride);
                for t in terms {
                    for k in 0..t.b.k_chunks {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa} * 1]",
                            "tileloadd tmm6, [{b0} + {sb} * 1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tileloadd tmm7, [{b1} + {sb} * 1]",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tileloadd tmm5, [{a1} + {sa} * 1]",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a_tile(t, i, k),
                            a1 = in(reg) a_tile(t, i + 1, k),
                            b0 = in(reg) t.b.tile(j, k),
                            b1 = in(reg) t.b.tile(j + 1, k),
                            sa = in(reg) t.lda * 2,
                            sb = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                    }
                }
                store!("tmm0", c_tile(i, j), c_stride);
                store!("tmm1", c_tile(i, j + 1), c_stride);
                store!("tmm2", c_tile(i + 1, j), c_stride);
                store!("tmm3", c_tile(i + 1, j + 1), c_stride);
            } else {
                // The edge: one tile at a time.
                for ii in i..(i + 2).min(m_blocks) {
                    for jj in j..(j + 2).min(n_blocks) {
                        start!("tmm0", accumulate, c_tile(ii, jj), c_stride);
                        for t in terms {
                            for k in 0..t.b.k_chunks {
                                load!("tmm4", a_tile(t, ii, k), t.lda * 2);
                                load!("tmm6", t.b.tile(jj, k), 64usize);
                                asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
                            }
                        }
                        store!("tmm0", c_tile(ii, jj), c_stride);
                    }
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// The bf16 nearest to `v` (ties to even), as bits: what `half::bf16`
/// gives for every number but NaN.
#[inline(always)]
pub(super) fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    ((bits + 0x7fff + (bits >> 16 & 1)) >> 16) as u16
}

/// Each lane rounded to the nearest bf16 (ties to even), in the lane's top
/// 16 bits ([`bf16_bits`] before its shift).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn rounded(v: __m512) -> __m512i {
    let bits = _mm512_castps_si512(v);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd)
}

/// How a matrix becomes a packed `B` operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// Its rows are the product's columns (`n`) and its columns the summed
    /// `k` (the keys of a score product): tile (`j`, `c`) at
    /// `(j·k_chunks + c)·TILE`, so that the tiles of the rows from a
    /// multiple of 16 on are an operand of their own ([`Packed::n_range`]).
    ByRows,
    /// Its rows are the summed `k` and its columns `n` (the values of a
    /// weighted sum): tile (`j`, `c`) at `(c·n_blocks + j)·TILE`, so that
    /// the tiles of the rows from a multiple of 32 on are an operand of
    /// their own ([`Packed::k_range`]).
    ByColumns,
}

impl Layout {
    /// The blocks of 16 columns (`n`) and chunks of 32 rows (`k`) of the
    /// operand of a `rows` × `cols` matrix.
    fn blocks(self, rows: usize, cols: usize) -> (usize, usize) {
        let (n, k) = match self {
            Layout::ByRows => (rows, cols),
            Layout::ByColumns => (cols, rows),
        };
        (n.div_ceil(ROWS), k.div_ceil(DEPTH))
    }
}

/// Packs `src` (`rows` rows of `cols` f32, `ld` apart) as a `B` operand
/// laid out as `layout` says, rounded to bf16 and padded with zeros to
/// whole tiles.
pub(super) fn pack(
    layout: Layout,
    src: &[f32],
    (rows, cols, ld): (usize, usize, usize),
    dst: &mut [u16],
) {
    let (n_blocks, k_chunks) = layout.blocks(rows, cols);
    assert!(
        dst.len() >= n_blocks * k_chunks * TILE,
        "the packed operand's room"
    );
    assert!(rows == 0 || src.len() >= (rows - 1) * ld + cols, "the rows");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512F and BW; the lengths are checked.
        return unsafe {
            match layout {
                Layout::ByRows => avx512::pack_by_rows(src, rows, cols, ld, dst),
                Layout::ByColumns => avx512::pack_by_columns(src, rows, cols, ld, dst),
            }
        };
    }
    pack_plain(layout, src, (rows, cols, ld), dst)
}

/// [`pack`], a number at a time.
fn pack_plain(
    layout: Layout,
    src: &[f32],
    (rows, cols, ld): (usize, usize, usize),
    dst: &mut [u16],
) {
    let (n_blocks, k_chunks) = layout.blocks(rows, cols);
    for j in 0..n_blocks {
        for c in 0..k_chunks {
            let at = match layout {
                Layout::ByRows => j * k_chunks + c,
                Layout::ByColumns => c * n_blocks + j,
            };
            let tile = &mut dst[at * TILE..][..TILE];
            for n in 0..ROWS {
                for k in 0..DEPTH {
                    let (k_at, n_at) = (c * DEPTH + k, j * ROWS + n);
                    let (r, col) = match layout {
                        Layout::ByRows => (n_at, k_at),
                        Layout::ByColumns => (k_at, n_at),
                    };
                    let v = if r < rows && col < cols {
                        src[r * ld + col]
                    } else {
                        0.0
                    };
                    tile[k / 2 * 2 * ROWS + n * 2 + k % 2] = bf16_bits(v);
                }
            }
        }
    }
}

/// The packings sixteen numbers at a time.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{rounded, DEPTH, ROWS, TILE};
    use std::arch::x86_64::*;

    /// Per lane, the bf16 `even` (in its high 16 bits, as [`rounded`]
    /// leaves it) in the low half of a word and the bf16 `odd` in the
    /// high half: a pair as the tiles read it.
    #[inline(always)]
    unsafe fn pairs(even: __m512i, odd: __m512i) -> __m512i {
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        _mm512_or_si512(_mm512_srli_epi32::<16>(even), _mm512_and_si512(odd, high))
    }

    /// Lanes `from..from + 16` of row `r` (zeros past `rows` and `cols`).
    #[inline(always)]
    unsafe fn load(
        src: &[f32],
        r: usize,
        from: usize,
        (rows, cols, ld): (usize, usize, usize),
    ) -> __m512 {
        if r >= rows || from >= cols {
            return _mm512_setzero_ps();
        }
        let live = (cols - from).min(16);
        let mask = ((1u32 << live) - 1) as __mmask16;
        _mm512_maskz_loadu_ps(mask, src.as_ptr().add(r * ld + from))
    }

    /// [`super::pack`] [`super::Layout::ByRows`]: per row of a tile, its 32 numbers as 16
    /// pairs, each pair's word scattered to its place in the tile's rows.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_by_rows(
        src: &[f32],
        rows: usize,
        cols: usize,
        ld: usize,
        dst: &mut [u16],
    ) {
        let (n_blocks, k_chunks) = (rows.div_ceil(ROWS), cols.div_ceil(DEPTH));
        let shape = (rows, cols, ld);
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
        // Pair `p`'s word of row `n` lies at word `p·16 + n` of the tile.
        let places = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(ROWS as i32),
        );
        for j in 0..n_blocks {
            for c in 0..k_chunks {
                let tile = dst[(j * k_chunks + c) * TILE..][..TILE].as_mut_ptr() as *mut i32;
                for n in 0..ROWS {
                    let r = j * ROWS + n;
                    let lo = load(src, r, c * DEPTH, shape);
                    let hi = load(src, r, c * DEPTH + 16, shape);
                    let even = rounded(_mm512_permutex2var_ps(lo, evens, hi));
                    let odd = rounded(_mm512_permutex2var_ps(lo, odds, hi));
                    let words = pairs(even, odd);
                    _mm512_i32scatter_epi32::<4>(tile.add(n), places, words);
                }
            }
        }
    }

    /// [`super::pack`] [`super::Layout::ByColumns`]: per pair of rows, their 16 numbers of a
    /// tile's columns interleaved into one tile row.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_by_columns(
        src: &[f32],
        rows: usize,
        cols: usize,
        ld: usize,
        dst: &mut [u16],
    ) {
        let (n_blocks, k_chunks) = (cols.div_ceil(ROWS), rows.div_ceil(DEPTH));
        let shape = (rows, cols, ld);
        for c in 0..k_chunks {
            for j in 0..n_blocks {
                let tile = dst[(c * n_blocks + j) * TILE..][..TILE].as_mut_ptr();
                for p in 0..DEPTH / 2 {
                    let r = c * DEPTH + 2 * p;
                    let even = rounded(load(src, r, j * ROWS, shape));
                    let odd = rounded(load(src, r + 1, j * ROWS, shape));
                    let words = pairs(even, odd);
                    _mm512_storeu_si512(tile.add(p * 2 * ROWS) as *mut _, words);
                }
            }
        }
    }
}

impl<'a> Packed<'a> {
    /// What [`pack`] wrote into `data` for `rows` rows of `cols` laid out
    /// as `layout`.
    pub(super) fn new(layout: Layout, data: &'a [u16], rows: usize, cols: usize) -> Packed<'a> {
        let (n_blocks, k_chunks) = layout.blocks(rows, cols);
        let (n_step, k_step) = match layout {
            Layout::ByRows => (k_chunks * TILE, TILE),
            Layout::ByColumns => (TILE, n_blocks * TILE),
        };
        Packed {
            data,
            n_blocks,
            k_chunks,
            n_step,
            k_step,
        }
    }

    /// The `B` operand of a [`Layout::ByRows`] matrix's rows (the `n` extent) from
    /// `first` (a multiple of 16) on, `count` of them.
    pub(super) fn n_range(&self, first: usize, count: usize) -> Packed<'a> {
        assert!(first.is_multiple_of(ROWS) && self.k_step == TILE);
        Packed {
            data: &self.data[first / ROWS * self.n_step..],
            n_blocks: count.div_ceil(ROWS),
            ..*self
        }
    }

    /// The `B` operand of a [`Layout::ByColumns`] matrix's rows (the `k` extent) from
    /// `first` (a multiple of 32) on, `count` of them.
    pub(super) fn k_range(&self, first: usize, count: usize) -> Packed<'a> {
        assert!(first.is_multiple_of(DEPTH) && self.n_step == TILE);
        Packed {
            data: &self.data[first / DEPTH * self.k_step..],
            k_chunks: count.div_ceil(DEPTH),
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::tests::fill;

    fn round(v: f32) -> f32 {
        f32::from_bits((bf16_bits(v) as u32) << 16)
    }

    /// The rounding is `half`'s, scalar and vector.
    #[test]
    fn rounding_is_to_nearest_even() {
        let src: Vec<f32> = fill(1000, 7)
            .into_iter()
            // 1 + 2⁻⁸ and 1 + 3·2⁻⁸: ties, to even both ways.
            .chain([
                0.0,
                -0.0,
                1.0,
                1.0 + 1.0 / 256.0,
                1.0 + 3.0 / 256.0,
                3.0e38,
                -1.0e-40,
            ])
            .collect();
        for &v in &src {
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            for chunk in src.chunks_exact(16) {
                let mut lanes = [0u32; 16];
                // SAFETY: the CPU has AVX-512F (checked above).
                unsafe {
                    let v = rounded(_mm512_loadu_ps(chunk.as_ptr()));
                    _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, v);
                }
                for (v, l) in chunk.iter().zip(lanes) {
                    assert_eq!((l >> 16) as u16, bf16_bits(*v), "{v}");
                }
            }
        }
    }

    /// The vector packings give the plain loops' tiles.
    #[test]
    fn packings_match_the_plain_loops() {
        for (rows, cols, ld) in [
            (40usize, 70usize, 75usize),
            (16, 32, 32),
            (5, 3, 9),
            (33, 100, 100),
        ] {
            let src = fill(rows * ld, 3);
            let room = rows.div_ceil(DEPTH) * DEPTH * cols.div_ceil(DEPTH) * DEPTH;
            for layout in [Layout::ByRows, Layout::ByColumns] {
                let (mut fast, mut plain) = (vec![7u16; room], vec![7u16; room]);
                pack(layout, &src, (rows, cols, ld), &mut fast);
                pack_plain(layout, &src, (rows, cols, ld), &mut plain);
                assert_eq!(fast, plain, "{layout:?}, {rows} x {cols}");
            }
        }
    }

    /// Both products, on shapes with edges in every extent and with
    /// accumulation, equal f32 sums of the bf16-rounded operands' products.
    /// Skipped where the CPU has no AMX-BF16.
    #[test]
    fn tile_products_equal_f32_products_of_bf16_numbers() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16 (or Linux refused the tile state)");
            return;
        }
        for (m, n, k) in [
            (64usize, 256usize, 192usize),
            (48, 80, 70),
            (16, 16, 32),
            (5, 40, 100),
            (33, 17, 3),
        ] {
            let m16 = m.div_ceil(ROWS) * ROWS;
            let lhs = fill(m * k, 1);
            let rhs = fill(n * k, 2);
            // `A`: the rows rounded and padded.
            let lda = k.div_ceil(DEPTH) * DEPTH;
            let mut a = vec![0u16; m16 * lda];
            for r in 0..m {
                for c in 0..k {
                    a[r * lda + c] = bf16_bits(lhs[r * k + c]);
                }
            }
            // Scores (`rhs` as `n` keys of `k`), then weighted sums (`rhs`
            // as `k` values of `n`) added to them.
            let ldc = n.div_ceil(ROWS) * ROWS;
            let mut c = vec![0f32; m16 * ldc];
            for (layout, accumulate) in [(Layout::ByRows, false), (Layout::ByColumns, true)] {
                let (rows, cols) = match layout {
                    Layout::ByRows => (n, k),
                    Layout::ByColumns => (k, n),
                };
                // Element (`i` of `k`, `j` of `n`).
                let at = |i: usize, j: usize| match layout {
                    Layout::ByRows => rhs[j * k + i],
                    Layout::ByColumns => rhs[i * n + j],
                };
                let mut packed = vec![0u16; lda * ldc];
                pack(layout, &rhs, (rows, cols, cols), &mut packed);
                let b = Packed::new(layout, &packed, rows, cols);
                let before = c.clone();
                let term = Term {
                    a: a.as_ptr(),
                    lda,
                    b,
                };
                // SAFETY: AMX-BF16 is there; the buffers hold the tiles.
                unsafe { matmul(m16 / ROWS, &[term], c.as_mut_ptr(), ldc, accumulate) };
                for r in 0..m {
                    for j in 0..n {
                        let sum: f32 = (0..k)
                            .map(|i| round(lhs[r * k + i]) * round(at(i, j)))
                            .sum();
                        let want = if accumulate { before[r * ldc + j] } else { 0.0 } + sum;
                        let got = c[r * ldc + j];
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{m}x{n}x{k} {layout:?} ({r}, {j}): {got} against {want}"
                        );
                    }
                }
            }
        }
    }
}
