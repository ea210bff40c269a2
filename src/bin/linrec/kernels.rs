//! Where a kernel comes from — linrec-runtime's kernel provider: an artifact folder, the disk
//! cache, or (`jit`) the compiler in process — and the arguments that pick one (dtype, chunk,
//! target).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use linrec::spec::Spec;
use linrec::spec::launch::{ElementType, KernelConfig};
use linrec_runtime::DeviceInfo;
use linrec_runtime::kernels::{ARTIFACTS_ENV, Kernel, KernelRequest, KernelSource, Kernels};

use crate::Failure;

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
    linrec_runtime::kernels::device_target(device)
        .map(str::to_owned)
        .map_err(Failure::usage)
}

/// The artifact folder from `--artifacts` or `LINREC_ARTIFACTS`.
pub fn artifacts_dir(arg: Option<&Path>) -> Option<PathBuf> {
    arg.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(ARTIFACTS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// The kernel provider of `linrec run`. With an artifact folder it loads from the folder alone
/// — "instead of compiling", so a GPU runner runs exactly the kernels it was given and a missing
/// one is an error naming the `linrec compile` command. Otherwise: the disk cache (unless
/// `no_cache`) and, with `jit`, the compiler, whose kernels go to the disk cache.
pub fn provider(artifacts: Option<&Path>, no_cache: bool) -> Result<Kernels, Failure> {
    let mut builder = Kernels::builder();
    if let Some(dir) = artifacts {
        builder = builder.artifacts(dir).no_disk_cache().no_compiler();
    } else if no_cache {
        builder = builder.no_disk_cache();
    }
    builder.build().map_err(Failure::usage)
}

/// The forward kernel of `spec` for `target` and `config`, and a line saying where it came from
/// (`compiled for spirv in 41.0 ms, cached in ...`, `from the disk cache: ...`,
/// `from artifacts: ...`).
pub fn forward(
    kernels: &Kernels,
    spec: &Spec,
    target: &str,
    config: KernelConfig,
) -> Result<(Arc<Kernel>, String), Failure> {
    fetch(kernels, &KernelRequest::forward(spec, target, config))
}

/// The backward kernel of the forward `config` (it reads h0 and writes dh0 when the forward
/// read h0, reads dht when the forward wrote the final state), and where it came from.
pub fn backward(
    kernels: &Kernels,
    spec: &Spec,
    target: &str,
    config: KernelConfig,
) -> Result<(Arc<Kernel>, String), Failure> {
    fetch(kernels, &KernelRequest::backward(spec, target, config))
}

fn fetch(kernels: &Kernels, request: &KernelRequest<'_>) -> Result<(Arc<Kernel>, String), Failure> {
    let loaded = kernels.get(request).map_err(Failure::usage)?;
    let origin = match &loaded.source {
        KernelSource::Compiled { time, cached } => format!(
            "compiled for {} in {:.1} ms{}",
            request.target,
            time.as_secs_f64() * 1e3,
            match cached {
                Some(path) => format!(", cached in {}", path.display()),
                None => " (not cached)".into(),
            }
        ),
        other => other.to_string(),
    };
    Ok((loaded.kernel, origin))
}
