//! Shared helpers: the table of every spec the validator accepts, problem set-up, the loss, and
//! the generic enumeration of parameters (every input tensor and h0) and their gradients.

use linrec_spec::reference::{self, Gradients, Inputs, Rng, Tensor};
use linrec_spec::{
    ConstantRate, Decay, DeltaOrder, Dims, Features, Input, Read, Role, RunOptions, Scale,
    Sequences, Spec, Transition, Write,
};

/// Every decay form.
pub const DECAYS: [Decay; 5] = [
    Decay::None,
    Decay::Constant(ConstantRate::Retnet),
    Decay::Constant(ConstantRate::Input),
    Decay::Scalar,
    Decay::Diagonal,
];

/// Every transition form (both delta orders).
pub const TRANSITIONS: [Transition; 3] = [
    Transition::Identity,
    Transition::Delta {
        order: DeltaOrder::DecayThenDelta,
    },
    Transition::Delta {
        order: DeltaOrder::DeltaThenDecay,
    },
];

/// Every write form.
pub const WRITES: [Write; 2] = [Write::Outer, Write::BetaOuter];

/// Every read form.
pub const READS: [Read; 2] = [Read::Inclusive, Read::ExclusiveBonus];

/// The spec scales the table uses: the default and a fixed one.
pub const SCALES: [Scale; 2] = [Scale::InvSqrtK, Scale::Value(0.7)];

/// The conventional input name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Query => "q",
        Role::Key => "k",
        Role::Value => "v",
        Role::Gate => "g",
        Role::Beta => "beta",
        Role::Bonus => "u",
        Role::DecayRate => "decay_rate",
    }
}

/// A spec of the given forms declaring exactly the inputs the forms need.
pub fn make_spec(
    decay: Decay,
    transition: Transition,
    write: Write,
    read: Read,
    scale: Scale,
    qk_l2norm: bool,
) -> Spec {
    let mut spec = Spec {
        name: "case".into(),
        doc: String::new(),
        inputs: Vec::new(),
        decay,
        transition,
        write,
        read,
        scale,
        features: Features { qk_l2norm },
    };
    spec.inputs = spec
        .required_roles()
        .into_iter()
        .map(|r| Input::new(role_name(r), r))
        .collect();
    spec
}

/// Every combination of forms and options, valid or not.
pub fn all_combinations() -> Vec<Spec> {
    let mut out = Vec::new();
    for decay in DECAYS {
        for transition in TRANSITIONS {
            for write in WRITES {
                for read in READS {
                    for scale in SCALES {
                        for l2 in [false, true] {
                            out.push(make_spec(decay, transition, write, read, scale, l2));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every combination the validator accepts: the table the gradient tests run over.
pub fn valid_specs() -> Vec<Spec> {
    all_combinations()
        .into_iter()
        .filter(|s| s.validate().is_ok())
        .collect()
}

/// A one-line description of a spec's forms for failure messages.
pub fn describe(spec: &Spec) -> String {
    format!(
        "decay={:?} transition={:?} write={:?} read={:?} scale={:?} l2norm={}",
        spec.decay, spec.transition, spec.write, spec.read, spec.scale, spec.features.qk_l2norm
    )
}

/// A spec with the plain linear-attention forms and the given changes applied.
pub fn base_spec() -> Spec {
    make_spec(
        Decay::None,
        Transition::Identity,
        Write::Outer,
        Read::Inclusive,
        Scale::InvSqrtK,
        false,
    )
}

/// The problem shape and options of one test case.
#[derive(Clone, Debug)]
pub struct Case {
    pub dims: Dims,
    pub cu_seqlens: Option<Vec<i64>>,
    /// Give an initial state.
    pub h0: bool,
    /// Ask for the final state and put a random `dht` into the loss.
    pub dht: bool,
    /// `RunOptions::scale`.
    pub scale_override: Option<f64>,
    /// Make the decays gentle and the keys unit-norm so contributions survive long sequences
    /// and the delta rule stays a contraction.
    pub gentle: bool,
    pub seed: u64,
}

impl Case {
    pub fn new(dims: Dims) -> Self {
        Case {
            dims,
            cu_seqlens: None,
            h0: false,
            dht: false,
            scale_override: None,
            gentle: false,
            seed: 1,
        }
    }

    pub fn opts(&self) -> RunOptions {
        RunOptions {
            scale: self.scale_override,
            cu_seqlens: self.cu_seqlens.clone(),
            output_final_state: self.dht,
        }
    }

    /// N, the number of sequences.
    pub fn sequences(&self) -> usize {
        Sequences::new(&self.dims, self.cu_seqlens.as_deref())
            .expect("test case has valid sequences")
            .len()
    }
}

/// Inputs, options and loss weights of one case.
#[derive(Clone, Debug)]
pub struct Problem {
    pub inputs: Inputs,
    pub opts: RunOptions,
    pub d_o: Tensor,
    pub dht: Option<Tensor>,
}

/// A tensor of standard normal values.
pub fn normal(shape: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::from_fn(shape, || rng.normal())
}

/// Scales each row of length `n` to unit norm.
pub fn unit_rows(t: &mut Tensor, n: usize) {
    for row in t.data.chunks_mut(n) {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Builds the problem of `case` for `spec`.
pub fn problem(spec: &Spec, case: &Case) -> Problem {
    let dims = &case.dims;
    let mut inputs = reference::random_inputs(spec, dims, case.seed);
    let mut rng = Rng::new(case.seed.wrapping_mul(0x5851_F42D_4C95_7F2D) ^ 0xABCD);
    let n = case.sequences();
    if case.gentle {
        if let Some(g) = inputs.g.as_mut() {
            g.data.iter_mut().for_each(|x| *x *= 0.05);
        }
        unit_rows(&mut inputs.k, dims.key_dim);
    }
    if case.h0 {
        inputs.h0 = Some(normal(&dims.state_shape(n), &mut rng));
    }
    let d_o = normal(&dims.output_shape(), &mut rng);
    let dht = case.dht.then(|| normal(&dims.state_shape(n), &mut rng));
    Problem {
        inputs,
        opts: case.opts(),
        d_o,
        dht,
    }
}

/// `Σ a ⊙ b`.
pub fn dot(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    a.data.iter().zip(&b.data).map(|(x, y)| x * y).sum()
}

/// `L = Σ o ⊙ do + Σ ht ⊙ dht` at `inputs`.
pub fn loss(spec: &Spec, p: &Problem, inputs: &Inputs) -> f64 {
    let out = reference::forward(spec, inputs, &p.opts).expect("forward runs");
    let mut l = dot(&out.o, &p.d_o);
    if let Some(dht) = &p.dht {
        l += dot(out.ht.as_ref().expect("final state asked for"), dht);
    }
    l
}

/// Analytic gradients of the problem.
pub fn gradients(spec: &Spec, p: &Problem) -> Gradients {
    reference::backward(spec, &p.inputs, &p.opts, &p.d_o, p.dht.as_ref()).expect("backward runs")
}

/// Something the loss is differentiated with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    Input(Role),
    H0,
}

/// Every parameter: each role's tensor and the initial state.
pub fn params() -> Vec<Param> {
    Role::ALL
        .into_iter()
        .map(Param::Input)
        .chain([Param::H0])
        .collect()
}

impl Param {
    pub fn name(self) -> String {
        match self {
            Param::Input(r) => format!("d{}", role_name(r)),
            Param::H0 => "dh0".into(),
        }
    }

    pub fn get(self, inputs: &Inputs) -> Option<&Tensor> {
        match self {
            Param::Input(r) => inputs.get(r),
            Param::H0 => inputs.h0.as_ref(),
        }
    }

    pub fn get_mut(self, inputs: &mut Inputs) -> Option<&mut Tensor> {
        match self {
            Param::Input(Role::Query) => Some(&mut inputs.q),
            Param::Input(Role::Key) => Some(&mut inputs.k),
            Param::Input(Role::Value) => Some(&mut inputs.v),
            Param::Input(Role::Gate) => inputs.g.as_mut(),
            Param::Input(Role::Beta) => inputs.beta.as_mut(),
            Param::Input(Role::Bonus) => inputs.u.as_mut(),
            Param::Input(Role::DecayRate) => inputs.decay_rate.as_mut(),
            Param::H0 => inputs.h0.as_mut(),
        }
    }

    pub fn grad(self, g: &Gradients) -> Option<&Tensor> {
        match self {
            Param::Input(r) => g.get(r),
            Param::H0 => g.dh0.as_ref(),
        }
    }
}

/// Step of the central differences.
pub const FD_STEP: f64 = 1e-5;
/// Relative tolerance of the comparison.
pub const FD_RTOL: f64 = 1e-6;

/// What a finite-difference check covered.
#[derive(Debug, Default, Clone, Copy)]
pub struct FdStats {
    /// Elements compared.
    pub elements: usize,
    /// Largest `|fd − analytic| / tolerance` seen (< 1 passes).
    pub worst: f64,
}

/// Compares every analytic gradient element against central differences of the loss.
///
/// Tolerance per element: `FD_RTOL · (|analytic| + max(‖analytic tensor‖_∞, 1e-2))`, i.e.
/// relative to the element and to the scale of its tensor (round-off of the difference
/// quotient is ~1e-16·|L|/h, orders of magnitude below it). Also checks that a gradient is
/// returned exactly for each tensor given, with its shape, finite everywhere.
pub fn check_gradients(spec: &Spec, case: &Case) -> Result<FdStats, String> {
    let p = problem(spec, case);
    let grads = gradients(spec, &p);
    let mut stats = FdStats::default();
    let mut failures = Vec::new();
    for param in params() {
        let (value, grad) = (param.get(&p.inputs), param.grad(&grads));
        let (value, grad) = match (value, grad) {
            (None, None) => continue,
            (Some(v), Some(g)) => (v, g),
            (v, g) => {
                return Err(format!(
                    "{}: input given = {}, gradient returned = {}",
                    param.name(),
                    v.is_some(),
                    g.is_some()
                ));
            }
        };
        if grad.shape != value.shape || grad.data.len() != value.data.len() {
            return Err(format!(
                "{}: shape {:?}, input shape {:?}",
                param.name(),
                grad.shape,
                value.shape
            ));
        }
        if grad.data.iter().any(|x| !x.is_finite()) {
            return Err(format!("{}: not finite", param.name()));
        }
        let gmax = grad.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for i in 0..value.data.len() {
            let mut plus = p.inputs.clone();
            let mut minus = p.inputs.clone();
            param.get_mut(&mut plus).expect("present").data[i] += FD_STEP;
            param.get_mut(&mut minus).expect("present").data[i] -= FD_STEP;
            let fd = (loss(spec, &p, &plus) - loss(spec, &p, &minus)) / (2.0 * FD_STEP);
            let an = grad.data[i];
            let tol = FD_RTOL * (an.abs() + gmax.max(1e-2));
            let ratio = (fd - an).abs() / tol;
            stats.worst = stats.worst.max(ratio);
            stats.elements += 1;
            if ratio.is_nan() || ratio >= 1.0 {
                failures.push(format!(
                    "{}[{i}]: analytic {an:.12e}, finite difference {fd:.12e}",
                    param.name()
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(stats)
    } else {
        let n = failures.len();
        failures.truncate(8);
        Err(format!("{n} elements differ: {}", failures.join("; ")))
    }
}

/// `max |a − b|` over same-shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    a.data
        .iter()
        .zip(&b.data)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// Asserts `a ≈ b` elementwise to `tol` relative to `b`'s largest element (at least 1).
#[track_caller]
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.shape, b.shape, "{what}: shapes differ");
    let scale = b.data.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let diff = max_abs_diff(a, b);
    assert!(
        diff <= tol * scale,
        "{what}: max |difference| {diff:e} exceeds {tol:e} · {scale}"
    );
}
