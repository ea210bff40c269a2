// The delta rule with the write k v^T: rejected by the spec's validation, reported on the write.
linrec::recurrence! {
    pub Delta {
        inputs { q: [K], k: [K], v: [V], beta: scalar }
        state S: [K, V];
        S = (I - beta * k * k^T) * S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
