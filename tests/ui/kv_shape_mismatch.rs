// The value is declared over K, but the write's right factor is over V.
linrec::recurrence! {
    pub Plain {
        inputs { q: [K], k: [K], v: [K] }
        state S: [K, V];
        S = S + k * v^T;
        o = S^T * q * scale;
    }
}

fn main() {}
