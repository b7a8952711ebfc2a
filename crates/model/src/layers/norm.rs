//! RMSNorm as DeepSeek and `transformers` compute it: normalise in f32, cast back
//! to the input dtype, then multiply by the weight.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::linear::with_f32;
use crate::kernels::rms_norm::rms_norm_rows;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// The weight on the host, where it is f32 (for [`rms_norm_rows`]).
    host: Option<Vec<f32>>,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(size, "weight")?;
        let host = match (weight.dtype(), weight.device()) {
            (DType::F32, Device::Cpu) => Some(weight.to_vec1::<f32>()?),
            _ => None,
        };
        Ok(RmsNorm { weight, host, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (DType::F32, Some(weight), Device::Cpu) = (x.dtype(), &self.host, x.device()) {
            if x.dims().last() != Some(&weight.len()) {
                candle_core::bail!(
                    "rms norm of width {} over rows of shape {:?}",
                    weight.len(),
                    x.dims()
                );
            }
            let eps = self.eps as f32;
            let out = with_f32(x, |xs| {
                let mut out = vec![0f32; xs.len()];
                rms_norm_rows(xs, weight, eps, &mut out);
                out
            })?;
            return Tensor::from_vec(out, x.shape(), x.device());
        }
        if x.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            return candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32);
        }
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        x.broadcast_mul(&inv)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within a few ulp of candle's `rms_norm` (which sums the squares in
    /// one running sum), for a single row, a few, and more than one
    /// thread's share; the output keeps the input's shape.
    #[test]
    fn matches_candles_rms_norm() {
        let width = 1000;
        let weight: Vec<f32> = (0..width).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        let vb = VarBuilder::from_tensors(
            [(
                "weight".to_string(),
                Tensor::new(weight.as_slice(), &Device::Cpu).unwrap(),
            )]
            .into(),
            DType::F32,
            &Device::Cpu,
        );
        let norm = RmsNorm::new(width, 1e-6, vb).unwrap();
        for rows in [1, 3, 100] {
            let x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            let x = Tensor::from_vec(x, (rows, width), &Device::Cpu).unwrap();
            let ours = norm.forward(&x).unwrap();
            assert_eq!(ours.dims(), x.dims());
            let theirs = candle_nn::ops::rms_norm(&x, &norm.weight, 1e-6).unwrap();
            let (ours, theirs): (Vec<f32>, Vec<f32>) = (
                ours.flatten_all().unwrap().to_vec1().unwrap(),
                theirs.flatten_all().unwrap().to_vec1().unwrap(),
            );
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() <= 4.0 * f32::EPSILON * b.abs(), "{a} vs {b}");
            }
        }
        let wrong = Tensor::zeros((2, 999), DType::F32, &Device::Cpu).unwrap();
        assert!(norm.forward(&wrong).is_err());
    }
}
