//! The schedule and emit stages: snapshots of the schedule and of the emitted MLIR for the
//! additive built-ins at one config (bf16, K = V = 64, C = 64, h0 + final state), for SPIR-V
//! and sm_90, and the launch metadata the schedule records.

use linrec_compiler::lower::Target;
use linrec_compiler::{emit, plan, schedule};
use linrec_spec::Role;
use linrec_spec::launch::{KernelParam, SizeExpr, SizeSym};

use crate::specs;

fn schedule_of(spec: &linrec_spec::Spec, target: Target) -> schedule::Schedule {
    let p = plan::forward(spec).expect("supported");
    schedule::forward(&p, spec, target, &specs::config()).expect("schedules")
}

#[test]
fn schedule_snapshots_of_the_additive_builtins() {
    for s in [
        specs::linear_attn(),
        specs::retention(),
        specs::simple_gla(),
    ] {
        let sched = schedule_of(&s, Target::Sm90);
        insta::assert_snapshot!(format!("schedule_forward_{}", s.name), sched.to_string());
    }
}

#[test]
fn emitted_mlir_snapshots_for_spirv_and_sm_90() {
    for s in [
        specs::linear_attn(),
        specs::retention(),
        specs::simple_gla(),
    ] {
        for target in [Target::Spirv, Target::Sm90] {
            let text = emit::forward(&schedule_of(&s, target)).expect("emits");
            // Deterministic: a second emission is byte-identical.
            assert_eq!(
                text,
                emit::forward(&schedule_of(&s, target)).expect("emits")
            );
            insta::assert_snapshot!(format!("emit_forward_{}_{}", s.name, target), text);
        }
    }
}

#[test]
fn emitted_mlir_differs_per_vendor_where_documented() {
    let s = specs::simple_gla();
    let spirv = emit::forward(&schedule_of(&s, Target::Spirv)).expect("emits");
    let nv = emit::forward(&schedule_of(&s, Target::Sm90)).expect("emits");
    let amd = emit::forward(&schedule_of(&s, Target::Gfx942)).expect("emits");
    // Buffers: dynamic memrefs (bf16 as i16) vs static flat memrefs for the bare-pointer ABI.
    assert!(spirv.contains("memref<?xi16>") && !spirv.contains("bf16"));
    assert!(nv.contains("memref<1099511627776xbf16>"));
    // Entry ABI, exp2, barrier.
    assert!(
        spirv.contains(
            "spirv.entry_point_abi = #spirv.entry_point_abi<workgroup_size = [128, 1, 1]>"
        )
    );
    // Eight warps on tensor cores (TENSOR_CORE_THREADS), four elsewhere.
    assert!(nv.contains("known_block_size = array<i32: 256, 1, 1>"));
    assert!(amd.contains("known_block_size = array<i32: 128, 1, 1>"));
    assert!(spirv.contains("spirv.CL.exp") && spirv.contains("CrossWorkgroupMemory"));
    assert!(nv.contains("llvm.nvvm.ex2.approx.f32") && nv.contains("gpu.barrier"));
    assert!(amd.contains("llvm.amdgcn.exp2.f32") && !amd.contains("nvvm"));
    // No math-dialect ops: they would need libdevice / ROCm device libraries.
    for text in [&spirv, &nv, &amd] {
        assert!(!text.contains("math."), "{text}");
    }
}

#[test]
fn kernel_info_records_the_launch() {
    let sched = schedule_of(&specs::retention(), Target::Spirv);
    let info = sched.kernel_info();
    assert_eq!(info.entry, "linrec_retention_fwd");
    assert_eq!(info.direction, "forward");
    assert_eq!(info.target, "spirv");
    assert_eq!(info.block, [128, 1, 1]);
    assert_eq!(info.shared_bytes, 0);
    assert_eq!(
        info.params,
        vec![
            KernelParam::Input(Role::Query),
            KernelParam::Input(Role::Key),
            KernelParam::Input(Role::Value),
            KernelParam::DecayRates,
            KernelParam::InitialState,
            KernelParam::Output,
            KernelParam::FinalState,
            KernelParam::Scratch,
            KernelParam::SeqLen,
            KernelParam::Heads,
            KernelParam::ValueHeads,
            KernelParam::Scale,
        ]
    );
    // grid = (ceil(V/32), N·HV, 1)
    let dims = linrec_spec::Dims::new(3, 10, 2, 64, 100).with_value_heads(4);
    let grid: Vec<u64> = info
        .grid
        .iter()
        .map(|e| e.eval(&dims, 3).expect("fits"))
        .collect();
    assert_eq!(grid, vec![4, 12, 1]);
    assert_eq!(
        info.grid[1],
        SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv))
    );
    assert!(info.scratch >= 64 * 32, "the state tile alone is K·BV");
    // The info is plain serde data: the spec hash identifies the spec.
    assert_eq!(info.spec_hash, specs::retention().hash().hex());
}

#[test]
fn scratch_is_reused_by_liveness() {
    // Without reuse simple_gla's 25 tiles would need far more than the peak of live ones.
    let sched = schedule_of(&specs::simple_gla(), Target::Sm90);
    let total: u64 = sched
        .values
        .iter()
        .filter_map(|p| p.tile())
        .map(|t| t.len())
        .sum();
    assert!(
        sched.scratch < total / 2,
        "scratch {} vs {total} without reuse",
        sched.scratch
    );
    // Tiles alive at once never overlap: a value's tile is intact from its node to its last
    // reader (the sinks read after the last node).
    use linrec_compiler::plan::{Op, ValueId};
    let plan = &sched.plan;
    let operands = |op: &Op| -> Vec<ValueId> {
        match op {
            Op::L2NormRows(x) | Op::CumSum(x) | Op::Last(x) | Op::PairDiff(x) | Op::Exp2(x) => {
                vec![*x]
            }
            Op::MaskCausal { x, .. } => vec![*x],
            Op::Mul(a, b) | Op::Add(a, b) | Op::Sub(a, b) | Op::Matmul { a, b, .. } => {
                vec![*a, *b]
            }
            _ => vec![],
        }
    };
    let n = plan.nodes.len();
    let mut last = vec![0; n];
    for (i, node) in plan.nodes.iter().enumerate() {
        for v in operands(&node.op) {
            last[v.0] = i;
        }
    }
    last[sched.output.0] = n;
    last[sched.state_out.0] = n;
    let overlap = |a: schedule::Tile, b: schedule::Tile| {
        a.offset < b.offset + b.len() && b.offset < a.offset + a.len()
    };
    for (i, node) in plan.nodes.iter().enumerate() {
        let Some(written) = sched.values[i].tile() else {
            continue;
        };
        if matches!(node.op, Op::StateIn) {
            continue;
        }
        // The fused kernel's next state is written over S in place, after S's last reader.
        if i == sched.state_out.0 && written == sched.state {
            let s_in = plan.nodes.iter().position(|n| matches!(n.op, Op::StateIn));
            let s_in = s_in.expect("a forward plan reads the state");
            assert!(last[s_in] <= i, "S is read by %{} after %{i}", last[s_in]);
            continue;
        }
        for (v, placement) in sched.values.iter().enumerate().take(i) {
            if let Some(live) = placement.tile() {
                if last[v] >= i {
                    assert!(
                        !overlap(written, live),
                        "%{i} overwrites %{v}, read until %{}",
                        last[v]
                    );
                }
            }
        }
        assert!(!overlap(written, sched.state), "%{i} overwrites the state");
    }
}

#[test]
fn split_forward_schedule_snapshot() {
    let s = specs::simple_gla();
    let p = plan::forward(&s).expect("supported");
    let split = schedule::forward_split(
        &p,
        &s,
        Target::Sm90,
        &specs::config(),
        schedule::MatmulChoice::Auto,
    )
    .expect("schedules");
    insta::assert_snapshot!(
        "schedule_split_forward_simple_gla",
        format!("{}\n{}", split.states, split.output)
    );
    let info = split.kernel_info();
    assert_eq!(info.entry, "linrec_simple_gla_fwd_states");
    assert!(info.params.contains(&KernelParam::ChunkStates));
    assert!(!info.params.contains(&KernelParam::Output));
    let then = &info.then[0];
    assert_eq!(then.entry, "linrec_simple_gla_fwd_output");
    assert!(then.params.contains(&KernelParam::ChunkStates));
    assert!(then.params.contains(&KernelParam::Output));
    assert!(!then.params.contains(&KernelParam::FinalState));
    assert_eq!(
        then.grid[0],
        SizeExpr::product(
            SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::T), SizeExpr::Const(64)),
            SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(64)),
        )
    );
}

/// The split-scan over T segments: its four kernels' schedules, the combine kernel's MLIR
/// (its own emitter), and the launch metadata (segment slots along z, the decay product only
/// where the state decays).
#[test]
fn scan_forward_schedule_snapshot() {
    let config = specs::config();
    for s in [specs::simple_gla(), specs::linear_attn()] {
        let p = plan::forward(&s).expect("supported");
        let scan =
            schedule::forward_scan(&p, &s, Target::Sm90, &config, schedule::MatmulChoice::Auto)
                .expect("schedules");
        let text = format!(
            "{}\n{}\n{}\n{}",
            scan.segments, scan.combine, scan.states, scan.output
        );
        insta::assert_snapshot!(format!("schedule_scan_forward_{}", s.name), text);
        let decays = s.name != "linear_attn";
        let launches = scan.launches();
        let takes = |k: usize, p: KernelParam| launches[k].params.contains(&p);
        assert_eq!(takes(0, KernelParam::SegmentDecays), decays);
        assert_eq!(takes(1, KernelParam::SegmentDecays), decays);
        assert!(takes(0, KernelParam::SegmentStates) && !takes(0, KernelParam::ChunkStates));
        assert!(takes(1, KernelParam::InitialState) && !takes(0, KernelParam::InitialState));
        assert!(takes(2, KernelParam::ChunkStates) && takes(2, KernelParam::FinalState));
        assert!(takes(3, KernelParam::Output) && !takes(2, KernelParam::Output));
        let segments = SizeExpr::ceil_div(
            SizeExpr::sum(SizeExpr::Sym(SizeSym::T), SizeExpr::Const(1)),
            SizeExpr::Const(16 * 64),
        );
        assert_eq!(launches[0].grid[2], segments);
        assert_eq!(launches[2].grid[2], segments);
        assert_eq!(launches[1].grid[2], SizeExpr::Const(1));
        if decays {
            let mlir = emit::forward_scan(&[], &scan).expect("emits");
            let combine = mlir
                .split("gpu.func @")
                .find(|f| f.starts_with("linrec_simple_gla_fwd_combine"))
                .expect("the combine kernel");
            insta::assert_snapshot!("mlir_scan_combine_simple_gla", combine);
        }
    }
}

#[test]
#[ignore = "prints the tensor-core layouts of several sizes (cargo test -- --ignored --nocapture)"]
fn print_tensor_core_layouts() {
    use linrec_spec::launch::{ElementType, KernelConfig};
    for (k, v) in [(64, 64), (128, 128), (256, 256)] {
        let config = KernelConfig {
            dtype: ElementType::Bf16,
            key_dim: k,
            value_dim: v,
            chunk: 64,
            initial_state: false,
            final_state: false,
            varlen: false,
        };
        let s = specs::simple_gla();
        let p = plan::forward(&s).expect("supported");
        let fused = schedule::forward(&p, &s, Target::Sm90, &config).expect("fused");
        let split =
            schedule::forward_split(&p, &s, Target::Sm90, &config, schedule::MatmulChoice::Auto)
                .expect("split");
        for (name, sc) in [
            ("fused", &fused),
            ("states", &split.states),
            ("output", &split.output),
        ] {
            println!(
                "K{k} V{v} {name:<6} BV {:>3} shared {:>6} B tiles_shared {} scratch {}",
                sc.block_v, sc.shared_bytes, sc.tiles_shared, sc.scratch
            );
        }
    }
}

/// The fused tensor-core forwards: the output goes straight to `o`, the next state over `S`,
/// nodes are ordered by level (6 barriers per chunk for simple_gla at K = V ≤ 128, 8 before
/// the ordering, 17 before fusion), and the f32 tiles stay on chip up to K = V = 256.
#[test]
fn fused_forwards_keep_barriers_and_tiles_down() {
    for dim in [64, 128, 256] {
        let s = specs::simple_gla();
        let p = plan::forward(&s).expect("supported");
        let config = linrec_spec::launch::KernelConfig {
            key_dim: dim,
            value_dim: dim,
            ..specs::config()
        };
        let sched = schedule::forward(&p, &s, Target::Sm90, &config).expect("schedules");
        assert_eq!(sched.matmul, schedule::MatmulPath::TensorCore, "K=V={dim}");
        assert!(sched.tiles_shared, "K=V={dim}: f32 tiles off chip");
        assert_eq!(sched.values[sched.output.0], schedule::Placement::Output);
        assert_eq!(
            sched.values[sched.state_out.0],
            schedule::Placement::Tile(sched.state)
        );
        let barriers = sched.barrier_before.iter().filter(|b| **b).count()
            + usize::from(sched.barrier_before_sinks);
        let most = if dim <= 128 { 6 } else { 8 };
        assert!(
            barriers <= most,
            "K=V={dim}: {barriers} barriers per chunk\n{sched}"
        );
    }
}
