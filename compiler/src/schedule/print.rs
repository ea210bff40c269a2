//! The schedule's deterministic text form (`01-schedule.txt` in a stage dump).

use std::fmt;

use linrec_spec::launch::{KernelParam, SizeExpr, SizeSym};

use super::{BackwardSchedule, BufferType, MatmulPath, Part, Placement, Schedule};
use crate::plan::{Direction, Sink};

fn size(e: &SizeExpr) -> String {
    match e {
        SizeExpr::Const(c) => c.to_string(),
        SizeExpr::Sym(s) => match s {
            SizeSym::B => "B",
            SizeSym::T => "T",
            SizeSym::H => "H",
            SizeSym::Hv => "HV",
            SizeSym::K => "K",
            SizeSym::V => "V",
            SizeSym::N => "N",
        }
        .into(),
        SizeExpr::Mul(a, b) => format!("{}·{}", size(a), size(b)),
        SizeExpr::CeilDiv(a, b) => {
            let part = |e: &SizeExpr| match e {
                SizeExpr::Add(..) => format!("({})", size(e)),
                _ => size(e),
            };
            format!("ceil({}/{})", part(a), part(b))
        }
        SizeExpr::Add(a, b) => format!("{} + {}", size(a), size(b)),
    }
}

/// The `config` line; `(h0, ht)` name the initial- and final-state options as the direction
/// uses them.
fn write_config(
    f: &mut fmt::Formatter<'_>,
    c: &linrec_spec::launch::KernelConfig,
    (h0, ht): (&str, &str),
) -> fmt::Result {
    writeln!(
        f,
        "  config   dtype {} K {} V {} chunk {}{}{}{}",
        c.dtype,
        c.key_dim,
        c.value_dim,
        c.chunk,
        if c.initial_state { h0 } else { "" },
        if c.final_state { ht } else { "" },
        if c.varlen { " varlen" } else { "" },
    )
}

/// A parameter's name as the kernel's argument list shows it.
pub(crate) fn param_name(p: &KernelParam) -> String {
    match p {
        KernelParam::Input(role) => role.to_string(),
        KernelParam::DecayRates => "decay_rates".into(),
        KernelParam::InitialState => "h0".into(),
        KernelParam::Output => "o".into(),
        KernelParam::FinalState => "ht".into(),
        KernelParam::CuSeqlens => "cu_seqlens".into(),
        KernelParam::Scratch => "scratch".into(),
        KernelParam::SeqLen => "T".into(),
        KernelParam::Heads => "H".into(),
        KernelParam::ValueHeads => "HV".into(),
        KernelParam::Scale => "scale".into(),
        KernelParam::GradOutput => "do".into(),
        KernelParam::GradFinalState => "dht".into(),
        KernelParam::Grad(role) => format!("d_{role}"),
        KernelParam::GradInitialState => "dh0".into(),
        KernelParam::ChunkStates => "chunk_states".into(),
        KernelParam::ChunkStateGrads => "chunk_dh".into(),
        KernelParam::ChunkStatesGiven => "chunk_states_given".into(),
        KernelParam::GradAccumulator(role) => format!("d_{role}_sum"),
        KernelParam::SegmentStates => "segment_states".into(),
        KernelParam::SegmentDecays => "segment_decays".into(),
        KernelParam::TensorMap(role) => format!("{role}_map"),
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let path = self.path_name();
        let kernel = match self.part {
            Part::Fused => "one kernel",
            Part::States => "the states kernel of a split forward",
            Part::Output => "the chunk-parallel output kernel of a split forward",
            Part::Grads => "the gradient kernel of a backward",
            Part::Segments => "the segment kernel of a split-scan forward",
            Part::Combine => "the combine kernel of a split-scan forward",
            Part::ScanStates => "the states kernel of a split-scan forward",
        };
        writeln!(
            f,
            "schedule {} forward for {} ({path}: {kernel})",
            self.spec_name, self.target
        )?;
        write_config(f, c, (" h0", " final_state"))?;
        writeln!(
            f,
            "  kernel   @{} grid ({}, {}, {}) block ({}, 1, 1) BV {}",
            self.entry,
            size(&self.grid[0]),
            size(&self.grid[1]),
            size(&self.grid[2]),
            self.block_threads,
            self.block_v
        )?;
        writeln!(f, "  params   {}", self.params_text())?;
        if self.part == Part::Combine {
            let decay = match self.params.contains(&KernelParam::SegmentDecays) {
                true => "segment_decays[z] · ",
                false => "",
            };
            return writeln!(
                f,
                "  per segment z of the sequence but its last, in order, from S = {}:\n    U <- segment_states[z]; segment_states[z] <- S; S <- {decay}S + U\n  then segment_states[last] <- S",
                if self.config.initial_state { "h0" } else { "0" },
            );
        }
        writeln!(
            f,
            "  scratch  {} f32 per workgroup; state S [{} x {}] @ {}",
            self.scratch, self.state.rows, self.state.cols, self.state.offset
        )?;
        self.write_matmuls(f)?;
        if self.tiles_shared {
            writeln!(
                f,
                "  tiles    the f32 tiles in shared memory after the operands, @ byte {} ({} bytes)",
                super::tiles_offset(self.operand_arena * 2),
                4 * self.scratch_tiles()
            )?;
        }
        if let Some(why) = &self.fallback {
            writeln!(f, "  note     {why}")?;
        }
        if let Some(d) = &self.decay {
            writeln!(f, "  decay    constant_gate reads {}[hv]", param_name(d))?;
        }
        match self.part {
            Part::Fused => writeln!(f, "  per chunk:")?,
            Part::States => writeln!(f, "  per chunk: chunk_states[chunk] <- S, then")?,
            Part::Output => writeln!(
                f,
                "  the workgroup's chunk (x / value blocks): chunk_states[chunk] read (into S when read elementwise, else by its node into its operand tile), barrier, then"
            )?,
            Part::Grads => writeln!(f, "  per chunk of the workgroup's:")?,
            Part::Segments => writeln!(
                f,
                "  per chunk of segment z = block z (a sequence's last segment skipped), S from 0{}:",
                match self.plan.sinks.iter().any(|(s, _)| *s == Sink::StateDecay) {
                    true => ", the decays' product from 1",
                    false => "",
                }
            )?,
            Part::ScanStates => writeln!(
                f,
                "  S <- segment_states[z], then per chunk of segment z = block z: chunk_states[chunk] <- S, then"
            )?,
            Part::Combine => {}
        }
        self.write_nodes(f)?;
        let direct = self.values[self.output.0] == Placement::Output;
        let next = if self.values[self.state_out.0] == Placement::Tile(self.state) {
            "S written in place".to_string()
        } else {
            format!("S <- %{}", self.state_out.0)
        };
        match (self.part, direct) {
            (Part::Fused, false) => writeln!(f, "    store o <- %{}; {next}", self.output.0)?,
            (Part::Fused, true) => writeln!(f, "    (o stored by %{}); {next}", self.output.0)?,
            (Part::States | Part::ScanStates, _) => writeln!(f, "    {next}")?,
            (Part::Segments, _) => {
                writeln!(f, "    {next}")?;
                writeln!(f, "    barrier")?;
                let decay = match self.params.contains(&KernelParam::SegmentDecays) {
                    true => " and segment_decays[z] <- the decays' product",
                    false => "",
                };
                return writeln!(f, "  after the segment: segment_states[z] <- S{decay}");
            }
            (Part::Combine, _) => {}
            (Part::Output, false) => return writeln!(f, "    store o <- %{}", self.output.0),
            (Part::Output, true) => return writeln!(f, "    (o stored by %{})", self.output.0),
            (Part::Grads, _) => {}
        }
        writeln!(f, "    barrier")
    }
}

impl Schedule {
    /// Whether the operand tiles are stored in sm_90a's wgmma layouts (128-byte swizzled
    /// rows, or core matrices).
    pub fn wgmma_layouts(&self) -> bool {
        self.operands
            .iter()
            .flatten()
            .any(|t| t.layout != super::TileLayout::Rows)
    }

    /// The line saying where the operand tiles live and how matmuls run (none when portable).
    fn write_matmuls(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.matmul {
            MatmulPath::Portable => {}
            MatmulPath::TensorCore if self.wgmma_layouts() => writeln!(
                f,
                "  operands {} x {} as 128-byte swizzled rows (8x8 core matrices without whole 64-column blocks) in dynamic shared memory ({} bytes); matmuls: {}, f32 accumulation; at most {} registers",
                self.operand_arena,
                self.config.dtype,
                2 * self.operand_arena,
                if self.wgmma {
                    "wgmma m64nNk16 where M is a multiple of 64 (barriers fence the async proxy), else mma.sync m16n8k16"
                } else {
                    "mma.sync m16n8k16"
                },
                self.max_registers.unwrap_or(255)
            )?,
            MatmulPath::TensorCore => writeln!(
                f,
                "  operands {} x {} in dynamic shared memory ({} bytes); matmuls: mma.sync m16n8k16, f32 accumulation; at most {} registers",
                self.operand_arena,
                self.config.dtype,
                2 * self.operand_arena,
                self.max_registers.unwrap_or(255)
            )?,
            MatmulPath::Emulated => writeln!(
                f,
                "  operands {} x {} (as rounded f32{}) in scratch @ {}; matmuls: scalar, f32 accumulation",
                self.operand_arena,
                self.config.dtype,
                if self.wgmma_layouts() {
                    ", as 128-byte swizzled rows or 8x8 core matrices"
                } else {
                    ""
                },
                self.operand_base
            )?,
            MatmulPath::MatrixCore(core) => writeln!(
                f,
                "  operands {} x {} in LDS ({} bytes, static); matmuls: {}, wave{}, f32 accumulation",
                self.operand_arena,
                self.config.dtype,
                2 * self.operand_arena,
                core.name(),
                core.wave_size()
            )?,
            MatmulPath::EmulatedMatrixCore(core) => writeln!(
                f,
                "  operands {} x {} (as rounded f32) in scratch @ {}; matmuls: the {} wave{} lane layout, emulated in scalar code",
                self.operand_arena,
                self.config.dtype,
                self.operand_base,
                core.name(),
                core.wave_size()
            )?,
        }
        if !self.tma.is_empty() {
            let roles: Vec<String> = self.tma.iter().map(|l| l.role.to_string()).collect();
            writeln!(
                f,
                "  tma      {} rows by the Tensor Memory Accelerator: one bulk tensor copy per 64-column block, on an mbarrier each; a chunk loop issues the next chunk's once their last reader is done",
                roles.join(", ")
            )?;
        }
        Ok(())
    }

    /// Where a backward kernel's f32 tiles live, in words.
    fn tiles_text(&self) -> String {
        if self.tiles_shared {
            format!(
                "tiles    {} f32 in shared memory after the operands, @ byte {};",
                self.scratch_tiles(),
                super::tiles_offset(self.operand_arena * 2)
            )
        } else {
            format!("scratch  {} f32 per workgroup;", self.scratch)
        }
    }

    /// How the matmuls run, in words.
    fn path_name(&self) -> &'static str {
        match self.matmul {
            MatmulPath::Portable => "portable",
            MatmulPath::TensorCore => "tensor cores",
            MatmulPath::Emulated => "tensor-core layout, emulated",
            MatmulPath::MatrixCore(_) => "matrix cores",
            MatmulPath::EmulatedMatrixCore(_) => "matrix-core layout, emulated",
        }
    }

    /// The argument list with types.
    fn params_text(&self) -> String {
        self.params
            .iter()
            .map(|p| match self.buffer_type(p) {
                Some(BufferType::Float(t)) => format!("{}: {t}*", param_name(p)),
                Some(BufferType::I32) => format!("{}: i32*", param_name(p)),
                Some(BufferType::I64) => format!("{}: tensor map*", param_name(p)),
                None if *p == KernelParam::Scale => format!("{}: f32", param_name(p)),
                None => format!("{}: i32", param_name(p)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line per node with its barrier and placement, then the sink phase's barrier.
    fn write_nodes(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.plan.nodes.iter().enumerate() {
            if self.barrier_before[i] {
                writeln!(f, "    barrier")?;
            }
            let mut place = match self.values[i] {
                Placement::Uniform => "uniform".to_string(),
                Placement::Tile(t) => format!("[{} x {}] @ {}", t.rows, t.cols, t.offset),
                Placement::Operand => String::new(),
                Placement::Output if self.direction == Direction::Forward => "→ o".to_string(),
                Placement::Output => "→ stored by its node".to_string(),
            };
            if let Some(Some(t)) = self.operands.get(i) {
                if !place.is_empty() {
                    place.push_str(", ");
                }
                place.push_str(&format!(
                    "{} [{} x {}] pad [{} x {}] @ {}",
                    self.config.dtype, t.rows, t.cols, t.rows_padded, t.cols_padded, t.offset
                ));
            }
            if let Some(l) = self.tma.iter().find(|l| l.node == i) {
                place.push_str(&format!(" by TMA (mbarrier @ byte {})", l.barrier));
            }
            writeln!(f, "    %{i:<3} {:<38} {place}", node.op.to_string())?;
        }
        if self.barrier_before_sinks {
            writeln!(f, "    barrier")?;
        }
        Ok(())
    }
}

impl fmt::Display for BackwardSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, g) = (&self.dstates, &self.grads);
        writeln!(
            f,
            "schedule {} backward for {} ({}: two kernels)",
            g.spec_name,
            g.target,
            g.path_name()
        )?;
        write_config(f, &g.config, (" h0 (→ dh0)", " dht"))?;
        if let Some(why) = &g.fallback {
            writeln!(f, "  note     {why}")?;
        }
        if let Some(d) = &g.decay {
            writeln!(f, "  decay    constant_gate reads {}[hv]", param_name(d))?;
        }
        for role in &self.dropped {
            writeln!(
                f,
                "  dropped  the gradient of the {role} input (not computed by device kernels)"
            )?;
        }
        let kernel = |f: &mut fmt::Formatter<'_>, s: &super::Schedule, what: &str| {
            writeln!(
                f,
                "  kernel   @{} grid ({}, {}, {}) block ({}, 1, 1): {what}",
                s.entry,
                size(&s.grid[0]),
                size(&s.grid[1]),
                size(&s.grid[2]),
                s.block_threads,
            )?;
            writeln!(f, "  params   {}", s.params_text())?;
            s.write_matmuls(f)
        };
        kernel(
            f,
            d,
            &format!(
                "a workgroup per (block of {} value columns, sequence, q/k head), the value heads of its group in turn",
                d.block_v
            ),
        )?;
        writeln!(
            f,
            "  {} state S [{} x {}] @ {}; dh [{} x {}] @ {}; sum slots [{}] @ {}",
            d.tiles_text(),
            d.state.rows,
            d.state.cols,
            d.state.offset,
            self.dstate.rows,
            self.dstate.cols,
            self.dstate.offset,
            self.reduce[0].rows,
            self.reduce[0].offset,
        )?;
        writeln!(
            f,
            "  phase 1 (unless given), per chunk forwards: chunk_states[chunk] <- S, then"
        )?;
        self.states.write_nodes(f)?;
        writeln!(f, "    S <- %{}", self.states.state_out.0)?;
        writeln!(f, "    barrier")?;
        writeln!(
            f,
            "  phase 2, per chunk in reverse: chunk_dh[chunk] <- dh, then"
        )?;
        d.write_nodes(f)?;
        writeln!(f, "    dh <- %{}", d.state_out.0)?;
        writeln!(f, "    barrier")?;
        for n in &self.narrower {
            writeln!(
                f,
                "  narrower @{} grid ({}, {}, {}): the same with blocks of {} value columns, the runtime launches the widest kernel with at least {} workgroups (else the narrowest)",
                n.dstates.entry,
                size(&n.dstates.grid[0]),
                size(&n.dstates.grid[1]),
                size(&n.dstates.grid[2]),
                n.dstates.block_v,
                linrec_spec::launch::ENOUGH_WORKGROUPS,
            )?;
        }
        if let Some(scan) = &self.scan {
            writeln!(
                f,
                "  instead, for long sequences on few heads (fewer than {} workgroups, more than {} chunks a sequence) when the forward's chunk states are given, the split-scan of dh over segments of {} chunks, then the gradient kernel:",
                linrec_spec::launch::ENOUGH_WORKGROUPS,
                linrec_spec::launch::SEGMENT_CHUNKS,
                linrec_spec::launch::SEGMENT_CHUNKS,
            )?;
            for (s, what) in [
                (
                    &scan.segments,
                    "phase 2 per segment but a sequence's first, in reverse from dh = 0: segment_states[z] <- dh, segment_decays[z] <- the decays' product",
                ),
                (
                    &scan.combine,
                    "per value head, the segments last to first from dht: segment_states[z] <- the dh leaving segment z",
                ),
                (
                    &scan.states,
                    "phase 2 per segment from segment_states[z]: chunk_dh per chunk, dh0 from the first segment",
                ),
            ] {
                writeln!(
                    f,
                    "    @{} grid ({}, {}, {}) BV {}: {what}\n      params {}",
                    s.entry,
                    size(&s.grid[0]),
                    size(&s.grid[1]),
                    size(&s.grid[2]),
                    s.block_v,
                    s.params_text(),
                )?;
            }
        }
        kernel(
            f,
            g,
            &format!(
                "a workgroup per ({} chunks, sequence, q/k head), the value heads of its group in turn",
                crate::schedule::GRAD_CHUNKS_PER_WORKGROUP
            ),
        )?;
        let carried = if g.in_tile(&crate::plan::Op::StateIn) {
            format!(
                "state S [{} x {}] @ {}; dh [{} x {}] @ {};",
                g.state.rows,
                g.state.cols,
                g.state.offset,
                self.grads_dstate.rows,
                self.grads_dstate.cols,
                self.grads_dstate.offset
            )
        } else {
            "S and dh in their operand tiles only;".to_string()
        };
        writeln!(
            f,
            "  {} {carried} sum slots [{}] @ {}",
            g.tiles_text(),
            self.reduce[1].rows,
            self.reduce[1].offset,
        )?;
        writeln!(
            f,
            "  per chunk: chunk_states[chunk] and chunk_dh[chunk] read (into S and dh when read elementwise, else by their nodes into their operand tiles), barrier, then"
        )?;
        g.write_nodes(f)?;
        let stores: Vec<String> = self
            .sinks
            .iter()
            .map(|(sink, v)| match sink {
                Sink::Grad(role) => format!("d_{role} <- %{}", v.0),
                other => format!("{other:?} <- %{}", v.0),
            })
            .collect();
        writeln!(f, "    store {}", stores.join("; "))?;
        writeln!(f, "    barrier")
    }
}
