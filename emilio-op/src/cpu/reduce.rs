//! The one order in which every kernel sums its accumulator lanes.
//!
//! The portable and the intrinsics kernels keep the same lanes and reduce them the same way, so
//! they agree bit for bit; this is that reduction, shared by both.

/// Sums accumulator lanes pairwise (lane `l` takes lane `l + width`, halving the width).
/// `acc.len()` is a power of two; the lanes are overwritten.
#[inline(always)]
pub(crate) fn pairwise_sum<T: Copy + std::ops::Add<Output = T>>(acc: &mut [T]) -> T {
    debug_assert!(acc.len().is_power_of_two());
    let mut width = acc.len();
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] = acc[l] + acc[l + width];
        }
    }
    acc[0]
}
