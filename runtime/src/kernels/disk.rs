//! The on-disk kernel cache.
//!
//! Layout, under the cache root (`LINREC_CACHE_DIR`, else `$XDG_CACHE_HOME/linrec`, else
//! `~/.cache/linrec`):
//!
//! ```text
//! kernels-v1/
//!   <spec name>-<spec hash, 16 hex>/
//!     <direction>.<target>.<config tag>.<fingerprint, 12 hex>.json       the entry
//!     <direction>.<target>.<config tag>.<fingerprint>.<sha256, 12 hex>.<ptx|spv|hsaco>
//! ```
//!
//! e.g. `kernels-v1/simple_gla-1c0e5b2a9d3f4e71/forward.spirv.bf16-k64-v64-c64-h0-ht.5d41402abc4b.json`.
//! The fingerprint is a hash of the compiler's [`super::KernelCompiler::fingerprint`] (crate
//! version, LLVM version, options), so another compiler never reads this one's kernels.
//!
//! The entry (JSON) records the compiler, the binary's file name, size and SHA-256, the compile
//! time and the [`KernelInfo`]. Both files are written to a temporary file in the same folder
//! and renamed into place — binary first, entry last — so a reader (another thread or process)
//! sees either no entry or a complete one whose binary is already there. Binaries are named by
//! their content, so two processes compiling the same kernel never overwrite each other's
//! binary with different bytes. A reader checks everything (JSON, key, size, SHA-256); a
//! mismatch is a [`CacheError::Corrupt`], which the provider reports and recompiles over.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use linrec_spec::launch::KernelInfo;
use serde::{Deserialize, Serialize};

use super::{Kernel, KernelKey, config_tag, extension, file_safe, sha256_hex};

/// Version of the cache layout and entry format (the `kernels-v1` folder).
const FORMAT: u32 = 1;

/// Environment variable naming the cache root.
pub const CACHE_DIR_ENV: &str = "LINREC_CACHE_DIR";

/// The on-disk kernel cache (see the [module docs](self) for the layout).
///
/// ```
/// use linrec_runtime::kernels::DiskCache;
/// let cache = DiskCache::new("/tmp/linrec-doc-cache");
/// assert!(cache.kernels_dir().ends_with("kernels-v1"));
/// ```
#[derive(Clone, Debug)]
pub struct DiskCache {
    root: PathBuf,
}

/// A kernel read from the disk cache.
#[derive(Clone, Debug)]
pub struct CachedKernel {
    /// The kernel.
    pub kernel: Kernel,
    /// Its binary's path.
    pub path: PathBuf,
    /// The compiler fingerprint the entry records.
    pub compiler: String,
}

/// A cache entry that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A file or folder of the cache cannot be read or written.
    #[error("kernel cache: cannot {action} {}: {source}", path.display())]
    Io {
        /// `read`, `create`, `write`.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An entry that is truncated, not JSON, for another kernel, or whose binary does not
    /// match its SHA-256.
    #[error("kernel cache entry {} is corrupt: {detail}", path.display())]
    Corrupt {
        /// The entry.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// The JSON entry.
#[derive(Serialize, Deserialize)]
struct Entry {
    format: u32,
    compiler: String,
    binary: String,
    bytes: u64,
    sha256: String,
    compile_ms: f64,
    info: KernelInfo,
}

impl DiskCache {
    /// The cache rooted at `root` (kernels go to `root/kernels-v1/`). Nothing is created until
    /// a kernel is stored.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        // Absolute, so the paths reported stay valid if the process changes directory.
        DiskCache {
            root: std::path::absolute(&root).unwrap_or(root),
        }
    }

    /// The cache at [`DiskCache::default_root`], if there is one.
    pub fn from_env() -> Option<Self> {
        Self::default_root().map(Self::new)
    }

    /// `LINREC_CACHE_DIR`, else `$XDG_CACHE_HOME/linrec`, else `$HOME/.cache/linrec` (empty
    /// variables count as unset); `None` when none is set.
    pub fn default_root() -> Option<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        var(CACHE_DIR_ENV)
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("linrec")))
            .or_else(|| var("HOME").map(|d| PathBuf::from(d).join(".cache").join("linrec")))
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the kernels are: `root/kernels-v1`.
    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join(format!("kernels-v{FORMAT}"))
    }

    /// The folder of one spec's kernels.
    fn spec_dir(&self, key: &KernelKey) -> PathBuf {
        let hash = key.spec_hash.get(..16).unwrap_or(&key.spec_hash);
        self.kernels_dir()
            .join(format!("{}-{}", file_safe(&key.spec_name), file_safe(hash)))
    }

    /// `<direction>.<target>.<config tag>.` — the start of every file name of this kernel.
    fn stem(key: &KernelKey) -> String {
        format!(
            "{}.{}.{}.",
            key.direction,
            file_safe(&key.target),
            config_tag(&key.config)
        )
    }

    /// The entry (JSON) of `key` compiled by `fingerprint`.
    pub fn entry_path(&self, key: &KernelKey, fingerprint: &str) -> PathBuf {
        let fp = sha256_hex(fingerprint.as_bytes());
        self.spec_dir(key)
            .join(format!("{}{}.json", Self::stem(key), &fp[..12]))
    }

    /// The cached kernel for `key`.
    ///
    /// With a `fingerprint` (the compiler that would otherwise compile it), only that
    /// compiler's entry. Without one (a provider that cannot compile), the newest entry of a
    /// linrec-compiler of this runtime's version, whatever LLVM or options it used: all of them
    /// launch the same way, and without a compiler there is nothing better to do.
    ///
    /// `Ok(None)`: no entry. An error: an entry exists but cannot be read or is corrupt.
    pub fn load(
        &self,
        key: &KernelKey,
        fingerprint: Option<&str>,
    ) -> Result<Option<CachedKernel>, CacheError> {
        match fingerprint {
            Some(fp) => {
                let path = self.entry_path(key, fp);
                match self.read_entry(key, &path)? {
                    // Another compiler whose fingerprint hashes to the same 12 hex digits:
                    // not ours, and ours overwrites it.
                    Some(c) if c.compiler != fp => Ok(None),
                    found => Ok(found),
                }
            }
            None => self.load_any(key),
        }
    }

    fn load_any(&self, key: &KernelKey) -> Result<Option<CachedKernel>, CacheError> {
        let dir = self.spec_dir(key);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(source) => {
                return Err(CacheError::Io {
                    action: "read",
                    path: dir,
                    source,
                });
            }
        };
        let stem = Self::stem(key);
        let ours = format!("linrec-compiler {} ", env!("CARGO_PKG_VERSION"));
        let mut best: Option<(std::time::SystemTime, CachedKernel)> = None;
        let mut first_error = None;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Exactly `<stem><12 hex>.json`: the stem ends in a dot and a config tag has none,
            // so another config's entries never match.
            let Some(fp) = name
                .strip_prefix(&stem)
                .and_then(|rest| rest.strip_suffix(".json"))
            else {
                continue;
            };
            if fp.len() != 12 || fp.contains('.') {
                continue;
            }
            match self.read_entry(key, &entry.path()) {
                Ok(Some(cached)) if cached.compiler.starts_with(&ours) => {
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    if best.as_ref().is_none_or(|(t, _)| modified > *t) {
                        best = Some((modified, cached));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (best, first_error) {
            (Some((_, cached)), _) => Ok(Some(cached)),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }

    /// Reads and checks one entry: `Ok(None)` when it does not exist.
    fn read_entry(&self, key: &KernelKey, path: &Path) -> Result<Option<CachedKernel>, CacheError> {
        let corrupt = |detail: String| CacheError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let text = match fs::read(path) {
            Ok(text) => text,
            // No entry; or a file where a folder of the cache should be, which storing reports.
            Err(e) if is_absent(&e) => return Ok(None),
            Err(source) => {
                return Err(CacheError::Io {
                    action: "read",
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let entry: Entry = serde_json::from_slice(&text)
            .map_err(|e| corrupt(format!("not a cache entry ({e})")))?;
        if entry.format != FORMAT {
            return Err(corrupt(format!(
                "format {}, expected {FORMAT}",
                entry.format
            )));
        }
        if !key.matches(&entry.info) {
            return Err(corrupt(format!(
                "it describes kernel `{}` ({} {} {}), not the one its name says",
                entry.info.entry,
                entry.info.direction,
                entry.info.target,
                config_tag(&entry.info.config)
            )));
        }
        if entry.binary.contains(['/', '\\']) || entry.binary.starts_with('.') {
            return Err(corrupt(format!(
                "binary `{}` is not a file name",
                entry.binary
            )));
        }
        let bin_path = path.with_file_name(&entry.binary);
        let binary = fs::read(&bin_path).map_err(|e| {
            corrupt(format!(
                "cannot read its binary {}: {e}",
                bin_path.display()
            ))
        })?;
        if binary.len() as u64 != entry.bytes {
            return Err(corrupt(format!(
                "its binary {} has {} bytes, the entry says {} (truncated?)",
                bin_path.display(),
                binary.len(),
                entry.bytes
            )));
        }
        if sha256_hex(&binary) != entry.sha256 {
            return Err(corrupt(format!(
                "its binary {} does not match the entry's SHA-256",
                bin_path.display()
            )));
        }
        Ok(Some(CachedKernel {
            kernel: Kernel {
                info: entry.info,
                binary,
            },
            path: bin_path,
            compiler: entry.compiler,
        }))
    }

    /// Stores a kernel compiled by `fingerprint`; returns the binary's path. Atomic: readers
    /// see the old entry, no entry, or the new one, never part of one.
    pub fn store(
        &self,
        key: &KernelKey,
        fingerprint: &str,
        info: &KernelInfo,
        binary: &[u8],
        compile_time: Duration,
    ) -> Result<PathBuf, CacheError> {
        let path = self.entry_path(key, fingerprint);
        let dir = self.spec_dir(key);
        fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let sha256 = sha256_hex(binary);
        let entry_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let binary_name = format!(
            "{}.{}.{}",
            entry_name.trim_end_matches(".json"),
            &sha256[..12],
            extension(&key.target)
        );
        let bin_path = dir.join(&binary_name);
        let entry = Entry {
            format: FORMAT,
            compiler: fingerprint.to_owned(),
            binary: binary_name,
            bytes: binary.len() as u64,
            sha256,
            compile_ms: compile_time.as_secs_f64() * 1e3,
            info: info.clone(),
        };
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| CacheError::Io {
            action: "write",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        // The binary first: once the entry is visible, its binary is complete.
        write_atomic(&bin_path, binary)?;
        write_atomic(&path, &json)?;
        Ok(bin_path)
    }
}

/// Whether a read failed because the entry is not there.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, which is
/// atomic on one file system: a reader opens the old file or the new one, never a partial one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    // Unique per process and per call, so concurrent writers (threads or processes) never
    // share a temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::File::create_new(&tmp)?;
        file.write_all(bytes)?;
        // On disk before the rename makes it visible, so a crash cannot leave a complete name
        // over incomplete contents.
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        CacheError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        }
    })
}
