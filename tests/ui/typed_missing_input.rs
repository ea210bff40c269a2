// The typed inputs have one field per declared input: leaving one out does not compile.
use linrec::catalogue::GatedDeltaNetInputs;

fn main() {
    let _inputs = GatedDeltaNetInputs { q: 0, k: 0, v: 0, g: 0 };
}
