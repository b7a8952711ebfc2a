//! SwiGLU's `silu(gate) · up`, vectorised with AVX-512 where the CPU has it.

use candle_core::{DType, Result, Tensor};

#[cfg(target_arch = "x86_64")]
use super::x86::exp512;

/// Appends `silu(gate) · up` to `out`, silu as candle computes it
/// (`x / (1 + e^-x)`), sixteen numbers at a time with AVX-512
/// ([`exp512`]): with glibc's scalar `expf` the experts' silu was a
/// visible share of a decode step, almost all of it the exponentials.
pub(crate) fn silu_times(gate: &[f32], up: &[f32], out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { silu_times_avx512(gate, up, out) };
        return;
    }
    out.extend(gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u));
}

/// `silu(gate) · up` for tensors: [`silu_times`] where they are f32 (the
/// compute dtype on CPU), candle's ops otherwise.
pub(crate) fn silu_times_tensor(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 || gate.dims() != up.dims() {
        return gate.silu()? * up;
    }
    let (g, u) = (
        gate.flatten_all()?.to_vec1::<f32>()?,
        up.flatten_all()?.to_vec1::<f32>()?,
    );
    let mut out = Vec::with_capacity(g.len());
    silu_times(&g, &u, &mut out);
    Tensor::from_vec(out, gate.shape(), gate.device())
}

/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_times_avx512(gate: &[f32], up: &[f32], out: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    assert_eq!(gate.len(), up.len());
    let start = out.len();
    out.resize(start + gate.len(), 0.0);
    let dst = &mut out[start..];
    for ((g, u), d) in gate.chunks(16).zip(up.chunks(16)).zip(dst.chunks_mut(16)) {
        let m: __mmask16 = if g.len() == 16 {
            0xffff
        } else {
            (1u16 << g.len()) - 1
        };
        let gv = _mm512_maskz_loadu_ps(m, g.as_ptr());
        let uv = _mm512_maskz_loadu_ps(m, u.as_ptr());
        let one = _mm512_set1_ps(1.0);
        let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let silu = _mm512_div_ps(gv, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(d.as_mut_ptr(), m, _mm512_mul_ps(silu, uv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector silu gives the scalar formula's numbers within a few
    /// ulp, for lengths with and without a partial last vector, appended
    /// after what the output holds.
    #[test]
    fn silu_times_matches_the_scalar_formula() {
        for n in [1, 15, 16, 40, 256] {
            let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 20.0) * 0.37).collect();
            let up: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.05).collect();
            let mut out = vec![7.0];
            silu_times(&gate, &up, &mut out);
            assert_eq!(out.len(), n + 1);
            assert_eq!(out[0], 7.0);
            for ((g, u), got) in gate.iter().zip(&up).zip(&out[1..]) {
                let want = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (got - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(1e-30),
                    "silu({g}) · {u}: {got} vs {want}"
                );
            }
        }
    }
}
