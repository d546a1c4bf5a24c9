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

    /// The best supported ISA, or a narrower one named by `EMILIO_CPU_ISA` (`avx512`, `avx2`,
    /// `neon`, `baseline`) so that tests and benchmarks can run every kernel build on one
    /// machine. A name the CPU does not support is ignored: selecting it would be unsound.
    fn detect() -> Isa {
        let supported = Self::supported();
        let requested = std::env::var("EMILIO_CPU_ISA").ok().and_then(|name| {
            supported
                .iter()
                .copied()
                .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
        });
        requested.unwrap_or(supported[0])
    }

    /// Every ISA this CPU runs, best first; `Baseline` always last.
    fn supported() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx2") && has!("fma") {
                isas.push(Isa::Avx512);
            }
            if has!("avx2") && has!("fma") {
                isas.push(Isa::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        isas.push(Isa::Neon);
        isas.push(Isa::Baseline);
        isas
    }

    /// The name `EMILIO_CPU_ISA` takes, and benchmarks report.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::Baseline => "baseline",
        }
    }
}
