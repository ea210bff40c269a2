//! `lower`: MLIR text → PTX / HSACO (+ AMDGCN) / SPIR-V in process, for every target, plus the
//! error paths. External checkers (ptxas, llvm-readelf-22, spirv-val) run when they are
//! installed (`eval "$(bash scripts/setup.sh --print-env)"` puts them on PATH) and are skipped
//! with a note otherwise.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use linrec_compiler::lower::{
    BinaryFormat, LDS_LIMIT_BYTES, LowerError, LowerOptions, Lowered, SPIRV_MAGIC, Target,
    UnknownTarget, Vendor, lower, lower_to_ptx, lower_with,
};

/// Elementwise `c = a + b` over 1024 f32, one element per thread, 256 threads per block.
///
/// Written once for all targets: static shapes (the bare-pointer convention only takes static
/// memrefs), `known_block_size` (AMD otherwise caps launches at 256 threads) and
/// `spirv.entry_point_abi` (the SPIR-V conversion skips kernels without it). The block size is
/// a constant rather than `gpu.block_dim`, which on AMD becomes a call into ROCm's device
/// libraries (see `block_dim_on_amd_needs_device_libs_or_says_so`).
const ADD_KERNEL: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @vec_add(%a: memref<1024xf32>, %b: memref<1024xf32>, %c: memref<1024xf32>) kernel
        attributes {known_block_size = array<i32: 256, 1, 1>,
                    spirv.entry_point_abi = #spirv.entry_point_abi<workgroup_size = [256, 1, 1]>} {
      %bdim = arith.constant 256 : index
      %bid = gpu.block_id x
      %tid = gpu.thread_id x
      %base = arith.muli %bid, %bdim : index
      %i = arith.addi %base, %tid : index
      %x = memref.load %a[%i] : memref<1024xf32>
      %y = memref.load %b[%i] : memref<1024xf32>
      %s = arith.addf %x, %y : f32
      memref.store %s, %c[%i] : memref<1024xf32>
      gpu.return
    }
  }
}
"#;

/// Reverses each block of 256 f32 through workgroup memory: store, barrier, load mirrored.
/// This is the LLVM-target form: a workgroup attribution, 16-byte aligned (unaligned
/// attributions are a silent wrong-result trap on NVIDIA, `reference/mlir-lowering.md` §3).
const REVERSE_KERNEL_LLVM: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @block_reverse(%in: memref<1024xf32>, %out: memref<1024xf32>)
        workgroup(%tile: memref<256xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64})
        kernel attributes {known_block_size = array<i32: 256, 1, 1>,
            spirv.entry_point_abi = #spirv.entry_point_abi<workgroup_size = [256, 1, 1]>} {
      %c256 = arith.constant 256 : index
      %c255 = arith.constant 255 : index
      %bid = gpu.block_id x
      %tid = gpu.thread_id x
      %base = arith.muli %bid, %c256 : index
      %i = arith.addi %base, %tid : index
      %x = memref.load %in[%i] : memref<1024xf32>
      memref.store %x, %tile[%tid] : memref<256xf32, #gpu.address_space<workgroup>>
      gpu.barrier
      %r = arith.subi %c255, %tid : index
      %y = memref.load %tile[%r] : memref<256xf32, #gpu.address_space<workgroup>>
      memref.store %y, %out[%i] : memref<1024xf32>
      gpu.return
    }
  }
}
"#;

/// The same kernel in the form the SPIR-V conversion takes: workgroup memory is a
/// `memref.alloc` in numeric memory space 3 (attributions do not convert for OpenCL targets).
const REVERSE_KERNEL_SPIRV: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @block_reverse(%in: memref<1024xf32>, %out: memref<1024xf32>) kernel
        attributes {spirv.entry_point_abi = #spirv.entry_point_abi<workgroup_size = [256, 1, 1]>} {
      %tile = memref.alloc() : memref<256xf32, 3>
      %c256 = arith.constant 256 : index
      %c255 = arith.constant 255 : index
      %bid = gpu.block_id x
      %tid = gpu.thread_id x
      %base = arith.muli %bid, %c256 : index
      %i = arith.addi %base, %tid : index
      %x = memref.load %in[%i] : memref<1024xf32>
      memref.store %x, %tile[%tid] : memref<256xf32, 3>
      gpu.barrier
      %r = arith.subi %c255, %tid : index
      %y = memref.load %tile[%r] : memref<256xf32, 3>
      memref.store %y, %out[%i] : memref<1024xf32>
      gpu.return
    }
  }
}
"#;

fn reverse_kernel(target: Target) -> &'static str {
    match target.vendor() {
        Vendor::Intel => REVERSE_KERNEL_SPIRV,
        Vendor::Nvidia | Vendor::Amd => REVERSE_KERNEL_LLVM,
    }
}

// ---------------------------------------------------------------------------------------------
// Target names

#[test]
fn target_names_round_trip_and_map_to_vendor_and_format() {
    let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        [
            "sm_80", "sm_90", "sm_90a", "gfx90a", "gfx942", "gfx1100", "spirv"
        ]
    );
    for target in Target::ALL {
        assert_eq!(target.to_string(), target.name());
        assert_eq!(target.name().parse::<Target>(), Ok(target));
        assert_eq!(
            target.name().to_ascii_uppercase().parse::<Target>(),
            Ok(target)
        );
        let format = match target.vendor() {
            Vendor::Nvidia => BinaryFormat::Ptx,
            Vendor::Amd => BinaryFormat::Hsaco,
            Vendor::Intel => BinaryFormat::Spirv,
        };
        assert_eq!(target.format(), format, "{target}");
    }
    assert_eq!(Target::Sm90a.vendor(), Vendor::Nvidia);
    assert_eq!(Target::Gfx1100.vendor(), Vendor::Amd);
    assert_eq!(Target::Spirv.vendor(), Vendor::Intel);
    assert!(Target::NVIDIA.iter().all(|t| t.vendor() == Vendor::Nvidia));
}

#[test]
fn unknown_target_is_a_typed_error_listing_every_target() {
    let err = "sm_75"
        .parse::<Target>()
        .expect_err("sm_75 is not a target");
    assert_eq!(
        err,
        UnknownTarget {
            name: "sm_75".to_owned(),
            expected: &Target::ALL,
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("`sm_75`"), "{msg}");
    for target in Target::ALL {
        assert!(msg.contains(target.name()), "{target} missing from: {msg}");
    }
    assert!("".parse::<Target>().is_err());
    assert!("gfx94".parse::<Target>().is_err());
}

#[test]
fn lower_to_ptx_rejects_non_nvidia_names_listing_the_nvidia_ones() {
    let err = lower_to_ptx(ADD_KERNEL, "gfx942").expect_err("gfx942 is not an NVIDIA chip");
    let LowerError::UnknownTarget(unknown) = &err else {
        panic!("expected UnknownTarget, got {err:?}");
    };
    assert_eq!(unknown.name, "gfx942");
    assert_eq!(unknown.expected, &Target::NVIDIA);
    let msg = err.to_string();
    for needle in ["gfx942", "sm_80", "sm_90", "sm_90a"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    assert!(!msg.contains("spirv"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Every target

#[test]
fn add_kernel_lowers_for_every_target() {
    let mut timings = Vec::new();
    for target in Target::ALL {
        let start = Instant::now();
        let lowered = lower_or_panic(ADD_KERNEL, target);
        let first = start.elapsed();
        // A second run shows the steady-state cost (the first pays one-time LLVM set-up).
        let start = Instant::now();
        let again = lower_or_panic(ADD_KERNEL, target);
        let warm = start.elapsed();
        assert_eq!(
            lowered.binary(),
            again.binary(),
            "{target}: not deterministic"
        );

        check_artifact(&lowered, "vec_add");
        if let Some(ptx) = lowered.ptx() {
            // Bare-pointer ABI: exactly one `.param` per memref argument.
            assert_eq!(ptx.matches(".param .u64").count(), 3, "PTX:\n{ptx}");
        }
        timings.push((target, first, warm));
    }
    print_timings(&timings);
}

#[test]
fn shared_memory_kernel_lowers_for_every_target() {
    for target in Target::ALL {
        let lowered = lower_or_panic(reverse_kernel(target), target);
        check_artifact(&lowered, "block_reverse");
        match target.vendor() {
            Vendor::Nvidia => {
                let ptx = lowered.ptx().unwrap_or_default();
                assert!(ptx.contains(".shared .align 16"), "{target}:\n{ptx}");
                assert!(
                    ptx.contains("bar.sync") || ptx.contains("barrier.sync"),
                    "{target}: no barrier:\n{ptx}"
                );
                assert!(ptx.contains("st.shared."), "{target}:\n{ptx}");
            }
            Vendor::Amd => {
                let asm = lowered.assembly().unwrap_or_default();
                assert!(asm.contains("s_barrier"), "{target}: no barrier:\n{asm}");
                // 256 f32 of LDS, and LDS traffic (`ds_write_b32` on gfx9, `ds_store_b32` on
                // gfx11).
                assert!(
                    asm.contains(".amdhsa_group_segment_fixed_size 1024"),
                    "{target}:\n{asm}"
                );
                assert!(
                    asm.contains("ds_write") || asm.contains("ds_store"),
                    "{target}:\n{asm}"
                );
            }
            Vendor::Intel => {
                if let Some(text) = spirv_dis(&lowered) {
                    assert!(text.contains("Workgroup"), "{text}");
                    assert!(text.contains("OpControlBarrier"), "{text}");
                }
            }
        }
    }
}

#[test]
fn sm_90a_ptx_targets_sm_90a() {
    let lowered = lower_or_panic(ADD_KERNEL, Target::Sm90a);
    let ptx = lowered.ptx().unwrap_or_default();
    assert!(ptx.contains(".target sm_90a"), "{ptx}");
    assert!(
        lowered.pipeline().contains("chip=sm_90a"),
        "{}",
        lowered.pipeline()
    );
}

#[test]
fn amd_assembly_is_optional() {
    let options = LowerOptions::default().with_amd_assembly(false);
    let lowered = lower_with(ADD_KERNEL, Target::Gfx942, &options)
        .unwrap_or_else(|e| panic!("gfx942 without assembly: {e}"));
    assert_eq!(lowered.format(), BinaryFormat::Hsaco);
    assert!(lowered.binary().starts_with(b"\x7fELF"));
    assert_eq!(lowered.assembly(), None);
}

#[test]
fn lower_to_ptx_still_returns_the_text() {
    for target in Target::NVIDIA {
        let ptx = lower_to_ptx(ADD_KERNEL, target.name())
            .unwrap_or_else(|e| panic!("lower_to_ptx({target}): {e}"));
        assert!(ptx.contains(".visible .entry vec_add("), "{ptx}");
        assert!(ptx.contains(&format!(".target {target}\n")), "{ptx}");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn malformed_mlir_is_a_parse_error_with_a_diagnostic() {
    let text = "module {\n  func.func @f() {\n    %x = arith.constant : i32\n  }\n}\n";
    for target in Target::ALL {
        let err = lower(text, target).expect_err("malformed input");
        let LowerError::Parse { diagnostics } = &err else {
            panic!("{target}: expected a parse error, got {err:?}");
        };
        // The diagnostic carries a source location (line 3) and its severity.
        assert!(
            diagnostics
                .0
                .iter()
                .any(|d| d.contains(":3:") && d.contains("error:")),
            "{target}: {diagnostics}"
        );
    }
}

#[test]
fn a_failing_pass_reports_its_target_and_diagnostics() {
    // Dynamic shapes parse fine but the bare-pointer convention rejects them, so
    // `convert-gpu-to-nvvm` / `convert-gpu-to-rocdl` fail and the error must say why.
    let text = ADD_KERNEL.replace("memref<1024xf32>", "memref<?xf32>");
    for target in [Target::Sm90, Target::Gfx942] {
        let err = lower(&text, target).expect_err("dynamic memrefs with bare pointers");
        let LowerError::Pass {
            target: failed,
            diagnostics,
            ..
        } = &err
        else {
            panic!("{target}: expected a pass error, got {err:?}");
        };
        assert_eq!(*failed, target);
        assert!(!diagnostics.0.is_empty(), "no diagnostics collected: {err}");
        assert!(err.to_string().contains(target.name()), "{err}");
    }
}

#[test]
fn spirv_rejects_the_llvm_form_of_workgroup_memory_with_diagnostics() {
    // Workgroup attributions (fine for NVIDIA/AMD) do not convert for OpenCL SPIR-V.
    let err = lower(REVERSE_KERNEL_LLVM, Target::Spirv).expect_err("attribution on SPIR-V");
    let LowerError::Pass { diagnostics, .. } = &err else {
        panic!("expected a pass error, got {err:?}");
    };
    assert!(diagnostics.mention("error:"), "{diagnostics}");
    // And a kernel without `spirv.entry_point_abi` is not converted at all.
    let abi = "spirv.entry_point_abi = #spirv.entry_point_abi<workgroup_size = [256, 1, 1]>";
    let text = ADD_KERNEL.replace(&format!(",\n                    {abi}"), "");
    assert!(!text.contains("entry_point_abi"));
    let err = lower(&text, Target::Spirv).expect_err("no entry_point_abi");
    let LowerError::Pass { diagnostics, .. } = &err else {
        panic!("expected a pass error, got {err:?}");
    };
    assert!(diagnostics.mention("entry_point_abi"), "{diagnostics}");
}

/// An NVIDIA-only module: reads the lane id register through NVVM.
const NVVM_KERNEL: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @lane(%a: memref<1024xf32>) kernel attributes {known_block_size = array<i32: 32, 1, 1>,
        spirv.entry_point_abi = #spirv.entry_point_abi<workgroup_size = [32, 1, 1]>} {
      %t = nvvm.read.ptx.sreg.laneid : i32
      %f = arith.sitofp %t : i32 to f32
      %c0 = arith.constant 0 : index
      memref.store %f, %a[%c0] : memref<1024xf32>
      gpu.return
    }
  }
}
"#;

/// An AMD-only module: an LDS barrier and an AMDGPU intrinsic.
const AMDGPU_KERNEL: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @lds(%a: memref<1024xf32>) kernel attributes {known_block_size = array<i32: 64, 1, 1>,
        spirv.entry_point_abi = #spirv.entry_point_abi<workgroup_size = [64, 1, 1]>} {
      %c0 = arith.constant 0 : index
      %x = memref.load %a[%c0] : memref<1024xf32>
      amdgpu.lds_barrier
      %e = llvm.call_intrinsic "llvm.amdgcn.exp2.f32"(%x) : (f32) -> f32
      memref.store %e, %a[%c0] : memref<1024xf32>
      gpu.return
    }
  }
}
"#;

#[test]
fn another_vendors_module_is_a_typed_error_naming_the_ops() {
    // Without the up-front check an NVVM intrinsic reaching the AMDGPU backend aborts the whole
    // process (`LLVM ERROR: Cannot select: intrinsic %llvm.nvvm.read.ptx.sreg.laneid`).
    for (text, targets, needles) in [
        (
            NVVM_KERNEL,
            &[
                Target::Gfx90a,
                Target::Gfx942,
                Target::Gfx1100,
                Target::Spirv,
            ][..],
            &["nvvm.read.ptx.sreg.laneid"][..],
        ),
        (
            AMDGPU_KERNEL,
            &[Target::Sm80, Target::Sm90, Target::Sm90a, Target::Spirv][..],
            &["amdgpu.lds_barrier", "llvm.amdgcn.exp2.f32"][..],
        ),
    ] {
        for &target in targets {
            let err = lower(text, target).expect_err("foreign ops");
            let LowerError::ForeignOps { target: t, ops } = &err else {
                panic!("{target}: expected ForeignOps, got {err:?}");
            };
            assert_eq!(*t, target);
            let msg = err.to_string();
            for needle in needles {
                assert!(ops.iter().any(|o| o.contains(needle)), "{target}: {ops:?}");
                assert!(msg.contains(needle), "{msg}");
            }
            // Each op comes with its source location (line:column in the input).
            assert!(ops.iter().all(|o| o.contains(':')), "{ops:?}");
        }
    }
    // The same modules do lower for their own vendor.
    lower_or_panic(NVVM_KERNEL, Target::Sm90);
    let amd = lower_or_panic(AMDGPU_KERNEL, Target::Gfx942);
    assert!(amd.assembly().unwrap_or_default().contains("v_exp_f32"));
}

#[test]
fn too_much_lds_is_a_typed_error_not_a_process_exit() {
    // 128 KiB of workgroup memory: the AMDGPU backend would `exit(1)` the test process.
    let text = REVERSE_KERNEL_LLVM.replace(
        "memref<256xf32, #gpu.address_space",
        "memref<32768xf32, #gpu.address_space",
    );
    for target in [Target::Gfx90a, Target::Gfx942, Target::Gfx1100] {
        let err = lower(&text, target).expect_err("128 KiB of LDS");
        let LowerError::WorkgroupMemory {
            kernel,
            bytes,
            limit,
            ..
        } = &err
        else {
            panic!("{target}: expected WorkgroupMemory, got {err:?}");
        };
        assert_eq!(
            (kernel.as_str(), *bytes, *limit),
            ("block_reverse", 131_072, LDS_LIMIT_BYTES)
        );
        assert!(err.to_string().contains("block_reverse"), "{err}");
    }
    // A workgroup-memory global counts too: 48 KiB of attribution + 32 KiB global > 64 KiB.
    let text = REVERSE_KERNEL_LLVM
        .replace(
            "memref<256xf32, #gpu.address_space",
            "memref<12288xf32, #gpu.address_space",
        )
        .replace(
            "  gpu.module @kernels {\n",
            "  gpu.module @kernels {\n    memref.global \"private\" @extra : memref<8192xf32, 3>\n",
        );
    let err = lower(&text, Target::Gfx942).expect_err("80 KiB of LDS");
    assert!(
        matches!(err, LowerError::WorkgroupMemory { bytes: 81_920, .. }),
        "{err:?}"
    );
    // Exactly at the limit is fine.
    let text = REVERSE_KERNEL_LLVM.replace(
        "memref<256xf32, #gpu.address_space",
        "memref<16384xf32, #gpu.address_space",
    );
    lower_or_panic(&text, Target::Gfx942);
}

#[test]
fn missing_linker_is_a_typed_error_saying_to_install_lld() {
    let options = LowerOptions::default().with_ld_lld("/nonexistent/linrec-test/ld.lld");
    let err = lower_with(ADD_KERNEL, Target::Gfx942, &options).expect_err("no linker there");
    let LowerError::MissingLinker { searched } = &err else {
        panic!("expected MissingLinker, got {err:?}");
    };
    assert_eq!(
        searched,
        &[PathBuf::from("/nonexistent/linrec-test/ld.lld")]
    );
    let msg = err.to_string();
    assert!(
        msg.contains("lld-22") && msg.contains("/nonexistent/linrec-test/ld.lld"),
        "{msg}"
    );
}

#[test]
fn block_dim_on_amd_needs_device_libs_or_says_so() {
    // `gpu.block_dim` becomes `__ockl_get_local_size` on AMD, so the ROCm device libraries get
    // linked. With them installed (Debian `rocm-device-libs`) this lowers; without, the error
    // must say what to install instead of MLIR's bare "error happened while serializing".
    let text = ADD_KERNEL.replace(
        "%bdim = arith.constant 256 : index",
        "%bdim = gpu.block_dim x",
    );
    match lower(&text, Target::Gfx942) {
        Ok(lowered) => {
            eprintln!("note: ROCm device libraries found; gpu.block_dim lowered on gfx942");
            check_artifact(&lowered, "vec_add");
        }
        Err(err @ LowerError::MissingDeviceLibs { .. }) => {
            eprintln!("note: no ROCm device libraries; checked the typed error instead");
            let msg = err.to_string();
            assert!(msg.contains("rocm-device-libs"), "{msg}");
            assert!(msg.contains("bitcode"), "{msg}");
        }
        Err(err) => panic!("expected success or MissingDeviceLibs, got {err}"),
    }
    // NVIDIA reads the block size from a register: no library involved.
    lower_or_panic(&text, Target::Sm90);
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn lower_or_panic(mlir: &str, target: Target) -> Lowered {
    lower(mlir, target).unwrap_or_else(|e| panic!("lowering for {target} failed: {e}"))
}

/// Format-level checks that hold for any kernel named `kernel`, plus the external tools.
fn check_artifact(lowered: &Lowered, kernel: &str) {
    let target = lowered.target();
    assert_eq!(lowered.format(), target.format());
    assert!(
        lowered.pipeline().starts_with("builtin.module(") && lowered.pipeline().contains(", "),
        "{}",
        lowered.pipeline()
    );
    match lowered.format() {
        BinaryFormat::Ptx => {
            let ptx = lowered.ptx().expect("PTX target yields PTX text");
            assert_eq!(lowered.assembly(), Some(ptx));
            assert!(
                ptx.contains(&format!(".visible .entry {kernel}(")),
                "{target}: no kernel entry:\n{ptx}"
            );
            assert!(
                ptx.contains(&format!(".target {target}\n")),
                "PTX does not target {target}:\n{ptx}"
            );
            assert!(ptx.contains(".address_size 64"), "{ptx}");
            ptxas_accepts(ptx, target);
        }
        BinaryFormat::Hsaco => {
            let elf = lowered.binary();
            assert!(elf.starts_with(b"\x7fELF"), "{target}: not an ELF");
            // ELFCLASS64, little-endian, e_machine = EM_AMDGPU (224).
            assert_eq!((elf[4], elf[5]), (2, 1), "{target}: not ELF64 LE");
            assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 224, "{target}");
            // e_flags: the low byte is EF_AMDGPU_MACH, which names the chip.
            let mach = match target {
                Target::Gfx90a => 0x3f,
                Target::Gfx942 => 0x4c,
                Target::Gfx1100 => 0x41,
                other => panic!("{other} is not an AMD target"),
            };
            assert_eq!(elf[48], mach, "{target}: wrong EF_AMDGPU_MACH");
            let asm = lowered.assembly().expect("AMD assembly is on by default");
            assert!(
                asm.contains(&format!(".amdgcn_target \"amdgcn-amd-amdhsa--{target}")),
                "{target}:\n{asm}"
            );
            assert!(asm.contains(&format!("{kernel}:")), "{target}:\n{asm}");
            assert!(asm.contains("s_endpgm"), "{target}:\n{asm}");
            readelf_shows_amdgpu(elf, target, kernel);
        }
        BinaryFormat::Spirv => {
            assert_eq!(lowered.assembly(), None);
            let words = lowered.spirv_words().expect("SPIR-V target yields words");
            assert_eq!(words.len() * 4, lowered.binary().len());
            assert_eq!(words[0], SPIRV_MAGIC);
            assert!(lowered.binary().starts_with(&[0x03, 0x02, 0x23, 0x07]));
            spirv_val_accepts(lowered);
            if let Some(text) = spirv_dis(lowered) {
                assert!(text.contains("OpMemoryModel Physical64 OpenCL"), "{text}");
                assert!(
                    text.contains(&format!("OpEntryPoint Kernel %{kernel} \"{kernel}\"")),
                    "{text}"
                );
            }
        }
    }
}

/// A tool by name: `$LINREC_<NAME>` if set (setup.sh exports `LINREC_PTXAS`), else `PATH`.
fn tool(name: &str) -> Option<PathBuf> {
    let var = format!("LINREC_{}", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(var).map(PathBuf::from) {
        if path.is_file() {
            return Some(path);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Writes `bytes` to a fresh file in the temp directory (tests run in parallel).
fn temp_file(stem: &str, ext: &str, bytes: &[u8]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "linrec-compiler-test-{}-{}-{stem}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).expect("write a temp file");
    path
}

/// Runs `tool` on a temp copy of `bytes`; `None` (with a note) if the tool is not installed.
fn run_tool(
    tool_name: &str,
    args: &[&str],
    stem: &str,
    ext: &str,
    bytes: &[u8],
) -> Option<std::process::Output> {
    let Some(exe) = tool(tool_name) else {
        eprintln!("note: {tool_name} not on PATH; skipped that check for {stem}");
        return None;
    };
    let file = temp_file(stem, ext, bytes);
    let out = Command::new(&exe)
        .args(args)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
    let _ = std::fs::remove_file(&file);
    Some(out)
}

fn ptxas_accepts(ptx: &str, target: Target) {
    let arch = format!("-arch={target}");
    let Some(out) = run_tool(
        "ptxas",
        &[&arch, "-o", "/dev/null"],
        target.name(),
        "ptx",
        ptx.as_bytes(),
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "ptxas {arch} rejected the PTX:\n{}\n{ptx}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn readelf_shows_amdgpu(elf: &[u8], target: Target, kernel: &str) {
    let Some(out) = run_tool(
        "llvm-readelf-22",
        &["-h", "-s"],
        target.name(),
        "hsaco",
        elf,
    ) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "llvm-readelf-22 failed:\n{text}");
    assert!(
        text.contains("Machine:") && text.contains("AMDGPU"),
        "{text}"
    );
    // `Flags: 0x54c, gfx942, xnack, sramecc`
    assert!(
        text.contains(&format!(", {target}")),
        "{target} missing:\n{text}"
    );
    // The kernel and its descriptor (`.kd`), which hipModuleGetFunction looks up.
    assert!(text.contains(&format!(" {kernel}\n")), "{text}");
    assert!(text.contains(&format!(" {kernel}.kd\n")), "{text}");
}

fn spirv_val_accepts(lowered: &Lowered) {
    let Some(out) = run_tool(
        "spirv-val",
        &["--target-env", "opencl2.2"],
        "spirv",
        "spv",
        lowered.binary(),
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "spirv-val --target-env opencl2.2 rejected the module:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SPIR-V disassembly, if `spirv-dis` is installed.
fn spirv_dis(lowered: &Lowered) -> Option<String> {
    let out = run_tool("spirv-dis", &[], "spirv", "spv", lowered.binary())?;
    assert!(out.status.success(), "spirv-dis failed");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn print_timings(timings: &[(Target, Duration, Duration)]) {
    eprintln!("lowering time for the add kernel (first call / second call):");
    for (target, first, warm) in timings {
        eprintln!(
            "  {:<8} {:>7.1} ms / {:>7.1} ms",
            target.name(),
            first.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3
        );
    }
}
