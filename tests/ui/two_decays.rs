// One decay per update.
linrec::recurrence! {
    pub TwoDecays {
        inputs { q: [K], k: [K], v: [V], g: log_gate }
        state S: [K, V];
        S = exp(g) * gamma * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
