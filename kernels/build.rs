//! With the `cuda` feature: compiles `emilio.cu` to PTX, the way candle-kernels builds Candle's
//! own kernels (cudaforge's `KernelBuilder`, so `NVCC`/`CUDA_HOME`, `CUDA_COMPUTE_CAP` and
//! `NVCC_CCBIN` mean the same for both), and writes `$OUT_DIR/ptx.rs` with the PTX as
//! `EMILIO: &str`, which `src/lib.rs` exposes as `PTX`. Without the feature it does nothing.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    if let Err(e) = cuda::build_ptx() {
        // cudaforge's errors name the missing tool or the nvcc diagnostics; add what to do.
        panic!(
            "building kernels/emilio.cu for the `cuda` feature failed: {e}\n\
             emilio needs nvcc (CUDA 12 or 13) on PATH or in CUDA_HOME, and CUDA_COMPUTE_CAP \
             set where nvidia-smi cannot tell the GPU (e.g. 90 for H100); \
             see the README, \"NVIDIA GPUs (CUDA)\""
        );
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::PathBuf;

    pub fn build_ptx() -> cudaforge::Result<()> {
        let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("emilio.cu");
        let ptx = cudaforge::KernelBuilder::new()
            .source_files(vec![source])
            // The kernels' arithmetic is the CPU path's operation for operation: no contraction
            // of a*b+c into one fused rounding, and no fast math (the default).
            .arg("--fmad=false")
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()?;
        ptx.write(out_dir.join("ptx.rs"))
    }
}
