//! `emit::mma`: the tensor-core matmul building block, in standalone test kernels.
//!
//! Each kernel copies A and B (flat bf16/f16 buffers, static shapes for the bare-pointer ABI)
//! into padded workgroup tiles (`{llvm.align = 16}`), runs [`Matmul`] and writes C (f32) back,
//! through a workgroup f32 tile or straight from the fragments (the epilogue callback). The
//! kernels are lowered for sm_80 and sm_90; the PTX must hold `ldmatrix` and the bf16 (f16)
//! `mma.sync`, and `ptxas -v` must accept it without spills (skipped with a note when ptxas is
//! missing, a failure under `CI=true`; `eval "$(bash scripts/setup.sh --print-env)"` provides it).
//!
//! Numbers are checked on a GPU by `runtime/examples/mma_check.rs`: with
//! `LINREC_MMA_PTX_DIR=<dir>` set, `all_cases_lower_and_assemble` also writes every kernel's PTX
//! and a manifest there for it.

use std::{
    io::Write as _,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use linrec_compiler::{
    emit::mma::{Fragment, Init, Matmul, MmaLayout, MmaType, Operand, SmemTile},
    lower::{Target, lower},
};
use melior::{
    Context,
    dialect::DialectRegistry,
    ir::{
        Attribute, Block, BlockLike, Identifier, Location, Module, Region, RegionLike, Type, Value,
        attribute::{DenseI32ArrayAttribute, IntegerAttribute, StringAttribute, TypeAttribute},
        operation::{OperationBuilder, OperationLike, OperationMutLike},
        r#type::{FunctionType, MemRefType},
    },
    utility::register_all_dialects,
};

/// Where C goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Through a workgroup f32 tile, `C = A·B`.
    Overwrite,
    /// Through a workgroup f32 tile loaded from C first, `C = C + A·B`.
    Accumulate,
    /// From the fragments straight to global memory (epilogue callback), `C = A·B`.
    Callback,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Overwrite => "overwrite",
            Mode::Accumulate => "accumulate",
            Mode::Callback => "callback",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    m: i64,
    n: i64,
    k: i64,
    ta: bool,
    tb: bool,
    dtype: MmaType,
    warps: u32,
    mode: Mode,
    /// sm_90a: A and B stored as core matrices, issued as wgmma ([`Matmul::wgmma`]).
    wgmma: bool,
}

impl Case {
    const fn new(m: i64, n: i64, k: i64, ta: bool, tb: bool) -> Self {
        Case {
            m,
            n,
            k,
            ta,
            tb,
            dtype: MmaType::Bf16,
            warps: 4,
            mode: Mode::Overwrite,
            wgmma: false,
        }
    }

    /// The same case as wgmma on core-matrix tiles, two warpgroups.
    const fn wgmma(self) -> Self {
        Case {
            wgmma: true,
            warps: 8,
            ..self
        }
    }

    fn name(&self) -> String {
        let t = |x: bool| if x { 't' } else { 'n' };
        format!(
            "{}_{}_{}x{}x{}_{}{}_w{}_{}",
            if self.wgmma { "wgmma" } else { "mma" },
            self.dtype.ptx_name(),
            self.m,
            self.n,
            self.k,
            t(self.ta),
            t(self.tb),
            self.warps,
            self.mode.name()
        )
    }

    /// Stored shape of A (rows, cols).
    fn a_shape(&self) -> (i64, i64) {
        if self.ta {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }

    /// Stored shape of B (rows, cols).
    fn b_shape(&self) -> (i64, i64) {
        if self.tb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }
}

/// The cases: the brief's (64, 64, 64) × all (ta, tb) and (64, 32, 128), f16, accumulation,
/// the callback epilogue with two passes per warp, idle warps, and an odd fragment count
/// (a `.x2` B load beside `.x4` ones).
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        v.push(Case::new(64, 64, 64, ta, tb));
        v.push(Case::new(64, 32, 128, ta, tb));
    }
    v.push(Case {
        dtype: MmaType::F16,
        ..Case::new(64, 64, 64, false, true)
    });
    v.push(Case {
        dtype: MmaType::F16,
        mode: Mode::Accumulate,
        ..Case::new(64, 64, 64, true, false)
    });
    v.push(Case {
        mode: Mode::Accumulate,
        ..Case::new(64, 64, 64, false, false)
    });
    v.push(Case {
        warps: 2,
        mode: Mode::Callback,
        ..Case::new(128, 128, 16, false, true)
    });
    v.push(Case::new(16, 8, 32, true, false));
    v.push(Case {
        mode: Mode::Callback,
        ..Case::new(48, 24, 32, false, false)
    });
    v
}

/// The wgmma cases (sm_90a): every transpose pair, a 128-row result (a unit per warpgroup),
/// f16 with accumulation, the callback epilogue, 128 columns on one warpgroup (two units).
fn wgmma_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        v.push(Case::new(64, 64, 64, ta, tb).wgmma());
    }
    v.push(Case::new(128, 128, 64, true, false).wgmma());
    v.push(
        Case {
            dtype: MmaType::F16,
            mode: Mode::Accumulate,
            ..Case::new(64, 48, 32, false, true)
        }
        .wgmma(),
    );
    v.push(Case {
        warps: 4,
        mode: Mode::Callback,
        ..Case::new(64, 256, 16, false, false).wgmma()
    });
    v
}

// ---- building the test kernel ------------------------------------------------------------

fn context() -> Context {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let ctx = Context::new_with_registry(&registry, false);
    ctx.load_all_available_dialects();
    ctx
}

struct K<'c> {
    ctx: &'c Context,
    loc: Location<'c>,
}

impl<'c> K<'c> {
    fn op(&self, name: &str) -> OperationBuilder<'c> {
        OperationBuilder::new(name, self.loc)
    }

    fn push<'a>(&self, blk: &'a Block<'c>, op: OperationBuilder<'c>) -> Value<'c, 'a> {
        let op = blk.append_operation(op.build().expect("test op builds"));
        op.result(0).expect("op has a result").into()
    }

    fn push0(&self, blk: &Block<'c>, op: OperationBuilder<'c>) {
        blk.append_operation(op.build().expect("test op builds"));
    }

    fn ci<'a>(&self, blk: &'a Block<'c>, n: i64) -> Value<'c, 'a> {
        let v = IntegerAttribute::new(Type::index(self.ctx), n).into();
        self.push(
            blk,
            self.op("arith.constant")
                .add_attributes(&[(Identifier::new(self.ctx, "value"), v)])
                .add_results(&[Type::index(self.ctx)]),
        )
    }

    fn bin<'a>(
        &self,
        blk: &'a Block<'c>,
        name: &str,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> Value<'c, 'a> {
        self.push(
            blk,
            self.op(name)
                .add_operands(&[x, y])
                .enable_result_type_inference(),
        )
    }

    fn memref(&self, elem: Type<'c>, len: i64, workgroup: bool) -> Type<'c> {
        let space = workgroup.then(|| {
            Attribute::parse(self.ctx, "#gpu.address_space<workgroup>").expect("address space")
        });
        MemRefType::new(elem, &[len], None, space).into()
    }

    /// `for i in tid..rows·cols step threads { dst[off(i)] = src[off(i)] }` between a dense
    /// global matrix and a padded workgroup one (`to_smem` picks the direction).
    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        blk: &Block<'c>,
        tid: Value<'c, '_>,
        threads: i64,
        global: Value<'c, '_>,
        smem: Value<'c, '_>,
        (rows, cols, stride): (i64, i64, i64),
        to_smem: bool,
        core_rows: Option<i64>,
    ) {
        let body = Block::new(&[(Type::index(self.ctx), self.loc)]);
        {
            let i: Value = body.argument(0).expect("iv").into();
            let c_cols = self.ci(&body, cols);
            let r = self.bin(&body, "arith.divui", i, c_cols);
            let c = self.bin(&body, "arith.remui", i, c_cols);
            let j = match core_rows {
                // ⌊c/8⌋·8·rows + 8·r + c mod 8.
                Some(rows) => {
                    let eight = self.ci(&body, 8);
                    let block = self.bin(&body, "arith.divui", c, eight);
                    let lane = self.bin(&body, "arith.remui", c, eight);
                    let slab = self.ci(&body, 8 * rows);
                    let at = self.bin(&body, "arith.muli", block, slab);
                    let r8 = self.bin(&body, "arith.muli", r, eight);
                    let at = self.bin(&body, "arith.addi", at, r8);
                    self.bin(&body, "arith.addi", at, lane)
                }
                None => {
                    let c_stride = self.ci(&body, stride);
                    let rs = self.bin(&body, "arith.muli", r, c_stride);
                    self.bin(&body, "arith.addi", rs, c)
                }
            };
            let (src, si, dst, di) = if to_smem {
                (global, i, smem, j)
            } else {
                (smem, j, global, i)
            };
            let x = self.push(
                &body,
                self.op("memref.load")
                    .add_operands(&[src, si])
                    .enable_result_type_inference(),
            );
            self.push0(&body, self.op("memref.store").add_operands(&[x, dst, di]));
            self.push0(&body, self.op("scf.yield"));
        }
        let region = Region::new();
        region.append_block(body);
        let ub = self.ci(blk, rows * cols);
        let step = self.ci(blk, threads);
        self.push0(
            blk,
            self.op("scf.for")
                .add_operands(&[tid, ub, step])
                .add_regions([region]),
        );
    }
}

/// Row strides of the workgroup tiles: 16 bytes of padding per bf16 row (ldmatrix without bank
/// conflicts), 16 bytes per f32 row.
fn pad16(cols: i64) -> i64 {
    cols + 8
}
fn pad32(cols: i64) -> i64 {
    cols + 4
}

/// The MLIR module (text) of `case`'s test kernel, named [`Case::name`].
fn build(case: &Case) -> String {
    let ctx = context();
    let k = K {
        ctx: &ctx,
        loc: Location::unknown(&ctx),
    };
    let elem = case.dtype.mlir_type(&ctx);
    let f32t = Type::float32(&ctx);
    let threads = i64::from(case.warps) * 32;
    let (ar, ac) = case.a_shape();
    let (br, bc) = case.b_shape();
    let (sa, sb, sc) = (pad16(ac), pad16(bc), pad32(case.n));
    let smem_c = case.mode != Mode::Callback;
    // Core matrices: each 8-column block a `rows × 8` array (rows are multiples of 16 here).
    let (sa, sb) = if case.wgmma { (ac, bc) } else { (sa, sb) };
    let core = |rows: i64| case.wgmma.then_some(rows);

    let args = [
        k.memref(elem, ar * ac, false),
        k.memref(elem, br * bc, false),
        k.memref(f32t, case.m * case.n, false),
    ];
    let mut attribs = vec![k.memref(elem, ar * sa, true), k.memref(elem, br * sb, true)];
    if smem_c {
        attribs.push(k.memref(f32t, case.m * sc, true));
    }
    let entry = Block::new(
        &args
            .iter()
            .chain(&attribs)
            .map(|t| (*t, k.loc))
            .collect::<Vec<_>>(),
    );
    {
        let arg = |i: usize| -> Value { entry.argument(i).expect("argument").into() };
        let (ga, gb, gc, wa, wb) = (arg(0), arg(1), arg(2), arg(3), arg(4));
        let tid = k.push(
            &entry,
            k.op("gpu.thread_id")
                .add_attributes(&[(
                    Identifier::new(&ctx, "dimension"),
                    Attribute::parse(&ctx, "#gpu<dim x>").expect("dim"),
                )])
                .add_results(&[Type::index(&ctx)]),
        );
        k.copy(&entry, tid, threads, ga, wa, (ar, ac, sa), true, core(ar));
        k.copy(&entry, tid, threads, gb, wb, (br, bc, sb), true, core(br));
        if case.mode == Mode::Accumulate {
            k.copy(
                &entry,
                tid,
                threads,
                gc,
                arg(5),
                (case.m, case.n, sc),
                true,
                None,
            );
        }
        k.push0(&entry, k.op("gpu.barrier"));

        let mm = Matmul {
            m: case.m,
            n: case.n,
            k: case.k,
            dtype: case.dtype,
            num_warps: case.warps,
            thread_id: tid,
            a: Operand {
                tile: SmemTile {
                    memref: wa,
                    offset: 0,
                    row_stride: if case.wgmma { 8 } else { sa },
                    col_step: if case.wgmma { ar } else { 1 },
                    swizzled: false,
                },
                transposed: case.ta,
            },
            b: Operand {
                tile: SmemTile {
                    memref: wb,
                    offset: 0,
                    row_stride: if case.wgmma { 8 } else { sb },
                    col_step: if case.wgmma { br } else { 1 },
                    swizzled: false,
                },
                transposed: case.tb,
            },
            wgmma: case.wgmma,
        };
        if smem_c {
            let c = SmemTile {
                memref: arg(5),
                offset: 0,
                row_stride: sc,
                col_step: 1,
                swizzled: false,
            };
            mm.emit_to_smem(&ctx, k.loc, &entry, c, case.mode == Mode::Accumulate)
                .expect("emit the matmul");
            k.push0(&entry, k.op("gpu.barrier"));
            k.copy(
                &entry,
                tid,
                threads,
                gc,
                arg(5),
                (case.m, case.n, sc),
                false,
                None,
            );
        } else {
            // Straight to global memory: two 8-byte stores per fragment and lane.
            let n = case.n;
            let mut store = |blk: &Block<'_>, f: &Fragment<'_, '_>| {
                let cn = k.ci(blk, n);
                for (row, pair) in [
                    (f.row, [f.acc[0], f.acc[1]]),
                    (f.row8, [f.acc[2], f.acc[3]]),
                ] {
                    let rn = k.bin(blk, "arith.muli", row, cn);
                    let idx = k.bin(blk, "arith.addi", rn, f.col);
                    let v = k.push(
                        blk,
                        k.op("vector.from_elements")
                            .add_operands(&pair)
                            .add_results(&[Type::vector(&[2], f32t)]),
                    );
                    k.push0(blk, k.op("vector.store").add_operands(&[v, gc, idx]));
                }
                Ok(())
            };
            mm.emit(&ctx, k.loc, &entry, Init::Zero, &mut store)
                .expect("emit the matmul");
        }
        k.push0(&entry, k.op("gpu.return"));
    }
    let body = Region::new();
    body.append_block(entry);
    let align: Vec<String> = attribs
        .iter()
        .map(|_| "{llvm.align = 16 : i64}".to_owned())
        .collect();
    let func = k
        .op("gpu.func")
        .add_attributes(&[
            (
                Identifier::new(&ctx, "sym_name"),
                StringAttribute::new(&ctx, &case.name()).into(),
            ),
            (
                Identifier::new(&ctx, "function_type"),
                TypeAttribute::new(FunctionType::new(&ctx, &args, &[]).into()).into(),
            ),
            (Identifier::new(&ctx, "gpu.kernel"), Attribute::unit(&ctx)),
            (
                Identifier::new(&ctx, "workgroup_attributions"),
                IntegerAttribute::new(Type::parse(&ctx, "i64").expect("i64"), attribs.len() as i64)
                    .into(),
            ),
            (
                Identifier::new(&ctx, "workgroup_attrib_attrs"),
                Attribute::parse(&ctx, &format!("[{}]", align.join(", "))).expect("dicts"),
            ),
            (
                Identifier::new(&ctx, "known_block_size"),
                DenseI32ArrayAttribute::new(&ctx, &[threads as i32, 1, 1]).into(),
            ),
        ])
        .add_regions([body])
        .build()
        .expect("gpu.func builds");
    let module_body = Block::new(&[]);
    module_body.append_operation(func);
    let region = Region::new();
    region.append_block(module_body);
    let gpu_module = k
        .op("gpu.module")
        .add_attributes(&[(
            Identifier::new(&ctx, "sym_name"),
            StringAttribute::new(&ctx, "mma_tests").into(),
        )])
        .add_regions([region])
        .build()
        .expect("gpu.module builds");
    let mut module = Module::new(k.loc);
    module
        .as_operation_mut()
        .set_attribute("gpu.container_module", Attribute::unit(&ctx));
    module.body().append_operation(gpu_module);
    assert!(
        module.as_operation().verify(),
        "{} does not verify:\n{}",
        case.name(),
        module.as_operation()
    );
    module.as_operation().to_string()
}

// ---- tests -------------------------------------------------------------------------------

#[test]
fn layouts_use_the_warps_and_keep_accumulators_in_registers() {
    let l = MmaLayout::new(64, 64, 4).expect("layout");
    assert_eq!(
        (l.warps_m, l.warps_n, l.frags_m, l.frags_n),
        (2, 2, 2, 4),
        "{l:?}"
    );
    assert_eq!(l.passes(), 1);
    let l = MmaLayout::new(64, 32, 4).expect("layout");
    assert_eq!(l.warps_used(), 4, "{l:?}");
    // 64 fragments per warp: two passes of 32.
    let l = MmaLayout::new(128, 128, 2).expect("layout");
    assert_eq!((l.frags_m * l.frags_n, l.passes()), (64, 2), "{l:?}");
    assert!(l.pass_m * l.pass_n <= MmaLayout::MAX_FRAGMENTS_PER_PASS);
    // One fragment: one warp works, the others skip.
    assert_eq!(MmaLayout::new(16, 8, 4).expect("layout").warps_used(), 1);
    // 3×3 fragments on 4 warps: three warps of one row each.
    let l = MmaLayout::new(48, 24, 4).expect("layout");
    assert_eq!((l.warps_used(), l.frags_m, l.frags_n), (3, 1, 3), "{l:?}");
    for (m, n, w) in [(0, 8, 1), (24, 8, 1), (16, 12, 1), (16, 8, 0), (16, 8, 33)] {
        assert!(MmaLayout::new(m, n, w).is_err(), "{m}×{n} on {w} warps");
    }
}

/// Bad operands are errors that say what is wrong, not miscompiles.
#[test]
fn bad_operands_are_rejected() {
    let ctx = context();
    let loc = Location::unknown(&ctx);
    let k = K { ctx: &ctx, loc };
    let bf16 = Type::bfloat16(&ctx);
    let blk = Block::new(&[
        (Type::index(&ctx), loc),
        (k.memref(bf16, 64 * 72, true), loc),
        (k.memref(bf16, 64 * 72, false), loc),
        (k.memref(Type::float16(&ctx), 64 * 72, true), loc),
    ]);
    let arg = |i: usize| -> Value { blk.argument(i).expect("argument").into() };
    let tile = |i: usize, stride: i64| Operand {
        tile: SmemTile {
            memref: arg(i),
            offset: 0,
            row_stride: stride,
            col_step: 1,
            swizzled: false,
        },
        transposed: false,
    };
    let good = Matmul {
        m: 64,
        n: 64,
        k: 64,
        dtype: MmaType::Bf16,
        num_warps: 4,
        thread_id: arg(0),
        a: tile(1, 72),
        b: tile(1, 72),
        wgmma: false,
    };
    let err = |mm: Matmul| {
        let scratch = Block::new(&[]);
        let mut ignore = |_: &Block<'_>, _: &Fragment<'_, '_>| Ok(());
        mm.emit(&ctx, loc, &scratch, Init::Zero, &mut ignore)
            .expect_err("must be rejected")
            .to_string()
    };
    let scratch = Block::new(&[]);
    let mut ignore = |_: &Block<'_>, _: &Fragment<'_, '_>| Ok(());
    good.emit(&ctx, loc, &scratch, Init::Zero, &mut ignore)
        .expect("the good matmul emits");
    let cases = [
        (Matmul { k: 40, ..good }, "K = 40"),
        (Matmul { m: 8, ..good }, "positive multiple of 16"),
        (
            Matmul {
                a: tile(1, 68),
                ..good
            },
            "multiples of 8",
        ),
        (
            Matmul {
                a: tile(1, 56),
                ..good
            },
            "less than the 64 columns",
        ),
        (
            Matmul {
                b: tile(2, 72),
                ..good
            },
            "workgroup memory",
        ),
        (
            Matmul {
                b: tile(3, 72),
                ..good
            },
            "elements must be bf16",
        ),
        (
            Matmul {
                a: tile(1, 80),
                ..good
            },
            "needs 5104 elements",
        ),
        (
            Matmul {
                thread_id: arg(1),
                ..good
            },
            "must be an index",
        ),
    ];
    for (mm, needle) in cases {
        let msg = err(mm);
        assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    }
}

#[test]
fn mlir_of_the_nt_kernel() {
    let mlir = build(&Case::new(64, 64, 64, false, true));
    insta::assert_snapshot!(mlir);
}

#[test]
fn mlir_of_the_wgmma_tn_kernel() {
    // Kᵀ·V as the state update issues it: A stored K×M (MN-major), B stored K×N (MN-major).
    let mlir = build(&Case::new(128, 128, 64, true, false).wgmma());
    insta::assert_snapshot!(mlir);
}

/// Every wgmma case lowers for sm_90a to PTX with `wgmma.mma_async` at the unit's width, the
/// transpose flags its operands need, no `mma.sync`, and ptxas assembles it without spills or
/// injected `warpgroup.arrive` (LINREC_MMA_PTX_DIR writes them for `tc_check` as the mma
/// cases). Their results were checked on an H200 inside the kernels (`gpu-check.sh`).
#[test]
fn wgmma_cases_lower_and_assemble() {
    let dump = std::env::var_os("LINREC_MMA_PTX_DIR").map(PathBuf::from);
    for case in wgmma_cases() {
        let mlir = build(&case);
        let lowered = lower(&mlir, Target::Sm90a)
            .unwrap_or_else(|e| panic!("{} for sm_90a: {e}\n{mlir}", case.name()));
        let ptx = lowered.ptx().expect("PTX");
        let groups = i64::from(case.warps) / 4;
        let width = linrec_compiler::emit::wgmma::unit_width(case.m, case.n, groups);
        let t = case.dtype.ptx_name();
        let want = format!("wgmma.mma_async.sync.aligned.m64n{width}k16.f32.{t}.{t}");
        assert!(ptx.contains(&want), "{}: no `{want}`", case.name());
        assert!(
            !ptx.contains("mma.sync.aligned.m16n8k16"),
            "{}",
            case.name()
        );
        // imm-trans-a / imm-trans-b: 1 for an MN-major operand (A stored K×M, B stored K×N).
        let flags = format!("1,  1, {},  {};", u8::from(case.ta), u8::from(!case.tb));
        assert!(ptx.contains(&flags), "{}: no `{flags}`", case.name());
        assert!(
            ptx.contains("wgmma.wait_group.sync.aligned \t0;"),
            "{}",
            case.name()
        );
        ptxas_info(ptx, Target::Sm90a, &case.name());
        if let Some(dir) = &dump {
            std::fs::create_dir_all(dir).expect("create the PTX folder");
            let file = format!("{}.sm_90a.ptx", case.name());
            std::fs::write(dir.join(file), ptx).expect("write PTX");
        }
    }
}

/// Every case lowers for sm_80 and sm_90 to PTX with ldmatrix and the 16-bit `mma.sync`, and
/// ptxas assembles it without spills.
#[test]
fn all_cases_lower_and_assemble() {
    let dump = std::env::var_os("LINREC_MMA_PTX_DIR").map(PathBuf::from);
    let mut manifest = String::new();
    let mut report = Vec::new();
    for case in cases() {
        let mlir = build(&case);
        for target in [Target::Sm80, Target::Sm90] {
            let lowered = lower(&mlir, target)
                .unwrap_or_else(|e| panic!("{} for {target}: {e}\n{mlir}", case.name()));
            let ptx = lowered.ptx().expect("PTX");
            let want = format!(
                "mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32",
                t = case.dtype.ptx_name()
            );
            assert!(ptx.contains(&want), "{} {target}: no `{want}`", case.name());
            assert!(
                ptx.contains("ldmatrix.sync.aligned.m8n8.x4"),
                "{}",
                case.name()
            );
            // The transposed loads: A stored K×M, or B stored K×N.
            let trans = ptx.contains(".trans.shared.b16");
            assert_eq!(
                trans,
                case.ta || !case.tb,
                "{} {target}: .trans",
                case.name()
            );
            if let Some(info) = ptxas_info(ptx, target, &case.name()) {
                report.push(format!("{} {target}: {info}", case.name()));
            }
            if let Some(dir) = &dump {
                let file = format!("{}.{}.ptx", case.name(), target.name());
                std::fs::create_dir_all(dir).expect("create the PTX folder");
                std::fs::write(dir.join(&file), ptx).expect("write PTX");
                manifest.push_str(&format!(
                    "{file} {} {} {} {} {} {} {} {} {}\n",
                    case.name(),
                    case.m,
                    case.n,
                    case.k,
                    u8::from(case.ta),
                    u8::from(case.tb),
                    case.dtype.ptx_name(),
                    case.warps,
                    case.mode.name()
                ));
            }
        }
    }
    if let Some(dir) = &dump {
        std::fs::write(dir.join("manifest.txt"), manifest).expect("write the manifest");
    }
    let mut err = std::io::stderr();
    for line in report {
        let _ = writeln!(err, "{line}");
    }
}

fn ci_mode() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `ptxas -v` on `ptx`: asserts it assembles with no spills and returns its resource line,
/// or `None` (with a note; a failure under CI) without ptxas.
fn ptxas_info(ptx: &str, target: Target, name: &str) -> Option<String> {
    let Some(ptxas) = ptxas() else {
        assert!(
            !ci_mode(),
            "CI=true but ptxas is missing: run `bash scripts/setup.sh` and export what \
             `--print-env` prints"
        );
        static NOTED: AtomicUsize = AtomicUsize::new(0);
        if NOTED.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("note: ptxas not found; skipped assembling the mma test kernels");
        }
        return None;
    };
    static N: AtomicUsize = AtomicUsize::new(0);
    let file = std::env::temp_dir().join(format!(
        "linrec-mma-{}-{}-{name}.{target}.ptx",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, ptx).expect("write a temp PTX file");
    let out = Command::new(&ptxas)
        .args(["-v", &format!("-arch={target}"), "-o", "/dev/null"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", ptxas.display()));
    let _ = std::fs::remove_file(&file);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "ptxas rejected {name} for {target}:\n{log}"
    );
    assert!(
        log.contains("0 bytes spill stores, 0 bytes spill loads"),
        "{name} {target} spills:\n{log}"
    );
    assert!(
        log.contains("0 bytes stack frame"),
        "{name} {target}:\n{log}"
    );
    // ptxas moving wgmma accumulators between groups (serialising them).
    assert!(!log.contains("C7519"), "{name} {target}:\n{log}");
    log.lines()
        .find(|l| l.contains("Used") && l.contains("registers"))
        .map(|l| l.split(": ").last().unwrap_or(l).trim().to_owned())
}

/// `$LINREC_PTXAS` (exported by `scripts/setup.sh --print-env`), else `ptxas` on `PATH`.
fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LINREC_PTXAS").map(PathBuf::from)
        && p.is_file()
    {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("ptxas"))
        .find(|p| p.is_file())
}

#[test]
fn wgmma_units_cover_every_warpgroup_evenly() {
    use linrec_compiler::emit::wgmma::unit_width;
    // Q·Kᵀ at C = 64 on two warpgroups: two 32-column units.
    assert_eq!(unit_width(64, 64, 2), 32);
    // A 128-row state update, 128 columns: one full-width unit a group.
    assert_eq!(unit_width(128, 128, 2), 128);
    // 64 × 128 on two groups: 64 columns each.
    assert_eq!(unit_width(64, 128, 2), 64);
    // 256 columns on one group: two units of the widest width.
    assert_eq!(unit_width(64, 256, 1), 128);
    // 64 × 24 on two groups: three 8-wide units (one group takes two).
    assert_eq!(unit_width(64, 24, 2), 8);
}
