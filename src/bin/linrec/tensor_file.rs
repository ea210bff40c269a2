//! `linrec run --inputs FILE --outputs FILE`: tensors from and to safetensors files, so any
//! framework (torch, jax, numpy) can feed linrec and check what it computes.
//!
//! Everything in the file is checked here, before a device is opened or a kernel fetched, and
//! every problem is an error (exit code 2) naming the tensor, the shape it should have in the
//! symbols `B, T, H, HV, K, V, N` and what the file holds:
//!
//! - the spec's inputs are required, by their names (`q, k, v, g` for simple_gla; `r, k, v, w,
//!   u` for rwkv6); `h0`, `cu_seqlens`, `do` and `dht` are optional; any other name is refused,
//!   because a misspelled optional tensor (`h_0`) would otherwise silently change the run;
//! - the query, key and value tensors are bf16, f16 or f32, all three the same: that dtype
//!   selects the kernel's;
//! - gates, β, the bonus, decay rates and `h0` may be any float type (f16, bf16, f32, f64): the
//!   kernels read them as f32, so they are rounded to f32 (with a note when that changes the
//!   type), and the reference sees the rounded values;
//! - `cu_seqlens` is i32 or i64, `[N+1]`, starting at 0, never decreasing, ending at T, with
//!   B = 1;
//! - `do` and `dht` feed the backward (`linrec run --backward`): any float type, checked as
//!   `[B, T, HV, V]` and `[N, HV, K, V]`; `do` is rounded to the kernel's dtype and `dht` to
//!   f32, what the backward kernel reads. Without `--backward` they are checked and otherwise
//!   ignored, with a note, so one file serves a forward and a forward + backward check.
//!
//! Outputs are `o` (`[B, T, HV, V]`, the kernel's dtype) and `ht` (`[N, HV, K, V]`, f32); with
//! `--backward` also the gradients, named `d` + the input's name (`dq`, `dk`, `dv` in the
//! kernel's dtype, `dg`, `dbeta` f32 `[B, T, HV]`, ...) and `dh0` (`[N, HV, K, V]`, f32).

use std::collections::BTreeMap;
use std::path::Path;

use linrec::host;
use linrec::reference::{Inputs, Tensor};
use linrec::spec::launch::ElementType;
use linrec::spec::{Dims, Role, Sequences, ShapeError, Spec};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::Failure;

/// The kernels' largest head dim (K and V): the compiler's `schedule::HEAD_DIMS`, repeated here
/// because the CLI builds without the compiler (no `jit`) too.
pub const MAX_HEAD_DIM: usize = 256;

/// The optional tensors besides the spec's inputs, with their symbolic shapes.
const OPTIONAL: [(&str, &str); 4] = [
    ("h0", "[N, HV, K, V]"),
    ("cu_seqlens", "[N+1]"),
    ("do", "[B, T, HV, V]"),
    ("dht", "[N, HV, K, V]"),
];

/// A problem read from a file: sizes, kernel dtype, the values (as the kernel will read them)
/// and the varlen offsets.
pub struct FileProblem {
    /// The sizes, read off the tensors.
    pub dims: Dims,
    /// The dtype of q, k, v (and o): the kernel's.
    pub dtype: ElementType,
    /// The spec's inputs and `h0`, widened to f64 after rounding to what the kernel reads.
    pub inputs: Inputs,
    /// `cu_seqlens`, if the file has it.
    pub cu_seqlens: Option<Vec<i64>>,
    /// `do`, if the file has it, rounded to the kernel's dtype.
    pub d_o: Option<Tensor>,
    /// `dht`, if the file has it, rounded to f32.
    pub dht: Option<Tensor>,
    /// One line per tensor (`q bf16 [1, 64, 2, 32]`), for the run's report.
    pub summary: Vec<String>,
}

/// A lowercase dtype name as torch and numpy users write it.
fn dtype_name(d: Dtype) -> String {
    match d {
        Dtype::BF16 => "bf16".into(),
        Dtype::F16 => "f16".into(),
        Dtype::F32 => "f32".into(),
        Dtype::F64 => "f64".into(),
        Dtype::I32 => "i32".into(),
        Dtype::I64 => "i64".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// The kernel element type of a safetensors dtype, if kernels read it.
fn element_type(d: Dtype) -> Option<ElementType> {
    match d {
        Dtype::BF16 => Some(ElementType::Bf16),
        Dtype::F16 => Some(ElementType::F16),
        Dtype::F32 => Some(ElementType::F32),
        _ => None,
    }
}

/// `[B, T, H, K]` → `["B", "T", "H", "K"]`: the symbols are read off the same text that
/// `linrec show` prints, so the two can not disagree.
fn symbols(text: &str) -> Vec<&str> {
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .split(", ")
        .collect()
}

/// Which tensor fixed each size symbol, for conflict messages.
struct Binder {
    bound: BTreeMap<String, (usize, String)>,
}

impl Binder {
    fn new() -> Self {
        Binder {
            bound: BTreeMap::new(),
        }
    }

    fn set(&mut self, sym: &str, value: usize, origin: String) {
        self.bound.insert(sym.to_owned(), (value, origin));
    }

    fn get(&self, sym: &str) -> Option<&(usize, String)> {
        self.bound.get(sym)
    }

    /// Checks `found` against `symbolic` (e.g. `[B, T, H, K]`) and binds the symbols not yet
    /// bound; the first mismatch is an error naming the tensor.
    fn bind(&mut self, name: &str, symbolic: &str, found: &[usize]) -> Result<(), Failure> {
        let syms = symbols(symbolic);
        if syms.len() != found.len() {
            return Err(Failure::usage(format!(
                "tensor `{name}` has shape {found:?} (rank {}), expected {symbolic} (rank {})",
                found.len(),
                syms.len()
            )));
        }
        for (&sym, &size) in syms.iter().zip(found) {
            match self.get(sym) {
                Some((bound, origin)) if *bound != size => {
                    return Err(Failure::usage(format!(
                        "tensor `{name}` has shape {found:?}, expected {symbolic}: {sym} = {size} here but {sym} = {bound} from {origin}"
                    )));
                }
                Some(_) => {}
                None => self.set(sym, size, format!("`{name}` {found:?}")),
            }
        }
        Ok(())
    }

    fn size(&self, sym: &str) -> Result<usize, Failure> {
        self.get(sym)
            .map(|(v, _)| *v)
            .ok_or_else(|| Failure::usage(format!("no tensor in the file fixes the size {sym}")))
    }

    fn origin(&self, sym: &str) -> String {
        self.get(sym).map(|(_, o)| o.clone()).unwrap_or_default()
    }
}

/// Values of `view` as f64, for the float types (`None` for others).
fn floats(view: &TensorView<'_>) -> Option<Vec<f64>> {
    let bytes = view.data();
    Some(match view.dtype() {
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        d => host::from_bytes(element_type(d)?, bytes),
    })
}

/// Values of an i32 or i64 view (`None` for other dtypes).
fn integers(view: &TensorView<'_>) -> Option<Vec<i64>> {
    let bytes = view.data();
    Some(match view.dtype() {
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        _ => return None,
    })
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::BF16 | Dtype::F16 | Dtype::F32 | Dtype::F64)
}

/// `a, b and c`.
fn list(names: &[String]) -> String {
    match names {
        [] => "nothing".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Reads `path` and checks it against `spec`; prints notes (conversions, ignored tensors) on
/// stderr. `backward`: the run uses `do` and `dht` (else they are only checked). Nothing is
/// launched here: every error happens before a device is opened.
pub fn read(path: &Path, spec: &Spec, backward: bool) -> Result<FileProblem, Failure> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::usage(format!("--inputs {shown}: cannot read it: {e}")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Failure::usage(format!("--inputs {shown}: not a safetensors file: {e}")))?;
    let mut has: Vec<String> = file.names().into_iter().map(str::to_owned).collect();
    has.sort();
    let declared: Vec<String> = spec.inputs.iter().map(|i| i.name.clone()).collect();
    let takes = format!(
        "{} reads {} and optionally {}",
        spec.name,
        declared.join(", "),
        OPTIONAL.map(|(n, _)| n).join(", ")
    );

    // Names first: what is missing, then what is unknown.
    let missing: Vec<String> = spec
        .inputs
        .iter()
        .filter(|i| !has.contains(&i.name))
        .map(|i| {
            format!(
                "`{}` ({}, {})",
                i.name,
                i.role,
                i.role.shape_text(&spec.decay)
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(Failure::usage(format!(
            "--inputs {shown}: tensor{} {} {} missing; the file has: {}. {takes}",
            if missing.len() > 1 { "s" } else { "" },
            list(&missing),
            if missing.len() > 1 { "are" } else { "is" },
            if has.is_empty() {
                "no tensors".into()
            } else {
                has.join(", ")
            }
        )));
    }
    let unknown: Vec<String> = has
        .iter()
        .filter(|n| !declared.contains(n) && !OPTIONAL.iter().any(|(o, _)| o == n))
        .map(|n| format!("`{n}`"))
        .collect();
    if !unknown.is_empty() {
        return Err(Failure::usage(format!(
            "--inputs {shown}: unexpected tensor{} {}: {takes} (other names are refused: a misspelled optional tensor would silently change the run)",
            if unknown.len() > 1 { "s" } else { "" },
            list(&unknown)
        )));
    }
    let view = |name: &str| {
        file.tensor(name)
            .map_err(|e| Failure::usage(format!("--inputs {shown}: tensor `{name}`: {e}")))
    };

    // Dtypes: q, k, v pick the kernel's; the rest are floats read as f32, offsets integers.
    let qkv: Vec<(String, Dtype)> = spec
        .inputs
        .iter()
        .filter(|i| matches!(i.role, Role::Query | Role::Key | Role::Value))
        .map(|i| Ok((i.name.clone(), view(&i.name)?.dtype())))
        .collect::<Result<_, Failure>>()?;
    let mut elems = Vec::new();
    for (name, d) in &qkv {
        elems.push(element_type(*d).ok_or_else(|| {
            Failure::usage(format!(
                "tensor `{name}` has dtype {}: the query, key and value tensors must be bf16, f16 or f32 (their dtype selects the kernel's)",
                dtype_name(*d)
            ))
        })?);
    }
    let dtype = *elems
        .first()
        .ok_or_else(|| Failure::usage(format!("spec `{}` declares no query input", spec.name)))?;
    if elems.iter().any(|e| *e != dtype) {
        let each: Vec<String> = qkv
            .iter()
            .map(|(n, d)| format!("`{n}` {}", dtype_name(*d)))
            .collect();
        return Err(Failure::usage(format!(
            "tensors {} must share one dtype (bf16, f16 or f32): it selects the kernel's; cast them to one",
            list(&each)
        )));
    }
    let floats_f32: Vec<&str> = spec
        .inputs
        .iter()
        .filter(|i| !matches!(i.role, Role::Query | Role::Key | Role::Value))
        .map(|i| i.name.as_str())
        .chain(
            ["h0", "do", "dht"]
                .into_iter()
                .filter(|n| has.iter().any(|h| h == n)),
        )
        .collect();
    for name in &floats_f32 {
        let d = view(name)?.dtype();
        if !is_float(d) {
            return Err(Failure::usage(format!(
                "tensor `{name}` has dtype {}: expected a float type (f32; f16, bf16 and f64 are rounded to f32, which the kernels read)",
                dtype_name(d)
            )));
        }
    }
    let cu_view = if has.iter().any(|n| n == "cu_seqlens") {
        let v = view("cu_seqlens")?;
        if !matches!(v.dtype(), Dtype::I32 | Dtype::I64) {
            return Err(Failure::usage(format!(
                "tensor `cu_seqlens` has dtype {}: expected i32 or i64 offsets",
                dtype_name(v.dtype())
            )));
        }
        Some(v)
    } else {
        None
    };

    // Shapes: the spec's inputs fix B, T, H, HV, K, V (query, key, value first, so a gate's
    // mismatch is reported against them).
    let mut binder = Binder::new();
    let mut ordered: Vec<_> = spec.inputs.iter().collect();
    ordered.sort_by_key(|i| i.role);
    for input in &ordered {
        binder.bind(
            &input.name,
            input.role.shape_text(&spec.decay),
            view(&input.name)?.shape(),
        )?;
    }
    let dims = Dims {
        batch: binder.size("B")?,
        seq_len: binder.size("T")?,
        heads: binder.size("H")?,
        value_heads: binder.size("HV")?,
        key_dim: binder.size("K")?,
        value_dim: binder.size("V")?,
    };
    for sym in ["B", "H", "HV", "K", "V"] {
        if binder.size(sym)? == 0 {
            return Err(Failure::usage(format!(
                "{sym} = 0 from {}: B, H, HV, K and V must be at least 1 (T may be 0)",
                binder.origin(sym)
            )));
        }
    }
    for sym in ["K", "V"] {
        let d = binder.size(sym)?;
        if d > MAX_HEAD_DIM {
            return Err(Failure::usage(format!(
                "head dim {sym} = {d} from {} is over the kernels' limit of {MAX_HEAD_DIM} (K and V in 1..={MAX_HEAD_DIM})",
                binder.origin(sym)
            )));
        }
    }
    if dims.value_heads % dims.heads != 0 {
        return Err(Failure::usage(format!(
            "value heads HV = {} from {} are not a multiple of query/key heads H = {} from {}: GVA needs HV % H == 0",
            dims.value_heads,
            binder.origin("HV"),
            dims.heads,
            binder.origin("H")
        )));
    }

    // Varlen offsets: `[N+1]` with the FlashAttention rules (checked by the same code the
    // reference uses), B = 1.
    let cu_seqlens = match &cu_view {
        Some(v) => {
            if v.shape().len() != 1 {
                return Err(Failure::usage(format!(
                    "tensor `cu_seqlens` has shape {:?} (rank {}), expected [N+1] (rank 1)",
                    v.shape(),
                    v.shape().len()
                )));
            }
            let cu = integers(v).ok_or_else(|| Failure::usage("cu_seqlens: not integers"))?;
            Sequences::new(&dims, Some(&cu)).map_err(|e| match e {
                ShapeError::VarlenBatch { b } => Failure::usage(format!(
                    "tensor `cu_seqlens` packs sequences along T, which needs B = 1, but B = {b} from {}",
                    binder.origin("B")
                )),
                e => Failure::usage(format!("tensor `cu_seqlens`: {e}")),
            })?;
            binder.set(
                "N",
                cu.len() - 1,
                format!("`cu_seqlens` ({} offsets: N + 1)", cu.len()),
            );
            Some(cu)
        }
        None => {
            binder.set(
                "N",
                dims.batch,
                format!(
                    "B of {} (one state per batch row without cu_seqlens)",
                    binder.origin("B")
                ),
            );
            None
        }
    };
    for (name, symbolic) in OPTIONAL {
        if name != "cu_seqlens" && has.iter().any(|n| n == name) {
            binder.bind(name, symbolic, view(name)?.shape())?;
        }
    }

    // Values, rounded to what the kernel reads (exact for q, k, v and f32 tensors).
    let mut summary = Vec::new();
    let mut load = |name: &str, elem: ElementType| -> Result<Tensor, Failure> {
        let v = view(name)?;
        summary.push(format!("{name} {} {:?}", dtype_name(v.dtype()), v.shape()));
        if element_type(v.dtype()) != Some(elem) {
            eprintln!(
                "note: tensor `{name}` is {}: rounded to {elem}, the type the kernel reads",
                dtype_name(v.dtype())
            );
        }
        let mut data = floats(&v).ok_or_else(|| {
            Failure::usage(format!("tensor `{name}`: not a float type (checked above)"))
        })?;
        host::round_to(elem, &mut data);
        Tensor::from_vec(v.shape(), data).ok_or_else(|| {
            Failure::usage(format!(
                "tensor `{name}`: its data does not match its shape {:?}",
                v.shape()
            ))
        })
    };
    let mut by_role: BTreeMap<Role, Tensor> = BTreeMap::new();
    for input in &ordered {
        let elem = if matches!(input.role, Role::Query | Role::Key | Role::Value) {
            dtype
        } else {
            ElementType::F32
        };
        by_role.insert(input.role, load(&input.name, elem)?);
    }
    let h0 = if has.iter().any(|n| n == "h0") {
        Some(load("h0", ElementType::F32)?)
    } else {
        None
    };
    let grads_in: Vec<&str> = ["do", "dht"]
        .into_iter()
        .filter(|n| has.iter().any(|h| h == n))
        .collect();
    let (mut d_o, mut dht) = (None, None);
    if backward {
        if grads_in.contains(&"do") {
            d_o = Some(load("do", dtype)?);
        }
        if grads_in.contains(&"dht") {
            dht = Some(load("dht", ElementType::F32)?);
        }
    } else if !grads_in.is_empty() {
        eprintln!(
            "note: {} checked but not used: they feed the backward, which runs with --backward",
            grads_in.join(", ")
        );
    }
    if let Some(cu) = &cu_view {
        summary.push(format!(
            "cu_seqlens {} {:?}",
            dtype_name(cu.dtype()),
            cu.shape()
        ));
    }
    let mut take = |role: Role| by_role.remove(&role);
    let missing_role =
        |role: Role| Failure::usage(format!("spec `{}` has no {role} input", spec.name));
    let inputs = Inputs {
        q: take(Role::Query).ok_or_else(|| missing_role(Role::Query))?,
        k: take(Role::Key).ok_or_else(|| missing_role(Role::Key))?,
        v: take(Role::Value).ok_or_else(|| missing_role(Role::Value))?,
        g: take(Role::Gate),
        beta: take(Role::Beta),
        u: take(Role::Bonus),
        decay_rate: take(Role::DecayRate),
        h0,
    };
    Ok(FileProblem {
        dims,
        dtype,
        inputs,
        cu_seqlens,
        d_o,
        dht,
        summary,
    })
}

/// Fails early (before any work) when `path` can not be written: its folder does not exist.
pub fn check_writable(path: &Path) -> Result<(), Failure> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if parent.is_dir() {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "--outputs {}: the folder {} does not exist",
            path.display(),
            parent.display()
        )))
    }
}

/// One output tensor: name, dtype, shape and little-endian bytes.
pub struct Output<'a> {
    /// `o`, `ht`, a gradient (`dq`, `dbeta`, ...) or `dh0`.
    pub name: &'a str,
    /// Its element type.
    pub dtype: ElementType,
    /// Its shape.
    pub shape: &'a [usize],
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// Writes `outputs` to `path` as safetensors, with `metadata` (variant, spec hash, device) in
/// the header.
pub fn write(
    path: &Path,
    outputs: &[Output<'_>],
    metadata: Vec<(&str, String)>,
) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| {
        Failure::usage(format!(
            "--outputs {}: cannot write it: {e}",
            path.display()
        ))
    };
    let views = outputs
        .iter()
        .map(|o| {
            let d = match o.dtype {
                ElementType::Bf16 => Dtype::BF16,
                ElementType::F16 => Dtype::F16,
                ElementType::F32 => Dtype::F32,
            };
            TensorView::new(d, o.shape.to_vec(), o.bytes).map(|v| (o.name, v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    let meta = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| fail(&e))?;
    std::fs::write(path, bytes).map_err(|e| fail(&e))
}
