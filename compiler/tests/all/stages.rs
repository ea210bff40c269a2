//! The per-stage snapshot suite: for each supported built-in (linear_attn, retention,
//! simple_gla), forward, at the one snapshot config of [`specs::config`] (bf16, K = V = 64,
//! C = 64, h0 + final state, no varlen), one file per stage so a diff names the stage that
//! moved:
//!
//! | stage | target | snapshot |
//! |---|---|---|
//! | plan | — | `all__plan__plan_forward_<variant>` (plan.rs) |
//! | schedule | sm_90 | `all__emit__schedule_forward_<variant>` (emit.rs) |
//! | emitted MLIR | sm_90, spirv | `all__emit__emit_forward_<variant>_<target>` (emit.rs) |
//! | schedule | gfx942, spirv | `all__stages__<variant>__schedule_<target>` |
//! | emitted MLIR | gfx942 | `all__stages__<variant>__mlir_gfx942` |
//! | PTX | sm_90 | `all__stages__<variant>__ptx_sm_90` |
//! | AMDGCN assembly (bf16 matmuls on `v_mfma`) | gfx942 | `all__stages__<variant>__amdgcn_gfx942` |
//! | SPIR-V disassembly | spirv | `all__stages__<variant>__spirv_dis` |
//!
//! The stages that plan.rs and emit.rs already snapshot are not stored twice: here the
//! compiled [`Artifact`]'s text of those stages is checked equal to what the stage functions
//! give, which those snapshots pin. Every (variant, target) is compiled once per test run and
//! shared by the tests below; simple_gla's compiles also go through `LINREC_DUMP_DIR`
//! ([`CompileOptions::with_dump_dir`], thread-safe where the variable is not) into a temporary
//! folder, read back and removed, for [`dump_dir_writes_every_stage_of_a_kernel`].
//!
//! The SPIR-V disassembly needs `spirv-dis` (spirv-tools; `eval "$(bash scripts/setup.sh
//! --print-env)"`): without it that test is skipped with a note, and fails under `CI=true`.
//! Review changes with `cargo insta review` (or `INSTA_UPDATE=always` and `git diff`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use linrec_compiler::artifact::config_tag;
use linrec_compiler::lower::Target;
use linrec_compiler::{Artifact, CompileOptions, compile_with, emit, plan, schedule};
use linrec_spec::Spec;

use crate::specs;

/// The snapshotted variants (the rows of the compile cache).
const VARIANTS: [&str; 3] = ["linear_attn", "retention", "simple_gla"];

/// The snapshotted targets (the columns of the compile cache).
const TARGETS: [Target; 3] = [Target::Sm90, Target::Gfx942, Target::Spirv];

/// The variant whose compiles also write the stage dump.
const DUMPED: &str = "simple_gla";

fn spec_of(variant: &str) -> Spec {
    match variant {
        "linear_attn" => specs::linear_attn(),
        "retention" => specs::retention(),
        "simple_gla" => specs::simple_gla(),
        other => unreachable!("no such variant {other}"),
    }
}

/// One compiled kernel and, for [`DUMPED`], the files its stage dump held (name → bytes).
struct Compiled {
    artifact: Artifact,
    dump: Option<BTreeMap<String, Vec<u8>>>,
}

/// The artifact of `variant` for `target`, compiled on first use.
fn compiled(variant: &str, target: Target) -> &'static Compiled {
    static CACHE: [[OnceLock<Compiled>; TARGETS.len()]; VARIANTS.len()] =
        [const { [const { OnceLock::new() }; TARGETS.len()] }; VARIANTS.len()];
    let v = VARIANTS
        .iter()
        .position(|&n| n == variant)
        .expect("a variant");
    let t = TARGETS.iter().position(|&n| n == target).expect("a target");
    CACHE[v][t].get_or_init(|| compile_once(variant, target))
}

/// The stage snapshots show the fused forward (the split-scan has its own in emit.rs).
fn fused() -> CompileOptions {
    CompileOptions::default().with_forward(linrec_compiler::ForwardForm::Fused)
}

fn compile_once(variant: &str, target: Target) -> Compiled {
    let spec = spec_of(variant);
    let config = specs::config();
    if variant != DUMPED {
        let artifact = compile_with(&spec, target, &config, &fused())
            .unwrap_or_else(|e| panic!("{variant} for {target}: {e}"));
        return Compiled {
            artifact,
            dump: None,
        };
    }
    let root = std::env::temp_dir().join(format!(
        "linrec-stages-{}-{variant}-{target}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let options = fused().with_dump_dir(&root);
    let result = compile_with(&spec, target, &config, &options);
    let dump = result.as_ref().ok().map(|a| read_dump(&root, a, target));
    let _ = std::fs::remove_dir_all(&root);
    Compiled {
        artifact: result.unwrap_or_else(|e| panic!("{variant} for {target}: {e}")),
        dump,
    }
}

/// Reads back the dump of one kernel: `root` must hold exactly its folder,
/// `<entry>.<target>.<config tag>`, and that folder only files.
fn read_dump(root: &Path, a: &Artifact, target: Target) -> BTreeMap<String, Vec<u8>> {
    let name = format!("{}.{target}.{}", a.info.entry, config_tag(&a.info.config));
    let entries: Vec<String> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| {
            e.expect("a dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        entries,
        std::slice::from_ref(&name),
        "one folder per kernel"
    );
    std::fs::read_dir(root.join(&name))
        .expect("the kernel's folder")
        .map(|e| {
            let e = e.expect("a dir entry");
            assert!(e.file_type().expect("a file type").is_file());
            let bytes = std::fs::read(e.path()).expect("a dumped file");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// Whether the tests run under CI, where a missing tool is a failure rather than a skip.
fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The artifact's plan, schedule and emitted MLIR are exactly the stage functions' (which
/// plan.rs and emit.rs snapshot, sm_90 and spirv), and the schedule is snapshotted for the
/// other targets, and the MLIR for gfx942.
#[test]
fn plan_schedule_and_mlir_of_every_target() {
    let config = specs::config();
    for variant in VARIANTS {
        let spec = spec_of(variant);
        let p = plan::forward(&spec).expect("supported");
        for target in TARGETS {
            let a = &compiled(variant, target).artifact;
            let sched = schedule::forward(&p, &spec, target, &config).expect("schedules");
            assert_eq!(a.plan_text, p.to_string(), "{variant} {target}: plan");
            assert_eq!(a.schedule_text, sched.to_string(), "{variant} {target}");
            assert_eq!(a.mlir, emit::forward(&sched).expect("emits"), "{variant}");
            assert_eq!(a.info, sched.kernel_info(), "{variant} {target}: info");
            if target != Target::Sm90 {
                insta::assert_snapshot!(format!("{variant}__schedule_{target}"), &a.schedule_text);
            }
            if target == Target::Gfx942 {
                insta::assert_snapshot!(format!("{variant}__mlir_{target}"), &a.mlir);
            }
        }
    }
}

/// The PTX for sm_90: bf16 matmuls on tensor cores.
#[test]
fn ptx_sm_90() {
    for variant in VARIANTS {
        let a = &compiled(variant, Target::Sm90).artifact;
        let ptx = a.asm.as_deref().expect("PTX is its own assembly");
        assert_eq!(ptx.as_bytes(), a.binary, "the binary is the PTX text");
        assert!(
            ptx.contains("mma.sync.aligned.m16n8k16"),
            "{variant}: no tensor-core mma in the sm_90 PTX"
        );
        insta::assert_snapshot!(format!("{variant}__ptx_sm_90"), ptx);
    }
}

/// The sm_90 forwards read token rows 16 bytes at a time (an opaque `ld.global.nc.v4`, each
/// with its element-by-element fallback for a misaligned buffer: eight 2-byte loads per
/// vector), the loop's rows one chunk ahead (the prologue's and the loop's: twice each), and
/// the gated variants' cumulative gate sum as a 5-step warp scan.
#[test]
fn sm_90_rows_load_ahead_and_gates_scan_in_a_warp() {
    for variant in VARIANTS {
        let a = &compiled(variant, Target::Sm90).artifact;
        let ptx = a.asm.as_deref().expect("PTX");
        let count = |needle: &str| ptx.matches(needle).count();
        let vectors = count("ld.global.nc.v4.b32");
        // K = V = 64, 256 threads: q, k, v are 2 vectors a thread each, loaded twice.
        assert_eq!(vectors, 2 * 3 * 2, "{variant}: 16-byte row loads");
        assert_eq!(
            count("ld.global.b16"),
            8 * vectors,
            "{variant}: fallback loads"
        );
        let scans = if variant == "linear_attn" { 0 } else { 5 };
        assert_eq!(count("shfl.sync.up"), scans, "{variant}: warp scan steps");
    }
}

/// The AMDGCN assembly for gfx942.
#[test]
fn amdgcn_gfx942() {
    for variant in VARIANTS {
        let a = &compiled(variant, Target::Gfx942).artifact;
        let asm = a.asm.as_deref().expect("AMD assembly is on by default");
        assert!(asm.contains("s_endpgm"), "{variant}: no s_endpgm");
        // bf16 matmuls on the matrix cores (matrix_core.rs checks every AMD target).
        assert!(
            asm.contains("v_mfma_f32_16x16x16_bf16"),
            "{variant}: no MFMA in the gfx942 assembly"
        );
        insta::assert_snapshot!(format!("{variant}__amdgcn_gfx942"), asm);
    }
}

/// The SPIR-V disassembly (`spirv-dis`).
#[test]
fn spirv_disassembly() {
    for variant in VARIANTS {
        let a = &compiled(variant, Target::Spirv).artifact;
        let Some(dis) = a.asm.as_deref() else {
            assert!(
                !is_ci(),
                "CI=true but spirv-dis is missing: run `bash scripts/setup.sh` and export what \
                 `--print-env` prints"
            );
            eprintln!("note: spirv-dis not on PATH; SPIR-V disassembly snapshots skipped");
            return;
        };
        assert!(dis.contains("OpEntryPoint Kernel"), "{variant}");
        insta::assert_snapshot!(format!("{variant}__spirv_dis"), dis);
    }
}

/// `LINREC_DUMP_DIR` (here [`CompileOptions::with_dump_dir`]) writes every stage of one
/// kernel, for each target's format, each file exactly the artifact's text or bytes, and
/// nothing else. Beyond targets.rs's `dump_dir_holds_every_stage` (sm_90 and spirv files
/// present), this covers AMD's `.hsaco` + `.s` and the `.spvasm`.
#[test]
fn dump_dir_writes_every_stage_of_a_kernel() {
    for target in TARGETS {
        let Compiled { artifact: a, dump } = compiled(DUMPED, target);
        let dump = dump.as_ref().expect("the dumped variant");
        let t = target.name();
        let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::from([
            ("00-plan.txt".into(), a.plan_text.clone().into_bytes()),
            (
                "01-schedule.txt".into(),
                a.schedule_text.clone().into_bytes(),
            ),
            ("02-emit.mlir".into(), a.mlir.clone().into_bytes()),
            (
                "03-lowered.mlir".into(),
                a.lowered.clone().expect("lowered MLIR").into_bytes(),
            ),
            (
                "05-info.txt".into(),
                format!("{:#?}\n", a.info).into_bytes(),
            ),
        ]);
        match target {
            Target::Sm90 => {
                want.insert(format!("04-{t}.ptx"), a.binary.clone());
            }
            Target::Gfx942 => {
                want.insert(format!("04-{t}.hsaco"), a.binary.clone());
                let asm = a.asm.clone().expect("AMD assembly");
                want.insert(format!("04-{t}.s"), asm.into_bytes());
            }
            _ => {
                want.insert(format!("04-{t}.spv"), a.binary.clone());
                if let Some(dis) = &a.asm {
                    want.insert(format!("04-{t}.spvasm"), dis.clone().into_bytes());
                }
            }
        }
        let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(dump), names(&want), "{target}: the dumped files");
        for (name, bytes) in &want {
            assert!(!bytes.is_empty(), "{target}: {name} is empty");
            assert!(
                dump[name] == *bytes,
                "{target}: {name} differs from the artifact"
            );
        }
    }
}
