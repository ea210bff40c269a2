// No read line.
linrec::recurrence! {
    pub NoOutput {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = S + k * v^T;
    }
}

fn main() {
    let _ = NoOutput::spec();
}
