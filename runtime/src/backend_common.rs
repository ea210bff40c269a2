//! What the four backends (cuda.rs, hip.rs, level_zero.rs, opencl.rs) share above their
//! drivers: resolving handles to their payloads, the errors every backend words alike, and
//! the steps of loading a vendor library that HIP and Level Zero take the same way.
//!
//! Kept in one place so that a message the tests (and users) read cannot drift between
//! backends.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::backend::{
    Backend, BackendKind, DeviceId, KernelHandle, LaunchArg, LaunchConfig, ModuleHandle, RawBuffer,
    TimerEvent, check_same_device,
};
use crate::dylib::{self, Opened};
use crate::error::{Result, RuntimeError};
use crate::marshal::ArgValue;

/// A handle that carries its device's id and a backend payload, so that
/// [`payload`] can check all four kinds of handle the same way.
pub(crate) trait DeviceHandle {
    /// The device the handle was made on.
    fn handle_device(&self) -> DeviceId;
    /// The backend payload, if it has type `T`.
    fn handle_payload<T: 'static>(&self) -> Option<&T>;
}

// The four handle types have the same two inherent methods but no common trait in the
// public API; this private one lets `payload` take any of them without widening that API.
macro_rules! device_handle {
    ($($ty:ty),*) => {$(
        impl DeviceHandle for $ty {
            fn handle_device(&self) -> DeviceId {
                self.device_id()
            }
            fn handle_payload<T: 'static>(&self) -> Option<&T> {
                self.downcast::<T>()
            }
        }
    )*};
}

device_handle!(RawBuffer, ModuleHandle, KernelHandle, TimerEvent);

/// The backend's own object behind `handle`. A handle of another device is refused by id
/// first (before any driver sees it); one of the same id but another backend's type (which
/// only a foreign `Backend` implementation could make) is refused as "another backend".
pub(crate) fn payload<'h, T: 'static>(
    backend: &dyn Backend,
    handle: &'h impl DeviceHandle,
    what: impl Fn() -> String,
) -> Result<&'h T> {
    check_same_device(backend, &what, handle.handle_device())?;
    handle
        .handle_payload::<T>()
        .ok_or_else(|| RuntimeError::WrongDevice {
            what: what(),
            expected: backend.info().label(),
            found: "another backend".into(),
        })
}

/// How a launch names argument `i` of kernel `kernel` in messages.
pub(crate) fn arg_what(i: usize, kernel: &str) -> String {
    format!("argument #{i} of `{kernel}`")
}

/// Every argument as the bits the driver copies, buffers through `address` (which checks
/// that each is this backend's). All are resolved before the driver is touched, so a bad
/// argument launches nothing.
pub(crate) fn resolve_args(
    kernel: &str,
    args: &[LaunchArg<'_>],
    mut address: impl FnMut(&RawBuffer, &str) -> Result<u64>,
) -> Result<Vec<ArgValue>> {
    args.iter()
        .enumerate()
        .map(|(i, arg)| ArgValue::resolve(arg, |raw| address(raw, &arg_what(i, kernel))))
        .collect()
}

/// The argument-count check of the SPIR-V backends, whose drivers report a kernel's
/// parameter count: `shared_mem_bytes > 0` adds one trailing `__local` parameter (see
/// [`LaunchConfig`]), which the caller does not pass and so is not counted in the message.
pub(crate) fn check_arg_count(
    kernel: &str,
    num_args: u32,
    found: usize,
    config: &LaunchConfig,
) -> Result<()> {
    let local_arg = usize::from(config.shared_mem_bytes > 0);
    let expected = num_args as usize;
    if found + local_arg != expected {
        return Err(RuntimeError::ArgCount {
            kernel: kernel.to_owned(),
            expected: expected.saturating_sub(local_arg),
            found,
        });
    }
    Ok(())
}

/// A kernel name no driver can take (C strings end at the NUL); refused before the FFI
/// layer, which would panic or truncate it.
pub(crate) fn nul_in_kernel_name(name: &str, available: Option<String>) -> RuntimeError {
    RuntimeError::KernelNotFound {
        name: name.escape_debug().to_string(),
        detail: "the name contains a NUL byte".into(),
        available,
    }
}

/// Entry `ordinal` of a backend's device list, or the error that says how many there are.
pub(crate) fn take_ordinal<T>(
    backend: BackendKind,
    mut items: Vec<T>,
    ordinal: usize,
) -> Result<T> {
    let count = items.len();
    if ordinal >= count {
        return Err(RuntimeError::DeviceOrdinal {
            backend,
            ordinal,
            count,
        });
    }
    Ok(items.swap_remove(ordinal))
}

/// Locks a mutex around driver objects, ignoring poisoning: the guarded handles hold no Rust
/// invariants that a panic could break, and a poisoned lock must not turn into a panic here.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a runtime-loaded vendor library (HIP, Level Zero) is unusable; each backend keeps its
/// first outcome so later calls report the same thing without loading again.
#[derive(Clone)]
pub(crate) enum LoadFailure {
    /// No library, or not the library we need.
    NotFound(String),
    /// The library loaded but its initialisation found no usable device.
    NoDevice(String),
}

impl LoadFailure {
    /// The error for `backend`, with the hint that fits each case.
    pub(crate) fn to_error(
        &self,
        backend: BackendKind,
        hint: &'static str,
        no_device_hint: &'static str,
    ) -> RuntimeError {
        match self {
            LoadFailure::NotFound(detail) => RuntimeError::DriverNotFound {
                backend,
                detail: detail.clone(),
                hint,
            },
            LoadFailure::NoDevice(detail) => RuntimeError::NoDevice {
                backend,
                detail: detail.clone(),
                hint: no_device_hint,
            },
        }
    }
}

/// Opens the library named by `env`, else the first of `defaults` that loads. The message
/// says what was tried: the override's `dlerror` text (`what` names the library), or the list
/// searched (`searched` names it).
pub(crate) fn open_library(
    env: &str,
    defaults: impl FnOnce() -> Vec<String>,
    what: &str,
    searched: &str,
) -> std::result::Result<Opened, LoadFailure> {
    let candidates = dylib::candidates(env, defaults);
    dylib::open_first(&candidates).map_err(|failures| {
        LoadFailure::NotFound(if std::env::var_os(env).is_some() {
            format!(
                "could not load {what} named by {env} ({})",
                failures.join("; ")
            )
        } else {
            format!(
                "could not load {searched} (searched {})",
                candidates.join(", ")
            )
        })
    })
}
