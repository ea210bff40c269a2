//! `linrec bench`: forward (and, with `--backward`, forward + backward) timing of linrec's
//! kernels on a device (DESIGN §9).
//!
//! Inputs are allocated once (random values of the kernel's dtype), the kernel is launched
//! `--warmup` times, then `--iters` launches are timed one by one and the median (with p10
//! and p90) reported. Every launch writes the same output buffers (no allocation, no poisoning
//! in the timed region: `op::forward_into`). Every kernel is fetched before anything is timed,
//! so a missing one fails the run at once.
//!
//! **Forward + backward** (`--backward`): the backward kernel of the forward's config (same
//! call options: it reads h0 and writes dh0 under `--state`, and gets a zero dht there) from
//! the same provider, a random dO in the kernel's dtype, one `op::backward_workspace`; then
//! each timed iteration is `op::forward_into` followed by `op::backward_into` between one
//! timer pair. A split forward's chunk states go to the backward (saved, as a training step
//! keeps them: the backward skips recomputing them); a fused forward has none and the backward
//! recomputes them (JSON `bwd_chunk_states`: `saved` / `recomputed`). The backward alone is estimated as the difference of the medians (fwd+bwd −
//! fwd), so it includes nothing the pair does not.
//!
//! **Budget** (`--budget-s`): a measurement starts only while the run's time lasts, and only
//! if `warmup + iters` calls fit in what is left, judged by one call timed (wall clock) after a
//! first; what does not is printed and written as skipped (`skipped`, or `fwd_bwd_skipped` for
//! the pair alone). The JSON is rewritten after every row (`complete`: false until the end), so
//! a device call cut short keeps what was measured.
//!
//! **Label** (`--label`, default `linrec`): names the kernel set in the JSON (top level and
//! every row), so runs over different artifact folders — e.g. the fused forward and the split
//! one, `LINREC_FORWARD=split linrec compile ...` — can be merged (scripts/bench-merge.py).
//!
//! **Timer.** On CUDA each launch sits between two `CUevent`s recorded on the stream
//! (`cuEventElapsedTime`); all launches are enqueued back to back and read after one
//! synchronize, so host overhead between launches is hidden as long as the GPU is busy. On
//! backends without a device timer (OpenCL, Level Zero, HIP here) each launch is timed with
//! the wall clock between two synchronizes — launch overhead included — and on a CPU runtime
//! the result is labelled as not a GPU timing.
//!
//! **Bytes** (the HBM floor): every input read once and every output written once: q, k
//! `[B,T,H,K]` and v `[B,T,HV,V]` in the dtype, gates `[B,T,HV]` f32 where the variant has
//! them, o `[B,T,HV,V]` in the dtype, h0 / ht `[N,HV,K,V]` f32 where used. The floor is
//! bytes / bandwidth, with the bandwidth a device-to-device copy measured in the same run
//! (read + written bytes over the copy's time; CUDA `cuMemcpyDtoDAsync` of 1 GiB) — or, where
//! the backend has no copy, a fill's write bandwidth (labelled).
//!
//! **Flops**: the chunkwise algorithm's matmuls, per (sequence, value head) and chunk of C
//! rows (C = the chunk length; the last chunk counted full): 2·C·C·K (Q·Kᵀ), 2·C·C·V (A·V),
//! 2·C·K·V (Q·h) and 2·C·K·V (Kᵀ·V), so `B · HV · ⌈T/C⌉ · (2C²(K+V) + 4CKV)`. Elementwise
//! work (gates, masks, scale) is not counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use linrec::catalogue;
use linrec::host;
use linrec::reference::Rng;
use linrec::spec::launch::{ElementType, KernelConfig};
use linrec::spec::{Dims, Role, Spec};
use linrec_runtime::kernels::KernelError;
use linrec_runtime::op::{self, BackwardArgs, ForwardArgs};
use linrec_runtime::{DType, Device, DeviceBuffer, DeviceKind, Kernel, KernelRequest, Kernels};
use serde_json::json;

use crate::Failure;
use crate::kernels::{self, check_chunk, parse_dtype};
use crate::run::DeviceArg;

/// DESIGN §9's shapes `(B, T, H, D)`, K = V = D; the two anchors first, so that a
/// time-budgeted run (`--budget-s`) always reaches them.
pub const FLA_SHAPES: [(usize, usize, usize, usize); 8] = [
    (8, 2048, 16, 128),
    (1, 32768, 16, 128),
    (8, 1024, 8, 64),
    (4, 2048, 16, 128),
    (1, 8192, 96, 128),
    (2, 16384, 16, 128),
    (4, 4096, 64, 128),
    (8, 2048, 32, 256),
];

/// The variants benchmarked when none is named.
pub const DEFAULT_VARIANTS: [&str; 3] = ["linear_attn", "retention", "simple_gla"];

#[derive(Args)]
pub struct BenchArgs {
    /// Built-in names or aliases (default: linear_attn retention simple_gla).
    variants: Vec<String>,
    /// `fla` (DESIGN §9's eight shapes) or `B,T,H,D[;B,T,H,D...]` (K = V = D).
    #[arg(long, default_value = "fla")]
    shapes: String,
    /// Element type of q, k, v and o: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Chunk length: 16, 32 or 64.
    #[arg(long, default_value_t = 64)]
    chunk: usize,
    /// Untimed launches before timing.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Timed launches (at least 100); the median is reported.
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// Also pass a random h0 and write the final state (fla's default is neither).
    #[arg(long)]
    state: bool,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Load kernels from this artifact folder (written by `linrec compile`); also
    /// `LINREC_ARTIFACTS`.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also time forward + backward (the backward kernel of the same config, a random dO):
    /// fwd+bwd ms and the backward's estimate fwd+bwd − fwd. An artifact folder must hold both
    /// (`linrec compile ... --direction both`).
    #[arg(long)]
    backward: bool,
    /// The name of this kernel set in the JSON, e.g. `linrec-split` for kernels compiled with
    /// LINREC_FORWARD=split, so runs over different artifact folders can be merged.
    #[arg(long, default_value = "linrec")]
    label: String,
    /// Start nothing after this many seconds, nor a measurement whose launches would not fit
    /// in the time left (judged by one call, timed after a first): what is left is printed and
    /// written to the JSON as skipped.
    #[arg(long, value_name = "SECONDS")]
    budget_s: Option<f64>,
}

/// Parses `fla` or `B,T,H,D[;...]` into dims with K = V = D.
pub fn parse_shapes(s: &str) -> Result<Vec<Dims>, Failure> {
    if s.trim() == "fla" {
        return Ok(FLA_SHAPES
            .iter()
            .map(|&(b, t, h, d)| Dims::new(b, t, h, d, d))
            .collect());
    }
    let bad = |part: &str| {
        Failure::usage(format!(
            "--shapes: `{part}` is not B,T,H,D (positive integers); give `fla` or e.g. `8,2048,16,128;1,64,1,16`"
        ))
    };
    s.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let n: Vec<usize> = part
                .split(',')
                .map(|x| x.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad(part))?;
            match n[..] {
                [b, t, h, d] if b > 0 && t > 0 && h > 0 && d > 0 && d <= 256 => {
                    Ok(Dims::new(b, t, h, d, d))
                }
                _ => Err(bad(part)),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| if v.is_empty() { Err(bad(s)) } else { Ok(v) })
}

/// Matmul flops of the chunkwise forward (see the module docs):
/// `B · HV · ⌈T/C⌉ · (2C²(K+V) + 4CKV)`.
pub fn chunk_flops(dims: &Dims, chunk: usize) -> f64 {
    let (c, k, v) = (chunk as f64, dims.key_dim as f64, dims.value_dim as f64);
    let chunks = dims.seq_len.div_ceil(chunk) as f64;
    let per_chunk = 2.0 * c * c * k + 2.0 * c * c * v + 2.0 * c * k * v + 2.0 * c * k * v;
    dims.batch as f64 * dims.value_heads as f64 * chunks * per_chunk
}

/// Bytes read and written once (see the module docs): the spec's inputs, o, and h0 / ht
/// when `state`.
pub fn traffic_bytes(spec: &Spec, dims: &Dims, dtype: ElementType, state: bool) -> u64 {
    let mut bytes = 0u64;
    for input in &spec.inputs {
        let n: usize = dims.input_shape(input.role, &spec.decay).iter().product();
        bytes += (n * element_of(input.role, dtype).size()) as u64;
    }
    let o: usize = dims.output_shape().iter().product();
    bytes += (o * dtype.size()) as u64;
    if state {
        let s: usize = dims.state_shape(dims.batch).iter().product();
        bytes += 2 * (s * 4) as u64;
    }
    bytes
}

/// The element type the kernel reads for `role`: q, k, v in the kernel's dtype, the rest f32.
fn element_of(role: Role, dtype: ElementType) -> ElementType {
    if matches!(role, Role::Query | Role::Key | Role::Value) {
        dtype
    } else {
        ElementType::F32
    }
}

/// Median, p10 and p90 of `times` (sorted in place).
pub fn percentiles(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.1), at(0.9))
}

/// A device buffer of `shape` filled with random values for `role` (a 1 Mi-element random
/// block repeated: the values don't change the timing, and the host stays fast at 10⁸ elements).
fn random_buffer(
    device: &Device,
    role: Option<Role>,
    dtype: ElementType,
    shape: &[usize],
    rng: &mut Rng,
) -> Result<DeviceBuffer, Failure> {
    let n: usize = shape.iter().product();
    let block: Vec<f64> = (0..n.min(1 << 20))
        .map(|_| {
            let x = rng.normal();
            match role {
                // log-sigmoid gates, as fla's benchmarks and `reference::random_inputs`.
                Some(Role::Gate) | Some(Role::DecayRate) => -(1.0 + (-x).exp()).ln(),
                Some(Role::Beta) => 1.0 / (1.0 + (-x).exp()),
                _ => x,
            }
        })
        .collect();
    let block = host::to_bytes(dtype, &block);
    let mut bytes = Vec::with_capacity(n * dtype.size());
    while bytes.len() < n * dtype.size() {
        let rest = n * dtype.size() - bytes.len();
        bytes.extend_from_slice(&block[..rest.min(block.len())]);
    }
    device
        .upload_bytes(op::dtype(dtype), shape, &bytes)
        .map_err(Failure::check)
}

/// The timer a run used.
#[derive(Clone, Copy)]
enum Timer {
    DeviceEvents,
    WallClock,
}

/// Times `iters` calls of `launch` after `warmup` untimed ones; milliseconds per call.
fn time_launches(
    device: &Device,
    warmup: usize,
    iters: usize,
    launch: &mut dyn FnMut() -> Result<(), Failure>,
) -> Result<(Vec<f64>, Timer), Failure> {
    for _ in 0..warmup {
        launch()?;
    }
    device.synchronize().map_err(Failure::check)?;
    let probe = device.record_timer().map_err(Failure::check)?;
    if probe.is_some() {
        let mut events = Vec::with_capacity(iters);
        for _ in 0..iters {
            let start = device.record_timer().map_err(Failure::check)?;
            launch()?;
            let end = device.record_timer().map_err(Failure::check)?;
            if let (Some(a), Some(b)) = (start, end) {
                events.push((a, b));
            }
        }
        device.synchronize().map_err(Failure::check)?;
        let times = events
            .iter()
            .map(|(a, b)| device.timer_elapsed_ms(a, b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Failure::check)?;
        Ok((times, Timer::DeviceEvents))
    } else {
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            device.synchronize().map_err(Failure::check)?;
            let t = Instant::now();
            launch()?;
            device.synchronize().map_err(Failure::check)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok((times, Timer::WallClock))
    }
}

/// Measured bandwidth in GB/s (10⁹ B/s) and how: a device copy (read + write bytes) or, where
/// the backend has none, a fill (written bytes).
fn measure_bandwidth(device: &Device) -> Result<(f64, &'static str), Failure> {
    let bytes: usize = if device.info().is_cpu {
        64 << 20
    } else {
        1 << 30
    };
    let src = device
        .alloc(DType::F32, &[bytes / 4])
        .map_err(Failure::check)?;
    let dst = device
        .alloc(DType::F32, &[bytes / 4])
        .map_err(Failure::check)?;
    device
        .fill(&src, linrec_runtime::FillPattern::U32(1))
        .map_err(Failure::check)?;
    let copies = device
        .copy_bytes(&dst, &src, bytes)
        .map_err(Failure::check)?;
    let (mut times, _) = if copies {
        time_launches(device, 3, 20, &mut || {
            device
                .copy_bytes(&dst, &src, bytes)
                .map(|_| ())
                .map_err(Failure::check)
        })?
    } else {
        time_launches(device, 3, 20, &mut || {
            device
                .fill(&dst, linrec_runtime::FillPattern::U32(2))
                .map_err(Failure::check)
        })?
    };
    let (ms, _, _) = percentiles(&mut times);
    let moved = if copies { 2 * bytes } else { bytes } as f64;
    Ok((
        moved / (ms * 1e-3) / 1e9,
        if copies {
            "device copy, read + write"
        } else {
            "fill, write only"
        },
    ))
}

/// The `linrec compile` command that writes the forward and the backward kernel of `request`'s
/// config into one folder: the runtime's [`linrec_runtime::kernels::KernelKey::compile_command`]
/// with `--direction both`.
pub fn compile_both_command(request: &KernelRequest<'_>, out: &str) -> String {
    let command = request.key().compile_command(out);
    let out_arg = format!(" --out {out}");
    let base = command
        .replace(" --direction backward", "")
        .replace(" --direction forward", "");
    match base.strip_suffix(&out_arg) {
        Some(head) => format!("{head} --direction both{out_arg}"),
        None => format!("{base} --direction both"),
    }
}

/// The kernel of `request` from `provider`. With `both` (a `--backward` run) a missing kernel's
/// hint names the command that writes forward and backward kernels into one folder.
fn fetch_kernel(
    provider: &Kernels,
    request: &KernelRequest<'_>,
    both: bool,
) -> Result<Arc<Kernel>, Failure> {
    match provider.get(request) {
        Ok(loaded) => Ok(loaded.kernel),
        Err(KernelError::Missing { key, searched, .. }) if both => Err(Failure::usage(format!(
            "no {key}:{}\n`linrec bench --backward` launches the forward and the backward kernel of each \
             config from one place; build both ahead of time with\n    {}\n(DIR a new folder: \
             `linrec compile` replaces an existing manifest) and pass --artifacts DIR{}",
            searched
                .iter()
                .map(|s| format!("\n  {s}"))
                .collect::<String>(),
            compile_both_command(request, "DIR"),
            if cfg!(feature = "jit") {
                ""
            } else {
                ", or build linrec with the `jit` feature to compile them in process"
            }
        ))),
        Err(e) => Err(Failure::usage(e)),
    }
}

/// The label of `--label`: not empty, no whitespace or control characters (it names a column).
fn check_label(label: &str) -> Result<&str, Failure> {
    if label.is_empty() || label.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Failure::usage(format!(
            "--label `{}`: give a non-empty name without spaces, e.g. `linrec-split`",
            label.escape_debug()
        )));
    }
    Ok(label)
}

pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    if args.iters < 100 {
        return Err(Failure::usage(format!(
            "--iters {} is under 100: the protocol (DESIGN §9) takes the median of at least 100 runs",
            args.iters
        )));
    }
    let dtype = parse_dtype(&args.dtype)?;
    let chunk = check_chunk(args.chunk)?;
    let label = check_label(&args.label)?;
    let budget = Budget {
        start: Instant::now(),
        seconds: args.budget_s,
    };
    if let Some(s) = args.budget_s.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Failure::usage(format!(
            "--budget-s {s}: give a positive number of seconds"
        )));
    }
    let shapes = parse_shapes(&args.shapes)?;
    let names: Vec<String> = if args.variants.is_empty() {
        DEFAULT_VARIANTS.iter().map(|s| s.to_string()).collect()
    } else {
        args.variants.clone()
    };
    let specs = names
        .iter()
        .map(|n| {
            catalogue::lookup(n)
                .map(|b| b.spec())
                .map_err(Failure::usage)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let kind = match args.device {
        DeviceArg::Reference => {
            return Err(Failure::usage(
                "`linrec bench` times kernels on a device: --device reference has none",
            ));
        }
        DeviceArg::Auto => DeviceKind::Auto,
        DeviceArg::Cuda => DeviceKind::Cuda,
        DeviceArg::Hip => DeviceKind::Hip,
        DeviceArg::LevelZero => DeviceKind::LevelZero,
        DeviceArg::Opencl => DeviceKind::OpenCl,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, b"")
            .map_err(|e| Failure::usage(format!("--json {}: {e}", path.display())))?;
    }
    let device = Device::new(kind).map_err(Failure::usage)?;
    let info = device.info().clone();
    let target = kernels::target_for(&info)?;
    let provider = kernels::provider(
        kernels::artifacts_dir(args.artifacts.as_deref()).as_deref(),
        false,
    )?;
    // Every kernel before anything is timed: a missing one fails the run at once.
    let config_of = |dims: &Dims| KernelConfig {
        dtype,
        key_dim: dims.key_dim,
        value_dim: dims.value_dim,
        chunk,
        initial_state: args.state,
        final_state: args.state,
        varlen: false,
    };
    let mut fetched = Vec::with_capacity(shapes.len() * specs.len());
    for dims in &shapes {
        for spec in &specs {
            // The backward kernel's config is the forward's.
            let config = config_of(dims);
            let forward = fetch_kernel(
                &provider,
                &KernelRequest::forward(spec, &target, config),
                args.backward,
            )?;
            let backward = if args.backward {
                Some(fetch_kernel(
                    &provider,
                    &KernelRequest::backward(spec, &target, config),
                    true,
                )?)
            } else {
                None
            };
            fetched.push((forward, backward));
        }
    }
    let (bandwidth, bw_how) = measure_bandwidth(&device)?;
    let not_gpu = info.is_cpu;
    println!(
        "device   {} ({:?}, {}), target {target}{}",
        info.name,
        info.backend,
        info.vendor,
        if not_gpu {
            " — a CPU runtime: NOT a GPU timing"
        } else {
            ""
        }
    );
    println!("memory   {bandwidth:.0} GB/s measured ({bw_how}); HBM floor = bytes / that");
    let mut rows = Vec::new();
    let mut timer_used = Timer::WallClock;
    const FWD_BWD_HOW: &str = "forward then backward (kernel of the same config, random dO) \
                               between one timer pair, the chunk states saved by a split \
                               forward or recomputed by the backward; bwd estimate = fwd+bwd - \
                               fwd (medians)";
    let timer_text = |timer: Timer| match timer {
        Timer::DeviceEvents => "device events (CUDA cuEventElapsedTime), launches back to back",
        Timer::WallClock => "wall clock between synchronizes (launch overhead included)",
    };
    // The JSON is rewritten after every row, so a run cut short keeps what it measured
    // (`complete`: false until the end).
    let write_json = |rows: &[serde_json::Value], timer: Timer, complete: bool| {
        let Some(path) = &args.json else {
            return Ok(());
        };
        let doc = json!({
            "tool": "linrec bench",
            "label": label,
            "backward": args.backward,
            "fwd_bwd_how": if args.backward { Some(FWD_BWD_HOW) } else { None },
            "complete": complete,
            "budget_s": args.budget_s,
            "linrec_version": env!("CARGO_PKG_VERSION"),
            "device": info.name,
            "backend": format!("{:?}", info.backend),
            "target": target,
            "gpu_timing": !not_gpu,
            "timer": timer_text(timer),
            "dtype": args.dtype,
            "chunk": chunk,
            "state": args.state,
            "warmup": args.warmup,
            "iters": args.iters,
            "bandwidth_gb_per_s": bandwidth,
            "bandwidth_how": bw_how,
            "flops_formula": "B*HV*ceil(T/C)*(2*C*C*K + 2*C*C*V + 2*C*K*V + 2*C*K*V)",
            "bytes_formula": "q,k,v (dtype) + gates f32 + o (dtype) + h0,ht f32 if --state",
            "results": rows,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(Failure::check)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Failure::usage(format!("--json {}: {e}", path.display())))
    };
    let header = format!(
        "{:<12} {:<20} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7}",
        "variant", "B,T,H,D", "ms", "p10", "p90", "GB/s", "TFLOP/s", "floor ms", "×floor"
    );
    if args.backward {
        println!(
            "{header} {:>9} {:>9} {:>9} {:>9}",
            "fwd+bwd", "fb p10", "fb p90", "≈bwd ms"
        );
    } else {
        println!("{header}");
    }
    let mut rng = Rng::new(args.seed);
    // dO from its own stream: the forward's inputs are the same with and without --backward.
    let mut rng_do = Rng::new(args.seed ^ 0x5eed_d0d0);
    let mut kernels_of = fetched.iter();
    let launches = args.warmup + args.iters;
    for dims in &shapes {
        for spec in &specs {
            let Some((kernel, backward)) = kernels_of.next() else {
                return Err(Failure::check("a kernel was not fetched"));
            };
            let shape = format!(
                "{},{},{},{}",
                dims.batch, dims.seq_len, dims.heads, dims.key_dim
            );
            let mut row = json!({
                "label": label,
                "variant": spec.name,
                "shape": [dims.batch, dims.seq_len, dims.heads, dims.key_dim],
                "B": dims.batch, "T": dims.seq_len, "H": dims.heads, "D": dims.key_dim,
                "kernel": kernel.info.entry,
            });
            let mut set = |key: &str, value: serde_json::Value| {
                if let Some(obj) = row.as_object_mut() {
                    obj.insert(key.into(), value);
                }
            };
            // Spent before anything is allocated: no launch.
            if let Some(reason) = budget.spent() {
                println!("{:<12} {shape:<20} skipped: {reason}", spec.name);
                set("skipped", json!(reason));
                rows.push(row);
                write_json(&rows, timer_used, false)?;
                continue;
            }
            let mut buffers = Vec::new();
            for input in &spec.inputs {
                let shape = dims.input_shape(input.role, &spec.decay);
                buffers.push((
                    input.role,
                    random_buffer(
                        &device,
                        Some(input.role),
                        element_of(input.role, dtype),
                        &shape,
                        &mut rng,
                    )?,
                ));
            }
            let h0 = if args.state {
                Some(random_buffer(
                    &device,
                    None,
                    ElementType::F32,
                    &dims.state_shape(dims.batch),
                    &mut rng,
                )?)
            } else {
                None
            };
            let refs: Vec<(Role, &DeviceBuffer)> = buffers.iter().map(|(r, b)| (*r, b)).collect();
            let fargs = ForwardArgs {
                inputs: &refs,
                initial_state: h0.as_ref(),
                cu_seqlens: None,
                scale: spec.scale.resolve(dims.key_dim) as f32,
            };
            let ws = op::forward_workspace(&device, &kernel.info, &kernel.binary, &fargs)
                .map_err(Failure::check)?;
            let mut forward = || {
                op::forward_into(&device, &kernel.info, &kernel.binary, &fargs, &ws)
                    .map_err(Failure::check)
            };
            if let Some(reason) = budget.fits(&device, launches, &mut forward)? {
                println!("{:<12} {shape:<20} skipped: {reason}", spec.name);
                set("skipped", json!(reason));
                rows.push(row);
                write_json(&rows, timer_used, false)?;
                continue;
            }
            let (mut times, timer) = time_launches(&device, args.warmup, args.iters, &mut forward)?;
            timer_used = timer;
            let (ms, p10, p90) = percentiles(&mut times);
            let bytes = traffic_bytes(spec, dims, dtype, args.state);
            let flops = chunk_flops(dims, chunk);
            let gbs = bytes as f64 / (ms * 1e-3) / 1e9;
            let tflops = flops / (ms * 1e-3) / 1e12;
            let floor_ms = bytes as f64 / (bandwidth * 1e9) * 1e3;
            let line = format!(
                "{:<12} {:<20} {:>9.3} {:>9.3} {:>9.3} {:>9.0} {:>8.2} {:>9.4} {:>7.2}",
                spec.name,
                shape,
                ms,
                p10,
                p90,
                gbs,
                tflops,
                floor_ms,
                ms / floor_ms
            );
            for (key, value) in [
                ("ms", json!(ms)),
                ("p10_ms", json!(p10)),
                ("p90_ms", json!(p90)),
                ("bytes", json!(bytes)),
                ("flops", json!(flops)),
                ("gb_per_s", json!(gbs)),
                ("tflop_per_s", json!(tflops)),
                ("floor_ms", json!(floor_ms)),
                ("ratio_to_floor", json!(ms / floor_ms)),
            ] {
                set(key, value);
            }
            // Forward then backward between one timer pair, into workspaces made once.
            if let Some(bwd) = backward {
                let d_o = random_buffer(&device, None, dtype, &dims.output_shape(), &mut rng_do)?;
                let bargs = BackwardArgs {
                    inputs: &refs,
                    initial_state: h0.as_ref(),
                    cu_seqlens: None,
                    scale: fargs.scale,
                    d_o: &d_o,
                    dht: None,
                    // The forward's chunk states (saved, as in training): a split forward's,
                    // or a fused one's split-scan's at sizes that take it; otherwise none and
                    // the backward recomputes them.
                    chunk_states: ws.outputs.chunk_states.as_ref(),
                };
                let states = if bargs.chunk_states.is_some() {
                    "saved"
                } else {
                    "recomputed"
                };
                set("backward_kernel", json!(bwd.info.entry));
                set("bwd_chunk_states", json!(states));
                let bws = op::backward_workspace(&device, &bwd.info, &bwd.binary, &bargs)
                    .map_err(Failure::check)?;
                let mut pair = || {
                    op::forward_into(&device, &kernel.info, &kernel.binary, &fargs, &ws)
                        .map_err(Failure::check)?;
                    op::backward_into(&device, &bwd.info, &bwd.binary, &bargs, &bws)
                        .map_err(Failure::check)
                };
                match budget.fits(&device, launches, &mut pair)? {
                    Some(reason) => {
                        println!("{line} fwd+bwd skipped: {reason}");
                        set("fwd_bwd_skipped", json!(reason));
                    }
                    None => {
                        let (mut times, _) =
                            time_launches(&device, args.warmup, args.iters, &mut pair)?;
                        let (fb, fb10, fb90) = percentiles(&mut times);
                        println!("{line} {fb:>9.3} {fb10:>9.3} {fb90:>9.3} {:>9.3}", fb - ms);
                        set("fwd_bwd_ms", json!(fb));
                        set("fwd_bwd_p10_ms", json!(fb10));
                        set("fwd_bwd_p90_ms", json!(fb90));
                        set("bwd_est_ms", json!(fb - ms));
                    }
                }
            } else {
                println!("{line}");
            }
            rows.push(row);
            write_json(&rows, timer_used, false)?;
        }
    }
    println!(
        "timer    {}; median of {} after {} warm-up launches{}",
        timer_text(timer_used),
        args.iters,
        args.warmup,
        if not_gpu {
            "; a CPU runtime: not a GPU timing"
        } else {
            ""
        }
    );
    if args.backward {
        println!("fwd+bwd  {FWD_BWD_HOW}");
    }
    if let Some(s) = args.budget_s {
        println!(
            "budget   {s} s: {} s used{}",
            budget.start.elapsed().as_secs(),
            if rows
                .iter()
                .any(|r| { r.get("skipped").is_some() || r.get("fwd_bwd_skipped").is_some() })
            {
                "; what did not fit is marked skipped"
            } else {
                ""
            }
        );
    }
    write_json(&rows, timer_used, true)?;
    if let Some(path) = &args.json {
        println!("json     {}", path.display());
    }
    Ok(())
}

/// `--budget-s`: a measurement is started only while the run's time lasts and when its
/// launches fit in what is left.
struct Budget {
    start: Instant,
    seconds: Option<f64>,
}

impl Budget {
    fn left(&self) -> Option<f64> {
        self.seconds.map(|s| s - self.start.elapsed().as_secs_f64())
    }

    /// Why nothing more may start, if the budget is spent.
    fn spent(&self) -> Option<String> {
        match self.left() {
            Some(left) if left <= 0.0 => Some(format!(
                "time budget ({} s) spent",
                self.seconds.unwrap_or_default()
            )),
            _ => None,
        }
    }

    /// Why a measurement of `launches` calls of `launch` does not fit in the time left, if it
    /// does not: with a budget, two untimed calls (the first loads the module), the second
    /// timed by the wall clock between synchronizes. Without a budget, no call.
    fn fits(
        &self,
        device: &Device,
        launches: usize,
        launch: &mut dyn FnMut() -> Result<(), Failure>,
    ) -> Result<Option<String>, Failure> {
        let Some(left) = self.left() else {
            return Ok(None);
        };
        if let Some(reason) = self.spent() {
            return Ok(Some(reason));
        }
        launch()?;
        device.synchronize().map_err(Failure::check)?;
        let t = Instant::now();
        launch()?;
        device.synchronize().map_err(Failure::check)?;
        let one = t.elapsed().as_secs_f64();
        let need = one * launches as f64;
        Ok((need > left).then(|| {
            format!(
                "time budget: {launches} calls of {:.1} ms need {need:.0} s, {left:.0} s left",
                one * 1e3
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_count_the_four_chunk_matmuls() {
        // One chunk of 64, K = V = 16: 2·64²·16 + 2·64²·16 + 2·64·16·16 + 2·64·16·16.
        let d = Dims::new(1, 64, 1, 16, 16);
        assert_eq!(chunk_flops(&d, 64), 262_144.0 + 65_536.0);
        // A partial last chunk counts full; B and H multiply.
        let d = Dims::new(2, 65, 3, 16, 16);
        assert_eq!(chunk_flops(&d, 64), 2.0 * 3.0 * 2.0 * 327_680.0);
        // (8,2048,16,128): 8·16·32·(2·64²·256 + 4·64·128²).
        let d = Dims::new(8, 2048, 16, 128, 128);
        assert_eq!(
            chunk_flops(&d, 64),
            8.0 * 16.0 * 32.0 * (2.0 * 4096.0 * 256.0 + 4.0 * 64.0 * 16384.0)
        );
    }

    #[test]
    fn bytes_count_inputs_and_outputs_once() {
        let d = Dims::new(8, 2048, 16, 128, 128);
        let n = 8 * 2048 * 16 * 128;
        let la = catalogue::lookup("linear_attn").expect("built-in").spec();
        // q, k, v in + o out, bf16.
        assert_eq!(
            traffic_bytes(&la, &d, ElementType::Bf16, false),
            (4 * n * 2) as u64
        );
        // h0 and ht f32 on top.
        let state = (8 * 16 * 128 * 128 * 4 * 2) as u64;
        assert_eq!(
            traffic_bytes(&la, &d, ElementType::Bf16, true),
            (4 * n * 2) as u64 + state
        );
        // simple_gla reads a scalar f32 gate per (b, t, h).
        let sg = catalogue::lookup("simple_gla").expect("built-in").spec();
        assert_eq!(
            traffic_bytes(&sg, &d, ElementType::Bf16, false),
            (4 * n * 2 + 8 * 2048 * 16 * 4) as u64
        );
    }

    #[test]
    fn shapes_parse() {
        assert_eq!(parse_shapes("fla").ok().expect("fla parses").len(), 8);
        let s = parse_shapes("1,64,1,16;8,2048,16,128")
            .ok()
            .expect("two shapes parse");
        assert_eq!(s[1], Dims::new(8, 2048, 16, 128, 128));
        assert!(parse_shapes("1,64,1").is_err());
        assert!(parse_shapes("1,64,1,512").is_err());
    }

    #[test]
    fn the_missing_kernel_hint_compiles_both_directions() {
        let spec = catalogue::lookup("simple_gla").expect("built-in").spec();
        let config = KernelConfig {
            dtype: ElementType::Bf16,
            key_dim: 128,
            value_dim: 128,
            chunk: 64,
            initial_state: false,
            final_state: false,
            varlen: false,
        };
        let want = "linrec compile simple_gla --target sm_90 --dtype bf16 --head-dims 128:128 \
                    --chunk 64 --direction both --out DIR";
        for request in [
            KernelRequest::forward(&spec, "sm_90", config),
            KernelRequest::backward(&spec, "sm_90", config),
        ] {
            assert_eq!(compile_both_command(&request, "DIR"), want);
        }
    }

    #[test]
    fn labels_are_single_words() {
        assert!(check_label("linrec-split").is_ok());
        for bad in ["", "a b", "x\n"] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentiles_of_101() {
        let mut t: Vec<f64> = (0..101).rev().map(f64::from).collect();
        assert_eq!(percentiles(&mut t), (50.0, 10.0, 90.0));
    }
}
