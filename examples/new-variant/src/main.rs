//! A new linrec user's first variants, declared from their papers with `recurrence!`:
//!
//! - HGRN2 (Qin et al. 2024), which linrec also ships, to check that a from-scratch declaration
//!   computes the same function as the built-in;
//! - Lightning attention with its per-head decay rates passed as a tensor, which linrec does not
//!   ship.
//!
//! It prints each spec, runs it through the f64 reference on a tiny problem, and fails if the
//! HGRN2 written here differs from the built-in.

use std::process::ExitCode;

use linrec::reference::{forward, random_inputs};
use linrec::spec::{Dims, RunOptions, Spec};

linrec::recurrence! {
    /// HGRN2 (Qin et al. 2024), from the paper: a forget gate per key channel, the input gate
    /// 1 - exp(g) as the key, and an unscaled read.
    ///
    /// The caller passes k = 1 - exp(g); the kernels see an ordinary key.
    pub Hgrn2 {
        inputs { q: [K], k: [K], v: [V], g: log_gate[K] }
        state S: [K, V];
        S = Diag(exp(g)) * S + k * v^T;
        o = S^T * q * scale;
        scale = 1.0;
    }

    /// Lightning attention (Qin et al. 2024) with learned per-head log-decay rates.
    pub LightningAttention {
        inputs { q: [K], k: [K], v: [V], a: log_rate }
        state S: [K, V];
        S = exp(a) * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn describe(spec: &Spec) -> Result<(), String> {
    println!("{} — {}", spec.name, spec.doc);
    println!("  {}", spec.recurrence_text());
    println!("  scale {}, hash {}", spec.scale_text(), spec.hash().short());
    for input in &spec.inputs {
        println!(
            "  input {:<4} {:<10} {}",
            input.name,
            input.role.as_str(),
            input.role.shape_text(&spec.decay)
        );
    }
    // A tiny problem through the f64 reference: B=1, T=5, H=2 (HV=4, GVA), K=3, V=2.
    let dims = Dims::new(1, 5, 2, 3, 2).with_value_heads(4);
    let out = forward(spec, &random_inputs(spec, &dims, 7), &RunOptions::default())
        .map_err(|e| format!("{}: reference: {e}", spec.name))?;
    println!("  reference o {:?}, ‖o‖ = {:.6}", out.o.shape, out.o.norm());
    Ok(())
}

fn main() -> ExitCode {
    let mine = Hgrn2::spec();
    let run = || -> Result<(), String> {
        describe(mine)?;
        describe(LightningAttention::spec())?;
        let builtin = linrec::catalogue::lookup("hgrn2")
            .map_err(|e| e.to_string())?
            .spec();
        if mine.hash() != builtin.hash() {
            return Err(format!(
                "HGRN2 declared here differs from the built-in:\n{}\nvs\n{}",
                mine.canonical_text(),
                builtin.canonical_text()
            ));
        }
        println!("hgrn2 declared from scratch = the built-in (hash {})", mine.hash().short());

        // The typed API: one field per declared input, here file names to load.
        let files = LightningAttentionInputs {
            q: "q.safetensors",
            k: "k.safetensors",
            v: "v.safetensors",
            a: "a.safetensors",
        };
        for (name, role, file) in files.named() {
            println!("  {name} ({role}) <- {file}");
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
