// The decay names an input that is not declared.
linrec::recurrence! {
    pub Gated {
        inputs { q: [K], k: [K], v: [V], g: log_gate }
        state S: [K, V];
        S = exp(gate) * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {
    // The variant's items exist despite the error: no follow-on errors here.
    let _ = Gated::spec();
    let _ = GatedInputs { q: (), k: (), v: (), g: () };
}
