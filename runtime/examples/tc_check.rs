//! Runs linrec's forward kernels from artifact folders on a device and checks them against the
//! f64 reference (fla's criterion: `‖out − ref‖ / ‖ref‖ < 0.005` on o and the final state),
//! then times them at B8 T2048 H16 D128. Written for the tensor-core kernels
//! (`compiler/src/schedule`), with a folder of portable ones beside them to compare.
//!
//! ```text
//! # here (LLVM): tensor-core kernels, portable ones, the runner (links no LLVM)
//! V="simple_gla linear_attn retention"
//! cargo run --release -- compile $V --target sm_90 --dtype bf16,f16 \
//!     --head-dims 64,128,60:100 --out .device/tc/art
//! LINREC_TENSOR_CORES=0 cargo run --release -- compile $V --target sm_90 --dtype bf16,f16 \
//!     --head-dims 128 --out .device/tc/portable
//! cargo build --release -p linrec-runtime --example tc_check
//! cp target/release/examples/tc_check .device/tc/
//! # there (a GPU): one process per folder, so that a sticky CUDA error stays in its folder
//! .device/tc/tc_check .device/tc/art; .device/tc/tc_check .device/tc/portable
//! ```
//!
//! Each folder holds `manifest.json` and the binaries `linrec compile` wrote; a case runs on
//! every folder that has its kernel (the device's target: sm_90 for compute capability 9.x,
//! sm_80 otherwise, spirv on OpenCL). Inputs are random, rounded to the kernel's dtype first
//! so the reference sees the same values; outputs are NaN-poisoned before each launch. The
//! large case checks its first sequence only (the reference is the slow part) and is timed:
//! warm-up, then wall time over back-to-back launches on preallocated buffers (CUDA events
//! are not exposed by the runtime; launch overhead is microseconds against milliseconds).
//!
//! `TC_QUICK=1` skips the large case, `TC_BIG=B,T,H,D` replaces it (for a dry run on the CPU
//! OpenCL runtime). Results also
//! go to `$OUT/tc_check.txt` when `OUT` is set. This binary links no LLVM.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use linrec_runtime::op::{self, ForwardArgs};
use linrec_runtime::{
    BackendKind, DType, Device, DeviceBuffer, DeviceKind, KernelArg, LaunchConfig,
};
use linrec_spec::launch::{ElementType, KernelConfig, KernelInfo, KernelParam, Manifest};
use linrec_spec::reference::{self, Inputs, Rng, Tensor, constant_log_decay};
use linrec_spec::{
    ConstantRate, Decay, Dims, Features, Input, Read, Role, RunOptions, Scale, Spec, Transition,
    Write,
};

/// fla's tolerance.
const RATIO: f64 = 0.005;

// ---- specs (as the catalogue declares them; checked against the manifests' hashes) ----------

fn spec(name: &str, decay: Decay, extra: &[(&str, Role)]) -> Spec {
    let mut inputs = vec![
        Input::new("q", Role::Query),
        Input::new("k", Role::Key),
        Input::new("v", Role::Value),
    ];
    inputs.extend(extra.iter().map(|(n, r)| Input::new(*n, *r)));
    Spec {
        name: name.into(),
        doc: String::new(),
        inputs,
        decay,
        transition: Transition::Identity,
        write: Write::Outer,
        read: Read::Inclusive,
        scale: Scale::InvSqrtK,
        features: Features::default(),
    }
}

fn specs() -> Vec<Spec> {
    vec![
        spec("linear_attn", Decay::None, &[]),
        spec("retention", Decay::Constant(ConstantRate::Retnet), &[]),
        spec("simple_gla", Decay::Scalar, &[("g", Role::Gate)]),
    ]
}

// ---- host-side element conversions: the `half` crate (round to nearest even) --------------

fn round(x: f64, dtype: ElementType) -> f64 {
    let f = x as f32;
    f64::from(match dtype {
        ElementType::F32 => f,
        ElementType::Bf16 => half::bf16::from_f32(f).to_f32(),
        ElementType::F16 => half::f16::from_f32(f).to_f32(),
    })
}

fn to_bytes(t: &Tensor, dtype: ElementType) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.len() * dtype.size());
    for &x in &t.data {
        let f = x as f32;
        match dtype {
            ElementType::F32 => out.extend_from_slice(&f.to_le_bytes()),
            ElementType::Bf16 => out.extend_from_slice(&half::bf16::from_f32(f).to_le_bytes()),
            ElementType::F16 => out.extend_from_slice(&half::f16::from_f32(f).to_le_bytes()),
        }
    }
    out
}

fn from_bytes(bytes: &[u8], dtype: ElementType) -> Vec<f64> {
    match dtype {
        ElementType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        ElementType::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        ElementType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
    }
}

fn runtime_dtype(e: ElementType) -> DType {
    op::dtype(e)
}

// ---- artifact folders --------------------------------------------------------------------

struct Folder {
    label: String,
    dir: PathBuf,
    manifest: Manifest,
}

fn open_folder(dir: &Path) -> Result<Folder, String> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let label = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(Folder {
        label,
        dir: dir.to_owned(),
        manifest,
    })
}

impl Folder {
    /// The kernel for `spec`, `target` and `config`, with its bytes.
    fn kernel(
        &self,
        spec_hash: &str,
        target: &str,
        config: &KernelConfig,
    ) -> Option<Result<(KernelInfo, Vec<u8>), String>> {
        let entry = self.manifest.kernels.iter().find(|e| {
            e.info.spec_hash == spec_hash
                && e.info.direction == "forward"
                && e.info.target == target
                && e.info.config == *config
        })?;
        let path = self.dir.join(&entry.file);
        Some(
            std::fs::read(&path)
                .map(|b| (entry.info.clone(), b))
                .map_err(|e| format!("{}: {e}", path.display())),
        )
    }
}

// ---- cases -------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Case {
    dims: Dims,
    chunk: usize,
    h0: bool,
    cu: Option<Vec<i64>>,
    /// Check the first sequence only, and time it.
    big: bool,
}

impl Case {
    fn new(b: usize, t: usize, h: usize, hv: usize, k: usize, v: usize) -> Self {
        Case {
            dims: Dims::new(b, t, h, k, v).with_value_heads(hv),
            chunk: 64,
            h0: true,
            cu: None,
            big: false,
        }
    }

    fn describe(&self) -> String {
        let d = self.dims;
        format!(
            "B{} T{} H{} HV{} K{} V{} C{}{}{}",
            d.batch,
            d.seq_len,
            d.heads,
            d.value_heads,
            d.key_dim,
            d.value_dim,
            self.chunk,
            if self.h0 { " h0" } else { "" },
            self.cu
                .as_ref()
                .map(|c| format!(" cu{c:?}"))
                .unwrap_or_default()
        )
    }

    fn config(&self, dtype: ElementType) -> KernelConfig {
        KernelConfig {
            dtype,
            key_dim: self.dims.key_dim,
            value_dim: self.dims.value_dim,
            chunk: self.chunk,
            initial_state: self.h0,
            final_state: true,
            varlen: self.cu.is_some(),
        }
    }
}

fn cases(quick: bool) -> Vec<Case> {
    let mut v = vec![
        Case::new(2, 1, 2, 2, 64, 64),
        // GVA: four value heads share two q/k heads.
        Case::new(1, 63, 2, 4, 64, 64),
        Case::new(2, 75, 1, 1, 60, 100),
        Case::new(1, 500, 2, 2, 128, 128),
        Case {
            cu: Some(vec![0, 0, 137, 137, 500]),
            ..Case::new(1, 500, 2, 2, 128, 128)
        },
        Case {
            h0: false,
            ..Case::new(1, 75, 2, 2, 64, 64)
        },
        Case {
            chunk: 16,
            ..Case::new(1, 75, 2, 2, 64, 64)
        },
    ];
    // `TC_BIG=B,T,H,D` replaces the large case (a dry run on a CPU runtime).
    let big: Option<Vec<usize>> = std::env::var("TC_BIG")
        .ok()
        .and_then(|s| s.split(',').map(|x| x.trim().parse().ok()).collect());
    match big.as_deref() {
        Some([b, t, h, d]) => v.push(Case {
            big: true,
            ..Case::new(*b, *t, *h, *h, *d, *d)
        }),
        _ if !quick => v.push(Case {
            big: true,
            ..Case::new(8, 2048, 16, 16, 128, 128)
        }),
        _ => {}
    }
    v
}

/// Random inputs rounded to `dtype` (q, k, v) and f32 (the rest), and the initial state.
fn inputs(spec: &Spec, case: &Case, dtype: ElementType, seed: u64) -> Inputs {
    let d = case.dims;
    let mut inputs = reference::random_inputs(spec, &d, seed);
    let n = case.cu.as_ref().map_or(d.batch, |c| c.len() - 1);
    if case.h0 {
        let mut rng = Rng::new(seed ^ 0x5eed);
        inputs.h0 = Some(Tensor::from_fn(&d.state_shape(n), || rng.normal()));
    }
    for role in Role::ALL {
        let elem = if matches!(role, Role::Query | Role::Key | Role::Value) {
            dtype
        } else {
            ElementType::F32
        };
        let t = match role {
            Role::Query => Some(&mut inputs.q),
            Role::Key => Some(&mut inputs.k),
            Role::Value => Some(&mut inputs.v),
            Role::Gate => inputs.g.as_mut(),
            Role::Beta => inputs.beta.as_mut(),
            Role::Bonus => inputs.u.as_mut(),
            Role::DecayRate => inputs.decay_rate.as_mut(),
        };
        if let Some(t) = t {
            t.data.iter_mut().for_each(|x| *x = round(*x, elem));
        }
    }
    if let Some(h0) = inputs.h0.as_mut() {
        h0.data
            .iter_mut()
            .for_each(|x| *x = round(*x, ElementType::F32));
    }
    inputs
}

/// The first slice of `t` along its first dim (batch row or sequence 0), as a tensor with
/// first dim 1.
fn first(t: &Tensor) -> Tensor {
    let mut shape = t.shape.clone();
    let per = t.len() / shape[0].max(1);
    shape[0] = 1;
    Tensor::from_vec(&shape, t.data[..per].to_vec()).unwrap_or_else(|| t.clone())
}

/// The reference's o and final state; for a big case, of the first sequence only.
fn reference_of(spec: &Spec, case: &Case, inputs: &Inputs) -> Result<(Tensor, Tensor), String> {
    let opts = RunOptions {
        scale: None,
        cu_seqlens: case.cu.clone(),
        output_final_state: true,
    };
    let out = if case.big {
        let mut one = inputs.clone();
        one.q = first(&inputs.q);
        one.k = first(&inputs.k);
        one.v = first(&inputs.v);
        one.g = inputs.g.as_ref().map(first);
        one.beta = inputs.beta.as_ref().map(first);
        one.h0 = inputs.h0.as_ref().map(first);
        reference::forward(spec, &one, &opts)
    } else {
        reference::forward(spec, inputs, &opts)
    }
    .map_err(|e| e.to_string())?;
    let ht = out.ht.ok_or("the reference gave no final state")?;
    Ok((out.o, ht))
}

// ---- running -----------------------------------------------------------------------------

/// One job's inputs and the reference's o and final state (or why there is none).
type Prepared = (Inputs, Result<(Tensor, Tensor), String>);

struct Uploaded {
    buffers: Vec<(Role, DeviceBuffer)>,
    h0: Option<DeviceBuffer>,
    cu: Option<DeviceBuffer>,
}

fn upload(
    dev: &Device,
    spec: &Spec,
    case: &Case,
    dtype: ElementType,
    inputs: &Inputs,
) -> Result<Uploaded, String> {
    let e = |x: linrec_runtime::RuntimeError| x.to_string();
    let mut buffers = Vec::new();
    for role in spec.required_roles() {
        let t = inputs.get(role).ok_or("a missing input")?;
        let elem = match role {
            Role::Query | Role::Key | Role::Value => dtype,
            _ => ElementType::F32,
        };
        buffers.push((
            role,
            dev.upload_bytes(runtime_dtype(elem), &t.shape, &to_bytes(t, elem))
                .map_err(e)?,
        ));
    }
    let h0 = match &inputs.h0 {
        Some(t) => Some(
            dev.upload_bytes(DType::F32, &t.shape, &to_bytes(t, ElementType::F32))
                .map_err(e)?,
        ),
        None => None,
    };
    let cu = match &case.cu {
        Some(c) => {
            let c32: Vec<i32> = c.iter().map(|&x| x as i32).collect();
            Some(dev.upload(&c32, &[c32.len()]).map_err(e)?)
        }
        None => None,
    };
    Ok(Uploaded { buffers, h0, cu })
}

/// Ratios of o and the final state; with `time`, also ms per launch.
#[allow(clippy::too_many_arguments)]
fn run_case(
    dev: &Device,
    spec: &Spec,
    case: &Case,
    dtype: ElementType,
    kernel: &(KernelInfo, Vec<u8>),
    up: &Uploaded,
    want: &(Tensor, Tensor),
) -> Result<(f64, f64, Option<f64>), String> {
    let e = |x: linrec_runtime::RuntimeError| x.to_string();
    let (info, binary) = kernel;
    let refs: Vec<(Role, &DeviceBuffer)> = up.buffers.iter().map(|(r, b)| (*r, b)).collect();
    let scale = spec.scale.resolve(case.dims.key_dim) as f32;
    let args = ForwardArgs {
        inputs: &refs,
        initial_state: up.h0.as_ref(),
        cu_seqlens: up.cu.as_ref(),
        scale,
    };
    let out = op::forward(dev, info, binary, &args).map_err(e)?;
    dev.synchronize().map_err(e)?;
    let o = Tensor::from_vec(
        out.o.shape(),
        from_bytes(&dev.download_bytes(&out.o).map_err(e)?, dtype),
    )
    .ok_or("o has the wrong size")?;
    let ht_buf = out.final_state.as_ref().ok_or("no final state")?;
    let ht = Tensor::from_vec(
        ht_buf.shape(),
        from_bytes(&dev.download_bytes(ht_buf).map_err(e)?, ElementType::F32),
    )
    .ok_or("ht has the wrong size")?;
    let (o, ht) = if case.big {
        (first(&o), first(&ht))
    } else {
        (o, ht)
    };
    let ratios = (o.rel_error(&want.0), ht.rel_error(&want.1));
    let ms = if case.big {
        Some(time(dev, info, binary, up, &out, scale)?)
    } else {
        None
    };
    Ok((ratios.0, ratios.1, ms))
}

/// Wall time per launch of the kernel, on the buffers of a first launch.
#[allow(clippy::too_many_arguments)]
fn time(
    dev: &Device,
    info: &KernelInfo,
    binary: &[u8],
    up: &Uploaded,
    out: &op::ForwardOutputs,
    scale: f32,
) -> Result<f64, String> {
    let e = |x: linrec_runtime::RuntimeError| x.to_string();
    let d = out.dims;
    let n = out.sequences;
    let mut grid = [0u32; 3];
    for (g, x) in grid.iter_mut().zip(&info.grid) {
        *g = x
            .eval(&d, n)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or("grid overflow")?;
    }
    let groups: u64 = grid.iter().map(|&g| u64::from(g)).product();
    let scratch = dev
        .alloc(DType::F32, &[(groups * info.scratch).max(1) as usize])
        .map_err(e)?;
    let rates = if info.params.contains(&KernelParam::DecayRates) {
        let r: Vec<f32> = (0..d.value_heads)
            .map(|hv| constant_log_decay(ConstantRate::Retnet, None, hv) as f32)
            .collect();
        Some(dev.upload(&r, &[d.value_heads]).map_err(e)?)
    } else {
        None
    };
    // sm_90a kernels read q, k, v through TMA maps.
    let mut maps = Vec::new();
    for p in &info.params {
        if let KernelParam::TensorMap(role) = p {
            let input = up.buffers.iter().find(|(r, _)| r == role);
            let (_, buf) = input.ok_or("a TMA map of a missing input")?;
            let spec = op::tensor_map_spec(info, &d, *role).map_err(e)?;
            maps.push((*role, dev.tensor_map(buf, &spec).map_err(e)?));
        }
    }
    let mut args: Vec<KernelArg<'_>> = Vec::new();
    for p in &info.params {
        args.push(match p {
            KernelParam::TensorMap(role) => maps
                .iter()
                .find(|(r, _)| r == role)
                .map(|(_, m)| (&m.map).into())
                .ok_or("map")?,
            KernelParam::Input(role) => up
                .buffers
                .iter()
                .find(|(r, _)| r == role)
                .map(|(_, b)| b.into())
                .ok_or("input")?,
            KernelParam::DecayRates => rates.as_ref().ok_or("rates")?.into(),
            KernelParam::InitialState => up.h0.as_ref().ok_or("h0")?.into(),
            KernelParam::CuSeqlens => up.cu.as_ref().ok_or("cu")?.into(),
            KernelParam::Output => (&out.o).into(),
            KernelParam::FinalState => out.final_state.as_ref().ok_or("ht")?.into(),
            KernelParam::Scratch => (&scratch).into(),
            KernelParam::SeqLen => (d.seq_len as i32).into(),
            KernelParam::Heads => (d.heads as i32).into(),
            KernelParam::ValueHeads => (d.value_heads as i32).into(),
            KernelParam::Scale => scale.into(),
            other => return Err(format!("{other:?}: not a forward kernel's parameter")),
        });
    }
    let module = dev
        .module(&op::module_key(info, binary), || Ok(binary.to_vec()))
        .map_err(e)?;
    let kernel = dev.kernel(&module, &info.entry).map_err(e)?;
    let config = LaunchConfig {
        grid,
        block: info.block,
        shared_mem_bytes: info.shared_bytes,
    };
    // Warm-up, then enough launches for about half a second.
    let start = Instant::now();
    dev.launch(&kernel, &config, &args).map_err(e)?;
    dev.synchronize().map_err(e)?;
    let once = start.elapsed().as_secs_f64();
    let iters = ((0.5 / once.max(1e-6)) as usize).clamp(3, 200);
    let start = Instant::now();
    for _ in 0..iters {
        dev.launch(&kernel, &config, &args).map_err(e)?;
    }
    dev.synchronize().map_err(e)?;
    Ok(start.elapsed().as_secs_f64() * 1e3 / iters as f64)
}

fn main() -> ExitCode {
    let dirs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        eprintln!("usage: tc_check ARTIFACT_DIR [ARTIFACT_DIR...]");
        return ExitCode::from(2);
    }
    let quick = std::env::var("TC_QUICK").is_ok_and(|v| v == "1");
    let mut log = String::new();
    macro_rules! say {
        ($($t:tt)*) => {{
            let line = format!($($t)*);
            println!("{line}");
            let _ = writeln!(log, "{line}");
        }};
    }
    let folders: Vec<Folder> = match dirs.iter().map(|d| open_folder(d)).collect() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let dev = match Device::new(DeviceKind::Auto) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no device: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info = dev.info();
    let target = match (info.backend, info.compute_capability) {
        (BackendKind::Cuda, Some((major, _))) if major >= 9 => "sm_90",
        (BackendKind::Cuda, _) => "sm_80",
        _ => "spirv",
    };
    say!(
        "device {} ({:?}, {}, cc {:?}) target {target}",
        info.name,
        info.backend,
        info.driver_version,
        info.compute_capability
    );
    for f in &folders {
        say!(
            "folder {} ({} kernels, {})",
            f.label,
            f.manifest.kernels.len(),
            f.manifest.compiler
        );
    }

    let specs = specs();
    // Every spec must be the one the kernels were compiled from.
    for s in &specs {
        let hash = s.hash().hex();
        let known = folders.iter().any(|f| {
            f.manifest
                .kernels
                .iter()
                .any(|k| k.info.spec_name == s.name && k.info.spec_hash == hash)
        });
        let other = folders.iter().any(|f| {
            f.manifest
                .kernels
                .iter()
                .any(|k| k.info.spec_name == s.name && k.info.spec_hash != hash)
        });
        if other || !known {
            say!(
                "WARN {}: hash {hash} not in the manifests (other: {other})",
                s.name
            );
        }
    }

    let cases = cases(quick);
    let dtypes = [ElementType::Bf16, ElementType::F16];
    // References first, in parallel on the host's cores.
    struct Job {
        spec: usize,
        case: usize,
        dtype: ElementType,
        seed: u64,
    }
    let mut jobs = Vec::new();
    for (s, spec) in specs.iter().enumerate() {
        let hash = spec.hash().hex();
        for (c, case) in cases.iter().enumerate() {
            for dtype in dtypes {
                // Only what some folder has a kernel for (references are the slow part).
                let config = case.config(dtype);
                if !folders
                    .iter()
                    .any(|f| f.kernel(&hash, target, &config).is_some())
                {
                    continue;
                }
                jobs.push(Job {
                    spec: s,
                    case: c,
                    dtype,
                    seed: 1000 + (jobs.len() as u64),
                });
            }
        }
    }
    let start = Instant::now();
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let results: Vec<Option<Prepared>> = {
        let mut slots: Vec<Option<Prepared>> = (0..jobs.len()).map(|_| None).collect();
        let chunk = jobs.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (slot_chunk, job_chunk) in slots.chunks_mut(chunk).zip(jobs.chunks(chunk)) {
                let specs = &specs;
                let cases = &cases;
                scope.spawn(move || {
                    for (slot, j) in slot_chunk.iter_mut().zip(job_chunk) {
                        let spec = &specs[j.spec];
                        let case = &cases[j.case];
                        let inp = inputs(spec, case, j.dtype, j.seed);
                        let want = reference_of(spec, case, &inp);
                        *slot = Some((inp, want));
                    }
                });
            }
        });
        slots
    };
    say!(
        "references: {} in {:.1} s on {threads} threads",
        jobs.len(),
        start.elapsed().as_secs_f64()
    );

    let (mut pass, mut fail, mut missing) = (0, 0, 0);
    let mut timings = Vec::new();
    for (j, result) in jobs.iter().zip(&results) {
        let spec = &specs[j.spec];
        let case = &cases[j.case];
        let Some((inp, want)) = result else { continue };
        let want = match want {
            Ok(w) => w,
            Err(err) => {
                say!(
                    "FAIL {} {} {}: reference: {err}",
                    spec.name,
                    j.dtype,
                    case.describe()
                );
                fail += 1;
                continue;
            }
        };
        let up = match upload(&dev, spec, case, j.dtype, inp) {
            Ok(u) => u,
            Err(err) => {
                say!("FAIL {} {}: upload: {err}", spec.name, case.describe());
                fail += 1;
                continue;
            }
        };
        let hash = spec.hash().hex();
        for f in &folders {
            let kernel = match f.kernel(&hash, target, &case.config(j.dtype)) {
                None => {
                    missing += 1;
                    continue;
                }
                Some(Err(err)) => {
                    say!("FAIL {} {}: {err}", f.label, spec.name);
                    fail += 1;
                    continue;
                }
                Some(Ok(k)) => k,
            };
            let smem = kernel.0.shared_bytes;
            match run_case(&dev, spec, case, j.dtype, &kernel, &up, want) {
                Ok((ro, rh, ms)) => {
                    let ok = ro < RATIO && rh < RATIO;
                    if ok {
                        pass += 1;
                    } else {
                        fail += 1;
                    }
                    say!(
                        "{} {:<9} {:<12} {:<4} {:<44} o {ro:.2e} ht {rh:.2e}{}",
                        if ok { "PASS" } else { "FAIL" },
                        f.label,
                        spec.name,
                        j.dtype,
                        case.describe(),
                        ms.map(|m| format!("  {m:.3} ms")).unwrap_or_default()
                    );
                    if let Some(ms) = ms {
                        timings.push((f.label.clone(), spec.name.clone(), j.dtype, ms, smem));
                    }
                }
                Err(err) => {
                    fail += 1;
                    say!(
                        "FAIL {} {} {} {}: {err}",
                        f.label,
                        spec.name,
                        j.dtype,
                        case.describe()
                    );
                }
            }
        }
    }
    if !timings.is_empty() {
        let big = cases
            .iter()
            .find(|c| c.big)
            .map(Case::describe)
            .unwrap_or_default();
        say!("timings at {big} (wall time per launch, back to back):");
        for (label, name, dtype, ms, smem) in &timings {
            say!("  {label:<9} {name:<12} {dtype:<4} {ms:>9.3} ms   ({smem} B shared)");
        }
    }
    say!("{pass} passed, {fail} failed ({missing} folder/case pairs without a kernel)");
    if let Some(out) = std::env::var_os("OUT") {
        let _ = std::fs::write(Path::new(&out).join("tc_check.txt"), &log);
    }
    if fail == 0 && pass > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
