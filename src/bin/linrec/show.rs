//! `linrec show <variant>`.

use linrec::catalogue;
use linrec::spec::{Decay, Read, Transition};

use crate::Failure;

pub fn run(name: &str) -> Result<(), Failure> {
    let builtin = catalogue::lookup(name).map_err(Failure::usage)?;
    let spec = builtin.spec().normalized();
    println!("{} — {}", spec.name, spec.doc);
    if !builtin.aliases.is_empty() {
        println!("aliases: {}", builtin.aliases.join(", "));
    }
    println!("fla:     {}", builtin.fla);
    println!("hash:    {}", spec.hash());
    println!();
    println!("recurrence (per head, state S ∈ R^(K×V)):");
    println!("  {}", spec.update_text());
    println!("  {}", spec.read_text());
    println!("  scale = {}", spec.scale_text());
    println!();
    println!("inputs:");
    for input in &spec.inputs {
        println!(
            "  {:<6} {:<11} {}",
            input.name,
            input.role.as_str(),
            input.role.shape_text(&spec.decay)
        );
    }
    println!(
        "  {:<6} {:<11} [N, HV, K, V]  (optional initial state, fp32)",
        "h0", "state"
    );
    println!();
    println!("normalized spec (canonical encoding):");
    for line in spec.canonical_text().lines() {
        println!("  {line}");
    }
    println!();
    println!("constraints:");
    println!("  HV % H == 0 (GVA: HV value/state heads share H query/key heads)");
    println!("  head dims K, V in 1..=256; any T >= 0; inputs bf16, f16 or f32, fp32 accumulation");
    println!(
        "  varlen: B = 1, cu_seqlens [N+1] from 0, non-decreasing, ending at T (empty sequences allowed)"
    );
    match spec.decay {
        Decay::Scalar | Decay::Diagonal => {
            println!(
                "  gates are log-space: the decay factor is exp(g) (g <= 0 keeps the state bounded)"
            )
        }
        Decay::Constant(_) => println!("  constant decay: log-space rate per value head"),
        Decay::None => {}
    }
    if matches!(spec.transition, Transition::Delta { .. }) {
        println!(
            "  delta rule: beta in [0, 2] keeps the transition contractive; keys should be unit-norm"
        );
    }
    if spec.read == Read::ExclusiveBonus {
        println!(
            "  exclusive read: o_t reads S_(t-1); the current token enters through the bonus u"
        );
    }
    Ok(())
}
