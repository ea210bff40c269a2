//! Runs the tensor-core matmul test kernels (`compiler/tests/all/mma.rs`) on an NVIDIA GPU and
//! checks C against an f64 matmul on the host.
//!
//! ```text
//! LINREC_MMA_PTX_DIR=$PWD/.device/mma cargo test -p linrec-compiler --test all mma::all_cases
//! cargo build --release -p linrec-compiler --example mma_check
//! cp target/release/examples/mma_check .device/ && .device/mma_check .device/mma
//! ```
//!
//! The test writes each kernel's PTX (sm_80 and sm_90) and a `manifest.txt` line per kernel:
//! `file kernel M N K ta tb dtype warps mode`. Every kernel runs twice: on small integers
//! (products and sums are exact in f32, so C must match exactly) and on random values rounded
//! to the dtype (relative error `max|C − ref| / max|ref|` under 1e-2; with inputs rounded
//! first, f32 accumulation is the only error, far below that). C is NaN-poisoned before each
//! launch, so an element the kernel does not write fails. This binary links no MLIR: it only
//! loads PTX through `linrec_runtime`'s CUDA backend, so it runs on a machine with a driver
//! and nothing else.

use std::process::ExitCode;

use linrec_runtime::{DType, Device, DeviceKind, KernelArg, LaunchConfig};

/// One manifest line.
struct Case {
    file: String,
    kernel: String,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    f16: bool,
    warps: u32,
    mode: String,
}

fn parse(line: &str) -> Result<Case, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 10 {
        return Err(format!("bad manifest line `{line}`"));
    }
    let num = |s: &str| {
        s.parse::<usize>()
            .map_err(|e| format!("`{s}` in `{line}`: {e}"))
    };
    Ok(Case {
        file: f[0].to_owned(),
        kernel: f[1].to_owned(),
        m: num(f[2])?,
        n: num(f[3])?,
        k: num(f[4])?,
        ta: f[5] == "1",
        tb: f[6] == "1",
        f16: f[7] == "f16",
        warps: u32::try_from(num(f[8])?).map_err(|e| e.to_string())?,
        mode: f[9].to_owned(),
    })
}

/// A small xorshift generator: reproducible inputs without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    /// An integer in [-lim, lim].
    fn int(&mut self, lim: i64) -> f64 {
        ((self.next() % (2 * lim as u64 + 1)) as i64 - lim) as f64
    }
}

/// bf16 bits of `x`, rounded to nearest even (x finite).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

fn bf16_value(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

/// f16 bits of a value that f16 represents exactly in its normal range, or zero.
fn f16_bits_exact(x: f64) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let sign = if x < 0.0 { 0x8000 } else { 0 };
    let a = x.abs();
    let e = a.log2().floor() as i32;
    let man = ((a / 2f64.powi(e) - 1.0) * 1024.0).round() as u16;
    sign | (((e + 15) as u16) << 10) | man
}

/// Inputs in the dtype: (bits, values as the kernel sees them).
fn inputs(rng: &mut Rng, len: usize, f16: bool, integers: bool) -> (Vec<u8>, Vec<f64>) {
    let mut bytes = Vec::with_capacity(2 * len);
    let mut vals = Vec::with_capacity(len);
    for _ in 0..len {
        let (bits, v) = if integers {
            let v = rng.int(4);
            let bits = if f16 {
                f16_bits_exact(v)
            } else {
                bf16_bits(v as f32)
            };
            (bits, v)
        } else if f16 {
            // k/1024 with |k| ≤ 1024: exact in f16 (11 significant bits).
            let v = rng.int(1024) / 1024.0;
            (f16_bits_exact(v), v)
        } else {
            let bits = bf16_bits(rng.unit() as f32);
            (bits, bf16_value(bits))
        };
        bytes.extend_from_slice(&bits.to_le_bytes());
        vals.push(v);
    }
    (bytes, vals)
}

/// Runs one case on one input kind; returns the relative error (max |C − ref| / max |ref|).
fn run(dev: &Device, dir: &str, case: &Case, integers: bool, seed: u64) -> Result<f64, String> {
    let e = |x: linrec_runtime::RuntimeError| x.to_string();
    let ptx = std::fs::read(format!("{dir}/{}", case.file)).map_err(|x| x.to_string())?;
    let module = dev.load_module(&ptx).map_err(e)?;
    let kernel = dev.kernel(&module, &case.kernel).map_err(e)?;
    let (m, n, k) = (case.m, case.n, case.k);
    let mut rng = Rng(seed | 1);
    let dtype = if case.f16 { DType::F16 } else { DType::BF16 };
    let (a_bytes, a) = inputs(&mut rng, m * k, case.f16, integers);
    let (b_bytes, b) = inputs(&mut rng, k * n, case.f16, integers);
    // op(A)[i][p] and op(B)[p][j] from the stored layouts.
    let av = |i: usize, p: usize| if case.ta { a[p * m + i] } else { a[i * k + p] };
    let bv = |p: usize, j: usize| if case.tb { b[j * k + p] } else { b[p * n + j] };
    let c0: Vec<f32> = (0..m * n)
        .map(|_| if integers { rng.int(8) } else { rng.unit() } as f32)
        .collect();
    let accumulate = case.mode == "accumulate";
    let da = dev.upload_bytes(dtype, &[m * k], &a_bytes).map_err(e)?;
    let db = dev.upload_bytes(dtype, &[k * n], &b_bytes).map_err(e)?;
    let dc = dev.alloc_poisoned(DType::F32, &[m * n]).map_err(e)?;
    if accumulate {
        dev.write(&dc, &c0).map_err(e)?;
    }
    let config = LaunchConfig {
        grid: [1, 1, 1],
        block: [32 * case.warps, 1, 1],
        shared_mem_bytes: 0,
    };
    let args = [
        KernelArg::Buffer(&da),
        KernelArg::Buffer(&db),
        KernelArg::Buffer(&dc),
    ];
    dev.launch(&kernel, &config, &args).map_err(e)?;
    dev.synchronize().map_err(e)?;
    let c: Vec<f32> = dev.download(&dc).map_err(e)?;
    let (mut err, mut scale) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let mut r: f64 = (0..k).map(|p| av(i, p) * bv(p, j)).sum();
            if accumulate {
                r += f64::from(c0[i * n + j]);
            }
            let got = f64::from(c[i * n + j]);
            if !got.is_finite() {
                return Err(format!("C[{i}][{j}] = {got} (not written?)"));
            }
            if integers && got != r {
                return Err(format!("C[{i}][{j}] = {got}, expected exactly {r}"));
            }
            err = err.max((got - r).abs());
            scale = scale.max(r.abs());
        }
    }
    Ok(err / scale.max(f64::MIN_POSITIVE))
}

fn main() -> ExitCode {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ".device/mma".into());
    let manifest = match std::fs::read_to_string(format!("{dir}/manifest.txt")) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cannot read {dir}/manifest.txt: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dev = match Device::new(DeviceKind::Cuda) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no CUDA device: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info = dev.info();
    println!("device: {} (driver {})", info.label(), info.driver_version);
    let mut failed = 0;
    for (i, line) in manifest
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
    {
        let case = match parse(line) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
                continue;
            }
        };
        let seed = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 * 0x100_0000_01B3);
        let exact = run(&dev, &dir, &case, true, seed);
        let random = run(&dev, &dir, &case, false, seed.rotate_left(17));
        let ok = matches!(exact, Ok(0.0)) && matches!(random, Ok(r) if r < 1e-2);
        if !ok {
            failed += 1;
        }
        let show = |r: &Result<f64, String>| match r {
            Ok(x) => format!("{x:.2e}"),
            Err(e) => format!("ERROR {e}"),
        };
        println!(
            "{} {:<48} integers: {:<9} random: rel err {}",
            if ok { "ok  " } else { "FAIL" },
            case.file,
            show(&exact),
            show(&random)
        );
    }
    println!(
        "{} kernels checked, {failed} failed",
        manifest.lines().filter(|l| !l.trim().is_empty()).count()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
