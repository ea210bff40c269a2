//! Problem dimensions, sequences (varlen) and per-call options.

use serde::{Deserialize, Serialize};

use crate::error::ShapeError;
use crate::forms::{Decay, Role};

/// The sizes of one call: inputs `[B, T, H, K]` (q, k) and `[B, T, HV, V]` (v), states
/// `[N, HV, K, V]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    /// B: batch (1 with varlen).
    pub batch: usize,
    /// T: tokens per batch row (total packed length with varlen).
    pub seq_len: usize,
    /// H: query/key heads.
    pub heads: usize,
    /// HV: value/state heads; a multiple of H (GVA when larger).
    pub value_heads: usize,
    /// K: key dim.
    pub key_dim: usize,
    /// V: value dim.
    pub value_dim: usize,
}

impl Dims {
    /// Dims with HV = H.
    pub fn new(
        batch: usize,
        seq_len: usize,
        heads: usize,
        key_dim: usize,
        value_dim: usize,
    ) -> Self {
        Dims {
            batch,
            seq_len,
            heads,
            value_heads: heads,
            key_dim,
            value_dim,
        }
    }

    /// Same dims with `value_heads` value heads (GVA).
    pub fn with_value_heads(self, value_heads: usize) -> Self {
        Dims {
            value_heads,
            ..self
        }
    }

    /// Checks ranges and HV % H == 0. T = 0 is legal.
    pub fn validate(&self) -> Result<(), ShapeError> {
        for (name, value) in [
            ("B", self.batch),
            ("H", self.heads),
            ("HV", self.value_heads),
            ("K", self.key_dim),
            ("V", self.value_dim),
        ] {
            if value == 0 {
                return Err(ShapeError::BadDim {
                    name,
                    value,
                    allowed: "at least 1",
                });
            }
        }
        if self.value_heads % self.heads != 0 {
            return Err(ShapeError::HeadsNotMultiple {
                h: self.heads,
                hv: self.value_heads,
            });
        }
        Ok(())
    }

    /// Value heads per query/key head (1 without GVA).
    pub fn group(&self) -> usize {
        self.value_heads / self.heads
    }

    /// The concrete shape of the input playing `role`.
    pub fn input_shape(&self, role: Role, decay: &Decay) -> Vec<usize> {
        let (b, t, h, hv, k, v) = (
            self.batch,
            self.seq_len,
            self.heads,
            self.value_heads,
            self.key_dim,
            self.value_dim,
        );
        match role {
            Role::Query | Role::Key => vec![b, t, h, k],
            Role::Value => vec![b, t, hv, v],
            Role::Gate if *decay == Decay::Diagonal => vec![b, t, hv, k],
            Role::Gate | Role::Beta => vec![b, t, hv],
            Role::Bonus => vec![hv, k],
            Role::DecayRate => vec![hv],
        }
    }

    /// Output shape `[B, T, HV, V]`.
    pub fn output_shape(&self) -> Vec<usize> {
        vec![self.batch, self.seq_len, self.value_heads, self.value_dim]
    }

    /// State shape `[N, HV, K, V]` for `n` sequences.
    pub fn state_shape(&self, n: usize) -> Vec<usize> {
        vec![n, self.value_heads, self.key_dim, self.value_dim]
    }
}

/// The independent sequences of a call: each batch row, or each `cu_seqlens` segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequences {
    /// `(batch row, start token, end token)` per sequence, end exclusive.
    pub spans: Vec<(usize, usize, usize)>,
}

impl Sequences {
    /// Sequences of a call with `dims` and optional varlen offsets (FlashAttention convention:
    /// `[N+1]`, starting at 0, non-decreasing, ending at T; empty sequences are legal).
    ///
    /// ```
    /// # use linrec_spec::*;
    /// let d = Dims::new(1, 16, 2, 8, 8);
    /// let s = Sequences::new(&d, Some(&[0, 0, 5, 16]))?;
    /// assert_eq!(s.spans, vec![(0, 0, 0), (0, 0, 5), (0, 5, 16)]);
    /// assert!(Sequences::new(&d, Some(&[0, 5, 4, 16])).is_err());
    /// # Ok::<(), ShapeError>(())
    /// ```
    pub fn new(dims: &Dims, cu_seqlens: Option<&[i64]>) -> Result<Self, ShapeError> {
        dims.validate()?;
        let t = dims.seq_len;
        let Some(cu) = cu_seqlens else {
            return Ok(Sequences {
                spans: (0..dims.batch).map(|b| (b, 0, t)).collect(),
            });
        };
        if dims.batch != 1 {
            return Err(ShapeError::VarlenBatch { b: dims.batch });
        }
        let bad = |why| ShapeError::BadCuSeqlens {
            found: cu.to_vec(),
            why,
            t,
        };
        if cu.len() < 2 {
            return Err(bad(
                "it needs at least two entries (N+1 offsets for N >= 1 sequences)",
            ));
        }
        if cu[0] != 0 {
            return Err(bad("the first offset is not 0"));
        }
        if cu.windows(2).any(|w| w[1] < w[0]) {
            return Err(bad("the offsets decrease"));
        }
        if cu[cu.len() - 1] != t as i64 {
            return Err(bad("the last offset is not T"));
        }
        Ok(Sequences {
            spans: cu
                .windows(2)
                .map(|w| (0, w[0] as usize, w[1] as usize))
                .collect(),
        })
    }

    /// N, the number of sequences (rows of h0 and the final state).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are no sequences (never, for validated dims).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Per-call options shared by the reference and the runtime.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Overrides the spec's scale for this call; like [`crate::Scale::Value`], a positive finite
    /// number (anything else is an error, not a NaN output).
    pub scale: Option<f64>,
    /// Varlen offsets `[N+1]` over the packed T (B must be 1).
    pub cu_seqlens: Option<Vec<i64>>,
    /// Return the final state `[N, HV, K, V]`.
    pub output_final_state: bool,
}
