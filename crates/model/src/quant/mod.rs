//! Load-time quantization: linear weights rounded to GGML's Q8_0 or Q4_K
//! as candle rounds them (the same bytes), on every thread of the compute
//! pool, and on CPUs with AVX-512-VNNI written straight into the layout of
//! the packed kernels ([`crate::kernels::packed`]).

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Result, Tensor};

use crate::kernels::packed::{
    Legacy, Packed, PackedLegacy, PackedQ2K, PackedQ3K, PackedQ4K, PackedQ5K, PackedQ6K, PackedQ8,
};

mod legacy;
pub(crate) mod q4k;
pub(crate) mod q6k;
mod q8_0;
#[cfg(test)]
mod tests;

/// In-situ quantization of the linear weights at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    #[default]
    None,
    /// 8-bit, blocks of 32 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quants, super-blocks of 256 (4.5 bits per weight).
    Q4K,
}

impl Quantization {
    /// The GGML format a weight of input width `in_dim` gets.
    pub(crate) fn ggml_for(self, in_dim: usize) -> Option<GgmlDType> {
        let fits = |t: GgmlDType| in_dim.is_multiple_of(t.block_size());
        match self {
            Quantization::None => None,
            Quantization::Q4K if fits(GgmlDType::Q4K) => Some(GgmlDType::Q4K),
            Quantization::Q8_0 | Quantization::Q4K if fits(GgmlDType::Q8_0) => {
                Some(GgmlDType::Q8_0)
            }
            _ => None,
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Quantization::None),
            "q8_0" => Ok(Quantization::Q8_0),
            "q4_k" | "q4k" => Ok(Quantization::Q4K),
            other => Err(format!(
                "unknown quantization `{other}` (expected none, q8_0 or q4_k)"
            )),
        }
    }
}

impl Packed {
    /// candle's blocks of a `[n, k]` weight in `ggml`, repacked; `None`
    /// for other formats, on CPUs without the kernels, and for shapes
    /// that do not tile.
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
            GgmlDType::Q5K => PackedQ5K::new(data, n, k).map(Packed::Q5K),
            GgmlDType::Q6K => PackedQ6K::new(data, n, k).map(Packed::Q6K),
            GgmlDType::Q3K => PackedQ3K::new(data, n, k).map(Packed::Q3K),
            GgmlDType::Q2K => PackedQ2K::new(data, n, k).map(Packed::Q2K),
            _ => Legacy::of(ggml)
                .and_then(|format| PackedLegacy::new(data, format, n, k))
                .map(Packed::Legacy),
        }
    }
}

/// `[n, k]` `values` quantized on the CPU, the rows split over `threads`
/// threads (the compute pool's size): candle quantizes on one thread, and
/// Q4_K's search for each block's scales is slow. Blocks lie within rows,
/// so the parts'
/// bytes concatenate to the whole's.
pub(crate) fn quantize_rows(
    values: &[f32],
    (n, k): (usize, usize),
    ggml: GgmlDType,
    threads: usize,
) -> Result<QTensor> {
    let parts = on_row_parts(values, (n, k), threads, 1, |part, rows| {
        let t = Tensor::from_slice(part, (rows, k), &candle_core::Device::Cpu)?;
        Ok(QTensor::quantize(&t, ggml)?.data()?.into_owned())
    })?;
    let cpu = candle_core::Device::Cpu;
    QTensor::new(
        QStorage::from_data(Cow::Owned(parts.concat()), &cpu, ggml)?,
        (n, k),
    )
}

/// [`quantize_rows`], each thread packing its rows for the VNNI kernels
/// too (in whole 16-row tiles, which then follow one another). `None` when
/// the shape does not tile.
pub(crate) fn pack_rows(
    values: &[f32],
    (n, k): (usize, usize),
    ggml: GgmlDType,
    threads: usize,
) -> Result<Option<Packed>> {
    if !Packed::fits(ggml, n, k) {
        return Ok(None);
    }
    let parts = on_row_parts(values, (n, k), threads, 16, |part, rows| {
        match ggml {
            GgmlDType::Q8_0 => return Ok(PackedQ8::quantize(part, rows, k).map(Packed::Q8_0)),
            GgmlDType::Q4K => return Ok(PackedQ4K::quantize(part, rows, k).map(Packed::Q4K)),
            _ => {}
        }
        let t = Tensor::from_slice(part, (rows, k), &candle_core::Device::Cpu)?;
        let q = QTensor::quantize(&t, ggml)?;
        Ok(Packed::new(&q.data()?, ggml, rows, k))
    })?;
    let parts: Option<Vec<Packed>> = parts.into_iter().collect();
    Ok(parts.and_then(|parts| parts.into_iter().reduce(Packed::stack)))
}

/// `f(rows' values, rows)` on consecutive slices of `[n, k]` `values`, each
/// a multiple of `align` rows, on up to `threads` threads; the results in
/// row order.
fn on_row_parts<T: Send>(
    values: &[f32],
    (n, k): (usize, usize),
    threads: usize,
    align: usize,
    f: impl Fn(&[f32], usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = threads.min(n.div_ceil(align)).max(1);
    if threads == 1 || values.len() < QUANTIZE_SPLIT {
        return Ok(vec![f(values, n)?]);
    }
    let rows = n.div_ceil(threads).next_multiple_of(align);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = values
            .chunks(rows * k)
            .map(|part| s.spawn(move || f(part, part.len() / k)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Weights with fewer numbers than this are quantized on one thread.
const QUANTIZE_SPLIT: usize = 1 << 16;
