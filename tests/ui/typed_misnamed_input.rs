// A misspelt input is a compile error too.
linrec::recurrence! {
    pub Gated {
        inputs { q: [K], k: [K], v: [V], g: log_gate }
        state S: [K, V];
        S = exp(g) * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {
    let _inputs = GatedInputs { q: 0, k: 0, v: 0, gate: 0 };
}
