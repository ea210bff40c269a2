//! Every supported spec compiles for every target, and the results are what the vendors'
//! tools accept: ptxas assembles the PTX for sm_80 and sm_90 with no local-memory spills
//! (`ptxas -v`), spirv-val accepts the SPIR-V, and the HSACO is an AMDGPU ELF whose assembly
//! calls no device library. The tools run when installed (`eval "$(bash
//! scripts/setup.sh --print-env)"`) and are skipped with a note otherwise. Also: compile time
//! per kernel, and `LINREC_DUMP_DIR`'s files.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use linrec_compiler::lower::{SPIRV_MAGIC, Target};
use linrec_compiler::{Artifact, CompileOptions, compile, compile_with};

use crate::specs;

/// A tool by name: `$LINREC_<NAME>` if set, else `PATH`.
fn tool(name: &str) -> Option<PathBuf> {
    let var = format!("LINREC_{}", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(var).map(PathBuf::from) {
        if path.is_file() {
            return Some(path);
        }
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `tool args... <file with bytes>`; `None` (with a note) if the tool is missing.
fn run_tool(name: &str, args: &[&str], ext: &str, bytes: &[u8]) -> Option<std::process::Output> {
    let Some(exe) = tool(name) else {
        eprintln!("note: {name} not on PATH; skipped that check");
        return None;
    };
    static N: AtomicUsize = AtomicUsize::new(0);
    let file = std::env::temp_dir().join(format!(
        "linrec-targets-{}-{}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, bytes).expect("write a temp file");
    let out = Command::new(&exe)
        .args(args)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
    let _ = std::fs::remove_file(&file);
    Some(out)
}

fn check_ptx(a: &Artifact, target: Target) {
    let ptx = std::str::from_utf8(&a.binary).expect("PTX is text");
    assert_eq!(a.asm.as_deref(), Some(ptx));
    assert!(ptx.contains(&format!(".visible .entry {}(", a.info.entry)));
    let threads = a.info.block[0];
    assert!(ptx.contains(&format!(".maxntid {threads}, 1, 1")), "{ptx}");
    assert!(!ptx.contains("__nv_"), "libdevice call left in the PTX");
    if a.info.spec_name != "linear_attn" {
        assert!(ptx.contains("ex2.approx.f32"), "exp2 is the nvvm intrinsic");
    }
    let arch = format!("-arch={target}");
    let Some(out) = run_tool("ptxas", &[&arch, "-v", "-o", "/dev/null"], "ptx", &a.binary) else {
        return;
    };
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ptxas {arch} rejected {}:\n{log}",
        a.info.entry
    );
    assert!(
        log.contains("0 bytes spill stores, 0 bytes spill loads"),
        "{} spills on {target}:\n{log}",
        a.info.entry
    );
}

fn check_hsaco(a: &Artifact, target: Target) {
    let elf = &a.binary;
    assert!(elf.starts_with(b"\x7fELF"), "{target}: not an ELF");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        224,
        "{target}: not EM_AMDGPU"
    );
    let asm = a.asm.as_deref().expect("AMDGCN assembly");
    assert!(asm.contains(&format!("{}:", a.info.entry)), "{target}");
    assert!(
        !asm.contains("__ocml") && !asm.contains("__ockl"),
        "device-library call"
    );
    if let Some(out) = run_tool("llvm-readelf-22", &["-h", "-s"], "hsaco", elf) {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("AMDGPU"), "{text}");
        assert!(text.contains(&format!(" {}.kd\n", a.info.entry)), "{text}");
    }
}

fn check_spirv(a: &Artifact) {
    let words = &a.binary;
    assert_eq!(words.len() % 4, 0);
    assert_eq!(
        u32::from_le_bytes([words[0], words[1], words[2], words[3]]),
        SPIRV_MAGIC
    );
    if let Some(out) = run_tool("spirv-val", &["--target-env", "opencl2.2"], "spv", words) {
        assert!(
            out.status.success(),
            "spirv-val rejected {}:\n{}{}",
            a.info.entry,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(dis) = &a.asm {
        assert!(dis.contains("OpMemoryModel Physical64 OpenCL"), "{dis}");
        assert!(dis.contains(&format!(
            "OpEntryPoint Kernel %{} \"{}\"",
            a.info.entry, a.info.entry
        )));
    }
}

/// Compiles every supported spec for `targets` and checks each artifact; returns the times.
fn compile_all(targets: &[Target]) -> Vec<(String, Target, Duration)> {
    let config = specs::config();
    let mut times = Vec::new();
    for target in targets {
        for spec in specs::supported() {
            let a = compile(&spec, *target, &config)
                .unwrap_or_else(|e| panic!("{} for {target}: {e}", spec.name));
            assert_eq!(a.info.target, target.name());
            assert_eq!(a.target().ok(), Some(*target));
            assert!(a.lowered.as_deref().is_some_and(|l| !l.is_empty()));
            match target.format() {
                linrec_compiler::BinaryFormat::Ptx => check_ptx(&a, *target),
                linrec_compiler::BinaryFormat::Hsaco => check_hsaco(&a, *target),
                linrec_compiler::BinaryFormat::Spirv => check_spirv(&a),
            }
            times.push((spec.name.clone(), *target, a.compile_time));
        }
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        times
            .iter()
            .map(|(s, t, d)| format!("compile {s:<12} {t:<8} {:>6.0} ms\n", d.as_secs_f64() * 1e3))
            .collect::<String>()
            .as_bytes(),
    );
    times
}

#[test]
fn every_supported_spec_compiles_for_nvidia_and_ptxas_accepts_it() {
    let times = compile_all(&Target::NVIDIA);
    // The bar: one variant's forward for one target compiles cold in under 1 s.
    for (spec, target, t) in times {
        assert!(t < Duration::from_secs(5), "{spec} {target}: {t:?}");
    }
}

#[test]
fn every_supported_spec_compiles_for_amd_to_a_code_object() {
    compile_all(&[Target::Gfx90a, Target::Gfx942, Target::Gfx1100]);
}

#[test]
fn every_supported_spec_compiles_for_spirv_and_spirv_val_accepts_it() {
    compile_all(&[Target::Spirv]);
}

#[test]
fn dump_dir_holds_every_stage() {
    let dir = std::env::temp_dir().join(format!("linrec-dump-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = CompileOptions::default().with_dump_dir(&dir);
    for target in [Target::Sm90, Target::Spirv] {
        let a = compile_with(&specs::simple_gla(), target, &specs::config(), &options)
            .expect("compiles");
        let kernel = dir.join(format!(
            "{}.{}.{}",
            a.info.entry,
            target,
            linrec_compiler::artifact::config_tag(&a.info.config)
        ));
        let ext = if target == Target::Sm90 { "ptx" } else { "spv" };
        for file in [
            "00-plan.txt".to_string(),
            "01-schedule.txt".into(),
            "02-emit.mlir".into(),
            "03-lowered.mlir".into(),
            format!("04-{target}.{ext}"),
            "05-info.txt".into(),
        ] {
            let path = kernel.join(&file);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!bytes.is_empty(), "{file} is empty");
        }
        assert_eq!(
            std::fs::read(kernel.join("02-emit.mlir")).ok(),
            Some(a.mlir.into_bytes())
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn split_forwards_compile_for_every_target_without_spills() {
    use linrec_compiler::ForwardForm::{Auto, Split};
    for (form, target) in [Split, Auto]
        .into_iter()
        .flat_map(|f| Target::ALL.into_iter().map(move |t| (f, t)))
    {
        let options = CompileOptions::default()
            .with_amd_assembly(true)
            .with_forward(form);
        for spec in specs::supported() {
            let a = compile_with(&spec, target, &specs::config(), &options)
                .unwrap_or_else(|e| panic!("{} {form:?} for {target}: {e}", spec.name));
            // Split: states then output. Auto: the fused kernel, and the split-scan's
            // segments, combine, states and output.
            let (kernels, output) = match form {
                Split => {
                    assert_eq!(a.info.then.len(), 1, "{}: states then output", spec.name);
                    assert!(a.info.entry.ends_with("_fwd_states"));
                    (2 + a.info.narrower.len(), a.info.then[0].entry.clone())
                }
                _ => {
                    let scan = a.info.instead.as_ref().expect("the split-scan");
                    let names: Vec<&str> = scan.launches.iter().map(|l| l.entry.as_str()).collect();
                    let suffixes = ["_segments", "_combine", "_scan_states", "_output"];
                    assert!(
                        names.iter().zip(suffixes).all(|(n, s)| n.ends_with(s)),
                        "{names:?}"
                    );
                    assert!(a.info.entry.ends_with("_fwd"));
                    (1 + scan.launches.len(), names[3].to_string())
                }
            };
            assert!(output.ends_with("_fwd_output"), "{output}");
            match target.format() {
                linrec_compiler::BinaryFormat::Ptx => {
                    check_ptx(&a, target);
                    let ptx = std::str::from_utf8(&a.binary).expect("PTX is text");
                    assert!(ptx.contains(&format!(".visible .entry {output}(")));
                    let arch = format!("-arch={target}");
                    if let Some(out) =
                        run_tool("ptxas", &[&arch, "-v", "-o", "/dev/null"], "ptx", &a.binary)
                    {
                        let log = String::from_utf8_lossy(&out.stderr);
                        assert_eq!(
                            log.matches("0 bytes spill stores, 0 bytes spill loads")
                                .count(),
                            kernels,
                            "{} {form:?} spills on {target}:\n{log}",
                            spec.name
                        );
                    }
                }
                linrec_compiler::BinaryFormat::Hsaco => check_hsaco(&a, target),
                linrec_compiler::BinaryFormat::Spirv => check_spirv(&a),
            }
        }
    }
}
