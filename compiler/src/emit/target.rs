//! Every vendor difference of the emitted MLIR, in one place.
//!
//! | what | NVIDIA (sm_*) | AMD (gfx*) | SPIR-V |
//! |---|---|---|---|
//! | buffer args | static flat `memref<2^40 x T>` (bare-pointer ABI takes static shapes only) | same | `memref<?xT>` (one pointer each) |
//! | entry ABI | `known_block_size` (→ `.maxntid`) | `known_block_size` (→ `reqd_work_group_size`; without it AMD caps launches at 256 threads) | `spirv.entry_point_abi` (the conversion skips kernels without it) |
//! | exp2 | `llvm.nvvm.ex2.approx.f32` (`math.exp2` needs libdevice) | `llvm.amdgcn.exp2.f32` (`math.exp2` needs ROCm's device libs) | `spirv.CL.exp(x·ln 2)` (OpenCL.std has no exp2 op in MLIR and `math.*` is not converted for the Kernel flavour) |
//! | sqrt | `llvm.sqrt.f32` (→ `sqrt.rn.f32`) | `llvm.sqrt.f32` | `spirv.CL.sqrt` |
//! | barrier | `gpu.barrier` (`bar.sync` orders global memory too) | `gpu.barrier` (workgroup-scope fences cover global memory) | `spirv.ControlBarrier` with `CrossWorkgroupMemory`: `gpu.barrier` only orders workgroup memory there, and the tiles live in global scratch |
//! | bf16 | `bf16` memrefs, `arith.extf/truncf` (`cvt.f32.bf16`, `cvt.rn.bf16.f32`) | same (emulated on CDNA) | `i16` memrefs: shift into the high half of an f32; store rounds to nearest even in integer ops (SPIR-V has no bf16 without an extension) |
//! | f16 | `f16` memrefs | same | `f16` memrefs (Float16 capability) |
//! | matmul | tensor cores for bf16/f16 (`emit::mma`, operands in dynamic shared memory) | matrix cores for bf16/f16 (`emit::mfma`: `amdgpu.mfma` on gfx90a/gfx942, `amdgpu.wmma` on gfx1100; operands in LDS, a static workgroup attribution) | scalar f32 loops |
//! | thread index in loops | a volatile `mov.u32 %tid.x` per matmul (stops LLVM hoisting addresses out of the chunk loop) | a volatile `v_mov_b32` per matmul and per cooperative loop | `gpu.thread_id` |

use linrec_spec::launch::ElementType;
use melior::ir::{
    Attribute, Block, Type, Value,
    attribute::{DenseI32ArrayAttribute, StringAttribute},
    r#type::MemRefType,
};

use super::builder::{Builder, CmpF, R};
use crate::lower::{Target, Vendor};
use crate::schedule::BufferType;

/// Elements of the static flat memref that stands for a bare pointer on NVIDIA and AMD: big
/// enough for any tensor (8 TiB of f64), and only a type — the bare-pointer convention passes
/// the pointer alone and nothing checks accesses against it.
const FLAT_ELEMENTS: i64 = 1 << 40;

/// `ShapedType::kDynamic`.
pub(super) const DYNAMIC: i64 = i64::MIN;

/// The vendor-specific half of the emitter.
#[derive(Clone, Copy, Debug)]
pub(super) struct TargetOps {
    target: Target,
    /// Precede barriers with `fence.proxy.async.shared::cta` (kernels with wgmma).
    proxy_fence: bool,
    /// Address the dynamic shared memory through its extern array, declared 1024-byte
    /// aligned (modules with swizzled tiles: their XOR is the hardware's on address bits).
    aligned_smem: bool,
}

impl TargetOps {
    pub fn new(target: Target) -> Self {
        TargetOps {
            target,
            proxy_fence: false,
            aligned_smem: false,
        }
    }

    /// The same, with barriers that make shared-memory writes visible to wgmma (`yes`).
    pub fn with_proxy_fence(self, yes: bool) -> Self {
        TargetOps {
            proxy_fence: yes,
            ..self
        }
    }

    /// The same, with the dynamic shared memory 1024-byte aligned (`yes`).
    pub fn with_aligned_smem(self, yes: bool) -> Self {
        TargetOps {
            aligned_smem: yes,
            ..self
        }
    }

    /// Whether the dynamic shared memory is the 1024-byte aligned extern array.
    pub fn aligned_smem(&self) -> bool {
        self.aligned_smem
    }

    fn spirv(&self) -> bool {
        self.target.vendor() == Vendor::Intel
    }

    /// The element type a buffer holds in memory.
    fn storage<'c>(&self, b: &Builder<'c>, ty: BufferType) -> Type<'c> {
        match ty {
            BufferType::I32 => b.int(32),
            BufferType::I64 => b.int(64),
            BufferType::Float(ElementType::F32) => b.f32(),
            BufferType::Float(ElementType::F16) => Type::float16(b.ctx),
            BufferType::Float(ElementType::Bf16) if self.spirv() => b.int(16),
            BufferType::Float(ElementType::Bf16) => Type::bfloat16(b.ctx),
        }
    }

    /// The kernel argument type of a buffer.
    pub fn memref<'c>(&self, b: &Builder<'c>, ty: BufferType) -> Type<'c> {
        let dim = if self.spirv() { DYNAMIC } else { FLAT_ELEMENTS };
        MemRefType::new(self.storage(b, ty), &[dim], None, None).into()
    }

    /// Attributes of the `gpu.func` that fix the workgroup size.
    pub fn entry_attributes<'c>(
        &self,
        b: &Builder<'c>,
        threads: u32,
    ) -> R<Vec<(melior::ir::Identifier<'c>, Attribute<'c>)>> {
        let block = [i32::try_from(threads).unwrap_or(i32::MAX), 1, 1];
        let mut attrs = vec![b.named(
            "known_block_size",
            DenseI32ArrayAttribute::new(b.ctx, &block).into(),
        )];
        if self.spirv() {
            attrs.push(b.named(
                "spirv.entry_point_abi",
                b.attr(&format!(
                    "#spirv.entry_point_abi<workgroup_size = [{threads}, 1, 1]>"
                ))?,
            ));
        }
        Ok(attrs)
    }

    /// Loads element `idx` of a float buffer of `dtype` and widens it to f32.
    pub fn load_f32<'c, 'a>(
        &self,
        b: &Builder<'c>,
        blk: &'a Block<'c>,
        mem: Value<'c, '_>,
        idx: Value<'c, '_>,
        dtype: ElementType,
    ) -> R<Value<'c, 'a>> {
        let x = b.load(blk, mem, idx)?;
        match dtype {
            ElementType::F32 => Ok(x),
            ElementType::Bf16 if self.spirv() => {
                // bf16 is the high half of an f32.
                let wide = b.cast(blk, "arith.extui", x, b.int(32))?;
                let sixteen = b.ci32(blk, 16)?;
                let bits = b.bin(blk, "arith.shli", wide, sixteen)?;
                b.cast(blk, "arith.bitcast", bits, b.f32())
            }
            ElementType::Bf16 | ElementType::F16 => b.cast(blk, "arith.extf", x, b.f32()),
        }
    }

    /// Rounds an f32 to `dtype` (to nearest even) and stores it at element `idx`.
    pub fn store_f32(
        &self,
        b: &Builder<'_>,
        blk: &Block<'_>,
        value: Value<'_, '_>,
        mem: Value<'_, '_>,
        idx: Value<'_, '_>,
        dtype: ElementType,
    ) -> R<()> {
        let stored = match dtype {
            ElementType::F32 => value,
            ElementType::Bf16 if self.spirv() => bf16_bits(b, blk, value)?,
            ElementType::Bf16 => b.cast(blk, "arith.truncf", value, Type::bfloat16(b.ctx))?,
            ElementType::F16 => b.cast(blk, "arith.truncf", value, Type::float16(b.ctx))?,
        };
        b.store(blk, stored, mem, idx)
    }

    /// `x` rounded to `dtype` (to nearest even) and widened back to f32: what a 16-bit
    /// operand tile would hold, for the emulated tensor-core layout.
    pub fn round_f32<'c, 'a>(
        &self,
        b: &Builder<'c>,
        blk: &'a Block<'c>,
        x: Value<'c, '_>,
        dtype: ElementType,
    ) -> R<Value<'c, 'a>> {
        let narrow = match dtype {
            ElementType::F32 => {
                return Err(super::EmitError::Schedule(
                    "operand tiles for an f32 kernel".into(),
                ));
            }
            ElementType::Bf16 if self.spirv() => {
                let bits = bf16_bits(b, blk, x)?;
                let wide = b.cast(blk, "arith.extui", bits, b.int(32))?;
                let sixteen = b.ci32(blk, 16)?;
                let shifted = b.bin(blk, "arith.shli", wide, sixteen)?;
                return b.cast(blk, "arith.bitcast", shifted, b.f32());
            }
            ElementType::Bf16 => Type::bfloat16(b.ctx),
            ElementType::F16 => Type::float16(b.ctx),
        };
        let y = b.cast(blk, "arith.truncf", x, narrow)?;
        b.cast(blk, "arith.extf", y, b.f32())
    }

    /// The thread index, read in a way LLVM cannot hoist out of a loop (NVIDIA: a volatile
    /// `mov.u32 %r, %tid.x`; AMD: a volatile `v_mov_b32` of the thread index; SPIR-V: plain).
    ///
    /// Why: a matmul's addresses (its fragment loads and the result stores of every
    /// fragment) depend only on the thread index, so LLVM hoists all of them out of the
    /// chunk loop and keeps them live across it: over a hundred registers for four matmuls,
    /// and ptxas (or the AMDGPU register allocator) spills. Derived from this value they are
    /// recomputed per chunk, a few integer ops against dozens of matrix instructions.
    pub fn thread_id_per_use<'c, 'a>(
        &self,
        b: &Builder<'c>,
        blk: &'a Block<'c>,
    ) -> R<Value<'c, 'a>> {
        let (asm, constraints, operands) = match self.target.vendor() {
            Vendor::Nvidia => ("mov.u32 $0, %tid.x;", "=r", vec![]),
            Vendor::Amd => {
                // The thread index lives in a VGPR; copying it through an asm statement with
                // side effects makes every use a fresh value.
                let tid = b.gpu_id(blk, "gpu.thread_id", "x")?;
                let tid = b.cast(blk, "arith.index_castui", tid, b.int(32))?;
                ("v_mov_b32 $0, $1", "=v,v", vec![tid])
            }
            Vendor::Intel => return b.gpu_id(blk, "gpu.thread_id", "x"),
        };
        let tid = b.push(
            blk,
            b.inline_asm(asm, constraints, true)
                .add_operands(&operands)
                .add_results(&[b.int(32)]),
        )?;
        b.cast(blk, "arith.index_castui", tid, b.index())
    }

    /// NVIDIA: the 16 bytes at byte address `addr` (an `index`, 16-byte aligned) as
    /// `vector<4xi32>`, by `ld.global.nc.v4.b32` in an asm statement. Opaque on purpose: a
    /// `vector.load` here and element loads of the same bytes in the misaligned branch are the
    /// same value to LLVM, which then keeps only the element loads for both branches.
    pub fn global_load_16<'c, 'a>(
        &self,
        b: &Builder<'c>,
        blk: &'a Block<'c>,
        addr: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        if self.target.vendor() != Vendor::Nvidia {
            return Err(super::EmitError::Schedule(
                "a 16-byte global load asm off NVIDIA".into(),
            ));
        }
        let addr = b.cast(blk, "arith.index_cast", addr, b.int(64))?;
        let i32 = b.int(32);
        let st = Type::parse(b.ctx, "!llvm.struct<(i32, i32, i32, i32)>").ok_or_else(|| {
            super::EmitError::Build {
                op: "llvm.struct type".into(),
                detail: "did not parse".into(),
            }
        })?;
        let words = b.push(
            blk,
            b.inline_asm(
                "ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$4];",
                "=r,=r,=r,=r,l",
                false,
            )
            .add_operands(&[addr])
            .add_results(&[st]),
        )?;
        let mut parts = Vec::with_capacity(4);
        for i in 0..4 {
            parts.push(
                b.push(
                    blk,
                    b.op("llvm.extractvalue")
                        .add_attributes(&[b.named(
                            "position",
                            melior::ir::attribute::DenseI64ArrayAttribute::new(b.ctx, &[i]).into(),
                        )])
                        .add_operands(&[words])
                        .add_results(&[i32]),
                )?,
            );
        }
        b.push(
            blk,
            b.op("vector.from_elements")
                .add_operands(&parts)
                .add_results(&[Type::vector(&[4], i32)]),
        )
    }

    /// `2^x`; `2^−∞ = 0` on every target.
    pub fn exp2<'c, 'a>(
        &self,
        b: &Builder<'c>,
        blk: &'a Block<'c>,
        x: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        match self.target.vendor() {
            Vendor::Nvidia => intrinsic(b, blk, "llvm.nvvm.ex2.approx.f32", x),
            Vendor::Amd => intrinsic(b, blk, "llvm.amdgcn.exp2.f32", x),
            Vendor::Intel => {
                let ln2 = b.cf32(blk, std::f64::consts::LN_2)?;
                let y = b.mulf(blk, x, ln2)?;
                b.push(
                    blk,
                    b.op("spirv.CL.exp")
                        .add_operands(&[y])
                        .add_results(&[b.f32()]),
                )
            }
        }
    }

    /// `√x`, correctly rounded.
    pub fn sqrt<'c, 'a>(
        &self,
        b: &Builder<'c>,
        blk: &'a Block<'c>,
        x: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        match self.target.vendor() {
            Vendor::Nvidia | Vendor::Amd => intrinsic(b, blk, "llvm.sqrt.f32", x),
            Vendor::Intel => b.push(
                blk,
                b.op("spirv.CL.sqrt")
                    .add_operands(&[x])
                    .add_results(&[b.f32()]),
            ),
        }
    }

    /// A workgroup barrier that also orders global memory (the tiles live in global scratch).
    pub fn barrier(&self, b: &Builder<'_>, blk: &Block<'_>) -> R<()> {
        if self.spirv() {
            let workgroup = b.attr("#spirv.scope<Workgroup>")?;
            let semantics = b.attr(
                "#spirv.memory_semantics<AcquireRelease|WorkgroupMemory|CrossWorkgroupMemory>",
            )?;
            b.push0(
                blk,
                b.op("spirv.ControlBarrier").add_attributes(&[
                    b.named("execution_scope", workgroup),
                    b.named("memory_scope", workgroup),
                    b.named("memory_semantics", semantics),
                ]),
            )
        } else {
            if self.proxy_fence {
                // wgmma reads shared memory through the async proxy: what this thread wrote
                // before the barrier must be visible there after it (`emit/wgmma.rs`).
                b.push0(
                    blk,
                    b.op("nvvm.fence.proxy").add_attributes(&[
                        b.named("kind", b.attr("#nvvm.proxy_kind<async.shared>")?),
                        b.named("space", b.attr("#nvvm.shared_space<cta>")?),
                    ]),
                )?;
            }
            b.push0(blk, b.op("gpu.barrier"))
        }
    }
}

/// Calls a unary f32 LLVM intrinsic (kept as a call so the GPU conversions, which mark
/// `llvm.intr.exp2`/`sqrt` illegal or turn `math.*` into library calls, leave it alone).
fn intrinsic<'c, 'a>(
    b: &Builder<'c>,
    blk: &'a Block<'c>,
    name: &str,
    x: Value<'c, '_>,
) -> R<Value<'c, 'a>> {
    b.push(
        blk,
        b.op("llvm.call_intrinsic")
            .add_attributes(&[
                b.named("intrin", StringAttribute::new(b.ctx, name).into()),
                // One argument, no operand bundles.
                b.named(
                    "operandSegmentSizes",
                    DenseI32ArrayAttribute::new(b.ctx, &[1, 0]).into(),
                ),
                b.named(
                    "op_bundle_sizes",
                    DenseI32ArrayAttribute::new(b.ctx, &[]).into(),
                ),
            ])
            .add_operands(&[x])
            .add_results(&[b.f32()]),
    )
}

/// The bf16 bit pattern of an f32, rounded to nearest even, as i16; NaN stays a (quiet) NaN
/// (the plain rounding formula would turn a NaN with only low mantissa bits into infinity).
fn bf16_bits<'c, 'a>(b: &Builder<'c>, blk: &'a Block<'c>, x: Value<'c, '_>) -> R<Value<'c, 'a>> {
    let bits = b.cast(blk, "arith.bitcast", x, b.int(32))?;
    let sixteen = b.ci32(blk, 16)?;
    let one = b.ci32(blk, 1)?;
    let half = b.ci32(blk, 0x7FFF)?;
    let high = b.bin(blk, "arith.shrui", bits, sixteen)?;
    let lsb = b.bin(blk, "arith.andi", high, one)?;
    let bias = b.addi(blk, half, lsb)?;
    let rounded = b.addi(blk, bits, bias)?;
    let top = b.bin(blk, "arith.shrui", rounded, sixteen)?;
    let narrow = b.cast(blk, "arith.trunci", top, b.int(16))?;
    let nan = b.cmpf(blk, CmpF::Uno, x, x)?;
    let qnan = b.ci16(blk, 0x7FC0)?;
    b.select(blk, nan, qnan, narrow)
}
