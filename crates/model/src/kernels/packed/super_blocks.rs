//! What the packed block layouts ([`PackedQ4K`](super::PackedQ4K),
//! [`PackedQ5K`](super::PackedQ5K), [`PackedQ6K`](super::PackedQ6K),
//! [`PackedLegacy`](super::PackedLegacy)) share: a `[n, k]` weight held in
//! units, a unit being one 16-row tile's block (a k-quant's 256-wide
//! super-block, a legacy format's 32-wide block), with a fixed count of
//! number bytes, f16 factors and scales each; a tile's units follow one
//! another in each of the three buffers.

use super::{Lines, TILE};
use crate::kernels::parallel::{for_ranges_if, Disjoint};

/// Weights per super-block.
pub(crate) const SUPER: usize = 256;

/// GGML's bytes `src` placed four at a time as row `r` of a unit's
/// `[src.len() / 4][16 rows][4]` bytes `dst`: how every packed layout
/// lays out a block's k-quads, GGML's own bytes where they already hold
/// what the kernel reads.
pub(crate) fn place_quads(src: &[u8], r: usize, dst: &mut [u8]) {
    let (src, _) = src.as_chunks::<4>();
    let (dst, _) = dst.as_chunks_mut::<4>();
    // One check for all the quads, none per quad.
    assert!(r < TILE && dst.len() >= src.len() * TILE);
    for (c, four) in src.iter().enumerate() {
        dst[c * TILE + r] = *four;
    }
}

/// One unit's parts: its number bytes, f16 factors and scales.
pub(crate) type Unit<'a, S> = (&'a [u8], &'a [half::f16], &'a [S]);

/// A packed format's unit (a value: the legacy formats share one type).
pub trait Layout: Clone + Copy + PartialEq + std::fmt::Debug + Send + Sync {
    type Scale: Copy + Default + Send + Sync + std::fmt::Debug;

    /// Numbers of a row per unit.
    fn width(self) -> usize {
        SUPER
    }
    /// Number bytes per unit.
    fn bits(self) -> usize;
    /// f16 factors per unit.
    fn d(self) -> usize;
    /// Scales per unit.
    fn scales(self) -> usize;

    /// Row `r`'s [`Self::width`] numbers in `unit`, as the format
    /// dequantizes them.
    fn numbers(self, unit: Unit<'_, Self::Scale>, r: usize, out: &mut [f32]);
}

/// One `[n, k]` weight (`n` a multiple of 16, `k` of the layout's width)
/// in layout `L`.
#[derive(Debug, Clone)]
pub struct SuperBlocks<L: Layout> {
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// `[n / 16][k / width][bits]`.
    pub(crate) bits: Lines,
    /// `[n / 16][k / width][d]`.
    pub(crate) d: Vec<half::f16>,
    /// `[n / 16][k / width][scales]`.
    pub(crate) scales: Vec<L::Scale>,
    pub(crate) layout: L,
}

impl<L: Layout> SuperBlocks<L> {
    /// GGML's blocks (`data`, `block_bytes` each, one per unit row,
    /// row-major) of a `[n, k]` weight in `layout`, each placed by
    /// `put(block, r, unit)` in its unit as its tile's row `r`. With
    /// `parallel`, tiles are repacked on the compute pool (repacking one
    /// tile after another made most of a GGUF file's load); callers that
    /// already split a weight over threads of their own pass `false`.
    /// `None` when the shape does not tile.
    pub(crate) fn repack(
        layout: L,
        data: &[u8],
        (n, k): (usize, usize),
        block_bytes: usize,
        parallel: bool,
        put: impl Fn(&[u8], usize, (&mut [u8], &mut [half::f16], &mut [L::Scale])) + Sync,
    ) -> Option<SuperBlocks<L>> {
        if !n.is_multiple_of(TILE) || !k.is_multiple_of(layout.width()) {
            return None;
        }
        let supers = k / layout.width();
        let (unit_bits, unit_d, unit_scales) = (layout.bits(), layout.d(), layout.scales());
        assert_eq!(
            data.len(),
            n * supers * block_bytes,
            "not a [n, k] weight of these blocks"
        );
        let units = n / TILE * supers;
        let mut bits = Lines::zeroed(units * unit_bits);
        let mut d = vec![half::f16::ZERO; units * unit_d];
        let mut scales = vec![L::Scale::default(); units * unit_scales];
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
                            out.0.slice(u * unit_bits..(u + 1) * unit_bits),
                            out.1.slice(u * unit_d..(u + 1) * unit_d),
                            out.2.slice(u * unit_scales..(u + 1) * unit_scales),
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
            layout,
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
        assert_eq!(
            top.layout, bottom.layout,
            "stacked weights differ in format"
        );
        top.n += bottom.n;
        top.bits.extend(bottom.bits);
        top.d.extend(bottom.d);
        top.scales.extend(bottom.scales);
        top
    }

    /// Units `units` of the three buffers.
    fn units(&self, units: std::ops::Range<usize>) -> Unit<'_, L::Scale> {
        let of = |per: usize| units.start * per..units.end * per;
        let l = self.layout;
        (
            &self.bits[of(l.bits())],
            &self.d[of(l.d())],
            &self.scales[of(l.scales())],
        )
    }

    /// Tile `tile`'s parts, all its blocks.
    pub(super) fn tile(&self, tile: usize) -> Unit<'_, L::Scale> {
        let supers = self.k / self.layout.width();
        self.units(tile * supers..(tile + 1) * supers)
    }

    /// The weight's numbers, `[n, k]` row-major, as the format dequantizes
    /// them.
    pub fn dequantize(&self) -> Vec<f32> {
        let width = self.layout.width();
        let supers = self.k / width;
        let mut out = vec![0f32; self.n * self.k];
        for (row, out) in out.chunks_exact_mut(self.k).enumerate() {
            let (tile, r) = (row / TILE, row % TILE);
            for (sb, out) in out.chunks_exact_mut(width).enumerate() {
                let unit = tile * supers + sb;
                self.layout.numbers(self.units(unit..unit + 1), r, out);
            }
        }
        out
    }
}
