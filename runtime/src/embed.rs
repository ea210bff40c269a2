//! Artifacts inside the binary: a build-script helper that turns a `linrec compile` folder into
//! `include_bytes!` statics, and [`EmbeddedArtifacts`], what [`crate::kernels::Kernels`] reads
//! them from. A program built this way needs neither LLVM nor an artifact folder at run time.
//!
//! In the downstream crate:
//!
//! ```toml
//! [dependencies]
//! linrec-runtime = "0.1"
//! [build-dependencies]
//! linrec-runtime = "0.1"
//! ```
//!
//! `build.rs` (the folder, relative to the crate root, was written by
//! `linrec compile simple_gla --target sm_90 spirv --out kernels`):
//!
//! ```no_run
//! // build.rs
//! if let Err(e) = linrec_runtime::embed::artifacts("kernels") {
//!     panic!("{e}");
//! }
//! ```
//!
//! `src/main.rs`:
//!
//! ```ignore
//! use linrec_runtime::{EmbeddedArtifacts, kernels::Kernels};
//! static KERNELS: EmbeddedArtifacts = linrec_runtime::include_artifacts!();
//! let kernels = Kernels::builder().embedded(&KERNELS).no_compiler().build()?;
//! ```
//!
//! The helper checks the folder when the crate builds — manifest version, every listed file
//! present and matching its SHA-256 — so a broken folder fails the build, not the deployed
//! program; and it tells cargo to rebuild when the folder changes. Only the files the manifest
//! lists are embedded.
//!
//! Without a build script, [`write_beside`] writes the same code into the folder itself
//! (`embedded.rs`, with paths relative to it), to check in and include with
//! `include_artifacts!(file = "../kernels/embedded.rs")`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use linrec_spec::launch::Manifest;

use crate::kernels::KernelError;

/// Artifacts embedded into the binary: a manifest and the binaries it lists, all `'static`.
/// Made by [`crate::include_artifacts!`] from the code this module's helpers generate.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedArtifacts {
    label: &'static str,
    manifest: &'static str,
    files: &'static [(&'static str, &'static [u8])],
}

/// What generated code hands to [`EmbeddedArtifacts::from_parts`]: a label (the folder, for
/// messages), the manifest's JSON, and `(file name, bytes)` for every binary it lists.
pub type EmbeddedParts = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static [u8])],
);

impl EmbeddedArtifacts {
    /// From the generated parts (what [`crate::include_artifacts!`] expands to).
    pub const fn from_parts(parts: EmbeddedParts) -> Self {
        EmbeddedArtifacts {
            label: parts.0,
            manifest: parts.1,
            files: parts.2,
        }
    }

    /// The folder they were embedded from, as the build script named it.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// The manifest's JSON.
    pub fn manifest(&self) -> &'static str {
        self.manifest
    }

    /// The bytes of the binary `name`.
    pub fn file(&self, name: &str) -> Option<&'static [u8]> {
        self.files.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    /// The embedded file names.
    pub fn file_names(&self) -> impl Iterator<Item = &'static str> {
        self.files.iter().map(|(n, _)| *n)
    }
}

/// The artifacts embedded by the build script, as an [`EmbeddedArtifacts`] constant
/// expression (for a `static`).
///
/// - `include_artifacts!()`: what [`artifacts`] wrote (`$OUT_DIR/linrec_artifacts.rs`);
/// - `include_artifacts!("name")`: what [`artifacts_named`] wrote (`$OUT_DIR/name.rs`);
/// - `include_artifacts!(file = "path/embedded.rs")`: a file [`write_beside`] wrote, the
///   path relative to the file invoking the macro (like `include!`).
///
/// ```ignore
/// static KERNELS: linrec_runtime::EmbeddedArtifacts = linrec_runtime::include_artifacts!();
/// ```
#[macro_export]
macro_rules! include_artifacts {
    () => {
        $crate::include_artifacts!("linrec_artifacts")
    };
    ($name:literal) => {
        $crate::EmbeddedArtifacts::from_parts(include!(concat!(env!("OUT_DIR"), "/", $name, ".rs")))
    };
    (file = $path:literal) => {
        $crate::EmbeddedArtifacts::from_parts(include!($path))
    };
}

/// Why a folder cannot be embedded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The manifest cannot be read, parsed, or is of another version.
    #[error("linrec_runtime::embed: {0}")]
    Manifest(#[from] KernelError),
    /// A binary the manifest lists is missing, unreadable or does not match its SHA-256.
    #[error("linrec_runtime::embed: {}: {detail}; rebuild the folder with `linrec compile`", path.display())]
    File {
        /// The binary.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A path that cannot be written into Rust source (not UTF-8).
    #[error("linrec_runtime::embed: the path {} is not UTF-8", path.display())]
    Path {
        /// The path.
        path: PathBuf,
    },
    /// `OUT_DIR` is unset: not called from a build script.
    #[error(
        "linrec_runtime::embed: OUT_DIR is not set; call embed::artifacts from a build script (build.rs)"
    )]
    NoOutDir,
    /// The generated file cannot be written.
    #[error("linrec_runtime::embed: cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How generated code names the files it includes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paths {
    /// Absolute paths: the generated file may live anywhere (`OUT_DIR`).
    Absolute,
    /// Bare file names: the generated file must be in the artifact folder ([`write_beside`]).
    Relative,
}

/// For a build script: checks the artifact folder `dir` (relative to the crate root, where
/// build scripts run), writes `$OUT_DIR/linrec_artifacts.rs` for [`crate::include_artifacts!`]
/// and prints the `cargo:rerun-if-changed` lines. Returns the generated file's path.
pub fn artifacts(dir: impl AsRef<Path>) -> Result<PathBuf, EmbedError> {
    artifacts_named(dir, "linrec_artifacts")
}

/// [`artifacts`] for several folders: writes `$OUT_DIR/<name>.rs`, read by
/// `include_artifacts!("<name>")`.
pub fn artifacts_named(dir: impl AsRef<Path>, name: &str) -> Result<PathBuf, EmbedError> {
    let dir = dir.as_ref();
    let out_dir = std::env::var_os("OUT_DIR").ok_or(EmbedError::NoOutDir)?;
    let (code, files) = generate(dir, Paths::Absolute)?;
    let out = PathBuf::from(out_dir).join(format!("{name}.rs"));
    std::fs::write(&out, code).map_err(|source| EmbedError::Write {
        path: out.clone(),
        source,
    })?;
    // Rebuild when the manifest or a binary changes (the folder itself: when files come or go).
    println!("cargo:rerun-if-changed={}", dir.display());
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(out)
}

/// Checks `dir` and writes `dir/embedded.rs` with paths relative to the folder, for a crate
/// that checks its artifacts in and includes them without a build script
/// (`include_artifacts!(file = ".../embedded.rs")`). Returns its path.
pub fn write_beside(dir: impl AsRef<Path>) -> Result<PathBuf, EmbedError> {
    let dir = dir.as_ref();
    let out = dir.join("embedded.rs");
    std::fs::write(&out, source(dir, Paths::Relative)?).map_err(|source| EmbedError::Write {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

/// The Rust source embedding the artifact folder `dir` (an [`EmbeddedParts`] expression), after
/// checking the folder.
///
/// ```no_run
/// let code = linrec_runtime::embed::source("kernels".as_ref(), linrec_runtime::embed::Paths::Absolute)?;
/// assert!(code.contains("include_bytes!"));
/// # Ok::<(), linrec_runtime::embed::EmbedError>(())
/// ```
pub fn source(dir: &Path, paths: Paths) -> Result<String, EmbedError> {
    generate(dir, paths).map(|(code, _)| code)
}

/// The code and the files it includes.
fn generate(dir: &Path, paths: Paths) -> Result<(String, Vec<PathBuf>), EmbedError> {
    let manifest_path = dir.join("manifest.json");
    let location = manifest_path.display().to_string();
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        EmbedError::Manifest(KernelError::Artifacts {
            location: location.clone(),
            detail: format!(
                "cannot read it ({e}); write the folder with `linrec compile <variant> --target <target> --out {}`",
                dir.display()
            ),
        })
    })?;
    let manifest: Manifest = crate::kernels::parse_manifest(&location, &text)?;

    let abs = if paths == Paths::Absolute {
        std::path::absolute(dir).map_err(|e| EmbedError::File {
            path: dir.to_owned(),
            detail: format!("cannot make the path absolute: {e}"),
        })?
    } else {
        PathBuf::new()
    };
    let literal = |file: &str| -> Result<String, EmbedError> {
        let path = abs.join(file);
        let s = path
            .to_str()
            .ok_or_else(|| EmbedError::Path { path: path.clone() })?;
        // Debug formatting of a str is a valid Rust string literal (quotes, escapes).
        Ok(format!("{s:?}"))
    };

    let label = dir.to_str().ok_or_else(|| EmbedError::Path {
        path: dir.to_owned(),
    })?;
    let mut code = String::new();
    let _ = writeln!(
        code,
        "// Generated by linrec_runtime::embed from `{label}` ({} kernel(s)); do not edit.",
        manifest.kernels.len()
    );
    let _ = writeln!(code, "(");
    let _ = writeln!(code, "    {label:?},");
    let _ = writeln!(code, "    include_str!({}),", literal("manifest.json")?);
    let _ = writeln!(code, "    &[");
    let mut files = vec![manifest_path.clone()];
    let mut seen = std::collections::BTreeSet::new();
    for entry in &manifest.kernels {
        if entry.file.contains(['/', '\\']) || entry.file.starts_with('.') {
            return Err(EmbedError::File {
                path: dir.join(&entry.file),
                detail: "not a plain file name in the folder".into(),
            });
        }
        // Several entries may share a binary; embed it once.
        if !seen.insert(entry.file.as_str()) {
            continue;
        }
        let path = dir.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|e| EmbedError::File {
            path: path.clone(),
            detail: format!("cannot read it: {e}"),
        })?;
        if crate::kernels::sha256_hex(&bytes) != entry.sha256 {
            return Err(EmbedError::File {
                path,
                detail: "does not match the SHA-256 in the manifest".into(),
            });
        }
        let _ = writeln!(
            code,
            "        ({:?}, include_bytes!({}) as &[u8]),",
            entry.file,
            literal(&entry.file)?
        );
        files.push(path);
    }
    let _ = writeln!(code, "    ],");
    let _ = writeln!(code, ")");
    Ok((code, files))
}
