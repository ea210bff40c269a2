//! A minimal dense row-major f64 tensor and a deterministic random source for the reference.

/// Dense row-major f64 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Sizes, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f64>,
}

impl Tensor {
    /// All zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Wraps `data`; `None` when its length does not match `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f64>) -> Option<Self> {
        (data.len() == shape.iter().product::<usize>()).then(|| Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// Fills with `f(rng)` per element.
    pub fn from_fn(shape: &[usize], mut f: impl FnMut() -> f64) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: (0..n).map(|_| f()).collect(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Euclidean norm of all elements.
    pub fn norm(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    /// fla's criterion `‖self − reference‖₂ / ‖reference‖₂`. Infinite when any element of
    /// `self` is NaN or infinite or the shapes differ; the plain `‖self − reference‖₂` when the
    /// reference is all zeros (so an exact zero still passes).
    pub fn rel_error(&self, reference: &Tensor) -> f64 {
        if self.shape != reference.shape || self.data.iter().any(|x| !x.is_finite()) {
            return f64::INFINITY;
        }
        let diff = self
            .data
            .iter()
            .zip(&reference.data)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        let norm = reference.norm();
        if norm == 0.0 { diff } else { diff / norm }
    }
}

/// SplitMix64: a tiny deterministic generator, so inputs are reproducible from a seed on
/// every machine without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// `log(sigmoid(x))`, computed stably; the usual way to make a log-space gate ≤ 0.
pub fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// `sigmoid(x)`.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
