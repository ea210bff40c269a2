//! `linrec run`: a variant on random inputs on the best available device, checked against the
//! f64 reference with fla's criterion. `--device reference` runs only the reference (forward and
//! exact backward) and cross-checks its backward against central finite differences.

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
    let dims = parse_shape(&args.shape)?;
    println!("variant  {} — {}", spec.name, spec.doc);
    println!("         {}", spec.recurrence_text());
    println!("spec     {}", spec.hash().short());
    println!(
        "shape    B={} T={} H={} HV={} K={} V={}",
        dims.batch, dims.seq_len, dims.heads, dims.value_heads, dims.key_dim, dims.value_dim
    );
    let kind = match args.device {
        DeviceArg::Reference => return run_reference(args, &spec, &dims),
        DeviceArg::Auto => DeviceKind::Auto,
        DeviceArg::Cuda => DeviceKind::Cuda,
        DeviceArg::Hip => DeviceKind::Hip,
        DeviceArg::LevelZero => DeviceKind::LevelZero,
        DeviceArg::Opencl => DeviceKind::OpenCl,
    };
    run_device(args, &spec, &dims, kind)
}

/// Bytes of `t` in `dtype`.
fn upload(device: &Device, dtype: ElementType, t: &Tensor) -> Result<DeviceBuffer, Failure> {
    device
        .upload_bytes(op::dtype(dtype), &t.shape, &host::to_bytes(dtype, &t.data))
        .map_err(Failure::check)
}

fn download(device: &Device, dtype: ElementType, b: &DeviceBuffer) -> Result<Tensor, Failure> {
    let bytes = device.download_bytes(b).map_err(Failure::check)?;
    Tensor::from_vec(b.shape(), host::from_bytes(dtype, &bytes))
        .ok_or_else(|| Failure::check("downloaded buffer has the wrong size"))
}

fn run_device(args: &RunArgs, spec: &Spec, dims: &Dims, kind: DeviceKind) -> Result<(), Failure> {
    let dtype = parse_dtype(&args.dtype)?;
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
    if args.varlen && dims.batch != 1 {
        return Err(Failure::usage(format!(
            "--varlen packs sequences into one row: use B = 1 in --shape (got B = {})",
            dims.batch
        )));
    }
    let config = KernelConfig {
        dtype,
        key_dim: dims.key_dim,
        value_dim: dims.value_dim,
        chunk: check_chunk(args.chunk)?,
        initial_state: true,
        final_state: true,
        varlen: args.varlen,
    };
    let provider = kernels::provider(
        kernels::artifacts_dir(args.artifacts.as_deref()).as_deref(),
        args.no_cache,
    )?;
    let (kernel, origin) = kernels::forward(&provider, spec, &target, config)?;
    println!("kernel   {} ({origin})", kernel.info.entry);

    // Inputs in the kernel's precision, so the reference sees exactly what the kernel reads.
    let mut inputs = reference::random_inputs(spec, dims, args.seed);
    let cu: Option<Vec<i64>> = args.varlen.then(|| {
        let t = dims.seq_len as i64;
        vec![0, 0, t / 3, t]
    });
    let n = cu.as_ref().map_or(dims.batch, |c| c.len() - 1);
    let mut rng = Rng::new(args.seed ^ 0x5eed);
    inputs.h0 = Some(Tensor::from_fn(&dims.state_shape(n), || rng.normal()));
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
            host::round_to(elem, &mut t.data);
        }
    }
    if let Some(h0) = inputs.h0.as_mut() {
        host::round_to(ElementType::F32, &mut h0.data);
    }

    let mut buffers = Vec::new();
    for input in &spec.inputs {
        let elem = if matches!(input.role, Role::Query | Role::Key | Role::Value) {
            dtype
        } else {
            ElementType::F32
        };
        let t = inputs
            .get(input.role)
            .ok_or_else(|| Failure::check(format!("no random tensor for `{}`", input.name)))?;
        buffers.push((input.role, upload(&device, elem, t)?));
    }
    let h0 = match &inputs.h0 {
        Some(h0) => Some(upload(&device, ElementType::F32, h0)?),
        None => None,
    };
    let cu_buf = match &cu {
        Some(c) => {
            let c32: Vec<i32> = c.iter().map(|&x| x as i32).collect();
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
    let o = download(&device, dtype, &out.o)?;
    let ht = match &out.final_state {
        Some(b) => Some(download(&device, ElementType::F32, b)?),
        None => None,
    };
    let want = reference::forward(spec, &inputs, &opts).map_err(Failure::usage)?;
    let ro = o.rel_error(&want.o);
    let rh = match (&ht, &want.ht) {
        (Some(a), Some(b)) => a.rel_error(b),
        _ => f64::INFINITY,
    };
    let tol = 0.005;
    println!(
        "time     {:.3} ms per launch (median of 3, incl. launch overhead{})",
        times[times.len() / 2],
        if device.info().is_cpu {
            "; a CPU runtime: not a GPU timing"
        } else {
            ""
        }
    );
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
