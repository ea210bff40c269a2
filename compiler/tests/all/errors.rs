//! Error paths of `compile`: forms not derived yet, configs outside what the kernels support —
//! each a typed error whose message names the form or the field and what is allowed.

use linrec_compiler::lower::Target;
use linrec_compiler::schedule::ScheduleError;
use linrec_compiler::{CompileError, compile};

use crate::specs;

#[test]
fn a_diagonal_decay_is_not_yet_supported() {
    let err = compile(&specs::gla(), Target::Spirv, &specs::config()).expect_err("diagonal");
    assert!(matches!(err, CompileError::Plan(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("not yet supported: the diagonal decay"),
        "{err}"
    );
    let err = compile(&specs::delta_net(), Target::Sm90, &specs::config()).expect_err("delta");
    assert!(
        err.to_string()
            .contains("not yet supported: the delta-rule transition"),
        "{err}"
    );
}

#[test]
fn configs_outside_the_supported_range_name_the_field() {
    let cases = [
        (300, 64, 64, "key_dim = 300", "1..=256"),
        (64, 0, 64, "value_dim = 0", "1..=256"),
        (64, 257, 64, "value_dim = 257", "1..=256"),
        (64, 64, 48, "chunk = 48", "16, 32 or 64"),
    ];
    for (k, v, c, field, allowed) in cases {
        let mut config = specs::config();
        config.key_dim = k;
        config.value_dim = v;
        config.chunk = c;
        let err = compile(&specs::simple_gla(), Target::Sm90, &config).expect_err("bad config");
        assert!(
            matches!(err, CompileError::Schedule(ScheduleError::Config { .. })),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(field) && msg.contains(allowed), "{msg}");
    }
}

#[test]
fn an_invalid_spec_is_a_plan_error() {
    let mut s = specs::simple_gla();
    s.inputs.pop();
    let err = compile(&s, Target::Spirv, &specs::config()).expect_err("invalid");
    assert!(matches!(err, CompileError::Plan(_)), "{err:?}");
}
