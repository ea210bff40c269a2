// `gate` is not a kind.
linrec::recurrence! {
    pub Gated {
        inputs { q: [K], k: [K], v: [V], g: gate }
        state S: [K, V];
        S = exp(g) * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
