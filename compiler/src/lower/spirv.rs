//! SPIR-V (OpenCL/Kernel flavour, Physical64): MLIR → SPIR-V dialect → SPIR-V binary.
//!
//! Route A of `reference/spirv-cpu.md` §1A (`convert-gpu-to-spirv`): one pointer per buffer
//! argument, native subgroup ops, and the smallest output. Its input contract differs from the
//! LLVM-based targets in two ways the emitter has to honour (each found by a failing run there):
//! the kernel needs `spirv.entry_point_abi = #spirv.entry_point_abi<workgroup_size = [..]>`, and
//! workgroup memory must be a `memref.alloc() : memref<..., 3>` in the body — `workgroup(...)`
//! attributions do not convert for the Kernel flavour.

use melior::ir::Module;

use super::{LowerError, Lowered, ObjectFormat, Session, joined_pipeline};

/// SPIR-V's magic number, the first word of every module.
pub const SPIRV_MAGIC: u32 = 0x0723_0203;

/// Attaches an OpenCL target environment and converts the gpu module to a `spirv.module`.
///
/// * `ver=v1.2` is the newest version `spirv-val --target-env opencl2.2` accepts and all our
///   runtimes take; `spirv-update-vce` then lowers the header to what the module really uses
///   (v1.0 for plain kernels).
/// * The capability list says what the device may use, not what the module declares (again
///   `spirv-update-vce` trims it): `Addresses` is required for Physical64 (else `failed to
///   legalize operation 'gpu.module'`), `Int64` for 64-bit indices, the small int/float types
///   and `Groups` (uniform subgroup reductions at v1.2) are there so such kernels convert.
/// * `map-memref-spirv-storage-class{client-api=opencl}` maps numeric memory spaces the OpenCL
///   way (0 → CrossWorkgroup, 3 → Workgroup) before the conversion looks at them.
/// * `use-64bit-index=true`: otherwise the module is Physical32 with 32-bit indices, wrong for
///   Level Zero's 64-bit devices.
pub(super) const LOWERING_PIPELINE: &str = "builtin.module(\
     spirv-attach-target{ver=v1.2 \
     caps=Addresses,Int64,Kernel,Float16,Int8,Int16,Groups,GenericPointer client_api=OpenCL}, \
     gpu.module(map-memref-spirv-storage-class{client-api=opencl}), \
     convert-gpu-to-spirv{use-64bit-index=true}, \
     gpu.module(spirv.module(spirv-lower-abi-attrs, spirv-update-vce)))";

/// Serializes the `spirv.module` (every `format=` gives the same SPIR-V words; `bin` says so).
pub(super) const SERIALIZE_PIPELINE: &str = "builtin.module(gpu-module-to-binary{format=bin})";

pub(super) fn lower(session: &Session, mut module: Module) -> Result<Lowered, LowerError> {
    const EXPECTED: &str = "SPIR-V binary";
    session.run(&mut module, LOWERING_PIPELINE)?;
    // Printed once here (a few ms) so `--stage lowered` needs no second lowering.
    let lowered_mlir = module.as_operation().to_string();
    let binary = session.serialize(&module, SERIALIZE_PIPELINE, ObjectFormat::Binary, EXPECTED)?;
    let magic = binary
        .get(..4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    if binary.len() % 4 != 0 || magic != Some(SPIRV_MAGIC) {
        return Err(LowerError::MissingBinary {
            expected: EXPECTED,
            reason: format!(
                "the object ({} bytes) is not whole little-endian words starting with \
                 {SPIRV_MAGIC:#010x}",
                binary.len()
            ),
        });
    }
    Ok(Lowered {
        target: session.target,
        binary,
        amd_assembly: None,
        lowered_mlir,
        pipeline: joined_pipeline(LOWERING_PIPELINE, SERIALIZE_PIPELINE),
    })
}
