//! Varlen (`cu_seqlens`) against its sequences run one by one, and against a padded-free batch.

use crate::common::{Case, Param, assert_close, gradients, params, problem, valid_specs};
use linrec_spec::reference::{self, Inputs, Tensor};
use linrec_spec::{Dims, Role, RunOptions, Spec};

const TOL: f64 = 1e-12;

/// Tokens `start..end` of a `[1, T, ...]` tensor, as `[1, end − start, ...]`.
fn slice_tokens(t: &Tensor, start: usize, end: usize) -> Tensor {
    let per = t.shape[2..].iter().product::<usize>();
    let mut shape = t.shape.clone();
    shape[1] = end - start;
    Tensor::from_vec(&shape, t.data[start * per..end * per].to_vec()).unwrap()
}

/// Writes `part` (`[1, len, ...]`) into tokens `start..` of `whole` (`[1, T, ...]`).
fn put_tokens(whole: &mut Tensor, part: &Tensor, start: usize) {
    let per = whole.shape[2..].iter().product::<usize>();
    whole.data[start * per..start * per + part.len()].copy_from_slice(&part.data);
}

/// Row `n` of an `[N, ...]` tensor, as `[1, ...]`.
fn row(t: &Tensor, n: usize) -> Tensor {
    let per = t.shape[1..].iter().product::<usize>();
    let mut shape = t.shape.clone();
    shape[0] = 1;
    Tensor::from_vec(&shape, t.data[n * per..(n + 1) * per].to_vec()).unwrap()
}

/// Writes `part` (`[1, ...]`) into row `n` of `whole` (`[N, ...]`).
fn put_row(whole: &mut Tensor, part: &Tensor, n: usize) {
    let per = part.len();
    whole.data[n * per..(n + 1) * per].copy_from_slice(&part.data);
}

fn add_into(acc: &mut Tensor, t: &Tensor) {
    acc.data.iter_mut().zip(&t.data).for_each(|(a, b)| *a += b);
}

/// Runs `spec` over the varlen `case` once packed and once per sequence and compares outputs,
/// final states and every gradient.
fn check_against_sequences(spec: &Spec, case: &Case) {
    let cu = case.cu_seqlens.clone().unwrap();
    let p = problem(spec, case);
    let packed = reference::forward(spec, &p.inputs, &p.opts).unwrap();
    let packed_grads = gradients(spec, &p);

    let mut o = Tensor::zeros(&packed.o.shape);
    let mut ht = Tensor::zeros(&packed.ht.as_ref().unwrap().shape);
    let mut expected = p.inputs.clone();
    for param in params() {
        if let Some(t) = param.get_mut(&mut expected) {
            *t = Tensor::zeros(&t.shape);
        }
    }
    for (n, w) in cu.windows(2).enumerate() {
        let (start, end) = (w[0] as usize, w[1] as usize);
        let one = Inputs {
            q: slice_tokens(&p.inputs.q, start, end),
            k: slice_tokens(&p.inputs.k, start, end),
            v: slice_tokens(&p.inputs.v, start, end),
            g: p.inputs.g.as_ref().map(|g| slice_tokens(g, start, end)),
            beta: p.inputs.beta.as_ref().map(|b| slice_tokens(b, start, end)),
            u: p.inputs.u.clone(),
            decay_rate: p.inputs.decay_rate.clone(),
            h0: p.inputs.h0.as_ref().map(|h| row(h, n)),
        };
        let opts = RunOptions {
            cu_seqlens: None,
            ..p.opts.clone()
        };
        let out = reference::forward(spec, &one, &opts).unwrap();
        put_tokens(&mut o, &out.o, start);
        put_row(&mut ht, out.ht.as_ref().unwrap(), n);
        let d_o = slice_tokens(&p.d_o, start, end);
        let dht = p.dht.as_ref().map(|d| row(d, n));
        let g = reference::backward(spec, &one, &opts, &d_o, dht.as_ref()).unwrap();
        for param in params() {
            let Some(grad) = param.grad(&g) else { continue };
            let acc = param.get_mut(&mut expected).unwrap();
            match param {
                // Shared across sequences: gradients add up.
                Param::Input(Role::Bonus | Role::DecayRate) => add_into(acc, grad),
                Param::H0 => put_row(acc, grad, n),
                _ => put_tokens(acc, grad, start),
            }
        }
    }
    assert_close(&packed.o, &o, TOL, "o");
    assert_close(packed.ht.as_ref().unwrap(), &ht, TOL, "ht");
    for param in params() {
        match (param.grad(&packed_grads), param.get(&expected)) {
            (Some(a), Some(b)) => assert_close(a, b, TOL, &param.name()),
            (None, None) => {}
            _ => panic!("{}: gradient presence differs", param.name()),
        }
    }
}

fn varlen_case(t: usize, cu: &[i64], h: usize, hv: usize) -> Case {
    let mut case = Case::new(Dims::new(1, t, h, 3, 2).with_value_heads(hv));
    case.cu_seqlens = Some(cu.to_vec());
    case.h0 = true;
    case.dht = true;
    case.seed = 31;
    case
}

/// `cu_seqlens = [0, 0, 3, 7]` (an empty first sequence), GVA, h0 per sequence: every spec.
#[test]
fn varlen_equals_sequences_one_by_one() {
    let case = varlen_case(7, &[0, 0, 3, 7], 1, 2);
    for spec in valid_specs() {
        check_against_sequences(&spec, &case);
    }
}

/// Empty sequences at the start, middle and end, and a sequence crossing the 64-token
/// checkpoint from an offset.
#[test]
fn varlen_with_empty_and_long_sequences() {
    let case = varlen_case(75, &[0, 0, 2, 2, 70, 75, 75], 2, 2);
    for spec in valid_specs() {
        check_against_sequences(&spec, &case);
    }
}

/// A varlen batch of equal-length sequences equals the same sequences as batch rows.
#[test]
fn varlen_equals_batch_of_equal_lengths() {
    for spec in valid_specs() {
        let mut batch = Case::new(Dims::new(3, 4, 1, 2, 2).with_value_heads(2));
        batch.h0 = true;
        batch.dht = true;
        let pb = problem(&spec, &batch);
        let mut pv = pb.clone();
        let pack = |t: &mut Tensor| {
            t.shape[1] *= t.shape[0];
            t.shape[0] = 1;
        };
        for param in [Role::Query, Role::Key, Role::Value, Role::Gate, Role::Beta] {
            if let Some(t) = Param::Input(param).get_mut(&mut pv.inputs) {
                pack(t);
            }
        }
        pack(&mut pv.d_o);
        pv.opts.cu_seqlens = Some(vec![0, 4, 8, 12]);
        let (ob, ov) = (
            reference::forward(&spec, &pb.inputs, &pb.opts).unwrap(),
            reference::forward(&spec, &pv.inputs, &pv.opts).unwrap(),
        );
        assert_eq!(ob.o.data, ov.o.data);
        assert_eq!(ob.ht, ov.ht);
        let (gb, gv) = (gradients(&spec, &pb), gradients(&spec, &pv));
        for param in params() {
            match (param.grad(&gb), param.grad(&gv)) {
                (Some(a), Some(b)) => assert_eq!(a.data, b.data, "{}", param.name()),
                (None, None) => {}
                _ => panic!("{}: gradient presence differs", param.name()),
            }
        }
    }
}
