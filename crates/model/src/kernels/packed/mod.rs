//! Quantized weights repacked for AVX-512-VNNI: on CPUs that have it, every
//! Q8_0, Q2_K to Q6_K, Q4_0, Q4_1, Q5_0 and Q5_1 weight of the model
//! (projections, MLA's absorbed per-head matrices, the experts, lm_head) is
//! held this way, as its only copy, and these kernels run it at every input
//! size.
//!
//! Each group of 16 output rows is stored so that one VNNI instruction
//! multiplies four inputs with sixteen rows at once: for Q8_0 block by
//! block as `[8 k-quads][16 rows][4 bytes]`, with the 16 rows' f16 scales
//! beside them (34 bytes per 32 weights, as Q8_0); Q4_K in [`PackedQ4K`],
//! Q5_K in [`PackedQ5K`], Q6_K in [`PackedQ6K`], Q3_K in [`PackedQ3K`] and
//! Q2_K in [`PackedQ2K`] (both on Q6_K's kernel), the 32-number formats of
//! 4 and 5 bits in [`PackedLegacy`].
//! The input rows are quantized to int8 per 32-number block, as Q8_0 does
//! to weights; a block's integer dot is exact, and its scales are applied
//! once per block and 16 rows. One call takes several weights, each with
//! its own input rows (the experts of a step, each on its own tokens): the
//! input is quantized once, and all their tiles share one parallel region.
//!
//! Against candle's quantized matmul, which repacks both formats in a
//! similar way: its inputs are quantized per 256 numbers (Q8K), a single
//! row on one thread, and every weight is a call of its own. With 8
//! sequences a step runs ~21 experts a layer on one or two rows each, and
//! those per-call costs dominate. Its Q4_K tiles also take 6 bits
//! a weight, built beside the 4.5-bit original.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: Q8_0 weights are stored
//! offset by +128 as unsigned, and each input block's sum times 128 is
//! taken off again (Q4_K's numbers are unsigned already).

use crate::kernels::parallel::{self, Disjoint};

#[cfg(target_arch = "x86_64")]
mod amx;
mod input;
pub(crate) mod legacy;
pub(crate) mod q4k;
pub(crate) mod q6k;
mod q8_0;
pub(crate) mod super_blocks;
#[cfg(test)]
mod tests;

pub(crate) use input::Row;
use input::{quantize_into, quantize_rows, Quantized, QuantizedView};
pub use legacy::{Legacy, PackedLegacy};
pub use q4k::{PackedQ4K, PackedQ5K};
pub use q6k::{PackedQ2K, PackedQ3K, PackedQ6K};
pub use q8_0::PackedQ8;

/// A task's input rows in groups for the AMX kernel; none on other CPUs.
#[cfg(target_arch = "x86_64")]
type AmxGroups = amx::Groups;
#[cfg(not(target_arch = "x86_64"))]
type AmxGroups = std::convert::Infallible;

/// `rows` (each `k` numbers) in groups for the AMX kernel, where `pack`
/// is Q8_0 and the CPU has AMX-INT8, and there is a whole group.
fn amx_groups(pack: &Packed, rows: &[Row], k: usize) -> Option<AmxGroups> {
    #[cfg(target_arch = "x86_64")]
    if matches!(pack, Packed::Q8_0(_)) && rows.len() >= amx::AMX_ROWS && amx::available() {
        return Some(amx::Groups::new(rows, k));
    }
    let _ = (pack, rows, k);
    None
}

/// Input rows a tile takes at once (independent accumulators): a batch of
/// 8 sequences reads each weight tile once.
const ROWS: usize = 8;
/// Output rows per tile, and numbers per block.
pub(crate) const TILE: usize = 16;
pub(crate) const BLOCK: usize = 32;
/// Bytes of one Q8_0 block: an f16 scale and 32 i8.
pub(crate) const Q8_0_BYTES: usize = 34;

/// Bytes held in whole 64-byte cache lines, aligned to them: the kernels'
/// 64-byte loads of packed weights never straddle two lines (a `Vec<u8>`
/// of this size starts 16 bytes past a page, so each of its loads did).
///
/// The buffer is a zeroed byte vector one line longer than asked, the
/// lines a window into it: zeroed bytes come from `calloc`, which for a
/// large buffer maps fresh pages and writes nothing, where an allocation
/// aligned to 64 bytes is written with zeros first (on one thread, each
/// page faulted in before the repacking that fills it). A large buffer's
/// whole 2 MiB spans are asked to be huge pages (one fault and one TLB
/// entry each, not 512).
pub(crate) struct Lines {
    /// The window's bytes and one line more.
    buffer: Vec<u8>,
    /// Where the window starts in `buffer`.
    start: usize,
}

/// Line size, and the window's alignment.
const LINE: usize = 64;

impl Lines {
    /// `bytes` zeros (a multiple of 64).
    pub(crate) fn zeroed(bytes: usize) -> Lines {
        assert!(bytes.is_multiple_of(LINE), "not whole lines");
        let buffer = vec![0u8; bytes + LINE];
        let start = buffer.as_ptr().align_offset(LINE);
        huge_pages(&buffer[start..start + bytes]);
        Lines { buffer, start }
    }

    /// The window's length.
    fn bytes(&self) -> usize {
        self.buffer.len() - LINE
    }

    pub(crate) fn extend(&mut self, other: Lines) {
        let len = self.bytes();
        let mut joined = Lines::zeroed(len + other.bytes());
        joined[..len].copy_from_slice(self);
        joined[len..].copy_from_slice(&other);
        *self = joined;
    }
}

/// Asks Linux to back `bytes`' whole 2 MiB spans with huge pages, before
/// they are first written (advice: where none are free, small pages
/// serve).
fn huge_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let begin = (bytes.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (bytes.as_ptr() as usize + bytes.len()) / HUGE * HUGE;
        if end > begin {
            // SAFETY: the span lies inside `bytes`' allocation, and the
            // advice changes how its pages are backed, not its contents.
            unsafe {
                libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

impl Clone for Lines {
    fn clone(&self) -> Lines {
        let mut copy = Lines::zeroed(self.bytes());
        copy.copy_from_slice(self);
        copy
    }
}

impl PartialEq for Lines {
    fn eq(&self, other: &Lines) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Lines({} bytes)", self.bytes())
    }
}

impl std::ops::Deref for Lines {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.bytes()]
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [u8] {
        let end = self.start + self.bytes();
        &mut self.buffer[self.start..end]
    }
}

/// `$body` on whichever format `$packed` holds, bound as `$p`: each
/// format's type has the same `dims`, `bytes` and `dequantize`.
macro_rules! each_format {
    ($packed:expr, $p:ident => $body:expr) => {
        match $packed {
            Packed::Q8_0($p) => $body,
            Packed::Q4K($p) => $body,
            Packed::Q5K($p) => $body,
            Packed::Q6K($p) => $body,
            Packed::Q3K($p) => $body,
            Packed::Q2K($p) => $body,
            Packed::Legacy($p) => $body,
        }
    };
}

/// A weight held for the packed kernels, in one of their formats.
#[derive(Debug, Clone)]
pub enum Packed {
    Q8_0(PackedQ8),
    Q4K(PackedQ4K),
    Q5K(PackedQ5K),
    Q6K(PackedQ6K),
    Q3K(PackedQ3K),
    Q2K(PackedQ2K),
    Legacy(PackedLegacy),
}

impl Packed {
    /// Whether this CPU runs the packed kernels.
    pub fn available() -> bool {
        PackedQ8::available()
    }

    /// Whether a `[n, k]` weight in `ggml` would be packed: a format the
    /// kernels take, in whole tiles, on a CPU that runs them.
    pub fn fits(ggml: candle_core::quantized::GgmlDType, n: usize, k: usize) -> bool {
        use candle_core::quantized::GgmlDType;
        use GgmlDType::{Q2K, Q3K, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q5_1, Q6K, Q8_0};
        let runs = matches!(
            ggml,
            Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2K | Q3K | Q4K | Q5K | Q6K
        );
        runs && Self::available() && n.is_multiple_of(TILE) && k.is_multiple_of(ggml.block_size())
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        each_format!(self, p => p.dims())
    }

    /// Bytes a full read takes.
    pub fn bytes(&self) -> usize {
        each_format!(self, p => p.bytes())
    }

    /// The format's name, as candle's GGML types are named.
    pub fn format(&self) -> &'static str {
        match self {
            Packed::Q8_0(_) => "q8_0",
            Packed::Q4K(_) => "q4k",
            Packed::Q5K(_) => "q5k",
            Packed::Q3K(_) => "q3k",
            Packed::Q2K(_) => "q2k",
            Packed::Legacy(p) => p.layout.name(),
            Packed::Q6K(_) => "q6k",
        }
    }

    /// The weight's numbers, `[n, k]` row-major, as the format
    /// dequantizes them.
    pub fn dequantize(&self) -> Vec<f32> {
        each_format!(self, p => p.dequantize())
    }

    /// `top` above `bottom` (both `[_, k]`, in one format).
    pub fn stack(top: Packed, bottom: Packed) -> Packed {
        match (top, bottom) {
            (Packed::Q8_0(t), Packed::Q8_0(b)) => Packed::Q8_0(PackedQ8::stack(t, b)),
            (Packed::Q4K(t), Packed::Q4K(b)) => Packed::Q4K(PackedQ4K::stack(t, b)),
            (Packed::Q5K(t), Packed::Q5K(b)) => Packed::Q5K(PackedQ5K::stack(t, b)),
            (Packed::Q3K(t), Packed::Q3K(b)) => Packed::Q3K(PackedQ3K::stack(t, b)),
            (Packed::Q2K(t), Packed::Q2K(b)) => Packed::Q2K(PackedQ2K::stack(t, b)),
            (Packed::Legacy(t), Packed::Legacy(b)) => Packed::Legacy(PackedLegacy::stack(t, b)),
            (Packed::Q6K(t), Packed::Q6K(b)) => Packed::Q6K(PackedQ6K::stack(t, b)),
            _ => panic!("stacked weights differ in format"),
        }
    }

    /// The 16 dots of tile `tile` with each of the first `r` of `rows`.
    ///
    /// # Safety
    /// The CPU has the kernels' features ([`Self::available`]).
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile(&self, tile: usize, rows: &[Row], r: usize) -> [[f32; TILE]; ROWS] {
        macro_rules! by_rows {
            ($($f:ident)::+, $($arg:expr),*) => {
                match r {
                    1 => $($f)::+::<1>($($arg),*),
                    2 => $($f)::+::<2>($($arg),*),
                    3 => $($f)::+::<3>($($arg),*),
                    4 => $($f)::+::<4>($($arg),*),
                    5 => $($f)::+::<5>($($arg),*),
                    6 => $($f)::+::<6>($($arg),*),
                    7 => $($f)::+::<7>($($arg),*),
                    _ => $($f)::+::<8>($($arg),*),
                }
            };
        }
        let mut dots = [[0f32; TILE]; ROWS];
        match self {
            Packed::Q8_0(p) => {
                let (scales, quads) = p.tile(tile);
                by_rows!(q8_0::vnni::tile, rows, scales, quads, &mut dots)
            }
            Packed::Q4K(p) => {
                let (quads, d, scales) = p.tile(tile);
                by_rows!(q4k::vnni::tile, rows, quads, d, scales, &mut dots)
            }
            Packed::Q5K(p) => {
                let (bits, d, scales) = p.tile(tile);
                by_rows!(q4k::vnni::tile_q5k, rows, bits, d, scales, &mut dots)
            }
            Packed::Q3K(p) => {
                let (bits, d, scales) = p.tile(tile);
                by_rows!(q6k::vnni::tile_q3k, rows, bits, d, scales, &mut dots)
            }
            Packed::Q2K(p) => {
                let (bits, d, scales) = p.tile(tile);
                by_rows!(q6k::vnni::tile_q2k, rows, bits, d, scales, &mut dots)
            }
            Packed::Legacy(p) => {
                let (bits, d, _) = p.tile(tile);
                match p.layout {
                    Legacy::Q4_0 => by_rows!(legacy::vnni::q4_0, rows, bits, d, &mut dots),
                    Legacy::Q4_1 => by_rows!(legacy::vnni::q4_1, rows, bits, d, &mut dots),
                    Legacy::Q5_0 => by_rows!(legacy::vnni::q5_0, rows, bits, d, &mut dots),
                    Legacy::Q5_1 => by_rows!(legacy::vnni::q5_1, rows, bits, d, &mut dots),
                }
            }
            Packed::Q6K(p) => {
                let (bits, d, scales) = p.tile(tile);
                by_rows!(q6k::vnni::tile, rows, bits, d, scales, &mut dots)
            }
        }
        dots
    }
}

/// `[m, g·n]` = per group `i`, `x[:, i·k..(i+1)·k] · W_iᵀ` for `x`: `[m, g·k]`
/// and `packs` (every one `[n, k]`), as [`crate::kernels::gemv::matmul_groups`],
/// with the input quantized per block. All groups' tiles are split over the
/// pool in one call.
///
/// Panics when the CPU lacks AVX-512-VNNI ([`PackedQ8::available`]).
pub fn matmul_groups(x: &[f32], m: usize, packs: &[&Packed]) -> Vec<f32> {
    let (n, k) = packs[0].dims();
    assert!(packs.iter().all(|p| p.dims() == (n, k)), "groups differ");
    let groups = packs.len();
    assert_eq!(x.len(), m * groups * k, "x is not [m, groups * k]");
    let columns = groups * n;
    let tasks: Vec<Task> = packs
        .iter()
        .enumerate()
        .map(|(g, &pack)| Task {
            pack,
            starts: (0..m).map(|i| (i * groups + g) * k).collect(),
            out: g * n,
            stride: columns,
        })
        .collect();
    let mut out = vec![0f32; m * columns];
    // SAFETY: group `g` writes columns `g·n..(g+1)·n` of each of the `m`
    // rows of `columns`, inside `out`; no two groups share a column.
    unsafe { run(x, &tasks, &mut out) };
    out
}

/// Each weight of `jobs` times its own input rows of `x`: a job `(pack,
/// starts)` multiplies the `k` numbers of `x` from each of `starts` (each a
/// multiple of 32) by `pack` (`[n, k]`). The outputs are the jobs' `[rows,
/// n]` results one after another. `x` is quantized once for all jobs, and
/// every job's tiles are split over the pool in one call: the experts of a
/// decode step, each on its own tokens.
///
/// Panics when the CPU lacks AVX-512-VNNI ([`PackedQ8::available`]), or
/// when a job's rows do not lie in `x`.
pub fn matmul_each(x: &[f32], jobs: &[(&Packed, Vec<usize>)]) -> Vec<f32> {
    let mut total = 0;
    let tasks: Vec<Task> = jobs
        .iter()
        .map(|(pack, starts)| {
            let (n, k) = pack.dims();
            for &s in starts {
                assert!(
                    s.is_multiple_of(BLOCK) && s + k <= x.len(),
                    "a row does not lie in x"
                );
            }
            let task = Task {
                pack,
                starts: starts.clone(),
                out: total,
                stride: n,
            };
            total += starts.len() * n;
            task
        })
        .collect();
    let mut out = vec![0f32; total];
    // SAFETY: each job writes its own `[rows, n]` block of `out`, and the
    // blocks follow one another.
    unsafe { run(x, &tasks, &mut out) };
    out
}

/// One weight's share of a [`run`]: `pack` times the input rows starting at
/// `starts` (in numbers), row `i`'s output written at `out + i·stride`.
struct Task<'a> {
    pack: &'a Packed,
    starts: Vec<usize>,
    out: usize,
    stride: usize,
}

/// Blocks of the input one thread quantizes at a time.
const QUANTIZE_BLOCKS: usize = 64;

/// Quantizes `x` and runs every task's 16-row tiles, in one parallel
/// region: the threads share the quantization, wait for each other, then
/// share the tiles. (Quantizing on the calling thread first left the other
/// threads idle meanwhile.)
///
/// # Safety
/// Every task's rows lie in `x` on block boundaries, each output row's `n`
/// numbers lie in `out`, and no two tasks' outputs overlap.
unsafe fn run(x: &[f32], tasks: &[Task], out: &mut [f32]) {
    assert!(
        PackedQ8::available(),
        "the packed kernel needs AVX-512-VNNI"
    );
    assert!(x.len().is_multiple_of(BLOCK), "x is not whole blocks");
    let blocks = x.len() / BLOCK;
    let mut input = Quantized::zeroed(x.len());
    // From here to the region's end the buffers are reached only through
    // these pointers: written in the first phase, read in the second.
    let (q, scales, sums, offsets, half_offsets) = (
        Disjoint::new(&mut input.q),
        Disjoint::new(&mut input.scales),
        Disjoint::new(&mut input.sums),
        Disjoint::new(&mut input.offsets),
        Disjoint::new(&mut input.half_offsets),
    );
    // Tile `u` of all tasks' tiles in order: the task whose first tile
    // index is the largest not above `u` (tasks without rows have none).
    let mut units = 0;
    let firsts: Vec<usize> = tasks
        .iter()
        .map(|t| {
            let first = units;
            if !t.starts.is_empty() {
                units += t.pack.dims().0 / TILE;
            }
            first
        })
        .collect();
    let dst = Disjoint::new(out);
    parallel::team(|member| {
        member.share(blocks.div_ceil(QUANTIZE_BLOCKS), |range| {
            let blocks = range.start * QUANTIZE_BLOCKS..(range.end * QUANTIZE_BLOCKS).min(blocks);
            let numbers = blocks.start * BLOCK..blocks.end * BLOCK;
            // SAFETY: each range of blocks is this thread's alone.
            unsafe {
                quantize_into(
                    &x[numbers.clone()],
                    q.slice(numbers),
                    scales.slice(blocks.clone()),
                    sums.slice(blocks.clone()),
                    offsets.slice(blocks.clone()),
                    half_offsets.slice(2 * blocks.start..2 * blocks.end),
                )
            };
        });
        member.barrier();
        // SAFETY: nothing writes the input after the barrier.
        let input = unsafe {
            QuantizedView {
                q: q.view(0..blocks * BLOCK),
                scales: scales.view(0..blocks),
                sums: sums.view(0..blocks),
                offsets: offsets.view(0..blocks),
                half_offsets: half_offsets.view(0..2 * blocks),
            }
        };
        // Each task's rows, found once per thread that meets the task.
        let mut task_rows: Vec<Option<(Vec<Row>, Option<AmxGroups>)>> =
            tasks.iter().map(|_| None).collect();
        member.share(units, |range| {
            // The range's tiles, a task at a time.
            let mut unit = range.start;
            while unit < range.end {
                let task = firsts.partition_point(|&f| f <= unit) - 1;
                let Task {
                    pack,
                    starts,
                    out,
                    stride,
                } = &tasks[task];
                let first = firsts[task];
                let end = range.end.min(first + pack.dims().0 / TILE);
                let (rows, groups) = task_rows[task].get_or_insert_with(|| {
                    let k = pack.dims().1;
                    let rows = input.rows(starts.iter().copied(), k);
                    let groups = amx_groups(pack, &rows, k);
                    (rows, groups)
                });
                for tile in unit - first..end - first {
                    // SAFETY: `available` checked the CPU's features above.
                    unsafe {
                        tile_rows(pack, tile, rows, groups.as_ref(), |i, dots| {
                            let start = out + i * stride + tile * TILE;
                            // SAFETY: this unit alone writes these 16 columns
                            // (the caller keeps tasks apart; a task's tiles
                            // are distinct).
                            dst.slice(start..start + TILE).copy_from_slice(dots);
                        })
                    };
                }
                unit = end;
            }
        });
    });
}

/// Tile `tile` of `pack` against every one of `rows`: the first
/// `groups.rows()` of them 16 at a time on the AMX kernel where there are
/// `groups` (made by [`amx_groups`] from these rows), the rest up to
/// [`ROWS`] per weight load on the VNNI kernel. `put(i, dots)` takes row
/// `i`'s 16 dots; the numbers are the same on either kernel.
///
/// # Safety
/// The CPU has the kernels' features ([`PackedQ8::available`]).
unsafe fn tile_rows(
    pack: &Packed,
    tile: usize,
    rows: &[Row],
    groups: Option<&AmxGroups>,
    mut put: impl FnMut(usize, &[f32; TILE]),
) {
    let m = rows.len();
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if let (Some(groups), Packed::Q8_0(p)) = (groups, pack) {
        let (scales, quads) = p.tile(tile);
        let mut dots = [[0f32; TILE]; amx::AMX_ROWS];
        while i < groups.rows() {
            let (a, stride) = groups.group(i / amx::AMX_ROWS);
            // SAFETY: `groups` was made from these rows, so each of the
            // group's rows has its `k` numbers from `a + j·stride`.
            amx::tile(
                a,
                stride,
                &rows[i..i + amx::AMX_ROWS],
                scales,
                quads,
                &mut dots,
            );
            for (j, dots) in dots.iter().enumerate() {
                put(i + j, dots);
            }
            i += amx::AMX_ROWS;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = groups;
    while i < m {
        let r = (m - i).min(ROWS);
        #[cfg(target_arch = "x86_64")]
        let dots = pack.tile(tile, &rows[i..i + r], r);
        #[cfg(not(target_arch = "x86_64"))]
        let dots = [[0f32; TILE]; ROWS];
        for (j, dots) in dots[..r].iter().enumerate() {
            put(i + j, dots);
        }
        i += r;
    }
}

/// `x` (`[m, k]`) times `pack` (`[n, k]`), into `out` (`[m, n]`), on the
/// calling thread alone: for work that is already split over the pool
/// (MLA's per-head matrices inside the attention's work items). The input
/// is quantized per block as [`matmul_groups`] quantizes it, and the
/// numbers are the same.
///
/// Panics when the CPU lacks AVX-512-VNNI ([`PackedQ8::available`]).
pub fn matmul_here(x: &[f32], pack: &Packed, out: &mut [f32]) {
    assert!(
        PackedQ8::available(),
        "the packed kernel needs AVX-512-VNNI"
    );
    let (n, k) = pack.dims();
    assert!(x.len().is_multiple_of(k), "x is not [m, k]");
    let m = x.len() / k;
    assert_eq!(out.len(), m * n, "out is not [m, n]");
    let input = quantize_rows(x);
    let rows = input.view().rows((0..m).map(|i| i * k), k);
    let groups = amx_groups(pack, &rows, k);
    for tile in 0..n / TILE {
        // SAFETY: `available` checked the CPU's features above.
        unsafe {
            tile_rows(pack, tile, &rows, groups.as_ref(), |i, dots| {
                out[i * n + tile * TILE..][..TILE].copy_from_slice(dots)
            })
        };
    }
}
