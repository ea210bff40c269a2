//! Where kernels come from: [`Kernels`], the provider a program asks for the kernel of a spec,
//! direction, target and config.
//!
//! A request is answered from, in order:
//! 1. memory — every kernel this provider returned before ([`KernelSource::Memory`]);
//! 2. artifact sources — folders written by `linrec compile` ([`KernelsBuilder::artifacts`])
//!    and artifacts embedded into the binary ([`KernelsBuilder::embedded`], see
//!    [`crate::embed`]), each binary checked against its manifest's SHA-256;
//! 3. the disk cache ([`DiskCache`]: `LINREC_CACHE_DIR`, else `$XDG_CACHE_HOME/linrec`, else
//!    `~/.cache/linrec`), keyed by spec + direction + target + config + compiler fingerprint;
//! 4. a compiler, if the provider has one: with the `jit` feature [`JitCompiler`] (linrec-compiler
//!    in process), or any [`KernelCompiler`] given to [`KernelsBuilder::compiler`]. What it
//!    compiles is written to the disk cache.
//!
//! Without a compiler a miss is a [`KernelError::Missing`] that lists what every source holds
//! and gives the `linrec compile ...` command that builds the kernel.
//!
//! The same kernel requested from several threads at once is loaded or compiled once: the
//! other threads wait for it and get it from memory.
//!
//! ```no_run
//! use linrec_runtime::kernels::{Kernels, KernelRequest, KernelSource};
//! use linrec_spec::launch::{ElementType, KernelConfig};
//! # fn spec() -> linrec_spec::Spec { panic!("a spec, e.g. linrec::catalogue::SimpleGla::spec()") }
//! # fn main() -> Result<(), linrec_runtime::kernels::KernelError> {
//! let kernels = Kernels::builder().artifacts("artifacts").build()?;
//! let config = KernelConfig {
//!     dtype: ElementType::Bf16, key_dim: 128, value_dim: 128, chunk: 64,
//!     initial_state: true, final_state: true, varlen: false,
//! };
//! let spec = spec();
//! let loaded = kernels.get(&KernelRequest::forward(&spec, "sm_90", config))?;
//! println!("{} ({})", loaded.kernel.info.entry, loaded.source);
//! // op::forward(&device, &loaded.kernel.info, &loaded.kernel.binary, &args)
//! # Ok(()) }
//! ```

mod artifacts;
mod disk;
#[cfg(feature = "jit")]
mod jit;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use linrec_spec::Spec;
use linrec_spec::launch::{KernelConfig, KernelInfo};

use crate::backend::{DeviceInfo, ModuleFormat};
use crate::embed::EmbeddedArtifacts;

use artifacts::ArtifactSet;
pub(crate) use artifacts::parse as parse_manifest;
pub use disk::{CacheError, CachedKernel, DiskCache};
#[cfg(feature = "jit")]
pub use jit::JitCompiler;

/// Forward or backward kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The forward pass.
    Forward,
    /// The backward pass.
    Backward,
}

impl Direction {
    /// `forward` or `backward`, as in [`KernelInfo::direction`].
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Direction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "forward" => Ok(Direction::Forward),
            "backward" => Ok(Direction::Backward),
            _ => Err(format!(
                "unknown direction `{s}`: expected forward or backward"
            )),
        }
    }
}

/// What to fetch: the kernel of `spec` for one direction, target and config.
#[derive(Clone, Copy, Debug)]
pub struct KernelRequest<'a> {
    /// The variant (a compiler needs all of it; the sources look it up by its hash).
    pub spec: &'a Spec,
    /// Forward or backward.
    pub direction: Direction,
    /// Target name: `sm_80`, `sm_90`, `sm_90a`, `gfx90a`, `gfx942`, `gfx1100`, `spirv`
    /// ([`device_target`] gives the one a device loads).
    pub target: &'a str,
    /// What the kernel is specialised for.
    pub config: KernelConfig,
}

impl<'a> KernelRequest<'a> {
    /// The forward kernel of `spec` for `target` and `config`.
    pub fn forward(spec: &'a Spec, target: &'a str, config: KernelConfig) -> Self {
        KernelRequest {
            spec,
            direction: Direction::Forward,
            target,
            config,
        }
    }

    /// The backward kernel of `spec` for `target` and `config` (launched by
    /// [`crate::op::backward`]).
    pub fn backward(spec: &'a Spec, target: &'a str, config: KernelConfig) -> Self {
        KernelRequest {
            spec,
            direction: Direction::Backward,
            target,
            config,
        }
    }

    /// The identity of the requested kernel.
    pub fn key(&self) -> KernelKey {
        KernelKey {
            spec_name: self.spec.name.clone(),
            spec_hash: self.spec.hash().hex(),
            direction: self.direction,
            // Target names are lowercase; compilers accept any case (`SM_90`) but record the
            // canonical name, which is what sources and caches are keyed by.
            target: self.target.to_ascii_lowercase(),
            config: self.config,
        }
    }
}

/// The identity of a kernel, independent of who compiled it: what the in-memory map is keyed by
/// and (with the compiler fingerprint) the disk cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    /// The spec's name (it names the entry point).
    pub spec_name: String,
    /// The spec's canonical hash, full hex.
    pub spec_hash: String,
    /// Forward or backward.
    pub direction: Direction,
    /// Target name.
    pub target: String,
    /// What the kernel is specialised for.
    pub config: KernelConfig,
}

impl KernelKey {
    /// The key of the kernel `info` describes; `None` when its direction is not one this
    /// runtime knows.
    pub fn of(info: &KernelInfo) -> Option<KernelKey> {
        Some(KernelKey {
            spec_name: info.spec_name.clone(),
            spec_hash: info.spec_hash.clone(),
            direction: info.direction.parse().ok()?,
            target: info.target.clone(),
            config: info.config,
        })
    }

    /// Whether `info` describes this kernel (the spec name aside: a kernel is found by the
    /// spec's math, which the hash covers).
    pub fn matches(&self, info: &KernelInfo) -> bool {
        info.spec_hash == self.spec_hash
            && info.direction == self.direction.name()
            && info.target == self.target
            && info.config == self.config
    }

    /// The command that writes an artifact folder holding this kernel (`linrec compile` writes
    /// every combination of h0, final state and varlen, so the command omits them; a backward
    /// kernel's adds `--direction backward`).
    ///
    /// ```
    /// use linrec_runtime::kernels::{Direction, KernelKey};
    /// use linrec_spec::launch::{ElementType, KernelConfig};
    /// let key = KernelKey {
    ///     spec_name: "retention".into(), spec_hash: "00".into(), direction: Direction::Forward,
    ///     target: "spirv".into(),
    ///     config: KernelConfig { dtype: ElementType::F16, key_dim: 32, value_dim: 64, chunk: 64,
    ///         initial_state: true, final_state: false, varlen: false },
    /// };
    /// assert_eq!(key.compile_command("DIR"),
    ///     "linrec compile retention --target spirv --dtype f16 --head-dims 32:64 --chunk 64 --out DIR");
    /// ```
    pub fn compile_command(&self, out: &str) -> String {
        let c = &self.config;
        // `linrec compile` writes forward kernels unless told otherwise.
        let direction = match self.direction {
            Direction::Forward => "",
            Direction::Backward => " --direction backward",
        };
        format!(
            "linrec compile {} --target {} --dtype {} --head-dims {}:{} --chunk {}{direction} --out {out}",
            self.spec_name, self.target, c.dtype, c.key_dim, c.value_dim, c.chunk
        )
    }
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} kernel of `{}` (spec {}) for target {}, config {}",
            self.direction,
            self.spec_name,
            self.spec_hash.get(..16).unwrap_or(&self.spec_hash),
            self.target,
            config_tag(&self.config)
        )
    }
}

/// A short, file-name-safe description of a config, `bf16-k64-v64-c64-h0-ht[-varlen]` — the
/// same text as linrec-compiler's `artifact::config_tag`, so file names agree.
///
/// ```
/// use linrec_spec::launch::{ElementType, KernelConfig};
/// let c = KernelConfig { dtype: ElementType::Bf16, key_dim: 64, value_dim: 32, chunk: 64,
///     initial_state: true, final_state: false, varlen: true };
/// assert_eq!(linrec_runtime::kernels::config_tag(&c), "bf16-k64-v32-c64-h0-varlen");
/// ```
pub fn config_tag(config: &KernelConfig) -> String {
    config.tag()
}

/// The target whose binaries `device` loads: `sm_80` / `sm_90a` / `sm_90` from a CUDA device's
/// compute capability (8.x / 9.0 / other 9.x; or the one [`CUDA_TARGET_ENV`] names, if the
/// device runs it), `gfx90a` /
/// `gfx942` / `gfx1100` from a HIP device's architecture, `spirv` for Level Zero and OpenCL.
/// An error names a device linrec has no target for.
///
/// ```
/// # fn info() -> linrec_runtime::DeviceInfo { panic!("a device's info, e.g. Device::info()") }
/// # fn main() -> Result<(), String> { if false {
/// let target = linrec_runtime::kernels::device_target(&info())?; // "sm_90a" on an H100
/// # } Ok(()) }
/// ```
pub fn device_target(device: &DeviceInfo) -> Result<&'static str, String> {
    let asked = std::env::var(CUDA_TARGET_ENV).ok();
    device_target_asking(device, asked.as_deref())
}

/// [`device_target`] with the CUDA target asked for given (`None` or empty: the compute
/// capability's) instead of read from [`CUDA_TARGET_ENV`].
///
/// ```
/// use linrec_runtime::{BackendKind, DeviceInfo, kernels::device_target_asking};
/// let h100 = DeviceInfo {
///     backend: BackendKind::Cuda, ordinal: 0, name: "H100".into(), vendor: String::new(),
///     driver_version: String::new(), total_memory: 1, max_threads_per_block: 1024,
///     max_shared_memory_per_block: 1, compute_capability: Some((9, 0)), arch: None,
///     il_version: None, is_cpu: false,
/// };
/// assert_eq!(device_target_asking(&h100, None), Ok("sm_90a"));
/// assert_eq!(device_target_asking(&h100, Some("sm_90")), Ok("sm_90"));
/// ```
pub fn device_target_asking(
    device: &DeviceInfo,
    asked: Option<&str>,
) -> Result<&'static str, String> {
    const AMD: [&str; 3] = ["gfx90a", "gfx942", "gfx1100"];
    match device.module_format() {
        ModuleFormat::Ptx => match asked {
            Some(asked) if !asked.is_empty() => cuda_target_override(device, asked),
            _ => default_cuda_target(device),
        },
        ModuleFormat::Hsaco => {
            // `gfx90a:sramecc+:xnack-`: the processor, then its target features.
            let arch = device.arch.as_deref().unwrap_or_default();
            let processor = arch.split(':').next().unwrap_or_default();
            AMD.into_iter().find(|t| *t == processor).ok_or_else(|| {
                format!(
                    "HIP device `{}` has architecture `{arch}`; linrec targets {}",
                    device.name,
                    AMD.join(", ")
                )
            })
        }
        ModuleFormat::SpirV => Ok("spirv"),
    }
}

/// The environment variable that picks the CUDA target a device loads instead of the one its
/// compute capability gives ([`device_target`]): `sm_90` runs the kernels without wgmma on an
/// H100/H200 (for comparisons), `sm_80` the Ampere ones anywhere.
pub const CUDA_TARGET_ENV: &str = "LINREC_CUDA_TARGET";

/// `sm_80` on 8.x; `sm_90a` on 9.0 (H100, H200: wgmma in the forward's chunk kernels,
/// measured faster than sm_90 on an H200, `docs/performance.md`); `sm_90` on other 9.x.
fn default_cuda_target(device: &DeviceInfo) -> Result<&'static str, String> {
    match device.compute_capability {
        Some((8, _)) => Ok("sm_80"),
        Some((9, 0)) => Ok("sm_90a"),
        Some((9, _)) => Ok("sm_90"),
        Some((major, minor)) => Err(format!(
            "CUDA device `{}` has compute capability {major}.{minor}; linrec targets sm_80 (8.x) and sm_90 (9.x)",
            device.name
        )),
        None => Err(format!(
            "CUDA device `{}` reports no compute capability",
            device.name
        )),
    }
}

/// The target `asked` through [`CUDA_TARGET_ENV`], if `device` runs its PTX: `sm_80` from
/// 8.0 up, `sm_90` from 9.0 up, `sm_90a` on 9.0 only (architecture-specific features).
fn cuda_target_override(device: &DeviceInfo, asked: &str) -> Result<&'static str, String> {
    let cc = device.compute_capability.unwrap_or((0, 0));
    let (target, runs) = match asked {
        "sm_80" => ("sm_80", cc >= (8, 0)),
        "sm_90" => ("sm_90", cc >= (9, 0)),
        "sm_90a" => ("sm_90a", cc == (9, 0)),
        other => {
            return Err(format!(
                "{CUDA_TARGET_ENV}={other} is not a CUDA target: use sm_80, sm_90 or sm_90a (or unset it)"
            ));
        }
    };
    if runs {
        Ok(target)
    } else {
        Err(format!(
            "{CUDA_TARGET_ENV}={asked}: CUDA device `{}` (compute capability {}.{}) cannot run {asked} PTX (sm_80 needs 8.0 or later, sm_90 9.0 or later, sm_90a exactly 9.0); unset it",
            device.name, cc.0, cc.1
        ))
    }
}

/// A kernel ready to launch: its launch metadata and its binary (PTX text, HSACO, SPIR-V).
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// How to launch it.
    pub info: KernelInfo,
    /// The module bytes.
    pub binary: Vec<u8>,
}

/// Where a kernel returned by [`Kernels::get`] came from.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelSource {
    /// This provider returned it before.
    Memory,
    /// An artifact folder or embedded artifacts; `location` names the file.
    Artifacts {
        /// The folder's file, or `embedded <label>: <file>`.
        location: String,
    },
    /// The disk cache; `path` is the cached binary.
    DiskCache {
        /// The cached binary.
        path: PathBuf,
    },
    /// Compiled just now.
    Compiled {
        /// How long the compiler took.
        time: Duration,
        /// Where it was cached (the binary), `None` when the disk cache is off or could not
        /// be written (a warning said why).
        cached: Option<PathBuf>,
    },
}

impl fmt::Display for KernelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSource::Memory => f.write_str("from memory"),
            KernelSource::Artifacts { location } => write!(f, "from artifacts: {location}"),
            KernelSource::DiskCache { path } => {
                write!(f, "from the disk cache: {}", path.display())
            }
            KernelSource::Compiled { time, cached } => {
                write!(f, "compiled in {:.1} ms", time.as_secs_f64() * 1e3)?;
                match cached {
                    Some(path) => write!(f, ", cached in {}", path.display()),
                    None => f.write_str(" (not cached)"),
                }
            }
        }
    }
}

/// A kernel and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The kernel, shared with the provider's memory.
    pub kernel: Arc<Kernel>,
    /// Where it came from this time.
    pub source: KernelSource,
}

/// What a [`KernelCompiler`] returns.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Launch metadata.
    pub info: KernelInfo,
    /// The module bytes.
    pub binary: Vec<u8>,
    /// Compile time.
    pub time: Duration,
}

/// The error a [`KernelCompiler`] returns.
pub type CompileFailure = Box<dyn std::error::Error + Send + Sync>;

/// Compiles kernels the sources do not hold. [`JitCompiler`] (feature `jit`) is linrec's; tests
/// and special builds may plug in their own.
pub trait KernelCompiler: Send + Sync {
    /// Who compiles, with whatever options change the output (e.g.
    /// `linrec-compiler 0.1.0+<source hash> (LLVM 22.1.8)`): part of the disk-cache key, so kernels of another
    /// compiler are never reused.
    fn fingerprint(&self) -> String;

    /// Compiles the requested kernel.
    fn compile(&self, request: &KernelRequest<'_>) -> Result<Compiled, CompileFailure>;
}

/// Why [`Kernels`] could not return a kernel, or could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// No source holds the kernel and the provider cannot compile it.
    #[error("no {key}:{}\n{hint}", searched.iter().map(|s| format!("\n  {s}")).collect::<String>())]
    Missing {
        /// The kernel asked for (boxed: it keeps the error small).
        key: Box<KernelKey>,
        /// One line per source: what it holds.
        searched: Vec<String>,
        /// How to build the kernel.
        hint: String,
    },
    /// An artifact folder or embedded manifest cannot be read or parsed.
    #[error("{location}: {detail}")]
    Artifacts {
        /// The manifest.
        location: String,
        /// What is wrong, and what to do.
        detail: String,
    },
    /// An artifact manifest of another format version.
    #[error(
        "{location} has manifest version {found}, but this linrec-runtime ({}) reads version {needed}; rebuild the artifacts with `linrec compile` of this linrec version",
        env!("CARGO_PKG_VERSION")
    )]
    ManifestVersion {
        /// The manifest.
        location: String,
        /// Its version.
        found: u32,
        /// [`linrec_spec::launch::MANIFEST_VERSION`].
        needed: u32,
    },
    /// An artifact binary that does not match its manifest's SHA-256.
    #[error(
        "{location}: the binary does not match the SHA-256 in its manifest (corrupt or replaced); rebuild the artifacts with `linrec compile`"
    )]
    Checksum {
        /// The binary.
        location: String,
    },
    /// The compiler failed.
    #[error("compiling the {key} failed: {detail}")]
    Compile {
        /// The kernel asked for (boxed: it keeps the error small).
        key: Box<KernelKey>,
        /// The compiler's error.
        detail: String,
    },
    /// The compiler (or a source) returned another kernel than the one asked for.
    #[error("asked for the {key}, got {found}")]
    WrongKernel {
        /// The kernel asked for (boxed: it keeps the error small).
        key: Box<KernelKey>,
        /// What came back.
        found: String,
    },
}

/// The warning sink: gets one message per recovered problem (a corrupt cache entry, a cache that
/// cannot be written).
pub type WarningSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Builds a [`Kernels`]; [`Kernels::builder`].
#[must_use]
pub struct KernelsBuilder {
    folders: Vec<PathBuf>,
    embedded: Vec<EmbeddedArtifacts>,
    disk: DiskChoice,
    compiler: Option<Arc<dyn KernelCompiler>>,
    warn: WarningSink,
}

enum DiskChoice {
    FromEnv,
    Dir(PathBuf),
    Off,
}

impl KernelsBuilder {
    /// Adds an artifact folder written by `linrec compile` (`manifest.json` + binaries).
    /// Sources are searched in the order they are added.
    pub fn artifacts(mut self, dir: impl Into<PathBuf>) -> Self {
        self.folders.push(dir.into());
        self
    }

    /// Adds the folder named by `LINREC_ARTIFACTS`, if it is set.
    pub fn artifacts_from_env(self) -> Self {
        match std::env::var_os(ARTIFACTS_ENV).filter(|v| !v.is_empty()) {
            Some(dir) => self.artifacts(dir),
            None => self,
        }
    }

    /// Adds artifacts embedded into the binary ([`crate::include_artifacts!`]).
    pub fn embedded(mut self, artifacts: &EmbeddedArtifacts) -> Self {
        self.embedded.push(*artifacts);
        self
    }

    /// Uses this directory as the cache root instead of the environment's (kernels go to
    /// `dir/kernels-v1/`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.disk = DiskChoice::Dir(dir.into());
        self
    }

    /// Neither reads nor writes the disk cache.
    pub fn no_disk_cache(mut self) -> Self {
        self.disk = DiskChoice::Off;
        self
    }

    /// Compiles misses with `compiler` (and caches them on disk). With the `jit` feature the
    /// default is [`JitCompiler`]; without it there is none.
    pub fn compiler(mut self, compiler: Arc<dyn KernelCompiler>) -> Self {
        self.compiler = Some(compiler);
        self
    }

    /// Never compiles: a kernel no source holds is an error (what a deployed program or a
    /// GPU test runner wants, even when built with `jit`).
    pub fn no_compiler(mut self) -> Self {
        self.compiler = None;
        self
    }

    /// Sends warnings (a corrupt cache entry recompiled, a cache that cannot be written) to
    /// `sink` instead of stderr.
    pub fn on_warning(mut self, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.warn = Arc::new(sink);
        self
    }

    /// Reads the artifact manifests (binaries are read when asked for) and resolves the cache
    /// directory. Errors: a manifest that cannot be read, parsed, or is of another version.
    pub fn build(self) -> Result<Kernels, KernelError> {
        let mut sources = Vec::new();
        for dir in &self.folders {
            sources.push(ArtifactSet::folder(dir)?);
        }
        for e in &self.embedded {
            sources.push(ArtifactSet::embedded(e)?);
        }
        let disk = match self.disk {
            DiskChoice::FromEnv => {
                let disk = DiskCache::from_env();
                if disk.is_none() {
                    (self.warn)(
                        "no kernel cache directory: set LINREC_CACHE_DIR (or HOME / XDG_CACHE_HOME); kernels are not cached on disk",
                    );
                }
                disk
            }
            DiskChoice::Dir(dir) => Some(DiskCache::new(dir)),
            DiskChoice::Off => None,
        };
        Ok(Kernels {
            memory: Mutex::new(HashMap::new()),
            sources,
            disk,
            compiler: self.compiler,
            warn: self.warn,
        })
    }
}

/// Environment variable naming an artifact folder ([`KernelsBuilder::artifacts_from_env`]).
pub const ARTIFACTS_ENV: &str = "LINREC_ARTIFACTS";

/// One kernel's slot in memory. The mutex is held while the kernel is loaded or compiled, so
/// concurrent requests for the same kernel wait for the first one instead of compiling again;
/// requests for other kernels do not wait. A failed load leaves the slot empty (the next request
/// tries again: a missing artifact may have been built since).
type Slot = Arc<Mutex<Option<Arc<Kernel>>>>;

/// The kernel provider: memory, artifact sources, the disk cache and, optionally, a compiler
/// (see the [module docs](self)). `Send + Sync`: share one per process (in an `Arc` or a
/// `static`).
pub struct Kernels {
    memory: Mutex<HashMap<KernelKey, Slot>>,
    sources: Vec<ArtifactSet>,
    disk: Option<DiskCache>,
    compiler: Option<Arc<dyn KernelCompiler>>,
    warn: WarningSink,
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels")
            .field(
                "sources",
                &self
                    .sources
                    .iter()
                    .map(|s| s.location())
                    .collect::<Vec<_>>(),
            )
            .field("disk", &self.disk)
            .field("compiler", &self.compiler.as_ref().map(|c| c.fingerprint()))
            .finish_non_exhaustive()
    }
}

impl Kernels {
    /// A builder with the defaults: no artifact sources, the disk cache from the environment,
    /// [`JitCompiler`] with the `jit` feature (no compiler without it), warnings to stderr.
    pub fn builder() -> KernelsBuilder {
        KernelsBuilder {
            folders: Vec::new(),
            embedded: Vec::new(),
            disk: DiskChoice::FromEnv,
            compiler: default_compiler(),
            warn: Arc::new(|msg: &str| eprintln!("warning: {msg}")),
        }
    }

    /// The disk cache in use, if any.
    pub fn disk_cache(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// Whether misses are compiled.
    pub fn can_compile(&self) -> bool {
        self.compiler.is_some()
    }

    /// Puts a kernel into memory, as if it had been loaded (later requests for it get it from
    /// [`KernelSource::Memory`]). Errors when its direction is unknown.
    pub fn insert(&self, kernel: Kernel) -> Result<(), KernelError> {
        let key = KernelKey::of(&kernel.info).ok_or_else(|| KernelError::Artifacts {
            location: kernel.info.entry.clone(),
            detail: format!("unknown direction `{}`", kernel.info.direction),
        })?;
        let slot = self.slot(&key);
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(kernel));
        Ok(())
    }

    /// The kernel for `request`: from memory, an artifact source, the disk cache or the
    /// compiler, in that order (see the [module docs](self)).
    pub fn get(&self, request: &KernelRequest<'_>) -> Result<Loaded, KernelError> {
        let key = request.key();
        let slot = self.slot(&key);
        // Held across the load: the other threads asking for this kernel wait here. A panic
        // in a compiler poisons it with the slot still empty, which the next caller retries.
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kernel) = guard.as_ref() {
            return Ok(Loaded {
                kernel: Arc::clone(kernel),
                source: KernelSource::Memory,
            });
        }
        let (kernel, source) = self.load(request, &key)?;
        let kernel = Arc::new(kernel);
        *guard = Some(Arc::clone(&kernel));
        Ok(Loaded { kernel, source })
    }

    fn slot(&self, key: &KernelKey) -> Slot {
        // Only map operations under this lock (never a load), so it is never held long.
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(memory.entry(key.clone()).or_default())
    }

    fn load(
        &self,
        request: &KernelRequest<'_>,
        key: &KernelKey,
    ) -> Result<(Kernel, KernelSource), KernelError> {
        for source in &self.sources {
            if let Some(found) = source.load(key)? {
                return Ok(found);
            }
        }

        let fingerprint = self.compiler.as_ref().map(|c| c.fingerprint());
        if let Some(disk) = &self.disk {
            match disk.load(key, fingerprint.as_deref()) {
                Ok(Some(cached)) => {
                    return Ok((cached.kernel, KernelSource::DiskCache { path: cached.path }));
                }
                Ok(None) => {}
                Err(e) => (self.warn)(&format!(
                    "{e}; {}",
                    if self.compiler.is_some() {
                        "recompiling the kernel"
                    } else {
                        "ignoring it"
                    }
                )),
            }
        }

        let (Some(compiler), Some(fingerprint)) = (&self.compiler, fingerprint) else {
            return Err(self.missing(key));
        };
        let compiled = compiler
            .compile(request)
            .map_err(|e| KernelError::Compile {
                key: Box::new(key.clone()),
                detail: e.to_string(),
            })?;
        if !key.matches(&compiled.info) {
            return Err(KernelError::WrongKernel {
                key: Box::new(key.clone()),
                found: format!(
                    "`{}` ({} {} {} {})",
                    compiled.info.entry,
                    compiled.info.direction,
                    compiled.info.target,
                    config_tag(&compiled.info.config),
                    compiled.info.spec_hash
                ),
            });
        }
        let cached = self.disk.as_ref().and_then(|disk| {
            disk.store(
                key,
                &fingerprint,
                &compiled.info,
                &compiled.binary,
                compiled.time,
            )
            .map_err(|e| {
                (self.warn)(&format!(
                    "{e}; the kernel is compiled but not cached (set LINREC_CACHE_DIR to a writable folder)"
                ));
            })
            .ok()
        });
        Ok((
            Kernel {
                info: compiled.info,
                binary: compiled.binary,
            },
            KernelSource::Compiled {
                time: compiled.time,
                cached,
            },
        ))
    }

    fn missing(&self, key: &KernelKey) -> KernelError {
        let mut searched: Vec<String> = self.sources.iter().map(|s| s.describe(key)).collect();
        if self.sources.is_empty() {
            searched.push("artifacts: none given".into());
        }
        searched.push(match &self.disk {
            Some(disk) => format!(
                "disk cache {}: no usable entry",
                disk.kernels_dir().display()
            ),
            None => "disk cache: off".into(),
        });
        let jit = cfg!(feature = "jit");
        searched.push(if jit {
            "compiler: off for this provider".into()
        } else {
            "compiler: none (linrec-runtime was built without the `jit` feature)".into()
        });
        let hint = format!(
            "build it ahead of time with\n    {}\n(DIR a new folder: `linrec compile` replaces an existing manifest) and load DIR \
             (`KernelsBuilder::artifacts`; in the CLI `--artifacts DIR` or {ARTIFACTS_ENV}){}",
            key.compile_command("DIR"),
            if jit {
                ""
            } else {
                ", or build with the `jit` feature to compile it in process"
            }
        );
        KernelError::Missing {
            key: Box::new(key.clone()),
            searched,
            hint,
        }
    }
}

#[cfg(feature = "jit")]
fn default_compiler() -> Option<Arc<dyn KernelCompiler>> {
    Some(Arc::new(JitCompiler::new()))
}

#[cfg(not(feature = "jit"))]
fn default_compiler() -> Option<Arc<dyn KernelCompiler>> {
    None
}

/// A file name made of `[A-Za-z0-9_-]` (others become `_`), for spec names in cache paths.
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Lowercase hex SHA-256 (artifact manifests and cache entries record it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The file extension of a target's binaries.
fn extension(target: &str) -> &'static str {
    if target == "spirv" {
        "spv"
    } else if target.starts_with("sm_") {
        "ptx"
    } else if target.starts_with("gfx") {
        "hsaco"
    } else {
        "bin"
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

// The provider and what it hands out cross threads (DESIGN §7, issue 5 item 7).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Kernels>();
    send_sync::<Kernel>();
    send_sync::<Loaded>();
    send_sync::<KernelError>();
    send_sync::<DiskCache>();
    send_sync::<EmbeddedArtifacts>();
};
