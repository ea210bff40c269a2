// One input as both the key and the query.
linrec::recurrence! {
    pub SelfRead {
        inputs { k: [K], v: [V] }
        state S: [K, V];
        S = S + k * v^T;
        o = S^T * k * scale;
    }
}

fn main() {}
