// `h0` is the initial state the runtime passes itself: not an input name.
linrec::recurrence! {
    pub Reserved {
        inputs { q: [K], h0: [K], v: [V] }
        state S: [K, V];
        S = S + h0 * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
