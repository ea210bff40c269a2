// A gate over K gives a diagonal decay, written Diag(exp(g)).
linrec::recurrence! {
    pub Gla {
        inputs { q: [K], k: [K], v: [V], g: log_gate[K] }
        state S: [K, V];
        S = exp(g) * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
