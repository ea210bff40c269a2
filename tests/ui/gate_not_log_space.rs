// A decay gate declared as a plain scalar: decays come from log-space gates.
linrec::recurrence! {
    pub Gated {
        inputs { q: [K], k: [K], v: [V], g: scalar }
        state S: [K, V];
        S = exp(g) * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
