//! Argument packing for HIP (`kernelParams`) and Level Zero (`zeKernelSetArgumentValue`),
//! checked without a GPU: sizes, the pointer-to-value layout and the order.

use linrec_runtime::marshal::{ArgValue, HipKernelParams, ZeArgument, ze_arguments};
use linrec_runtime::{DeviceId, LaunchArg, RawBuffer, RuntimeError};

/// A launch's worth of arguments of every kind, as the axpy-like kernels take them.
fn sample() -> Vec<ArgValue> {
    vec![
        ArgValue::F32(-2.5),
        ArgValue::Pointer(0x7f00_dead_beef_0100),
        ArgValue::I32(-7),
        ArgValue::U32(0xFFFF_FFFE),
        ArgValue::I64(-(1 << 40)),
        ArgValue::Pointer(0x0000_0001_0000_0000),
    ]
}

/// The bytes the kernel parameter holds, written independently of `to_bytes`.
fn expected_bytes(v: ArgValue) -> Vec<u8> {
    match v {
        ArgValue::Pointer(p) => p.to_ne_bytes().to_vec(),
        ArgValue::I32(x) => x.to_ne_bytes().to_vec(),
        ArgValue::U32(x) => x.to_ne_bytes().to_vec(),
        ArgValue::I64(x) => x.to_ne_bytes().to_vec(),
        ArgValue::F32(x) => x.to_ne_bytes().to_vec(),
    }
}

#[test]
fn argument_sizes() {
    assert_eq!(ArgValue::Pointer(0).size(), 8, "devices are 64-bit");
    assert_eq!(ArgValue::I64(0).size(), 8);
    assert_eq!(ArgValue::I32(0).size(), 4);
    assert_eq!(ArgValue::U32(0).size(), 4);
    assert_eq!(ArgValue::F32(0.0).size(), 4);
    for v in sample() {
        let b = v.to_bytes();
        assert_eq!(&b[..v.size()], expected_bytes(v).as_slice(), "{v:?}");
        assert!(b[v.size()..].iter().all(|&x| x == 0), "zero padding: {v:?}");
    }
}

#[test]
fn hip_params_point_at_each_value_in_order() {
    let values = sample();
    let mut params = HipKernelParams::new(&values);
    assert_eq!(params.len(), values.len());
    let array = params.as_kernel_params();
    assert!(!array.is_null());
    let pointers = params.pointers().to_vec();
    assert_eq!(pointers.len(), values.len());
    for (i, (&p, &v)) in pointers.iter().zip(&values).enumerate() {
        // What hipModuleLaunchKernel does: read `kernelParams[i]`, then the parameter's
        // size in bytes from there.
        // SAFETY: `array` has `len` elements and `params` is alive.
        let from_array = unsafe { *array.add(i) };
        assert_eq!(from_array, p, "argument {i}");
        assert_eq!(p as usize % 8, 0, "argument {i} is 8-byte aligned");
        // SAFETY: each pointer addresses an 8-byte slot owned by `params`.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), v.size()) };
        assert_eq!(bytes, expected_bytes(v).as_slice(), "argument {i}: {v:?}");
    }
    // A pointer argument reads back as the device address, a float as its bits.
    // SAFETY: as above; slots are u64-aligned.
    unsafe {
        assert_eq!(*pointers[1].cast::<u64>(), 0x7f00_dead_beef_0100);
        assert_eq!(*pointers[0].cast::<f32>(), -2.5);
        assert_eq!(*pointers[2].cast::<i32>(), -7);
        assert_eq!(*pointers[4].cast::<i64>(), -(1 << 40));
    }
    // Distinct slots, in argument order.
    for w in pointers.windows(2) {
        assert_eq!(w[1] as usize - w[0] as usize, 8);
    }
}

#[test]
fn hip_params_survive_a_move() {
    let values = sample();
    let params = HipKernelParams::new(&values);
    let before = params.pointers().to_vec();
    let moved = Box::new(params);
    assert_eq!(moved.pointers(), before.as_slice(), "the slots do not move");
    // SAFETY: the slots are owned by `moved`.
    assert_eq!(unsafe { *before[3].cast::<u32>() }, 0xFFFF_FFFE);
}

#[test]
fn hip_params_without_arguments_are_null() {
    let mut params = HipKernelParams::new(&[]);
    assert!(params.is_empty());
    assert!(params.as_kernel_params().is_null());
}

#[test]
fn ze_arguments_by_index_size_and_value() {
    let values = sample();
    let args = ze_arguments(&values, 0);
    assert_eq!(args.len(), values.len(), "no local-memory argument");
    for (i, (a, &v)) in args.iter().zip(&values).enumerate() {
        assert_eq!(a.index as usize, i);
        assert_eq!(a.size, v.size());
        // A buffer goes by the address of its device pointer: 8 bytes holding the address.
        assert_eq!(a.bytes(), Some(expected_bytes(v).as_slice()), "{v:?}");
    }
    assert_eq!(
        args[1],
        ZeArgument {
            index: 1,
            size: 8,
            value: Some(0x7f00_dead_beef_0100u64.to_ne_bytes()),
        }
    );
}

#[test]
fn ze_local_memory_is_a_trailing_null_argument() {
    let values = [ArgValue::Pointer(0x1000), ArgValue::I32(64)];
    let args = ze_arguments(&values, 4096);
    assert_eq!(args.len(), 3);
    assert_eq!(
        args[2],
        ZeArgument {
            index: 2,
            size: 4096,
            value: None,
        }
    );
    assert_eq!(args[2].bytes(), None, "pArgValue is null for local memory");
    // Only local memory: index 0.
    assert_eq!(ze_arguments(&[], 16)[0].index, 0);
}

#[test]
fn buffers_resolve_through_their_backend() {
    let raw = RawBuffer::new(DeviceId::fresh(), 64, Box::new(()));
    let v = ArgValue::resolve(&LaunchArg::Buffer(&raw), |b| {
        assert_eq!(b.len_bytes(), 64);
        Ok(0xABCD_0000)
    })
    .expect("resolves");
    assert_eq!(v, ArgValue::Pointer(0xABCD_0000));
    // Scalars never ask the backend.
    let s = ArgValue::resolve(&LaunchArg::F32(1.5), |_| panic!("not a buffer")).expect("scalar");
    assert_eq!(s, ArgValue::F32(1.5));
    // A buffer the backend refuses stops the launch with its error.
    let err = ArgValue::resolve(&LaunchArg::Buffer(&raw), |_| {
        Err(RuntimeError::WrongDevice {
            what: "argument #0".into(),
            expected: "this device".into(),
            found: "another".into(),
        })
    })
    .expect_err("refused");
    assert!(matches!(err, RuntimeError::WrongDevice { .. }), "{err}");
}
