// The initial state is passed at call time; there is nothing to declare.
linrec::recurrence! {
    pub WithH0 {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        h0 zero;
        S = S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
