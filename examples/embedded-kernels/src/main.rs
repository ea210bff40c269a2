//! Loads simple_gla's forward kernel from the artifacts build.rs embedded, runs it on an OpenCL
//! device that takes SPIR-V (Intel's CPU runtime in CI) and checks it against the f64
//! reference. No LLVM, no artifact folder and no disk cache at run time: what a deployed
//! program does. Without an OpenCL device it stops after loading the kernel.

use std::error::Error;
use std::process::ExitCode;

use linrec::reference::{self, Rng, Tensor};
use linrec::spec::launch::{ElementType, KernelConfig};
use linrec::spec::{Dims, Role, RunOptions};
use linrec_runtime::op::{self, ForwardArgs};
use linrec_runtime::{Device, DeviceKind, EmbeddedArtifacts, KernelRequest, Kernels};

/// The kernels build.rs embedded.
static KERNELS: EmbeddedArtifacts = linrec_runtime::include_artifacts!();

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let spec = linrec::catalogue::lookup("simple_gla")?.spec();
    // Embedded artifacts only: a kernel they lack is an error naming the `linrec compile`
    // command, never a compile (this build has no compiler) or a stale cache entry.
    let kernels = Kernels::builder()
        .embedded(&KERNELS)
        .no_disk_cache()
        .build()?;
    assert!(!kernels.can_compile(), "built without `jit`: no compiler");
    let config = KernelConfig {
        dtype: ElementType::F32,
        key_dim: 16,
        value_dim: 16,
        chunk: 64,
        initial_state: true,
        final_state: true,
        varlen: false,
    };
    let loaded = kernels.get(&KernelRequest::forward(&spec, "spirv", config))?;
    let kernel = &loaded.kernel;
    println!("kernel   {} ({})", kernel.info.entry, loaded.source);

    let device = match Device::new(DeviceKind::OpenCl) {
        Ok(device) => device,
        Err(e) => {
            println!("no OpenCL device ({e}); the kernel loaded, there is nothing to run it on");
            return Ok(());
        }
    };
    println!("device   {}", device.info().label());

    let (b, t, h) = (2, 100, 2);
    let dims = Dims::new(b, t, h, config.key_dim, config.value_dim);
    let mut inputs = reference::random_inputs(&spec, &dims, 1);
    let mut rng = Rng::new(2);
    inputs.h0 = Some(Tensor::from_fn(&dims.state_shape(b), || rng.normal()));
    // The kernel reads f32: give the reference the same rounded values.
    let f32s = |t: &mut Tensor| -> Vec<f32> {
        t.data.iter_mut().for_each(|x| *x = f64::from(*x as f32));
        t.data.iter().map(|&x| x as f32).collect()
    };
    let upload = |t: &mut Tensor| device.upload(&f32s(t), &t.shape.clone());
    let q = upload(&mut inputs.q)?;
    let k = upload(&mut inputs.k)?;
    let v = upload(&mut inputs.v)?;
    let g = upload(inputs.g.as_mut().ok_or("simple_gla has a gate")?)?;
    let h0 = upload(inputs.h0.as_mut().ok_or("h0 was set")?)?;
    let out = op::forward(
        &device,
        &kernel.info,
        &kernel.binary,
        &ForwardArgs {
            inputs: &[
                (Role::Query, &q),
                (Role::Key, &k),
                (Role::Value, &v),
                (Role::Gate, &g),
            ],
            initial_state: Some(&h0),
            cu_seqlens: None,
            scale: spec.scale.resolve(config.key_dim) as f32,
        },
    )?;
    let o: Vec<f32> = device.download(&out.o)?;
    let ht: Vec<f32> = device.download(out.final_state.as_ref().ok_or("no final state")?)?;

    let want = reference::forward(
        &spec,
        &inputs,
        &RunOptions {
            output_final_state: true,
            ..Default::default()
        },
    )?;
    let to_tensor = |shape: Vec<usize>, data: Vec<f32>| {
        Tensor::from_vec(&shape, data.into_iter().map(f64::from).collect())
            .ok_or("a downloaded buffer has the wrong size")
    };
    let ro = to_tensor(dims.output_shape(), o)?.rel_error(&want.o);
    let rh = to_tensor(dims.state_shape(b), ht)?.rel_error(want.ht.as_ref().ok_or("no ht")?);
    println!("check    ‖o − ref‖/‖ref‖ = {ro:.2e}, ‖ht − ref‖/‖ref‖ = {rh:.2e} (< 0.005)");
    if ro < 0.005 && rh < 0.005 {
        println!("PASS     the embedded kernel matches the f64 reference");
        Ok(())
    } else {
        Err("the embedded kernel disagrees with the f64 reference".into())
    }
}
