//! A Hugging Face hub repository as a source of files: the local cache
//! first, then (unless offline) a download into it.

use std::path::PathBuf;

use hf_hub::{Repo, RepoType};

use super::files::{list_files, FileSource};
use crate::error::{ModelError, Result};

/// Where the hub cache lives and whether the network may be used.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The `hub` folder of the cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: use only what the cache holds.
    pub offline: bool,
    /// Branch, tag or commit; `main` by default.
    pub revision: String,
}

impl HubOptions {
    /// Reads `HF_HUB_CACHE`, `HF_HOME` and `HF_HUB_OFFLINE` the way `huggingface_hub` does.
    pub fn from_env(revision: Option<String>) -> Self {
        let cache_dir = if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else {
            hf_hub::Cache::from_env().path().clone()
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubOptions {
            cache_dir,
            offline,
            revision: revision.unwrap_or_else(|| "main".into()),
        }
    }
}

pub(super) struct HubRepo {
    id: String,
    options: HubOptions,
    /// Files the repository has, asked once when online.
    listing: Option<Vec<String>>,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl HubRepo {
    pub(super) fn new(id: &str, options: &HubOptions) -> Result<Self> {
        let mut repo = HubRepo {
            id: id.to_string(),
            options: options.clone(),
            listing: None,
            api: None,
        };
        if !options.offline {
            let hub_err = |e: hf_hub::api::sync::ApiError| ModelError::Hub {
                model: id.to_string(),
                message: format!("{e} (set HF_HUB_OFFLINE=1 to use only the local cache)"),
            };
            let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(
                options.cache_dir.clone(),
            ))
            .with_progress(true)
            .build()
            .map_err(hub_err)?
            .repo(repo.hub_repo());
            let info = api.info().map_err(hub_err)?;
            repo.listing = Some(info.siblings.into_iter().map(|s| s.rfilename).collect());
            repo.api = Some(api);
        }
        Ok(repo)
    }

    fn hub_repo(&self) -> Repo {
        Repo::with_revision(
            self.id.clone(),
            RepoType::Model,
            self.options.revision.clone(),
        )
    }

    /// The snapshot folder of the revision in the local cache, if any.
    fn snapshot(&self) -> Option<PathBuf> {
        let repo = self.options.cache_dir.join(self.hub_repo().folder_name());
        let revision = &self.options.revision;
        let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
        let commit = if is_commit {
            revision.clone()
        } else {
            std::fs::read_to_string(repo.join("refs").join(revision))
                .ok()?
                .trim()
                .to_string()
        };
        let folder = repo.join("snapshots").join(commit);
        folder.is_dir().then_some(folder)
    }

    /// A file of the revision in the local cache, if there.
    fn cached(&self, name: &str) -> Option<PathBuf> {
        let path = self.snapshot()?.join(name);
        path.is_file().then_some(path)
    }
}

impl FileSource for HubRepo {
    fn fetch(&self, name: &str) -> Result<Option<PathBuf>> {
        if let Some(path) = self.cached(name) {
            return Ok(Some(path));
        }
        let (Some(api), Some(listing)) = (&self.api, &self.listing) else {
            return Ok(None);
        };
        if !listing.iter().any(|f| f == name) {
            return Ok(None);
        }
        api.get(name).map(Some).map_err(|e| ModelError::Hub {
            model: self.id.clone(),
            message: format!("downloading {name}: {e}"),
        })
    }
    fn list(&self) -> Result<Vec<String>> {
        match (&self.listing, self.snapshot()) {
            (Some(listing), _) => Ok(listing.clone()),
            (None, Some(snapshot)) => list_files(&snapshot),
            (None, None) => Ok(Vec::new()),
        }
    }
    fn describe(&self) -> String {
        let mode = if self.options.offline {
            "offline, cache only"
        } else {
            "hub"
        };
        format!(
            "hub model {} at revision {} ({mode}, cache {})",
            self.id,
            self.options.revision,
            self.options.cache_dir.display()
        )
    }
}
