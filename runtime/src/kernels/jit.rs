//! [`JitCompiler`]: linrec-compiler in process (feature `jit`; links LLVM/MLIR).

use linrec_compiler::{CompileOptions, Target};

use super::{CompileFailure, Compiled, Direction, KernelCompiler, KernelRequest};

/// Compiles with linrec-compiler in this process. Its fingerprint is
/// [`linrec_compiler::fingerprint`] (crate and LLVM versions), plus the options when they are
/// not the defaults (e.g. `LINREC_TENSOR_CORES=0`), so kernels compiled with other options are
/// cached apart.
///
/// `LINREC_DUMP_DIR` dumps the stages of the kernels it compiles — not of those the provider
/// finds in a cache (use `linrec run --no-cache`, or [`super::KernelsBuilder::no_disk_cache`]).
///
/// ```no_run
/// use std::sync::Arc;
/// use linrec_runtime::kernels::{JitCompiler, Kernels};
/// let kernels = Kernels::builder().compiler(Arc::new(JitCompiler::new())).build()?;
/// # Ok::<(), linrec_runtime::kernels::KernelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct JitCompiler {
    options: CompileOptions,
    fingerprint: String,
}

impl JitCompiler {
    /// The compiler with the options of the environment (`LINREC_DUMP_DIR`,
    /// `LINREC_TENSOR_CORES`, `LINREC_FORWARD`), without AMD's second code generation for the
    /// assembly text, which a launch never needs.
    pub fn new() -> Self {
        Self::with_options(CompileOptions::from_env().with_amd_assembly(false))
    }

    /// The compiler with explicit options, e.g. split forwards (whose chunk states a backward
    /// can read instead of recomputing them) for one provider, whatever `LINREC_FORWARD` says
    /// for the process:
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use linrec_compiler::{CompileOptions, ForwardForm};
    /// use linrec_runtime::kernels::{JitCompiler, Kernels};
    /// let options = CompileOptions::from_env()
    ///     .with_forward(ForwardForm::Split)
    ///     .with_amd_assembly(false);
    /// let kernels = Kernels::builder()
    ///     .compiler(Arc::new(JitCompiler::with_options(options)))
    ///     .build()?;
    /// # Ok::<(), linrec_runtime::kernels::KernelError>(())
    /// ```
    pub fn with_options(options: CompileOptions) -> Self {
        // The dump folder does not change the kernel; everything else may.
        let mut keyed = options.clone();
        keyed.dump_dir = None;
        let baseline = CompileOptions::default().with_amd_assembly(false);
        let mut fingerprint = linrec_compiler::fingerprint();
        if keyed != baseline {
            fingerprint.push_str(&format!("; {keyed:?}"));
        }
        JitCompiler {
            options,
            fingerprint,
        }
    }
}

impl Default for JitCompiler {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelCompiler for JitCompiler {
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn compile(&self, request: &KernelRequest<'_>) -> Result<Compiled, CompileFailure> {
        let target: Target = request.target.parse()?;
        let (spec, config, options) = (request.spec, &request.config, &self.options);
        let artifact = match request.direction {
            Direction::Forward => linrec_compiler::compile_with(spec, target, config, options)?,
            Direction::Backward => {
                linrec_compiler::compile_backward_with(spec, target, config, options)?
            }
        };
        Ok(Compiled {
            info: artifact.info,
            binary: artifact.binary,
            time: artifact.compile_time,
        })
    }
}
