// The bonus belongs to the exclusive read S_prev^T * r.
linrec::recurrence! {
    pub Rwkv {
        inputs { r: [K], k: [K], v: [V], w: log_gate[K], u: per_head[K] }
        state S: [K, V];
        S = Diag(exp(w)) * S + k * v^T;
        o = (S^T * r + sum(r * u * k) * v) * scale;
    }
}

fn main() {}
