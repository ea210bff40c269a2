//! `linrec run`: a variant on random inputs on the best available device, checked against the
//! f64 reference with fla's criterion. `--device reference` runs only the reference (forward and
//! exact backward) and cross-checks its backward against central finite differences.
//!
//! `--backward` also runs the backward kernel on a random `dO` and `dht` (the gradients of `o`
//! and of the final state) and checks every gradient — `dq`, `dk`, `dv`, `dg`, `dbeta`, `dh0` —
//! against the reference's exact backward (`‖out − ref‖/‖ref‖` < 0.005, 0.008 for specs with a
//! β-write, 0.02 for gate and β gradients); with `--device reference` it prints the reference
//! gradients' norms.
//!
//! `--save-chunk-states` (with `--backward`) keeps the chunk states the forward wrote and hands
//! them to the backward, which then skips recomputing them (`ForwardOptions::save_chunk_states`
//! in the library); only split forward kernels write them (`LINREC_FORWARD=split` when
//! compiling), and fused ones with a split-scan over T at the sizes that take it, so with
//! fused ones without one it fails with the library's error before launching.
//!
//! `--inputs FILE.safetensors` takes the inputs (and `do`, `dht`) from a file instead (sizes
//! and dtype from its tensors, all checked before a device is opened: see `tensor_file`),
//! `--outputs` writes `o` and `ht` (and with `--backward` the gradients), and `--no-check`
//! skips the reference (slow for large shapes).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use linrec::catalogue;
use linrec::host;
use linrec::reference::{self, Inputs, Rng, Tensor};
use linrec::spec::launch::{ElementType, KernelConfig};
use linrec::spec::{Dims, Role, RunOptions, Spec, Transition, Write};
use linrec_runtime::op::{self, BackwardArgs, BackwardOutputs, ForwardArgs, role_name};
use linrec_runtime::{DType, Device, DeviceBuffer, DeviceKind};

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
    /// optionally h0, cu_seqlens, and do, dht (used with --backward; random when absent). Sizes
    /// come from the tensors and the kernel dtype from q, k, v, so --shape, --dtype, --varlen
    /// and --seed do not apply.
    #[arg(
        long,
        value_name = "FILE.safetensors",
        conflicts_with_all = ["shape", "dtype", "varlen", "seed"]
    )]
    inputs: Option<PathBuf>,
    /// Write `o` (the kernel's dtype) and `ht` (f32) to a safetensors file; with --backward
    /// also the gradients `d<input>` (dq, dk, dv in the kernel's dtype, dg, dbeta f32) and dh0.
    #[arg(long, value_name = "FILE.safetensors", requires = "inputs")]
    outputs: Option<PathBuf>,
    /// Also run the backward on a random dO and dht (or the file's `do`, `dht`) and check every
    /// gradient against the reference's exact backward (one line per gradient).
    #[arg(long)]
    backward: bool,
    /// With --backward: keep the chunk states the forward wrote and let the backward read them
    /// instead of recomputing them (memory for time). Needs split forward kernels: compile
    /// with LINREC_FORWARD=split (JIT or `linrec compile`); a fused one with a split-scan
    /// over T writes them only at sizes that take it (long sequences on few heads).
    #[arg(long, requires = "backward")]
    save_chunk_states: bool,
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
    /// With --backward: `dO` (rounded to the kernel's dtype) and `dht` (f32).
    grads_in: Option<GradsIn>,
}

/// The gradients flowing into a backward: `dO [B, T, HV, V]` and `dht [N, HV, K, V]`.
struct GradsIn {
    d_o: Tensor,
    dht: Tensor,
}

impl GradsIn {
    /// The file's `do` and `dht` where given, random normals (from `seed`) where not, rounded
    /// to what the kernel reads.
    fn new(
        dims: &Dims,
        sequences: usize,
        dtype: ElementType,
        given: (Option<Tensor>, Option<Tensor>),
        seed: u64,
    ) -> GradsIn {
        let mut rng = Rng::new(seed ^ 0xd0d0);
        let mut d_o = given
            .0
            .unwrap_or_else(|| Tensor::from_fn(&dims.output_shape(), || rng.normal()));
        let mut dht = given
            .1
            .unwrap_or_else(|| Tensor::from_fn(&dims.state_shape(sequences), || rng.normal()));
        host::round_to(dtype, &mut d_o.data);
        host::round_to(ElementType::F32, &mut dht.data);
        GradsIn { d_o, dht }
    }
}

/// fla's bound on `‖out − ref‖/‖ref‖` for the gradient of the input of `role` (`None`: dh0):
/// 0.02 for a gate's and β's, 0.005 for the rest — 0.008 for specs with a β-write (the delta
/// family), whose gradients go through more rounding.
fn grad_tolerance(spec: &Spec, role: Option<Role>) -> f64 {
    match role {
        Some(Role::Gate | Role::Beta) => 0.02,
        _ if spec.write == Write::BetaOuter
            || matches!(spec.transition, Transition::Delta { .. }) =>
        {
            0.008
        }
        _ => 0.005,
    }
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
            let file = tensor_file::read(path, &spec, args.backward)?;
            println!("inputs   {}: {}", path.display(), file.summary.join(", "));
            let grads_in = args.backward.then(|| {
                let n = file
                    .cu_seqlens
                    .as_ref()
                    .map_or(file.dims.batch, |c| c.len() - 1);
                GradsIn::new(&file.dims, n, file.dtype, (file.d_o, file.dht), args.seed)
            });
            Some(Problem {
                dims: file.dims,
                dtype: file.dtype,
                inputs: file.inputs,
                cu_seqlens: file.cu_seqlens,
                grads_in,
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
    let grads_in = args
        .backward
        .then(|| GradsIn::new(&dims, n, dtype, (None, None), args.seed));
    Ok(Problem {
        dims,
        dtype,
        inputs,
        cu_seqlens: cu,
        grads_in,
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
        grads_in,
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
    if args.save_chunk_states {
        // The library's error (option `save_chunk_states`), before anything is uploaded.
        linrec::ops::check_save_chunk_states(spec, &kernel.info).map_err(Failure::usage)?;
    }

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
    let chunk_states = match (args.save_chunk_states, out.chunk_states.as_ref()) {
        (true, Some(states)) => {
            let bytes = states.shape().iter().product::<usize>() * states.dtype().size_bytes();
            println!(
                "states   saved by the forward for the backward: {} {:?} ({:.2} MB)",
                states.dtype(),
                states.shape(),
                bytes as f64 / 1e6
            );
            Some(states)
        }
        // A fused forward with a split-scan route wrote none at these sizes (the route is for
        // long sequences with few heads): not an error, the backward recomputes them.
        (true, None) => {
            println!(
                "states   none to save: the forward kernel `{}` ran fused at these sizes; the \
                 backward recomputes them",
                kernel.info.entry
            );
            None
        }
        (false, _) => None,
    };
    let grads = match grads_in {
        Some(g) => {
            let fwd = Launch {
                device: &device,
                inputs: &refs,
                h0: h0.as_ref(),
                cu: cu_buf.as_ref(),
                scale,
                chunk_states,
            };
            Some(run_backward(&fwd, spec, &provider, &target, config, g)?)
        }
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
        for g in grads.iter().flatten() {
            outputs.push(Output {
                name: &g.name,
                dtype: g.dtype,
                shape: &g.shape,
                bytes: &g.bytes,
            });
        }
        tensor_file::write(path, &outputs, metadata(spec, &target, &info.name))?;
        let names: Vec<&str> = outputs.iter().map(|o| o.name).collect();
        println!("outputs  {}: {}", path.display(), names.join(", "));
    }
    if args.no_check {
        println!(
            "check    skipped (--no-check): the outputs were not compared with the f64 reference"
        );
        let what = if grads.is_some() {
            "forward + backward"
        } else {
            "forward"
        };
        println!("DONE     {} {what} on {target} ran", spec.name);
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
    } else {
        return Err(Failure::check(format!(
            "{} forward on {target} disagrees with the f64 reference: o {ro:.2e}, ht {rh:.2e} (limit {tol})",
            spec.name
        )));
    }
    match (&grads, grads_in) {
        (Some(grads), Some(g)) => check_backward(spec, &target, inputs, &opts, g, grads),
        _ => Ok(()),
    }
}

/// What the forward launched with, which the backward reads again.
struct Launch<'a> {
    device: &'a Device,
    inputs: &'a [(Role, &'a DeviceBuffer)],
    h0: Option<&'a DeviceBuffer>,
    cu: Option<&'a DeviceBuffer>,
    scale: f32,
    /// The chunk states the forward wrote, with --save-chunk-states.
    chunk_states: Option<&'a DeviceBuffer>,
}

/// One gradient the backward kernel wrote, downloaded: `dq`, `dbeta`, ... or `dh0`.
struct DeviceGrad {
    name: String,
    /// The input's role; `None` for dh0.
    role: Option<Role>,
    dtype: ElementType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// The element type of a downloaded gradient.
fn element_type(d: DType) -> Result<ElementType, Failure> {
    match d {
        DType::BF16 => Ok(ElementType::Bf16),
        DType::F16 => Ok(ElementType::F16),
        DType::F32 => Ok(ElementType::F32),
        other => Err(Failure::check(format!(
            "the backward returned a {other} gradient: expected bf16, f16 or f32"
        ))),
    }
}

/// Fetches the backward kernel of the forward's `config`, uploads `dO` and `dht`, launches it
/// (timing three relaunches like the forward's) and downloads every gradient, named after
/// the spec's inputs.
fn run_backward(
    fwd: &Launch<'_>,
    spec: &Spec,
    provider: &linrec_runtime::kernels::Kernels,
    target: &str,
    config: KernelConfig,
    g: &GradsIn,
) -> Result<Vec<DeviceGrad>, Failure> {
    let device = fwd.device;
    let (kernel, origin) = kernels::backward(provider, spec, target, config)?;
    println!("kernel   {} ({origin})", kernel.info.entry);
    let d_o = upload(device, config.dtype, &g.d_o)?;
    let dht = upload(device, ElementType::F32, &g.dht)?;
    let bargs = BackwardArgs {
        inputs: fwd.inputs,
        initial_state: fwd.h0,
        cu_seqlens: fwd.cu,
        scale: fwd.scale,
        d_o: &d_o,
        dht: config.final_state.then_some(&dht),
        chunk_states: fwd.chunk_states,
    };
    let launch = || -> Result<BackwardOutputs, Failure> {
        op::backward(device, &kernel.info, &kernel.binary, &bargs).map_err(Failure::check)
    };
    let out = launch()?;
    device.synchronize().map_err(Failure::check)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let again = launch()?;
        device.synchronize().map_err(Failure::check)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(again);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "time     {:.3} ms per backward launch (median of 3, incl. launch overhead{})",
        times[times.len() / 2],
        if device.info().is_cpu {
            "; a CPU runtime: not a GPU timing"
        } else {
            ""
        }
    );
    let mut grads = Vec::new();
    let named = spec
        .inputs
        .iter()
        .filter_map(|i| Some((format!("d{}", i.name), Some(i.role), out.grad(i.role)?)))
        .chain(out.dh0.as_ref().map(|b| ("dh0".to_owned(), None, b)));
    for (name, role, buf) in named {
        grads.push(DeviceGrad {
            name,
            role,
            dtype: element_type(buf.dtype())?,
            shape: buf.shape().to_vec(),
            bytes: device.download_bytes(buf).map_err(Failure::check)?,
        });
    }
    // A gradient the runtime returns for a role the spec has not declared would be a bug.
    for (role, _) in &out.grads {
        if spec.input(*role).is_none() {
            return Err(Failure::check(format!(
                "the backward returned d{} for a {role} input `{}` does not declare",
                role_name(*role),
                spec.name
            )));
        }
    }
    Ok(grads)
}

/// Every gradient against the reference's exact backward, one line each; fails naming every
/// gradient over its bound (or NaN, or missing).
fn check_backward(
    spec: &Spec,
    target: &str,
    inputs: &Inputs,
    opts: &RunOptions,
    g: &GradsIn,
    grads: &[DeviceGrad],
) -> Result<(), Failure> {
    let want =
        reference::backward(spec, inputs, opts, &g.d_o, Some(&g.dht)).map_err(Failure::usage)?;
    let expected = spec
        .inputs
        .iter()
        .map(|i| (format!("d{}", i.name), Some(i.role), want.get(i.role)))
        .chain([("dh0".to_owned(), None, want.dh0.as_ref())]);
    let mut bad = Vec::new();
    let mut checked = 0;
    for (name, role, reference) in expected {
        let Some(reference) = reference else { continue };
        let Some(got) = grads.iter().find(|d| d.role == role) else {
            if role == Some(Role::DecayRate) {
                println!(
                    "grad     {name:<7} not computed on devices (a decay-rate input); the reference's ‖{name}‖ = {:.6}",
                    reference.norm()
                );
            } else {
                println!("grad     {name:<7} MISSING: the backward wrote no {name}");
                bad.push(format!("{name} missing"));
            }
            continue;
        };
        let tol = grad_tolerance(spec, role);
        let values = host::from_bytes(got.dtype, &got.bytes);
        let nan = values.iter().any(|x| x.is_nan());
        let ratio = Tensor::from_vec(&got.shape, values)
            .ok_or_else(|| Failure::check(format!("downloaded {name} has the wrong size")))?
            .rel_error(reference);
        let shown = if nan {
            "NaN".to_owned()
        } else {
            format!("{ratio:.2e}")
        };
        println!(
            "grad     {:<24} = {shown}   (< {tol})",
            format!("‖{name} − ref‖/‖ref‖")
        );
        checked += 1;
        if nan || ratio.is_nan() || ratio >= tol {
            bad.push(format!("{name} {shown} (limit {tol})"));
        }
    }
    if bad.is_empty() {
        println!(
            "PASS     {} backward on {target} matches the f64 reference ({checked} gradients)",
            spec.name
        );
        Ok(())
    } else {
        Err(Failure::check(format!(
            "{} backward on {target} disagrees with the f64 reference: {}",
            spec.name,
            bad.join(", ")
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
    let grads = match &problem.grads_in {
        Some(g) => {
            let start = Instant::now();
            let grads = reference::backward(spec, &problem.inputs, &opts, &g.d_o, Some(&g.dht))
                .map_err(Failure::usage)?;
            println!(
                "backward {:>9.2} ms   (exact reverse sweep)",
                start.elapsed().as_secs_f64() * 1e3
            );
            Some(grads)
        }
        None => None,
    };
    let named = grads
        .as_ref()
        .map(|g| reference_grads(spec, g))
        .unwrap_or_default();
    print_norms(&named);
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
        // The gradients as a device run writes them: dq, dk, dv in the file's dtype, the rest
        // f32.
        let grad_bytes: Vec<(&str, ElementType, &Tensor, Vec<u8>)> = named
            .iter()
            .map(|(name, role, t)| {
                let elem = role.map_or(ElementType::F32, |r| element_of(r, problem.dtype));
                (name.as_str(), elem, *t, host::to_bytes(elem, &t.data))
            })
            .collect();
        for (name, dtype, t, bytes) in &grad_bytes {
            outputs.push(Output {
                name,
                dtype: *dtype,
                shape: &t.shape,
                bytes,
            });
        }
        tensor_file::write(
            path,
            &outputs,
            metadata(spec, "reference", "f64 CPU reference"),
        )?;
        let names: Vec<&str> = outputs.iter().map(|o| o.name).collect();
        println!("outputs  {}: {}", path.display(), names.join(", "));
    }
    let what = if grads.is_some() {
        "forward + backward"
    } else {
        "forward"
    };
    println!(
        "DONE     {} reference {what} on the file's inputs",
        spec.name
    );
    Ok(())
}

/// The reference's gradients named as a device run names them (`dq`, `dbeta`, ..., `dh0`),
/// with the input's role (`None` for dh0), in the spec's input order.
fn reference_grads<'g>(
    spec: &Spec,
    grads: &'g reference::Gradients,
) -> Vec<(String, Option<Role>, &'g Tensor)> {
    spec.inputs
        .iter()
        .filter_map(|i| Some((format!("d{}", i.name), Some(i.role), grads.get(i.role)?)))
        .chain(grads.dh0.as_ref().map(|t| ("dh0".to_owned(), None, t)))
        .collect()
}

/// One `grad` line per reference gradient: its norm.
fn print_norms(named: &[(String, Option<Role>, &Tensor)]) {
    for (name, _, t) in named {
        println!(
            "grad     {:<8} = {:.6}   (reference)",
            format!("‖{name}‖"),
            t.norm()
        );
    }
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
    if args.backward {
        print_norms(&reference_grads(&spec, &grads));
    }

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
