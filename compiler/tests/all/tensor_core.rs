//! Tensor cores for NVIDIA bf16/f16 kernels (`schedule` module docs, "Tensor cores").
//!
//! * Every plan matmul of linear_attn, retention and simple_gla at bf16 and f16, K = V in
//!   {16, 60, 64, 100, 128, 256}, chunks 16/32/64, runs on tensor cores for sm_80 and sm_90:
//!   the PTX holds `ldmatrix` and `mma.sync.aligned.m16n8k16` (bf16 or f16 operands, f32
//!   accumulation), the shared memory fits the target, ptxas assembles it, and `ptxas -v`
//!   reports no spills (every config, not only the hot K = V = 64 and 128 ones).
//! * f32 kernels and the other targets keep the portable path (no `mma`, no shared memory).
//! * The layout itself (operand tiles placed by liveness, zero padding, barriers, 16-bit
//!   operand precision) runs end to end on the CPU OpenCL runtime in its emulated form
//!   ([`MatmulChoice::Emulated`]: same schedule, operand tiles in scratch, scalar matmuls),
//!   against the f64 reference with fla's criterion.
//!
//! The kernels themselves run on a GPU with `runtime/examples/tc_check.rs` (results in
//! `docs/benchmarks.md`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use linrec_compiler::lower::Target;
use linrec_compiler::schedule::{
    self, MatmulChoice, MatmulPath, OperandTile, Placement, shared_memory_limit,
};
use linrec_compiler::{CompileOptions, compile, compile_with, plan};
use linrec_spec::launch::{ElementType, KernelConfig};
use linrec_spec::{Dims, Spec};

use crate::e2e::{Case, check};
use crate::specs;

use ElementType::{Bf16, F16, F32};

const HEAD_DIMS: [usize; 6] = [16, 60, 64, 100, 128, 256];
const CHUNKS: [usize; 3] = [16, 32, 64];

fn config(dtype: ElementType, dim: usize, chunk: usize) -> KernelConfig {
    KernelConfig {
        dtype,
        key_dim: dim,
        value_dim: dim,
        chunk,
        initial_state: true,
        final_state: true,
        varlen: false,
    }
}

fn schedule_of(spec: &Spec, target: Target, config: &KernelConfig) -> schedule::Schedule {
    let p = plan::forward(spec).expect("supported");
    schedule::forward(&p, spec, target, config).expect("schedules")
}

/// The TMA loads of sm_90a's chunk kernels: q, k and v each by TMA with its own 8-byte aligned
/// mbarrier after everything else in shared memory, their tiles kept for the whole chunk (no
/// other operand tile overlaps them), a tensor-map parameter per load before the scratch; the
/// split forward's state walk takes none; `wgmma-without-tma` keeps wgmma with
/// the threads' row copies.
#[test]
fn sm_90a_loads_rows_by_tma() {
    use linrec_spec::Role;
    use linrec_spec::launch::KernelParam;
    for spec in [
        specs::linear_attn(),
        specs::retention(),
        specs::simple_gla(),
    ] {
        for (dim, chunk) in [(64, 64), (128, 64), (128, 32), (256, 64)] {
            let config = config(Bf16, dim, chunk);
            let what = format!("{} K=V={dim} C={chunk}", spec.name);
            let p = plan::forward(&spec).expect("supported");
            let split =
                schedule::forward_split(&p, &spec, Target::Sm90a, &config, MatmulChoice::Auto)
                    .expect(&what);
            let fused = schedule_of(&spec, Target::Sm90a, &config);
            for s in [&fused, &split.output] {
                let roles: Vec<Role> = s.tma.iter().map(|l| l.role).collect();
                assert_eq!(
                    roles,
                    [Role::Query, Role::Key, Role::Value],
                    "{what} {}",
                    s.entry
                );
                let end = u64::from(s.shared_bytes);
                for (i, l) in s.tma.iter().enumerate() {
                    assert_eq!(l.barrier % 8, 0, "{what}");
                    assert_eq!(u64::from(l.barrier) + 8 * (s.tma.len() - i) as u64, end);
                    let t = s.operands[l.node].expect("an operand tile");
                    assert!(
                        t.layout == schedule::TileLayout::Swizzled && t.rows == chunk,
                        "{what}"
                    );
                    for (j, o) in s.operands.iter().enumerate() {
                        let Some(o) = o else { continue };
                        let apart =
                            o.offset + o.len() <= t.offset || t.offset + t.len() <= o.offset;
                        assert!(
                            j == l.node || apart,
                            "{what}: %{j} overlaps the TMA tile %{}",
                            l.node
                        );
                    }
                }
                let maps: Vec<&KernelParam> = s
                    .params
                    .iter()
                    .filter(|p| matches!(p, KernelParam::TensorMap(_)))
                    .collect();
                assert_eq!(maps.len(), 3, "{what}");
                let at = s.params.iter().position(|p| *p == KernelParam::Scratch);
                assert_eq!(
                    s.params.get(at.expect("scratch") - 1),
                    Some(&KernelParam::TensorMap(Role::Value)),
                    "{what}"
                );
            }
            // The state walks keep mma.sync and the threads' copies (the backward likewise,
            // checked in `sm_90a_runs_wgmma_on_core_matrices`).
            assert!(split.states.tma.is_empty(), "{what}");
            let options = CompileOptions::default().with_matmul(MatmulChoice::WgmmaWithoutTma);
            let art = compile_with(&spec, Target::Sm90a, &config, &options).expect(&what);
            let ptx = std::str::from_utf8(&art.binary).expect("PTX is text");
            assert!(
                ptx.contains("wgmma.mma_async") && !ptx.contains("cp.async.bulk"),
                "{what}"
            );
            assert!(
                !art.info
                    .params
                    .iter()
                    .any(|p| matches!(p, KernelParam::TensorMap(_)))
            );
        }
    }
}

// ---- ptxas ------------------------------------------------------------------------------------

fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LINREC_PTXAS").map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("ptxas"))
        .find(|p| p.is_file())
}

/// `ptxas -v` on the PTX: `Some(log)` when it assembles, a panic when it does not, `None`
/// (with a note; a failure under `CI=true`) when ptxas is missing.
fn assemble(ptx: &[u8], target: Target, what: &str) -> Option<String> {
    let Some(exe) = ptxas() else {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI=true but ptxas is missing: run `bash scripts/setup.sh`"
        );
        eprintln!("note: ptxas not found; {what} not assembled");
        return None;
    };
    static N: AtomicUsize = AtomicUsize::new(0);
    let file = std::env::temp_dir().join(format!(
        "linrec-tc-{}-{}.ptx",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, ptx).expect("write a temp file");
    let out = Command::new(&exe)
        .arg(format!("-arch={target}"))
        .args(["-v", "-o", "/dev/null"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
    let _ = std::fs::remove_file(&file);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ptxas rejected {what}:\n{log}");
    Some(log)
}

// ---- NVIDIA kernels ---------------------------------------------------------------------------

/// Compiles `spec` for sm_80 and sm_90 over dtypes × head dims × chunks and checks each PTX.
fn nvidia_kernels_use_tensor_cores(spec: Spec) {
    let mut report = String::new();
    for dtype in [Bf16, F16] {
        for dim in HEAD_DIMS {
            for chunk in CHUNKS {
                for target in [Target::Sm80, Target::Sm90] {
                    let config = config(dtype, dim, chunk);
                    let what = format!("{} {target} {dtype} K=V={dim} C={chunk}", spec.name);
                    let a =
                        compile(&spec, target, &config).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(
                        a.schedule_text.contains("(tensor cores: one kernel)"),
                        "{what}:\n{}",
                        a.schedule_text
                    );
                    let ptx = std::str::from_utf8(&a.binary).expect("PTX is text");
                    let mma = format!(
                        "mma.sync.aligned.m16n8k16.row.col.f32.{}.{}.f32",
                        dtype, dtype
                    );
                    assert!(ptx.contains(&mma), "{what}: no `{mma}`");
                    assert!(ptx.contains("ldmatrix.sync.aligned"), "{what}: no ldmatrix");
                    assert!(
                        ptx.contains(".extern .shared .align 16 .b8 smem[];"),
                        "{what}: the dynamic shared memory is not the extern array"
                    );
                    let shared = u64::from(a.info.shared_bytes);
                    assert!(
                        shared > 0 && shared <= shared_memory_limit(target),
                        "{what}: {shared} bytes of shared memory"
                    );
                    if let Some(log) = assemble(&a.binary, target, &what) {
                        assert!(
                            log.contains("0 bytes spill stores, 0 bytes spill loads"),
                            "{what} spills:\n{log}"
                        );
                        let regs = log
                            .split("Used ")
                            .nth(1)
                            .and_then(|s| s.split(' ').next())
                            .unwrap_or("?");
                        report.push_str(&format!(
                            "{what:<44} {shared:>6} B smem, {regs} registers\n"
                        ));
                    }
                }
            }
        }
    }
    eprint!("{report}");
}

#[test]
fn linear_attn_runs_every_matmul_on_tensor_cores() {
    nvidia_kernels_use_tensor_cores(specs::linear_attn());
}

#[test]
fn retention_runs_every_matmul_on_tensor_cores() {
    nvidia_kernels_use_tensor_cores(specs::retention());
}

#[test]
fn simple_gla_runs_every_matmul_on_tensor_cores() {
    nvidia_kernels_use_tensor_cores(specs::simple_gla());
}

/// sm_90a: in the forward's chunk kernels (fused, output) the operand tiles are swizzled rows
/// (core matrices without whole 64-column blocks) and the matmuls whose M is a multiple of 64
/// run as wgmma (the rest as `mma.sync` reading the same tiles); the state walks and the
/// backward keep sm_90's layout and `mma.sync` (`Part::wgmma_pays`). Every kernel assembles for
/// sm_90a, no forward kernel spills, and ptxas never has to move accumulators between wgmma
/// groups.
#[test]
fn sm_90a_runs_wgmma_on_core_matrices() {
    let mut report = String::new();
    for spec in [
        specs::linear_attn(),
        specs::retention(),
        specs::simple_gla(),
    ] {
        for (dtype, dim, chunk) in [
            (Bf16, 64, 64),
            (Bf16, 128, 64),
            (Bf16, 128, 32),
            (F16, 100, 16),
            (F16, 64, 32),
        ] {
            let config = config(dtype, dim, chunk);
            let what = format!("{} sm_90a {dtype} K=V={dim} C={chunk}", spec.name);
            let a =
                compile(&spec, Target::Sm90a, &config).unwrap_or_else(|e| panic!("{what}: {e}"));
            let b = linrec_compiler::compile_backward(&spec, Target::Sm90a, &config)
                .unwrap_or_else(|e| panic!("{what} backward: {e}"));
            for (art, dir) in [(&a, "forward"), (&b, "backward")] {
                let forward = dir == "forward";
                assert_eq!(
                    art.schedule_text.contains("as 128-byte swizzled rows"),
                    forward,
                    "{what} {dir}:\n{}",
                    art.schedule_text
                );
                let ptx = std::str::from_utf8(&art.binary).expect("PTX is text");
                // wgmma where some M (the chunk, or K padded to 16) is a multiple of 64.
                let expected = forward && (chunk == 64 || dim.div_ceil(16) * 16 % 64 == 0);
                assert_eq!(
                    ptx.contains("wgmma.mma_async.sync.aligned.m64n"),
                    expected,
                    "{what} {dir}"
                );
                if expected {
                    assert!(
                        ptx.contains(&format!("k16.f32.{dtype}.{dtype}")),
                        "{what} {dir}"
                    );
                }
                // The chunk kernels' barriers fence the async proxy, and their module's shared
                // memory is 1024-byte aligned, wgmma or not.
                assert_eq!(
                    ptx.contains("fence.proxy.async.shared::cta"),
                    forward,
                    "{what} {dir}"
                );
                assert_eq!(
                    ptx.contains(".extern .shared .align 1024 .b8 smem[];"),
                    forward,
                    "{what} {dir}"
                );
                if chunk < 64 {
                    assert!(ptx.contains("ldmatrix.sync.aligned"), "{what} {dir}");
                }
                // q, k, v by TMA where their tiles are swizzled (whole 64-column blocks), in
                // the forward's chunk kernels only.
                let tma = forward && dim % 64 == 0;
                for needle in [
                    "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes",
                    "mbarrier.try_wait.parity.shared::cta.b64",
                    "mbarrier.arrive.expect_tx.shared::cta.b64",
                ] {
                    assert_eq!(ptx.contains(needle), tma, "{what} {dir}: {needle}");
                }
                assert_eq!(art.schedule_text.contains("by TMA"), tma, "{what} {dir}");
                if let Some(log) = assemble(&art.binary, Target::Sm90a, &what) {
                    let kernels = log.matches("Compiling entry function").count();
                    let clean = log
                        .matches("0 bytes spill stores, 0 bytes spill loads")
                        .count();
                    // The forward's kernels never spill (as on sm_80/sm_90, targets.rs); the
                    // backward's gradient kernel sits at 255 registers on both paths and may
                    // spill a few bytes (reported, as it is not checked on sm_90 either).
                    if dir == "forward" {
                        assert_eq!(clean, kernels, "{what} {dir} spills:\n{log}");
                    }
                    // ptxas moving accumulators between wgmma groups (C7519) serialises them.
                    assert!(!log.contains("C7519"), "{what} {dir}:\n{log}");
                    report.push_str(&format!(
                        "{what:<40} {dir:<8} {kernels} kernels, {} spill-free\n",
                        clean
                    ));
                }
            }
        }
    }
    eprint!("{report}");
}

#[test]
fn f32_and_other_targets_keep_the_portable_path() {
    for spec in specs::supported() {
        // f32 on NVIDIA: no 16-bit MMA applies.
        let a = compile(&spec, Target::Sm90, &config(F32, 64, 64)).expect("compiles");
        let ptx = std::str::from_utf8(&a.binary).expect("PTX is text");
        assert!(!ptx.contains("mma.sync") && !ptx.contains("ldmatrix"));
        assert_eq!(a.info.shared_bytes, 0);
        assert!(a.schedule_text.contains("(portable: one kernel)"));
        // bf16 on SPIR-V (AMD runs it on matrix cores: matrix_core.rs).
        let s = schedule_of(&spec, Target::Spirv, &config(Bf16, 64, 64));
        assert_eq!(s.matmul, MatmulPath::Portable, "{} spirv", spec.name);
        assert_eq!(s.shared_bytes, 0);
        assert!(s.operands.iter().all(Option::is_none));
        assert!(s.max_registers.is_none());
        // Asked for: the portable path on NVIDIA too (what LINREC_TENSOR_CORES=0 does).
        let options = CompileOptions::default().with_matmul(MatmulChoice::Portable);
        let a =
            compile_with(&spec, Target::Sm80, &config(Bf16, 64, 64), &options).expect("compiles");
        let ptx = std::str::from_utf8(&a.binary).expect("PTX is text");
        assert!(!ptx.contains("mma.sync") && !ptx.contains("smem"));
    }
    let a = compile(&specs::simple_gla(), Target::Spirv, &config(F16, 64, 64)).expect("compiles");
    assert!(!a.mlir.contains("nvvm") && !a.mlir.contains("gpu.dynamic_shared_memory"));
}

// ---- the layout -------------------------------------------------------------------------------

/// The span of an operand tile in the arena.
fn span(t: &OperandTile) -> (u64, u64) {
    (t.offset, t.offset + t.len())
}

#[test]
fn operand_tiles_are_aligned_padded_and_never_overlap_while_live() {
    for spec in specs::supported() {
        for target in [Target::Sm80, Target::Sm90] {
            for dim in HEAD_DIMS {
                for chunk in CHUNKS {
                    let cfg = config(Bf16, dim, chunk);
                    let s = schedule_of(&spec, target, &cfg);
                    let what = format!("{} {target} K=V={dim} C={chunk}", spec.name);
                    // Every supported config fits: K = V = 256 included.
                    assert_eq!(s.matmul, MatmulPath::TensorCore, "{what}:\n{s}");
                    // The operands, then (when they fit) the f32 tiles, 16-byte aligned.
                    let tiles = if s.tiles_shared {
                        assert_eq!(s.scratch, 0, "{what}");
                        linrec_compiler::schedule::tiles_offset(2 * s.operand_arena)
                            + 4 * s.scratch_tiles()
                    } else {
                        2 * s.operand_arena
                    };
                    assert_eq!(s.shared_bytes as u64, tiles, "{what}");
                    assert!(
                        s.shared_bytes as u64
                            <= linrec_compiler::schedule::shared_memory_limit(target)
                    );
                    assert!([32, 64].contains(&s.block_v) || s.block_v == dim, "{what}");
                    let plan = &s.plan;
                    let n = plan.nodes.len();
                    // Last reader of each operand tile (matmuls, and elementwise nodes that
                    // read q, k, v, which have no f32 tile).
                    let mut last = vec![None; n];
                    for (i, node) in plan.nodes.iter().enumerate() {
                        for v in operands_of(&node.op) {
                            let by_matmul = matches!(node.op, plan::Op::Matmul { .. });
                            if by_matmul || s.values[v.0] == Placement::Operand {
                                assert!(s.operands[v.0].is_some(), "{what}: %{} read", v.0);
                                last[v.0] = Some(i);
                            }
                        }
                    }
                    for (i, t) in s.operands.iter().enumerate() {
                        let Some(t) = t else { continue };
                        assert_eq!(t.offset % 8, 0, "{what}: %{i} is not 16-byte aligned");
                        assert_eq!(t.rows_padded % 16, 0, "{what}");
                        assert_eq!(t.cols_padded % 16, 0, "{what}");
                        assert!(t.rows_padded - t.rows < 16 && t.cols_padded - t.cols < 16);
                        assert_eq!(t.stride, t.cols_padded + 8, "{what}");
                        assert!(t.offset + t.len() <= s.operand_arena, "{what}");
                        // No tile written while this one is live overlaps it.
                        let end = last[i].unwrap_or(i);
                        for (j, u) in s.operands.iter().enumerate().take(end + 1).skip(i + 1) {
                            let Some(u) = u else { continue };
                            let ((a0, a1), (b0, b1)) = (span(t), span(u));
                            assert!(
                                a1 <= b0 || b1 <= a0,
                                "{what}: %{j} overwrites %{i}, read until %{end}"
                            );
                        }
                    }
                    // Matmuls read operand tiles only; sinks have f32 tiles, or the output
                    // goes straight to `o` from its fused node.
                    assert!(
                        s.values[s.output.0].tile().is_some()
                            || s.values[s.output.0] == schedule::Placement::Output
                    );
                    assert!(s.values[s.state_out.0].tile().is_some());
                }
            }
        }
    }
}

fn operands_of(op: &plan::Op) -> Vec<plan::ValueId> {
    use plan::Op;
    match op {
        Op::L2NormRows(x) | Op::CumSum(x) | Op::Last(x) | Op::PairDiff(x) | Op::Exp2(x) => {
            vec![*x]
        }
        Op::MaskCausal { x, .. } => vec![*x],
        Op::Mul(a, b) | Op::Add(a, b) | Op::Sub(a, b) | Op::Matmul { a, b, .. } => vec![*a, *b],
        _ => vec![],
    }
}

#[test]
fn schedule_snapshot_with_padding() {
    // K = V = 100: K pads to 112, the V block of 64 columns needs none, the last block has 36
    // valid columns (zeroed by the loads).
    let s = schedule_of(&specs::simple_gla(), Target::Sm90, &config(Bf16, 100, 32));
    insta::assert_snapshot!("schedule_forward_simple_gla_k100_c32", s.to_string());
}

// ---- the layout, end to end on the CPU (emulated) -----------------------------------------

#[test]
fn tensor_core_layout_runs_on_opencl_linear_attn() {
    let s = specs::linear_attn;
    check(
        "linear_attn (tensor-core layout)",
        &[
            Case::new(s(), Bf16, Dims::new(2, 1, 2, 16, 16), 64).emulated(),
            Case::new(s(), Bf16, Dims::new(1, 63, 2, 64, 64), 64)
                .h0()
                .emulated(),
            Case::new(s(), F16, Dims::new(1, 500, 1, 128, 128), 64)
                .h0()
                .emulated(),
            Case::new(s(), Bf16, Dims::new(1, 75, 1, 60, 100), 32)
                .h0()
                .varlen(&[0, 0, 30, 75])
                .emulated(),
        ],
    );
}

#[test]
fn tensor_core_layout_runs_on_opencl_retention() {
    let s = specs::retention;
    check(
        "retention (tensor-core layout)",
        &[
            Case::new(
                s(),
                Bf16,
                Dims::new(1, 75, 1, 60, 100).with_value_heads(2),
                32,
            )
            .h0()
            .emulated(),
            Case::new(s(), F16, Dims::new(1, 75, 2, 64, 64), 16)
                .h0()
                .varlen(&[0, 0, 17, 17, 75])
                .emulated(),
            Case::new(s(), Bf16, Dims::new(2, 500, 1, 128, 128), 64).emulated(),
            Case::new(s(), F16, Dims::new(1, 63, 1, 100, 60), 64)
                .h0()
                .emulated(),
        ],
    );
}

#[test]
fn tensor_core_layout_runs_on_opencl_simple_gla() {
    let s = specs::simple_gla;
    check(
        "simple_gla (tensor-core layout)",
        &[
            Case::new(
                s(),
                Bf16,
                Dims::new(2, 75, 2, 64, 64).with_value_heads(4),
                64,
            )
            .h0()
            .emulated(),
            Case::new(s(), F16, Dims::new(1, 95, 1, 128, 16), 32)
                .h0()
                .varlen(&[0, 30, 30, 95])
                .emulated(),
            Case::new(s(), Bf16, Dims::new(1, 500, 1, 16, 128), 16).emulated(),
            Case::new(s(), Bf16, Dims::new(1, 1, 1, 100, 100), 64).emulated(),
            Case::new(s(), Bf16, Dims::new(1, 40, 1, 256, 256), 64)
                .h0()
                .emulated(),
            Case::new(s(), F16, Dims::new(1, 33, 1, 1, 3), 16)
                .h0()
                .emulated(),
        ],
    );
}

#[test]
fn core_matrix_layout_runs_on_opencl() {
    // sm_90a's operand tiles (8x8 core matrices, what wgmma reads), emulated: every writer
    // and reader of an operand tile through the layout's index, padding, GVA, varlen.
    check(
        "core-matrix layout",
        &[
            Case::new(specs::linear_attn(), Bf16, Dims::new(1, 63, 2, 64, 64), 64)
                .h0()
                .core_matrices(),
            Case::new(specs::retention(), F16, Dims::new(1, 75, 1, 60, 100), 32)
                .h0()
                .varlen(&[0, 0, 30, 75])
                .core_matrices(),
            Case::new(
                specs::simple_gla(),
                Bf16,
                Dims::new(2, 150, 2, 128, 128).with_value_heads(4),
                64,
            )
            .h0()
            .core_matrices(),
            Case::new(specs::simple_gla(), Bf16, Dims::new(1, 40, 1, 100, 16), 16).core_matrices(),
            Case::new(specs::beta_l2(), Bf16, Dims::new(1, 63, 1, 64, 64), 32)
                .h0()
                .core_matrices(),
        ],
    );
}

#[test]
fn tensor_core_layout_runs_on_opencl_beta_l2_and_rate() {
    check(
        "beta_l2, rate (tensor-core layout)",
        &[
            Case::new(
                specs::beta_l2(),
                Bf16,
                Dims::new(1, 63, 1, 64, 64).with_value_heads(2),
                32,
            )
            .h0()
            .emulated(),
            Case::new(specs::beta_l2(), F16, Dims::new(1, 80, 2, 60, 60), 16)
                .h0()
                .varlen(&[0, 13, 13, 80])
                .emulated(),
            Case::new(
                specs::rate(),
                Bf16,
                Dims::new(1, 500, 1, 64, 64).with_value_heads(2),
                64,
            )
            .emulated(),
        ],
    );
}
