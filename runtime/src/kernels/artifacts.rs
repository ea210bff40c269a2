//! Artifact sources: a folder written by `linrec compile` or the same embedded into the binary.
//! Both are a [`Manifest`] plus binaries; they differ only in where the bytes are read from.

use std::path::{Path, PathBuf};

use linrec_spec::launch::{MANIFEST_VERSION, Manifest, ManifestEntry};

use super::{Kernel, KernelError, KernelKey, KernelSource, config_tag, display, sha256_hex};
use crate::embed::EmbeddedArtifacts;

/// One artifact source with its manifest read and checked.
pub(super) struct ArtifactSet {
    /// The manifest, for messages.
    location: String,
    manifest: Manifest,
    files: Files,
}

enum Files {
    Folder(PathBuf),
    Embedded(EmbeddedArtifacts),
}

impl ArtifactSet {
    /// `dir/manifest.json`, parsed and version-checked; binaries are read on demand.
    pub(super) fn folder(dir: &Path) -> Result<Self, KernelError> {
        let path = dir.join("manifest.json");
        let location = display(&path);
        let text = std::fs::read_to_string(&path).map_err(|e| KernelError::Artifacts {
            location: location.clone(),
            detail: format!(
                "cannot read it ({e}); write an artifact folder with `linrec compile <variant> --target <target> --out {}`",
                dir.display()
            ),
        })?;
        let manifest = parse(&location, &text)?;
        Ok(ArtifactSet {
            location,
            manifest,
            files: Files::Folder(dir.to_owned()),
        })
    }

    /// Embedded artifacts; the manifest is checked when the provider is built (the embedding
    /// build script checked it too, against the same linrec version).
    pub(super) fn embedded(e: &EmbeddedArtifacts) -> Result<Self, KernelError> {
        let location = format!("embedded artifacts `{}`", e.label());
        let manifest = parse(&location, e.manifest())?;
        Ok(ArtifactSet {
            location,
            manifest,
            files: Files::Embedded(*e),
        })
    }

    pub(super) fn location(&self) -> &str {
        &self.location
    }

    /// The kernel for `key`, if this source has it: `Ok(None)` when it does not, an error when
    /// it does but the binary is missing or does not match its SHA-256.
    pub(super) fn load(
        &self,
        key: &KernelKey,
    ) -> Result<Option<(Kernel, KernelSource)>, KernelError> {
        let Some(entry) = self.manifest.find(
            &key.spec_hash,
            key.direction.name(),
            &key.target,
            &key.config,
        ) else {
            return Ok(None);
        };
        let (binary, location) = self.read(entry)?;
        if sha256_hex(&binary) != entry.sha256 {
            return Err(KernelError::Checksum { location });
        }
        Ok(Some((
            Kernel {
                info: entry.info.clone(),
                binary,
            },
            KernelSource::Artifacts { location },
        )))
    }

    fn read(&self, entry: &ManifestEntry) -> Result<(Vec<u8>, String), KernelError> {
        // A manifest names files inside its folder; a path would read elsewhere.
        if entry.file.contains(['/', '\\']) || entry.file.starts_with('.') {
            return Err(KernelError::Artifacts {
                location: self.location.clone(),
                detail: format!(
                    "kernel file `{}` is not a plain file name in the folder",
                    entry.file
                ),
            });
        }
        match &self.files {
            Files::Folder(dir) => {
                let path = dir.join(&entry.file);
                let location = display(&path);
                let bytes = std::fs::read(&path).map_err(|e| KernelError::Artifacts {
                    location: location.clone(),
                    detail: format!(
                        "cannot read the kernel binary its manifest lists ({e}); rebuild the folder with `linrec compile`"
                    ),
                })?;
                Ok((bytes, location))
            }
            Files::Embedded(e) => {
                let location = format!("{}: {}", self.location, entry.file);
                let bytes = e.file(&entry.file).ok_or_else(|| KernelError::Artifacts {
                    location: location.clone(),
                    detail: "the manifest lists it but it was not embedded".into(),
                })?;
                Ok((bytes.to_vec(), location))
            }
        }
    }

    /// One line for a miss: what this source holds of the spec, so a target or config mismatch
    /// shows what was found next to what is needed.
    pub(super) fn describe(&self, key: &KernelKey) -> String {
        let have: Vec<String> = self
            .manifest
            .kernels
            .iter()
            .filter(|e| e.info.spec_hash == key.spec_hash)
            .map(|e| {
                format!(
                    "{} {} {}",
                    e.info.direction,
                    e.info.target,
                    config_tag(&e.info.config)
                )
            })
            .collect();
        const SHOWN: usize = 8;
        let have = match have.len() {
            0 => format!(
                "none of this variant; {} kernel(s) of others",
                self.manifest.kernels.len()
            ),
            n if n > SHOWN => format!("{}, and {} more", have[..SHOWN].join(", "), n - SHOWN),
            _ => have.join(", "),
        };
        format!(
            "artifacts {}: has no {} kernel of `{}` for target {} and config {} (it has: {have})",
            self.location,
            key.direction,
            key.spec_name,
            key.target,
            config_tag(&key.config)
        )
    }
}

/// A manifest from its JSON, of this runtime's [`MANIFEST_VERSION`].
pub(crate) fn parse(location: &str, text: &str) -> Result<Manifest, KernelError> {
    // The version first, on its own: a manifest of another version may not parse as this one.
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    let version: Version = serde_json::from_str(text).map_err(|e| KernelError::Artifacts {
        location: location.to_owned(),
        detail: format!("not a linrec artifact manifest: {e}"),
    })?;
    if version.version != MANIFEST_VERSION {
        return Err(KernelError::ManifestVersion {
            location: location.to_owned(),
            found: version.version,
            needed: MANIFEST_VERSION,
        });
    }
    serde_json::from_str(text).map_err(|e| KernelError::Artifacts {
        location: location.to_owned(),
        detail: format!("not a linrec artifact manifest of version {MANIFEST_VERSION}: {e}"),
    })
}
