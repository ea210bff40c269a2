//! The kernel provider (`linrec_runtime::kernels`) without a real compiler: artifact folders,
//! embedded artifacts, misses and mismatches with their messages, the disk cache (atomic
//! writes, corrupt entries recompiled with a warning, an unwritable folder), and the per-kernel
//! lock (8 threads, one compile). A counting fake compiler stands in for linrec-compiler, so
//! all of this runs without MLIR; `jit` below checks the real one.
//!
//! The fixture `tests/fixtures/artifacts/` is a pruned `linrec compile` folder: simple_gla's
//! SPIR-V forward kernel for f32, K = V = 16, chunk 64, h0 and final state —
//! `linrec compile simple_gla --target spirv --dtype f32 --head-dims 16 --out DIR`, then the
//! manifest cut down to that one entry. `embedded.rs` beside it is generated from it
//! (`LINREC_BLESS=1 cargo test -p linrec-runtime embedded` rewrites it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use linrec_runtime::embed::{self, EmbedError, Paths};
use linrec_runtime::kernels::{
    CacheError, CompileFailure, Compiled, DiskCache, KernelCompiler, KernelError, KernelKey,
    KernelRequest, KernelSource, Kernels, KernelsBuilder, config_tag,
};
use linrec_runtime::{EmbeddedArtifacts, Kernel, RuntimeError};
use linrec_spec::launch::{
    ElementType, KernelConfig, KernelInfo, KernelParam, Launch, MANIFEST_VERSION, Manifest,
    SizeExpr, SizeSym,
};
use linrec_spec::{Decay, Features, Input, Read, Role, Scale, Spec, Transition, Write};

/// The fixture folder, relative to the package root (where cargo runs tests).
const FIXTURE: &str = "tests/fixtures/artifacts";
const FIXTURE_FILE: &str = "linrec_simple_gla_fwd.spirv.f32-k16-v16-c64-h0-ht.spv";

static EMBEDDED: EmbeddedArtifacts =
    linrec_runtime::include_artifacts!(file = "../fixtures/artifacts/embedded.rs");

/// simple_gla as the catalogue declares it (the fixture's spec hash proves it).
pub fn simple_gla() -> Spec {
    Spec {
        name: "simple_gla".into(),
        doc: String::new(),
        inputs: vec![
            Input::new("q", Role::Query),
            Input::new("k", Role::Key),
            Input::new("v", Role::Value),
            Input::new("g", Role::Gate),
        ],
        decay: Decay::Scalar,
        transition: Transition::Identity,
        write: Write::Outer,
        read: Read::Inclusive,
        scale: Scale::InvSqrtK,
        features: Features::default(),
    }
}

/// The fixture kernel's config.
pub fn config() -> KernelConfig {
    KernelConfig {
        dtype: ElementType::F32,
        key_dim: 16,
        value_dim: 16,
        chunk: 64,
        initial_state: true,
        final_state: true,
        varlen: false,
    }
}

/// A folder under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "linrec-rt-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of the fixture folder, to damage.
fn fixture_copy(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    for f in ["manifest.json", FIXTURE_FILE] {
        std::fs::copy(Path::new(FIXTURE).join(f), dir.path().join(f)).expect("copy the fixture");
    }
    dir
}

/// Launch metadata for `key`, as a compiler would write it.
fn info_for(key: &KernelKey) -> KernelInfo {
    KernelInfo {
        entry: format!("linrec_{}_fwd", key.spec_name),
        spec_name: key.spec_name.clone(),
        spec_hash: key.spec_hash.clone(),
        direction: key.direction.name().into(),
        target: key.target.clone(),
        config: key.config,
        params: vec![KernelParam::Input(Role::Query), KernelParam::Output],
        grid: [SizeExpr::Const(1), SizeExpr::Const(1), SizeExpr::Const(1)],
        block: [64, 1, 1],
        shared_bytes: 0,
        scratch: 0,
        then: Vec::new(),
        narrower: Vec::new(),
        instead: None,
    }
}

/// A compiler that counts its compiles and takes `delay` for each.
pub struct FakeCompiler {
    pub compiles: AtomicUsize,
    delay: Duration,
    fingerprint: String,
    /// Compile for this target instead of the requested one (a broken compiler).
    wrong_target: Option<String>,
}

impl FakeCompiler {
    pub fn new(delay: Duration) -> Arc<Self> {
        Arc::new(FakeCompiler {
            compiles: AtomicUsize::new(0),
            delay,
            fingerprint: format!(
                "linrec-compiler {} (LLVM 22.1.8); fake",
                env!("CARGO_PKG_VERSION")
            ),
            wrong_target: None,
        })
    }

    fn count(&self) -> usize {
        self.compiles.load(Ordering::SeqCst)
    }
}

impl KernelCompiler for FakeCompiler {
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn compile(&self, request: &KernelRequest<'_>) -> Result<Compiled, CompileFailure> {
        self.compiles.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let mut key = request.key();
        if let Some(t) = &self.wrong_target {
            key.target = t.clone();
        }
        Ok(Compiled {
            info: info_for(&key),
            binary: format!("binary of the {key}").into_bytes(),
            time: self.delay,
        })
    }
}

/// Collected warnings.
#[derive(Clone, Default)]
pub struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn sink(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let w = Arc::clone(&self.0);
        move |msg: &str| w.lock().expect("warnings lock").push(msg.to_owned())
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("warnings lock").clone()
    }
}

/// A provider with the disk cache in `dir`, the fake compiler and warnings collected.
fn with_fake(dir: &Path, compiler: &Arc<FakeCompiler>, warnings: &Warnings) -> Kernels {
    Kernels::builder()
        .cache_dir(dir)
        .compiler(Arc::clone(compiler) as Arc<dyn KernelCompiler>)
        .on_warning(warnings.sink())
        .build()
        .expect("the provider builds")
}

/// Only the artifact sources: no disk cache, no compiler.
fn artifacts_only(b: KernelsBuilder) -> Kernels {
    b.no_disk_cache()
        .no_compiler()
        .build()
        .expect("the provider builds")
}

fn fixture_request(spec: &Spec) -> KernelRequest<'_> {
    KernelRequest::forward(spec, "spirv", config())
}

#[test]
fn the_fixture_is_simple_gla() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURE).join("manifest.json")).expect("manifest"),
    )
    .expect("JSON");
    assert_eq!(
        manifest["kernels"][0]["info"]["spec_hash"],
        simple_gla().hash().hex()
    );
}

#[test]
fn an_artifact_folder_serves_its_kernel_then_memory_does() {
    let kernels = artifacts_only(Kernels::builder().artifacts(FIXTURE));
    let spec = simple_gla();
    let first = kernels
        .get(&fixture_request(&spec))
        .expect("the fixture has it");
    match &first.source {
        KernelSource::Artifacts { location } => {
            assert!(location.ends_with(FIXTURE_FILE), "{location}")
        }
        other => panic!("expected artifacts, got {other:?}"),
    }
    assert_eq!(
        first.kernel.binary,
        std::fs::read(Path::new(FIXTURE).join(FIXTURE_FILE)).expect("fixture binary")
    );
    assert_eq!(first.kernel.info.entry, "linrec_simple_gla_fwd");
    assert_eq!(first.kernel.info.config, config());

    let again = kernels.get(&fixture_request(&spec)).expect("memory");
    assert_eq!(again.source, KernelSource::Memory);
    assert!(Arc::ptr_eq(&first.kernel, &again.kernel));
    // Target names are matched in lowercase, as compilers write them.
    let upper = kernels
        .get(&KernelRequest::forward(&spec, "SPIRV", config()))
        .expect("case-insensitive target");
    assert_eq!(upper.source, KernelSource::Memory);
}

#[test]
fn embedded_artifacts_serve_the_same_kernel_as_the_folder() {
    assert_eq!(EMBEDDED.label(), FIXTURE);
    assert_eq!(EMBEDDED.file_names().collect::<Vec<_>>(), [FIXTURE_FILE]);
    let spec = simple_gla();
    let embedded = artifacts_only(Kernels::builder().embedded(&EMBEDDED))
        .get(&fixture_request(&spec))
        .expect("embedded");
    match &embedded.source {
        KernelSource::Artifacts { location } => assert_eq!(
            location,
            &format!("embedded artifacts `{FIXTURE}`: {FIXTURE_FILE}")
        ),
        other => panic!("expected artifacts, got {other:?}"),
    }
    let folder = artifacts_only(Kernels::builder().artifacts(FIXTURE))
        .get(&fixture_request(&spec))
        .expect("folder");
    assert_eq!(*embedded.kernel, *folder.kernel);
}

#[test]
fn embedded_rs_is_what_the_generator_writes() {
    let dir = Path::new(FIXTURE);
    let code = embed::source(dir, Paths::Relative).expect("the fixture embeds");
    if std::env::var_os("LINREC_BLESS").is_some() {
        embed::write_beside(dir).expect("write embedded.rs");
    }
    let checked_in = std::fs::read_to_string(dir.join("embedded.rs")).expect("embedded.rs");
    assert_eq!(
        checked_in, code,
        "tests/fixtures/artifacts/embedded.rs is stale: rerun with LINREC_BLESS=1"
    );
    assert!(
        code.contains(&format!(
            "({FIXTURE_FILE:?}, include_bytes!({FIXTURE_FILE:?}) as &[u8])"
        )),
        "{code}"
    );
    // A build script's copy names the files by absolute path (it lives in OUT_DIR).
    let absolute = embed::source(dir, Paths::Absolute).expect("absolute");
    let abs_dir = std::path::absolute(dir).expect("absolute path");
    assert!(
        absolute.contains(&format!(
            "include_bytes!({:?})",
            abs_dir.join(FIXTURE_FILE).to_str().expect("utf-8")
        )),
        "{absolute}"
    );
}

#[test]
fn embedding_checks_the_folder_first() {
    // A binary that no longer matches its manifest fails the build, not the deployed program.
    let dir = fixture_copy("embed-bad-sha");
    let file = dir.path().join(FIXTURE_FILE);
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(&file, bytes).expect("write");
    let err = embed::source(dir.path(), Paths::Absolute).expect_err("corrupt binary");
    assert!(matches!(err, EmbedError::File { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(FIXTURE_FILE) && msg.contains("does not match the SHA-256"),
        "{msg}"
    );

    std::fs::remove_file(&file).expect("remove");
    let msg = embed::source(dir.path(), Paths::Absolute)
        .expect_err("missing binary")
        .to_string();
    assert!(msg.contains("cannot read it"), "{msg}");

    let empty = TempDir::new("embed-empty");
    let msg = embed::source(empty.path(), Paths::Absolute)
        .expect_err("no manifest")
        .to_string();
    assert!(
        msg.contains("manifest.json") && msg.contains("linrec compile"),
        "{msg}"
    );

    // Outside a build script there is no OUT_DIR to write to.
    if std::env::var_os("OUT_DIR").is_none() {
        let err = embed::artifacts(FIXTURE).expect_err("no OUT_DIR");
        assert!(matches!(err, EmbedError::NoOutDir), "{err:?}");
    }
}

#[test]
fn a_miss_names_the_kernel_what_each_source_has_and_the_command() {
    let kernels = artifacts_only(Kernels::builder().artifacts(FIXTURE));
    let spec = simple_gla();
    // Another target: the folder has spirv only.
    let err = kernels
        .get(&KernelRequest::forward(&spec, "sm_90", config()))
        .expect_err("no sm_90 kernel");
    let KernelError::Missing { key, searched, .. } = &err else {
        panic!("expected Missing, got {err:?}");
    };
    assert_eq!(key.target, "sm_90");
    assert_eq!(searched.len(), 3, "{searched:?}");
    let msg = err.to_string();
    for needle in [
        "no forward kernel of `simple_gla`",
        "for target sm_90, config f32-k16-v16-c64-h0-ht",
        "has no forward kernel of `simple_gla` for target sm_90",
        "(it has: forward spirv f32-k16-v16-c64-h0-ht)",
        "disk cache: off",
        "linrec compile simple_gla --target sm_90 --dtype f32 --head-dims 16:16 --chunk 64 --out DIR",
        "--artifacts DIR",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from:\n{msg}");
    }
    if cfg!(feature = "jit") {
        assert!(msg.contains("compiler: off for this provider"), "{msg}");
    } else {
        assert!(msg.contains("without the `jit` feature"), "{msg}");
    }

    // Another config: the one found is listed next to the one needed.
    let wanted = KernelConfig {
        key_dim: 32,
        ..config()
    };
    let msg = kernels
        .get(&KernelRequest::forward(&spec, "spirv", wanted))
        .expect_err("no K = 32 kernel")
        .to_string();
    assert!(
        msg.contains("config f32-k32-v16-c64-h0-ht (it has: forward spirv f32-k16-v16-c64-h0-ht)")
            && msg.contains("--head-dims 32:16"),
        "{msg}"
    );

    // Another variant: the folder has none of it.
    let other = Spec {
        name: "linear_attn".into(),
        decay: Decay::None,
        inputs: simple_gla().inputs[..3].to_vec(),
        ..simple_gla()
    };
    let msg = kernels
        .get(&KernelRequest::forward(&other, "spirv", config()))
        .expect_err("no linear_attn")
        .to_string();
    assert!(
        msg.contains("(it has: none of this variant; 1 kernel(s) of others)"),
        "{msg}"
    );
    // Into the crate's error, as `?` does.
    let as_runtime: RuntimeError = kernels
        .get(&KernelRequest::forward(&other, "spirv", config()))
        .expect_err("still missing")
        .into();
    assert!(matches!(as_runtime, RuntimeError::Kernel(_)));
}

#[test]
fn a_manifest_of_another_version_names_both_versions() {
    let dir = fixture_copy("manifest-version");
    let path = dir.path().join("manifest.json");
    let text = std::fs::read_to_string(&path).expect("read");
    // The fixture is of this runtime's version (which a launch ABI change bumps).
    let current = format!("\"version\": {MANIFEST_VERSION},");
    assert!(
        text.contains(&current),
        "the fixture is not version {MANIFEST_VERSION}"
    );
    std::fs::write(&path, text.replacen(&current, "\"version\": 99,", 1)).expect("write");
    let err = Kernels::builder()
        .artifacts(dir.path())
        .build()
        .expect_err("version 99");
    assert!(
        matches!(
            err,
            KernelError::ManifestVersion {
                found: 99,
                needed: MANIFEST_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("manifest version 99")
            && msg.contains(&format!("reads version {MANIFEST_VERSION}"))
            && msg.contains("linrec compile"),
        "{msg}"
    );
    // Embedding refuses it too.
    assert!(embed::source(dir.path(), Paths::Absolute).is_err());
}

#[test]
fn a_missing_or_broken_folder_is_a_clear_error() {
    let missing = TempDir::new("no-manifest");
    let msg = Kernels::builder()
        .artifacts(missing.path())
        .build()
        .expect_err("no manifest")
        .to_string();
    assert!(
        msg.contains("manifest.json: cannot read it") && msg.contains("linrec compile"),
        "{msg}"
    );

    std::fs::write(missing.path().join("manifest.json"), "{ not json").expect("write");
    let msg = Kernels::builder()
        .artifacts(missing.path())
        .build()
        .expect_err("not JSON")
        .to_string();
    assert!(msg.contains("not a linrec artifact manifest"), "{msg}");
}

#[test]
fn an_artifact_binary_that_does_not_match_its_sha256_is_refused() {
    let dir = fixture_copy("bad-artifact");
    let file = dir.path().join(FIXTURE_FILE);
    let mut bytes = std::fs::read(&file).expect("read");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, bytes).expect("write");
    let spec = simple_gla();
    let err = artifacts_only(Kernels::builder().artifacts(dir.path()))
        .get(&fixture_request(&spec))
        .expect_err("truncated");
    assert!(matches!(err, KernelError::Checksum { .. }), "{err:?}");
    assert!(err.to_string().contains(FIXTURE_FILE), "{err}");
}

#[test]
fn a_compiled_kernel_is_cached_on_disk_and_reused_by_the_next_provider() {
    let dir = TempDir::new("cache-reuse");
    let compiler = FakeCompiler::new(Duration::ZERO);
    let warnings = Warnings::default();
    let spec = simple_gla();
    let request = KernelRequest::forward(&spec, "sm_90", config());

    let kernels = with_fake(dir.path(), &compiler, &warnings);
    let first = kernels.get(&request).expect("compiles");
    let KernelSource::Compiled {
        cached: Some(path), ..
    } = &first.source
    else {
        panic!("expected a cached compile, got {:?}", first.source);
    };
    assert!(path.starts_with(dir.path().join("kernels-v1")), "{path:?}");
    assert!(
        path.to_str().is_some_and(|p| p.ends_with(".ptx")),
        "{path:?}"
    );
    assert_eq!(
        std::fs::read(path).expect("cached binary"),
        first.kernel.binary
    );
    assert!(first.source.to_string().starts_with("compiled in "));
    assert_eq!(
        kernels.get(&request).expect("memory").source,
        KernelSource::Memory
    );

    // A new provider (a new process) finds it on disk.
    let second = with_fake(dir.path(), &compiler, &warnings)
        .get(&request)
        .expect("disk");
    assert_eq!(
        second.source,
        KernelSource::DiskCache { path: path.clone() }
    );
    assert_eq!(*second.kernel, *first.kernel);
    assert_eq!(compiler.count(), 1);
    assert!(warnings.all().is_empty(), "{:?}", warnings.all());

    // The layout: kernels-v1/<spec>-<hash16>/<direction>.<target>.<config>.<fp12>.json.
    let cache = DiskCache::new(dir.path());
    let entry = cache.entry_path(&request.key(), &compiler.fingerprint());
    let name = entry.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(
        name.starts_with("forward.sm_90.f32-k16-v16-c64-h0-ht.") && name.ends_with(".json"),
        "{name}"
    );
    assert_eq!(
        entry.parent().and_then(Path::file_name),
        Some(format!("simple_gla-{}", spec.hash().short()).as_ref())
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&entry).expect("entry")).expect("JSON");
    assert_eq!(json["compiler"], compiler.fingerprint());
    assert_eq!(json["info"]["target"], "sm_90");

    // Another compiler (say a new LLVM) does not reuse it.
    let other = Arc::new(FakeCompiler {
        fingerprint: "linrec-compiler 0.1.0 (LLVM 23.0.0)".into(),
        ..Arc::into_inner(FakeCompiler::new(Duration::ZERO)).expect("sole owner")
    });
    let third = with_fake(dir.path(), &other, &warnings)
        .get(&request)
        .expect("recompiles");
    assert!(matches!(third.source, KernelSource::Compiled { .. }));
    assert_eq!(other.count(), 1);
}

#[test]
fn eight_threads_asking_for_one_kernel_compile_it_once() {
    let dir = TempDir::new("threads");
    // Slow enough that all threads ask while the first compiles.
    let compiler = FakeCompiler::new(Duration::from_millis(300));
    let warnings = Warnings::default();
    let kernels = with_fake(dir.path(), &compiler, &warnings);
    let spec = simple_gla();
    let barrier = Barrier::new(8);
    let sources: Vec<KernelSource> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    kernels
                        .get(&KernelRequest::forward(&spec, "sm_90", config()))
                        .expect("get")
                        .source
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(compiler.count(), 1, "{sources:?}");
    let compiled = sources
        .iter()
        .filter(|s| matches!(s, KernelSource::Compiled { .. }))
        .count();
    let memory = sources
        .iter()
        .filter(|s| **s == KernelSource::Memory)
        .count();
    assert_eq!((compiled, memory), (1, 7), "{sources:?}");

    // Different kernels do not wait for each other: 4 configs compile in parallel.
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for chunk in [16, 32] {
            for dtype in [ElementType::F16, ElementType::Bf16] {
                let (kernels, spec) = (&kernels, &spec);
                s.spawn(move || {
                    let c = KernelConfig {
                        chunk,
                        dtype,
                        ..config()
                    };
                    kernels
                        .get(&KernelRequest::forward(spec, "sm_90", c))
                        .expect("get")
                });
            }
        }
    });
    assert_eq!(compiler.count(), 5);
    assert!(
        start.elapsed() < Duration::from_millis(4 * 300),
        "different kernels compiled one after another: {:?}",
        start.elapsed()
    );
}

/// Damages the cached entry of `request` in one way.
fn damage(cache: &DiskCache, compiler: &FakeCompiler, request: &KernelRequest<'_>, how: &str) {
    let entry = cache.entry_path(&request.key(), &compiler.fingerprint());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&entry).expect("entry")).expect("JSON");
    let binary = entry.with_file_name(json["binary"].as_str().expect("binary name"));
    match how {
        "truncated binary" => {
            let bytes = std::fs::read(&binary).expect("binary");
            std::fs::write(&binary, &bytes[..bytes.len() / 2]).expect("truncate")
        }
        "flipped byte" => {
            let mut bytes = std::fs::read(&binary).expect("binary");
            bytes[3] ^= 0x20;
            std::fs::write(&binary, bytes).expect("flip")
        }
        "missing binary" => std::fs::remove_file(&binary).expect("remove"),
        "truncated entry" => {
            let text = std::fs::read(&entry).expect("entry");
            std::fs::write(&entry, &text[..text.len() / 2]).expect("truncate")
        }
        "garbage entry" => std::fs::write(&entry, b"\x00\xff garbage").expect("garbage"),
        "entry for another kernel" => {
            let text = std::fs::read_to_string(&entry).expect("entry");
            std::fs::write(&entry, text.replace("\"key_dim\": 16", "\"key_dim\": 64"))
                .expect("rewrite")
        }
        _ => unreachable!("{how}"),
    }
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_with_a_warning() {
    let spec = simple_gla();
    let request = KernelRequest::forward(&spec, "spirv", config());
    for how in [
        "truncated binary",
        "flipped byte",
        "missing binary",
        "truncated entry",
        "garbage entry",
        "entry for another kernel",
    ] {
        let dir = TempDir::new("corrupt");
        let compiler = FakeCompiler::new(Duration::ZERO);
        let warnings = Warnings::default();
        with_fake(dir.path(), &compiler, &warnings)
            .get(&request)
            .expect("first compile");
        damage(&DiskCache::new(dir.path()), &compiler, &request, how);

        let again = with_fake(dir.path(), &compiler, &warnings)
            .get(&request)
            .unwrap_or_else(|e| panic!("{how}: {e}"));
        assert!(
            matches!(
                again.source,
                KernelSource::Compiled {
                    cached: Some(_),
                    ..
                }
            ),
            "{how}: {:?}",
            again.source
        );
        assert_eq!(compiler.count(), 2, "{how}");
        let w = warnings.all();
        assert!(
            w.len() == 1 && w[0].contains("is corrupt") && w[0].contains("recompiling"),
            "{how}: {w:?}"
        );
        // The recompiled entry replaced the damaged one.
        let third = with_fake(dir.path(), &compiler, &warnings)
            .get(&request)
            .expect("third");
        assert!(
            matches!(third.source, KernelSource::DiskCache { .. }),
            "{how}: {:?}",
            third.source
        );
        assert_eq!(third.kernel.binary, again.kernel.binary, "{how}");

        // Without a compiler the damaged entry is skipped with a warning and the miss reported.
        damage(&DiskCache::new(dir.path()), &compiler, &request, how);
        let warnings = Warnings::default();
        let err = Kernels::builder()
            .cache_dir(dir.path())
            .no_compiler()
            .on_warning(warnings.sink())
            .build()
            .expect("builds")
            .get(&request)
            .expect_err("nothing usable");
        assert!(matches!(err, KernelError::Missing { .. }), "{how}: {err}");
        assert!(
            warnings.all().iter().any(|w| w.contains("ignoring it")),
            "{how}: {:?}",
            warnings.all()
        );
    }
}

#[test]
fn an_unusable_cache_folder_falls_back_to_compiling_with_a_warning() {
    // A folder below a regular file can be neither read nor created (even by root).
    let dir = TempDir::new("unusable");
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"").expect("write");
    let compiler = FakeCompiler::new(Duration::ZERO);
    let warnings = Warnings::default();
    let spec = simple_gla();
    let kernels = with_fake(&file.join("cache"), &compiler, &warnings);
    let loaded = kernels
        .get(&KernelRequest::forward(&spec, "spirv", config()))
        .expect("compiles anyway");
    assert_eq!(
        loaded.source,
        KernelSource::Compiled {
            time: Duration::ZERO,
            cached: None
        }
    );
    assert!(loaded.source.to_string().ends_with("(not cached)"));
    let w = warnings.all();
    assert!(
        w.len() == 1
            && w[0].contains("cannot create")
            && w[0].contains("not cached")
            && w[0].contains("LINREC_CACHE_DIR"),
        "{w:?}"
    );

    // An entry that cannot be read (here: a folder where the file should be) is an I/O error.
    let cache = DiskCache::new(dir.path().join("cache"));
    let request = KernelRequest::forward(&spec, "spirv", config());
    let entry = cache.entry_path(&request.key(), &compiler.fingerprint());
    std::fs::create_dir_all(&entry).expect("a folder in the entry's place");
    let err = cache
        .load(&request.key(), Some(&compiler.fingerprint()))
        .expect_err("unreadable");
    assert!(
        matches!(err, CacheError::Io { action: "read", .. }),
        "{err:?}"
    );
    let warnings = Warnings::default();
    let loaded = with_fake(&dir.path().join("cache"), &compiler, &warnings)
        .get(&request)
        .expect("compiles anyway");
    assert!(matches!(
        loaded.source,
        KernelSource::Compiled { cached: None, .. }
    ));
    let w = warnings.all();
    assert!(
        w.len() == 2 && w[0].contains("cannot read") && w[1].contains("cannot write"),
        "{w:?}"
    );
}

#[test]
fn without_a_compiler_the_cache_serves_kernels_of_this_version() {
    let dir = TempDir::new("no-compiler");
    let spec = simple_gla();
    let request = KernelRequest::forward(&spec, "spirv", config());
    let key = request.key();
    let cache = DiskCache::new(dir.path());
    let info = info_for(&key);
    let ours = format!(
        "linrec-compiler {} (LLVM 22.1.8)",
        env!("CARGO_PKG_VERSION")
    );
    let path = cache
        .store(&key, &ours, &info, b"ours", Duration::from_millis(5))
        .expect("store");
    cache
        .store(
            &key,
            "linrec-compiler 9.9.9 (LLVM 30.0.0)",
            &info,
            b"theirs",
            Duration::ZERO,
        )
        .expect("store");
    let kernels = Kernels::builder()
        .cache_dir(dir.path())
        .no_compiler()
        .build()
        .expect("builds");
    let loaded = kernels.get(&request).expect("from disk");
    assert_eq!(loaded.source, KernelSource::DiskCache { path });
    assert_eq!(loaded.kernel.binary, b"ours");

    // Only another version's entry: a miss.
    let dir = TempDir::new("no-compiler-other");
    DiskCache::new(dir.path())
        .store(
            &key,
            "linrec-compiler 9.9.9 (LLVM 30.0.0)",
            &info,
            b"theirs",
            Duration::ZERO,
        )
        .expect("store");
    let err = Kernels::builder()
        .cache_dir(dir.path())
        .no_compiler()
        .build()
        .expect("builds")
        .get(&request)
        .expect_err("another version's kernel is not used");
    assert!(err.to_string().contains("no usable entry"), "{err}");
}

#[test]
fn concurrent_writers_and_readers_never_see_a_partial_entry() {
    let dir = TempDir::new("atomic");
    let cache = DiskCache::new(dir.path());
    let spec = simple_gla();
    let key = KernelRequest::forward(&spec, "spirv", config()).key();
    let info = info_for(&key);
    // Large enough that a non-atomic write would be seen half done.
    let binary: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let fp = "linrec-compiler 0.1.0 (LLVM 22.1.8)";
    let seen = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    cache
                        .store(&key, fp, &info, &binary, Duration::ZERO)
                        .expect("store");
                }
            });
        }
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    match cache.load(&key, Some(fp)) {
                        Ok(Some(c)) => {
                            assert_eq!(c.kernel.binary.len(), binary.len());
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) => {}
                        Err(e) => panic!("a reader saw a partial entry: {e}"),
                    }
                }
            });
        }
    });
    assert!(cache.load(&key, Some(fp)).expect("load").is_some());
    // No temporary file is left behind, and one entry + one binary remain.
    let spec_dir = cache
        .entry_path(&key, fp)
        .parent()
        .expect("spec dir")
        .to_owned();
    let names: Vec<String> = std::fs::read_dir(&spec_dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    eprintln!("(readers saw a complete entry {} times)", seen.into_inner());
}

#[test]
fn a_compiler_returning_another_kernel_is_refused() {
    let dir = TempDir::new("wrong");
    let compiler = Arc::new(FakeCompiler {
        wrong_target: Some("sm_80".into()),
        ..Arc::into_inner(FakeCompiler::new(Duration::ZERO)).expect("sole owner")
    });
    let spec = simple_gla();
    let err = with_fake(dir.path(), &compiler, &Warnings::default())
        .get(&KernelRequest::forward(&spec, "sm_90", config()))
        .expect_err("wrong target");
    assert!(matches!(err, KernelError::WrongKernel { .. }), "{err:?}");
    assert!(err.to_string().contains("sm_80"), "{err}");
}

#[test]
fn inserted_kernels_come_from_memory_and_sources_print_for_the_cli() {
    let kernels = artifacts_only(Kernels::builder());
    let spec = simple_gla();
    let key = KernelRequest::forward(&spec, "spirv", config()).key();
    kernels
        .insert(Kernel {
            info: info_for(&key),
            binary: b"inserted".to_vec(),
        })
        .expect("insert");
    let loaded = kernels
        .get(&KernelRequest::forward(&spec, "spirv", config()))
        .expect("memory");
    assert_eq!(loaded.source, KernelSource::Memory);
    assert_eq!(loaded.kernel.binary, b"inserted");

    assert_eq!(KernelSource::Memory.to_string(), "from memory");
    assert_eq!(
        KernelSource::DiskCache {
            path: "/c/x.ptx".into()
        }
        .to_string(),
        "from the disk cache: /c/x.ptx"
    );
    assert_eq!(
        KernelSource::Compiled {
            time: Duration::from_millis(41),
            cached: Some("/c/x.ptx".into())
        }
        .to_string(),
        "compiled in 41.0 ms, cached in /c/x.ptx"
    );
    assert_eq!(config_tag(&config()), "f32-k16-v16-c64-h0-ht");
}

/// The embedded fixture kernel runs on the OpenCL device and matches the f64 reference: what
/// a deployed program without LLVM does.
#[test]
fn the_embedded_kernel_runs_and_matches_the_reference() {
    use linrec_runtime::op::{self, ForwardArgs};
    use linrec_spec::reference::{self, Rng, Tensor};
    use linrec_spec::{Dims, RunOptions};

    let Some(dev) = crate::common::opencl_device("the_embedded_kernel_runs") else {
        return;
    };
    let spec = simple_gla();
    let kernels = artifacts_only(Kernels::builder().embedded(&EMBEDDED));
    let kernel = kernels
        .get(&fixture_request(&spec))
        .expect("embedded")
        .kernel;

    let dims = Dims::new(2, 70, 2, 16, 16);
    let mut inputs = reference::random_inputs(&spec, &dims, 3);
    let mut rng = Rng::new(11);
    inputs.h0 = Some(Tensor::from_fn(&dims.state_shape(2), || rng.normal()));
    let upload = |t: &Tensor| {
        let data: Vec<f32> = t.data.iter().map(|&x| x as f32).collect();
        dev.upload(&data, &t.shape).expect("upload")
    };
    // What the kernel reads, so the reference sees the same f32 values.
    let round = |t: &mut Tensor| t.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
    for t in [&mut inputs.q, &mut inputs.k, &mut inputs.v] {
        round(t);
    }
    if let Some(g) = inputs.g.as_mut() {
        round(g);
    }
    if let Some(h0) = inputs.h0.as_mut() {
        round(h0);
    }
    let (q, k, v) = (upload(&inputs.q), upload(&inputs.k), upload(&inputs.v));
    let g = upload(inputs.g.as_ref().expect("gate"));
    let h0 = upload(inputs.h0.as_ref().expect("h0"));
    let out = op::forward(
        &dev,
        &kernel.info,
        &kernel.binary,
        &ForwardArgs {
            inputs: &[
                (Role::Query, &q),
                (Role::Key, &k),
                (Role::Value, &v),
                (Role::Gate, &g),
            ],
            initial_state: Some(&h0),
            cu_seqlens: None,
            scale: spec.scale.resolve(16) as f32,
        },
    )
    .expect("launch");
    let o: Vec<f32> = dev.download(&out.o).expect("o");
    let ht: Vec<f32> = dev
        .download(out.final_state.as_ref().expect("ht"))
        .expect("ht");
    let want = reference::forward(
        &spec,
        &inputs,
        &RunOptions {
            output_final_state: true,
            ..Default::default()
        },
    )
    .expect("reference");
    let o = Tensor::from_vec(
        &dims.output_shape(),
        o.iter().map(|&x| f64::from(x)).collect(),
    )
    .expect("o shape");
    let ht = Tensor::from_vec(
        &dims.state_shape(2),
        ht.iter().map(|&x| f64::from(x)).collect(),
    )
    .expect("ht shape");
    let (ro, rh) = (
        o.rel_error(&want.o),
        ht.rel_error(want.ht.as_ref().expect("ht")),
    );
    assert!(ro < 0.005 && rh < 0.005, "o {ro:.2e}, ht {rh:.2e}");
}

#[test]
fn each_device_asks_for_the_target_it_loads() {
    use linrec_runtime::kernels::device_target;
    use linrec_runtime::{BackendKind, DeviceInfo};
    let device = |backend, cc, arch: Option<&str>| DeviceInfo {
        backend,
        ordinal: 0,
        name: "gpu".into(),
        vendor: String::new(),
        driver_version: String::new(),
        total_memory: 1,
        max_threads_per_block: 1024,
        max_shared_memory_per_block: 1,
        compute_capability: cc,
        arch: arch.map(str::to_owned),
        il_version: None,
        is_cpu: false,
    };
    assert_eq!(
        device_target(&device(BackendKind::Cuda, Some((9, 0)), None)),
        Ok("sm_90a")
    );
    assert_eq!(
        device_target(&device(BackendKind::Cuda, Some((9, 2)), None)),
        Ok("sm_90")
    );
    assert_eq!(
        device_target(&device(BackendKind::Cuda, Some((8, 6)), None)),
        Ok("sm_80")
    );
    let err = device_target(&device(BackendKind::Cuda, Some((7, 5)), None)).expect_err("sm_75");
    assert!(err.contains("7.5") && err.contains("sm_80"), "{err}");
    assert_eq!(
        device_target(&device(
            BackendKind::Hip,
            None,
            Some("gfx942:sramecc+:xnack-")
        )),
        Ok("gfx942")
    );
    let err = device_target(&device(BackendKind::Hip, None, Some("gfx1030"))).expect_err("rdna2");
    assert!(
        err.contains("gfx1030") && err.contains("gfx90a, gfx942, gfx1100"),
        "{err}"
    );
    assert_eq!(
        device_target(&device(BackendKind::LevelZero, None, None)),
        Ok("spirv")
    );
    assert_eq!(
        device_target(&device(BackendKind::OpenCl, None, None)),
        Ok("spirv")
    );
    // LINREC_CUDA_TARGET: sm_90a on 9.0 only, sm_80 anywhere from 8.0, nothing else.
    use linrec_runtime::kernels::device_target_asking as asking;
    let h100 = device(BackendKind::Cuda, Some((9, 0)), None);
    assert_eq!(asking(&h100, Some("sm_90a")), Ok("sm_90a"));
    assert_eq!(asking(&h100, Some("sm_80")), Ok("sm_80"));
    assert_eq!(asking(&h100, Some("")), Ok("sm_90a"));
    assert_eq!(asking(&h100, Some("sm_90")), Ok("sm_90"));
    let err = asking(
        &device(BackendKind::Cuda, Some((8, 0)), None),
        Some("sm_90a"),
    )
    .expect_err("an A100 runs no sm_90a PTX");
    assert!(
        err.contains("LINREC_CUDA_TARGET=sm_90a") && err.contains("8.0"),
        "{err}"
    );
    let err = asking(&h100, Some("sm_100")).expect_err("unknown");
    assert!(err.contains("sm_80, sm_90 or sm_90a"), "{err}");
    assert_eq!(
        asking(&device(BackendKind::OpenCl, None, None), Some("sm_90a")),
        Ok("spirv")
    );
}

/// A second launch for a kernel's `then`: a chunk-parallel output kernel with a summed grid.
fn output_launch() -> Launch {
    Launch {
        entry: "linrec_simple_gla_fwd_output".into(),
        params: vec![
            KernelParam::Input(Role::Query),
            KernelParam::ChunkStates,
            KernelParam::Output,
            KernelParam::Scratch,
        ],
        grid: [
            SizeExpr::Const(1),
            SizeExpr::sum(SizeExpr::Sym(SizeSym::N), SizeExpr::Const(3)),
            SizeExpr::Sym(SizeSym::Hv),
        ],
        block: [128, 1, 1],
        shared_bytes: 256,
        scratch: 42,
    }
}

#[test]
fn launch_sequences_survive_the_artifact_folder_and_the_disk_cache() {
    // An artifact folder whose manifest gives the fixture kernel a second launch.
    let dir = fixture_copy("then-artifacts");
    let path = dir.path().join("manifest.json");
    let mut manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("manifest");
    manifest.kernels[0].info.then.push(output_launch());
    let expected = manifest.kernels[0].info.clone();
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&manifest).expect("serializes"),
    )
    .expect("write");
    let spec = simple_gla();
    let found = artifacts_only(Kernels::builder().artifacts(dir.path()))
        .get(&fixture_request(&spec))
        .expect("the folder has it");
    assert_eq!(found.kernel.info, expected);
    assert_eq!(found.kernel.info.then, [output_launch()]);

    // The disk cache stores and loads the whole KernelInfo, and so does a provider over it.
    let dir = TempDir::new("then-cache");
    let cache = DiskCache::new(dir.path());
    let request = KernelRequest::forward(&spec, "spirv", config());
    let key = request.key();
    let mut info = info_for(&key);
    info.then.push(output_launch());
    let fp = format!(
        "linrec-compiler {} (LLVM 22.1.8)",
        env!("CARGO_PKG_VERSION")
    );
    cache
        .store(&key, &fp, &info, b"two entry points", Duration::ZERO)
        .expect("store");
    let loaded = cache
        .load(&key, Some(&fp))
        .expect("load")
        .expect("an entry");
    assert_eq!(loaded.kernel.info, info);
    let served = Kernels::builder()
        .cache_dir(dir.path())
        .no_compiler()
        .build()
        .expect("builds")
        .get(&request)
        .expect("from disk");
    assert_eq!(served.kernel.info, info);
}
