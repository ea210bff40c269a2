// The in-kernel L2 norm applies to the query and the key together.
linrec::recurrence! {
    pub Normed {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        l2norm(k);
        S = S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
