// The delta rule needs its strength beta.
linrec::recurrence! {
    pub Delta {
        inputs { q: [K], k: [K], v: [V], beta: scalar }
        state S: [K, V];
        S = (I - k * k^T) * S + beta * k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
