//! How kernel arguments reach the drivers that take them as raw bytes: HIP's
//! `hipModuleLaunchKernel` (an array of pointers, one per argument, each pointing at the
//! argument's value) and Level Zero's `zeKernelSetArgumentValue` (one call per argument with
//! its index, size and a pointer to its value).
//!
//! These are pure functions over [`ArgValue`]s, separate from the drivers, so their layout can
//! be tested on machines without an AMD or Intel GPU. The rule on both APIs is the CUDA one:
//! a buffer is passed as its device address (8 bytes: every device linrec targets is 64-bit),
//! a scalar as its own bytes in the device's byte order (little-endian, as the host's).

use std::ffi::c_void;

use crate::backend::{LaunchArg, RawBuffer};
use crate::error::Result;

/// A kernel argument reduced to the bits the driver copies: a device address or a scalar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArgValue {
    /// A device address (what a [`LaunchArg::Buffer`] becomes).
    Pointer(u64),
    /// `i32` scalar.
    I32(i32),
    /// `u32` scalar.
    U32(u32),
    /// `i64` scalar.
    I64(i64),
    /// `f32` scalar.
    F32(f32),
}

impl ArgValue {
    /// The value of a [`LaunchArg`]: scalars as they are, a buffer as the device address
    /// `address` finds for it (each backend knows its own buffers; it returns an error for a
    /// buffer of another device, which then launches nothing).
    pub fn resolve(
        arg: &LaunchArg<'_>,
        address: impl FnOnce(&RawBuffer) -> Result<u64>,
    ) -> Result<Self> {
        Ok(match *arg {
            LaunchArg::Buffer(raw) => ArgValue::Pointer(address(raw)?),
            LaunchArg::I32(v) => ArgValue::I32(v),
            LaunchArg::U32(v) => ArgValue::U32(v),
            LaunchArg::I64(v) => ArgValue::I64(v),
            LaunchArg::F32(v) => ArgValue::F32(v),
        })
    }

    /// Size in bytes of the kernel parameter it fills.
    pub const fn size(self) -> usize {
        match self {
            ArgValue::Pointer(_) | ArgValue::I64(_) => 8,
            ArgValue::I32(_) | ArgValue::U32(_) | ArgValue::F32(_) => 4,
        }
    }

    /// The parameter's bytes in native byte order in the first [`ArgValue::size`] bytes,
    /// zero-padded to 8.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        match self {
            ArgValue::Pointer(v) => out.copy_from_slice(&v.to_ne_bytes()),
            ArgValue::I64(v) => out.copy_from_slice(&v.to_ne_bytes()),
            ArgValue::I32(v) => out[..4].copy_from_slice(&v.to_ne_bytes()),
            ArgValue::U32(v) => out[..4].copy_from_slice(&v.to_ne_bytes()),
            ArgValue::F32(v) => out[..4].copy_from_slice(&v.to_ne_bytes()),
        }
        out
    }
}

/// The `kernelParams` array of `hipModuleLaunchKernel`: element `i` points at the value of
/// argument `i`.
///
/// The values live in 8-byte slots owned by this struct (each aligned for any parameter up to
/// 8 bytes, and each value at the start of its slot), so the array stays valid for as long as
/// the struct does; HIP reads from each pointer as many bytes as the kernel's parameter has.
#[derive(Debug)]
pub struct HipKernelParams {
    /// One slot per argument. A boxed slice: moving the struct does not move the slots, so
    /// the pointers below stay valid. Only reached through those pointers after `new`.
    _slots: Box<[u64]>,
    /// `pointers[i]` = address of `slots[i]`.
    pointers: Box<[*mut c_void]>,
}

impl HipKernelParams {
    /// Packs `values` in order.
    pub fn new(values: &[ArgValue]) -> Self {
        let mut slots: Box<[u64]> = values
            .iter()
            .map(|v| u64::from_ne_bytes(v.to_bytes()))
            .collect();
        // Every pointer derives from one raw base pointer, and the slots are never touched
        // through `_slots` again, so the pointers stay usable.
        let base = slots.as_mut_ptr();
        let pointers = (0..values.len())
            // `wrapping_add` stays inside the allocation (i < len), so it is an in-bounds
            // offset, and it needs no unsafe block.
            .map(|i| base.wrapping_add(i).cast::<c_void>())
            .collect();
        HipKernelParams {
            _slots: slots,
            pointers,
        }
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.pointers.len()
    }

    /// Whether there are no arguments.
    pub fn is_empty(&self) -> bool {
        self.pointers.is_empty()
    }

    /// The pointers, as HIP receives them (for inspection).
    pub fn pointers(&self) -> &[*mut c_void] {
        &self.pointers
    }

    /// The `void**` to pass as `kernelParams`: null when there are no arguments, else valid
    /// while `self` lives and is not moved out of its slots (it never is).
    pub fn as_kernel_params(&mut self) -> *mut *mut c_void {
        if self.pointers.is_empty() {
            std::ptr::null_mut()
        } else {
            self.pointers.as_mut_ptr()
        }
    }
}

/// One `zeKernelSetArgumentValue(kernel, index, size, pArgValue)` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeArgument {
    /// Argument index (its position in the kernel's parameter list).
    pub index: u32,
    /// `argSize`: the parameter's size, or the bytes of workgroup memory to reserve.
    pub size: usize,
    /// The bytes `pArgValue` points at (first `size` bytes used); `None` for a workgroup
    /// (local) memory argument, which Level Zero takes as a null `pArgValue` with the size to
    /// reserve.
    pub value: Option<[u8; 8]>,
}

impl ZeArgument {
    /// The bytes the driver reads: `size` bytes of `value`, or `None` for local memory.
    pub fn bytes(&self) -> Option<&[u8]> {
        self.value.as_ref().map(|v| &v[..self.size.min(8)])
    }
}

/// The `zeKernelSetArgumentValue` calls for a launch: one per value, in order (a buffer by
/// the address of its device pointer, so `size` 8 and the pointer's bytes; a scalar by value),
/// then, when `local_mem_bytes > 0`, one trailing workgroup-memory argument of that size — the
/// same convention the OpenCL backend uses for SPIR-V kernels that take their shared memory
/// as a last `Workgroup` pointer parameter.
pub fn ze_arguments(values: &[ArgValue], local_mem_bytes: u32) -> Vec<ZeArgument> {
    let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    let mut out: Vec<ZeArgument> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ZeArgument {
            index: index(i),
            size: v.size(),
            value: Some(v.to_bytes()),
        })
        .collect();
    if local_mem_bytes > 0 {
        out.push(ZeArgument {
            index: index(values.len()),
            size: local_mem_bytes as usize,
            value: None,
        });
    }
    out
}
