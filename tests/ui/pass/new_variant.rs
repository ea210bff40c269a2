// A variant that is not a built-in, declared, read back and used through its typed API.
use linrec::spec::{ConstantRate, Decay, Role, Scale};

linrec::recurrence! {
    /// Lightning attention with its per-head decay passed as an input.
    pub Lightning {
        inputs { q: [K], k: [K], v: [V], a: log_rate }
        state S: [K, V];
        S = exp(a) * S + k * v^T;
        o = S^T * q * scale;
    }

    /// A private one, unscaled.
    Unscaled {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = S + k * v^T;
        o = S^T * q * scale;
        scale = 1.0;
    }
}

// The typed op of a declared variant: owned buffers or references, checked at compile time
// (running it needs a device).
#[allow(dead_code)]
fn run(
    device: &linrec::runtime::Device,
    owned: &LightningInputs<linrec::runtime::DeviceBuffer>,
    borrowed: &UnscaledInputs<&linrec::runtime::DeviceBuffer>,
) -> Result<linrec::ops::Forward, linrec::Error> {
    let options = linrec::ops::ForwardOptions::new().output_final_state(true);
    Unscaled::forward(device, borrowed, &options)?;
    Lightning::forward(device, owned, &options)
}

fn main() {
    let spec = Lightning::spec();
    spec.validate().expect("valid");
    assert_eq!(spec.name, "lightning");
    assert_eq!(spec.doc, "Lightning attention with its per-head decay passed as an input.");
    assert_eq!(spec.decay, Decay::Constant(ConstantRate::Input));
    assert_eq!(Lightning::INPUTS[3], ("a", Role::DecayRate));
    let inputs = LightningInputs { q: [1.0f32; 4], k: [2.0; 4], v: [3.0; 4], a: [0.0; 4] };
    let shapes = inputs.map(|_, role, x| (role, x.len()));
    assert_eq!(shapes.a, (Role::DecayRate, 4));
    assert_eq!(Unscaled::spec().scale, Scale::Value(1.0));
}
