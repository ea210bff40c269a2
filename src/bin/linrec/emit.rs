//! `linrec emit <variant> --target T --stage plan|schedule|mlir|lowered|asm
//! [--direction forward|backward]`.

use clap::{Args, ValueEnum};
use linrec::catalogue;
use linrec::spec::launch::KernelConfig;

use crate::Failure;
use crate::kernels::{check_chunk, parse_dtype};

#[derive(Clone, Copy, ValueEnum)]
pub enum Stage {
    /// The per-chunk tile program.
    Plan,
    /// Kernels, tiles, grid and memory.
    Schedule,
    /// The emitted MLIR `gpu.module`, before lowering.
    Mlir,
    /// The module after the target's pass pipeline, before serialization.
    Lowered,
    /// PTX, AMDGCN assembly, or the SPIR-V disassembly.
    Asm,
}

/// Which kernel `linrec emit` prints.
#[derive(Clone, Copy, ValueEnum)]
pub enum EmitDirection {
    /// The forward kernel (o and the final state).
    Forward,
    /// The backward kernel (the gradients; its plan stage is the derived backward plan).
    Backward,
}

#[derive(Args)]
pub struct EmitArgs {
    /// A built-in name or alias (see `linrec list`).
    variant: String,
    /// sm_80, sm_90, sm_90a, gfx90a, gfx942, gfx1100 or spirv.
    #[arg(long)]
    target: String,
    /// Which stage to print.
    #[arg(long, value_enum, default_value = "asm")]
    stage: Stage,
    /// Element type of q, k, v: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Head dims `K:V` (or one number for both).
    #[arg(long, default_value = "128")]
    head_dims: String,
    /// Chunk length: 16, 32 or 64.
    #[arg(long, default_value_t = 64)]
    chunk: usize,
    /// The forward or the backward kernel.
    #[arg(long, value_enum, default_value = "forward")]
    direction: EmitDirection,
}

/// Parses `K:V` or `D`.
pub fn parse_head_dims(s: &str) -> Result<(usize, usize), Failure> {
    let bad = || {
        Failure::usage(format!(
            "--head-dims `{s}` is not valid: give K:V or one number for both, each in 1..=256"
        ))
    };
    let parse = |p: &str| p.trim().parse::<usize>().map_err(|_| bad());
    let (k, v) = match s.split_once(':') {
        Some((k, v)) => (parse(k)?, parse(v)?),
        None => {
            let d = parse(s)?;
            (d, d)
        }
    };
    if !(1..=256).contains(&k) || !(1..=256).contains(&v) {
        return Err(bad());
    }
    Ok((k, v))
}

pub fn run(args: &EmitArgs) -> Result<(), Failure> {
    let spec = catalogue::lookup(&args.variant)
        .map_err(Failure::usage)?
        .spec();
    let target: linrec_compiler::Target = args.target.parse().map_err(Failure::usage)?;
    let (key_dim, value_dim) = parse_head_dims(&args.head_dims)?;
    let config = KernelConfig {
        dtype: parse_dtype(&args.dtype)?,
        key_dim,
        value_dim,
        chunk: check_chunk(args.chunk)?,
        initial_state: true,
        final_state: true,
        varlen: false,
    };
    let artifact = match args.direction {
        EmitDirection::Forward => linrec_compiler::compile(&spec, target, &config),
        EmitDirection::Backward => linrec_compiler::compile_backward(&spec, target, &config),
    }
    .map_err(Failure::usage)?;
    let text = match args.stage {
        Stage::Plan => Some(artifact.plan_text),
        Stage::Schedule => Some(artifact.schedule_text),
        Stage::Mlir => Some(artifact.mlir),
        Stage::Lowered => artifact.lowered,
        Stage::Asm => artifact.asm,
    };
    let text = text.ok_or_else(|| {
        Failure::usage(format!(
            "stage not available for target {target} (the SPIR-V disassembly needs spirv-dis from spirv-tools)"
        ))
    })?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}
