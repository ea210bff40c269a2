// Two inputs with one name.
linrec::recurrence! {
    pub Twice {
        inputs { q: [K], k: [K], v: [V], k: [K] }
        state S: [K, V];
        S = S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
