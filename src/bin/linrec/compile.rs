//! `linrec compile <variant|all> --target T [T...] --out DIR`: ahead-of-time artifacts (one
//! binary per kernel plus `manifest.json`) that a linrec built without `jit` loads.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use linrec::catalogue::{self, Builtin};
use linrec::spec::launch::{KernelConfig, MANIFEST_VERSION, Manifest, ManifestEntry};
use linrec_compiler::artifact::config_tag;
use linrec_compiler::plan::PlanError;
use linrec_compiler::{BinaryFormat, Target};

use crate::Failure;
use crate::emit::parse_head_dims;
use crate::kernels::{check_chunk, parse_dtype};
use linrec_runtime::kernels::sha256_hex;

#[derive(Args)]
pub struct CompileArgs {
    /// Built-in names or aliases, or `all` for every built-in the compiler supports.
    #[arg(required = true)]
    variants: Vec<String>,
    /// Targets: sm_80, sm_90, sm_90a, gfx90a, gfx942, gfx1100, spirv.
    #[arg(long, required = true, num_args = 1..)]
    target: Vec<String>,
    /// Output folder (created; an existing manifest there is replaced).
    #[arg(long)]
    out: PathBuf,
    /// Element types, comma separated.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Head dims, comma-separated `K:V` pairs (or one number for both).
    #[arg(long, default_value = "128")]
    head_dims: String,
    /// Chunk length: 16, 32 or 64.
    #[arg(long, default_value_t = 64)]
    chunk: usize,
}

fn extension(format: BinaryFormat) -> &'static str {
    match format {
        BinaryFormat::Ptx => "ptx",
        BinaryFormat::Hsaco => "hsaco",
        BinaryFormat::Spirv => "spv",
    }
}

pub fn run(args: &CompileArgs) -> Result<(), Failure> {
    let all = args.variants.iter().any(|v| v == "all");
    let builtins: Vec<&Builtin> = if all {
        catalogue::BUILTINS.iter().collect()
    } else {
        args.variants
            .iter()
            .map(|v| catalogue::lookup(v).map_err(Failure::usage))
            .collect::<Result<_, _>>()?
    };
    let targets: Vec<Target> = args
        .target
        .iter()
        .map(|t| t.parse().map_err(Failure::usage))
        .collect::<Result<_, _>>()?;
    let dtypes = args
        .dtype
        .split(',')
        .map(parse_dtype)
        .collect::<Result<Vec<_>, _>>()?;
    let dims = args
        .head_dims
        .split(',')
        .map(parse_head_dims)
        .collect::<Result<Vec<_>, _>>()?;
    let chunk = check_chunk(args.chunk)?;
    let mut configs = Vec::new();
    for &dtype in &dtypes {
        for &(key_dim, value_dim) in &dims {
            // Every combination of the call-time options, so any call finds its kernel.
            for bits in 0..8u8 {
                configs.push(KernelConfig {
                    dtype,
                    key_dim,
                    value_dim,
                    chunk,
                    initial_state: bits & 1 != 0,
                    final_state: bits & 2 != 0,
                    varlen: bits & 4 != 0,
                });
            }
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| {
        Failure::usage(format!(
            "--out {}: cannot create it: {e}",
            args.out.display()
        ))
    })?;

    let total = builtins.len() * targets.len() * configs.len();
    let start = Instant::now();
    let mut entries = Vec::new();
    let mut done = 0;
    for builtin in builtins {
        let spec = builtin.spec();
        // A form the compiler does not derive yet: one line for the variant, not one per kernel.
        if all {
            if let Err(e @ PlanError::NotYetSupported { .. }) =
                linrec_compiler::plan::forward(&spec)
            {
                done += targets.len() * configs.len();
                eprintln!("[{done:>4}/{total}] {:<16} skipped: {e}", spec.name);
                continue;
            }
        }
        for &target in &targets {
            for config in &configs {
                done += 1;
                let label = format!(
                    "[{done:>4}/{total}] {:<16} {:<8} {}",
                    spec.name,
                    target.name(),
                    config_tag(config)
                );
                match linrec_compiler::compile(&spec, target, config) {
                    Ok(artifact) => {
                        let ms = artifact.compile_time.as_secs_f64() * 1e3;
                        let file = format!(
                            "{}.{}.{}.{}",
                            artifact.info.entry,
                            target.name(),
                            config_tag(config),
                            extension(target.format())
                        );
                        let path = args.out.join(&file);
                        std::fs::write(&path, &artifact.binary).map_err(|e| {
                            Failure::check(format!("cannot write {}: {e}", path.display()))
                        })?;
                        eprintln!("{label}  {ms:>7.1} ms  {file}");
                        entries.push(ManifestEntry {
                            sha256: sha256_hex(&artifact.binary),
                            file,
                            compile_ms: ms,
                            info: artifact.info,
                        });
                    }
                    Err(e) => return Err(Failure::usage(format!("{label}: {e}"))),
                }
            }
        }
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        compiler: linrec_compiler::fingerprint(),
        kernels: entries,
    };
    let path = args.out.join("manifest.json");
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Failure::check(format!("cannot encode the manifest: {e}")))?;
    std::fs::write(&path, json)
        .map_err(|e| Failure::check(format!("cannot write {}: {e}", path.display())))?;
    eprintln!(
        "wrote {} kernels and {} in {:.2} s",
        manifest.kernels.len(),
        path.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
