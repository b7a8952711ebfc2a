//! RMSNorm's rows on the host, the sum of squares vectorised, shared over
//! the pool when there are many.

/// Rows (most) one thread normalises at a time in [`rms_norm_rows`].
const ROWS_PER_TASK: usize = 16;

/// Each `weight.len()`-long row of `x` normalised into `out`, as candle's
/// `rms_norm` computes it (`x / sqrt(mean(x²) + eps) · weight`), but with
/// the sum of squares in sixteen lanes: candle's one running sum, a
/// dependent addition per number, made the norms a visible share of a
/// decode step's serial work. Many rows are shared over the pool.
pub(crate) fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    let norm = |x: &[f32], out: &mut [f32]| {
        for (row, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let mut lanes = [0f32; 16];
            let (chunks, rest) = row.as_chunks::<16>();
            for c in chunks {
                for (l, v) in lanes.iter_mut().zip(c) {
                    *l += v * v;
                }
            }
            let sum2 = lanes.iter().sum::<f32>() + rest.iter().map(|v| v * v).sum::<f32>();
            let m = (sum2 / n as f32 + eps).sqrt();
            for ((d, s), w) in dst.iter_mut().zip(row).zip(weight) {
                *d = *s / m * *w;
            }
        }
    };
    let rows = x.len() / n;
    if rows <= ROWS_PER_TASK {
        return norm(x, out);
    }
    let dst = super::parallel::Disjoint::new(out);
    super::parallel::for_ranges(rows.div_ceil(ROWS_PER_TASK), |tasks| {
        let rows = tasks.start * ROWS_PER_TASK..(tasks.end * ROWS_PER_TASK).min(rows);
        let numbers = rows.start * n..rows.end * n;
        // SAFETY: each task's rows are its own.
        norm(&x[numbers.clone()], unsafe { dst.slice(numbers) });
    });
}
