//! `linrec run`: a variant on random inputs on the best available device, checked against the
//! f64 reference with fla's criterion. `--device reference` runs only the reference (forward and
//! exact backward) and cross-checks its backward against central finite differences.
//!
//! `--inputs FILE.safetensors` takes the inputs from a file instead (sizes and dtype from its
//! tensors, all checked before a device is opened: see `tensor_file`), `--outputs` writes `o`
//! and `ht`, and `--no-check` skips the reference (slow for large shapes).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use linrec::catalogue;
use linrec::host;
use linrec::reference::{self, Inputs, Rng, Tensor};
use linrec::spec::launch::{ElementType, KernelConfig};
use linrec::spec::{Dims, Role, RunOptions, Spec};
use linrec_runtime::op::{self, ForwardArgs};
use linrec_runtime::{Device, DeviceBuffer, DeviceKind};

use crate::Failure;
use crate::kernels::{self, check_chunk, parse_dtype};
use crate::tensor_file::{self, MAX_HEAD_DIM, Output};

/// Where to run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The first of CUDA, HIP, Level Zero, OpenCL with a usable device.
    Auto,
    /// An NVIDIA GPU through the CUDA driver.
    Cuda,
    /// An AMD GPU through HIP (gfx90a, gfx942, gfx1100).
    Hip,
    /// An Intel GPU through Level Zero (SPIR-V).
    #[value(name = "level-zero", alias = "l0")]
    LevelZero,
    /// An OpenCL device that takes SPIR-V (Intel GPUs, Intel's CPU runtime).
    Opencl,
    /// No kernels: the f64 reference alone, its backward checked by finite differences.
    Reference,
}

#[derive(Args)]
pub struct RunArgs {
    /// A built-in name or alias (see `linrec list`).
    #[arg(default_value = catalogue::DEFAULT_VARIANT)]
    variant: String,
    /// Problem size `B,T,H,K,V` (or `B,T,H,HV,K,V` for GVA).
    #[arg(long, default_value = "2,100,2,16,16")]
    shape: String,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Element type of q, k, v and o: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Chunk length: 16, 32 or 64.
    #[arg(long, default_value_t = 64)]
    chunk: usize,
    /// Pack the batch as varlen sequences (B must be 1): cu_seqlens = [0, 0, T/3, T], an empty
    /// sequence included.
    #[arg(long)]
    varlen: bool,
    /// Load kernels from this artifact folder (written by `linrec compile`) instead of
    /// compiling them; also `LINREC_ARTIFACTS`.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Neither read nor write the disk cache of compiled kernels (`LINREC_CACHE_DIR`, else
    /// ~/.cache/linrec): compile afresh, e.g. to get `LINREC_DUMP_DIR` stage dumps.
    #[arg(long)]
    no_cache: bool,
    /// Read the inputs from a safetensors file: the spec's inputs by name (`linrec show`), and
    /// optionally h0, cu_seqlens (and do, dht, checked but not used yet). Sizes come from the
    /// tensors and the kernel dtype from q, k, v, so --shape, --dtype, --varlen and --seed
    /// do not apply.
    #[arg(
        long,
        value_name = "FILE.safetensors",
        conflicts_with_all = ["shape", "dtype", "varlen", "seed"]
    )]
    inputs: Option<PathBuf>,
    /// Write `o` (the kernel's dtype) and `ht` (f32) to a safetensors file.
    #[arg(long, value_name = "FILE.safetensors", requires = "inputs")]
    outputs: Option<PathBuf>,
    /// Skip the comparison with the f64 reference (slow for large shapes): run and time only.
    #[arg(long)]
    no_check: bool,
}

/// What a device run computes: sizes, kernel dtype, inputs (rounded to what the kernel reads)
/// and varlen offsets, from random numbers or a file.
struct Problem {
    dims: Dims,
    dtype: ElementType,
    inputs: Inputs,
    cu_seqlens: Option<Vec<i64>>,
}

/// Parses `B,T,H,K,V` or `B,T,H,HV,K,V`.
fn parse_shape(s: &str) -> Result<Dims, Failure> {
    let bad = || {
        Failure::usage(format!(
            "--shape `{s}` is not valid: give B,T,H,K,V or B,T,H,HV,K,V as non-negative integers, e.g. 2,100,2,16,16"
        ))
    };
    let parts: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let dims = match parts[..] {
        [b, t, h, k, v] => Dims::new(b, t, h, k, v),
        [b, t, h, hv, k, v] => Dims::new(b, t, h, k, v).with_value_heads(hv),
        _ => return Err(bad()),
    };
    dims.validate()
        .map_err(|e| Failure::usage(format!("--shape: {e}")))?;
    for (name, d) in [("K", dims.key_dim), ("V", dims.value_dim)] {
        if d > MAX_HEAD_DIM {
            return Err(Failure::usage(format!(
                "--shape: head dim {name} = {d} is over the kernels' limit of {MAX_HEAD_DIM}"
            )));
        }
    }
    Ok(dims)
}

fn loss(
    spec: &Spec,
    inputs: &Inputs,
    opts: &RunOptions,
    d_o: &Tensor,
    dht: &Tensor,
) -> Result<f64, Failure> {
    let out = reference::forward(spec, inputs, opts).map_err(Failure::usage)?;
    let dot = |a: &Tensor, b: &Tensor| a.data.iter().zip(&b.data).map(|(x, y)| x * y).sum::<f64>();
    Ok(dot(&out.o, d_o) + out.ht.as_ref().map_or(0.0, |ht| dot(ht, dht)))
}

fn tensor_mut(inputs: &mut Inputs, role: Option<Role>) -> Option<&mut Tensor> {
    match role {
        Some(Role::Query) => Some(&mut inputs.q),
        Some(Role::Key) => Some(&mut inputs.k),
        Some(Role::Value) => Some(&mut inputs.v),
        Some(Role::Gate) => inputs.g.as_mut(),
        Some(Role::Beta) => inputs.beta.as_mut(),
        Some(Role::Bonus) => inputs.u.as_mut(),
        Some(Role::DecayRate) => inputs.decay_rate.as_mut(),
        None => inputs.h0.as_mut(),
    }
}

pub fn run(args: &RunArgs) -> Result<(), Failure> {
    let builtin = catalogue::lookup(&args.variant).map_err(Failure::usage)?;
    let spec = builtin.spec();
    if args.no_check && args.device == DeviceArg::Reference {
        return Err(Failure::usage(
            "--no-check skips the reference, which is all that `--device reference` runs",
        ));
    }
    // The whole input — file or random — is settled before a device is opened, so a bad file
    // fails fast and never reaches a launch.
    let problem = match &args.inputs {
        Some(path) => {
            if let Some(out) = &args.outputs {
                tensor_file::check_writable(out)?;
            }
            let file = tensor_file::read(path, &spec)?;
            println!("inputs   {}: {}", path.display(), file.summary.join(", "));
            Some(Problem {
                dims: file.dims,
                dtype: file.dtype,
                inputs: file.inputs,
                cu_seqlens: file.cu_seqlens,
            })
        }
        None => None,
    };
    let dims = match &problem {
        Some(p) => p.dims,
        None => parse_shape(&args.shape)?,
    };
    println!("variant  {} — {}", spec.name, spec.doc);
    println!("         {}", spec.recurrence_text());
    println!("spec     {}", spec.hash().short());
    println!(
        "shape    B={} T={} H={} HV={} K={} V={}",
        dims.batch, dims.seq_len, dims.heads, dims.value_heads, dims.key_dim, dims.value_dim
    );
    let kind = match args.device {
        DeviceArg::Reference => {
            return match problem {
                Some(p) => run_reference_file(args, &spec, &p),
                None => run_reference(args, &spec, &dims),
            };
        }
        DeviceArg::Auto => DeviceKind::Auto,
        DeviceArg::Cuda => DeviceKind::Cuda,
        DeviceArg::Hip => DeviceKind::Hip,
        DeviceArg::LevelZero => DeviceKind::LevelZero,
        DeviceArg::Opencl => DeviceKind::OpenCl,
    };
    let problem = match problem {
        Some(p) => p,
        None => random_problem(args, &spec, dims)?,
    };
    run_device(args, &spec, &problem, kind)
}

/// fla-style random inputs at `dims`, a random h0, and (`--varlen`) cu_seqlens
/// `[0, 0, T/3, T]`, rounded to what the kernel reads so the reference sees the same values.
fn random_problem(args: &RunArgs, spec: &Spec, dims: Dims) -> Result<Problem, Failure> {
    let dtype = parse_dtype(&args.dtype)?;
    if args.varlen && dims.batch != 1 {
        return Err(Failure::usage(format!(
            "--varlen packs sequences into one row: use B = 1 in --shape (got B = {})",
            dims.batch
        )));
    }
    let mut inputs = reference::random_inputs(spec, &dims, args.seed);
    let cu: Option<Vec<i64>> = args.varlen.then(|| {
        let t = dims.seq_len as i64;
        vec![0, 0, t / 3, t]
    });
    let n = cu.as_ref().map_or(dims.batch, |c| c.len() - 1);
    let mut rng = Rng::new(args.seed ^ 0x5eed);
    inputs.h0 = Some(Tensor::from_fn(&dims.state_shape(n), || rng.normal()));
    for role in Role::ALL {
        if let Some(t) = tensor_mut(&mut inputs, Some(role)) {
            host::round_to(element_of(role, dtype), &mut t.data);
        }
    }
    if let Some(h0) = inputs.h0.as_mut() {
        host::round_to(ElementType::F32, &mut h0.data);
    }
    Ok(Problem {
        dims,
        dtype,
        inputs,
        cu_seqlens: cu,
    })
}

/// The element type the kernel reads for `role`: q, k, v in the kernel's dtype, the rest f32.
fn element_of(role: Role, dtype: ElementType) -> ElementType {
    if matches!(role, Role::Query | Role::Key | Role::Value) {
        dtype
    } else {
        ElementType::F32
    }
}

/// Bytes of `t` in `dtype`.
fn upload(device: &Device, dtype: ElementType, t: &Tensor) -> Result<DeviceBuffer, Failure> {
    device
        .upload_bytes(op::dtype(dtype), &t.shape, &host::to_bytes(dtype, &t.data))
        .map_err(Failure::check)
}

fn run_device(
    args: &RunArgs,
    spec: &Spec,
    problem: &Problem,
    kind: DeviceKind,
) -> Result<(), Failure> {
    let Problem {
        dims,
        dtype,
        inputs,
        cu_seqlens: cu,
    } = problem;
    let dtype = *dtype;
    let device = Device::new(kind).map_err(|e| {
        Failure::usage(format!(
            "{e}\n(`--device reference` runs the f64 reference alone; `bash scripts/setup-opencl.sh` installs a CPU OpenCL runtime)"
        ))
    })?;
    let info = device.info();
    println!(
        "device   {} ({:?}, {})",
        info.name, info.backend, info.vendor
    );
    let target = kernels::target_for(info)?;
    let config = KernelConfig {
        dtype,
        key_dim: dims.key_dim,
        value_dim: dims.value_dim,
        chunk: check_chunk(args.chunk)?,
        initial_state: inputs.h0.is_some(),
        final_state: true,
        varlen: cu.is_some(),
    };
    let provider = kernels::provider(
        kernels::artifacts_dir(args.artifacts.as_deref()).as_deref(),
        args.no_cache,
    )?;
    let (kernel, origin) = kernels::forward(&provider, spec, &target, config)?;
    println!("kernel   {} ({origin})", kernel.info.entry);

    let mut buffers = Vec::new();
    for input in &spec.inputs {
        let t = inputs
            .get(input.role)
            .ok_or_else(|| Failure::check(format!("no tensor for `{}`", input.name)))?;
        buffers.push((
            input.role,
            upload(&device, element_of(input.role, dtype), t)?,
        ));
    }
    let h0 = match &inputs.h0 {
        Some(h0) => Some(upload(&device, ElementType::F32, h0)?),
        None => None,
    };
    let cu_buf = match cu {
        Some(c) => {
            // The kernels read i32 offsets; the file's (i64 allowed) end at T, which fits i32
            // or the runtime refuses T itself.
            let c32: Vec<i32> = c
                .iter()
                .map(|&x| i32::try_from(x))
                .collect::<Result<_, _>>()
                .map_err(|_| Failure::usage("cu_seqlens: offsets must fit i32"))?;
            Some(device.upload(&c32, &[c32.len()]).map_err(Failure::check)?)
        }
        None => None,
    };
    let opts = RunOptions {
        cu_seqlens: cu.clone(),
        output_final_state: true,
        ..Default::default()
    };
    let scale = spec.scale.resolve(dims.key_dim) as f32;
    let refs: Vec<(Role, &DeviceBuffer)> = buffers.iter().map(|(r, b)| (*r, b)).collect();
    let fargs = ForwardArgs {
        inputs: &refs,
        initial_state: h0.as_ref(),
        cu_seqlens: cu_buf.as_ref(),
        scale,
    };
    // First launch loads the module; time the ones after it (informative only: performance
    // claims come from the GPU benchmark harness).
    let out = op::forward(&device, &kernel.info, &kernel.binary, &fargs).map_err(Failure::check)?;
    device.synchronize().map_err(Failure::check)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let again =
            op::forward(&device, &kernel.info, &kernel.binary, &fargs).map_err(Failure::check)?;
        device.synchronize().map_err(Failure::check)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(again);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "time     {:.3} ms per launch (median of 3, incl. launch overhead{})",
        times[times.len() / 2],
        if device.info().is_cpu {
            "; a CPU runtime: not a GPU timing"
        } else {
            ""
        }
    );
    let o_bytes = device.download_bytes(&out.o).map_err(Failure::check)?;
    let ht_bytes = match &out.final_state {
        Some(b) => Some(device.download_bytes(b).map_err(Failure::check)?),
        None => None,
    };
    // Written before the verdict, so a failing run's outputs can be inspected too.
    if let Some(path) = &args.outputs {
        let mut outputs = vec![Output {
            name: "o",
            dtype,
            shape: out.o.shape(),
            bytes: &o_bytes,
        }];
        if let (Some(b), Some(bytes)) = (&out.final_state, &ht_bytes) {
            outputs.push(Output {
                name: "ht",
                dtype: ElementType::F32,
                shape: b.shape(),
                bytes,
            });
        }
        tensor_file::write(path, &outputs, metadata(spec, &target, &info.name))?;
        println!("outputs  {}: o, ht", path.display());
    }
    if args.no_check {
        println!(
            "check    skipped (--no-check): the outputs were not compared with the f64 reference"
        );
        println!("DONE     {} forward on {target} ran", spec.name);
        return Ok(());
    }
    let o = Tensor::from_vec(out.o.shape(), host::from_bytes(dtype, &o_bytes))
        .ok_or_else(|| Failure::check("downloaded o has the wrong size"))?;
    let ht = match (&out.final_state, &ht_bytes) {
        (Some(b), Some(bytes)) => Some(
            Tensor::from_vec(b.shape(), host::from_bytes(ElementType::F32, bytes))
                .ok_or_else(|| Failure::check("downloaded ht has the wrong size"))?,
        ),
        _ => None,
    };
    let want = reference::forward(spec, inputs, &opts).map_err(Failure::usage)?;
    let ro = o.rel_error(&want.o);
    let rh = match (&ht, &want.ht) {
        (Some(a), Some(b)) => a.rel_error(b),
        _ => f64::INFINITY,
    };
    let tol = 0.005;
    println!("check    ‖o − ref‖/‖ref‖  = {ro:.2e}   (< {tol})");
    println!("check    ‖ht − ref‖/‖ref‖ = {rh:.2e}   (< {tol})");
    if ro < tol && rh < tol {
        println!(
            "PASS     {} forward on {} matches the f64 reference",
            spec.name, target
        );
        Ok(())
    } else {
        Err(Failure::check(format!(
            "{} forward on {target} disagrees with the f64 reference: o {ro:.2e}, ht {rh:.2e} (limit {tol})",
            spec.name
        )))
    }
}

/// The header metadata of an `--outputs` file: who wrote it, for what.
fn metadata(spec: &Spec, target: &str, device: &str) -> Vec<(&'static str, String)> {
    vec![
        ("producer", "linrec run".into()),
        ("linrec_variant", spec.name.clone()),
        ("linrec_spec", spec.hash().short().to_string()),
        ("linrec_target", target.into()),
        ("linrec_device", device.into()),
    ]
}

/// `--device reference --inputs FILE`: the f64 reference forward on the file's tensors (no
/// kernel, no finite-difference check); `--outputs` gets `o` in the file's q/k/v dtype and
/// `ht` in f32, like a device run's.
fn run_reference_file(args: &RunArgs, spec: &Spec, problem: &Problem) -> Result<(), Failure> {
    println!("device   f64 CPU reference");
    let opts = RunOptions {
        cu_seqlens: problem.cu_seqlens.clone(),
        output_final_state: true,
        ..Default::default()
    };
    let start = Instant::now();
    let out = reference::forward(spec, &problem.inputs, &opts).map_err(Failure::usage)?;
    println!(
        "forward  {:>9.2} ms   ‖o‖ = {:.6}   ‖ht‖ = {:.6}",
        start.elapsed().as_secs_f64() * 1e3,
        out.o.norm(),
        out.ht.as_ref().map_or(0.0, Tensor::norm)
    );
    if let Some(path) = &args.outputs {
        let o_bytes = host::to_bytes(problem.dtype, &out.o.data);
        let mut outputs = vec![Output {
            name: "o",
            dtype: problem.dtype,
            shape: &out.o.shape,
            bytes: &o_bytes,
        }];
        let ht_bytes = out
            .ht
            .as_ref()
            .map(|ht| (ht, host::to_bytes(ElementType::F32, &ht.data)));
        if let Some((ht, bytes)) = &ht_bytes {
            outputs.push(Output {
                name: "ht",
                dtype: ElementType::F32,
                shape: &ht.shape,
                bytes,
            });
        }
        tensor_file::write(
            path,
            &outputs,
            metadata(spec, "reference", "f64 CPU reference"),
        )?;
        println!("outputs  {}: o, ht", path.display());
    }
    println!(
        "DONE     {} reference forward on the file's inputs",
        spec.name
    );
    Ok(())
}

fn run_reference(args: &RunArgs, spec: &Spec, dims: &Dims) -> Result<(), Failure> {
    let spec = spec.clone();
    let dims = *dims;
    println!("device   f64 CPU reference");

    let mut inputs = reference::random_inputs(&spec, &dims, args.seed);
    let mut rng = Rng::new(args.seed ^ 0x5eed);
    let state = dims.state_shape(dims.batch);
    inputs.h0 = Some(Tensor::from_fn(&state, || rng.normal()));
    let d_o = Tensor::from_fn(&dims.output_shape(), || rng.normal());
    let dht = Tensor::from_fn(&state, || rng.normal());
    let opts = RunOptions {
        output_final_state: true,
        ..Default::default()
    };

    let start = Instant::now();
    let out = reference::forward(&spec, &inputs, &opts).map_err(Failure::usage)?;
    let t_fwd = start.elapsed();
    let start = Instant::now();
    let grads =
        reference::backward(&spec, &inputs, &opts, &d_o, Some(&dht)).map_err(Failure::usage)?;
    let t_bwd = start.elapsed();
    println!(
        "forward  {:>9.2} ms   ‖o‖ = {:.6}   ‖ht‖ = {:.6}",
        t_fwd.as_secs_f64() * 1e3,
        out.o.norm(),
        out.ht.as_ref().map_or(0.0, Tensor::norm)
    );
    println!(
        "backward {:>9.2} ms   (exact reverse sweep)",
        t_bwd.as_secs_f64() * 1e3
    );

    // Spot-check the exact backward against central differences of L = Σ o⊙do + Σ ht⊙dht.
    println!("gradient spot check (central differences, 4 elements per tensor):");
    let mut worst: f64 = 0.0;
    let roles: Vec<(String, Option<Role>)> = spec
        .inputs
        .iter()
        .map(|i| (i.name.clone(), Some(i.role)))
        .chain([("h0".to_string(), None)])
        .collect();
    for (name, role) in roles {
        let analytic = match role {
            Some(r) => grads.get(r),
            None => grads.dh0.as_ref(),
        };
        let Some(analytic) = analytic else { continue };
        let n = analytic.len();
        if n == 0 {
            continue;
        }
        let mut err: f64 = 0.0;
        for _ in 0..4 {
            let idx = (rng.next_u64() % n as u64) as usize;
            let h = 1e-5;
            let mut plus = inputs.clone();
            let mut minus = inputs.clone();
            if let (Some(p), Some(m)) = (tensor_mut(&mut plus, role), tensor_mut(&mut minus, role))
            {
                p.data[idx] += h;
                m.data[idx] -= h;
            }
            let fd = (loss(&spec, &plus, &opts, &d_o, &dht)?
                - loss(&spec, &minus, &opts, &d_o, &dht)?)
                / (2.0 * h);
            let a = analytic.data[idx];
            err = err.max((fd - a).abs() / (1.0 + a.abs()));
        }
        println!("  d{name:<6} max rel. error {err:.2e}");
        worst = worst.max(err);
    }
    if worst < 1e-5 {
        println!("PASS     backward matches finite differences (worst {worst:.2e} < 1e-5)");
        Ok(())
    } else {
        Err(Failure::check(format!(
            "backward disagrees with finite differences: worst relative error {worst:.2e} >= 1e-5"
        )))
    }
}
