// A negative scale: rejected by the spec's validation, reported on the number.
linrec::recurrence! {
    pub Negative {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = S + k * v^T;
        o = S^T * q * scale;
        scale = -1.0;
    }
}

fn main() {}
