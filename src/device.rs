//! `--device`: where the weights live and the matrix products run — `cpu`,
//! `cuda` (the first GPU) or `cuda:N`. A GPU needs a binary built with the
//! `cuda` feature; one built without refuses at start-up and says how to get
//! one, rather than failing later inside candle.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context as _, Result};
use candle_core::Device;

/// The forms `--device` accepts, for error messages.
const FORMS: &str = "`cpu`, `cuda` (the first GPU) or `cuda:N` (GPU number N, from 0)";

/// Where the model computes, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    /// A GPU by its CUDA ordinal.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => return Ok(DeviceChoice::Cpu),
            "cuda" => return Ok(DeviceChoice::Cuda(0)),
            _ => {}
        }
        t.strip_prefix("cuda:")
            // Digits only: `usize::from_str` would also take `+1`.
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| format!("`{s}` is not a device: use {FORMS}"))
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device: on a GPU this creates its CUDA context, so a missing
    /// driver or a wrong ordinal shows up here, before anything is loaded.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(_) if !cfg!(feature = "cuda") => Err(anyhow::anyhow!(
                "`--device {self}`: this ferroseek was built without CUDA. Rebuild it with \
                 `cargo build --release --features cuda`, or build the image with \
                 `--build-arg FEATURES=cuda` (docker/compose.gpu.yaml does); see the README's \
                 Deployment section"
            )),
            DeviceChoice::Cuda(n) => Device::new_cuda(n)
                .with_context(|| format!("`--device {self}`: cannot open GPU {n}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!(" CPU ".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:0".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert_eq!("CUDA:12".parse(), Ok(DeviceChoice::Cuda(12)));
    }

    #[test]
    fn bad_device_names_list_the_accepted_forms() {
        for bad in [
            "", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda0", "cuda:1:2", "metal",
        ] {
            let err = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains("`cuda:N`") && err.contains("`cpu`"), "{err}");
        }
        // Too large for an ordinal.
        assert!("cuda:99999999999999999999999"
            .parse::<DeviceChoice>()
            .is_err());
    }

    #[test]
    fn a_device_prints_as_it_parses() {
        for choice in [
            DeviceChoice::Cpu,
            DeviceChoice::Cuda(0),
            DeviceChoice::Cuda(7),
        ] {
            assert_eq!(choice.to_string().parse(), Ok(choice));
        }
    }

    #[test]
    fn the_cpu_opens_everywhere() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_without_the_cuda_build_names_the_fix() {
        let err = format!("{:#}", DeviceChoice::Cuda(1).open().unwrap_err());
        assert!(err.contains("`--device cuda:1`"), "{err}");
        assert!(err.contains("--features cuda"), "{err}");
        assert!(err.contains("FEATURES=cuda"), "{err}");
    }
}
