// The state is keys by values.
linrec::recurrence! {
    pub Transposed {
        inputs { q: [K], k: [K], v: [V] }
        state S: [V, K];
        S = S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
