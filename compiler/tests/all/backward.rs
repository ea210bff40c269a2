//! The backward kernel: schedule snapshots, MLIR that lowers for every target, and end to end
//! on the CPU OpenCL runtime against the f64 reference's gradients (see `e2e_backward` below).

use linrec_compiler::lower::Target;
use linrec_compiler::schedule::{self, MatmulChoice};
use linrec_compiler::{CompileOptions, ForwardForm, compile_backward_with, compile_with, plan};
use linrec_spec::Role;
use linrec_spec::launch::{KernelParam, SizeExpr, SizeSym};

use crate::specs;

fn backward_schedule(spec: &linrec_spec::Spec, target: Target) -> schedule::BackwardSchedule {
    let fwd = plan::forward(spec).expect("supported");
    let bwd = plan::backward(spec).expect("derived");
    schedule::backward(
        &fwd,
        &bwd,
        spec,
        target,
        &specs::config(),
        MatmulChoice::Auto,
    )
    .expect("schedules")
}

#[test]
fn backward_schedule_snapshots_of_the_additive_builtins() {
    for s in [
        specs::linear_attn(),
        specs::retention(),
        specs::simple_gla(),
    ] {
        let sched = backward_schedule(&s, Target::Spirv);
        insta::assert_snapshot!(format!("schedule_backward_{}", s.name), sched.to_string());
    }
}

#[test]
fn backward_mlir_snapshot_of_simple_gla() {
    let sched = backward_schedule(&specs::simple_gla(), Target::Spirv);
    let text = linrec_compiler::emit::backward(&sched).expect("emits");
    insta::assert_snapshot!("emit_backward_simple_gla_spirv", text);
}

#[test]
fn backward_kernel_info_records_the_launch() {
    let info = backward_schedule(&specs::simple_gla(), Target::Sm90).kernel_info();
    assert_eq!(info.direction, "backward");
    let pairs = SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::H));
    // Kernel 1: the states and dh per (value block of 64, sequence, q/k head).
    assert_eq!(info.entry, "linrec_simple_gla_bwd_dh");
    assert_eq!(
        info.grid,
        [
            SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(64)),
            pairs.clone(),
            SizeExpr::Const(1),
        ]
    );
    for p in [
        KernelParam::GradOutput,
        KernelParam::GradFinalState,
        KernelParam::GradInitialState,
        KernelParam::ChunkStates,
        KernelParam::ChunkStatesGiven,
        KernelParam::ChunkStateGrads,
    ] {
        assert!(
            info.params.contains(&p),
            "{p:?} missing from {:?}",
            info.params
        );
    }
    assert!(!info.params.contains(&KernelParam::Grad(Role::Query)));
    // ... and again with blocks of 32 and 16 columns, for grids with few workgroups.
    let narrower: Vec<(String, SizeExpr)> = info
        .narrower
        .iter()
        .map(|l| (l.entry.clone(), l.grid[0].clone()))
        .collect();
    let want: Vec<(String, SizeExpr)> = [32, 16]
        .map(|w| {
            (
                format!("linrec_simple_gla_bwd_dh_v{w}"),
                SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(w)),
            )
        })
        .to_vec();
    assert_eq!(narrower, want);
    assert!(info.narrower.iter().all(|l| l.params == info.params));
    // Kernel 2: the gradients per (8 chunks, sequence, q/k head).
    let [grads] = info.then.as_slice() else {
        panic!("one more launch expected: {:?}", info.then);
    };
    assert_eq!(grads.entry, "linrec_simple_gla_bwd");
    assert_eq!(
        grads.grid,
        [
            SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::T), SizeExpr::Const(8 * 64)),
            pairs,
            SizeExpr::Const(1),
        ]
    );
    for p in [
        KernelParam::GradOutput,
        KernelParam::Grad(Role::Query),
        KernelParam::Grad(Role::Key),
        KernelParam::Grad(Role::Value),
        KernelParam::Grad(Role::Gate),
        KernelParam::ChunkStates,
        KernelParam::ChunkStateGrads,
        KernelParam::GradAccumulator(Role::Query),
        KernelParam::GradAccumulator(Role::Key),
    ] {
        assert!(
            grads.params.contains(&p),
            "{p:?} missing from {:?}",
            grads.params
        );
    }
    // At K = V = 64 both kernels' f32 tiles fit in shared memory next to the operands.
    assert_eq!((info.scratch, grads.scratch), (0, 0));
    assert!(info.shared_bytes > 0 && grads.shared_bytes > info.shared_bytes);
    // A decay-rate input's gradient is derived but not written by the kernel.
    let rate = backward_schedule(&specs::rate(), Target::Spirv);
    assert_eq!(rate.dropped, vec![Role::DecayRate]);
    assert!(
        !rate
            .kernel_info()
            .params
            .contains(&KernelParam::Grad(Role::DecayRate))
    );
}

#[test]
fn backward_kernels_lower_for_every_target() {
    let options = CompileOptions::default().with_amd_assembly(false);
    for spec in specs::supported() {
        for target in Target::ALL {
            let a = compile_backward_with(&spec, target, &specs::config(), &options)
                .unwrap_or_else(|e| panic!("{} for {target}: {e}", spec.name));
            assert!(!a.binary.is_empty(), "{} for {target}", spec.name);
            assert_eq!(a.info.direction, "backward");
        }
    }
}

// ---- end to end -----------------------------------------------------------------------------

use linrec_runtime::{Device, op};
use linrec_spec::launch::{ElementType, KernelConfig};
use linrec_spec::reference::{self, Rng, Tensor};
use linrec_spec::{Dims, RunOptions, Spec, Write};

use crate::e2e::{device, download, round_to, tensor_mut, upload};

/// One backward case: a spec, dtype, sizes, chunk, and the options.
#[derive(Clone, Debug)]
struct Case {
    spec: Spec,
    dtype: ElementType,
    dims: Dims,
    chunk: usize,
    h0: bool,
    dht: bool,
    cu_seqlens: Option<Vec<i64>>,
    /// The tensor-core layout, emulated (operand tiles rounded to the dtype, in scratch).
    emulated: bool,
    /// With `emulated`: sm_90a's operand tiles (core matrices) instead of sm_90's.
    core_matrices: bool,
    /// Run the split-scan forward first and give its chunk states to the backward, whose
    /// split-scan of dh the runtime then takes (the case's sizes must ask for it).
    scan: bool,
}

fn case(spec: Spec, dtype: ElementType, dims: Dims, chunk: usize) -> Case {
    Case {
        spec,
        dtype,
        dims,
        chunk,
        h0: false,
        dht: false,
        cu_seqlens: None,
        emulated: false,
        core_matrices: false,
        scan: false,
    }
}

/// DESIGN §4: o-like gradients 0.005 (0.008 with a β write), gate-like 0.02.
fn bound(spec: &Spec, what: &str) -> f64 {
    match what {
        "dg" | "dbeta" => 0.02,
        _ if spec.write == Write::BetaOuter => 0.008,
        _ => 0.005,
    }
}

/// Runs one case: every gradient's ratio to the reference's, by name.
fn run_backward(dev: &Device, c: &Case, seed: u64) -> Vec<(String, f64)> {
    let d = c.dims;
    let config = KernelConfig {
        dtype: c.dtype,
        key_dim: d.key_dim,
        value_dim: d.value_dim,
        chunk: c.chunk,
        initial_state: c.h0,
        final_state: c.dht,
        varlen: c.cu_seqlens.is_some(),
    };
    let options = match (c.emulated, c.core_matrices) {
        (true, false) => CompileOptions::from_env().with_matmul(MatmulChoice::Emulated),
        (true, true) => CompileOptions::from_env().with_matmul(MatmulChoice::EmulatedCoreMatrices),
        (false, _) => CompileOptions::from_env(),
    };
    let artifact = compile_backward_with(&c.spec, Target::Spirv, &config, &options)
        .unwrap_or_else(|e| panic!("{c:?}: compile failed: {e}"));
    if c.emulated {
        assert!(
            artifact
                .schedule_text
                .contains("(tensor-core layout, emulated: two kernels"),
            "{c:?}: not laid out for tensor cores:\n{}",
            artifact.schedule_text
        );
    }
    let n = c.cu_seqlens.as_ref().map_or(d.batch, |x| x.len() - 1);
    let mut inputs = reference::random_inputs(&c.spec, &d, seed);
    let mut rng = Rng::new(seed ^ 0xbac);
    if c.h0 {
        inputs.h0 = Some(Tensor::from_fn(&d.state_shape(n), || rng.normal()));
    }
    for role in [Role::Query, Role::Key, Role::Value] {
        if let Some(t) = tensor_mut(&mut inputs, role) {
            round_to(t, c.dtype);
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
    let mut d_o = Tensor::from_fn(&d.output_shape(), || rng.normal());
    round_to(&mut d_o, c.dtype);
    let mut dht = c
        .dht
        .then(|| Tensor::from_fn(&d.state_shape(n), || rng.normal()));
    if let Some(t) = dht.as_mut() {
        round_to(t, ElementType::F32);
    }
    let opts = RunOptions {
        scale: None,
        cu_seqlens: c.cu_seqlens.clone(),
        output_final_state: c.dht,
    };
    let want = reference::backward(&c.spec, &inputs, &opts, &d_o, dht.as_ref())
        .expect("reference backward runs");

    let mut buffers = Vec::new();
    for role in c.spec.required_roles() {
        let t = inputs.get(role).expect("random_inputs makes every role");
        let dtype = match role {
            Role::Query | Role::Key | Role::Value => c.dtype,
            _ => ElementType::F32,
        };
        buffers.push((role, upload(dev, t, dtype)));
    }
    let refs: Vec<(Role, &linrec_runtime::DeviceBuffer)> =
        buffers.iter().map(|(r, b)| (*r, b)).collect();
    let h0 = inputs.h0.as_ref().map(|t| upload(dev, t, ElementType::F32));
    let cu = c.cu_seqlens.as_ref().map(|x| {
        let x32: Vec<i32> = x.iter().map(|&v| v as i32).collect();
        dev.upload(&x32, &[x32.len()]).expect("upload cu_seqlens")
    });
    let d_o_buf = upload(dev, &d_o, c.dtype);
    let dht_buf = dht.as_ref().map(|t| upload(dev, t, ElementType::F32));
    // The split-scan forward's chunk states, for the backward's split-scan.
    let forward = c.scan.then(|| {
        let options = options.clone().with_forward(ForwardForm::Scan);
        let fwd = compile_with(&c.spec, Target::Spirv, &config, &options)
            .unwrap_or_else(|e| panic!("{c:?}: forward compile failed: {e}"));
        assert_eq!(artifact.info.takes_instead(&d, n), Some(true), "{c:?}");
        let out = op::forward(
            dev,
            &fwd.info,
            &fwd.binary,
            &op::ForwardArgs {
                inputs: &refs,
                initial_state: h0.as_ref(),
                cu_seqlens: cu.as_ref(),
                scale: c.spec.scale.resolve(d.key_dim) as f32,
            },
        )
        .unwrap_or_else(|e| panic!("{c:?}: forward launch failed: {e}"));
        out.chunk_states
            .expect("the split-scan returns the chunk states")
    });
    let out = op::backward(
        dev,
        &artifact.info,
        &artifact.binary,
        &op::BackwardArgs {
            inputs: &refs,
            initial_state: h0.as_ref(),
            cu_seqlens: cu.as_ref(),
            scale: c.spec.scale.resolve(d.key_dim) as f32,
            d_o: &d_o_buf,
            dht: dht_buf.as_ref(),
            chunk_states: forward.as_ref(),
        },
    )
    .unwrap_or_else(|e| panic!("{c:?}: launch failed: {e}"));

    let mut ratios = Vec::new();
    for (role, buf) in &out.grads {
        let got = download(dev, buf);
        let name = match role {
            Role::Query => "dq",
            Role::Key => "dk",
            Role::Value => "dv",
            Role::Gate => "dg",
            Role::Beta => "dbeta",
            other => panic!("unexpected gradient of {other}"),
        };
        let want = want.get(*role).expect("the reference has every gradient");
        ratios.push((name.to_string(), got.rel_error(want)));
    }
    if let Some(dh0) = &out.dh0 {
        let got = download(dev, dh0);
        let want = want.dh0.as_ref().expect("reference dh0");
        ratios.push(("dh0".to_string(), got.rel_error(want)));
    }
    ratios
}

fn check_backward(test: &str, cases: &[Case]) {
    let Some(dev) = device(test) else {
        return;
    };
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let ratios = run_backward(&dev, c, 7000 + i as u64);
        let d = c.dims;
        let text: Vec<String> = ratios.iter().map(|(n, r)| format!("{n} {r:.2e}")).collect();
        let line = format!(
            "{:<12} {:<4} B{} T{:<3} H{} HV{} K{:<3} V{:<3} C{:<2}{}{}{} {}",
            c.spec.name,
            c.dtype.name(),
            d.batch,
            d.seq_len,
            d.heads,
            d.value_heads,
            d.key_dim,
            d.value_dim,
            c.chunk,
            if c.h0 { " h0" } else { "" },
            if c.dht { " dht" } else { "" },
            c.cu_seqlens
                .as_ref()
                .map(|x| format!(" cu{x:?}"))
                .unwrap_or_default(),
            text.join(" ")
        );
        println!("{line}");
        let expected = 3
            + usize::from(c.h0)
            + usize::from(c.spec.input(Role::Gate).is_some())
            + usize::from(c.spec.input(Role::Beta).is_some());
        if ratios.len() != expected {
            failures.push(format!(
                "{line}: {} gradients, expected {expected}",
                ratios.len()
            ));
        }
        for (n, r) in &ratios {
            // NaN fails too: the outputs were NaN-poisoned.
            if r.is_nan() || *r >= bound(&c.spec, n) {
                failures.push(format!("{line}: {n} ratio {r:.3e} ≥ {}", bound(&c.spec, n)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn backward_matches_the_reference_for_every_supported_spec() {
    let mut cases = Vec::new();
    for spec in specs::supported() {
        for dtype in [ElementType::F32, ElementType::Bf16] {
            let mut c = case(spec.clone(), dtype, Dims::new(2, 75, 2, 16, 32), 32);
            c.h0 = true;
            c.dht = true;
            cases.push(c);
        }
    }
    check_backward(
        "backward_matches_the_reference_for_every_supported_spec",
        &cases,
    );
}

#[test]
fn backward_in_the_tensor_core_layout_matches_the_reference() {
    // The layout sm_80/sm_90 kernels get (16-bit operand tiles, padded, placed by liveness,
    // `dh'` and `h` rounded for the matmuls), emulated on the CPU.
    let sg = specs::simple_gla;
    let mut cases = Vec::new();
    for (spec, dtype, dims, chunk) in [
        (sg(), ElementType::Bf16, Dims::new(2, 75, 2, 64, 64), 64),
        (
            specs::linear_attn(),
            ElementType::F16,
            Dims::new(1, 70, 1, 100, 60),
            32,
        ),
        (
            specs::retention(),
            ElementType::Bf16,
            Dims::new(1, 40, 2, 32, 16).with_value_heads(4),
            16,
        ),
        (
            specs::beta_l2(),
            ElementType::Bf16,
            Dims::new(1, 50, 1, 16, 16),
            32,
        ),
    ] {
        let mut c = case(spec, dtype, dims, chunk);
        c.h0 = true;
        c.dht = true;
        c.emulated = true;
        cases.push(c);
    }
    let mut v = case(sg(), ElementType::Bf16, Dims::new(1, 90, 2, 16, 16), 16);
    v.cu_seqlens = Some(vec![0, 37, 37, 90]);
    v.emulated = true;
    cases.push(v);
    // dh's kernel in value blocks of 64 (the last one 36 columns wide) and the gradient
    // kernel's groups of 8 chunks crossing sequences: 150 and 158 tokens in chunks of 16.
    let mut w = case(sg(), ElementType::Bf16, Dims::new(1, 308, 1, 32, 100), 16);
    w.cu_seqlens = Some(vec![0, 150, 150, 308]);
    w.h0 = true;
    w.dht = true;
    w.emulated = true;
    cases.push(w.clone());
    // sm_90a's layout (core matrices): the same kernels with every operand index changed.
    for mut c in [cases[0].clone(), cases[2].clone(), w] {
        c.core_matrices = true;
        cases.push(c);
    }
    check_backward(
        "backward_in_the_tensor_core_layout_matches_the_reference",
        &cases,
    );
}

#[test]
fn backward_split_scan_matches_the_reference() {
    // The split-scan of dh over segments of 16 chunks, taken for one long sequence on few
    // heads with the split-scan forward's chunk states: several segments (the last short),
    // h0 and dht, GVA, varlen with an empty sequence, every decay, the tensor-core layout.
    let (la, re, sg) = (specs::linear_attn, specs::retention, specs::simple_gla);
    let mut cases = Vec::new();
    for (spec, dtype, dims, emulated) in [
        (sg(), ElementType::Bf16, Dims::new(1, 600, 1, 32, 32), false),
        (re(), ElementType::F32, Dims::new(2, 530, 1, 16, 16), false),
        (
            la(),
            ElementType::F32,
            Dims::new(1, 300, 1, 16, 24).with_value_heads(2),
            false,
        ),
        (sg(), ElementType::Bf16, Dims::new(1, 560, 1, 32, 64), true),
        // 9 segments: the combine's batches of 8, the second partial.
        (sg(), ElementType::F32, Dims::new(1, 2300, 1, 16, 16), false),
    ] {
        let mut c = case(spec, dtype, dims, 16);
        c.h0 = true;
        c.dht = true;
        c.emulated = emulated;
        c.scan = true;
        cases.push(c);
    }
    let mut v = case(sg(), ElementType::Bf16, Dims::new(1, 900, 1, 16, 16), 16);
    v.cu_seqlens = Some(vec![0, 0, 600, 900]);
    v.h0 = true;
    v.scan = true;
    cases.push(v);
    check_backward("backward_split_scan_matches_the_reference", &cases);
}

#[test]
fn backward_covers_the_shape_matrix() {
    let la = specs::linear_attn;
    let sg = specs::simple_gla;
    let mut cases = vec![
        // odd T, T = 1, T = 0, chunks 16 and 64, head dims 1, 60 and 100
        case(sg(), ElementType::F32, Dims::new(1, 1, 1, 16, 16), 16),
        case(sg(), ElementType::F32, Dims::new(1, 0, 1, 16, 16), 64),
        case(la(), ElementType::F32, Dims::new(1, 63, 2, 1, 60), 16),
        case(sg(), ElementType::Bf16, Dims::new(1, 130, 1, 100, 64), 64),
        // sums over fewer elements than threads (the Intel CPU compiler's NaN, see `sum_all`)
        case(sg(), ElementType::F32, Dims::new(1, 16, 1, 25, 4), 16),
        case(sg(), ElementType::F32, Dims::new(1, 16, 1, 129, 1), 16),
        case(
            specs::beta_l2(),
            ElementType::F32,
            Dims::new(1, 20, 1, 256, 3),
            16,
        ),
        case(la(), ElementType::Bf16, Dims::new(1, 40, 1, 8, 256), 32),
        case(
            specs::retention(),
            ElementType::F16,
            Dims::new(2, 40, 2, 32, 16),
            16,
        ),
        // GVA: two and four value heads per q/k head
        case(
            sg(),
            ElementType::F32,
            Dims::new(1, 70, 2, 16, 16).with_value_heads(4),
            32,
        ),
        case(
            la(),
            ElementType::Bf16,
            Dims::new(2, 33, 1, 32, 8).with_value_heads(4),
            16,
        ),
    ];
    // varlen with an empty sequence, h0 and dht
    let mut v = case(sg(), ElementType::F32, Dims::new(1, 90, 2, 16, 16), 16);
    v.cu_seqlens = Some(vec![0, 37, 37, 90]);
    v.h0 = true;
    v.dht = true;
    cases.push(v);
    let mut v = case(
        specs::beta_l2(),
        ElementType::Bf16,
        Dims::new(1, 50, 1, 16, 16).with_value_heads(2),
        32,
    );
    v.cu_seqlens = Some(vec![0, 1, 50]);
    v.h0 = true;
    cases.push(v);
    check_backward("backward_covers_the_shape_matrix", &cases);
}

#[test]
#[ignore = "prints the backward layouts of several sizes (cargo test -- --ignored --nocapture)"]
fn print_backward_layouts() {
    for d in [64usize, 128, 256] {
        let config = KernelConfig {
            dtype: ElementType::Bf16,
            key_dim: d,
            value_dim: d,
            chunk: 64,
            initial_state: false,
            final_state: false,
            varlen: false,
        };
        let spec = specs::simple_gla();
        let fwd = plan::forward(&spec).expect("supported");
        let bwd = plan::backward(&spec).expect("derived");
        let s = schedule::backward(&fwd, &bwd, &spec, Target::Sm90, &config, MatmulChoice::Auto)
            .expect("schedules");
        println!(
            "D{d}: {:?} shared {} scratch {} note {:?}",
            s.grads.matmul, s.grads.shared_bytes, s.grads.scratch, s.grads.fallback
        );
    }
}
