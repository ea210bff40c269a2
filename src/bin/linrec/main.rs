//! The `linrec` command line: list and inspect variants, run them against the f64 reference.

mod bench;
#[cfg(feature = "jit")]
mod compile;
#[cfg(feature = "jit")]
mod emit;
mod kernels;
mod list;
mod run;
mod show;
mod tensor_file;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "linrec",
    version,
    about = "A compiler for linear-attention GPU kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the built-in variants: name, recurrence, fla equivalent.
    List,
    /// Show a variant: normalized spec, recurrence, inputs with shapes, constraints.
    Show {
        /// A built-in name or alias (see `linrec list`).
        variant: String,
    },
    /// Run a variant on random inputs on a device and check it against the f64 reference.
    Run(run::RunArgs),
    /// Time forward kernels on a device: median ms, GB/s, TFLOP/s, HBM floor (DESIGN §9).
    Bench(bench::BenchArgs),
    /// Print one compiler stage of a variant's kernel for a target.
    #[cfg(feature = "jit")]
    Emit(emit::EmitArgs),
    /// Compile variants to ahead-of-time artifacts (binaries + manifest.json).
    #[cfg(feature = "jit")]
    Compile(compile::CompileArgs),
}

/// A failure the CLI reports: message and exit code (2 for bad input, 1 for a failed check).
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// The user asked for something invalid.
    pub fn usage(e: impl std::fmt::Display) -> Self {
        Failure {
            message: e.to_string(),
            code: 2,
        }
    }

    /// A check failed.
    pub fn check(e: impl std::fmt::Display) -> Self {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => {
            list::run();
            Ok(())
        }
        Command::Show { variant } => show::run(&variant),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
        #[cfg(feature = "jit")]
        Command::Emit(args) => emit::run(&args),
        #[cfg(feature = "jit")]
        Command::Compile(args) => compile::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
