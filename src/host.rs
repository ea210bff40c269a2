//! Host-side conversions between f64 (the reference's precision) and the element types kernels
//! read and write, so a check feeds the reference exactly the values the kernel saw.

use linrec_spec::launch::ElementType;

/// Rounds every value to the nearest `dtype` value (round to nearest even), in place.
///
/// ```
/// use linrec::host::round_to;
/// use linrec::spec::launch::ElementType;
/// let mut x = [1.0 + 1.0 / 512.0];
/// round_to(ElementType::Bf16, &mut x);
/// assert_eq!(x[0], 1.0);
/// ```
pub fn round_to(dtype: ElementType, values: &mut [f64]) {
    for v in values {
        *v = match dtype {
            ElementType::Bf16 => half::bf16::from_f64(*v).to_f64(),
            ElementType::F16 => half::f16::from_f64(*v).to_f64(),
            ElementType::F32 => *v as f32 as f64,
        };
    }
}

/// Little-endian bytes of `values` as `dtype` (rounded to nearest even).
pub fn to_bytes(dtype: ElementType, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            ElementType::Bf16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            ElementType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            ElementType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
        }
    }
    out
}

/// Values of little-endian `dtype` bytes, widened to f64 (a trailing partial element is
/// ignored).
pub fn from_bytes(dtype: ElementType, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        ElementType::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        ElementType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        ElementType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly_after_rounding() {
        let mut x: Vec<f64> = (0..100).map(|i| (i as f64 - 50.0) * 0.0371).collect();
        for dtype in ElementType::ALL {
            round_to(dtype, &mut x);
            assert_eq!(from_bytes(dtype, &to_bytes(dtype, &x)), x, "{dtype}");
        }
    }

    #[test]
    fn nan_survives_and_partial_tails_are_ignored() {
        let b = to_bytes(ElementType::Bf16, &[f64::NAN, 1.0]);
        let back = from_bytes(ElementType::Bf16, &b[..3]);
        assert_eq!(back.len(), 1);
        assert!(back[0].is_nan());
    }
}
