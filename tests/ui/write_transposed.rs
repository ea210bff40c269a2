// The write is [V, K]; the state is [K, V].
linrec::recurrence! {
    pub Plain {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = S + v * k^T;
        o = S^T * q * scale;
    }
}

fn main() {}
