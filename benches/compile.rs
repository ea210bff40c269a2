//! In-process compile time per kernel and target (CPU; no GPU involved): plan → schedule →
//! emit → lower for each supported built-in. `cargo bench --bench compile`.
//!
//! DESIGN §7's bar: all kernels of a variant for one target in under 1 s cold on 2 cores.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use linrec::catalogue::BUILTINS;
use linrec::spec::launch::{ElementType, KernelConfig};
use linrec_compiler::{Target, compile};

fn bench(c: &mut Criterion) {
    let config = KernelConfig {
        dtype: ElementType::Bf16,
        key_dim: 128,
        value_dim: 128,
        chunk: 64,
        initial_state: true,
        final_state: true,
        varlen: false,
    };
    let mut group = c.benchmark_group("compile_forward");
    group.sample_size(10);
    for builtin in BUILTINS {
        let spec = builtin.spec();
        if linrec_compiler::plan::forward(&spec).is_err() {
            continue; // a form the compiler does not derive yet
        }
        for target in Target::ALL {
            group.bench_function(format!("{}/{}", spec.name, target.name()), |b| {
                b.iter(|| compile(&spec, target, &config).expect("supported variant compiles"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
