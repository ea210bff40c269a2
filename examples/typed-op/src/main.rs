//! A variant linrec does not ship, declared and run on whatever device is there.
//!
//! `BetaRetention` is gated retention (Mamba2's data-dependent scalar decay) whose write is
//! scaled by a per-token strength β, with q and k L2-normalised — DeltaNet's write without its
//! delta rule. The program declares it, builds random inputs, opens a device with
//! `DeviceKind::Auto` (CUDA, HIP, Level Zero, else OpenCL — Intel's CPU runtime in CI), runs
//! `BetaRetention::forward`, and checks the output and the final state against linrec's f64
//! reference. It prints the relative errors and exits non-zero when either is too large.

use std::error::Error;
use std::process::ExitCode;

use linrec::host;
use linrec::ops::ForwardOptions;
use linrec::reference::{self, Rng, Tensor};
use linrec::runtime::{Device, DeviceBuffer, DeviceKind};
use linrec::spec::launch::ElementType;
use linrec::spec::{Dims, Role, RunOptions};

linrec::recurrence! {
    /// Gated retention with a write strength: a data-dependent scalar decay, β scaling each
    /// token's write, q and k L2-normalised in the kernel.
    pub BetaRetention {
        inputs { q: [K], k: [K], v: [V], g: log_gate, beta: scalar }
        state S: [K, V];
        l2norm(q, k);
        S = exp(g) * S + beta * k * v^T;
        o = S^T * q * scale;
    }
}

/// fla's acceptance criterion for a bf16 forward: ‖out − ref‖ / ‖ref‖ below this.
const TOLERANCE: f64 = 0.005;

fn run() -> Result<bool, Box<dyn Error>> {
    let spec = BetaRetention::spec();
    println!("variant  {} — {}", spec.name, spec.doc);
    println!("         {}", spec.recurrence_text());

    // B=2, T=100, H=2 query/key heads shared by HV=4 value heads (GVA), K=V=32, bf16.
    let dims = Dims::new(2, 100, 2, 32, 32).with_value_heads(4);
    let dtype = ElementType::Bf16;
    let mut inputs = reference::random_inputs(spec, &dims, 42);
    let mut rng = Rng::new(7);
    inputs.h0 = Some(Tensor::from_fn(&dims.state_shape(dims.batch), || {
        rng.normal()
    }));

    let device = Device::new(DeviceKind::Auto)?;
    println!("device   {}", device.info().label());

    // Upload every declared input by name: q, k, v in bf16, the gate and β in f32. Rounding
    // first means the reference sees exactly the values the kernel reads.
    let buffers = BetaRetentionInputs::try_from_fn(|name, role| {
        let elem = match role {
            Role::Query | Role::Key | Role::Value => dtype,
            _ => ElementType::F32,
        };
        let t = tensor_mut(&mut inputs, role).ok_or(format!("no random `{name}`"))?;
        host::round_to(elem, &mut t.data);
        let bytes = host::to_bytes(elem, &t.data);
        device
            .upload_bytes(linrec::runtime::op::dtype(elem), &t.shape, &bytes)
            .map_err(|e| format!("uploading `{name}`: {e}"))
    })?;
    let h0 = inputs.h0.as_mut().ok_or("h0 was set above")?;
    host::round_to(ElementType::F32, &mut h0.data);
    let h0_buf = device.upload(
        &h0.data.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        &h0.shape,
    )?;

    // The typed op: one field per declared input, so a missing one would not compile.
    let options = ForwardOptions::new()
        .initial_state(&h0_buf)
        .output_final_state(true);
    let out = BetaRetention::forward(&device, &buffers, &options)?;
    println!(
        "kernel   {} for {} ({})",
        linrec::runtime::kernels::config_tag(out.saved.config()),
        out.saved.target(),
        out.kernel_source
    );

    let o = download(&device, &out.o, dtype)?;
    let ht = match &out.final_state {
        Some(ht) => download(&device, ht, ElementType::F32)?,
        None => return Err("the final state was asked for".into()),
    };
    let want = reference::forward(
        spec,
        &inputs,
        &RunOptions {
            output_final_state: true,
            ..Default::default()
        },
    )?;
    let ro = o.rel_error(&want.o);
    let rh = want.ht.as_ref().map_or(f64::INFINITY, |w| ht.rel_error(w));
    println!("check    ‖o − ref‖/‖ref‖  = {ro:.2e}   (< {TOLERANCE})");
    println!("check    ‖ht − ref‖/‖ref‖ = {rh:.2e}   (< {TOLERANCE})");
    Ok(ro < TOLERANCE && rh < TOLERANCE)
}

fn tensor_mut(inputs: &mut reference::Inputs, role: Role) -> Option<&mut Tensor> {
    match role {
        Role::Query => Some(&mut inputs.q),
        Role::Key => Some(&mut inputs.k),
        Role::Value => Some(&mut inputs.v),
        Role::Gate => inputs.g.as_mut(),
        Role::Beta => inputs.beta.as_mut(),
        Role::Bonus => inputs.u.as_mut(),
        Role::DecayRate => inputs.decay_rate.as_mut(),
    }
}

fn download(
    device: &Device,
    buf: &DeviceBuffer,
    dtype: ElementType,
) -> Result<Tensor, Box<dyn Error>> {
    debug_assert_eq!(buf.dtype(), linrec::runtime::op::dtype(dtype));
    let values = host::from_bytes(dtype, &device.download_bytes(buf)?);
    Ok(Tensor::from_vec(buf.shape(), values).ok_or("downloaded buffer has the wrong size")?)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => {
            println!("PASS     beta_retention matches the f64 reference");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("FAIL     beta_retention disagrees with the f64 reference");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
