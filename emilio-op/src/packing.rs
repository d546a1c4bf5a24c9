//! The one description of how log-domain weights are laid out in memory.
//!
//! Every kernel (CPU, Metal, CUDA) reads weights in this layout, and [`crate::LogWeight`] writes
//! it; keep them in step by changing only this module.
//!
//! - Magnitudes: `ln|w|` for a `(out, in)` weight, row-major, one row per output feature, as
//!   `f32` or `f16` ([`crate::WeightFormat`]).
//! - Signs: one bit per weight, [`SIGN_BITS_PER_WORD`] to a little-endian `u32`. Row `o` owns
//!   [`sign_words_per_row`]`(in)` words; bit `j` (value `1 << j`) of word `q` is the IEEE sign
//!   bit of `w[o, 32·q + j]`. Padding bits past `in` are zero. So lane `j` of a 32-wide SIMD
//!   group reading `k = 32·q + j` finds its sign with `(word >> j) & 1`.

/// Sign bits packed into each `u32` word.
pub const SIGN_BITS_PER_WORD: usize = 32;

/// Number of `u32` sign words per weight row of `in_dim` elements.
pub const fn sign_words_per_row(in_dim: usize) -> usize {
    in_dim.div_ceil(SIGN_BITS_PER_WORD)
}

/// Packs the sign bits of one weight row (given as IEEE sign bits, `true` = negative).
pub fn pack_sign_row(signs: impl IntoIterator<Item = bool>, words: &mut [u32]) {
    words.fill(0);
    for (k, negative) in signs.into_iter().enumerate() {
        words[k / SIGN_BITS_PER_WORD] |= (negative as u32) << (k % SIGN_BITS_PER_WORD);
    }
}

/// The sign bit (0 or 1) of element `k` of a packed row.
#[inline(always)]
pub fn sign_bit(words: &[u32], k: usize) -> u32 {
    (words[k / SIGN_BITS_PER_WORD] >> (k % SIGN_BITS_PER_WORD)) & 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_for_ragged_rows() {
        for len in [1usize, 5, 31, 32, 33, 64, 100] {
            let signs: Vec<bool> = (0..len).map(|k| (k * 7 + len) % 3 == 0).collect();
            let mut words = vec![u32::MAX; sign_words_per_row(len)];
            pack_sign_row(signs.iter().copied(), &mut words);
            for (k, &s) in signs.iter().enumerate() {
                assert_eq!(sign_bit(&words, k), s as u32, "len {len}, k {k}");
            }
            let used = len % SIGN_BITS_PER_WORD;
            if used != 0 {
                assert_eq!(
                    words.last().unwrap() >> used,
                    0,
                    "padding bits of len {len}"
                );
            }
        }
    }
}
