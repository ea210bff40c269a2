//! Where a kernel comes from — compiled in process (`jit`) or loaded from an artifact folder —
//! and the arguments that pick one (dtype, chunk, target).

use std::path::{Path, PathBuf};

use linrec::spec::Spec;
use linrec::spec::launch::{ElementType, KernelConfig, KernelInfo, Manifest};
use linrec_runtime::DeviceInfo;
use sha2::{Digest, Sha256};

use crate::Failure;

/// Environment variable naming an artifact folder, like `--artifacts`.
pub const ARTIFACTS_ENV: &str = "LINREC_ARTIFACTS";

/// A kernel ready to launch.
pub struct Kernel {
    pub info: KernelInfo,
    pub binary: Vec<u8>,
    /// How it was obtained, for the report (`compiled in 41 ms`, `from d/manifest.json`).
    pub origin: String,
}

pub fn parse_dtype(s: &str) -> Result<ElementType, Failure> {
    s.parse()
        .map_err(|e: String| Failure::usage(format!("--dtype: {e}")))
}

pub fn check_chunk(chunk: usize) -> Result<usize, Failure> {
    if [16, 32, 64].contains(&chunk) {
        Ok(chunk)
    } else {
        Err(Failure::usage(format!(
            "--chunk {chunk} is not allowed: use 16, 32 or 64"
        )))
    }
}

/// The target name whose binaries `device` loads: `sm_80`/`sm_90` from a CUDA device's compute
/// capability, `spirv` for OpenCL.
pub fn target_for(device: &DeviceInfo) -> Result<String, Failure> {
    match device.compute_capability {
        Some((8, _)) => Ok("sm_80".into()),
        Some((9, _)) => Ok("sm_90".into()),
        Some((major, minor)) => Err(Failure::usage(format!(
            "CUDA device `{}` has compute capability {major}.{minor}; linrec targets sm_80 (8.x) and sm_90 (9.x)",
            device.name
        ))),
        None => Ok("spirv".into()),
    }
}

/// The artifact folder from `--artifacts` or `LINREC_ARTIFACTS`.
pub fn artifacts_dir(arg: Option<&Path>) -> Option<PathBuf> {
    arg.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(ARTIFACTS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, Failure> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure::usage(format!(
            "cannot read {}: {e}; write an artifact folder with `linrec compile <variant> --target <target> --out {}`",
            path.display(),
            dir.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("{} is not a linrec manifest: {e}", path.display())))?;
    if manifest.version != linrec::spec::launch::MANIFEST_VERSION {
        return Err(Failure::usage(format!(
            "{} has manifest version {}, this linrec reads version {}; recompile it with this linrec's `linrec compile`",
            path.display(),
            manifest.version,
            linrec::spec::launch::MANIFEST_VERSION
        )));
    }
    Ok(manifest)
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads the kernel for `spec`, `target` and `config` from an artifact folder.
pub fn from_artifacts(
    dir: &Path,
    spec: &Spec,
    target: &str,
    config: &KernelConfig,
) -> Result<Kernel, Failure> {
    let manifest = read_manifest(dir)?;
    let hash = spec.hash().hex();
    let entry = manifest
        .find(&hash, "forward", target, config)
        .ok_or_else(|| {
            let have: Vec<String> = manifest
                .kernels
                .iter()
                .filter(|e| e.info.spec_hash == hash)
                .map(|e| format!("{} {}", e.info.target, e.file))
                .collect();
            Failure::usage(format!(
                "{} has no forward kernel of `{}` for target {target} and config {config:?} (it has {}); build it with `linrec compile {} --target {target} --dtype {} --head-dims {}:{} --chunk {} --out {}`",
                dir.display(),
                spec.name,
                if have.is_empty() { "none of this variant".to_string() } else { have.join(", ") },
                spec.name,
                config.dtype,
                config.key_dim,
                config.value_dim,
                config.chunk,
                dir.display()
            ))
        })?;
    let path = dir.join(&entry.file);
    let binary = std::fs::read(&path)
        .map_err(|e| Failure::usage(format!("cannot read kernel {}: {e}", path.display())))?;
    if sha256_hex(&binary) != entry.sha256 {
        return Err(Failure::usage(format!(
            "kernel {} does not match the SHA-256 in its manifest (corrupt or replaced); recompile the folder",
            path.display()
        )));
    }
    Ok(Kernel {
        info: entry.info.clone(),
        binary,
        origin: format!("loaded from {}", path.display()),
    })
}

/// Compiles the kernel in process.
#[cfg(feature = "jit")]
pub fn compile(spec: &Spec, target: &str, config: &KernelConfig) -> Result<Kernel, Failure> {
    let target: linrec_compiler::Target = target.parse().map_err(Failure::usage)?;
    let artifact = linrec_compiler::compile(spec, target, config).map_err(Failure::usage)?;
    Ok(Kernel {
        origin: format!(
            "compiled for {target} in {:.1} ms",
            artifact.compile_time.as_secs_f64() * 1e3
        ),
        info: artifact.info,
        binary: artifact.binary,
    })
}

/// Without `jit` there is nothing to compile with.
#[cfg(not(feature = "jit"))]
pub fn compile(spec: &Spec, _target: &str, _config: &KernelConfig) -> Result<Kernel, Failure> {
    Err(Failure::usage(format!(
        "this linrec was built without the `jit` feature, so it cannot compile `{}`: pass --artifacts DIR (or set {ARTIFACTS_ENV}) with a folder written by `linrec compile`",
        spec.name
    )))
}
