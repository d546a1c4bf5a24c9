//! The SIMT emulator of the GPU kernels (`kernels/check/emulate.cpp`) and its driver.
//!
//! The emulator is the kernels' own source compiled as C++ against a stub of its platform
//! (`kernels/emilio.metal` with `metal_stdlib_stub.h`; `kernels/emilio.cu` with `cuda_stub.h`,
//! under `-DEMILIO_EMULATE_CUDA`), linked with a driver that runs a sequence of dispatches over
//! byte buffers. What it covers: the kernels' index arithmetic, tiling, barriers, SIMD-group
//! and warp exchanges (CUDA's butterfly sums in the hardware's order, exactly: they are
//! explicit shuffles), which of the CUDA GEMV's loops ran (its 16-byte loads are counted), and
//! their arithmetic as C++ executes it. What it cannot: the Metal and CUDA compilers, the GPUs'
//! own arithmetic, memory ordering beyond the barriers; those need the hardware.
//!
//! Each backend's emulator is built once per test process with the first C++ compiler
//! ([`crate::cxx`]), with AddressSanitizer and the alignment sanitizer where the toolchain has
//! them, so that any access past a buffer, or a misaligned 16-byte load, fails the run. The
//! binary is kept in the temp dir under a hash of its sources, compiler and flags, and reused.
//!
//! A [`Program`] says what to run in the kernels' own terms (kernel names, buffers, `u32`
//! scalars, grids), so this crate knows nothing of the host code that plans it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use emilio_kernels::Backend;

/// A buffer of a [`Program`], bound by its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buffer {
    /// These bytes.
    Data(Vec<u8>),
    /// This many bytes of `0xFF` (NaN patterns, so that reading memory no kernel wrote shows up).
    Poisoned(usize),
}

/// One kernel argument, at the binding index of its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A `u32` scalar.
    U32(u32),
    /// An array of `u32`.
    U32s(Vec<u32>),
    /// Buffer `index` of the program, from byte `offset` on.
    Buffer { index: usize, offset: usize },
}

/// One kernel launch: `groups` threadgroups (blocks) of `threads` threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub kernel: String,
    pub args: Vec<Arg>,
    pub groups: [usize; 3],
    pub threads: [usize; 3],
}

/// What one emulator run executes: dispatches in order over `buffers`, then `buffers[output]`
/// is read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Names the program in failure messages.
    pub label: String,
    pub buffers: Vec<Buffer>,
    pub dispatches: Vec<Dispatch>,
    pub output: usize,
}

/// What one emulator run gives back.
#[derive(Debug, Clone)]
pub struct Ran {
    /// The output buffer.
    pub output: Vec<u8>,
    /// Per dispatch, the 16-byte loads the CUDA kernels made through `uint4` (0 for Metal).
    pub vector_loads: Vec<usize>,
}

/// An emulator binary and the backend whose kernels it runs.
#[derive(Debug)]
pub struct Emulator {
    exe: PathBuf,
    backend: Backend,
}

/// The files an emulator build compiles (the hash of its binary's name covers them).
fn sources(backend: Backend) -> [PathBuf; 3] {
    [
        crate::check_dir().join("emulate.cpp"),
        crate::stub_path(backend),
        crate::source_path(backend),
    ]
}

/// The define that selects the backend in `emulate.cpp`.
fn defines(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Metal => &[],
        Backend::Cuda => &["-DEMILIO_EMULATE_CUDA"],
    }
}

const FLAGS: [&str; 6] = [
    "-std=c++17",
    "-O1",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-Wno-attributes",
    "-pthread",
];

/// Sanitizers, best first: AddressSanitizer and the alignment check, AddressSanitizer alone,
/// none (a toolchain without them still checks everything else).
const SANITIZERS: [&[&str]; 3] = [
    &[
        "-fsanitize=address,alignment",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ],
    &["-fsanitize=address", "-fno-omit-frame-pointer"],
    &[],
];

/// Relative to the workspace, for messages.
fn shown(path: &Path) -> String {
    let root = crate::kernels_dir().parent().unwrap_or(Path::new(""));
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Compiles the emulator of `backend`'s kernels, or reuses the one built from the same
/// sources, compiler and flags (in the temp dir, named by a hash of all of them).
fn build(backend: Backend) -> Option<Emulator> {
    let name = backend.name();
    let cxx = crate::cxx::compiler(&format!("the {name} kernels in the emulator"))?;
    let files = sources(backend);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in &files {
        std::fs::read(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
            .hash(&mut hasher);
    }
    (&cxx, FLAGS, defines(backend), SANITIZERS).hash(&mut hasher);
    let exe = std::env::temp_dir().join(format!(
        "emilio-{}-emulate-{:016x}",
        name.to_lowercase(),
        hasher.finish()
    ));
    if exe.is_file() {
        return Some(Emulator { exe, backend });
    }
    // Built under a private name, then renamed into place: concurrent test processes race
    // harmlessly.
    let building = exe.with_extension(format!("building-{}", std::process::id()));
    let compile = |extra: &[&str]| {
        Command::new(&cxx)
            .args(FLAGS)
            .args(defines(backend))
            .args(extra)
            .arg(&files[0])
            .arg("-o")
            .arg(&building)
            .output()
            .expect("running the C++ compiler")
    };
    let mut last = None;
    for sanitizers in SANITIZERS {
        let out = compile(sanitizers);
        if out.status.success() {
            last = None;
            break;
        }
        last = Some(out);
    }
    if let Some(failed) = last {
        panic!(
            "{cxx} cannot compile {} (with {}):\n{}",
            shown(&files[0]),
            shown(&files[2]),
            String::from_utf8_lossy(&failed.stderr)
        );
    }
    std::fs::rename(&building, &exe).expect("moving the emulator into place");
    Some(Emulator { exe, backend })
}

impl Emulator {
    /// `backend`'s emulator, built on first use in this process; `None` without a C++
    /// compiler (after a note; under `CI=true` that panics instead).
    pub fn get(backend: Backend) -> Option<&'static Emulator> {
        static METAL: OnceLock<Option<Emulator>> = OnceLock::new();
        static CUDA: OnceLock<Option<Emulator>> = OnceLock::new();
        let cell = match backend {
            Backend::Metal => &METAL,
            Backend::Cuda => &CUDA,
        };
        cell.get_or_init(|| build(backend)).as_ref()
    }

    /// The backend whose kernels this emulator runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `program`; panics, naming it and keeping its inputs, if the emulator fails (an
    /// unknown kernel, a bad argument, a sanitizer report).
    pub fn run(&self, program: &Program) -> Ran {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "emilio-emulate-run-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            program.output < program.buffers.len(),
            "{}: output buffer {} of {}",
            program.label,
            program.output,
            program.buffers.len()
        );
        // The manifest emulate.cpp reads, one item a line (its header documents the format).
        let mut manifest = String::new();
        for (i, buffer) in program.buffers.iter().enumerate() {
            manifest += &match buffer {
                Buffer::Data(bytes) => {
                    let path = dir.join(format!("buffer{i}.bin"));
                    std::fs::write(&path, bytes).unwrap();
                    format!("buffer {i} {} {}\n", bytes.len(), path.display())
                }
                Buffer::Poisoned(bytes) => format!("buffer {i} {bytes} -\n"),
            };
        }
        for d in &program.dispatches {
            let [gx, gy, gz] = d.groups;
            let [tx, ty, tz] = d.threads;
            manifest += &format!("dispatch {} {gx} {gy} {gz} {tx} {ty} {tz}\n", d.kernel);
            for a in &d.args {
                manifest += &match a {
                    Arg::U32(v) => format!("u32 {v}\n"),
                    Arg::U32s(v) => {
                        let vs: Vec<String> = v.iter().map(u32::to_string).collect();
                        format!("u32s {} {}\n", v.len(), vs.join(" "))
                    }
                    Arg::Buffer { index, offset } => format!("buf {index} {offset}\n"),
                };
            }
            manifest += "end\n";
        }
        let out_path = dir.join("output.bin");
        manifest += &format!("output {} {}\n", program.output, out_path.display());
        let manifest_path = dir.join("manifest.txt");
        std::fs::write(&manifest_path, manifest).unwrap();
        let run = Command::new(&self.exe)
            .arg(&manifest_path)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .output()
            .expect("running the emulator");
        assert!(
            run.status.success(),
            "the emulator ({}) failed on {} (inputs kept in {}):\n{}",
            self.exe.display(),
            program.label,
            dir.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        // One line per dispatch: `ran KERNEL vector_loads N`.
        let report = String::from_utf8(run.stdout).expect("the emulator reports in UTF-8");
        let vector_loads: Vec<usize> = report
            .lines()
            .map(
                |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                    ["ran", _, "vector_loads", n] => n.parse().expect("a count"),
                    _ => panic!("unexpected emulator report line {line:?}"),
                },
            )
            .collect();
        assert_eq!(vector_loads.len(), program.dispatches.len(), "{report}");
        let output = std::fs::read(&out_path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        Ran {
            output,
            vector_loads,
        }
    }
}
