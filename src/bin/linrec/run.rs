//! `linrec run`: until kernels exist, runs the f64 reference forward and exact backward on
//! random inputs and cross-checks the backward against central finite differences.

use std::time::Instant;

use clap::Args;
use linrec::catalogue;
use linrec::reference::{self, Inputs, Rng, Tensor};
use linrec::spec::{Dims, Role, RunOptions, Spec};

use crate::Failure;

#[derive(Args)]
pub struct RunArgs {
    /// A built-in name or alias (see `linrec list`).
    #[arg(default_value = catalogue::DEFAULT_VARIANT)]
    variant: String,
    /// Problem size `B,T,H,K,V` (or `B,T,H,HV,K,V` for GVA).
    #[arg(long, default_value = "2,100,2,16,16")]
    shape: String,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Parses `B,T,H,K,V` or `B,T,H,HV,K,V`.
fn parse_shape(s: &str) -> Result<Dims, Failure> {
    let bad = || {
        Failure::usage(format!(
            "--shape `{s}` is not valid: give B,T,H,K,V or B,T,H,HV,K,V as non-negative integers, e.g. 2,100,2,16,16"
        ))
    };
    let parts: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let dims = match parts[..] {
        [b, t, h, k, v] => Dims::new(b, t, h, k, v),
        [b, t, h, hv, k, v] => Dims::new(b, t, h, k, v).with_value_heads(hv),
        _ => return Err(bad()),
    };
    dims.validate()
        .map_err(|e| Failure::usage(format!("--shape: {e}")))?;
    Ok(dims)
}

fn loss(
    spec: &Spec,
    inputs: &Inputs,
    opts: &RunOptions,
    d_o: &Tensor,
    dht: &Tensor,
) -> Result<f64, Failure> {
    let out = reference::forward(spec, inputs, opts).map_err(Failure::usage)?;
    let dot = |a: &Tensor, b: &Tensor| a.data.iter().zip(&b.data).map(|(x, y)| x * y).sum::<f64>();
    Ok(dot(&out.o, d_o) + out.ht.as_ref().map_or(0.0, |ht| dot(ht, dht)))
}

fn tensor_mut(inputs: &mut Inputs, role: Option<Role>) -> Option<&mut Tensor> {
    match role {
        Some(Role::Query) => Some(&mut inputs.q),
        Some(Role::Key) => Some(&mut inputs.k),
        Some(Role::Value) => Some(&mut inputs.v),
        Some(Role::Gate) => inputs.g.as_mut(),
        Some(Role::Beta) => inputs.beta.as_mut(),
        Some(Role::Bonus) => inputs.u.as_mut(),
        Some(Role::DecayRate) => inputs.decay_rate.as_mut(),
        None => inputs.h0.as_mut(),
    }
}

pub fn run(args: &RunArgs) -> Result<(), Failure> {
    let builtin = catalogue::lookup(&args.variant).map_err(Failure::usage)?;
    let spec = builtin.spec();
    let dims = parse_shape(&args.shape)?;
    println!("variant  {} — {}", spec.name, spec.doc);
    println!("         {}", spec.recurrence_text());
    println!("spec     {}", spec.hash().short());
    println!(
        "shape    B={} T={} H={} HV={} K={} V={}",
        dims.batch, dims.seq_len, dims.heads, dims.value_heads, dims.key_dim, dims.value_dim
    );
    println!("device   f64 CPU reference (GPU kernels arrive with the compiler)");

    let mut inputs = reference::random_inputs(&spec, &dims, args.seed);
    let mut rng = Rng::new(args.seed ^ 0x5eed);
    let state = dims.state_shape(dims.batch);
    inputs.h0 = Some(Tensor::from_fn(&state, || rng.normal()));
    let d_o = Tensor::from_fn(&dims.output_shape(), || rng.normal());
    let dht = Tensor::from_fn(&state, || rng.normal());
    let opts = RunOptions {
        output_final_state: true,
        ..Default::default()
    };

    let start = Instant::now();
    let out = reference::forward(&spec, &inputs, &opts).map_err(Failure::usage)?;
    let t_fwd = start.elapsed();
    let start = Instant::now();
    let grads =
        reference::backward(&spec, &inputs, &opts, &d_o, Some(&dht)).map_err(Failure::usage)?;
    let t_bwd = start.elapsed();
    println!(
        "forward  {:>9.2} ms   ‖o‖ = {:.6}   ‖ht‖ = {:.6}",
        t_fwd.as_secs_f64() * 1e3,
        out.o.norm(),
        out.ht.as_ref().map_or(0.0, Tensor::norm)
    );
    println!(
        "backward {:>9.2} ms   (exact reverse sweep)",
        t_bwd.as_secs_f64() * 1e3
    );

    // Spot-check the exact backward against central differences of L = Σ o⊙do + Σ ht⊙dht.
    println!("gradient spot check (central differences, 4 elements per tensor):");
    let mut worst: f64 = 0.0;
    let roles: Vec<(String, Option<Role>)> = spec
        .inputs
        .iter()
        .map(|i| (i.name.clone(), Some(i.role)))
        .chain([("h0".to_string(), None)])
        .collect();
    for (name, role) in roles {
        let analytic = match role {
            Some(r) => grads.get(r),
            None => grads.dh0.as_ref(),
        };
        let Some(analytic) = analytic else { continue };
        let n = analytic.len();
        if n == 0 {
            continue;
        }
        let mut err: f64 = 0.0;
        for _ in 0..4 {
            let idx = (rng.next_u64() % n as u64) as usize;
            let h = 1e-5;
            let mut plus = inputs.clone();
            let mut minus = inputs.clone();
            if let (Some(p), Some(m)) = (tensor_mut(&mut plus, role), tensor_mut(&mut minus, role))
            {
                p.data[idx] += h;
                m.data[idx] -= h;
            }
            let fd = (loss(&spec, &plus, &opts, &d_o, &dht)?
                - loss(&spec, &minus, &opts, &d_o, &dht)?)
                / (2.0 * h);
            let a = analytic.data[idx];
            err = err.max((fd - a).abs() / (1.0 + a.abs()));
        }
        println!("  d{name:<6} max rel. error {err:.2e}");
        worst = worst.max(err);
    }
    if worst < 1e-5 {
        println!("PASS     backward matches finite differences (worst {worst:.2e} < 1e-5)");
        Ok(())
    } else {
        Err(Failure::check(format!(
            "backward disagrees with finite differences: worst relative error {worst:.2e} >= 1e-5"
        )))
    }
}
