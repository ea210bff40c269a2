// The update is linear in the state.
linrec::recurrence! {
    pub Quadratic {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = S * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
