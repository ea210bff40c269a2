//! One plan node per call: its cooperative loop over the node's tile (threads stride over the
//! elements), or, for a scalar node, the SSA value every thread computes. The semantics are
//! those of `plan::eval` (zero-padded rows, the plan's broadcasting rules); the kernel masks
//! loads past the chunk's valid rows and past the block's valid V columns to 0, so every tile
//! stays finite and padding never leaks into valid results.

use linrec_spec::Role;
use linrec_spec::launch::{ElementType, KernelParam};
use melior::ir::{Block, Value};

use super::EmitError;
use super::builder::{Cmp, R};
use super::kernel::{Env, Kernel};
use crate::plan::{Op, Param, ValueId};
use crate::schedule::{Placement, Tile};

/// How an elementwise op reads one operand at a result element.
#[derive(Clone, Copy)]
enum Operand<'c, 'a> {
    /// A uniform scalar.
    Uniform(Value<'c, 'a>),
    /// The same element of a tile of the result's shape.
    Same(Tile),
    /// Row `r` of a `[X]` tile broadcast across the columns of a `[X, Y]` result.
    Row(Tile),
}

impl<'c> Kernel<'_, 'c> {
    /// Emits plan node `i` into the chunk body `blk`. Scalar results go to `uniforms[i]`.
    pub(super) fn node<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        i: usize,
        uniforms: &mut [Option<Value<'c, 'a>>],
    ) -> R<()> {
        let b = &self.b;
        let node = &self.s.plan.nodes[i];
        let placement = self.s.values[i];
        let tile = match placement {
            Placement::Tile(t) => Some(t),
            Placement::Uniform => None,
        };
        let uniform = |v: &ValueId, uniforms: &[Option<Value<'c, 'a>>]| {
            uniforms[v.0].ok_or_else(|| EmitError::Schedule(format!("%{} is not a scalar", v.0)))
        };
        let Some(tile) = tile else {
            // Scalars: every thread computes the same value.
            let v = match &node.op {
                Op::Param(Param::Scale) => env.scale,
                Op::Const(x) => b.cf32(blk, *x)?,
                Op::Last(x) => {
                    let src = self.tile(*x)?;
                    let last = b.ci(blk, src.len() as i64 - 1)?;
                    self.load_scratch(blk, env, src, last)?
                }
                Op::Exp2(x) => self.t.exp2(b, blk, uniform(x, uniforms)?)?,
                Op::Mul(x, y) | Op::Add(x, y) | Op::Sub(x, y) => {
                    let (x, y) = (uniform(x, uniforms)?, uniform(y, uniforms)?);
                    match node.op {
                        Op::Mul(..) => b.mulf(blk, x, y)?,
                        Op::Add(..) => b.addf(blk, x, y)?,
                        _ => b.subf(blk, x, y)?,
                    }
                }
                other => {
                    return Err(EmitError::Schedule(format!(
                        "%{i} ({other}) has no tile but is not a scalar op"
                    )));
                }
            };
            uniforms[i] = Some(v);
            return Ok(());
        };

        match &node.op {
            Op::StateIn => Ok(()),
            Op::Load(role) => self.load_rows(blk, env, start, len, tile, *role),
            Op::ConstantGate => {
                let lg = env
                    .decay
                    .ok_or_else(|| EmitError::Schedule("no decay rate to read".into()))?;
                self.elementwise(blk, env, tile, |blk, r, _, _| {
                    let ok = b.cmpi(blk, Cmp::Ult, r, len)?;
                    let zero = b.cf32(blk, 0.0)?;
                    b.select(blk, ok, lg, zero)
                })
            }
            Op::L2NormRows(x) => self.l2norm_rows(blk, env, self.tile(*x)?, tile),
            Op::CumSum(x) => {
                let src = self.tile(*x)?;
                self.elementwise(blk, env, tile, |blk, r, _, _| {
                    let zero = b.ci(blk, 0)?;
                    let one = b.ci(blk, 1)?;
                    let end = b.addi(blk, r, one)?;
                    let init = b.cf32(blk, 0.0)?;
                    b.for_acc(blk, zero, end, one, init, |blk, j, acc| {
                        let x = self.load_scratch(blk, env, src, j)?;
                        let next = b.addf(blk, acc, x)?;
                        b.yield_(blk, &[next])
                    })
                })
            }
            Op::PairDiff(x) => {
                let src = self.tile(*x)?;
                self.elementwise(blk, env, tile, |blk, r, c, _| {
                    let xi = self.load_scratch(blk, env, src, r)?;
                    let xj = self.load_scratch(blk, env, src, c)?;
                    b.subf(blk, xi, xj)
                })
            }
            Op::MaskCausal { x, strict, fill } => {
                let src = self.tile(*x)?;
                let strict = *strict;
                let fill = *fill;
                self.elementwise(blk, env, tile, |blk, r, c, e| {
                    let keep = if strict {
                        b.cmpi(blk, Cmp::Ult, c, r)?
                    } else {
                        b.cmpi(blk, Cmp::Ule, c, r)?
                    };
                    let x = self.load_scratch(blk, env, src, e)?;
                    let fill = b.cf32(blk, fill)?;
                    b.select(blk, keep, x, fill)
                })
            }
            Op::Exp2(x) => {
                let src = self.tile(*x)?;
                self.elementwise(blk, env, tile, |blk, _, _, e| {
                    let x = self.load_scratch(blk, env, src, e)?;
                    self.t.exp2(b, blk, x)
                })
            }
            Op::Mul(x, y) | Op::Add(x, y) | Op::Sub(x, y) => {
                let operand = |v: &ValueId| -> R<Operand<'c, 'a>> {
                    Ok(match self.s.values[v.0] {
                        Placement::Uniform => Operand::Uniform(uniform(v, uniforms)?),
                        Placement::Tile(t) if self.s.plan.node(*v).shape == node.shape => {
                            Operand::Same(t)
                        }
                        Placement::Tile(t) => Operand::Row(t),
                    })
                };
                let (x, y) = (operand(x)?, operand(y)?);
                let kind = match node.op {
                    Op::Mul(..) => "arith.mulf",
                    Op::Add(..) => "arith.addf",
                    _ => "arith.subf",
                };
                self.elementwise(blk, env, tile, |blk, r, _, e| {
                    self.apply(blk, env, kind, x, y, r, e)
                })
            }
            Op::Matmul { a, b: rhs, ta, tb } => {
                let (ta, tb) = (*ta, *tb);
                let (at, bt) = (self.tile(*a)?, self.tile(*rhs)?);
                let inner = if ta { at.rows } else { at.cols };
                self.elementwise(blk, env, tile, |blk, r, c, _| {
                    let zero = b.ci(blk, 0)?;
                    let one = b.ci(blk, 1)?;
                    let end = b.ci(blk, inner as i64)?;
                    let init = b.cf32(blk, 0.0)?;
                    b.for_acc(blk, zero, end, one, init, |blk, l, acc| {
                        // op(A)[r, l] and op(B)[l, c] in row-major tiles.
                        let ia = if ta {
                            b.mad(blk, r, l, at.cols as i64)?
                        } else {
                            b.mad(blk, l, r, at.cols as i64)?
                        };
                        let ib = if tb {
                            b.mad(blk, l, c, bt.cols as i64)?
                        } else {
                            b.mad(blk, c, l, bt.cols as i64)?
                        };
                        let x = self.load_scratch(blk, env, at, ia)?;
                        let y = self.load_scratch(blk, env, bt, ib)?;
                        let xy = b.mulf(blk, x, y)?;
                        let next = b.addf(blk, acc, xy)?;
                        b.yield_(blk, &[next])
                    })
                })
            }
            other => Err(EmitError::Schedule(format!(
                "%{i} ({other}) cannot produce a tile"
            ))),
        }
    }

    /// A cooperative loop over `tile`: `f(block, row, col, element)` gives the f32 to store.
    fn elementwise(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        tile: Tile,
        f: impl for<'x> FnOnce(
            &'x Block<'c>,
            Value<'c, 'x>,
            Value<'c, 'x>,
            Value<'c, 'x>,
        ) -> R<Value<'c, 'x>>,
    ) -> R<()> {
        let scratch = env.arg(&KernelParam::Scratch)?;
        self.strided(blk, env, tile.len(), |blk, e| {
            let (r, c) = self.row_col(blk, e, tile.cols)?;
            let v = f(blk, r, c, e)?;
            let at = self.addr(blk, env, tile, e)?;
            self.b.store(blk, v, scratch, at)
        })
    }

    /// Element `idx` of `tile`.
    fn load_scratch<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        tile: Tile,
        idx: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let scratch = env.arg(&KernelParam::Scratch)?;
        let at = self.addr(blk, env, tile, idx)?;
        self.b.load(blk, scratch, at)
    }

    /// `x <kind> y` at element `e` (row `r`) of the result.
    #[allow(clippy::too_many_arguments)]
    fn apply<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        kind: &str,
        x: Operand<'c, '_>,
        y: Operand<'c, '_>,
        r: Value<'c, '_>,
        e: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        match (x, y) {
            (Operand::Uniform(u), t) => {
                let v = self.read_tile(blk, env, t, r, e)?;
                b.bin(blk, kind, u, v)
            }
            (t, Operand::Uniform(u)) => {
                let v = self.read_tile(blk, env, t, r, e)?;
                b.bin(blk, kind, v, u)
            }
            (t, u) => {
                let v = self.read_tile(blk, env, t, r, e)?;
                let w = self.read_tile(blk, env, u, r, e)?;
                b.bin(blk, kind, v, w)
            }
        }
    }

    fn read_tile<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        operand: Operand<'c, '_>,
        r: Value<'c, '_>,
        e: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        match operand {
            Operand::Uniform(_) => Err(EmitError::Schedule(
                "an elementwise tile op with two scalar operands".into(),
            )),
            Operand::Same(t) => self.load_scratch(blk, env, t, e),
            Operand::Row(t) => self.load_scratch(blk, env, t, r),
        }
    }

    /// Rows `start .. start + C` of a per-token input at this workgroup's head, zero past the
    /// chunk's `len` valid rows (and, for v, past the valid columns). Indices are clamped
    /// instead of branched around: the clamped row and column always exist, so the load is
    /// safe and the select zeroes it.
    fn load_rows(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        tile: Tile,
        role: Role,
    ) -> R<()> {
        let b = &self.b;
        let mem = env.arg(&KernelParam::Input(role))?;
        let dtype = match role {
            Role::Query | Role::Key | Role::Value => self.dtype(),
            _ => ElementType::F32,
        };
        let kd = self.s.config.key_dim as i64;
        self.elementwise(blk, env, tile, |blk, r, c, _| {
            let one = b.ci(blk, 1)?;
            let last = b.subi(blk, len, one)?;
            let rr = b.bin(blk, "arith.minui", r, last)?;
            let row = b.addi(blk, start, rr)?;
            let mut ok = b.cmpi(blk, Cmp::Ult, r, len)?;
            let idx = match role {
                Role::Query | Role::Key => {
                    let head = b.muli(blk, row, env.heads)?;
                    let head = b.addi(blk, head, env.h)?;
                    b.mad(blk, c, head, kd)?
                }
                Role::Value => {
                    let col_ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
                    ok = b.bin(blk, "arith.andi", ok, col_ok)?;
                    let vlast = b.subi(blk, env.vvalid, one)?;
                    let cc = b.bin(blk, "arith.minui", c, vlast)?;
                    self.value_index(blk, env, row, cc)?
                }
                _ => {
                    let head = b.muli(blk, row, env.vheads)?;
                    b.addi(blk, head, env.hv)?
                }
            };
            let x = self.t.load_f32(b, blk, mem, idx, dtype)?;
            let zero = b.cf32(blk, 0.0)?;
            b.select(blk, ok, x, zero)
        })
    }

    /// `y[r] = x[r] / sqrt(‖x[r]‖² + 1e-6)`, one row per thread.
    fn l2norm_rows(&self, blk: &Block<'c>, env: &Env<'c, '_>, src: Tile, dst: Tile) -> R<()> {
        let b = &self.b;
        let scratch = env.arg(&KernelParam::Scratch)?;
        let cols = src.cols as i64;
        self.strided(blk, env, src.rows as u64, |blk, r| {
            let zero = b.ci(blk, 0)?;
            let one = b.ci(blk, 1)?;
            let width = b.ci(blk, cols)?;
            let row0 = b.muli(blk, r, width)?;
            let init = b.cf32(blk, 0.0)?;
            let ss = b.for_acc(blk, zero, width, one, init, |blk, c, acc| {
                let idx = b.addi(blk, row0, c)?;
                let x = self.load_scratch(blk, env, src, idx)?;
                let xx = b.mulf(blk, x, x)?;
                let next = b.addf(blk, acc, xx)?;
                b.yield_(blk, &[next])
            })?;
            let eps = b.cf32(blk, linrec_spec::reference::L2NORM_EPS)?;
            let ss = b.addf(blk, ss, eps)?;
            let one_f = b.cf32(blk, 1.0)?;
            let root = self.t.sqrt(b, blk, ss)?;
            let inv = b.divf(blk, one_f, root)?;
            b.for_(blk, zero, width, one, |blk, c| {
                let idx = b.addi(blk, row0, c)?;
                let x = self.load_scratch(blk, env, src, idx)?;
                let y = b.mulf(blk, x, inv)?;
                let at = self.addr(blk, env, dst, idx)?;
                b.store(blk, y, scratch, at)
            })
        })
    }
}
