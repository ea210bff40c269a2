//! `linrec compile <variant|all> --target T [T...] --out DIR [--direction forward|backward|both]`:
//! ahead-of-time artifacts (one binary per kernel plus `manifest.json`) that a linrec built
//! without `jit` loads. Forward kernels by default; `--direction backward` or `both` adds the
//! backward kernels, one per forward config (a backward reads the forward's h0 / final-state /
//! varlen options).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use linrec::catalogue::{self, Builtin};
use linrec::spec::launch::{KernelConfig, MANIFEST_VERSION, Manifest, ManifestEntry};
use linrec_compiler::artifact::config_tag;
use linrec_compiler::plan::PlanError;
use linrec_compiler::{BinaryFormat, Target};

use crate::Failure;
use crate::emit::parse_head_dims;
use crate::kernels::{check_chunk, parse_dtype};
use linrec_runtime::kernels::{Direction, sha256_hex};

/// Which kernels to compile.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// The forward kernels (what `linrec run` and `linrec bench` need).
    Forward,
    /// The backward kernels (what `linrec run --backward` needs besides the forward ones).
    Backward,
    /// Both.
    Both,
}

impl DirectionArg {
    fn directions(self) -> &'static [Direction] {
        match self {
            DirectionArg::Forward => &[Direction::Forward],
            DirectionArg::Backward => &[Direction::Backward],
            DirectionArg::Both => &[Direction::Forward, Direction::Backward],
        }
    }
}

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
    /// Forward kernels, backward kernels, or both.
    #[arg(long, value_enum, default_value = "forward")]
    direction: DirectionArg,
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

    let directions = args.direction.directions();
    let per_variant = targets.len() * configs.len() * directions.len();
    let total = builtins.len() * per_variant;
    let start = Instant::now();
    let mut entries = Vec::new();
    let mut done = 0;
    for builtin in builtins {
        let spec = builtin.spec();
        // A form the compiler does not derive yet: one line for the variant, not one per kernel.
        if all {
            let plan = linrec_compiler::plan::forward(&spec).and_then(|_| {
                if directions.contains(&Direction::Backward) {
                    linrec_compiler::plan::backward(&spec).map(|_| ())
                } else {
                    Ok(())
                }
            });
            if let Err(e @ PlanError::NotYetSupported { .. }) = plan {
                done += per_variant;
                eprintln!("[{done:>4}/{total}] {:<16} skipped: {e}", spec.name);
                continue;
            }
        }
        for &direction in directions {
            for &target in &targets {
                for config in &configs {
                    done += 1;
                    let label = format!(
                        "[{done:>4}/{total}] {:<16} {:<8} {:<8} {}",
                        spec.name,
                        direction.name(),
                        target.name(),
                        config_tag(config)
                    );
                    let compiled = match direction {
                        Direction::Forward => linrec_compiler::compile(&spec, target, config),
                        Direction::Backward => {
                            linrec_compiler::compile_backward(&spec, target, config)
                        }
                    };
                    match compiled {
                        Ok(artifact) => {
                            let ms = artifact.compile_time.as_secs_f64() * 1e3;
                            let file = format!(
                                "{}.{}.{}.{}",
                                artifact.info.entry,
                                target.name(),
                                config_tag(config),
                                extension(target.format())
                            );
                            if entries.iter().any(|e: &ManifestEntry| e.file == file) {
                                return Err(Failure::check(format!(
                                    "{label}: two kernels would be written to {file}"
                                )));
                            }
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
