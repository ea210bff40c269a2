//! One plan node per call: its cooperative loop over the node's tile (threads stride over the
//! elements), or, for a scalar node, the SSA value every thread computes. The semantics are
//! those of `plan::eval` (zero-padded rows, the plan's broadcasting rules); the kernel masks
//! loads past the chunk's valid rows and past the block's valid V columns to 0, so every tile
//! stays finite and padding never leaks into valid results.
//!
//! A node writes its result to its f32 tile, its 16-bit operand tile, or both, in the same
//! loop ([`Dest`]); it reads a matrix operand from its f32 tile if it has one, else from its
//! operand tile (q, k, v on the tensor-core path). A matmul runs as scalar loops over f32
//! tiles (portable), on tensor cores over the operand tiles ([`crate::emit::mma`]), on AMD
//! matrix cores over them ([`crate::emit::mfma`]), as scalar loops over the operand tiles
//! (emulated), or as the AMD lane layout emulated lane by lane; see [`crate::schedule`].

use linrec_spec::Role;
use linrec_spec::launch::{ElementType, KernelParam};
use melior::ir::{Block, Value};

use super::EmitError;
use super::builder::{Cmp, R};
use super::copy::Carried;
use super::kernel::{Env, Kernel};
use super::mfma;
use super::mma::{self, Fragment, Init, Matmul, MmaType, SmemTile};
use crate::plan::{Expr, MatmulTerm, Op, Param, Shape, Sink, ValueId};
use crate::schedule::{MatmulPath, OperandTile, Placement, Tile};

/// The value of a matmul result element: `f(block, row, col, acc)`.
type AccValue<'f, 'c> = dyn for<'x> Fn(&'x Block<'c>, Value<'c, 'x>, Value<'c, 'x>, Value<'c, 'x>) -> R<Value<'c, 'x>>
    + 'f;

/// Stores one element's final value: `f(block, row, col, value)`.
type Store<'f, 'c> =
    dyn for<'x> Fn(&'x Block<'c>, Value<'c, 'x>, Value<'c, 'x>, Value<'c, 'x>) -> R<()> + 'f;

/// `f` as a [`Store`] (a closure's own signature is not higher-ranked).
fn store_fn<'c, F>(f: F) -> F
where
    F: for<'x> Fn(&'x Block<'c>, Value<'c, 'x>, Value<'c, 'x>, Value<'c, 'x>) -> R<()>,
{
    f
}

/// `f` as an [`AccValue`] (a closure's own signature is not higher-ranked).
fn acc_value<'c, F>(f: F) -> F
where
    F: for<'x> Fn(&'x Block<'c>, Value<'c, 'x>, Value<'c, 'x>, Value<'c, 'x>) -> R<Value<'c, 'x>>,
{
    f
}

/// Where a node's result goes: its f32 tile, its operand tile, or both (same element, the
/// operand rounded to the dtype).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dest {
    pub f32: Option<Tile>,
    pub operand: Option<OperandTile>,
}

impl Dest {
    /// `(rows, cols)` of the values (not counting an operand tile's padding).
    fn extent(&self) -> Option<(usize, usize)> {
        self.f32
            .map(|t| (t.rows, t.cols))
            .or(self.operand.map(|t| (t.rows, t.cols)))
    }
}

/// Where a node reads a tile operand.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// The f32 tile (element `e` = `r · cols + c`).
    F32(Tile),
    /// The 16-bit operand tile (element `(r, c)`), widened exactly.
    Operand(OperandTile),
}

/// How an elementwise op reads one operand at a result element.
#[derive(Clone, Copy)]
enum Operand<'c, 'a> {
    /// A uniform scalar.
    Uniform(Value<'c, 'a>),
    /// The same element of a tile of the result's shape.
    Same(Src),
    /// Row `r` of a `[X]` tile broadcast across the columns of a `[X, Y]` result.
    Row(Tile),
}

impl<'c> Kernel<'_, 'c> {
    /// Emits plan node `i` into the chunk body `blk`. Scalar results go to `uniforms[i]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn node<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        i: usize,
        uniforms: &mut [Option<Value<'c, 'a>>],
        carried: &Carried<'c, 'a>,
    ) -> R<()> {
        let b = &self.b;
        let node = &self.s.plan.nodes[i];
        // Token rows: stored from the vectors loaded one chunk ahead, else copied 16 bytes
        // at a time where the layout allows (`copy.rs`), else the element loop below.
        if let Some((copy, vectors)) = carried.of(i) {
            return self.store_rows(blk, env, len, copy, vectors);
        }
        // Rows by TMA: awaited before their first reader (`Kernel::tma_await`).
        if self.tma_load(i).is_some() {
            return Ok(());
        }
        if let Some(copy) = self.row_copy(i) {
            return self.copy_rows(blk, env, (start, len), &copy);
        }
        let dest = Dest {
            f32: self.s.values[i].tile(),
            operand: self.s.operands.get(i).copied().flatten(),
        };
        let uniform = |v: &ValueId, uniforms: &[Option<Value<'c, 'a>>]| {
            uniforms[v.0].ok_or_else(|| EmitError::Schedule(format!("%{} is not a scalar", v.0)))
        };
        if dest.extent().is_none() && self.s.values[i] != Placement::Output {
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
                Op::SumAll(x) => self.sum_all(blk, env, self.src(*x)?, *x)?,
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
        }

        match &node.op {
            // Round a copy of S for the matmuls that read h.
            // Read per chunk from memory into the operand tile alone (`alloc::Placing::
            // from_memory`), else rounded from the state tile.
            Op::StateIn => match (dest.f32, dest.operand) {
                (None, Some(operand)) => {
                    let param = KernelParam::ChunkStates;
                    self.copy_chunk_operand(blk, env, start, &param, operand)
                }
                (_, Some(operand)) => self.round_into(blk, env, self.s.state, operand),
                _ => Ok(()),
            },
            Op::Load(role) => {
                self.load_rows(blk, env, start, len, dest, *role, KernelParam::Input(*role))
            }
            // Backward: the chunk's dO rows (laid out like v); `dh'` lives in the carried tile.
            Op::GradIn(Sink::Output) => self.load_rows(
                blk,
                env,
                start,
                len,
                dest,
                Role::Value,
                KernelParam::GradOutput,
            ),
            // `dh'` lives in the carried tile; a matmul that reads it gets a rounded copy. The
            // gradient kernel may read it from `chunk_dh` into the operand tile alone.
            Op::GradIn(_) => match (dest.f32, dest.operand) {
                (Some(carried), Some(operand)) => self.round_into(blk, env, carried, operand),
                (None, Some(operand)) => {
                    let param = KernelParam::ChunkStateGrads;
                    self.copy_chunk_operand(blk, env, start, &param, operand)
                }
                _ => Ok(()),
            },
            Op::ValidRows => self.elementwise(blk, env, dest, |blk, r, _, _| {
                let ok = b.cmpi(blk, Cmp::Ult, r, len)?;
                let one = b.cf32(blk, 1.0)?;
                let zero = b.cf32(blk, 0.0)?;
                b.select(blk, ok, one, zero)
            }),
            Op::CumSum(x) | Op::ReverseCumSum(x) if self.shuffled_sums() => {
                let reverse = matches!(node.op, Op::ReverseCumSum(_));
                self.warp_cumsum(blk, env, self.tile(*x)?, reverse, &|blk, i, v| {
                    let zero = b.ci(blk, 0)?;
                    self.store_dest(blk, env, dest, i, zero, i, v)
                })?;
                self.zero_dest_padding(blk, env, dest)
            }
            Op::ReverseCumSum(x) => {
                let src = self.tile(*x)?;
                self.elementwise(blk, env, dest, |blk, r, _, _| {
                    let one = b.ci(blk, 1)?;
                    let end = b.ci(blk, src.len() as i64)?;
                    let init = b.cf32(blk, 0.0)?;
                    b.for_acc(blk, r, end, one, init, |blk, j, acc| {
                        let x = self.load_scratch(blk, env, src, j)?;
                        let next = b.addf(blk, acc, x)?;
                        b.yield_(blk, &[next])
                    })
                })
            }
            Op::RowSum(x) | Op::ColSum(x) => {
                let src = self.src(*x)?;
                let (rows, cols) = self.extent_of(*x)?;
                let by_row = matches!(node.op, Op::RowSum(_));
                let (out, len) = if by_row { (rows, cols) } else { (cols, rows) };
                if let Some(lanes) = self.lanes_per_row(out, len) {
                    return self.shuffled_row_sum(blk, env, src, (rows, cols), by_row, lanes, dest);
                }
                self.elementwise(blk, env, dest, |blk, r, _, _| {
                    let zero = b.ci(blk, 0)?;
                    let one = b.ci(blk, 1)?;
                    let end = b.ci(blk, if by_row { cols } else { rows } as i64)?;
                    let init = b.cf32(blk, 0.0)?;
                    b.for_acc(blk, zero, end, one, init, |blk, j, acc| {
                        let (row, col) = if by_row { (r, j) } else { (j, r) };
                        let e = b.mad(blk, col, row, cols as i64)?;
                        let x = self.read(blk, env, src, row, col, e)?;
                        let next = b.addf(blk, acc, x)?;
                        b.yield_(blk, &[next])
                    })
                })
            }
            Op::ScatterLast(x) => {
                let x = uniform(x, uniforms)?;
                let rows = dest.extent().map_or(1, |(r, _)| r);
                self.elementwise(blk, env, dest, |blk, r, _, _| {
                    let last = b.ci(blk, rows as i64 - 1)?;
                    let at_last = b.cmpi(blk, Cmp::Ule, last, r)?;
                    let zero = b.cf32(blk, 0.0)?;
                    b.select(blk, at_last, x, zero)
                })
            }
            Op::L2NormRowsVjp { x, dy } => {
                self.l2norm_rows_vjp(blk, env, self.src(*x)?, self.src(*dy)?, dest)
            }
            Op::ConstantGate => {
                let lg = env
                    .decay
                    .ok_or_else(|| EmitError::Schedule("no decay rate to read".into()))?;
                self.elementwise(blk, env, dest, |blk, r, _, _| {
                    let ok = b.cmpi(blk, Cmp::Ult, r, len)?;
                    let zero = b.cf32(blk, 0.0)?;
                    b.select(blk, ok, lg, zero)
                })
            }
            Op::L2NormRows(x) => self.l2norm_rows(blk, env, self.src(*x)?, dest),
            Op::CumSum(x) => {
                let src = self.tile(*x)?;
                self.elementwise(blk, env, dest, |blk, r, _, _| {
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
                self.elementwise(blk, env, dest, |blk, r, c, _| {
                    let xi = self.load_scratch(blk, env, src, r)?;
                    let xj = self.load_scratch(blk, env, src, c)?;
                    b.subf(blk, xi, xj)
                })
            }
            Op::MaskCausal { x, strict, fill } => {
                let src = self.src(*x)?;
                let strict = *strict;
                let fill = *fill;
                self.elementwise(blk, env, dest, |blk, r, c, e| {
                    let keep = if strict {
                        b.cmpi(blk, Cmp::Ult, c, r)?
                    } else {
                        b.cmpi(blk, Cmp::Ule, c, r)?
                    };
                    let x = self.read(blk, env, src, r, c, e)?;
                    let fill = b.cf32(blk, fill)?;
                    b.select(blk, keep, x, fill)
                })
            }
            Op::Exp2(x) => {
                let src = self.src(*x)?;
                self.elementwise(blk, env, dest, |blk, r, c, e| {
                    let x = self.read(blk, env, src, r, c, e)?;
                    self.t.exp2(b, blk, x)
                })
            }
            Op::Mul(x, y) | Op::Add(x, y) | Op::Sub(x, y) => {
                let operand = |v: &ValueId| -> R<Operand<'c, 'a>> {
                    let shape = &self.s.plan.node(*v).shape;
                    Ok(if shape.rank() == 0 {
                        Operand::Uniform(uniform(v, uniforms)?)
                    } else if *shape == node.shape {
                        Operand::Same(self.src(*v)?)
                    } else {
                        Operand::Row(self.tile(*v)?)
                    })
                };
                let (x, y) = (operand(x)?, operand(y)?);
                let kind = match node.op {
                    Op::Mul(..) => "arith.mulf",
                    Op::Add(..) => "arith.addf",
                    _ => "arith.subf",
                };
                self.elementwise(blk, env, dest, |blk, r, c, e| {
                    self.apply(blk, env, kind, x, y, r, c, e)
                })
            }
            Op::Matmul { a, b: rhs, ta, tb } if self.s.matmul.uses_operand_tiles() => {
                let term = MatmulTerm {
                    a: *a,
                    b: *rhs,
                    ta: *ta,
                    tb: *tb,
                };
                let extent = dest
                    .extent()
                    .ok_or_else(|| EmitError::Schedule(format!("%{i} has no result tile")))?;
                self.operand_matmul(
                    blk,
                    env,
                    dest,
                    extent,
                    &[term],
                    &|_, _, _, acc| Ok(acc),
                    None,
                )
            }
            Op::Fused(f) => {
                let (rows, cols) = self.s.extent(&node.shape).ok_or_else(|| {
                    EmitError::Schedule(format!("%{i} is fused but has no tile shape"))
                })?;
                let uniforms: &[Option<Value<'c, 'a>>] = uniforms;
                let shape = &node.shape;
                // A sink with no tile goes straight to memory (`o`, or a gradient).
                let to_o = self.s.values[i] == Placement::Output;
                let store_o = store_fn(|blk, r, c, v| {
                    self.store_sink(blk, env, (start, len), ValueId(i), r, c, v)
                });
                if !f.matmuls.is_empty() && self.s.matmul.uses_operand_tiles() {
                    let value = acc_value(|blk, r, c, acc| {
                        let e = b.mad(blk, c, r, cols as i64)?;
                        self.expr_at(blk, env, shape, &f.expr, (r, c, e), Some(acc), uniforms)
                    });
                    let global = to_o.then_some(&store_o as &Store<'_, 'c>);
                    return self.operand_matmul(
                        blk,
                        env,
                        dest,
                        (rows, cols),
                        &f.matmuls,
                        &value,
                        global,
                    );
                }
                // One loop over the elements; matmuls (portable) as dot products per element.
                let element = acc_value(|blk, r, c, e| {
                    let mut acc = None;
                    for m in &f.matmuls {
                        let dot = self.f32_dot(blk, env, m, r, c)?;
                        acc = Some(match acc {
                            Some(sum) => b.addf(blk, sum, dot)?,
                            None => dot,
                        });
                    }
                    self.expr_at(blk, env, shape, &f.expr, (r, c, e), acc, uniforms)
                });
                if to_o {
                    self.strided(blk, env, (rows * cols) as u64, |blk, e| {
                        let (r, c) = self.row_col(blk, e, cols)?;
                        let v = element(blk, r, c, e)?;
                        store_o(blk, r, c, v)
                    })
                } else {
                    self.elementwise(blk, env, dest, |blk, r, c, e| element(blk, r, c, e))
                }
            }
            Op::Matmul { a, b: rhs, ta, tb } => {
                let term = MatmulTerm {
                    a: *a,
                    b: *rhs,
                    ta: *ta,
                    tb: *tb,
                };
                self.elementwise(blk, env, dest, |blk, r, c, _| {
                    self.f32_dot(blk, env, &term, r, c)
                })
            }
            other => Err(EmitError::Schedule(format!(
                "%{i} ({other}) cannot produce a tile"
            ))),
        }
    }

    /// Copies the f32 tile `from` into the 16-bit operand tile `to`, rounded (a tile that
    /// lives elsewhere, S or `dh'`, read by matmuls).
    fn round_into(&self, blk: &Block<'c>, env: &Env<'c, '_>, from: Tile, to: OperandTile) -> R<()> {
        let to = Dest {
            f32: None,
            operand: Some(to),
        };
        self.elementwise(blk, env, to, |blk, _, _, e| {
            self.load_scratch(blk, env, from, e)
        })
    }

    /// A cooperative loop over the elements of `dest` ([`Kernel::strided_map`]):
    /// `f(block, row, col, element)` gives the f32 to store; then the operand tile's padding
    /// is zeroed.
    pub(super) fn elementwise(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        dest: Dest,
        f: impl for<'x> Fn(
            &'x Block<'c>,
            Value<'c, 'x>,
            Value<'c, 'x>,
            Value<'c, 'x>,
        ) -> R<Value<'c, 'x>>,
    ) -> R<()> {
        let (rows, cols) = dest
            .extent()
            .ok_or_else(|| EmitError::Schedule("a tile loop without a tile".into()))?;
        self.strided_map(
            blk,
            env,
            (rows * cols) as u64,
            |blk, e| {
                let (r, c) = self.row_col(blk, e, cols)?;
                f(blk, r, c, e)
            },
            |blk, e, v| {
                let (r, c) = self.row_col(blk, e, cols)?;
                self.store_dest(blk, env, dest, r, c, e, v)
            },
        )?;
        self.zero_dest_padding(blk, env, dest)
    }

    /// Stores the f32 `v` as element `(r, c)` (flat `e`) of the destination tiles.
    #[allow(clippy::too_many_arguments)]
    fn store_dest(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        dest: Dest,
        r: Value<'c, '_>,
        c: Value<'c, '_>,
        e: Value<'c, '_>,
        v: Value<'c, '_>,
    ) -> R<()> {
        if let Some(tile) = dest.f32 {
            let scratch = self.tile_mem(env)?;
            let at = self.addr(blk, env, tile, e)?;
            self.b.store(blk, v, scratch, at)?;
        }
        if let Some(tile) = dest.operand {
            self.store_operand(blk, env, tile, r, c, v)?;
        }
        Ok(())
    }

    /// Zeroes the padding of the destination's operand tile, if it has one with padding.
    fn zero_dest_padding(&self, blk: &Block<'c>, env: &Env<'c, '_>, dest: Dest) -> R<()> {
        match dest.operand {
            Some(tile) if tile.is_padded() => self.zero_padding(blk, env, tile),
            _ => Ok(()),
        }
    }

    /// Where node `v`'s value is read by a non-matmul node: its f32 tile, else its operand
    /// tile.
    fn src(&self, v: ValueId) -> R<Src> {
        if let Some(t) = self.s.values[v.0].tile() {
            return Ok(Src::F32(t));
        }
        self.operand_tile(v).map(Src::Operand)
    }

    /// The operand tile of node `v`.
    fn operand_tile(&self, v: ValueId) -> R<OperandTile> {
        self.s
            .operands
            .get(v.0)
            .copied()
            .flatten()
            .ok_or_else(|| EmitError::Schedule(format!("%{} has no operand tile", v.0)))
    }

    /// Element `(r, c)` (flat `e`) of a tile operand, as f32.
    fn read<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        src: Src,
        r: Value<'c, '_>,
        c: Value<'c, '_>,
        e: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        match src {
            Src::F32(t) => self.load_scratch(blk, env, t, e),
            Src::Operand(t) => self.load_operand(blk, env, t, r, c),
        }
    }

    /// `op(A)[r, :] · op(B)[:, c]` of a matmul over f32 tiles (the portable path), as a
    /// scalar loop.
    fn f32_dot<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        m: &MatmulTerm,
        r: Value<'c, 'a>,
        c: Value<'c, 'a>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let (ta, tb) = (m.ta, m.tb);
        let (at, bt) = (self.tile(m.a)?, self.tile(m.b)?);
        let inner = if ta { at.rows } else { at.cols };
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
    }

    /// The padded `(m, k, n)` of a matmul over operand tiles.
    fn operand_dims(&self, t: &MatmulTerm) -> R<(usize, usize, usize)> {
        let (oa, ob) = (self.operand_tile(t.a)?, self.operand_tile(t.b)?);
        // The padded sizes: what the instruction tiles cover.
        let (m, k) = if t.ta {
            (oa.cols_padded, oa.rows_padded)
        } else {
            (oa.rows_padded, oa.cols_padded)
        };
        let (kb, n) = if t.tb {
            (ob.cols_padded, ob.rows_padded)
        } else {
            (ob.rows_padded, ob.cols_padded)
        };
        if k != kb {
            return Err(EmitError::Schedule(format!(
                "matmul operands of inner sizes {k} and {kb}"
            )));
        }
        Ok((m, k, n))
    }

    /// The sum of matmuls over operand tiles — on tensor cores, on matrix cores (one term), or
    /// emulated in scalar loops — with `value(row, col, acc)` applied to each element of the
    /// f32 sum before it goes to `dest` (or, with `global`, to that store instead). `extent`
    /// is the result's `(rows, cols)`; elements in the instruction tiles' padding past it are
    /// not handed to `value`: they go to the operand tile's padding as 0.
    #[allow(clippy::too_many_arguments)]
    fn operand_matmul(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        dest: Dest,
        (rows, cols): (usize, usize),
        terms: &[MatmulTerm],
        value: &AccValue<'_, 'c>,
        global: Option<&Store<'_, 'c>>,
    ) -> R<()> {
        let dims = terms
            .iter()
            .map(|t| self.operand_dims(t))
            .collect::<R<Vec<_>>>()?;
        let Some(&(m, _, n)) = dims.first() else {
            return Err(EmitError::Schedule("a sum of no matmuls".into()));
        };
        if dims.iter().any(|&(mi, _, ni)| (mi, ni) != (m, n)) {
            return Err(EmitError::Schedule(format!(
                "summed matmuls of different shapes: {dims:?}"
            )));
        }
        if let Some(o) = dest.operand {
            if (o.rows_padded, o.cols_padded) != (m, n) {
                return Err(EmitError::Schedule(format!(
                    "a {m}×{n} matmul result in a {}×{} operand tile",
                    o.rows_padded, o.cols_padded
                )));
            }
        }
        let b = &self.b;
        let store =
            |blk: &Block<'c>, r: Value<'c, '_>, c: Value<'c, '_>, v: Value<'c, '_>| match global {
                Some(g) => g(blk, r, c, v),
                None => self.store_result(blk, env, dest, (m, n), r, c, v),
            };
        // The element's value: `value` inside the result, 0 in the padding (where its operands
        // would be read out of their tiles, clamped instead).
        let finish = |blk: &Block<'c>, r: Value<'c, '_>, c: Value<'c, '_>, x: Value<'c, '_>| {
            if rows >= m && cols >= n {
                let v = value(blk, r, c, x)?;
                return store(blk, r, c, v);
            }
            let rr = b.bin(blk, "arith.minui", r, b.ci(blk, rows as i64 - 1)?)?;
            let cc = b.bin(blk, "arith.minui", c, b.ci(blk, cols as i64 - 1)?)?;
            let v = value(blk, rr, cc, x)?;
            let r_ok = b.cmpi(blk, Cmp::Ult, r, b.ci(blk, rows as i64)?)?;
            let c_ok = b.cmpi(blk, Cmp::Ult, c, b.ci(blk, cols as i64)?)?;
            let ok = b.bin(blk, "arith.andi", r_ok, c_ok)?;
            let zero = b.cf32(blk, 0.0)?;
            let v = b.select(blk, ok, v, zero)?;
            store(blk, r, c, v)
        };
        match self.s.matmul {
            MatmulPath::TensorCore => {
                let dtype = MmaType::from_element(self.dtype())
                    .ok_or_else(|| EmitError::Schedule("tensor cores for an f32 kernel".into()))?;
                let arena = self.operand_mem(env)?;
                let thread_id = self.t.thread_id_per_use(&self.b, blk)?;
                let side = |t: OperandTile, transposed: bool| mma::Operand {
                    tile: SmemTile {
                        memref: arena,
                        offset: t.offset as i64,
                        row_stride: t.stride as i64,
                        col_step: t.col_step() as i64,
                        swizzled: t.layout == crate::schedule::TileLayout::Swizzled,
                    },
                    transposed,
                };
                let mut mms = Vec::with_capacity(terms.len());
                for (t, &(_, k, _)) in terms.iter().zip(&dims) {
                    mms.push(Matmul {
                        m: m as i64,
                        n: n as i64,
                        k: k as i64,
                        dtype,
                        num_warps: self.s.block_threads / 32,
                        thread_id,
                        a: side(self.operand_tile(t.a)?, t.ta),
                        b: side(self.operand_tile(t.b)?, t.tb),
                        wgmma: self.s.wgmma,
                    });
                }
                // Accumulators go from the registers to the result tiles: C[row][col],
                // C[row][col + 1], C[row + 8][col], C[row + 8][col + 1].
                let mut epilogue = |blk: &Block<'c>, f: &Fragment<'c, '_>| -> R<()> {
                    let one = self.b.ci(blk, 1)?;
                    let col1 = self.b.addi(blk, f.col, one)?;
                    for (r, c, x) in [
                        (f.row, f.col, f.acc[0]),
                        (f.row, col1, f.acc[1]),
                        (f.row8, f.col, f.acc[2]),
                        (f.row8, col1, f.acc[3]),
                    ] {
                        finish(blk, r, c, x)?;
                    }
                    Ok(())
                };
                Matmul::emit_sum(&mms, self.b.ctx, self.b.loc, blk, Init::Zero, &mut epilogue)
            }
            MatmulPath::Emulated => self.strided(blk, env, (m * n) as u64, |blk, e| {
                let (r, c) = self.row_col(blk, e, n)?;
                let mut acc = b.cf32(blk, 0.0)?;
                for (t, &(_, k, _)) in terms.iter().zip(&dims) {
                    let (oa, ob) = (self.operand_tile(t.a)?, self.operand_tile(t.b)?);
                    let zero = b.ci(blk, 0)?;
                    let one = b.ci(blk, 1)?;
                    let end = b.ci(blk, k as i64)?;
                    acc = b.for_acc(blk, zero, end, one, acc, |blk, l, acc| {
                        let x = if t.ta {
                            self.load_operand(blk, env, oa, l, r)?
                        } else {
                            self.load_operand(blk, env, oa, r, l)?
                        };
                        let y = if t.tb {
                            self.load_operand(blk, env, ob, c, l)?
                        } else {
                            self.load_operand(blk, env, ob, l, c)?
                        };
                        let xy = b.mulf(blk, x, y)?;
                        let next = b.addf(blk, acc, xy)?;
                        b.yield_(blk, &[next])
                    })?;
                }
                finish(blk, r, c, acc)
            }),
            MatmulPath::MatrixCore(core) | MatmulPath::EmulatedMatrixCore(core) => {
                let ([t], [(_, k, _)]) = (terms, dims.as_slice()) else {
                    return Err(EmitError::Schedule(
                        "matrix cores run one matmul per node (the plan was fused for them)".into(),
                    ));
                };
                let (oa, ob) = (self.operand_tile(t.a)?, self.operand_tile(t.b)?);
                let dtype = MmaType::from_element(self.dtype())
                    .ok_or_else(|| EmitError::Schedule("matrix cores for an f32 kernel".into()))?;
                let hardware = matches!(self.s.matmul, MatmulPath::MatrixCore(_));
                let memref = self.operand_mem(env)?;
                // Emulated, the arena is this workgroup's part of scratch.
                let base = if hardware {
                    None
                } else {
                    Some(self.operand_arena_base(blk, env)?)
                };
                let thread_id = self.t.thread_id_per_use(&self.b, blk)?;
                let side = |t: OperandTile, transposed: bool| mfma::Operand {
                    tile: mfma::Tile {
                        memref,
                        base,
                        offset: t.offset as i64,
                        row_stride: t.stride as i64,
                    },
                    transposed,
                };
                let mm = mfma::Matmul {
                    m: m as i64,
                    n: n as i64,
                    k: *k as i64,
                    dtype,
                    core,
                    mode: if hardware {
                        mfma::Mode::Hardware
                    } else {
                        mfma::Mode::Emulated
                    },
                    threads: self.s.block_threads,
                    thread_id,
                    a: side(oa, t.ta),
                    b: side(ob, t.tb),
                };
                // Each accumulator from the registers to the result tiles.
                let mut epilogue = |blk: &Block<'c>, f: &mfma::Fragment<'c, '_>| -> R<()> {
                    for (row, x) in f.rows.iter().zip(&f.acc) {
                        finish(blk, *row, f.col, *x)?;
                    }
                    Ok(())
                };
                mm.emit(self.b.ctx, self.b.loc, blk, &mut epilogue)
            }
            MatmulPath::Portable => Err(EmitError::Schedule(
                "an operand matmul on the portable path".into(),
            )),
        }
    }

    /// The value of a fused node's expression at element `(r, c)` (flat `e`) of its tile;
    /// `acc` is its matmuls' sum there.
    #[allow(clippy::too_many_arguments)]
    fn expr_at<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        shape: &Shape,
        expr: &Expr,
        (r, c, e): (Value<'c, 'a>, Value<'c, 'a>, Value<'c, 'a>),
        acc: Option<Value<'c, 'a>>,
        uniforms: &[Option<Value<'c, '_>>],
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let sub = |x: &Expr| self.expr_at(blk, env, shape, x, (r, c, e), acc, uniforms);
        match expr {
            Expr::Acc => acc.ok_or_else(|| {
                EmitError::Schedule("a fused expression reads acc but has no matmul".into())
            }),
            Expr::Value(v) => {
                let vshape = &self.s.plan.node(*v).shape;
                if vshape.rank() == 0 {
                    let u = uniforms[v.0]
                        .ok_or_else(|| EmitError::Schedule(format!("{v} is not a scalar")))?;
                    // A value of this block (`u + -0.0` is `u`; the tidy pass folds it away).
                    let minus_zero = b.cf32(blk, -0.0)?;
                    b.addf(blk, u, minus_zero)
                } else if vshape == shape {
                    self.read(blk, env, self.src(*v)?, r, c, e)
                } else {
                    self.load_scratch(blk, env, self.tile(*v)?, r)
                }
            }
            Expr::PairDiff(v) => {
                let src = self.tile(*v)?;
                let xi = self.load_scratch(blk, env, src, r)?;
                let xj = self.load_scratch(blk, env, src, c)?;
                b.subf(blk, xi, xj)
            }
            Expr::Exp2(x) => {
                let x = sub(x)?;
                self.t.exp2(b, blk, x)
            }
            Expr::Mul(x, y) => b.mulf(blk, sub(x)?, sub(y)?),
            Expr::Add(x, y) => b.addf(blk, sub(x)?, sub(y)?),
            Expr::Sub(x, y) => b.subf(blk, sub(x)?, sub(y)?),
            Expr::MaskCausal { x, strict, fill } => {
                let keep = if *strict {
                    b.cmpi(blk, Cmp::Ult, c, r)?
                } else {
                    b.cmpi(blk, Cmp::Ule, c, r)?
                };
                let x = sub(x)?;
                let fill = b.cf32(blk, *fill)?;
                b.select(blk, keep, x, fill)
            }
        }
    }

    /// Stores element `(r, c)` of an `m × n` (padded) matmul result: to the f32 tile where
    /// it is inside the tile's rows and columns, to the operand tile everywhere (its padding
    /// comes out zero, since the operands' padding is).
    #[allow(clippy::too_many_arguments)]
    fn store_result(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        dest: Dest,
        (m, n): (usize, usize),
        r: Value<'c, '_>,
        c: Value<'c, '_>,
        x: Value<'c, '_>,
    ) -> R<()> {
        let b = &self.b;
        if let Some(tile) = dest.f32 {
            let store = |blk: &Block<'c>| -> R<()> {
                let e = b.mad(blk, c, r, tile.cols as i64)?;
                let at = self.addr(blk, env, tile, e)?;
                let scratch = self.tile_mem(env)?;
                b.store(blk, x, scratch, at)
            };
            // Bounds only where the padded result is larger than the tile.
            let mut inside = None;
            for (i, size, padded) in [(r, tile.rows, m), (c, tile.cols, n)] {
                if size < padded {
                    let bound = b.ci(blk, size as i64)?;
                    let ok = b.cmpi(blk, Cmp::Ult, i, bound)?;
                    inside = Some(match inside {
                        Some(prev) => b.bin(blk, "arith.andi", prev, ok)?,
                        None => ok,
                    });
                }
            }
            match inside {
                Some(ok) => b.if_(blk, ok, store)?,
                None => store(blk)?,
            }
        }
        if let Some(tile) = dest.operand {
            self.store_operand(blk, env, tile, r, c, x)?;
        }
        Ok(())
    }

    /// Element `idx` of `tile`.
    fn load_scratch<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        tile: Tile,
        idx: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let scratch = self.tile_mem(env)?;
        let at = self.addr(blk, env, tile, idx)?;
        self.b.load(blk, scratch, at)
    }

    /// `x <kind> y` at element `e` (row `r`, column `c`) of the result.
    #[allow(clippy::too_many_arguments)]
    fn apply<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        kind: &str,
        x: Operand<'c, '_>,
        y: Operand<'c, '_>,
        r: Value<'c, '_>,
        c: Value<'c, '_>,
        e: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        match (x, y) {
            (Operand::Uniform(u), t) => {
                let v = self.read_tile(blk, env, t, r, c, e)?;
                b.bin(blk, kind, u, v)
            }
            (t, Operand::Uniform(u)) => {
                let v = self.read_tile(blk, env, t, r, c, e)?;
                b.bin(blk, kind, v, u)
            }
            (t, u) => {
                let v = self.read_tile(blk, env, t, r, c, e)?;
                let w = self.read_tile(blk, env, u, r, c, e)?;
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
        c: Value<'c, '_>,
        e: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        match operand {
            Operand::Uniform(_) => Err(EmitError::Schedule(
                "an elementwise tile op with two scalar operands".into(),
            )),
            Operand::Same(src) => self.read(blk, env, src, r, c, e),
            Operand::Row(t) => self.load_scratch(blk, env, t, r),
        }
    }

    /// Rows `start .. start + C` of a per-token input at this workgroup's head, zero past the
    /// chunk's `len` valid rows (and, for v, past the valid columns). Indices are clamped
    /// instead of branched around: the clamped row and column always exist, so the load is
    /// safe and the select zeroes it.
    /// `role` gives the layout and dtype, `param` the buffer (dO is laid out like v).
    #[allow(clippy::too_many_arguments)]
    fn load_rows(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        dest: Dest,
        role: Role,
        param: KernelParam,
    ) -> R<()> {
        let b = &self.b;
        let mem = env.arg(&param)?;
        let dtype = match role {
            Role::Query | Role::Key | Role::Value => self.dtype(),
            _ => ElementType::F32,
        };
        let kd = self.s.config.key_dim as i64;
        self.elementwise(blk, env, dest, |blk, r, c, _| {
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

    /// A row sum (`by_row`) or column sum of `src` (`rows × cols`) with `p` lanes per result
    /// ([`Kernel::lanes_per_row`]): each sums every `p`-th element, the butterfly combines
    /// them, the group's first lane stores.
    #[allow(clippy::too_many_arguments)]
    fn shuffled_row_sum(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        src: Src,
        (rows, cols): (usize, usize),
        by_row: bool,
        p: usize,
        dest: Dest,
    ) -> R<()> {
        let b = &self.b;
        let (out, len) = if by_row { (rows, cols) } else { (cols, rows) };
        self.strided(blk, env, (out * p) as u64, |blk, e| {
            let (r, part) = self.row_col(blk, e, p)?;
            let end = b.ci(blk, len as i64)?;
            let step = b.ci(blk, p as i64)?;
            let init = b.cf32(blk, 0.0)?;
            let acc = b.for_acc(blk, part, end, step, init, |blk, j, acc| {
                let (row, col) = if by_row { (r, j) } else { (j, r) };
                let e = b.mad(blk, col, row, cols as i64)?;
                let x = self.read(blk, env, src, row, col, e)?;
                let next = b.addf(blk, acc, x)?;
                b.yield_(blk, &[next])
            })?;
            let sum = self.lane_group_sum(blk, acc, p)?;
            let zero = b.ci(blk, 0)?;
            let first = b.cmpi(blk, Cmp::Eq, part, zero)?;
            b.if_(blk, first, |blk| {
                let zero = b.ci(blk, 0)?;
                self.store_dest(blk, env, dest, r, zero, r, sum)
            })
        })?;
        self.zero_dest_padding(blk, env, dest)
    }

    /// `(rows, cols)` of a matrix value's tile.
    fn extent_of(&self, v: ValueId) -> R<(usize, usize)> {
        if let Some(t) = self.s.values[v.0].tile() {
            return Ok((t.rows, t.cols));
        }
        let t = self.operand_tile(v)?;
        Ok((t.rows, t.cols))
    }

    /// The sum of every element of `x`, as a value every thread holds: each thread sums its
    /// strided share, writes it to its slot of the schedule's reduction tile, and after a
    /// barrier every thread adds the slots up in the same order (so all agree exactly); a
    /// second barrier frees the slots for the next sum.
    fn sum_all<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        src: Src,
        x: ValueId,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let reduce = self
            .bwd
            .map(|bs| bs.reduce[usize::from(self.s.part == crate::schedule::Part::Grads)])
            .ok_or_else(|| EmitError::Schedule("a sum outside a backward kernel".into()))?;
        let (rows, cols) = self.extent_of(x)?;
        let ub = b.ci(blk, (rows * cols) as i64)?;
        let init = b.cf32(blk, 0.0)?;
        // Uniform trip counts (element `m · threads + tid`, guarded): the Intel CPU OpenCL
        // compiler returned NaN sums for some sizes when the loop started at the thread index
        // and its result crossed the barrier below.
        let threads = i64::from(self.s.block_threads);
        let n = (rows * cols) as i64;
        let zero = b.ci(blk, 0)?;
        let one = b.ci(blk, 1)?;
        let trips = b.ci(blk, (n + threads - 1) / threads)?;
        let tid = self.thread_index(blk, env)?;
        let part = b.for_acc(blk, zero, trips, one, init, |blk, m, acc| {
            let e = b.mad(blk, tid, m, threads)?;
            let inside = b.cmpi(blk, Cmp::Ult, e, ub)?;
            let last = b.ci(blk, n - 1)?;
            let e = b.bin(blk, "arith.minui", e, last)?;
            let (r, c) = self.row_col(blk, e, cols)?;
            let v = self.read(blk, env, src, r, c, e)?;
            let zero_f = b.cf32(blk, 0.0)?;
            let v = b.select(blk, inside, v, zero_f)?;
            let next = b.addf(blk, acc, v)?;
            b.yield_(blk, &[next])
        })?;
        let scratch = self.tile_mem(env)?;
        let slot = self.addr(blk, env, reduce, tid)?;
        b.store(blk, part, scratch, slot)?;
        self.t.barrier(b, blk)?;
        let zero = b.ci(blk, 0)?;
        let one = b.ci(blk, 1)?;
        let slots = b.ci(blk, reduce.len() as i64)?;
        let init = b.cf32(blk, 0.0)?;
        let total = b.for_acc(blk, zero, slots, one, init, |blk, j, acc| {
            let v = self.load_scratch(blk, env, reduce, j)?;
            let next = b.addf(blk, acc, v)?;
            b.yield_(blk, &[next])
        })?;
        self.t.barrier(b, blk)?;
        Ok(total)
    }

    /// `Σ_c x[r, c] · y[r, c]` over a row of `width` columns starting at element `row0`.
    #[allow(clippy::too_many_arguments)]
    fn row_dot<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        (x, y): (Src, Src),
        r: Value<'c, '_>,
        row0: Value<'c, '_>,
        width: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let zero = b.ci(blk, 0)?;
        let one = b.ci(blk, 1)?;
        let init = b.cf32(blk, 0.0)?;
        b.for_acc(blk, zero, width, one, init, |blk, c, acc| {
            let idx = b.addi(blk, row0, c)?;
            let u = self.read(blk, env, x, r, c, idx)?;
            let w = self.read(blk, env, y, r, c, idx)?;
            let uw = b.mulf(blk, u, w)?;
            let next = b.addf(blk, acc, uw)?;
            b.yield_(blk, &[next])
        })
    }

    /// `(ss + 1e-6)^{-1/2}`: the L2 norm's inverse from the row's sum of squares.
    fn inv_norm<'a>(&self, blk: &'a Block<'c>, ss: Value<'c, '_>) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let eps = b.cf32(blk, linrec_spec::reference::L2NORM_EPS)?;
        let ss = b.addf(blk, ss, eps)?;
        let one = b.cf32(blk, 1.0)?;
        let root = self.t.sqrt(b, blk, ss)?;
        b.divf(blk, one, root)
    }

    /// `dx = r·dy − r³·x·(x·dy)` per row, `r = (‖x‖² + 1e-6)^{-1/2}`: one row per thread.
    fn l2norm_rows_vjp(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        x: Src,
        dy: Src,
        dst: Dest,
    ) -> R<()> {
        let b = &self.b;
        let (rows, cols) = dst
            .extent()
            .ok_or_else(|| EmitError::Schedule("l2norm_rows_vjp without a tile".into()))?;
        let cols = cols as i64;
        self.strided(blk, env, rows as u64, |blk, r| {
            let zero = b.ci(blk, 0)?;
            let one = b.ci(blk, 1)?;
            let width = b.ci(blk, cols)?;
            let row0 = b.muli(blk, r, width)?;
            let ss = self.row_dot(blk, env, (x, x), r, row0, width)?;
            let xdy = self.row_dot(blk, env, (x, dy), r, row0, width)?;
            let inv = self.inv_norm(blk, ss)?;
            let inv2 = b.mulf(blk, inv, inv)?;
            let inv3 = b.mulf(blk, inv2, inv)?;
            let coef = b.mulf(blk, inv3, xdy)?;
            b.for_(blk, zero, width, one, |blk, c| {
                let idx = b.addi(blk, row0, c)?;
                let v = self.read(blk, env, x, r, c, idx)?;
                let d = self.read(blk, env, dy, r, c, idx)?;
                let a = b.mulf(blk, inv, d)?;
                let bb = b.mulf(blk, coef, v)?;
                let y = b.subf(blk, a, bb)?;
                self.store_dest(blk, env, dst, r, c, idx, y)
            })
        })?;
        self.zero_dest_padding(blk, env, dst)
    }

    /// `y[r] = x[r] / sqrt(‖x[r]‖² + 1e-6)`, one row per thread.
    fn l2norm_rows(&self, blk: &Block<'c>, env: &Env<'c, '_>, src: Src, dst: Dest) -> R<()> {
        let b = &self.b;
        let (rows, cols) = dst
            .extent()
            .ok_or_else(|| EmitError::Schedule("l2norm_rows without a tile".into()))?;
        let cols = cols as i64;
        self.strided(blk, env, rows as u64, |blk, r| {
            let zero = b.ci(blk, 0)?;
            let one = b.ci(blk, 1)?;
            let width = b.ci(blk, cols)?;
            let row0 = b.muli(blk, r, width)?;
            let ss = self.row_dot(blk, env, (src, src), r, row0, width)?;
            let inv = self.inv_norm(blk, ss)?;
            b.for_(blk, zero, width, one, |blk, c| {
                let idx = b.addi(blk, row0, c)?;
                let x = self.read(blk, env, src, r, c, idx)?;
                let y = b.mulf(blk, x, inv)?;
                self.store_dest(blk, env, dst, r, c, idx, y)
            })
        })?;
        self.zero_dest_padding(blk, env, dst)
    }
}
