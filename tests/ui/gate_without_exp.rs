// A log-space gate multiplies the state directly instead of through exp().
linrec::recurrence! {
    pub Gated {
        inputs { q: [K], k: [K], v: [V], g: log_gate }
        state S: [K, V];
        S = g * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
