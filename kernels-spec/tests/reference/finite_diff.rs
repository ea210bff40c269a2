//! The reference's exact backward against central finite differences of
//! `L = Σ o ⊙ do + Σ ht ⊙ dht`, for every spec the validator accepts, under each option.

use crate::common::{
    Case, DECAYS, READS, SCALES, TRANSITIONS, WRITES, all_combinations, check_gradients, describe,
    valid_specs,
};
use linrec_spec::{ConstantRate, Decay, DeltaOrder, Dims, Read, Scale, Spec, Transition, Write};

/// Runs the check for every valid spec and reports every failing spec at once.
fn run_all(case: &Case) {
    run_specs(case, valid_specs());
}

/// Runs the check for `specs` and reports every failing spec at once.
fn run_specs(case: &Case, specs: Vec<Spec>) {
    let mut failures = Vec::new();
    let mut elements = 0;
    let mut worst = 0.0f64;
    for spec in &specs {
        match check_gradients(spec, case) {
            Ok(stats) => {
                elements += stats.elements;
                worst = worst.max(stats.worst);
            }
            Err(e) => failures.push(format!("{}: {e}", describe(spec))),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} specs fail on {case:?}:\n{}",
        failures.len(),
        specs.len(),
        failures.join("\n")
    );
    assert!(elements > 0);
    eprintln!(
        "{} specs, {elements} gradient elements, worst error / tolerance {worst:.3e}",
        specs.len()
    );
}

/// The table covers every form and option, and exactly the combinations the validator
/// accepts: 5 decays × (identity × 2 writes × 2 reads + 2 delta orders × beta_outer ×
/// inclusive) × 2 scales × l2norm on/off.
#[test]
fn table_covers_every_form() {
    let specs = valid_specs();
    assert_eq!(specs.len(), 5 * (4 + 2) * 2 * 2);
    assert_eq!(all_combinations().len(), 5 * 3 * 2 * 2 * 2 * 2);
    for decay in DECAYS {
        assert!(specs.iter().any(|s| s.decay == decay), "{decay:?}");
    }
    for transition in TRANSITIONS {
        assert!(specs.iter().any(|s| s.transition == transition));
    }
    for write in WRITES {
        assert!(specs.iter().any(|s| s.write == write));
    }
    for read in READS {
        assert!(specs.iter().any(|s| s.read == read));
    }
    for scale in SCALES {
        assert!(specs.iter().any(|s| s.scale == scale));
    }
    for l2 in [false, true] {
        assert!(specs.iter().any(|s| s.features.qk_l2norm == l2));
    }
    // The combinations the brief singles out.
    for order in [DeltaOrder::DecayThenDelta, DeltaOrder::DeltaThenDecay] {
        for decay in [Decay::Scalar, Decay::Diagonal] {
            assert!(
                specs
                    .iter()
                    .any(|s| s.decay == decay && s.transition == Transition::Delta { order })
            );
        }
    }
    assert!(
        specs
            .iter()
            .any(|s| s.write == Write::BetaOuter && s.transition == Transition::Identity)
    );
    assert!(
        specs
            .iter()
            .any(|s| s.read == Read::ExclusiveBonus
                && s.decay == Decay::Constant(ConstantRate::Input))
    );
}

/// GVA (HV = 2H), B = 2, initial state and final-state gradient.
#[test]
fn gva_batch_h0_and_dht() {
    let mut case = Case::new(Dims::new(2, 5, 1, 3, 2).with_value_heads(2));
    case.h0 = true;
    case.dht = true;
    case.seed = 11;
    run_all(&case);
}

/// Varlen with an empty sequence, H = 2, HV = 4, h0 per sequence, dht, and a
/// `RunOptions::scale` override (over both default and fixed spec scales).
#[test]
fn varlen_empty_sequence_gva_scale_override() {
    let mut case = Case::new(Dims::new(1, 7, 2, 3, 2).with_value_heads(4));
    case.cu_seqlens = Some(vec![0, 0, 3, 7]);
    case.h0 = true;
    case.dht = true;
    case.scale_override = Some(0.45);
    case.seed = 12;
    run_all(&case);
}

/// No initial state, no final state: only `Σ o ⊙ do`; no dh0 may be returned.
#[test]
fn no_h0_no_final_state() {
    let mut case = Case::new(Dims::new(2, 5, 2, 3, 2));
    case.seed = 13;
    run_all(&case);
}

/// Initial state whose gradient flows through the outputs only (no dht).
#[test]
fn h0_without_dht() {
    let mut case = Case::new(Dims::new(1, 4, 1, 2, 3).with_value_heads(3));
    case.h0 = true;
    case.seed = 14;
    run_all(&case);
}

/// Final state without an initial state, odd dims.
#[test]
fn dht_without_h0() {
    let mut case = Case::new(Dims::new(2, 3, 1, 1, 1));
    case.dht = true;
    case.seed = 15;
    run_all(&case);
}

/// T = 0: outputs are empty, the final state is h0, dh0 = dht.
#[test]
fn empty_sequence_length() {
    let mut case = Case::new(Dims::new(2, 0, 1, 2, 2).with_value_heads(2));
    case.h0 = true;
    case.dht = true;
    run_all(&case);
}

/// T = 70 > 64: the backward's checkpointing is crossed (gentle gates so every token
/// matters at the end). Every form combination, default scale, no l2norm (the long varlen
/// test below takes the other half of the options, to keep the debug-build run short).
#[test]
fn long_sequence_crosses_checkpoint() {
    let mut case = Case::new(Dims::new(1, 70, 1, 2, 2));
    case.h0 = true;
    case.dht = true;
    case.gentle = true;
    case.seed = 16;
    let specs = valid_specs()
        .into_iter()
        .filter(|s| s.scale == Scale::InvSqrtK && !s.features.qk_l2norm)
        .collect::<Vec<_>>();
    assert_eq!(specs.len(), 30);
    run_specs(&case, specs);
}

/// Varlen where a sequence starting mid-buffer crosses its own 64-token checkpoint. Every form
/// combination with a fixed scale and l2norm on.
#[test]
fn long_varlen_sequence_crosses_checkpoint() {
    let mut case = Case::new(Dims::new(1, 72, 1, 2, 1).with_value_heads(2));
    case.cu_seqlens = Some(vec![0, 4, 4, 72]);
    case.h0 = true;
    case.dht = true;
    case.gentle = true;
    case.seed = 17;
    let specs = valid_specs()
        .into_iter()
        .filter(|s| s.scale != Scale::InvSqrtK && s.features.qk_l2norm)
        .collect::<Vec<_>>();
    assert_eq!(specs.len(), 30);
    run_specs(&case, specs);
}
