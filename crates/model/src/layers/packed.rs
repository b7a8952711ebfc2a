//! Quantized weights repacked for AVX-512-VNNI: on CPUs that have it, every
//! Q8_0 and Q4_K weight of the model (projections, MLA's absorbed per-head
//! matrices, the experts, lm_head) is held this way, as its only copy, and
//! these kernels run it at every input size.
//!
//! Each group of 16 output rows is stored so that one VNNI instruction
//! multiplies four inputs with sixteen rows at once: for Q8_0 block by
//! block as `[8 k-quads][16 rows][4 bytes]`, with the 16 rows' f16 scales
//! beside them (34 bytes per 32 weights, as Q8_0); Q4_K in [`PackedQ4K`].
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
//! those per-call costs made half of it. Its Q4_K tiles also take 6 bits
//! a weight, built beside the 4.5-bit original.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: Q8_0 weights are stored
//! offset by +128 as unsigned, and each input block's sum times 128 is
//! taken off again (Q4_K's numbers are unsigned already).

use crate::parallel::{self, Disjoint};

mod q4k;
pub use q4k::PackedQ4K;

/// Input rows a tile takes at once (independent accumulators): a batch of
/// 8 sequences reads each weight tile once.
const ROWS: usize = 8;
/// Output rows per tile, and numbers per block.
const TILE: usize = 16;
const BLOCK: usize = 32;
/// Bytes of one Q8_0 block: an f16 scale and 32 i8.
const Q8_0_BYTES: usize = 34;

/// Row `row`'s block `b` (of `blocks` a row) of a Q8_0 weight into the
/// packed layout: its scale `d`, its 32 numbers `q` stored `+ 128` as
/// `[8 k-quads][16 rows][4 bytes]` of its tile.
fn put_block(
    scales: &mut [half::f16],
    quads: &mut [u8],
    (row, b, blocks): (usize, usize, usize),
    d: half::f16,
    q: impl Iterator<Item = i8>,
) {
    let (tile, r) = (row / TILE, row % TILE);
    scales[(tile * blocks + b) * TILE + r] = d;
    let base = (tile * blocks + b) * TILE * BLOCK;
    for (i, q) in q.enumerate() {
        let (quad, byte) = (i / 4, i % 4);
        quads[base + (quad * TILE + r) * 4 + byte] = (q as i16 + 128) as u8;
    }
}

/// Bytes held in whole 64-byte cache lines, aligned to them: the kernels'
/// 64-byte loads of packed weights never straddle two lines (a `Vec<u8>`
/// of this size starts 16 bytes past a page, so each of its loads did).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lines(Vec<Line>);

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl Lines {
    /// `bytes` zeros (a multiple of 64).
    pub(crate) fn zeroed(bytes: usize) -> Lines {
        assert!(bytes.is_multiple_of(64), "not whole lines");
        Lines(vec![Line([0; 64]); bytes / 64])
    }

    pub(crate) fn extend(&mut self, other: Lines) {
        self.0.extend(other.0);
    }
}

impl std::ops::Deref for Lines {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes with no padding.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u8, self.0.len() * 64) }
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; any byte is a valid `u8`.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u8, self.0.len() * 64) }
    }
}

/// One `[n, k]` Q8_0 weight (`n` a multiple of 16, `k` of 32), repacked.
#[derive(Debug, Clone)]
pub struct PackedQ8 {
    n: usize,
    k: usize,
    /// `[n / 16][k / 32][16]`: each row's block scale, as Q8_0 stores it.
    scales: Vec<half::f16>,
    /// `[n / 16][k / 32][8][16][4]`: weights + 128.
    quads: Lines,
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

    /// `data`: candle's Q8_0 blocks of a `[n, k]` weight, row-major. `None`
    /// when the shape does not tile.
    pub fn new(data: &[u8], n: usize, k: usize) -> Option<PackedQ8> {
        if !n.is_multiple_of(TILE) || !k.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = k / BLOCK;
        assert_eq!(
            data.len(),
            n * blocks * Q8_0_BYTES,
            "not a [n, k] Q8_0 weight"
        );
        let mut scales = vec![half::f16::ZERO; n * blocks];
        let mut quads = Lines::zeroed(n * k);
        for row in 0..n {
            for b in 0..blocks {
                let block = &data[(row * blocks + b) * Q8_0_BYTES..][..Q8_0_BYTES];
                let d = half::f16::from_le_bytes([block[0], block[1]]);
                let q = block[2..].iter().map(|&q| q as i8);
                put_block(&mut scales, &mut quads, (row, b, blocks), d, q);
            }
        }
        Some(PackedQ8 {
            n,
            k,
            scales,
            quads,
        })
    }

    /// `w` (`[n, k]` f32, row-major) quantized to Q8_0 as candle (GGML)
    /// quantizes it, and packed: the same bytes as [`Self::new`] on
    /// candle's blocks, without them. Per 32 numbers `d = max|x| / 127`
    /// (stored as f16) and `q = round(x · (1/d))`, halves away from zero.
    /// candle does it one number at a time, with a call to `roundf` each:
    /// that took three fifths of loading the benchmark model as q8_0.
    /// `None` when the shape does not tile or the CPU lacks the kernels.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Option<PackedQ8> {
        if !Self::available() || !n.is_multiple_of(TILE) || !k.is_multiple_of(BLOCK) {
            return None;
        }
        assert_eq!(w.len(), n * k, "not a [n, k] weight");
        let blocks = k / BLOCK;
        let mut scales = vec![half::f16::ZERO; n * blocks];
        let mut quads = Lines::zeroed(n * k);
        let mut q = [0i8; BLOCK];
        for row in 0..n {
            for b in 0..blocks {
                let x = &w[row * k + b * BLOCK..][..BLOCK];
                // SAFETY: `available` checked the CPU's features above.
                #[cfg(target_arch = "x86_64")]
                let d = unsafe { vnni::quantize_q8_0(x, &mut q) };
                #[cfg(not(target_arch = "x86_64"))]
                let d = 0.0;
                let d = half::f16::from_f32(d);
                put_block(
                    &mut scales,
                    &mut quads,
                    (row, b, blocks),
                    d,
                    q.iter().copied(),
                );
            }
        }
        Some(PackedQ8 {
            n,
            k,
            scales,
            quads,
        })
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

/// A weight held for the packed kernels, in either format.
#[derive(Debug, Clone)]
pub enum Packed {
    Q8_0(PackedQ8),
    Q4K(PackedQ4K),
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
        let blocks = match ggml {
            GgmlDType::Q8_0 => BLOCK,
            GgmlDType::Q4K => 256,
            _ => return false,
        };
        Self::available() && n.is_multiple_of(TILE) && k.is_multiple_of(blocks)
    }

    /// candle's blocks of a `[n, k]` weight in `ggml`, repacked; `None`
    /// for other formats, on CPUs without the kernels, and for shapes that
    /// do not tile.
    pub fn new(
        data: &[u8],
        ggml: candle_core::quantized::GgmlDType,
        n: usize,
        k: usize,
    ) -> Option<Packed> {
        use candle_core::quantized::GgmlDType;
        if !Self::available() {
            return None;
        }
        match ggml {
            GgmlDType::Q8_0 => PackedQ8::new(data, n, k).map(Packed::Q8_0),
            GgmlDType::Q4K => PackedQ4K::new(data, n, k).map(Packed::Q4K),
            _ => None,
        }
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Packed::Q8_0(p) => (p.n, p.k),
            Packed::Q4K(p) => p.dims(),
        }
    }

    /// Bytes a full read takes.
    pub fn bytes(&self) -> usize {
        match self {
            Packed::Q8_0(p) => p.bytes(),
            Packed::Q4K(p) => p.bytes(),
        }
    }

    /// The format's name, as candle's GGML types are named.
    pub fn format(&self) -> &'static str {
        match self {
            Packed::Q8_0(_) => "q8_0",
            Packed::Q4K(_) => "q4k",
        }
    }

    /// The weight's numbers, `[n, k]` row-major, as the format
    /// dequantizes them.
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Packed::Q8_0(p) => p.dequantize(),
            Packed::Q4K(p) => p.dequantize(),
        }
    }

    /// `top` above `bottom` (both `[_, k]`, in one format).
    pub fn stack(top: Packed, bottom: Packed) -> Packed {
        match (top, bottom) {
            (Packed::Q8_0(t), Packed::Q8_0(b)) => Packed::Q8_0(PackedQ8::stack(t, b)),
            (Packed::Q4K(t), Packed::Q4K(b)) => Packed::Q4K(PackedQ4K::stack(t, b)),
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
                let blocks = p.k / BLOCK;
                let scales = &p.scales[tile * blocks * TILE..][..blocks * TILE];
                let quads = &p.quads[tile * blocks * TILE * BLOCK..][..blocks * TILE * BLOCK];
                by_rows!(vnni::tile, rows, scales, quads, &mut dots)
            }
            Packed::Q4K(p) => {
                let (quads, d, scales) = p.tile(tile);
                by_rows!(q4k::vnni::tile, rows, quads, d, scales, &mut dots)
            }
        }
        dots
    }
}

/// One input row's block quantized as Q8_0 quantizes weights: scale
/// `max |x| / 127`, numbers rounded to the nearest multiple (ties to even,
/// as the vector instructions round). The kernel's vector version computes
/// the same numbers.
#[cfg(test)]
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
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
struct Quantized {
    q: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    /// `-128 ·` each sum: the Q8_0 kernel's correction for its `+128`.
    offsets: Vec<i32>,
}

impl Quantized {
    /// Room for `len` numbers (whole blocks).
    fn zeroed(len: usize) -> Quantized {
        let blocks = len / BLOCK;
        Quantized {
            q: vec![0; len],
            scales: vec![0.0; blocks],
            sums: vec![0; blocks],
            offsets: vec![0; blocks],
        }
    }

    fn view(&self) -> QuantizedView<'_> {
        QuantizedView {
            q: &self.q,
            scales: &self.scales,
            sums: &self.sums,
            offsets: &self.offsets,
        }
    }
}

/// A [`Quantized`] input, borrowed.
struct QuantizedView<'a> {
    q: &'a [i8],
    scales: &'a [f32],
    sums: &'a [i32],
    offsets: &'a [i32],
}

impl<'a> QuantizedView<'a> {
    /// Views of the `k` numbers from each of `starts` (block boundaries).
    fn rows(&self, starts: impl Iterator<Item = usize>, k: usize) -> Vec<Row<'a>> {
        let blocks = k / BLOCK;
        starts
            .map(|start| {
                let first = start / BLOCK;
                Row {
                    q: &self.q[start..][..k],
                    scales: &self.scales[first..][..blocks],
                    sums: &self.sums[first..][..blocks],
                    offsets: &self.offsets[first..][..blocks],
                }
            })
            .collect()
    }
}

/// Every block of `x` quantized (see [`vnni::quantize`]) into the
/// buffers of its blocks.
fn quantize_into(
    x: &[f32],
    q: &mut [i8],
    scales: &mut [f32],
    sums: &mut [i32],
    offsets: &mut [i32],
) {
    let blocks = x.len() / BLOCK;
    assert!(q.len() == x.len() && scales.len() == blocks);
    assert!(sums.len() == blocks && offsets.len() == blocks);
    // SAFETY: only reached once `available` has checked the CPU.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        vnni::quantize(x, q, scales, sums, offsets)
    };
}

/// Every block of `x` quantized.
fn quantize_rows(x: &[f32]) -> Quantized {
    let mut out = Quantized::zeroed(x.len());
    let Quantized {
        q,
        scales,
        sums,
        offsets,
    } = &mut out;
    quantize_into(x, q, scales, sums, offsets);
    out
}

/// `[m, g·n]` = per group `i`, `x[:, i·k..(i+1)·k] · W_iᵀ` for `x`: `[m, g·k]`
/// and `packs` (every one `[n, k]`), as [`super::decode_matmul::matmul_groups`],
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
/// threads idle: 0.4 ms of a batch-8 q8_0 decode step on the Zen 4 EPYC.)
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
    let (q, scales, sums, offsets) = (
        Disjoint::new(&mut input.q),
        Disjoint::new(&mut input.scales),
        Disjoint::new(&mut input.sums),
        Disjoint::new(&mut input.offsets),
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
                    offsets.slice(blocks),
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
            }
        };
        // Each task's rows, found once per thread that meets the task.
        let mut task_rows: Vec<Option<Vec<Row>>> = tasks.iter().map(|_| None).collect();
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
                let rows = task_rows[task]
                    .get_or_insert_with(|| input.rows(starts.iter().copied(), pack.dims().1));
                for tile in unit - first..end - first {
                    // SAFETY: `available` checked the CPU's features above.
                    unsafe {
                        tile_rows(pack, tile, rows, |i, dots| {
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

/// Tile `tile` of `pack` against every one of `rows`, up to [`ROWS`] per
/// weight load: `put(i, dots)` takes row `i`'s 16 dots.
///
/// # Safety
/// The CPU has the kernels' features ([`PackedQ8::available`]).
unsafe fn tile_rows(
    pack: &Packed,
    tile: usize,
    rows: &[Row],
    mut put: impl FnMut(usize, &[f32; TILE]),
) {
    let m = rows.len();
    let mut i = 0;
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
    for tile in 0..n / TILE {
        // SAFETY: `available` checked the CPU's features above.
        unsafe {
            tile_rows(pack, tile, &rows, |i, dots| {
                out[i * n + tile * TILE..][..TILE].copy_from_slice(dots)
            })
        };
    }
}

/// One quantized input row.
struct Row<'a> {
    q: &'a [i8],
    scales: &'a [f32],
    sums: &'a [i32],
    offsets: &'a [i32],
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Row, BLOCK, TILE};
    use crate::layers::x86::{prefetch, tile_prefetches};

    /// Each 32-number block of `x`: scale `max |x| / 127`, the numbers over
    /// it rounded to the nearest integer (ties to even), and their sum.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize(
        x: &[f32],
        q: &mut [i8],
        scales: &mut [f32],
        sums: &mut [i32],
        offsets: &mut [i32],
    ) {
        let blocks = x.len() / BLOCK;
        assert!(q.len() >= blocks * BLOCK && scales.len() >= blocks);
        assert!(sums.len() >= blocks && offsets.len() >= blocks);
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
            sums[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            offsets[b] = -128 * sums[b];
        }
    }

    /// One block of 32 weights as GGML's Q8_0 quantizes it (see
    /// `PackedQ8::quantize`): returns `d`, `q` takes the numbers. The same
    /// f32 operations as candle's scalar loop, so the same results; its
    /// `roundf` (halves away from zero) is a truncation plus one where the
    /// dropped fraction is at least a half.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_q8_0(x: &[f32], q: &mut [i8; BLOCK]) -> f32 {
        assert!(x.len() >= BLOCK);
        let p = x.as_ptr();
        let (v0, v1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let round = |v: __m512| {
            const TRUNC: i32 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
            let t = _mm512_roundscale_ps::<TRUNC>(v);
            let half = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
                _mm512_abs_ps(_mm512_sub_ps(v, t)),
                _mm512_set1_ps(0.5),
            );
            // ±1 with `v`'s sign.
            let one = _mm512_or_ps(_mm512_set1_ps(1.0), _mm512_and_ps(v, _mm512_set1_ps(-0.0)));
            _mm512_cvttps_epi32(_mm512_mask_add_ps(t, half, t, one))
        };
        let (q0, q1) = (round(_mm512_mul_ps(v0, id)), round(_mm512_mul_ps(v1, id)));
        let dst = q.as_mut_ptr();
        _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(dst.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
        d
    }

    /// How far ahead of the block in use the weights are prefetched, on
    /// CPUs that want it (`x86::tile_prefetches`; 4 KB;
    /// past a tile's end, into the next tile, which is usually the next
    /// one the thread takes). Without it the kernel waited on its weight
    /// loads: profile_batch at q8_0, ms a step, median of six alternating
    /// runs: batch 1 5.5 -> 3.6-3.9, batch 8 19.5 -> 15.0 (4 blocks: 16.3,
    /// 16: 17.1).
    const PREFETCH_BLOCKS: usize = 8;

    /// The 16 dots of one tile's rows with each of the first `R` of `rows`:
    /// every weight quad is loaded once for all of them. Below four rows,
    /// each row keeps two integer sums (even and odd quads) so that the
    /// VNNI instructions do not wait on each other; from four, the rows'
    /// sums are independent enough, and one each saves an add per block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile<const R: usize>(
        rows: &[Row],
        scales: &[half::f16],
        quads: &[u8],
        out: &mut [[f32; TILE]; super::ROWS],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{dequantized, values as fill};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// The kernel equals the same integer arithmetic done plainly (exact up
    /// to f32 rounding), and stays within activation quantization of the
    /// f32 product with the dequantized weights.
    #[test]
    fn packed_kernel_matches_the_integer_arithmetic() {
        if !PackedQ8::available() {
            return;
        }
        for (m, groups, n, k) in [
            (1, 3, 16, 32),
            (2, 16, 256, 128),
            (5, 2, 48, 256),
            (11, 2, 16, 64),
        ] {
            let x = fill(m * groups * k, 1);
            let weights: Vec<QTensor> = (0..groups)
                .map(|g| {
                    let w = Tensor::from_vec(fill(n * k, 100 + g), (n, k), &Device::Cpu).unwrap();
                    QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
                })
                .collect();
            let packs: Vec<Packed> = weights
                .iter()
                .map(|w| Packed::Q8_0(PackedQ8::new(&w.data().unwrap(), n, k).unwrap()))
                .collect();
            let got = matmul_groups(&x, m, &packs.iter().collect::<Vec<_>>());
            for (g, w) in weights.iter().enumerate() {
                let data = w.data().unwrap();
                let deq = dequantized(w);
                for i in 0..m {
                    let xs = &x[(i * groups + g) * k..][..k];
                    for j in 0..n {
                        let mut exact = 0f64;
                        let mut plain = 0f64;
                        for b in 0..k / BLOCK {
                            let mut q = [0i8; BLOCK];
                            let dx = quantize_block(&xs[b * BLOCK..][..BLOCK], &mut q);
                            let block = &data[(j * k / BLOCK + b) * Q8_0_BYTES..];
                            let dw = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                            let dot: i32 = (0..BLOCK)
                                .map(|c| block[2 + c] as i8 as i32 * q[c] as i32)
                                .sum();
                            exact += (dw * dx) as f64 * dot as f64;
                        }
                        for c in 0..k {
                            plain += deq[j * k + c] as f64 * xs[c] as f64;
                        }
                        let have = got[i * groups * n + g * n + j] as f64;
                        assert!(
                            (have - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                            "{m}x{groups}x{n}x{k} row {i} group {g} column {j}: {have} vs {exact}"
                        );
                        // Activation quantization: well under 1% of the scale.
                        let norm = (k as f64).sqrt();
                        assert!((have - plain).abs() <= 0.02 * norm, "{have} vs f32 {plain}");
                    }
                }
            }
        }
    }

    fn packed(n: usize, k: usize, seed: usize) -> (QTensor, PackedQ8) {
        let w = Tensor::from_vec(fill(n * k, seed), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let p = PackedQ8::new(&q.data().unwrap(), n, k).unwrap();
        (q, p)
    }

    fn packed_q4k(n: usize, k: usize, seed: usize) -> (QTensor, PackedQ4K) {
        let w = Tensor::from_vec(fill(n * k, seed), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        let p = PackedQ4K::new(&q.data().unwrap(), n, k).unwrap();
        (q, p)
    }

    /// Each job multiplies its own rows, wherever they start in the input
    /// and whatever its width and format, exactly as a call for each row
    /// alone does; the outputs follow one another, and a job without rows
    /// adds none.
    #[test]
    fn each_job_takes_its_own_rows() {
        if !Packed::available() {
            return;
        }
        let x = fill(6 * 256, 3);
        let a = Packed::Q8_0(packed(48, 64, 10).1);
        let b = Packed::Q4K(packed_q4k(32, 256, 20).1);
        let c = Packed::Q8_0(packed(16, 32, 30).1);
        let jobs = vec![
            (&a, vec![0, 192, 64]),
            (&b, vec![512, 0, 1024, 32, 96, 1280, 160, 224, 288]),
            (&a, vec![]),
            (&c, vec![1280]),
        ];
        let got = matmul_each(&x, &jobs);
        let mut want = Vec::new();
        for (pack, starts) in &jobs {
            let k = pack.dims().1;
            for &s in starts {
                want.extend(matmul_groups(&x[s..s + k], 1, &[pack]));
            }
        }
        assert_eq!(got, want);
    }

    /// Quantizing f32 weights straight into the packed layout gives the
    /// bytes candle's Q8_0 blocks pack into: random weights, a block of
    /// exact halves (which round away from zero), a block of zeros, and
    /// tiny and huge magnitudes.
    #[test]
    fn quantizing_packs_what_candle_quantizes() {
        if !PackedQ8::available() {
            return;
        }
        let (n, k) = (32, 256);
        let mut w = fill(n * k, 70);
        // Row 0, block 0: max 127, so d = 1 and x·(1/d) = x: exact halves.
        for (i, v) in w[..BLOCK].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) + 0.5;
        }
        w[BLOCK - 1] = 127.0;
        w[BLOCK..2 * BLOCK].fill(0.0);
        for (i, v) in w[k..k + BLOCK].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 1e-30;
        }
        for (i, v) in w[2 * k..2 * k + BLOCK].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 1e30;
        }
        let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let candle = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let want = PackedQ8::new(&candle.data().unwrap(), n, k).unwrap();
        let got = PackedQ8::quantize(&w, n, k).unwrap();
        assert_eq!(got.scales, want.scales);
        assert!(got.quads == want.quads, "the packed numbers differ");
    }

    /// Our Q4_K quantization gives candle's bytes: random weights, and
    /// super-blocks with a constant sub-block, all zeros, only positive or
    /// only negative numbers, tiny and huge magnitudes; packed straight
    /// from f32, it equals candle's blocks packed.
    #[test]
    fn q4k_quantizing_gives_candles_blocks() {
        let (n, k) = (32, 512);
        let mut w = fill(n * k, 80);
        w[..32].fill(0.25);
        w[256..512].fill(0.0);
        for v in &mut w[k..k + 256] {
            *v = v.abs() + 0.1;
        }
        for v in &mut w[k + 256..2 * k] {
            *v = -v.abs() - 0.1;
        }
        for v in &mut w[2 * k..2 * k + 256] {
            *v *= 1e-30;
        }
        for v in &mut w[2 * k + 256..3 * k] {
            *v *= 1e30;
        }
        let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let candle = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        let candle = candle.data().unwrap();
        let ours = q4k::quantize_blocks(&w);
        assert_eq!(ours.len(), candle.len());
        let differing = ours
            .iter()
            .zip(candle.iter())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differing, 0, "{differing} bytes differ");
        if Packed::available() {
            let want = PackedQ4K::new(&candle, n, k).unwrap();
            let got = PackedQ4K::quantize(&w, n, k).unwrap();
            // Bit for bit: the huge block's scales overflow f16 to infinity.
            let bits = |p: &PackedQ4K| {
                p.dequantize()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert!(bits(&got) == bits(&want), "packed differently");
        }
    }

    /// On the calling thread, a weight gives the numbers the pool's call
    /// gives, for both formats and row counts below, at and past a tile's
    /// eight rows.
    #[test]
    fn here_equals_the_pools_call() {
        if !Packed::available() {
            return;
        }
        let q8 = Packed::Q8_0(packed(48, 128, 50).1);
        let q4 = Packed::Q4K(packed_q4k(32, 256, 60).1);
        for pack in [&q8, &q4] {
            let (n, k) = pack.dims();
            for m in [1, 3, 8, 11] {
                let x = fill(m * k, m);
                let mut got = vec![0f32; m * n];
                matmul_here(&x, pack, &mut got);
                assert_eq!(got, matmul_groups(&x, m, &[pack]), "{m} rows of {k}");
            }
        }
    }

    /// The Q4_K kernel equals the same integer arithmetic done plainly
    /// (exact up to f32 rounding) for every row count, and stays within
    /// activation quantization of the f32 product with candle's
    /// dequantized weights.
    #[test]
    fn q4k_kernel_matches_the_integer_arithmetic() {
        if !Packed::available() {
            return;
        }
        let (n, k) = (32, 512);
        let (q, p) = packed_q4k(n, k, 40);
        let data = q.data().unwrap();
        let deq = dequantized(&q);
        let p = Packed::Q4K(p);
        for m in [1, 3, 9] {
            let x: Vec<f32> = fill(m * k, m).iter().map(|v| v * 3.0).collect();
            let got = matmul_groups(&x, m, &[&p]);
            for i in 0..m {
                let xs = &x[i * k..][..k];
                for j in 0..n {
                    let mut exact = 0f64;
                    for sb in 0..k / 256 {
                        let block = &data[(j * k / 256 + sb) * 144..][..144];
                        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                        let dmin = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
                        for sub in 0..8 {
                            let mut xq = [0i8; BLOCK];
                            let dx =
                                quantize_block(&xs[(sb * 8 + sub) * BLOCK..][..BLOCK], &mut xq);
                            let (sc, mn) = q4k::scale_min_for_tests(sub, &block[4..16]);
                            let byte = |c: usize| block[16 + sub / 2 * 32 + c];
                            let nib = |c: usize| ((byte(c) >> (4 * (sub % 2))) & 0x0F) as i32;
                            let dot: i32 = (0..BLOCK).map(|c| nib(c) * xq[c] as i32).sum();
                            let sum: i32 = xq.iter().map(|&v| v as i32).sum();
                            let inner = (d * sc as f32) as f64 * dot as f64
                                - (dmin * mn as f32) as f64 * sum as f64;
                            exact += dx as f64 * inner;
                        }
                    }
                    let plain: f64 = (0..k).map(|c| deq[j * k + c] as f64 * xs[c] as f64).sum();
                    let have = got[i * n + j] as f64;
                    assert!(
                        (have - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                        "{m} rows, row {i} column {j}: {have} vs {exact}"
                    );
                    let norm = (k as f64).sqrt() * 3.0;
                    assert!((have - plain).abs() <= 0.02 * norm, "{have} vs f32 {plain}");
                }
            }
        }
    }

    /// Unpacking a Q4_K weight gives candle's dequantized numbers exactly,
    /// and a stacked one is the one packed from both weights' rows.
    #[test]
    fn q4k_packing_keeps_every_number() {
        let (qa, a) = packed_q4k(32, 512, 7);
        let (qb, b) = packed_q4k(16, 512, 8);
        assert_eq!(a.dequantize(), dequantized(&qa));
        let both = [qa.data().unwrap(), qb.data().unwrap()].concat();
        let whole = PackedQ4K::new(&both, 48, 512).unwrap();
        let stacked = PackedQ4K::stack(a, b);
        assert_eq!(stacked.dims(), (48, 512));
        assert_eq!(stacked.dequantize(), whole.dequantize());
        assert_eq!(stacked.dequantize()[32 * 512..], dequantized(&qb)[..]);
        assert!(PackedQ4K::new(&[0; 144 * 2], 16, 256 / 8).is_none());
    }

    /// A stacked weight is the one packed from both weights' rows.
    #[test]
    fn stacking_appends_rows() {
        let (qa, a) = packed(32, 64, 1);
        let (qb, b) = packed(16, 64, 2);
        let both = [qa.data().unwrap(), qb.data().unwrap()].concat();
        let whole = PackedQ8::new(&both, 48, 64).unwrap();
        let stacked = PackedQ8::stack(a, b);
        assert_eq!(stacked.dims(), (48, 64));
        assert_eq!(stacked.dequantize(), whole.dequantize());
        assert_eq!(stacked.quads, whole.quads);
    }

    /// Unpacking gives candle's dequantized numbers exactly.
    #[test]
    fn packing_keeps_every_number() {
        let (n, k) = (48, 96);
        let w = Tensor::from_vec(fill(n * k, 5), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let packed = PackedQ8::new(&q.data().unwrap(), n, k).unwrap();
        assert_eq!(packed.dequantize(), dequantized(&q));
    }

    #[test]
    fn shapes_that_do_not_tile_are_refused() {
        assert!(PackedQ8::new(&[0; 34 * 8], 8, 32).is_none());
        assert!(PackedQ8::new(&[], 16, 20).is_none());
    }
}
