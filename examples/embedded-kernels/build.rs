//! Embeds the artifact folder into the binary. A real crate names its own folder, written by
//! e.g. `linrec compile simple_gla --target sm_90 spirv --dtype f32 --head-dims 16 --out kernels`;
//! this example borrows the runtime's test fixture (simple_gla, SPIR-V, f32, K = V = 16, h0 and
//! final state).

fn main() {
    // Checks the folder (manifest version, every binary's SHA-256) so a broken folder fails
    // the build, writes $OUT_DIR/linrec_artifacts.rs and tells cargo when to rerun.
    if let Err(e) = linrec_runtime::embed::artifacts("../../runtime/tests/fixtures/artifacts") {
        panic!("{e}");
    }
}
