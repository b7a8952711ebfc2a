//! What the k-quant layouts ([`PackedQ4K`](super::PackedQ4K),
//! [`PackedQ6K`](super::PackedQ6K)) share: a `[n, k]` weight held in
//! units, a unit being one 16-row tile's 256-wide super-block, with a
//! fixed count of number bytes, f16 factors and scales each; a tile's
//! units follow one another in each of the three buffers.

use std::marker::PhantomData;

use super::{Lines, TILE};
use crate::kernels::parallel::{for_ranges_if, Disjoint};

/// Weights per super-block.
pub(crate) const SUPER: usize = 256;

/// One unit's parts: its number bytes, f16 factors and scales.
pub(crate) type Unit<'a, S> = (&'a [u8], &'a [half::f16], &'a [S]);

/// A k-quant format's unit.
pub trait Layout: Clone + std::fmt::Debug {
    /// Number bytes per unit.
    const BITS: usize;
    /// f16 factors per unit.
    const D: usize;
    /// Scales per unit.
    const SCALES: usize;
    type Scale: Copy + Default + Send + Sync + std::fmt::Debug;

    /// Row `r`'s 256 numbers in `unit`, as the format dequantizes them.
    fn numbers(unit: Unit<'_, Self::Scale>, r: usize, out: &mut [f32]);
}

/// One `[n, k]` weight (`n` a multiple of 16, `k` of 256) in layout `L`.
#[derive(Debug, Clone)]
pub struct SuperBlocks<L: Layout> {
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// `[n / 16][k / 256][L::BITS]`.
    pub(crate) bits: Lines,
    /// `[n / 16][k / 256][L::D]`.
    pub(crate) d: Vec<half::f16>,
    /// `[n / 16][k / 256][L::SCALES]`.
    pub(crate) scales: Vec<L::Scale>,
    layout: PhantomData<L>,
}

impl<L: Layout> SuperBlocks<L> {
    /// GGML's blocks (`data`, `block_bytes` each, row-major) of a `[n, k]`
    /// weight, each placed by `put(block, r, unit)` in its unit as its
    /// tile's row `r`. With `parallel`, tiles are repacked on the compute
    /// pool (repacking one tile after another made most of a GGUF file's
    /// load); callers that already split a weight over threads of their
    /// own pass `false`. `None` when the shape does not tile.
    pub(crate) fn repack(
        data: &[u8],
        (n, k): (usize, usize),
        block_bytes: usize,
        parallel: bool,
        put: impl Fn(&[u8], usize, (&mut [u8], &mut [half::f16], &mut [L::Scale])) + Sync,
    ) -> Option<SuperBlocks<L>> {
        if !n.is_multiple_of(TILE) || !k.is_multiple_of(SUPER) {
            return None;
        }
        let supers = k / SUPER;
        assert_eq!(
            data.len(),
            n * supers * block_bytes,
            "not a [n, k] weight of these blocks"
        );
        let units = n / TILE * supers;
        let mut bits = Lines::zeroed(units * L::BITS);
        let mut d = vec![half::f16::ZERO; units * L::D];
        let mut scales = vec![L::Scale::default(); units * L::SCALES];
        let out = (
            Disjoint::new(&mut bits),
            Disjoint::new(&mut d),
            Disjoint::new(&mut scales),
        );
        let fill = |tiles: std::ops::Range<usize>| {
            for tile in tiles {
                for sb in 0..supers {
                    let u = tile * supers + sb;
                    // SAFETY: each unit is its own range of each buffer,
                    // inside them, and the buffers outlive the parallel
                    // call; a tile's units are this task's alone.
                    let (bits, d, scales) = unsafe {
                        (
                            out.0.slice(u * L::BITS..(u + 1) * L::BITS),
                            out.1.slice(u * L::D..(u + 1) * L::D),
                            out.2.slice(u * L::SCALES..(u + 1) * L::SCALES),
                        )
                    };
                    for r in 0..TILE {
                        let row = tile * TILE + r;
                        let block = &data[(row * supers + sb) * block_bytes..][..block_bytes];
                        put(block, r, (&mut *bits, &mut *d, &mut *scales));
                    }
                }
            }
        };
        for_ranges_if(parallel, n / TILE, fill);
        Some(SuperBlocks {
            n,
            k,
            bits,
            d,
            scales,
            layout: PhantomData,
        })
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes a full read takes.
    pub fn bytes(&self) -> usize {
        self.bits.len() + self.d.len() * 2 + self.scales.len() * size_of::<L::Scale>()
    }

    /// `top` above `bottom` (both `[_, k]`): tiles hold whole rows, so
    /// their units simply follow on.
    pub fn stack(mut top: SuperBlocks<L>, bottom: SuperBlocks<L>) -> SuperBlocks<L> {
        assert_eq!(top.k, bottom.k, "stacked weights differ in width");
        top.n += bottom.n;
        top.bits.extend(bottom.bits);
        top.d.extend(bottom.d);
        top.scales.extend(bottom.scales);
        top
    }

    /// Units `units` of the three buffers.
    fn units(&self, units: std::ops::Range<usize>) -> Unit<'_, L::Scale> {
        let of = |per: usize| units.start * per..units.end * per;
        (
            &self.bits[of(L::BITS)],
            &self.d[of(L::D)],
            &self.scales[of(L::SCALES)],
        )
    }

    /// Tile `tile`'s parts, all its super-blocks.
    pub(super) fn tile(&self, tile: usize) -> Unit<'_, L::Scale> {
        let supers = self.k / SUPER;
        self.units(tile * supers..(tile + 1) * supers)
    }

    /// The weight's numbers, `[n, k]` row-major, as the format dequantizes
    /// them.
    pub fn dequantize(&self) -> Vec<f32> {
        let supers = self.k / SUPER;
        let mut out = vec![0f32; self.n * self.k];
        for (row, out) in out.chunks_exact_mut(self.k).enumerate() {
            let (tile, r) = (row / TILE, row % TILE);
            for (sb, out) in out.chunks_exact_mut(SUPER).enumerate() {
                let unit = tile * supers + sb;
                L::numbers(self.units(unit..unit + 1), r, out);
            }
        }
        out
    }
}
