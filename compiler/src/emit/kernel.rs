//! The kernel's frame: arguments, the workgroup's coordinates, the state's initialisation, the
//! sequential loop over chunks (whose body [`super::tile`] fills node by node), the sink phase
//! and the final state. The layout is the schedule's (see [`crate::schedule`]); with tensor
//! cores, also the dynamic shared memory that holds the 16-bit operand tiles and the ops that
//! read and write them; with AMD matrix cores, the LDS that holds them (a static workgroup
//! attribution, so that the lowering's LDS guard sees its size).

use linrec_spec::launch::{ElementType, KernelParam};
use melior::ir::{
    Attribute, Block, BlockLike, Region, RegionLike, Type, Value,
    attribute::{IntegerAttribute, StringAttribute, TypeAttribute},
    r#type::{FunctionType, MemRefType},
};

use super::EmitError;
use super::builder::{Builder, Cmp, R};
use super::copy::Carried;
use super::target::{DYNAMIC, TargetOps};
use super::tma::TmaStep;
use crate::lower::Vendor;
use crate::plan::{Direction, Sink};
use crate::schedule::{
    BackwardSchedule, MatmulPath, OperandTile, Part, Schedule, Tile, TileLayout,
};

/// The symbol of the dynamic shared memory. It must be a public, uninitialised
/// `memref.global` of `memref<0xi8, workgroup>`: `gpu.dynamic_shared_memory` then reuses it
/// and the PTX declares `.extern .shared .align 16 .b8 smem[]`. Without it, LLVM 22 emits an
/// internal global that NVPTX turns into a 1-byte *static* array overlapping other shared
/// memory (`reference/mlir-lowering.md` §3, `mlir/2d_dynamic_smem_overlap_bug.mlir`).
const SMEM_SYMBOL: &str = "smem";

/// Values of the kernel's entry block that every later step uses.
#[derive(Clone)]
pub(super) struct Env<'c, 'a> {
    /// Arguments in ABI order, with their parameter.
    pub args: Vec<(KernelParam, Value<'c, 'a>)>,
    /// Thread index in the workgroup.
    pub tid: Value<'c, 'a>,
    /// This workgroup's first element of the scratch buffer.
    pub base: Value<'c, 'a>,
    /// The f32 tiles in shared memory ([`Schedule::tiles_shared`]); `None`: in scratch.
    pub tiles: Option<Value<'c, 'a>>,
    /// Sequence index.
    pub n: Value<'c, 'a>,
    /// Value head.
    pub hv: Value<'c, 'a>,
    /// Query/key head.
    pub h: Value<'c, 'a>,
    /// H and HV as indices.
    pub heads: Value<'c, 'a>,
    pub vheads: Value<'c, 'a>,
    /// HV / H, the value heads of a GVA group.
    pub group: Value<'c, 'a>,
    /// Backward kernels: which value head of the group (`hv − h · group`), set by the group
    /// loop.
    pub g: Option<Value<'c, 'a>>,
    /// A split forward's output kernel: the chunk of the sequence this workgroup computes.
    pub chunk: Option<Value<'c, 'a>>,
    /// The split-scan's segment and states kernels: the segment of the sequence this
    /// workgroup walks (block z).
    pub segment: Option<Value<'c, 'a>>,
    /// First value column of this workgroup.
    pub v0: Value<'c, 'a>,
    /// Valid columns of the block, `min(BV, V − v0)` (at least 1).
    pub vvalid: Value<'c, 'a>,
    /// Rows `[bos, eos)` of the flattened `[B·T]` tokens that form this sequence.
    pub bos: Value<'c, 'a>,
    pub eos: Value<'c, 'a>,
    /// The output scale (f32).
    pub scale: Value<'c, 'a>,
    /// The per-head constant log-decay (f32), when the plan reads one.
    pub decay: Option<Value<'c, 'a>>,
    /// The operand arena in workgroup memory (`memref<N × bf16|f16, workgroup>`): dynamic
    /// shared memory on the tensor-core path, the LDS attribution on the matrix-core path.
    pub arena: Option<Value<'c, 'a>>,
}

impl<'c, 'a> Env<'c, 'a> {
    /// The argument of `param`.
    pub fn arg(&self, param: &KernelParam) -> R<Value<'c, 'a>> {
        self.args
            .iter()
            .find(|(p, _)| p == param)
            .map(|(_, v)| *v)
            .ok_or_else(|| EmitError::Schedule(format!("the kernel has no {param:?} parameter")))
    }
}

/// The kernel emitter: the schedule, and how to build ops for its target.
pub(super) struct Kernel<'s, 'c> {
    pub b: Builder<'c>,
    pub t: TargetOps,
    pub s: &'s Schedule,
    /// Backward kernels: the whole layout (`s` is the phase being emitted).
    pub bwd: Option<&'s BackwardSchedule>,
}

/// Where a kernel's state starts ([`Kernel::start_state`]).
#[derive(Clone, Copy)]
pub(super) enum StateStart<'c, 'a> {
    /// `h0` (the config has an initial state).
    Initial,
    /// Zero.
    Zero,
    /// Slot `slot` of [`KernelParam::SegmentStates`].
    Segment(Value<'c, 'a>),
}

/// Which loop over chunks a kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// The forward kernel: o and the next state per chunk.
    Forward,
    /// Backward phase 1: the state entering each chunk to `chunk_states`, then the next state.
    States,
    /// Backward kernel 1, phase 2, chunks in reverse: `dh` leaving each chunk to
    /// `chunk_dh`, then the `dh` entering it.
    DStates,
    /// Backward kernel 2: the workgroup's chunks (of [`crate::schedule::GRAD_CHUNKS_PER_WORKGROUP`]),
    /// each on its own: the gradients.
    Grads,
    /// The split-scan's segment kernel: the next state per chunk of the workgroup's segment,
    /// and the product of the chunks' decays.
    Segments,
}

impl<'c> Kernel<'_, 'c> {
    /// The dtype of q, k, v and o.
    pub fn dtype(&self) -> ElementType {
        self.s.config.dtype
    }

    /// The type of one kernel argument.
    pub(super) fn arg_type(&self, p: &KernelParam) -> Type<'c> {
        match self.s.buffer_type(p) {
            Some(ty) => self.t.memref(&self.b, ty),
            None if *p == KernelParam::Scale => self.b.f32(),
            None => self.b.int(32),
        }
    }

    /// The 16-bit element type of the operand tiles (the config's dtype).
    pub fn operand_type(&self) -> R<Type<'c>> {
        match self.dtype() {
            ElementType::Bf16 => Ok(Type::bfloat16(self.b.ctx)),
            ElementType::F16 => Ok(Type::float16(self.b.ctx)),
            ElementType::F32 => Err(EmitError::Schedule(
                "operand tiles for an f32 kernel".into(),
            )),
        }
    }

    /// `#gpu.address_space<workgroup>`.
    fn workgroup(&self) -> R<Attribute<'c>> {
        self.b.attr("#gpu.address_space<workgroup>")
    }

    /// Builds the `gpu.func` and appends it to the `gpu.module` body `module`.
    pub fn build(&self, module: &Block<'c>) -> R<()> {
        let b = &self.b;
        // AMD matrix cores: the operand arena is the function's one workgroup attribution,
        // an entry-block argument after the inputs.
        let lds = match self.s.matmul {
            MatmulPath::MatrixCore(_) => Some(self.arena_type()?),
            _ => None,
        };
        self.func(module, lds, |entry, args, lds_arg| {
            let env = self.prologue(entry, args, lds_arg)?;
            match self.s.part {
                Part::Output => return self.output_chunk(entry, &env),
                Part::Combine => return self.combine(entry, &env),
                Part::Segments => return self.segment(entry, &env),
                Part::ScanStates => return self.scan_states(entry, &env),
                _ => {}
            }
            self.init_state(entry, &env)?;
            self.t.barrier(b, entry)?;
            let phase = match self.s.part {
                Part::States => Phase::States,
                _ => Phase::Forward,
            };
            self.chunk_loop(entry, &env, phase)?;
            if self.s.config.final_state {
                self.final_state(entry, &env)?;
            }
            Ok(())
        })
    }

    /// Declares the dynamic shared memory symbol in the `gpu.module` body `module` (once per
    /// module, before the kernels that use it).
    pub fn declare_smem(&self, module: &Block<'c>) -> R<()> {
        let b = &self.b;
        let ty = MemRefType::new(b.int(8), &[0], None, Some(self.workgroup()?));
        b.push0(
            module,
            b.op("memref.global").add_attributes(&[
                b.named("sym_name", StringAttribute::new(b.ctx, SMEM_SYMBOL).into()),
                b.named("type", TypeAttribute::new(ty.into()).into()),
                // Swizzled tiles (sm_90a) need 1024-byte atoms: their XOR is the hardware's
                // on address bits 4–9.
                b.named(
                    "alignment",
                    IntegerAttribute::new(b.int(64), if self.t.aligned_smem() { 1024 } else { 16 })
                        .into(),
                ),
            ]),
        )
    }

    /// Builds a `gpu.func` named after the schedule's entry with its parameters (and, with
    /// `lds`, one workgroup attribution of that type): `body(entry block, arguments, the
    /// attribution)` fills it, then `gpu.return` ends it.
    pub(super) fn func(
        &self,
        module: &Block<'c>,
        lds: Option<Type<'c>>,
        body: impl for<'x> FnOnce(
            &'x Block<'c>,
            Vec<(KernelParam, Value<'c, 'x>)>,
            Option<Value<'c, 'x>>,
        ) -> R<()>,
    ) -> R<()> {
        let b = &self.b;
        let types: Vec<Type<'c>> = self.s.params.iter().map(|p| self.arg_type(p)).collect();
        let mut block_args: Vec<(Type<'c>, _)> = types.iter().map(|t| (*t, b.loc)).collect();
        block_args.extend(lds.map(|t| (t, b.loc)));
        let entry = Block::new(&block_args);
        {
            let mut args = Vec::new();
            for (i, p) in self.s.params.iter().enumerate() {
                let v = entry.argument(i).map_err(|e| EmitError::Build {
                    op: "gpu.func argument".into(),
                    detail: e.to_string(),
                })?;
                args.push((p.clone(), v.into()));
            }
            let lds_arg = match lds {
                Some(_) => Some(
                    entry
                        .argument(types.len())
                        .map_err(|e| EmitError::Build {
                            op: "gpu.func workgroup attribution".into(),
                            detail: e.to_string(),
                        })?
                        .into(),
                ),
                None => None,
            };
            body(&entry, args, lds_arg)?;
            b.push0(&entry, b.op("gpu.return"))?;
        }
        let region = Region::new();
        region.append_block(entry);
        let function = FunctionType::new(b.ctx, &types, &[]);
        let mut attrs = vec![
            b.named(
                "sym_name",
                StringAttribute::new(b.ctx, &self.s.entry).into(),
            ),
            b.named("function_type", TypeAttribute::new(function.into()).into()),
            b.named("gpu.kernel", Attribute::unit(b.ctx)),
            b.named(
                "workgroup_attributions",
                IntegerAttribute::new(b.int(64), i64::from(lds.is_some())).into(),
            ),
        ];
        if lds.is_some() {
            // 16-byte aligned, as the fragment loads' declared alignment assumes.
            attrs.push(b.named(
                "workgroup_attrib_attrs",
                b.attr("[{llvm.align = 16 : i64}]")?,
            ));
        }
        attrs.extend(self.t.entry_attributes(b, self.s.block_threads)?);
        if let Some(n) = self.s.max_registers {
            // → `.maxnreg` (see `Schedule::max_registers`).
            attrs.push(b.named(
                "nvvm.maxnreg",
                IntegerAttribute::new(b.int(32), i64::from(n)).into(),
            ));
        }
        b.push0(
            module,
            b.op("gpu.func")
                .add_attributes(&attrs)
                .add_regions([region]),
        )
    }

    /// Workgroup coordinates, the sequence's rows, the scalars as indices.
    pub(super) fn prologue<'a>(
        &self,
        blk: &'a Block<'c>,
        args: Vec<(KernelParam, Value<'c, 'a>)>,
        lds: Option<Value<'c, 'a>>,
    ) -> R<Env<'c, 'a>> {
        let b = &self.b;
        let s = self.s;
        let find = |p: KernelParam| {
            args.iter()
                .find(|(q, _)| *q == p)
                .map(|(_, v)| *v)
                .ok_or_else(|| EmitError::Schedule(format!("the kernel has no {p:?} parameter")))
        };
        let tid = b.gpu_id(blk, "gpu.thread_id", "x")?;
        let bx = b.gpu_id(blk, "gpu.block_id", "x")?;
        let by = b.gpu_id(blk, "gpu.block_id", "y")?;
        let heads = b.to_index(blk, find(KernelParam::Heads)?)?;
        let vheads = b.to_index(blk, find(KernelParam::ValueHeads)?)?;
        let seq_len = b.to_index(blk, find(KernelParam::SeqLen)?)?;
        let scale = find(KernelParam::Scale)?;

        // Forward: workgroup y = n·HV + hv; GVA: HV/H value heads share one q/k head.
        // Backward: y = n·H + h, and the kernel walks the group's value heads (`hv` is the
        // first; the group loop sets the others).
        let (n, h, hv, group) = if s.direction == Direction::Backward && s.part != Part::Combine {
            let n = b.divui(blk, by, heads)?;
            let h = b.remui(blk, by, heads)?;
            let group = b.divui(blk, vheads, heads)?;
            (n, h, b.muli(blk, h, group)?, group)
        } else {
            let n = b.divui(blk, by, vheads)?;
            let hv = b.remui(blk, by, vheads)?;
            let group = b.divui(blk, vheads, heads)?;
            (n, b.divui(blk, hv, group)?, hv, group)
        };

        let bv = s.block_v as i64;
        let bv_c = b.ci(blk, bv)?;
        // The value blocks; a split forward's output kernel numbers (chunk, value block) along
        // x, so x = chunk · blocks + block.
        let blocks = s.config.value_dim.div_ceil(s.block_v) as i64;
        // A backward's gradient kernel numbers groups of chunks along x and owns all of V.
        let ceil_t = |per: i64| -> R<Value<'c, 'a>> {
            let round = b.ci(blk, per - 1)?;
            let up = b.addi(blk, seq_len, round)?;
            let cc = b.ci(blk, per)?;
            b.divui(blk, up, cc)
        };
        let (vb, chunk, gx) = match s.part {
            Part::Output => {
                let nb = b.ci(blk, blocks)?;
                let chunks = ceil_t(s.config.chunk as i64)?;
                let gx = b.muli(blk, chunks, nb)?;
                (b.remui(blk, bx, nb)?, Some(b.divui(blk, bx, nb)?), gx)
            }
            Part::Grads => {
                let per = (s.config.chunk * crate::schedule::GRAD_CHUNKS_PER_WORKGROUP) as i64;
                (b.ci(blk, 0)?, Some(bx), ceil_t(per)?)
            }
            _ => (bx, None, b.ci(blk, blocks)?),
        };
        let v0 = b.muli(blk, vb, bv_c)?;
        let vdim = b.ci(blk, s.config.value_dim as i64)?;
        let rest = b.subi(blk, vdim, v0)?;
        let vvalid = b.bin(blk, "arith.minui", rest, bv_c)?;

        let segment = match s.part {
            Part::Segments | Part::ScanStates => Some(b.gpu_id(blk, "gpu.block_id", "z")?),
            _ => None,
        };
        // This workgroup's scratch: workgroups are numbered (y·gz + z)·gx + x, gz from T as
        // the grid has it (`gpu.grid_dim` would need ROCm's device library on AMD).
        let row = match segment {
            Some(z) => {
                // ceil((T + 1) / (L·C)) = ⌊T / (L·C)⌋ + 1.
                let rows = linrec_spec::launch::SEGMENT_CHUNKS * s.config.chunk;
                let rows = b.ci(blk, rows as i64)?;
                let one = b.ci(blk, 1)?;
                let gz = b.divui(blk, seq_len, rows)?;
                let gz = b.addi(blk, gz, one)?;
                let yz = b.muli(blk, by, gz)?;
                b.addi(blk, yz, z)?
            }
            None => by,
        };
        let wg = b.muli(blk, row, gx)?;
        let wg = b.addi(blk, wg, bx)?;
        let scratch = b.ci(blk, s.scratch as i64)?;
        let base = b.muli(blk, wg, scratch)?;

        // Rows of this sequence: cu_seqlens is read here, on the device, so the host never waits.
        let (bos, eos) = if s.config.varlen {
            let cu = find(KernelParam::CuSeqlens)?;
            let one = b.ci(blk, 1)?;
            let n1 = b.addi(blk, n, one)?;
            let lo = b.load(blk, cu, n)?;
            let hi = b.load(blk, cu, n1)?;
            (b.to_index(blk, lo)?, b.to_index(blk, hi)?)
        } else {
            let bos = b.muli(blk, n, seq_len)?;
            (bos, b.addi(blk, bos, seq_len)?)
        };

        let decay = match &s.decay {
            // Backward: read per value head in the group loop.
            Some(_) if s.direction == Direction::Backward => None,
            Some(p) => {
                let rates = find(p.clone())?;
                Some(b.load(blk, rates, hv)?)
            }
            None => None,
        };

        // The operand arena: one typed view of the dynamic shared memory at byte 0 (the
        // launch passes `shared_bytes`; the extern array is 16-byte aligned, and every tile
        // starts at a multiple of 8 elements).
        let (arena, tiles) = if s.matmul == MatmulPath::TensorCore {
            let space = self.workgroup()?;
            let dynamic = if self.t.aligned_smem() {
                // The extern array itself, 1024-byte aligned (`declare_smem`):
                // `gpu.dynamic_shared_memory` would declare its own at 16 bytes.
                let global = MemRefType::new(b.int(8), &[0], None, Some(space));
                let g = b.push(
                    blk,
                    b.op("memref.get_global")
                        .add_attributes(&[b.named("name", b.attr(&format!("@{SMEM_SYMBOL}"))?)])
                        .add_results(&[global.into()]),
                )?;
                let len = i64::from(s.shared_bytes);
                let bytes = MemRefType::new(b.int(8), &[len], None, Some(space));
                b.push(
                    blk,
                    b.op("memref.reinterpret_cast")
                        .add_attributes(&[
                            b.named("static_offsets", b.attr("array<i64: 0>")?),
                            b.named("static_sizes", b.attr(&format!("array<i64: {len}>"))?),
                            b.named("static_strides", b.attr("array<i64: 1>")?),
                            b.named("operandSegmentSizes", b.attr("array<i32: 1, 0, 0, 0>")?),
                        ])
                        .add_operands(&[g])
                        .add_results(&[bytes.into()]),
                )?
            } else {
                let bytes = MemRefType::new(b.int(8), &[DYNAMIC], None, Some(space));
                b.push(
                    blk,
                    b.op("gpu.dynamic_shared_memory")
                        .add_results(&[bytes.into()]),
                )?
            };
            let view = self.arena_type()?;
            let zero = b.ci(blk, 0)?;
            let arena = b.push(
                blk,
                b.op("memref.view")
                    .add_operands(&[dynamic, zero])
                    .add_results(&[view]),
            )?;
            // The f32 tiles, when they live on chip: a second view after the operands.
            let tiles = if s.tiles_shared {
                let len = i64::try_from(s.scratch_tiles()).map_err(|_| {
                    EmitError::Schedule(format!("{} f32 tile elements", s.scratch_tiles()))
                })?;
                let ty = MemRefType::new(b.f32(), &[len], None, Some(space));
                let at = crate::schedule::tiles_offset(s.operand_arena * 2);
                let at = b.ci(blk, at as i64)?;
                Some(
                    b.push(
                        blk,
                        b.op("memref.view")
                            .add_operands(&[dynamic, at])
                            .add_results(&[ty.into()]),
                    )?,
                )
            } else {
                None
            };
            (Some(arena), tiles)
        } else {
            (lds, None)
        };
        Ok(Env {
            args,
            tid,
            base,
            tiles,
            n,
            hv,
            h,
            heads,
            vheads,
            group,
            g: None,
            chunk,
            segment,
            v0,
            vvalid,
            bos,
            eos,
            scale,
            decay,
            arena,
        })
    }

    /// `memref<arena × bf16|f16, #gpu.address_space<workgroup>>`: the operand arena's type.
    fn arena_type(&self) -> R<Type<'c>> {
        let len = i64::try_from(self.s.operand_arena).map_err(|_| {
            EmitError::Schedule(format!("{} operand elements", self.s.operand_arena))
        })?;
        let space = self.workgroup()?;
        Ok(MemRefType::new(self.operand_type()?, &[len], None, Some(space)).into())
    }

    /// The address in scratch of element `idx` of `tile`.
    pub fn addr<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        tile: Tile,
        idx: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let off = b.ci(blk, tile.offset as i64)?;
        if env.tiles.is_some() {
            return b.addi(blk, off, idx);
        }
        let at = b.addi(blk, env.base, off)?;
        b.addi(blk, at, idx)
    }

    /// The memref that holds the f32 tiles ([`Kernel::addr`] indexes it): shared memory when
    /// they live there, else the scratch buffer.
    pub fn tile_mem<'e>(&self, env: &Env<'c, 'e>) -> R<Value<'c, 'e>> {
        match env.tiles {
            Some(t) => Ok(t),
            None => env.arg(&KernelParam::Scratch),
        }
    }

    /// The memref that holds the operand tiles: the workgroup-memory arena on the
    /// tensor-core and matrix-core paths, the scratch buffer when emulated.
    pub fn operand_mem<'e>(&self, env: &Env<'c, 'e>) -> R<Value<'c, 'e>> {
        let path = self.s.matmul;
        match env.arena {
            Some(arena) if path.operands_on_chip() => Ok(arena),
            _ if path.is_emulated() => env.arg(&KernelParam::Scratch),
            _ => Err(EmitError::Schedule(format!(
                "no operand memory on the {path:?} path"
            ))),
        }
    }

    /// Where the operand arena starts in [`Kernel::operand_mem`], as an element index: 0 in
    /// workgroup memory, the workgroup's operand slots in scratch when emulated.
    pub fn operand_arena_base<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let off = b.ci(blk, self.s.operand_base as i64)?;
        b.addi(blk, env.base, off)
    }

    /// The index of element `(r, c)` of an operand tile in [`Kernel::operand_mem`] (when
    /// emulated, the operand arena follows the f32 tiles in the workgroup's scratch).
    pub(super) fn operand_index<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        tile: OperandTile,
        r: Value<'c, '_>,
        c: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let within = match tile.layout {
            TileLayout::Swizzled => {
                // ⌊c/64⌋·64·rows_padded + 64·r + 8·(⌊c/8⌋ mod 8 ⊕ r mod 8) + c mod 8.
                // As bit operations on `c ⊕ 8·(r mod 8)`: the chunk bits of c XORed with r's.
                let (eight, sixty4) = (b.ci(blk, 8)?, b.ci(blk, 64)?);
                let phase = b.bin(blk, "arith.remui", r, eight)?;
                let phase = b.muli(blk, phase, eight)?;
                let swapped = b.bin(blk, "arith.xori", c, phase)?;
                let within = b.bin(blk, "arith.remui", swapped, sixty4)?;
                let at = b.mad(blk, within, r, 64)?;
                if tile.cols_padded <= 64 {
                    at
                } else {
                    let slab = b.bin(blk, "arith.divui", c, sixty4)?;
                    b.mad(blk, at, slab, 64 * tile.rows_padded as i64)?
                }
            }
            TileLayout::CoreMatrices => {
                // ⌊c/8⌋·8·rows_padded + 8·r + c mod 8.
                let eight = b.ci(blk, 8)?;
                let block = b.bin(blk, "arith.divui", c, eight)?;
                let lane = b.bin(blk, "arith.remui", c, eight)?;
                let row = b.mad(blk, lane, r, 8)?;
                b.mad(blk, row, block, 8 * tile.rows_padded as i64)?
            }
            TileLayout::Rows => b.mad(blk, c, r, tile.stride as i64)?,
        };
        let path = self.s.matmul;
        if path.operands_on_chip() {
            let off = b.ci(blk, tile.offset as i64)?;
            b.addi(blk, within, off)
        } else if path.is_emulated() {
            let off = b.ci(blk, (self.s.operand_base + tile.offset) as i64)?;
            let at = b.addi(blk, env.base, off)?;
            b.addi(blk, at, within)
        } else {
            Err(EmitError::Schedule(
                "an operand tile on the portable path".into(),
            ))
        }
    }

    /// Element `(r, c)` of an operand tile, as f32 (exact: widening).
    pub fn load_operand<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        tile: OperandTile,
        r: Value<'c, '_>,
        c: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let idx = self.operand_index(blk, env, tile, r, c)?;
        let x = b.load(blk, self.operand_mem(env)?, idx)?;
        if self.s.matmul.operands_on_chip() {
            b.cast(blk, "arith.extf", x, b.f32())
        } else {
            Ok(x)
        }
    }

    /// Rounds the f32 `x` to the dtype (to nearest even) and stores it at `(r, c)` of an
    /// operand tile.
    pub fn store_operand(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        tile: OperandTile,
        r: Value<'c, '_>,
        c: Value<'c, '_>,
        x: Value<'c, '_>,
    ) -> R<()> {
        let b = &self.b;
        let idx = self.operand_index(blk, env, tile, r, c)?;
        let stored = if self.s.matmul.operands_on_chip() {
            b.cast(blk, "arith.truncf", x, self.operand_type()?)?
        } else {
            self.t.round_f32(b, blk, x, self.dtype())?
        };
        b.store(blk, stored, self.operand_mem(env)?, idx)
    }

    /// Zeroes the padding rows and columns of an operand tile, so that they add nothing to
    /// any product (the arena is reused by liveness: the padding of one tile may hold another
    /// tile's values from earlier in the chunk). Two loops, no branches: the padding columns
    /// of the valid rows, then whole padding rows.
    pub fn zero_padding(&self, blk: &Block<'c>, env: &Env<'c, '_>, tile: OperandTile) -> R<()> {
        let b = &self.b;
        let extra_cols = tile.cols_padded - tile.cols;
        if extra_cols > 0 {
            self.strided(blk, env, (tile.rows * extra_cols) as u64, |blk, e| {
                let (r, c) = self.row_col(blk, e, extra_cols)?;
                let first = b.ci(blk, tile.cols as i64)?;
                let c = b.addi(blk, c, first)?;
                let zero = b.cf32(blk, 0.0)?;
                self.store_operand(blk, env, tile, r, c, zero)
            })?;
        }
        let extra_rows = tile.rows_padded - tile.rows;
        if extra_rows > 0 {
            let width = tile.cols_padded;
            self.strided(blk, env, (extra_rows * width) as u64, |blk, e| {
                let (r, c) = self.row_col(blk, e, width)?;
                let first = b.ci(blk, tile.rows as i64)?;
                let r = b.addi(blk, r, first)?;
                let zero = b.cf32(blk, 0.0)?;
                self.store_operand(blk, env, tile, r, c, zero)
            })?;
        }
        Ok(())
    }

    /// Index of state element `(k, c)` of this workgroup in an `[N, HV, K, V]` state tensor.
    pub(super) fn state_index<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        k: Value<'c, '_>,
        c: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let head = b.muli(blk, env.n, env.vheads)?;
        let head = b.addi(blk, head, env.hv)?;
        let row = b.mad(blk, k, head, self.s.config.key_dim as i64)?;
        let col = b.addi(blk, env.v0, c)?;
        b.mad(blk, col, row, self.s.config.value_dim as i64)
    }

    /// Elements per thread and trip of [`Self::strided_map`]. 4; 8 on NVIDIA tensor-core
    /// kernels whose f32 tiles are in global scratch (the D = 128 backward: each element
    /// waits on L2, and at 8 ptxas happened to allocate without the 8–40 spilled bytes it
    /// gave at 2 or 4); 1 where unrolling does not pay or spills: AMD (LLVM hoists every
    /// element's address out of the chunk loop, see [`Self::strided`]) and NVIDIA without
    /// tensor cores (the portable D = 256 backward's scratch loops spill). SPIR-V unrolls,
    /// so that the CPU tests run the unrolled index math.
    pub fn map_unroll(&self) -> u64 {
        match self.s.target.vendor() {
            Vendor::Amd => 1,
            Vendor::Nvidia if !self.s.tiles_shared && !self.s.matmul.operands_on_chip() => 1,
            Vendor::Nvidia if !self.s.tiles_shared => 8,
            _ => 4,
        }
    }

    /// A loop over the `len` elements of a tile (each thread every `block_threads`-th one)
    /// that computes `value(block, e)` and then stores it with `store(block, e, value)`.
    ///
    /// Each trip takes [`Self::map_unroll`] of a thread's elements (still `block_threads`
    /// apart, so a warp's accesses stay adjacent) and computes all their values before it
    /// stores any: the stores may alias the loads as far as LLVM and ptxas know, so only
    /// this order lets the trip's loads overlap (one memory latency per trip instead of one
    /// per element). A remainder loop takes what is left.
    pub fn strided_map(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        len: u64,
        value: impl for<'x> Fn(&'x Block<'c>, Value<'c, 'x>) -> R<Value<'c, 'x>>,
        store: impl for<'x> Fn(&'x Block<'c>, Value<'c, 'x>, Value<'c, 'x>) -> R<()>,
    ) -> R<()> {
        let b = &self.b;
        let threads = u64::from(self.s.block_threads);
        let unroll = self.map_unroll();
        let round = threads * unroll;
        let full = if unroll > 1 { len / round * round } else { 0 };
        if full > 0 {
            let zero = b.ci(blk, 0)?;
            let end = b.ci(blk, full as i64)?;
            let step = b.ci(blk, round as i64)?;
            b.for_(blk, zero, end, step, |blk, base| {
                let tid = self.thread_index(blk, env)?;
                let first = b.addi(blk, tid, base)?;
                let mut values = Vec::with_capacity(unroll as usize);
                for k in 0..unroll {
                    let off = b.ci(blk, (k * threads) as i64)?;
                    let e = b.addi(blk, first, off)?;
                    values.push((e, value(blk, e)?));
                }
                for (e, v) in values {
                    store(blk, e, v)?;
                }
                Ok(())
            })?;
        }
        if full < len {
            let tid = self.thread_index(blk, env)?;
            let skip = b.ci(blk, full as i64)?;
            let lb = b.addi(blk, tid, skip)?;
            let ub = b.ci(blk, len as i64)?;
            let step = b.ci(blk, threads as i64)?;
            b.for_(blk, lb, ub, step, |blk, e| {
                let v = value(blk, e)?;
                store(blk, e, v)
            })?;
        }
        Ok(())
    }

    /// A loop over the `len` elements of a tile, each thread taking every `block_threads`-th
    /// one: `body(block, e)`.
    pub fn strided<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        len: u64,
        body: impl for<'x> FnOnce(&'x Block<'c>, Value<'c, 'x>) -> R<()>,
    ) -> R<()> {
        let b = &self.b;
        let ub = b.ci(blk, len as i64)?;
        let step = b.ci(blk, i64::from(self.s.block_threads))?;
        // AMD: each loop reads the thread index afresh. Otherwise LLVM unrolls these loops,
        // hoists every element's 64-bit scratch address out of the chunk loop and keeps
        // hundreds of them live across it (382 VGPRs for the portable K = V = 64 kernels);
        // with the matrix cores' accumulators on top, that spills.
        let tid = self.thread_index(blk, env)?;
        b.for_(blk, tid, ub, step, body)
    }

    /// The thread index for a loop over a tile: read afresh (`TargetOps::thread_id_per_use`)
    /// on AMD, and in NVIDIA backward kernels on tensor cores, whose two nested loops (value
    /// heads, chunks) made ptxas spill the addresses LLVM hoisted out of them at K = V = 128.
    pub(super) fn thread_index<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
    ) -> R<Value<'c, 'a>> {
        let per_use = self.s.target.vendor() == Vendor::Amd
            || (self.s.direction == Direction::Backward && self.s.matmul == MatmulPath::TensorCore);
        if per_use {
            self.t.thread_id_per_use(&self.b, blk)
        } else {
            Ok(env.tid)
        }
    }

    /// Row and column of element `e` of a tile with `cols` columns.
    pub fn row_col<'a>(
        &self,
        blk: &'a Block<'c>,
        e: Value<'c, 'a>,
        cols: usize,
    ) -> R<(Value<'c, 'a>, Value<'c, 'a>)> {
        let b = &self.b;
        if cols == 1 {
            return Ok((e, b.ci(blk, 0)?));
        }
        let w = b.ci(blk, cols as i64)?;
        Ok((b.divui(blk, e, w)?, b.remui(blk, e, w)?))
    }

    /// `(row, vector)` of the `e`-th 8-element vector of an operand tile with `per_row`
    /// vectors a row, in the order threads copy them: along the row, or, for a tile of core
    /// matrices whose rows are a multiple of 8, eight consecutive `e` down eight rows, so that
    /// each eight threads store one contiguous 128-byte core matrix (along the row they would
    /// hit the same banks, `8·rows_padded` elements apart) and still read whole 32-byte
    /// sectors of each global row between the four groups of a warp.
    pub fn vector_row_col<'a>(
        &self,
        blk: &'a Block<'c>,
        e: Value<'c, 'a>,
        tile: OperandTile,
        per_row: usize,
    ) -> R<(Value<'c, 'a>, Value<'c, 'a>)> {
        if tile.layout != TileLayout::CoreMatrices || tile.rows % 8 != 0 || per_row == 1 {
            return self.row_col(blk, e, per_row);
        }
        let b = &self.b;
        let eight = b.ci(blk, 8)?;
        let within = b.remui(blk, e, eight)?;
        let group = b.divui(blk, e, eight)?;
        let (band, col) = self.row_col(blk, group, per_row)?;
        let row = b.mad(blk, within, band, 8)?;
        Ok((row, col))
    }

    /// `S ← h0` (or 0), columns past V read as 0.
    pub(super) fn init_state(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let start = match self.s.config.initial_state {
            true => StateStart::Initial,
            false => StateStart::Zero,
        };
        self.start_state(blk, env, start)
    }

    /// `S ←` the state `start` names, columns past V read as 0.
    pub(super) fn start_state(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        start: StateStart<'c, '_>,
    ) -> R<()> {
        let b = &self.b;
        let state = self.carried_tile()?;
        let from = match start {
            StateStart::Initial => Some((env.arg(&KernelParam::InitialState)?, None)),
            StateStart::Segment(slot) => Some((env.arg(&KernelParam::SegmentStates)?, Some(slot))),
            StateStart::Zero => None,
        };
        self.strided(blk, env, state.len(), |blk, e| {
            let value = match from {
                Some((mem, slot)) => {
                    let (k, c) = self.row_col(blk, e, state.cols)?;
                    self.masked_column(blk, env, c, |blk, c| {
                        let idx = match slot {
                            Some(slot) => self.slot_state_index(blk, env, slot, k, c)?,
                            None => self.state_index(blk, env, k, c)?,
                        };
                        b.load(blk, mem, idx)
                    })?
                }
                None => b.cf32(blk, 0.0)?,
            };
            let scratch = self.tile_mem(env)?;
            let at = self.addr(blk, env, state, e)?;
            b.store(blk, value, scratch, at)
        })
    }

    /// `ceil((eos − bos) / C)`, signed so that a malformed `cu_seqlens` (eos < bos) gives no
    /// chunk (a loop to it runs none).
    pub(super) fn sequence_chunks<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let c = self.s.config.chunk as i64;
        let len = b.subi(blk, env.eos, env.bos)?;
        let round = b.ci(blk, c - 1)?;
        let up = b.addi(blk, len, round)?;
        let cc = b.ci(blk, c)?;
        b.bin(blk, "arith.divsi", up, cc)
    }

    /// The sequential loop over this sequence's chunks (in reverse for [`Phase::DStates`];
    /// the workgroup's group of them for [`Phase::Grads`]).
    /// The token rows that can be (`copy.rs`) are loaded one iteration ahead: a prologue loads
    /// the first chunk's, each iteration issues the next one's (the last chunk reloads itself)
    /// and carries them to the next iteration as `scf.for` iteration values.
    /// For [`Phase::Segments`] with a [`Sink::StateDecay`], the loop also carries the product
    /// of the chunks' decays (from 1) and returns it.
    pub(super) fn chunk_loop<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        phase: Phase,
    ) -> R<Option<Value<'c, 'a>>> {
        let b = &self.b;
        let chunks = self.sequence_chunks(blk, env)?;
        let zero = b.ci(blk, 0)?;
        let one = b.ci(blk, 1)?;
        // (first chunk, chunks) of this loop; iteration `it` runs chunk `first + it` (or
        // `chunks − 1 − it` in reverse).
        let (first, chunks) = match phase {
            Phase::Grads => {
                let per = crate::schedule::GRAD_CHUNKS_PER_WORKGROUP as i64;
                let group = env.chunk.ok_or_else(|| {
                    EmitError::Schedule("a gradient kernel without a chunk group".into())
                })?;
                let per = b.ci(blk, per)?;
                let first = b.muli(blk, group, per)?;
                let rest = b.subi(blk, chunks, first)?;
                let count = b.bin(blk, "arith.minsi", rest, per)?;
                (first, b.bin(blk, "arith.maxsi", count, zero)?)
            }
            _ => match env.segment {
                Some(z) => self.segment_chunks(blk, (z, chunks), phase == Phase::Segments)?,
                None => (zero, chunks),
            },
        };
        let copies = self.prefetched();
        let counts: Vec<usize> = copies.iter().map(|c| self.vectors_per_thread(c)).collect();
        let mut types = match copies.is_empty() {
            true => Vec::new(),
            false => vec![self.row_vector()?; counts.iter().sum()],
        };
        let decay = match phase {
            Phase::Segments => self.sink_of(Sink::StateDecay),
            _ => None,
        };
        let mut init = Vec::new();
        // One alignment check for the prologue and every iteration (the loop body reads it).
        let aligned = match copies.is_empty() {
            true => None,
            false => Some(self.rows_aligned(blk, env, &copies)?),
        };
        if let Some(aligned) = aligned {
            let nonempty = b.cmpi(blk, Cmp::Slt, zero, chunks)?;
            init = b.if_values(
                blk,
                nonempty,
                &types,
                |blk| {
                    let (_, start, len) =
                        self.iteration_rows(blk, env, (first, chunks), phase, zero)?;
                    let mut v = Vec::new();
                    for copy in &copies {
                        v.extend(self.issue_rows(blk, env, (start, len), copy, aligned)?);
                    }
                    b.yield_(blk, &v)
                },
                |blk| {
                    let zeros = self.zero_vector(blk, self.row_vector()?)?;
                    b.yield_(blk, &vec![zeros; types.len()])
                },
            )?;
        }
        if decay.is_some() {
            types.push(b.f32());
            init.push(b.cf32(blk, 1.0)?);
        }
        // TMA loads (the fused forward on sm_90a): the first chunk's copies before the loop.
        let tma = !self.s.tma.is_empty();
        if tma {
            if phase != Phase::Forward {
                return Err(EmitError::Schedule(format!(
                    "TMA loads in a {phase:?} chunk loop"
                )));
            }
            let nonempty = b.cmpi(blk, Cmp::Slt, zero, chunks)?;
            let (_, start, _) = self.iteration_rows(blk, env, (first, chunks), phase, zero)?;
            self.tma_start(blk, env, start, Some(nonempty))?;
        }
        // Built by hand rather than with `Builder::for_`: the body stores entry-block values
        // (the scale) next to its own, which needs the body's lifetime to be a plain local one.
        let mut args = vec![(b.index(), b.loc)];
        args.extend(types.iter().map(|&t| (t, b.loc)));
        let body = Block::new(&args);
        {
            let arg = |k: usize| -> R<Value> {
                body.argument(k)
                    .map(Into::into)
                    .map_err(|e| EmitError::Build {
                        op: "scf.for argument".into(),
                        detail: e.to_string(),
                    })
            };
            let it = arg(0)?;
            let (i, start, len) = self.iteration_rows(&body, env, (first, chunks), phase, it)?;
            let mut carried_now: Vec<Value> = (1..args.len()).map(arg).collect::<R<_>>()?;
            let product = match decay {
                Some(_) => carried_now.pop(),
                None => None,
            };
            let mut next = Vec::new();
            if let Some(aligned) = aligned {
                let one = b.ci(&body, 1)?;
                let after = b.addi(&body, it, one)?;
                let last = b.subi(&body, chunks, one)?;
                let after = b.bin(&body, "arith.minsi", after, last)?;
                let (_, nstart, nlen) =
                    self.iteration_rows(&body, env, (first, chunks), phase, after)?;
                for copy in &copies {
                    next.extend(self.issue_rows(&body, env, (nstart, nlen), copy, aligned)?);
                }
            }
            let mut carried = Carried::new(&copies, &counts, &carried_now)?;
            if tma {
                let one = b.ci(&body, 1)?;
                let after = b.addi(&body, it, one)?;
                let more = b.cmpi(&body, Cmp::Slt, after, chunks)?;
                let (_, nstart, _) =
                    self.iteration_rows(&body, env, (first, chunks), phase, after)?;
                let two = b.ci(&body, 2)?;
                let parity = b.remui(&body, it, two)?;
                carried.tma = Some(TmaStep {
                    parity: b.cast(&body, "arith.index_cast", parity, b.int(32))?,
                    next: Some((nstart, more)),
                });
            }
            match phase {
                Phase::Forward => self.chunk_body(&body, env, start, len, &carried)?,
                Phase::States => self.states_chunk(&body, env, start, len, i, &carried)?,
                Phase::DStates => self.dstates_chunk(&body, env, start, len, i, &carried)?,
                Phase::Grads => self.grads_chunk(&body, env, start, len, i, &carried)?,
                Phase::Segments => {
                    let uniforms = self.segment_chunk(&body, env, start, len, &carried)?;
                    if let (Some(d), Some(p)) = (decay, product) {
                        let d = uniforms[d.0].ok_or_else(|| {
                            EmitError::Schedule(format!(
                                "the state's decay %{} is not a scalar",
                                d.0
                            ))
                        })?;
                        next.push(b.mulf(&body, p, d)?);
                    }
                }
            }
            b.yield_(&body, &next)?;
        }
        let region = Region::new();
        region.append_block(body);
        let mut operands = vec![zero, chunks, one];
        operands.extend(init);
        let results = b.push_n(
            blk,
            b.op("scf.for")
                .add_operands(&operands)
                .add_results(&types)
                .add_regions([region]),
        )?;
        Ok(decay.and(results.last().copied()))
    }

    /// Whether the loop of `phase` walks its chunks last to first: a backward's `dh`.
    fn reverse(&self, phase: Phase) -> bool {
        phase == Phase::DStates
            || (phase == Phase::Segments && self.s.plan.direction == Direction::Backward)
    }

    /// The tile a sequential kernel carries from chunk to chunk: `S`, or a backward's `dh`.
    pub(super) fn carried_tile(&self) -> R<Tile> {
        match (self.s.plan.direction, self.bwd) {
            (Direction::Backward, Some(bs)) => Ok(bs.dstate),
            (Direction::Backward, None) => Err(EmitError::Schedule(
                "a backward plan without its layout".into(),
            )),
            (Direction::Forward, _) => Ok(self.s.state),
        }
    }

    /// The value of a plan sink, if the plan has it.
    pub(super) fn sink_of(&self, sink: Sink) -> Option<crate::plan::ValueId> {
        self.s
            .plan
            .sinks
            .iter()
            .find(|(s, _)| *s == sink)
            .map(|(_, v)| *v)
    }

    /// The chunk of iteration `it` of [`Self::chunk_loop`] over `(first, chunks)` (in reverse
    /// for [`Phase::DStates`]) and its rows `(chunk, start, len)`.
    fn iteration_rows<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        (first, chunks): (Value<'c, '_>, Value<'c, '_>),
        phase: Phase,
        it: Value<'c, '_>,
    ) -> R<(Value<'c, 'a>, Value<'c, 'a>, Value<'c, 'a>)> {
        let b = &self.b;
        let c = self.s.config.chunk as i64;
        let i = if self.reverse(phase) {
            // first + (chunks − 1 − it)
            let one = b.ci(blk, 1)?;
            let last = b.subi(blk, chunks, one)?;
            let back = b.subi(blk, last, it)?;
            b.addi(blk, first, back)?
        } else {
            // A value of this block's lifetime even when `first` is 0 (folded by canonicalize).
            b.addi(blk, first, it)?
        };
        let start = b.mad(blk, env.bos, i, c)?;
        let rest = b.subi(blk, env.eos, start)?;
        let cc = b.ci(blk, c)?;
        let len = b.bin(blk, "arith.minsi", rest, cc)?;
        Ok((i, start, len))
    }

    /// One chunk: every plan node, then o and the next state.
    pub(super) fn chunk_body<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        carried: &Carried<'c, 'a>,
    ) -> R<()> {
        self.nodes(blk, env, start, len, carried)?;
        self.store_output(blk, env, start, len)?;
        self.copy_state(blk, env)?;
        self.t.barrier(&self.b, blk)?;
        self.tma_next(blk, env, carried, None)
    }

    /// `o[rows, v0 + c] ← output tile`, for the chunk's valid rows and columns.
    pub(super) fn store_output(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
    ) -> R<()> {
        let b = &self.b;
        if self.s.values[self.s.output.0] == crate::schedule::Placement::Output {
            return Ok(()); // its node stored it
        }
        let tile = self.tile(self.s.output)?;
        let scratch = self.tile_mem(env)?;
        self.strided(blk, env, tile.len(), |blk, e| {
            let (r, c) = self.row_col(blk, e, tile.cols)?;
            let at = self.addr(blk, env, tile, e)?;
            let x = b.load(blk, scratch, at)?;
            self.store_o(blk, env, (start, len), r, c, x)
        })
    }

    /// Element `(r, c)` of the chunk's output (rows from `start`, `len` valid) to `o`, for the
    /// valid rows and the block's valid columns.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_o(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        (start, len): (Value<'c, '_>, Value<'c, '_>),
        r: Value<'c, '_>,
        c: Value<'c, '_>,
        v: Value<'c, '_>,
    ) -> R<()> {
        let b = &self.b;
        let o = env.arg(&KernelParam::Output)?;
        let row_ok = b.cmpi(blk, Cmp::Ult, r, len)?;
        let col_ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
        let ok = b.bin(blk, "arith.andi", row_ok, col_ok)?;
        b.if_(blk, ok, |blk| {
            let row = b.addi(blk, start, r)?;
            let idx = self.value_index(blk, env, row, c)?;
            self.t.store_f32(b, blk, v, o, idx, self.dtype())
        })
    }

    /// Index of element `(row, v0 + c)` in a `[B·T, HV, V]` tensor (v and o).
    pub fn value_index<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        row: Value<'c, '_>,
        c: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let head = b.muli(blk, row, env.vheads)?;
        let head = b.addi(blk, head, env.hv)?;
        let col = b.addi(blk, env.v0, c)?;
        b.mad(blk, col, head, self.s.config.value_dim as i64)
    }

    /// `S ← next state tile`.
    pub(super) fn copy_state(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        self.copy_tile(blk, env, self.tile(self.s.state_out)?, self.s.state)
    }

    /// `to ← from` (same-sized f32 tiles; nothing when they are the same tile), no barrier.
    pub(super) fn copy_tile(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        from: Tile,
        to: Tile,
    ) -> R<()> {
        let b = &self.b;
        if from == to {
            return Ok(());
        }
        let scratch = self.tile_mem(env)?;
        self.strided_map(
            blk,
            env,
            to.len(),
            |blk, e| self.load_tile(blk, env, from, e),
            |blk, e, x| {
                let at = self.addr(blk, env, to, e)?;
                b.store(blk, x, scratch, at)
            },
        )
    }

    /// `load(block, c')` with `c'` = column `c` clamped to the block's valid ones, and 0 for
    /// a column past them (the state-shaped reads of h0, dht and the chunk states).
    pub(super) fn masked_column<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        c: Value<'c, '_>,
        load: impl FnOnce(&'a Block<'c>, Value<'c, 'a>) -> R<Value<'c, 'a>>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let one = b.ci(blk, 1)?;
        let last = b.subi(blk, env.vvalid, one)?;
        let cc = b.bin(blk, "arith.minui", c, last)?;
        let x = load(blk, cc)?;
        let ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
        let zero = b.cf32(blk, 0.0)?;
        b.select(blk, ok, x, zero)
    }

    /// `ht ← S` for the valid columns.
    pub(super) fn final_state(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let state = self.s.state;
        let ht = env.arg(&KernelParam::FinalState)?;
        let scratch = self.tile_mem(env)?;
        self.strided(blk, env, state.len(), |blk, e| {
            let (k, c) = self.row_col(blk, e, state.cols)?;
            let ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
            b.if_(blk, ok, |blk| {
                let at = self.addr(blk, env, state, e)?;
                let x = b.load(blk, scratch, at)?;
                let idx = self.state_index(blk, env, k, c)?;
                b.store(blk, x, ht, idx)
            })
        })
    }

    /// The tile of a plan value.
    pub fn tile(&self, v: crate::plan::ValueId) -> R<Tile> {
        self.s.values[v.0]
            .tile()
            .ok_or_else(|| EmitError::Schedule(format!("%{} has no tile", v.0)))
    }
}
