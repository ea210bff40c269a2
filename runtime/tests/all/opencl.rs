//! The shared kernel checks (`kernels.rs`) on an OpenCL device that takes SPIR-V: Intel's
//! CPU runtime in CI. Without one they skip with a note, or fail under `CI=true`.

use crate::common::{kernel_checks, opencl_device};

kernel_checks!(
    opencl_device;
    device_info,
    axpy_is_exact_and_leaves_the_tail_alone,
    block_sum_reduces_each_work_group,
    iota_writes_integers,
    module_cache_loads_once,
    bad_modules_and_names_are_errors,
    driver_checks_the_argument_count,
    fills_and_empty_tensors,
);
