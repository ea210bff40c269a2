// exp() takes a log-space gate, not the state.
linrec::recurrence! {
    pub Exponential {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = exp(S) + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
