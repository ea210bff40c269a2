// The exclusive read alone is not a supported form; it comes with the bonus.
linrec::recurrence! {
    pub Exclusive {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = S + k * v^T;
        o = S_prev^T * q * scale;
    }
}

fn main() {}
