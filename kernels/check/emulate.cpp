// A SIMT emulator for emilio's GPU kernels: runs the kernels' own source, compiled as C++, on
// the CPU, so the index arithmetic, tiling, barriers and SIMD-group / warp exchanges are
// exercised on a machine without an Apple or NVIDIA GPU. One source, two builds:
// - Metal (default): kernels/emilio.metal against metal_stdlib_stub.h;
// - CUDA (-DEMILIO_EMULATE_CUDA): kernels/emilio.cu against cuda_stub.h.
// The two kernel sets have the same names and arguments, so one manifest format (and one
// host-side plan, emilio-op/src/plan.rs) drives both.
//
// Build (kernels/check/src/emulator.rs does this, for emilio-op's plan tests):
//   c++ -std=c++17 -O1 -ffp-contract=off -fno-strict-aliasing -Wno-attributes -pthread
//       [-DEMILIO_EMULATE_CUDA] [-fsanitize=address,alignment]
//       kernels/check/emulate.cpp -o emilio-emulate
//
// Input: a manifest (argv[1]) in the form kernels/check/src/emulator.rs writes, one item a line:
//   buffer ID BYTES PATH|-          a buffer, filled from PATH or with 0xFF bytes (NaN patterns,
//                                   so that reading memory no kernel wrote shows up)
//   dispatch KERNEL GX GY GZ TX TY TZ
//   u32 V | u32s N V... | buf ID OFFSET     the dispatch's arguments, in binding order
//   end
//   output ID PATH                  write buffer ID to PATH after all dispatches
// Output: one line per dispatch on stdout, `ran KERNEL vector_loads N`: the 16-byte loads the
// CUDA kernels made through uint4 (always 0 for Metal), so tests can tell which loop ran.
//
// Execution model: dispatches run in order; threadgroups (CUDA blocks) one after another; within
// one, kernels that synchronise (Metal: threadgroup_barrier, simd_sum, simd_all; CUDA:
// __syncthreads, __shfl_xor_sync) run one OS thread per GPU thread, the others run their threads
// in sequence. SIMD-groups (warps) are 32 consecutive threads of a threadgroup, as on Apple and
// NVIDIA GPUs. Metal kernels get their positions as parameters; CUDA kernels read threadIdx,
// blockIdx and blockDim, thread-locals set before each thread's body. Every buffer is its own
// 16-byte-aligned heap block of its exact size (as device allocations are aligned), so an
// AddressSanitizer build reports any access outside a buffer, and -fsanitize=alignment any
// misaligned vector access.
//
// What this does not model: the Metal and CUDA compilers and the GPUs' arithmetic (subnormal
// handling, conversion rounding, NaN payloads), memory ordering beyond the barriers, and the
// hardware's summation order inside Metal's simd_sum (emulated as +0.0 + lane 0 + ... + lane
// 31). CUDA's warp sums are explicit butterfly code over __shfl_xor_sync, so their order is the
// hardware's, exactly. Divergent barriers or shuffles (undefined on a GPU) hang here.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#if defined(EMILIO_EMULATE_CUDA)
#include "cuda_stub.h"

#include "../emilio.cu"
#else
#include "metal_stdlib_stub.h"

#include "../emilio.metal"

// The stub's qualifiers must not leak into the driver (std::thread!).
#undef kernel
#undef device
#undef constant
#undef thread
#undef threadgroup
#endif

namespace {

typedef unsigned int u32;

[[noreturn]] void fail(const std::string &msg) {
    std::fprintf(stderr, "emilio-emulate: %s\n", msg.c_str());
    std::exit(2);
}

// ---- synchronisation -------------------------------------------------------------------------

class Barrier {
  public:
    explicit Barrier(size_t n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lock(m_);
        const size_t gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return gen != gen_; });
        }
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    size_t n_, count_ = 0, gen_ = 0;
};

// A SIMD-group (warp): its lanes exchange one 32-bit word each through `words`.
struct SimdGroup {
    explicit SimdGroup(size_t lanes) : lanes(lanes), bar(lanes) {}
    size_t lanes;
    Barrier bar;
    u32 words[32];
};

struct ThreadCtx {
    Barrier *group_bar = nullptr;
    SimdGroup *sg = nullptr;
    u32 lane = 0;
};

thread_local ThreadCtx ctx;

// 16-byte loads through the CUDA stub's uint4 in the current dispatch.
std::atomic<size_t> vector_loads{0};

// Every lane of the caller's SIMD-group publishes `word`, waits for the others, computes its
// result from all the published words with `read(group, lane)`, and waits again, so that nobody
// overwrites a word before every lane has read.
template <typename Read>
u32 exchange(const char *what, u32 word, Read read) {
    if (!ctx.sg) fail(std::string(what) + " called by a kernel run without SIMD-groups");
    SimdGroup &s = *ctx.sg;
    s.words[ctx.lane] = word;
    s.bar.wait();
    const u32 out = read(s, ctx.lane);
    s.bar.wait();
    return out;
}

void group_barrier(const char *what) {
    if (!ctx.group_bar) fail(std::string(what) + " called by a kernel run without a threadgroup");
    ctx.group_bar->wait();
}

}  // namespace

// ---- what the stubs declare ------------------------------------------------------------------

#if defined(EMILIO_EMULATE_CUDA)

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local uint3 blockDim;

unsigned int emilio_emu_shfl_xor(unsigned int word, int mask) {
    return exchange("__shfl_xor_sync", word, [mask](const SimdGroup &s, u32 lane) {
        const u32 from = lane ^ u32(mask);
        if (from >= s.lanes)
            fail("__shfl_xor_sync: lane " + std::to_string(lane) + " reads lane " +
                 std::to_string(from) + " of a warp of " + std::to_string(s.lanes));
        return s.words[from];
    });
}

void emilio_emu_syncthreads() { group_barrier("__syncthreads"); }

void emilio_emu_count_vector_load() { vector_loads.fetch_add(1, std::memory_order_relaxed); }

#else

float emilio_emu_simd_sum(float x) {
    // Seeded with +0.0, as a hardware reduction may be: then a sum of -0.0 terms comes out
    // +0.0, and a kernel that needs the IEEE sign of an all-zero sum must restore it itself.
    return as_type<float>(exchange("simd_sum", as_type<u32>(x), [](const SimdGroup &s, u32) {
        float sum = 0.0f;
        for (size_t i = 0; i < s.lanes; ++i) sum += as_type<float>(s.words[i]);
        return as_type<u32>(sum);
    }));
}

bool emilio_emu_simd_all(bool x) {
    return exchange("simd_all", x, [](const SimdGroup &s, u32) {
        return u32(std::all_of(s.words, s.words + s.lanes, [](u32 w) { return w != 0; }));
    });
}

void emilio_emu_threadgroup_barrier() { group_barrier("threadgroup_barrier"); }

#endif

namespace {

// ---- buffers ---------------------------------------------------------------------------------

// A buffer: its own heap block of exactly `size` bytes, 16-byte aligned.
class Buffer {
  public:
    explicit Buffer(size_t size)
        : size_(size), data_(static_cast<unsigned char *>(::operator new(size, std::align_val_t(16)))) {}
    ~Buffer() { ::operator delete(data_, std::align_val_t(16)); }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    unsigned char *data() const { return data_; }
    size_t size() const { return size_; }

  private:
    size_t size_;
    unsigned char *data_;
};

std::map<int, std::unique_ptr<Buffer>> buffers;

// ---- dispatch description --------------------------------------------------------------------

struct Arg {
    enum Kind { U32, U32S, BUF } kind;
    u32 value = 0;
    std::vector<u32> values;
    int buf = -1;
    size_t offset = 0;
};

struct Args {
    const std::string *kernel;
    std::vector<Arg> list;

    const Arg &at(size_t i, Arg::Kind kind) const {
        if (i >= list.size()) fail(*kernel + ": missing argument " + std::to_string(i));
        if (list[i].kind != kind) fail(*kernel + ": argument " + std::to_string(i) + " has the wrong kind");
        return list[i];
    }
    u32 u32_(size_t i) const { return at(i, Arg::U32).value; }
    std::vector<u32> u32s(size_t i) const { return at(i, Arg::U32S).values; }
    template <typename T>
    T *ptr(size_t i) const {
        const Arg &a = at(i, Arg::BUF);
        auto it = buffers.find(a.buf);
        if (it == buffers.end()) fail(*kernel + ": unknown buffer " + std::to_string(a.buf));
        if (a.offset > it->second->size() || a.offset % alignof(T) != 0)
            fail(*kernel + ": bad offset " + std::to_string(a.offset) + " into buffer " + std::to_string(a.buf));
        return reinterpret_cast<T *>(it->second->data() + a.offset);
    }
};

struct Pos {
    uint3 grid;   // Metal thread_position_in_grid
    uint3 group;  // Metal threadgroup_position_in_grid, CUDA blockIdx
    uint3 local;  // CUDA threadIdx
    uint3 size;   // CUDA blockDim
    u32 lid;      // Metal thread_index_in_threadgroup
    u32 sg;       // Metal simdgroup_index_in_threadgroup
    u32 lane;     // Metal thread_index_in_simdgroup
};

// Before each thread's body: CUDA kernels read their position from the built-in variables,
// Metal kernels get it as parameters (the EMU_AT_* lists below).
#if defined(EMILIO_EMULATE_CUDA)
void enter(const Pos &p) {
    threadIdx = p.local;
    blockIdx = p.group;
    blockDim = p.size;
}
#define EMU_AT_SPLIT
#define EMU_AT_GEMV
#define EMU_AT_GEMM
#else
void enter(const Pos &) {}
#define EMU_AT_SPLIT , p.grid.x
#define EMU_AT_GEMV , p.group.x, p.sg, p.lane
#define EMU_AT_GEMM , p.group, p.lid
#endif

typedef std::function<void(const Pos &)> Body;

struct Kernel {
    bool synchronises;
    // Called once per dispatch; returns the per-thread body (arguments bound).
    std::function<Body(const Args &)> bind;
};

// The kernels of both sources: the same names, arguments and binding order.
std::map<std::string, Kernel> registry() {
    std::map<std::string, Kernel> r;

#define EMU_BODY(CALL) Body([=](const Pos &p) mutable { (void)p; CALL; })
#define EMU_SPLIT(SUFFIX, IO)                                                                   \
    r["emilio_ln_split_contiguous_" #SUFFIX] = {false, [](const Args &a) {                      \
        u32 count = a.u32_(0);                                                                  \
        auto src = a.ptr<IO::storage>(1);                                                       \
        auto logs = a.ptr<float>(2);                                                            \
        auto masks = a.ptr<u32>(3);                                                             \
        return EMU_BODY(emilio_ln_split_contiguous_##SUFFIX(count, src, logs, masks EMU_AT_SPLIT)); \
    }};                                                                                         \
    r["emilio_ln_split_strided_" #SUFFIX] = {false, [](const Args &a) {                         \
        u32 count = a.u32_(0), rank = a.u32_(1);                                                \
        auto dims = std::make_shared<std::vector<u32>>(a.u32s(2));                              \
        auto strides = std::make_shared<std::vector<u32>>(a.u32s(3));                           \
        if (dims->size() != rank || strides->size() != rank)                                    \
            fail("emilio_ln_split_strided_" #SUFFIX ": rank and dims/strides disagree");        \
        auto src = a.ptr<IO::storage>(4);                                                       \
        auto logs = a.ptr<float>(5);                                                            \
        auto masks = a.ptr<u32>(6);                                                             \
        return EMU_BODY(emilio_ln_split_strided_##SUFFIX(count, rank, dims->data(),             \
                                                         strides->data(), src, logs, masks     \
                                                         EMU_AT_SPLIT));                        \
    }};
    EMU_SPLIT(f32, emilio_f32)
    EMU_SPLIT(f16, emilio_f16)
    EMU_SPLIT(bf16, emilio_bf16)

#define EMU_WEIGHT(NAME, OUT, MAG, CALL)                                                        \
    r[NAME] = {true, [](const Args &a) {                                                        \
        u32 m = a.u32_(0), n = a.u32_(1), k = a.u32_(2);                                        \
        auto la = a.ptr<float>(3);                                                              \
        auto sa = a.ptr<u32>(4);                                                                \
        auto mags = a.ptr<MAG::storage>(5);                                                     \
        auto signs = a.ptr<u32>(6);                                                             \
        auto y = a.ptr<OUT::storage>(7);                                                        \
        return EMU_BODY(CALL);                                                                  \
    }};
#define EMU_GEMV(SUFFIX, OUT, MAG)                                                              \
    EMU_WEIGHT("emilio_gemv_" #SUFFIX, OUT, MAG,                                                \
               emilio_gemv_##SUFFIX(m, n, k, la, sa, mags, signs, y EMU_AT_GEMV))
#define EMU_GEMM_W(SUFFIX, OUT, MAG)                                                            \
    EMU_WEIGHT("emilio_gemm_w_" #SUFFIX, OUT, MAG,                                              \
               emilio_gemm_w_##SUFFIX(m, n, k, la, sa, mags, signs, y EMU_AT_GEMM))
    EMU_GEMV(f32_f32, emilio_f32, emilio_f32)
    EMU_GEMV(f32_f16, emilio_f32, emilio_f16)
    EMU_GEMV(f16_f32, emilio_f16, emilio_f32)
    EMU_GEMV(f16_f16, emilio_f16, emilio_f16)
    EMU_GEMV(bf16_f32, emilio_bf16, emilio_f32)
    EMU_GEMV(bf16_f16, emilio_bf16, emilio_f16)
    EMU_GEMM_W(f32_f32, emilio_f32, emilio_f32)
    EMU_GEMM_W(f32_f16, emilio_f32, emilio_f16)
    EMU_GEMM_W(f16_f32, emilio_f16, emilio_f32)
    EMU_GEMM_W(f16_f16, emilio_f16, emilio_f16)
    EMU_GEMM_W(bf16_f32, emilio_bf16, emilio_f32)
    EMU_GEMM_W(bf16_f16, emilio_bf16, emilio_f16)

#define EMU_GEMM_A(SUFFIX, OUT)                                                                 \
    r["emilio_gemm_a_" #SUFFIX] = {true, [](const Args &a) {                                    \
        u32 m = a.u32_(0), n = a.u32_(1), k = a.u32_(2), bstride = a.u32_(3);                   \
        auto la = a.ptr<float>(4);                                                              \
        auto sa = a.ptr<u32>(5);                                                                \
        auto lb = a.ptr<float>(6);                                                              \
        auto sb = a.ptr<u32>(7);                                                                \
        auto y = a.ptr<OUT::storage>(8);                                                        \
        return EMU_BODY(emilio_gemm_a_##SUFFIX(m, n, k, bstride, la, sa, lb, sb, y EMU_AT_GEMM)); \
    }};
    EMU_GEMM_A(f32, emilio_f32)
    EMU_GEMM_A(f16, emilio_f16)
    EMU_GEMM_A(bf16, emilio_bf16)
    return r;
}

void run_dispatch(const Kernel &kernel, const Args &args, const u32 groups[3],
                  const u32 threads[3]) {
    const u32 per_group = threads[0] * threads[1] * threads[2];
    if (per_group == 0 || per_group > 1024) fail(*args.kernel + ": bad threadgroup size");
    auto body = kernel.bind(args);
    const size_t total = size_t(groups[0]) * groups[1] * groups[2];
    auto pos = [&](size_t group, u32 lid) {
        const u32 gx = u32(group % groups[0]);
        const u32 gy = u32((group / groups[0]) % groups[1]);
        const u32 gz = u32(group / (size_t(groups[0]) * groups[1]));
        const u32 tx = lid % threads[0];
        const u32 ty = (lid / threads[0]) % threads[1];
        const u32 tz = lid / (threads[0] * threads[1]);
        Pos p;
        p.group = {gx, gy, gz};
        p.local = {tx, ty, tz};
        p.size = {threads[0], threads[1], threads[2]};
        p.grid = {gx * threads[0] + tx, gy * threads[1] + ty, gz * threads[2] + tz};
        p.lid = lid;
        p.sg = lid / 32;
        p.lane = lid % 32;
        return p;
    };
    auto run = [&](size_t group, u32 lid) {
        const Pos p = pos(group, lid);
        enter(p);
        body(p);
    };
    if (!kernel.synchronises) {
        ctx = ThreadCtx{};
        for (size_t g = 0; g < total; ++g)
            for (u32 lid = 0; lid < per_group; ++lid) run(g, lid);
        return;
    }
    // One OS thread per GPU thread of a threadgroup, reused for every threadgroup in turn: all
    // of them finish a threadgroup (the end barrier) before any starts the next, so the static
    // threadgroup arrays are never shared by two threadgroups.
    Barrier group_bar(per_group), end_bar(per_group);
    std::vector<std::unique_ptr<SimdGroup>> sgs;
    for (u32 s = 0; s * 32 < per_group; ++s)
        sgs.emplace_back(new SimdGroup(std::min<u32>(32, per_group - s * 32)));
    std::vector<std::thread> pool;
    pool.reserve(per_group);
    for (u32 lid = 0; lid < per_group; ++lid) {
        pool.emplace_back([&, lid] {
            ctx.group_bar = &group_bar;
            ctx.sg = sgs[lid / 32].get();
            ctx.lane = lid % 32;
            for (size_t g = 0; g < total; ++g) {
                run(g, lid);
                end_bar.wait();
            }
        });
    }
    for (auto &t : pool) t.join();
}

std::unique_ptr<Buffer> read_file(const std::string &path, size_t bytes) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot read " + path);
    std::unique_ptr<Buffer> data(new Buffer(bytes));
    f.read(reinterpret_cast<char *>(data->data()), static_cast<std::streamsize>(bytes));
    if (static_cast<size_t>(f.gcount()) != bytes) fail(path + " is shorter than " + std::to_string(bytes) + " bytes");
    return data;
}

std::unique_ptr<Buffer> poisoned(size_t bytes) {
    std::unique_ptr<Buffer> data(new Buffer(bytes));
    std::memset(data->data(), 0xff, bytes);
    return data;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) fail("usage: emilio-emulate MANIFEST");
    std::ifstream manifest(argv[1]);
    if (!manifest) fail(std::string("cannot read ") + argv[1]);
    const auto kernels = registry();
    std::string word;
    while (manifest >> word) {
        if (word == "buffer") {
            int id;
            size_t bytes;
            std::string path;
            manifest >> id >> bytes >> path;
            buffers[id] = path == "-" ? poisoned(bytes) : read_file(path, bytes);
        } else if (word == "dispatch") {
            std::string name;
            u32 groups[3], threads[3];
            manifest >> name >> groups[0] >> groups[1] >> groups[2] >> threads[0] >> threads[1] >> threads[2];
            auto it = kernels.find(name);
            if (it == kernels.end()) fail("no kernel named " + name);
            Args args{&it->first, {}};
            while (manifest >> word && word != "end") {
                Arg a;
                if (word == "u32") {
                    a.kind = Arg::U32;
                    manifest >> a.value;
                } else if (word == "u32s") {
                    a.kind = Arg::U32S;
                    size_t n;
                    manifest >> n;
                    a.values.resize(n);
                    for (auto &v : a.values) manifest >> v;
                } else if (word == "buf") {
                    a.kind = Arg::BUF;
                    manifest >> a.buf >> a.offset;
                } else {
                    fail("unknown argument kind " + word);
                }
                args.list.push_back(a);
            }
            vector_loads = 0;
            run_dispatch(it->second, args, groups, threads);
            std::printf("ran %s vector_loads %zu\n", name.c_str(), vector_loads.load());
        } else if (word == "output") {
            int id;
            std::string path;
            manifest >> id >> path;
            std::ofstream out(path, std::ios::binary);
            auto it = buffers.find(id);
            if (it == buffers.end()) fail("no buffer " + std::to_string(id) + " to output");
            const Buffer &b = *it->second;
            out.write(reinterpret_cast<const char *>(b.data()), static_cast<std::streamsize>(b.size()));
            if (!out) fail("cannot write " + path);
        } else {
            fail("unknown manifest item " + word);
        }
    }
    return 0;
}
