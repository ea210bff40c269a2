//! The provider with linrec-compiler in process (feature `jit`; this module links MLIR):
//! compile, cache on disk, reuse; 8 threads compile once; a corrupt entry is recompiled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use linrec_runtime::kernels::{
    CompileFailure, Compiled, JitCompiler, KernelCompiler, KernelRequest, KernelSource, Kernels,
    config_tag,
};
use linrec_spec::launch::{ElementType, KernelConfig};

use crate::provider::{TempDir, config, simple_gla};

/// [`JitCompiler`], counting its compiles.
struct Counting {
    jit: JitCompiler,
    compiles: AtomicUsize,
}

impl KernelCompiler for Counting {
    fn fingerprint(&self) -> String {
        self.jit.fingerprint()
    }

    fn compile(&self, request: &KernelRequest<'_>) -> Result<Compiled, CompileFailure> {
        self.compiles.fetch_add(1, Ordering::SeqCst);
        self.jit.compile(request)
    }
}

fn counting() -> Arc<Counting> {
    Arc::new(Counting {
        jit: JitCompiler::new(),
        compiles: AtomicUsize::new(0),
    })
}

fn provider(dir: &std::path::Path, compiler: &Arc<Counting>) -> Kernels {
    Kernels::builder()
        .cache_dir(dir)
        .compiler(Arc::clone(compiler) as Arc<dyn KernelCompiler>)
        .build()
        .expect("builds")
}

#[test]
fn the_default_provider_compiles_with_linrec_compiler() {
    let dir = TempDir::new("jit-default");
    let kernels = Kernels::builder()
        .cache_dir(dir.path())
        .build()
        .expect("builds");
    assert!(kernels.can_compile());
    let spec = simple_gla();
    let first = kernels
        .get(&KernelRequest::forward(&spec, "spirv", config()))
        .expect("compiles");
    let KernelSource::Compiled {
        time,
        cached: Some(path),
    } = &first.source
    else {
        panic!("expected a cached compile, got {:?}", first.source);
    };
    assert!(*time > Duration::ZERO);
    assert!(path.extension().is_some_and(|e| e == "spv"), "{path:?}");
    assert_eq!(first.kernel.info.entry, "linrec_simple_gla_fwd");
    // SPIR-V magic number, little-endian.
    assert_eq!(first.kernel.binary[..4], [0x03, 0x02, 0x23, 0x07]);

    // The entry records the compiler: crate version and the LLVM linked in.
    let entry = std::fs::read_dir(path.parent().expect("spec dir"))
        .expect("read dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .expect("an entry");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.path()).expect("entry")).expect("JSON");
    let compiler = json["compiler"].as_str().expect("compiler");
    assert!(
        compiler.starts_with(&linrec_compiler::fingerprint()) && compiler.contains("(LLVM 22."),
        "{compiler}"
    );

    let second = Kernels::builder()
        .cache_dir(dir.path())
        .build()
        .expect("builds")
        .get(&KernelRequest::forward(&spec, "spirv", config()))
        .expect("from disk");
    assert_eq!(
        second.source,
        KernelSource::DiskCache { path: path.clone() }
    );
    assert_eq!(*second.kernel, *first.kernel);
}

#[test]
fn eight_threads_compile_a_real_kernel_once() {
    let dir = TempDir::new("jit-threads");
    let compiler = counting();
    let kernels = provider(dir.path(), &compiler);
    let spec = simple_gla();
    let barrier = Barrier::new(8);
    let binaries: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let c = KernelConfig {
                        dtype: ElementType::Bf16,
                        ..config()
                    };
                    kernels
                        .get(&KernelRequest::forward(&spec, "sm_90", c))
                        .expect("get")
                        .kernel
                        .binary
                        .clone()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(compiler.compiles.load(Ordering::SeqCst), 1);
    assert!(binaries.windows(2).all(|w| w[0] == w[1]));
    assert!(String::from_utf8_lossy(&binaries[0]).contains(".entry linrec_simple_gla_fwd"));
}

#[test]
fn a_corrupt_entry_is_recompiled_by_linrec_compiler() {
    let dir = TempDir::new("jit-corrupt");
    let compiler = counting();
    let spec = simple_gla();
    let request = KernelRequest::forward(&spec, "spirv", config());
    let first = provider(dir.path(), &compiler)
        .get(&request)
        .expect("compiles");
    let KernelSource::Compiled {
        cached: Some(path), ..
    } = &first.source
    else {
        panic!("{:?}", first.source);
    };
    std::fs::write(path, b"\x03\x02\x23\x07truncated").expect("corrupt");
    let warnings = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let w = Arc::clone(&warnings);
    let again = Kernels::builder()
        .cache_dir(dir.path())
        .compiler(Arc::clone(&compiler) as Arc<dyn KernelCompiler>)
        .on_warning(move |m: &str| w.lock().expect("lock").push(m.to_owned()))
        .build()
        .expect("builds")
        .get(&request)
        .expect("recompiles");
    assert!(matches!(again.source, KernelSource::Compiled { .. }));
    assert_eq!(again.kernel.binary, first.kernel.binary);
    assert_eq!(compiler.compiles.load(Ordering::SeqCst), 2);
    let w = warnings.lock().expect("lock");
    assert!(w.len() == 1 && w[0].contains("is corrupt"), "{w:?}");
}

#[test]
fn the_runtime_and_the_compiler_agree_on_config_tags() {
    for bits in 0..8u8 {
        let c = KernelConfig {
            initial_state: bits & 1 != 0,
            final_state: bits & 2 != 0,
            varlen: bits & 4 != 0,
            ..config()
        };
        assert_eq!(config_tag(&c), linrec_compiler::artifact::config_tag(&c));
    }
}

#[test]
fn backward_kernels_compile_and_unknown_targets_are_compile_errors() {
    let dir = TempDir::new("jit-errors");
    let kernels = Kernels::builder()
        .cache_dir(dir.path())
        .build()
        .expect("builds");
    let spec = simple_gla();
    let loaded = kernels
        .get(&KernelRequest::backward(&spec, "spirv", config()))
        .expect("the JIT derives backward kernels");
    assert_eq!(loaded.kernel.info.direction, "backward");
    assert!(matches!(loaded.source, KernelSource::Compiled { .. }));
    let msg = kernels
        .get(&KernelRequest::forward(&spec, "sm_75", config()))
        .expect_err("unknown target")
        .to_string();
    assert!(msg.contains("unknown target `sm_75`"), "{msg}");
}
