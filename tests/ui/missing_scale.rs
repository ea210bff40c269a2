// The read names its scale.
linrec::recurrence! {
    pub Unscaled {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = S + k * v^T;
        o = S^T * q;
    }
}

fn main() {}
