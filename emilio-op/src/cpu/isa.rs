//! The SIMD instruction set the kernels run with, detected once per process.

use std::sync::OnceLock;

/// Instruction sets with a kernel build of their own. Each kernel is one portable body compiled
/// once per variant, so adding an ISA means one `#[target_feature]` wrapper per kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// x86-64 with AVX-512F (plus the AVX2 and FMA it implies): 16 f32 lanes.
    Avx512,
    /// x86-64 with AVX2 and FMA: 8 f32 lanes.
    Avx2,
    /// aarch64: NEON and FMA are baseline, 4 f32 lanes.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
    /// Anything else: the compiler's baseline (SSE2 on x86-64), no FMA.
    Baseline,
}

impl Isa {
    /// The best instruction set of this CPU.
    pub fn get() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(Self::detect)
    }

    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx2") && has!("fma") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            return Isa::Neon;
        }
        #[allow(unreachable_code)]
        Isa::Baseline
    }
}
