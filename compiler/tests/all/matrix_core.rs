//! AMD matrix cores for bf16/f16 kernels (`schedule` module docs, "Matrix cores (AMD)";
//! `emit::mfma`).
//!
//! * The lane layouts: every operand element and every accumulator of a 16×16×16 step is in
//!   exactly one place (lane, element), and the documented holder of an operand element is
//!   the lane whose load reads it.
//! * Every built-in (linear_attn, retention, simple_gla) at bf16 and f16 compiles for gfx90a,
//!   gfx942 (`amdgpu.mfma` → `v_mfma_*`) and gfx1100 (`amdgpu.wmma` → `v_wmma_*`): the HSACO
//!   links, the assembly holds the instructions, the LDS fits 64 KiB, and nothing spills to
//!   scratch (no VGPR spills, private segment 0; SGPR spills, which go to VGPR lanes, are
//!   printed).
//! * Configs whose operand tiles do not fit 64 KiB of LDS at any BV keep the portable path and
//!   say so; f32 stays portable.
//! * The layout end to end without AMD hardware: each kernel compiled for SPIR-V with
//!   [`MatmulChoice::EmulatedMatrixCore`] (the AMD schedule, and every lane computing its own
//!   accumulators from the elements the documented layout gives it, through the kernel's own
//!   address math) runs on Intel's CPU OpenCL runtime against the f64 reference. What that
//!   does and does not prove: `emit::mfma` module docs, "What the emulation proves".

use linrec_compiler::lower::{LDS_LIMIT_BYTES, Target};
use linrec_compiler::schedule::{self, MatmulPath, MatrixCore};
use linrec_compiler::{compile, plan};
use linrec_spec::launch::{ElementType, KernelConfig};
use linrec_spec::{Dims, Spec};

use crate::e2e::{Case, check};
use crate::specs;

use ElementType::{Bf16, F16, F32};
use MatrixCore::{Mfma16x16x16 as Mfma, Wmma16x16x16 as Wmma};

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

// ---- the lane layouts -----------------------------------------------------------------------

#[test]
fn lane_layouts_cover_every_element_once() {
    for core in [Mfma, Wmma] {
        let (lanes, e_op, e_acc) = (
            core.wave_size(),
            core.operand_elements(),
            core.accumulators(),
        );
        // Operands: each (m, k) of a 16×16 block once per 16 lanes (WMMA's lanes 16–31
        // repeat 0–15), and the documented holder reads it.
        let mut seen = vec![0; 256];
        for lane in 0..lanes {
            for e in 0..e_op {
                let (m, k) = core.operand_coords(lane, e);
                assert!((0..16).contains(&m) && (0..16).contains(&k), "{core:?}");
                seen[(m * 16 + k) as usize] += 1;
            }
        }
        let copies = lanes * e_op / 256;
        assert!(seen.iter().all(|&n| n == copies), "{core:?}: {seen:?}");
        for m in 0..16 {
            for k in 0..16 {
                let (lane, e) = core.operand_holder(m, k);
                assert_eq!(core.operand_coords(lane, e), (m, k), "{core:?}");
            }
        }
        // Accumulators: each (row, col) of the 16×16 result exactly once.
        let mut seen = vec![0; 256];
        for lane in 0..lanes {
            for e in 0..e_acc {
                let (r, c) = core.result_coords(lane, e);
                seen[(r * 16 + c) as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{core:?}: {seen:?}");
    }
    // The documented examples (reference/mlir 3a, 3b).
    assert_eq!(Mfma.operand_coords(37, 2), (5, 10));
    assert_eq!(Mfma.result_coords(37, 2), (10, 5));
    assert_eq!(Wmma.operand_coords(21, 9), (5, 9));
    assert_eq!(Wmma.result_coords(21, 3), (7, 5));
}

// ---- HSACO for every AMD target -------------------------------------------------------------

/// Compiles the built-ins at bf16 and f16 for `target` and checks each code object.
fn amd_kernels_use_matrix_cores(target: Target) {
    let core = MatrixCore::for_target(target).expect("an AMD target");
    let instruction = match core {
        Mfma => "v_mfma_f32_16x16x16",
        Wmma => "v_wmma_f32_16x16x16",
    };
    let mut report = String::new();
    for spec in [
        specs::linear_attn(),
        specs::retention(),
        specs::simple_gla(),
    ] {
        for dtype in [Bf16, F16] {
            let cfg = config(dtype, 64, 64);
            let what = format!("{} {target} {dtype} K=V=64 C=64", spec.name);
            let start = std::time::Instant::now();
            let a = compile(&spec, target, &cfg).unwrap_or_else(|e| panic!("{what}: {e}"));
            let seconds = start.elapsed().as_secs_f64();
            assert!(
                a.schedule_text.contains("(matrix cores: one kernel)"),
                "{what}:\n{}",
                a.schedule_text
            );
            assert!(
                a.binary.starts_with(b"\x7fELF"),
                "{what}: not a code object"
            );
            assert!(
                a.mlir
                    .contains(core.name().split(' ').next().unwrap_or("?"))
            );
            let asm = a.asm.as_deref().expect("AMD assembly is on by default");
            let count = asm.matches(instruction).count();
            assert!(count > 0, "{what}: no `{instruction}` in the assembly");
            let meta = |key: &str| -> u64 {
                asm.lines()
                    .find_map(|l| l.trim().strip_prefix(key)?.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{what}: no `{key}` in the assembly"))
            };
            assert_eq!(meta(".vgpr_spill_count:"), 0, "{what}: VGPR spills");
            assert_eq!(meta(".private_segment_fixed_size:"), 0, "{what}: scratch");
            let lds = meta(".group_segment_fixed_size:");
            assert!(
                lds > 0 && lds <= LDS_LIMIT_BYTES,
                "{what}: {lds} bytes of LDS"
            );
            assert_eq!(a.info.shared_bytes, 0, "{what}: LDS is static on AMD");
            report.push_str(&format!(
                "{what:<36} {count:>3} × {instruction}, {lds} B LDS, {} VGPRs, {} SGPR spills, {seconds:.2} s\n",
                meta(".vgpr_count:"),
                meta(".sgpr_spill_count:"),
            ));
        }
    }
    eprint!("{report}");
}

#[test]
fn gfx90a_kernels_use_mfma() {
    amd_kernels_use_matrix_cores(Target::Gfx90a);
}

#[test]
fn gfx942_kernels_use_mfma() {
    amd_kernels_use_matrix_cores(Target::Gfx942);
}

#[test]
fn gfx1100_kernels_use_wmma() {
    amd_kernels_use_matrix_cores(Target::Gfx1100);
}

// ---- schedules ------------------------------------------------------------------------------

fn schedule_of(spec: &Spec, target: Target, cfg: &KernelConfig) -> schedule::Schedule {
    let p = plan::forward(spec).expect("supported");
    schedule::forward(&p, spec, target, cfg).expect("schedules")
}

#[test]
fn lds_budget_picks_the_block_or_falls_back() {
    let spec = specs::simple_gla();
    for target in [Target::Gfx90a, Target::Gfx942, Target::Gfx1100] {
        let core = MatrixCore::for_target(target).expect("AMD");
        for dim in [16, 60, 64, 100, 128, 160, 192, 256] {
            for chunk in [16, 32, 64] {
                let s = schedule_of(&spec, target, &config(Bf16, dim, chunk));
                let what = format!("{target} K=V={dim} C={chunk}");
                // Only K = V ≥ 192 at chunk 64 needs more than 64 KiB at every BV.
                if dim >= 192 && chunk == 64 {
                    assert_eq!(s.matmul, MatmulPath::Portable, "{what}");
                    let note = s.fallback.as_deref().unwrap_or_default();
                    assert!(
                        note.contains("of LDS") && note.contains("65536 bytes"),
                        "{what}: {note}"
                    );
                    assert!(s.to_string().contains("  note     portable matmuls"));
                    continue;
                }
                assert_eq!(s.matmul, MatmulPath::MatrixCore(core), "{what}:\n{s}");
                assert!(2 * s.operand_arena <= LDS_LIMIT_BYTES, "{what}");
                assert_eq!(s.shared_bytes, 0, "{what}");
                assert!(
                    [16, 32, 64].contains(&s.block_v) || s.block_v == dim,
                    "{what}"
                );
            }
        }
        // K = V = 128 at chunk 64, the hot config, fits (at BV 32).
        let s = schedule_of(&spec, target, &config(Bf16, 128, 64));
        assert_eq!((s.matmul, s.block_v), (MatmulPath::MatrixCore(core), 32));
        // f32 keeps the portable path.
        let s = schedule_of(&spec, target, &config(F32, 64, 64));
        assert_eq!(s.matmul, MatmulPath::Portable);
        assert!(s.operands.iter().all(Option::is_none));
    }
}

// ---- the layout, end to end on the CPU (emulated) -------------------------------------------

#[test]
fn mfma_layout_runs_on_opencl_linear_attn() {
    let s = specs::linear_attn;
    check(
        "linear_attn (matrix-core layouts)",
        &[
            Case::new(s(), Bf16, Dims::new(1, 63, 2, 64, 64), 64)
                .h0()
                .matrix_core(Mfma),
            Case::new(s(), Bf16, Dims::new(1, 75, 1, 100, 100), 32)
                .h0()
                .varlen(&[0, 0, 30, 75])
                .matrix_core(Mfma),
            Case::new(s(), F16, Dims::new(1, 75, 1, 128, 128), 64)
                .h0()
                .matrix_core(Wmma),
        ],
    );
}

#[test]
fn mfma_layout_runs_on_opencl_retention() {
    let s = specs::retention;
    check(
        "retention (matrix-core layouts)",
        &[
            Case::new(
                s(),
                Bf16,
                Dims::new(2, 75, 1, 64, 64).with_value_heads(2),
                64,
            )
            .matrix_core(Mfma),
            Case::new(s(), F16, Dims::new(1, 63, 1, 100, 100), 16)
                .h0()
                .varlen(&[0, 0, 17, 63])
                .matrix_core(Wmma),
            Case::new(s(), Bf16, Dims::new(1, 75, 1, 128, 128), 32)
                .h0()
                .matrix_core(Mfma),
        ],
    );
}

#[test]
fn mfma_layout_runs_on_opencl_simple_gla() {
    let s = specs::simple_gla;
    check(
        "simple_gla (matrix-core layouts)",
        &[
            // The hot config: BV 32 and in-place q ⊙ 2^b, k ⊙ 2^(b_C − b) under 64 KiB.
            Case::new(s(), Bf16, Dims::new(1, 75, 1, 128, 128), 64)
                .h0()
                .matrix_core(Mfma),
            Case::new(
                s(),
                Bf16,
                Dims::new(1, 63, 2, 100, 100).with_value_heads(4),
                16,
            )
            .matrix_core(Wmma),
            Case::new(s(), F16, Dims::new(1, 95, 1, 64, 64), 32)
                .h0()
                .varlen(&[0, 30, 30, 95])
                .matrix_core(Wmma),
            // K = V = 256 fits at chunk 32 (BV 32).
            Case::new(s(), Bf16, Dims::new(1, 40, 1, 256, 256), 32)
                .h0()
                .matrix_core(Mfma),
            Case::new(specs::beta_l2(), Bf16, Dims::new(1, 63, 1, 64, 64), 32)
                .h0()
                .matrix_core(Mfma),
        ],
    );
}
