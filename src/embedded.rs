//! The default model, compiled into the binary (`models/arith-deepseek-v3`,
//! about 8 MB) so that `ferroseek serve` works from any directory. At
//! start-up its files are written once to a cache folder named after their
//! content hash, then loaded like any model folder (the weights are
//! memory-mapped, which needs a file).

use std::io;
use std::path::{Path, PathBuf};

/// The name clients use for the embedded model.
pub const NAME: &str = "arith-deepseek-v3";

const FILES: &[(&str, &[u8])] = &[
    (
        "config.json",
        include_bytes!("../models/arith-deepseek-v3/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../models/arith-deepseek-v3/generation_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../models/arith-deepseek-v3/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../models/arith-deepseek-v3/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../models/arith-deepseek-v3/tokenizer_config.json"),
    ),
];

/// 64-bit FNV-1a over every file's name, length and bytes: a folder name that
/// changes whenever the embedded files do.
fn content_hash() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, bytes) in FILES {
        eat(name.as_bytes());
        eat(&(bytes.len() as u64).to_le_bytes());
        eat(bytes);
    }
    hash
}

/// `$XDG_CACHE_HOME/ferroseek`, else `~/.cache/ferroseek`.
fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })?;
    Some(base.join("ferroseek"))
}

/// Writes the embedded files (unless an identical copy is there already) and
/// returns their folder: under the user's cache folder, else the temp folder.
pub fn materialize() -> io::Result<PathBuf> {
    let folder = format!("embedded-{NAME}-{:016x}", content_hash());
    let mut last_err = None;
    let bases = user_cache_dir()
        .into_iter()
        .chain(std::iter::once(std::env::temp_dir().join("ferroseek")));
    for base in bases {
        match materialize_in(&base.join(&folder)) {
            Ok(dir) => return Ok(dir),
            Err(e) => {
                tracing::debug!(base = %base.display(), "cannot write the embedded model there: {e}");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no folder to write the embedded model to")))
}

fn is_complete(dir: &Path) -> bool {
    FILES
        .iter()
        .all(|(name, bytes)| std::fs::read(dir.join(name)).is_ok_and(|on_disk| on_disk == *bytes))
}

fn materialize_in(dir: &Path) -> io::Result<PathBuf> {
    if is_complete(dir) {
        return Ok(dir.to_path_buf());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| io::Error::other("the cache folder has no parent"))?;
    std::fs::create_dir_all(parent)?;
    // Write into a private folder and rename it into place, so a concurrent
    // start never sees half-written files.
    let staging = parent.join(format!(
        ".staging-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&staging)?;
    let written = FILES
        .iter()
        .try_for_each(|(name, bytes)| std::fs::write(staging.join(name), bytes));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if dir.exists() {
        // An incomplete or stale copy: replace it.
        let _ = std::fs::remove_dir_all(dir);
    }
    let renamed = std::fs::rename(&staging, dir);
    if renamed.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    // Another process may have won the race with an identical copy.
    if is_complete(dir) {
        Ok(dir.to_path_buf())
    } else {
        Err(renamed
            .err()
            .unwrap_or_else(|| io::Error::other("the embedded model files did not verify")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn materializes_once_and_reuses_the_copy() {
        let base =
            std::env::temp_dir().join(format!("ferroseek-embed-test-{}", std::process::id()));
        let dir = base.join("m");
        let first = materialize_in(&dir).unwrap();
        assert!(is_complete(&first));
        let modified = std::fs::metadata(first.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        let second = materialize_in(&dir).unwrap();
        assert_eq!(first, second);
        let again = std::fs::metadata(second.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(modified, again, "an identical copy is not rewritten");
        // A damaged copy is replaced.
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        materialize_in(&dir).unwrap();
        assert!(is_complete(&dir));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
