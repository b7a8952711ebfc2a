//! Intel AMX int8 tiles for Q8_0 weights at prompt sizes: sixteen input
//! rows against a 16-row tile of the packed weight, one block at a time.
//!
//! The packed layout is already what a tile product takes: a block of a
//! tile, `[8 k-quads][16 rows][4 bytes]`, is a `B` tile of 8 rows of 64
//! bytes, and sixteen input rows' block (32 int8 each) an `A` tile of 16
//! rows of 32 bytes. One `tdpbsud` (signed inputs, unsigned weights + 128)
//! gives the 16 × 16 integer dots of the block that 64 VNNI instructions
//! give for 8 rows; each is exact, and the scales are applied as the VNNI
//! kernel applies them, in the same order, so the numbers are the same to
//! the bit. Stable Rust has no AMX intrinsics: the few instructions are
//! inline assembly, behind run-time detection (CPUID, and Linux granting
//! the tile state through `arch_prctl`).

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{Row, BLOCK, TILE};
use crate::kernels::x86::{amx_granted, prefetch, tile_prefetches, TileConfig};

/// Input rows one tile product takes.
pub(crate) const AMX_ROWS: usize = 16;

/// Bytes of one block of a packed tile: a `B` tile.
const BLOCK_BYTES: usize = BLOCK * TILE;

/// Whether this CPU runs the AMX int8 kernel: it has AMX-TILE and
/// AMX-INT8, and Linux gave the process the tile state. Read once;
/// `FERROSEEK_AMX=off` turns it off (for measuring against the VNNI
/// kernel).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    // CPUID leaf 7, EDX bit 25: AMX-INT8.
    *AVAILABLE.get_or_init(|| amx_granted(25))
}

/// The tiles' shapes (palette 1): `tmm0`, `tmm3` the 16 × 16 int32 dots;
/// `tmm1`, `tmm4` 16 input rows of a block (32 bytes); `tmm2`, `tmm5` a
/// block of the weight (8 rows of 64 bytes). Two of each, so that one
/// block's product runs while the other's dots are read.
const CONFIG: TileConfig = {
    let (dots, input, weight) = (
        (64, 16),
        (BLOCK as u16, AMX_ROWS as u8),
        (64, (BLOCK / 4) as u8),
    );
    TileConfig::new(&[dots, input, weight, dots, input, weight])
};

/// Tile `$c` := the dots of the 16 input rows from `$a` (`$stride`
/// bytes apart) with the weight block at `$w`, loaded into tiles `$at` and
/// `$wt`.
macro_rules! product_into {
    ($c:literal, $at:literal, $wt:literal, $a:expr, $stride:expr, $w:expr) => {
        asm!(
            concat!("tilezero ", $c),
            concat!("tileloadd ", $at, ", [{a} + {stride} * 1]"),
            concat!("tileloadd ", $wt, ", [{w} + {row} * 1]"),
            concat!("tdpbsud ", $c, ", ", $at, ", ", $wt),
            a = in(reg) $a,
            stride = in(reg) $stride,
            w = in(reg) $w,
            row = in(reg) 64usize,
            options(nostack, readonly),
        )
    };
}

/// Block `b`'s 16 × 16 dots, into `tmm0` (even blocks) or `tmm3` (odd):
/// the inputs' block from `a` (rows `stride` bytes apart), the weight's
/// from `w`.
///
/// # Safety
/// The tile configuration is loaded; 16 rows of 32 bytes from `a` and 512
/// bytes from `w` may be read.
#[inline(always)]
unsafe fn product(b: usize, a: *const i8, stride: usize, w: *const u8) {
    if b.is_multiple_of(2) {
        product_into!("tmm0", "tmm1", "tmm2", a, stride, w);
    } else {
        product_into!("tmm3", "tmm4", "tmm5", a, stride, w);
    }
}

/// Block `b`'s dots (see [`product`]) stored into `dots`.
///
/// # Safety
/// As for [`product`]; `dots` is 1 KB.
#[inline(always)]
unsafe fn store(b: usize, dots: *mut i32) {
    let row = 64usize;
    if b.is_multiple_of(2) {
        asm!("tilestored [{d} + {row} * 1], tmm0", d = in(reg) dots, row = in(reg) row, options(nostack));
    } else {
        asm!("tilestored [{d} + {row} * 1], tmm3", d = in(reg) dots, row = in(reg) row, options(nostack));
    }
}

/// Sixteen rows of 16 int32.
#[repr(C, align(64))]
struct Dots([[i32; TILE]; AMX_ROWS]);

/// The 16 dots of one Q8_0 tile (`scales`, `quads` as the VNNI kernel
/// takes them) with each of 16 input rows: `rows` gives their scales and
/// offsets, `a` their int8 numbers, row `i`'s at `a + i·stride`.
///
/// # Safety
/// [`available`] said yes; each of the 16 rows has `k` numbers readable
/// from `a + i·stride`, where `k` is the rows' width (the other lengths
/// are checked).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn tile(
    a: *const i8,
    stride: usize,
    rows: &[Row],
    scales: &[half::f16],
    quads: &[u8],
    out: &mut [[f32; TILE]; AMX_ROWS],
) {
    assert_eq!(rows.len(), AMX_ROWS, "a tile product takes 16 rows");
    let blocks = rows[0].scales.len();
    assert!(scales.len() >= blocks * TILE && quads.len() >= blocks * BLOCK_BYTES);
    for row in rows {
        assert!(row.scales.len() >= blocks && row.offsets.len() >= blocks);
    }
    CONFIG.load();
    let qp = quads.as_ptr();
    let on = tile_prefetches(AMX_ROWS);
    // Two buffers: a block's dots are read a block after they are
    // stored, once the tile store has reached the cache.
    let mut dots = [Dots([[0; TILE]; AMX_ROWS]), Dots([[0; TILE]; AMX_ROWS])];
    let mut total = [_mm512_setzero_ps(); AMX_ROWS];
    // The rows' block offsets and scales, found once (not per block).
    let offsets: [*const i32; AMX_ROWS] = std::array::from_fn(|i| rows[i].offsets.as_ptr());
    let x_scales: [*const f32; AMX_ROWS] = std::array::from_fn(|i| rows[i].scales.as_ptr());
    // Block `b`'s dots, scaled into the sums: (w + 128)·x summed, less
    // 128·Σx, is the block's exact dot; then the VNNI kernel's very
    // operations. Inlined, so that the sums stay in registers.
    macro_rules! scale {
        ($b:expr, $dots:expr) => {{
            let b = $b;
            let w_scales =
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(b * TILE) as *const _));
            for i in 0..AMX_ROWS {
                let sum = _mm512_load_si512($dots.0[i].as_ptr() as *const _);
                let dot = _mm512_add_epi32(sum, _mm512_set1_epi32(*offsets[i].add(b)));
                let scale = _mm512_mul_ps(w_scales, _mm512_set1_ps(*x_scales[i].add(b)));
                total[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, total[i]);
            }
        }};
    }
    if blocks > 0 {
        product(0, a, stride, qp);
    }
    for b in 0..blocks {
        store(b, dots[b % 2].0.as_mut_ptr() as *mut i32);
        // The next block's product runs while the last one's dots are
        // scaled.
        if b + 1 < blocks {
            prefetch(on, qp.wrapping_add((b + 8) * BLOCK_BYTES), BLOCK_BYTES / 64);
            product(
                b + 1,
                a.add((b + 1) * BLOCK),
                stride,
                qp.add((b + 1) * BLOCK_BYTES),
            );
        }
        if b > 0 {
            scale!(b - 1, dots[(b - 1) % 2]);
        }
    }
    if blocks > 0 {
        scale!(blocks - 1, dots[(blocks - 1) % 2]);
    }
    asm!("tilerelease", options(nostack, nomem));
    for (o, t) in out.iter_mut().zip(&total) {
        _mm512_storeu_ps(o.as_mut_ptr(), *t);
    }
}

/// A task's input rows in groups of 16 for [`tile`]: each group's first
/// row and the distance between its rows where they lie evenly spaced
/// (a matrix's rows), else its rows copied together (a token's rows
/// picked for an expert), once per task and thread.
pub(super) struct Groups {
    groups: Vec<Source>,
    gathered: Vec<i8>,
    k: usize,
}

enum Source {
    Direct(*const i8, usize),
    Gathered(usize),
}

impl Groups {
    /// The whole groups of 16 among `rows` (each `k` numbers); the rest
    /// are left to the VNNI kernel.
    pub(super) fn new(rows: &[Row], k: usize) -> Groups {
        let mut gathered = Vec::new();
        let groups = rows
            .chunks_exact(AMX_ROWS)
            .map(|group| {
                // The distance from each row to the next, where it is ahead.
                let gap =
                    |w: &[Row]| (w[1].q.as_ptr() as usize).checked_sub(w[0].q.as_ptr() as usize);
                let step = gap(&group[..2]);
                if step.is_some() && group.windows(2).all(|w| gap(w) == step) {
                    Source::Direct(group[0].q.as_ptr(), step.unwrap_or(k))
                } else {
                    let at = gathered.len();
                    for row in group {
                        gathered.extend_from_slice(&row.q[..k]);
                    }
                    Source::Gathered(at)
                }
            })
            .collect();
        Groups {
            groups,
            gathered,
            k,
        }
    }

    /// How many rows the groups hold.
    pub(super) fn rows(&self) -> usize {
        self.groups.len() * AMX_ROWS
    }

    /// Group `g`'s first row and the distance between its rows.
    pub(super) fn group(&self, g: usize) -> (*const i8, usize) {
        match self.groups[g] {
            Source::Direct(first, stride) => (first, stride),
            Source::Gathered(at) => (self.gathered[at..].as_ptr(), self.k),
        }
    }
}
