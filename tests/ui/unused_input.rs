// A declared input that no equation uses.
linrec::recurrence! {
    pub Unused {
        inputs { q: [K], k: [K], v: [V], g: log_gate }
        state S: [K, V];
        S = S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
