//! NVIDIA: MLIR → NVVM/LLVM dialect → PTX (`gpu-module-to-binary{format=isa}`).
//!
//! The pass list is `reference/mlir-lowering.md` §1, verified there with ptxas 12.9 for WMMA,
//! `mma.sync`, wgmma/TMA, cp.async and shared memory.

use melior::ir::Module;

use super::{LowerError, Lowered, ObjectFormat, Session, Target, into_text, joined_pipeline};

/// Lowers the gpu module to the LLVM dialect with NVVM ops, ready for serialization.
///
/// Order matters: `convert-nvgpu-to-nvvm` runs before `convert-nvvm-to-llvm` (mbarrier, wgmma
/// and TMA ops become inline PTX there; otherwise translation fails on
/// `nvvm.mbarrier.try_wait.parity`), and both before `convert-gpu-to-nvvm`. The bare-pointer
/// convention makes each statically shaped memref argument one `.param` pointer instead of a
/// five-field descriptor, which is the launch ABI the runtime packs. `+ptx80` is the lowest PTX
/// ISA with everything sm_90a needs (wgmma, TMA) and is accepted by every driver we target.
pub(super) fn lowering_pipeline(target: Target) -> String {
    let chip = target.name();
    format!(
        "builtin.module(nvvm-attach-target{{chip={chip} features=+ptx80 O=3}}, \
         gpu.module(convert-nvgpu-to-nvvm, convert-vector-to-scf, convert-scf-to-cf, \
         convert-nvvm-to-llvm, expand-strided-metadata, lower-affine, \
         convert-gpu-to-nvvm{{use-bare-ptr-memref-call-conv=true}}, canonicalize, cse), \
         reconcile-unrealized-casts)"
    )
}

/// Serializes to PTX text. No `toolkit=`: that is only needed for libdevice (`math.*` ops that
/// become `__nv_*` calls), which the kernels avoid by calling `llvm.nvvm.*` intrinsics.
pub(super) const SERIALIZE_PIPELINE: &str = "builtin.module(gpu-module-to-binary{format=isa})";

pub(super) fn lower(session: &Session, mut module: Module) -> Result<Lowered, LowerError> {
    let target = session.target;
    let lowering = lowering_pipeline(target);
    session.run(&mut module, &lowering)?;
    // Printed once here (a few ms) so `--stage lowered` needs no second lowering.
    let lowered_mlir = module.as_operation().to_string();
    let bytes = session.serialize(
        &module,
        SERIALIZE_PIPELINE,
        ObjectFormat::Assembly,
        "PTX assembly",
    )?;
    let ptx = into_text(bytes, "PTX assembly")?;
    Ok(Lowered {
        target,
        binary: ptx.into_bytes(),
        amd_assembly: None,
        lowered_mlir,
        pipeline: joined_pipeline(&lowering, SERIALIZE_PIPELINE),
    })
}
