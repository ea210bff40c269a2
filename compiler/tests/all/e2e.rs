//! End to end: spec → compile for `spirv` → `linrec_runtime::op::forward` on Intel's CPU
//! OpenCL runtime → o and the final state against the f64 reference, with fla's criterion
//! (`‖out − ref‖ / ‖ref‖ < 0.005`) over a shape matrix: odd T (0, 1, 63, 75, 500), head dims
//! 1, 16, 60, 64, 100, 128, 256, varlen with empty sequences, h0, GVA, f32/bf16/f16, chunks 16/32/64.
//! Inputs are rounded to the kernel's dtype first, so the reference sees the same values; the
//! outputs are NaN-poisoned before the launch.
//!
//! Without an OpenCL runtime that takes SPIR-V the tests skip with a note, except under
//! `CI=true`, where they fail (CI installs it: `bash scripts/setup.sh`).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use linrec_compiler::schedule::{MatmulChoice, MatrixCore};
use linrec_compiler::{CompileOptions, ForwardForm, Target, compile, compile_with};
use linrec_runtime::{DType, Device, DeviceBuffer, DeviceKind, RuntimeError, op};
use linrec_spec::launch::{ElementType, KernelConfig};
use linrec_spec::reference::{self, Inputs, Rng, Tensor};
use linrec_spec::{Dims, Role, RunOptions, Spec};

use crate::specs;

/// fla's tolerance for o and the final state.
const RATIO: f64 = 0.005;

pub(crate) fn ci_mode() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The OpenCL device, or `None` with a note (a failure under CI).
pub(crate) fn device(test: &str) -> Option<Device> {
    match Device::new(DeviceKind::OpenCl) {
        Ok(dev) => Some(dev),
        Err(e @ (RuntimeError::DriverNotFound { .. } | RuntimeError::NoDevice { .. })) => {
            assert!(
                !ci_mode(),
                "CI=true but no OpenCL device takes SPIR-V: {e}\n\
                 CI must run `bash scripts/setup.sh` and export the OCL_ICD_VENDORS it prints"
            );
            static EXPLAINED: AtomicBool = AtomicBool::new(false);
            let mut err = std::io::stderr();
            if !EXPLAINED.swap(true, Ordering::Relaxed) {
                let _ = writeln!(err, "note: the end-to-end tests skip: {e}");
            }
            let _ = writeln!(err, "note: skipping {test} (no OpenCL device takes SPIR-V)");
            None
        }
        Err(e) => panic!("opening the OpenCL device failed: {e}"),
    }
}

// ---- host-side element conversions: the `half` crate (round to nearest even) --------------

/// Rounds every value to what `dtype` can hold (through f32).
pub(crate) fn round_to(t: &mut Tensor, dtype: ElementType) {
    for x in &mut t.data {
        let f = *x as f32;
        *x = f64::from(match dtype {
            ElementType::F32 => f,
            ElementType::Bf16 => half::bf16::from_f32(f).to_f32(),
            ElementType::F16 => half::f16::from_f32(f).to_f32(),
        });
    }
}

pub(crate) fn upload(dev: &Device, t: &Tensor, dtype: ElementType) -> DeviceBuffer {
    let mut bytes = Vec::with_capacity(t.len() * dtype.size());
    for &x in &t.data {
        let f = x as f32;
        match dtype {
            ElementType::F32 => bytes.extend_from_slice(&f.to_le_bytes()),
            ElementType::Bf16 => bytes.extend_from_slice(&half::bf16::from_f32(f).to_le_bytes()),
            ElementType::F16 => bytes.extend_from_slice(&half::f16::from_f32(f).to_le_bytes()),
        }
    }
    dev.upload_bytes(op::dtype(dtype), &t.shape, &bytes)
        .expect("upload")
}

pub(crate) fn download(dev: &Device, buf: &DeviceBuffer) -> Tensor {
    let bytes = dev.download_bytes(buf).expect("download");
    let data: Vec<f64> = match buf.dtype() {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => panic!("unexpected output dtype {other}"),
    };
    Tensor::from_vec(buf.shape(), data).expect("shape matches")
}

// ---- one case -------------------------------------------------------------------------------

/// One point of the shape matrix.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    spec: Spec,
    dtype: ElementType,
    dims: Dims,
    chunk: usize,
    h0: bool,
    cu_seqlens: Option<Vec<i64>>,
    /// How the SPIR-V kernel runs its matmuls (the tensor-core tests emulate that layout).
    matmul: MatmulChoice,
    /// One kernel, or states + chunk-parallel output.
    forward: ForwardForm,
    /// [`ForwardForm::Auto`]: whether the call runs the split-scan.
    expect_scan: bool,
}

impl Case {
    pub(crate) fn new(spec: Spec, dtype: ElementType, dims: Dims, chunk: usize) -> Self {
        Case {
            spec,
            dtype,
            dims,
            chunk,
            h0: false,
            cu_seqlens: None,
            matmul: MatmulChoice::Auto,
            forward: ForwardForm::Fused,
            expect_scan: false,
        }
    }
    /// Compile the split forward ([`ForwardForm::Split`]).
    pub(crate) fn split(mut self) -> Self {
        self.forward = ForwardForm::Split;
        self
    }
    /// Compile the split-scan forward ([`ForwardForm::Scan`]).
    pub(crate) fn scan(mut self) -> Self {
        self.forward = ForwardForm::Scan;
        self
    }
    /// Compile the fused forward with the split-scan as its alternative
    /// ([`ForwardForm::Auto`]): the runtime picks by the call's sizes, the split-scan when
    /// `scan`.
    pub(crate) fn auto(mut self, scan: bool) -> Self {
        self.forward = ForwardForm::Auto;
        self.expect_scan = scan;
        self
    }
    pub(crate) fn h0(mut self) -> Self {
        self.h0 = true;
        self
    }
    pub(crate) fn varlen(mut self, cu: &[i64]) -> Self {
        self.cu_seqlens = Some(cu.to_vec());
        self
    }
    /// Compile with the tensor-core layout, emulated ([`MatmulChoice::Emulated`]).
    pub(crate) fn emulated(mut self) -> Self {
        self.matmul = MatmulChoice::Emulated;
        self
    }
    /// Compile with sm_90a's layout (operand tiles as core matrices), emulated
    /// ([`MatmulChoice::EmulatedCoreMatrices`]).
    pub(crate) fn core_matrices(mut self) -> Self {
        self.matmul = MatmulChoice::EmulatedCoreMatrices;
        self
    }
    /// Compile with an AMD matrix-core layout, emulated lane by lane
    /// ([`MatmulChoice::EmulatedMatrixCore`]).
    pub(crate) fn matrix_core(mut self, core: MatrixCore) -> Self {
        self.matmul = MatmulChoice::EmulatedMatrixCore(core);
        self
    }
}

/// Runs a case and returns `(ratio of o, ratio of the final state)`.
fn run(dev: &Device, case: &Case, seed: u64) -> (f64, f64) {
    let d = case.dims;
    let config = KernelConfig {
        dtype: case.dtype,
        key_dim: d.key_dim,
        value_dim: d.value_dim,
        chunk: case.chunk,
        initial_state: case.h0,
        final_state: true,
        varlen: case.cu_seqlens.is_some(),
    };
    let options = CompileOptions::from_env()
        .with_matmul(case.matmul)
        .with_forward(case.forward);
    let artifact = compile_with(&case.spec, Target::Spirv, &config, &options)
        .unwrap_or_else(|e| panic!("{case:?}: compile failed: {e}"));
    if let MatmulChoice::EmulatedMatrixCore(_) = case.matmul {
        // A fallback to the portable path would test nothing of the layout.
        assert!(
            artifact
                .schedule_text
                .contains("(matrix-core layout, emulated: one kernel)"),
            "{case:?}: not laid out for matrix cores:\n{}",
            artifact.schedule_text
        );
    }

    let mut inputs: Inputs = reference::random_inputs(&case.spec, &d, seed);
    let n = case.cu_seqlens.as_ref().map_or(d.batch, |c| c.len() - 1);
    if case.h0 {
        let mut rng = Rng::new(seed ^ 0x5eed);
        inputs.h0 = Some(Tensor::from_fn(&d.state_shape(n), || rng.normal()));
    }
    for role in [Role::Query, Role::Key, Role::Value] {
        if let Some(t) = tensor_mut(&mut inputs, role) {
            round_to(t, case.dtype);
        }
    }
    for role in [Role::Gate, Role::Beta, Role::DecayRate] {
        if let Some(t) = tensor_mut(&mut inputs, role) {
            round_to(t, ElementType::F32);
        }
    }
    if let Some(h0) = inputs.h0.as_mut() {
        round_to(h0, ElementType::F32);
    }

    let opts = RunOptions {
        scale: None,
        cu_seqlens: case.cu_seqlens.clone(),
        output_final_state: true,
    };
    let want = reference::forward(&case.spec, &inputs, &opts).expect("reference runs");

    let mut buffers: Vec<(Role, DeviceBuffer)> = Vec::new();
    for role in case.spec.required_roles() {
        let t = inputs.get(role).expect("random_inputs makes every role");
        let dtype = match role {
            Role::Query | Role::Key | Role::Value => case.dtype,
            _ => ElementType::F32,
        };
        buffers.push((role, upload(dev, t, dtype)));
    }
    let h0 = inputs.h0.as_ref().map(|t| upload(dev, t, ElementType::F32));
    let cu = case.cu_seqlens.as_ref().map(|c| {
        let c32: Vec<i32> = c.iter().map(|&x| x as i32).collect();
        dev.upload(&c32, &[c32.len()]).expect("upload cu_seqlens")
    });
    let refs: Vec<(Role, &DeviceBuffer)> = buffers.iter().map(|(r, b)| (*r, b)).collect();
    let out = op::forward(
        dev,
        &artifact.info,
        &artifact.binary,
        &op::ForwardArgs {
            inputs: &refs,
            initial_state: h0.as_ref(),
            cu_seqlens: cu.as_ref(),
            scale: case.spec.scale.resolve(d.key_dim) as f32,
        },
    )
    .unwrap_or_else(|e| panic!("{case:?}: launch failed: {e}"));
    if case.forward == ForwardForm::Auto {
        // Chunk states come back exactly when the split-scan ran.
        let scan = artifact.info.takes_instead(&d, n);
        assert!(artifact.info.instead.is_some(), "{case:?}: no split-scan");
        assert_eq!(out.chunk_states.is_some(), scan == Some(true), "{case:?}");
        assert_eq!(scan, Some(case.expect_scan), "{case:?}: which forward ran");
    }
    let o = download(dev, &out.o);
    let ht = download(dev, out.final_state.as_ref().expect("final state asked"));
    let want_ht = want.ht.as_ref().expect("reference final state");
    (o.rel_error(&want.o), ht.rel_error(want_ht))
}

pub(crate) fn tensor_mut(inputs: &mut Inputs, role: Role) -> Option<&mut Tensor> {
    match role {
        Role::Query => Some(&mut inputs.q),
        Role::Key => Some(&mut inputs.k),
        Role::Value => Some(&mut inputs.v),
        Role::Gate => inputs.g.as_mut(),
        Role::Beta => inputs.beta.as_mut(),
        Role::Bonus => inputs.u.as_mut(),
        Role::DecayRate => inputs.decay_rate.as_mut(),
    }
}

/// Runs cases, prints one line each (ratios), and fails with every case over the tolerance.
pub(crate) fn check(test: &str, cases: &[Case]) {
    let Some(dev) = device(test) else {
        return;
    };
    let mut failures = Vec::new();
    let mut report = String::new();
    for (i, case) in cases.iter().enumerate() {
        let (ro, rh) = run(&dev, case, 1000 + i as u64);
        let d = case.dims;
        let line = format!(
            "{:<12} {:<4} B{} T{:<3} H{} HV{} K{:<3} V{:<3} C{:<2}{}{}{} o {ro:.2e} ht {rh:.2e}",
            case.spec.name,
            case.dtype.name(),
            d.batch,
            d.seq_len,
            d.heads,
            d.value_heads,
            d.key_dim,
            d.value_dim,
            case.chunk,
            if case.h0 { " h0" } else { "" },
            case.cu_seqlens
                .as_ref()
                .map(|c| format!(" cu{c:?}"))
                .unwrap_or_default(),
            match (case.forward, case.matmul) {
                (ForwardForm::Split, MatmulChoice::Emulated) => {
                    " (split, tensor-core layout)".to_string()
                }
                (ForwardForm::Split, _) => " (split)".to_string(),
                (ForwardForm::Scan, MatmulChoice::Emulated) => {
                    " (scan, tensor-core layout)".to_string()
                }
                (ForwardForm::Scan, _) => " (scan)".to_string(),
                (ForwardForm::Auto, m) => format!(
                    " (auto: {}{})",
                    if case.expect_scan {
                        "split-scan"
                    } else {
                        "fused"
                    },
                    if m == MatmulChoice::Emulated {
                        ", tensor-core layout"
                    } else {
                        ""
                    }
                ),
                (_, MatmulChoice::Emulated) => " (tensor-core layout)".to_string(),
                (_, MatmulChoice::EmulatedCoreMatrices) => " (core-matrix layout)".to_string(),
                (_, MatmulChoice::EmulatedMatrixCore(core)) => {
                    format!(" ({} layout)", core.name())
                }
                _ => String::new(),
            },
        );
        report.push_str(&line);
        report.push('\n');
        if !(ro < RATIO && rh < RATIO) {
            failures.push(line);
        }
    }
    // Straight to stderr so the numbers show with --nocapture and in failures alike.
    let _ = write!(std::io::stderr(), "{test}:\n{report}");
    assert!(
        failures.is_empty(),
        "over the tolerance {RATIO}:\n{}",
        failures.join("\n")
    );
}

use ElementType::{Bf16, F16, F32};

#[test]
fn split_forward_runs_on_opencl() {
    // States kernel + chunk-parallel output kernel, over odd T, T = 0 and 1, varlen with
    // empty sequences, GVA, h0, every dtype, chunks 16/32/64, narrow and wide head dims, and
    // the tensor-core layout (emulated) whose value blocks are narrower than V.
    let (la, re, sg) = (specs::linear_attn, specs::retention, specs::simple_gla);
    check(
        "split forward",
        &[
            Case::new(la(), F32, Dims::new(2, 1, 2, 16, 16), 64).split(),
            Case::new(la(), F32, Dims::new(1, 0, 1, 16, 60), 32)
                .h0()
                .split(),
            Case::new(la(), Bf16, Dims::new(1, 130, 1, 128, 128), 64)
                .h0()
                .split(),
            Case::new(re(), F16, Dims::new(1, 63, 1, 100, 60), 64)
                .h0()
                .split(),
            Case::new(re(), Bf16, Dims::new(1, 75, 2, 64, 64), 16)
                .h0()
                .varlen(&[0, 0, 17, 17, 75])
                .split(),
            Case::new(
                sg(),
                Bf16,
                Dims::new(2, 75, 2, 64, 64).with_value_heads(4),
                64,
            )
            .h0()
            .split(),
            Case::new(sg(), F32, Dims::new(1, 95, 1, 128, 16), 32)
                .h0()
                .varlen(&[0, 30, 30, 95])
                .split(),
            Case::new(sg(), Bf16, Dims::new(1, 100, 2, 128, 128), 64)
                .h0()
                .emulated()
                .split(),
            Case::new(sg(), F16, Dims::new(1, 70, 1, 32, 100), 32)
                .varlen(&[0, 33, 70])
                .emulated()
                .split(),
            Case::new(specs::beta_l2(), Bf16, Dims::new(1, 50, 1, 64, 64), 32)
                .h0()
                .split(),
            Case::new(specs::rate(), F32, Dims::new(2, 40, 1, 16, 32), 16).split(),
        ],
    );
}

#[test]
fn scan_forward_runs_on_opencl() {
    // The split-scan over T segments of 16 chunks: several segments (a last one short, or
    // exactly full), one segment, T = 0 and 1, varlen with an empty sequence and sequences of
    // one and several segments, h0, every decay (none, constant, per token, per head input),
    // GVA, the tensor-core layout (emulated).
    let (la, re, sg) = (specs::linear_attn, specs::retention, specs::simple_gla);
    check(
        "scan forward",
        &[
            Case::new(la(), F32, Dims::new(1, 600, 1, 16, 16), 16)
                .h0()
                .scan(),
            // 10 segments: the combine's batches of 8, the second partial.
            Case::new(re(), F32, Dims::new(1, 2400, 1, 16, 16), 16)
                .h0()
                .scan(),
            Case::new(la(), F32, Dims::new(1, 0, 1, 16, 20), 32)
                .h0()
                .scan(),
            Case::new(la(), F32, Dims::new(1, 1, 1, 16, 16), 32)
                .h0()
                .scan(),
            Case::new(re(), Bf16, Dims::new(2, 530, 2, 32, 32), 16).scan(),
            Case::new(sg(), Bf16, Dims::new(1, 900, 1, 32, 48), 16)
                .h0()
                .varlen(&[0, 0, 256, 300, 900])
                .scan(),
            Case::new(sg(), F32, Dims::new(1, 1, 1, 16, 16), 64).scan(),
            Case::new(
                sg(),
                F16,
                Dims::new(1, 1100, 1, 16, 24).with_value_heads(2),
                32,
            )
            .h0()
            .scan(),
            Case::new(sg(), Bf16, Dims::new(1, 560, 1, 32, 64), 16)
                .h0()
                .emulated()
                .scan(),
            Case::new(specs::rate(), F32, Dims::new(2, 300, 1, 16, 32), 16).scan(),
            // The runtime's choice: the split-scan for one long sequence, the fused kernel
            // for a short one (the route test in runtime/tests checks which ran).
            Case::new(sg(), Bf16, Dims::new(1, 600, 1, 32, 32), 16)
                .h0()
                .auto(true),
            Case::new(sg(), Bf16, Dims::new(1, 100, 1, 32, 32), 16)
                .h0()
                .auto(false),
            // The fused kernel's wide block (128 value columns), which the runtime launches
            // where its grid has 128 workgroups (here 64·2 sequences and heads), in the
            // tensor-core layout.
            Case::new(sg(), Bf16, Dims::new(64, 20, 2, 32, 128), 16)
                .h0()
                .emulated()
                .auto(false),
        ],
    );
}

#[test]
fn linear_attn_forward_runs_on_opencl() {
    let s = specs::linear_attn;
    check(
        "linear_attn",
        &[
            Case::new(s(), F32, Dims::new(2, 1, 2, 16, 16), 64),
            Case::new(s(), Bf16, Dims::new(1, 63, 2, 64, 64), 64).h0(),
            Case::new(s(), Bf16, Dims::new(1, 500, 1, 128, 128), 64).h0(),
            Case::new(s(), F32, Dims::new(1, 0, 1, 16, 60), 32).h0(),
        ],
    );
}

#[test]
fn retention_forward_runs_on_opencl() {
    let s = specs::retention;
    check(
        "retention",
        &[
            Case::new(
                s(),
                F32,
                Dims::new(1, 75, 1, 60, 100).with_value_heads(2),
                32,
            )
            .h0(),
            Case::new(s(), Bf16, Dims::new(1, 75, 2, 64, 64), 16)
                .h0()
                .varlen(&[0, 0, 17, 17, 75]),
            Case::new(s(), F16, Dims::new(1, 63, 1, 100, 60), 64).h0(),
            Case::new(s(), Bf16, Dims::new(2, 75, 1, 128, 128), 64),
        ],
    );
}

#[test]
fn simple_gla_forward_runs_on_opencl() {
    let s = specs::simple_gla;
    check(
        "simple_gla",
        &[
            Case::new(
                s(),
                Bf16,
                Dims::new(2, 75, 2, 64, 64).with_value_heads(4),
                64,
            )
            .h0(),
            Case::new(s(), F32, Dims::new(1, 95, 1, 128, 16), 32)
                .h0()
                .varlen(&[0, 30, 30, 95]),
            Case::new(s(), Bf16, Dims::new(1, 500, 1, 16, 128), 16),
            Case::new(s(), F32, Dims::new(1, 1, 1, 100, 100), 64),
            // The ends of the head-dim range.
            Case::new(s(), Bf16, Dims::new(1, 20, 1, 256, 256), 16).h0(),
            Case::new(s(), F32, Dims::new(1, 33, 1, 1, 3), 16).h0(),
        ],
    );
}

#[test]
fn beta_write_and_l2norm_forward_runs_on_opencl() {
    let s = specs::beta_l2;
    check(
        "beta_l2",
        &[
            Case::new(
                s(),
                Bf16,
                Dims::new(1, 63, 1, 64, 64).with_value_heads(2),
                32,
            )
            .h0(),
            Case::new(s(), F32, Dims::new(1, 80, 2, 60, 60), 16)
                .h0()
                .varlen(&[0, 13, 13, 80]),
        ],
    );
}

#[test]
fn constant_input_rate_forward_runs_on_opencl() {
    let s = specs::rate;
    check(
        "rate",
        &[
            Case::new(s(), F32, Dims::new(1, 75, 1, 16, 60), 16).h0(),
            Case::new(
                s(),
                Bf16,
                Dims::new(1, 500, 1, 64, 64).with_value_heads(2),
                64,
            ),
        ],
    );
}

#[test]
fn a_compiled_kernel_refuses_wrong_buffers_by_name() {
    let Some(dev) = device("a_compiled_kernel_refuses_wrong_buffers_by_name") else {
        return;
    };
    let mut config = crate::specs::config();
    config.initial_state = false;
    let a = compile(&specs::simple_gla(), Target::Spirv, &config).expect("compiles");
    let q = dev.alloc(DType::BF16, &[1, 4, 1, 64]).expect("alloc");
    let v = dev.alloc(DType::BF16, &[1, 4, 1, 64]).expect("alloc");
    let g_bf16 = dev.alloc(DType::BF16, &[1, 4, 1]).expect("alloc");
    let k_short = dev.alloc(DType::BF16, &[1, 4, 1, 60]).expect("alloc");
    let launch = |k: &DeviceBuffer, g: &DeviceBuffer| {
        op::forward(
            &dev,
            &a.info,
            &a.binary,
            &op::ForwardArgs {
                inputs: &[
                    (Role::Query, &q),
                    (Role::Key, k),
                    (Role::Value, &v),
                    (Role::Gate, g),
                ],
                initial_state: None,
                cu_seqlens: None,
                scale: 0.125,
            },
        )
        .expect_err("wrong buffer")
        .to_string()
    };
    let msg = launch(&q, &g_bf16);
    assert!(
        msg.contains("`g`") && msg.contains("expected dtype f32, found bf16"),
        "{msg}"
    );
    let g = dev.alloc(DType::F32, &[1, 4, 1]).expect("alloc");
    let msg = launch(&k_short, &g);
    assert!(
        msg.contains("`k`") && msg.contains("[B, T, H, 64]"),
        "{msg}"
    );
}
