//! A thin layer over melior's `OperationBuilder`: the handful of `arith`, `memref`, `scf` and
//! `gpu` ops the kernels are made of, each appended to a block and returning its result, with
//! every MLIR failure turned into an [`EmitError`] instead of a panic.
//!
//! Nested regions are built inside closures (`for_`, `for_acc`, `if_`): melior ties a value's
//! lifetime to the block that holds it, so an inner block must be complete (and its values out
//! of scope) before it moves into its region.

use melior::{
    Context,
    ir::{
        Attribute, Block, BlockLike, Identifier, Location, Region, RegionLike, Type, Value,
        ValueLike,
        attribute::{FloatAttribute, IntegerAttribute, StringAttribute},
        operation::{OperationBuilder, OperationLike},
        r#type::IntegerType,
    },
};

use super::EmitError;

/// Result of an emitter step.
pub(super) type R<T> = Result<T, EmitError>;

/// `arith.cmpi` predicates (the values of MLIR's `arith::CmpIPredicate`).
#[derive(Clone, Copy, Debug)]
#[repr(i64)]
pub(super) enum Cmp {
    /// `==`.
    Eq = 0,
    /// `<` on signed integers.
    Slt = 2,
    /// `<` on unsigned integers.
    Ult = 6,
    /// `<=` on unsigned integers.
    Ule = 7,
}

/// `arith.cmpf` predicates (the values of MLIR's `arith::CmpFPredicate`).
#[derive(Clone, Copy, Debug)]
#[repr(i64)]
pub(super) enum CmpF {
    /// Unordered: either operand is NaN.
    Uno = 14,
}

/// Builds ops at one location in one context.
pub(super) struct Builder<'c> {
    pub ctx: &'c Context,
    pub loc: Location<'c>,
}

impl<'c> Builder<'c> {
    pub fn new(ctx: &'c Context) -> Self {
        Builder {
            ctx,
            loc: Location::unknown(ctx),
        }
    }

    // ---- types ---------------------------------------------------------------------------

    pub fn index(&self) -> Type<'c> {
        Type::index(self.ctx)
    }
    pub fn f32(&self) -> Type<'c> {
        Type::float32(self.ctx)
    }
    pub fn int(&self, bits: u32) -> Type<'c> {
        IntegerType::new(self.ctx, bits).into()
    }

    /// An attribute from its textual form, for the dialect attributes melior has no
    /// constructor for (`#gpu<dim x>`, `#spirv.scope<Workgroup>`).
    pub fn attr(&self, text: &str) -> R<Attribute<'c>> {
        Attribute::parse(self.ctx, text).ok_or_else(|| EmitError::Build {
            op: format!("attribute `{text}`"),
            detail: "MLIR could not parse it".into(),
        })
    }

    pub fn named(&self, name: &str, attr: Attribute<'c>) -> (Identifier<'c>, Attribute<'c>) {
        (Identifier::new(self.ctx, name), attr)
    }

    // ---- appending -----------------------------------------------------------------------

    /// Builds `op`, appends it to `block` and returns its single result.
    pub fn push<'a>(&self, block: &'a Block<'c>, op: OperationBuilder<'c>) -> R<Value<'c, 'a>> {
        let built = op.build().map_err(|e| EmitError::Build {
            op: "operation".into(),
            detail: e.to_string(),
        })?;
        let name = built
            .name()
            .as_string_ref()
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let op = block.append_operation(built);
        let result = op.result(0).map_err(|e| EmitError::Build {
            op: name,
            detail: format!("no result: {e}"),
        })?;
        Ok(result.into())
    }

    /// Builds `op`, appends it to `block` and returns all its results.
    pub fn push_n<'a>(
        &self,
        block: &'a Block<'c>,
        op: OperationBuilder<'c>,
    ) -> R<Vec<Value<'c, 'a>>> {
        let built = op.build().map_err(|e| EmitError::Build {
            op: "operation".into(),
            detail: e.to_string(),
        })?;
        let op = block.append_operation(built);
        Ok((0..op.result_count())
            .filter_map(|i| op.result(i).ok())
            .map(Into::into)
            .collect())
    }

    /// Builds `op` (which has no results) and appends it to `block`.
    pub fn push0(&self, block: &Block<'c>, op: OperationBuilder<'c>) -> R<()> {
        let built = op.build().map_err(|e| EmitError::Build {
            op: "operation".into(),
            detail: e.to_string(),
        })?;
        block.append_operation(built);
        Ok(())
    }

    pub fn op(&self, name: &str) -> OperationBuilder<'c> {
        OperationBuilder::new(name, self.loc)
    }

    // ---- arith ---------------------------------------------------------------------------

    /// An `index` constant.
    pub fn ci<'a>(&self, b: &'a Block<'c>, n: i64) -> R<Value<'c, 'a>> {
        self.constant(b, IntegerAttribute::new(self.index(), n).into())
    }
    /// An `i32` constant.
    pub fn ci32<'a>(&self, b: &'a Block<'c>, n: i64) -> R<Value<'c, 'a>> {
        self.constant(b, IntegerAttribute::new(self.int(32), n).into())
    }
    /// An `i16` constant.
    pub fn ci16<'a>(&self, b: &'a Block<'c>, n: i64) -> R<Value<'c, 'a>> {
        self.constant(b, IntegerAttribute::new(self.int(16), n).into())
    }
    /// An `f32` constant (−∞ included).
    pub fn cf32<'a>(&self, b: &'a Block<'c>, x: f64) -> R<Value<'c, 'a>> {
        self.constant(b, FloatAttribute::new(self.ctx, self.f32(), x).into())
    }
    fn constant<'a>(&self, b: &'a Block<'c>, value: Attribute<'c>) -> R<Value<'c, 'a>> {
        self.push(
            b,
            self.op("arith.constant")
                .add_attributes(&[self.named("value", value)])
                .enable_result_type_inference(),
        )
    }

    /// A binary `arith` op whose result has the operands' type.
    pub fn bin<'a>(
        &self,
        b: &'a Block<'c>,
        name: &str,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.push(
            b,
            self.op(name)
                .add_operands(&[x, y])
                .enable_result_type_inference(),
        )
    }

    pub fn addi<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.addi", x, y)
    }
    pub fn subi<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.subi", x, y)
    }
    pub fn muli<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.muli", x, y)
    }
    pub fn divui<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.divui", x, y)
    }
    pub fn remui<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.remui", x, y)
    }
    pub fn addf<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.addf", x, y)
    }
    pub fn subf<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.subf", x, y)
    }
    pub fn mulf<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.mulf", x, y)
    }
    pub fn divf<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.bin(b, "arith.divf", x, y)
    }

    /// `x + y·k` on indices with a constant `k` (the shape of every address computation).
    pub fn mad<'a>(
        &self,
        b: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
        k: i64,
    ) -> R<Value<'c, 'a>> {
        let k = self.ci(b, k)?;
        let yk = self.muli(b, y, k)?;
        self.addi(b, x, yk)
    }

    pub fn cmpi<'a>(
        &self,
        b: &'a Block<'c>,
        pred: Cmp,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let p = IntegerAttribute::new(self.int(64), pred as i64).into();
        self.push(
            b,
            self.op("arith.cmpi")
                .add_attributes(&[self.named("predicate", p)])
                .add_operands(&[x, y])
                .enable_result_type_inference(),
        )
    }

    pub fn cmpf<'a>(
        &self,
        b: &'a Block<'c>,
        pred: CmpF,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let p = IntegerAttribute::new(self.int(64), pred as i64).into();
        self.push(
            b,
            self.op("arith.cmpf")
                .add_attributes(&[self.named("predicate", p)])
                .add_operands(&[x, y])
                .enable_result_type_inference(),
        )
    }

    pub fn select<'a>(
        &self,
        b: &'a Block<'c>,
        cond: Value<'c, '_>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.push(
            b,
            self.op("arith.select")
                .add_operands(&[cond, x, y])
                .add_results(&[x.r#type()]),
        )
    }

    /// A cast-like op (`arith.index_cast`, `extf`, `truncf`, `bitcast`, ...) to `to`.
    pub fn cast<'a>(
        &self,
        b: &'a Block<'c>,
        name: &str,
        x: Value<'c, '_>,
        to: Type<'c>,
    ) -> R<Value<'c, 'a>> {
        self.push(b, self.op(name).add_operands(&[x]).add_results(&[to]))
    }

    /// An `i32` value as an index (sign-extending).
    pub fn to_index<'a>(&self, b: &'a Block<'c>, x: Value<'c, '_>) -> R<Value<'c, 'a>> {
        self.cast(b, "arith.index_cast", x, self.index())
    }

    // ---- memref --------------------------------------------------------------------------

    pub fn load<'a>(
        &self,
        b: &'a Block<'c>,
        mem: Value<'c, '_>,
        idx: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.push(
            b,
            self.op("memref.load")
                .add_operands(&[mem, idx])
                .enable_result_type_inference(),
        )
    }

    pub fn store(
        &self,
        b: &Block<'c>,
        value: Value<'c, '_>,
        mem: Value<'c, '_>,
        idx: Value<'c, '_>,
    ) -> R<()> {
        self.push0(b, self.op("memref.store").add_operands(&[value, mem, idx]))
    }

    /// The address of a memref's first element, as an `index`.
    pub fn base_address<'a>(&self, b: &'a Block<'c>, mem: Value<'c, '_>) -> R<Value<'c, 'a>> {
        self.push(
            b,
            self.op("memref.extract_aligned_pointer_as_index")
                .add_operands(&[mem])
                .add_results(&[self.index()]),
        )
    }

    /// `vector.store` of `value` at element `idx`, declared `align`-byte aligned.
    pub fn vector_store(
        &self,
        b: &Block<'c>,
        value: Value<'c, '_>,
        mem: Value<'c, '_>,
        idx: Value<'c, '_>,
        align: i64,
    ) -> R<()> {
        self.push0(
            b,
            self.op("vector.store")
                .add_attributes(&[self.named("alignment", self.align_attr(align))])
                .add_operands(&[value, mem, idx]),
        )
    }

    fn align_attr(&self, align: i64) -> Attribute<'c> {
        IntegerAttribute::new(self.int(64), align).into()
    }

    // ---- gpu -----------------------------------------------------------------------------

    /// `gpu.thread_id` / `gpu.block_id` along `dim` (`x`, `y`, `z`).
    pub fn gpu_id<'a>(&self, b: &'a Block<'c>, op: &str, dim: &str) -> R<Value<'c, 'a>> {
        let d = self.attr(&format!("#gpu<dim {dim}>"))?;
        self.push(
            b,
            self.op(op)
                .add_attributes(&[self.named("dimension", d)])
                .add_results(&[self.index()]),
        )
    }

    // ---- scf -----------------------------------------------------------------------------

    pub fn yield_(&self, b: &Block<'c>, values: &[Value<'c, '_>]) -> R<()> {
        self.push0(b, self.op("scf.yield").add_operands(values))
    }

    /// `scf.for %iv = lb to ub step step { body }`.
    pub fn for_(
        &self,
        b: &Block<'c>,
        lb: Value<'c, '_>,
        ub: Value<'c, '_>,
        step: Value<'c, '_>,
        body: impl for<'x> FnOnce(&'x Block<'c>, Value<'c, 'x>) -> R<()>,
    ) -> R<()> {
        let inner = Block::new(&[(self.index(), self.loc)]);
        {
            let iv = inner.argument(0).map_err(arg_err)?.into();
            body(&inner, iv)?;
            self.yield_(&inner, &[])?;
        }
        let region = Region::new();
        region.append_block(inner);
        self.push0(
            b,
            self.op("scf.for")
                .add_operands(&[lb, ub, step])
                .add_regions([region]),
        )
    }

    /// `scf.for` carrying one value; `body(block, iv, acc)` must end with
    /// [`Builder::yield_`] of the next value. Returns the final value.
    pub fn for_acc<'a>(
        &self,
        b: &'a Block<'c>,
        lb: Value<'c, '_>,
        ub: Value<'c, '_>,
        step: Value<'c, '_>,
        init: Value<'c, '_>,
        body: impl for<'x> FnOnce(&'x Block<'c>, Value<'c, 'x>, Value<'c, 'x>) -> R<()>,
    ) -> R<Value<'c, 'a>> {
        let ty = init.r#type();
        let inner = Block::new(&[(self.index(), self.loc), (ty, self.loc)]);
        {
            let iv = inner.argument(0).map_err(arg_err)?.into();
            let acc = inner.argument(1).map_err(arg_err)?.into();
            body(&inner, iv, acc)?;
        }
        let region = Region::new();
        region.append_block(inner);
        self.push(
            b,
            self.op("scf.for")
                .add_operands(&[lb, ub, step, init])
                .add_results(&[ty])
                .add_regions([region]),
        )
    }

    /// `scf.for` carrying `init.len()` values; `body(block, iv, values)` returns the next
    /// values (yielded). Returns the final values.
    pub fn for_values<'a>(
        &self,
        b: &'a Block<'c>,
        (lb, ub, step): (Value<'c, '_>, Value<'c, '_>, Value<'c, '_>),
        init: &[Value<'c, '_>],
        body: impl for<'x> FnOnce(
            &'x Block<'c>,
            Value<'c, 'x>,
            Vec<Value<'c, 'x>>,
        ) -> R<Vec<Value<'c, 'x>>>,
    ) -> R<Vec<Value<'c, 'a>>> {
        let types: Vec<Type<'c>> = init.iter().map(|v| v.r#type()).collect();
        let mut args = vec![(self.index(), self.loc)];
        args.extend(types.iter().map(|&t| (t, self.loc)));
        let inner = Block::new(&args);
        {
            let iv = inner.argument(0).map_err(arg_err)?.into();
            let values = (1..args.len())
                .map(|k| inner.argument(k).map(Into::into).map_err(arg_err))
                .collect::<R<Vec<_>>>()?;
            let next = body(&inner, iv, values)?;
            self.yield_(&inner, &next)?;
        }
        let region = Region::new();
        region.append_block(inner);
        let mut operands = vec![lb, ub, step];
        operands.extend(init);
        self.push_n(
            b,
            self.op("scf.for")
                .add_operands(&operands)
                .add_results(&types)
                .add_regions([region]),
        )
    }

    /// `llvm.inline_asm` of `text` with `constraints`, operands and results still to add;
    /// `side_effects`: never merged, moved or removed by LLVM.
    pub fn inline_asm(
        &self,
        text: &str,
        constraints: &str,
        side_effects: bool,
    ) -> OperationBuilder<'c> {
        let mut attrs = vec![
            self.named("asm_string", StringAttribute::new(self.ctx, text).into()),
            self.named(
                "constraints",
                StringAttribute::new(self.ctx, constraints).into(),
            ),
        ];
        if side_effects {
            attrs.push(self.named("has_side_effects", Attribute::unit(self.ctx)));
        }
        self.op("llvm.inline_asm").add_attributes(&attrs)
    }

    /// `scf.if cond { body }` without results or else branch.
    pub fn if_(
        &self,
        b: &Block<'c>,
        cond: Value<'c, '_>,
        body: impl FnOnce(&Block<'c>) -> R<()>,
    ) -> R<()> {
        let then = Block::new(&[]);
        body(&then)?;
        self.yield_(&then, &[])?;
        let region = Region::new();
        region.append_block(then);
        self.push0(
            b,
            self.op("scf.if")
                .add_operands(&[cond])
                .add_regions([region, Region::new()]),
        )
    }

    /// `scf.if cond -> (types) { then } else { otherwise }`: each closure ends its block with
    /// [`Builder::yield_`] of values of `types`. Returns the results.
    pub fn if_values<'a>(
        &self,
        b: &'a Block<'c>,
        cond: Value<'c, '_>,
        types: &[Type<'c>],
        then: impl FnOnce(&Block<'c>) -> R<()>,
        otherwise: impl FnOnce(&Block<'c>) -> R<()>,
    ) -> R<Vec<Value<'c, 'a>>> {
        let regions = [Region::new(), Region::new()];
        for (region, body) in regions.iter().zip([
            Box::new(then) as Box<dyn FnOnce(&Block<'c>) -> R<()>>,
            Box::new(otherwise),
        ]) {
            let blk = Block::new(&[]);
            body(&blk)?;
            region.append_block(blk);
        }
        self.push_n(
            b,
            self.op("scf.if")
                .add_operands(&[cond])
                .add_results(types)
                .add_regions(regions),
        )
    }
}

fn arg_err(e: melior::Error) -> EmitError {
    EmitError::Build {
        op: "block argument".into(),
        detail: e.to_string(),
    }
}
