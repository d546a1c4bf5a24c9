// A SIMT emulator for kernels/emilio.metal: runs the kernels' own source, compiled as C++ against
// metal_stdlib_stub.h, on the CPU, so the index arithmetic, tiling, barriers and SIMD-group
// reductions are exercised on a machine without an Apple GPU.
//
// Build (emilio-op's tests do this):
//   c++ -std=c++17 -O1 -ffp-contract=off -fno-strict-aliasing -Wno-attributes -pthread
//       [-fsanitize=address] kernels/check/emulate.cpp -o emilio-emulate
//
// Input: a manifest (argv[1]) in the form emilio-op/src/metal/emulate.rs writes, one item a line:
//   buffer ID BYTES PATH|-          a buffer, filled from PATH or with 0xFF bytes (NaN patterns,
//                                   so that reading memory no kernel wrote shows up)
//   dispatch KERNEL GX GY GZ TX TY TZ
//   u32 V | u32s N V... | buf ID OFFSET     the dispatch's arguments, in binding order
//   end
//   output ID PATH                  write buffer ID to PATH after all dispatches
//
// Execution model: dispatches run in order; threadgroups one after another; within a
// threadgroup, kernels that synchronise (threadgroup_barrier, simd_sum, simd_all) run one OS
// thread per GPU thread, the others run their threads in sequence. SIMD-groups are 32
// consecutive threads of a threadgroup, as on Apple GPUs. Every buffer is its own heap block of
// its exact size, so an AddressSanitizer build reports any access outside a buffer.
//
// What this does not model: Metal's compiler and the GPU's arithmetic (subnormal handling,
// conversion rounding), memory-ordering beyond the barriers, and the hardware's summation order
// inside simd_sum (emulated as +0.0 + lane 0 + lane 1 + ... + lane 31).

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "metal_stdlib_stub.h"

#include "../emilio.metal"

// The stub's qualifiers must not leak into the driver (std::thread!).
#undef kernel
#undef device
#undef constant
#undef thread
#undef threadgroup

namespace {

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

struct SimdGroup {
    explicit SimdGroup(size_t lanes) : lanes(lanes), bar(lanes) {}
    size_t lanes;
    Barrier bar;
    float f[32];
    bool b[32];
};

struct ThreadCtx {
    Barrier *group_bar = nullptr;
    SimdGroup *sg = nullptr;
    uint lane = 0;
};

thread_local ThreadCtx ctx;

}  // namespace

float emilio_emu_simd_sum(float x) {
    if (!ctx.sg) fail("simd_sum called by a kernel run without SIMD-groups");
    SimdGroup &s = *ctx.sg;
    s.f[ctx.lane] = x;
    s.bar.wait();
    // Seeded with +0.0, as a hardware reduction may be: then a sum of -0.0 terms comes out
    // +0.0, and a kernel that needs the IEEE sign of an all-zero sum must restore it itself.
    float sum = 0.0f;
    for (size_t i = 0; i < s.lanes; ++i) sum += s.f[i];
    s.bar.wait();  // nobody overwrites f[] before every lane has read it
    return sum;
}

bool emilio_emu_simd_all(bool x) {
    if (!ctx.sg) fail("simd_all called by a kernel run without SIMD-groups");
    SimdGroup &s = *ctx.sg;
    s.b[ctx.lane] = x;
    s.bar.wait();
    bool all = true;
    for (size_t i = 0; i < s.lanes; ++i) all = all && s.b[i];
    s.bar.wait();
    return all;
}

void emilio_emu_threadgroup_barrier() {
    if (!ctx.group_bar) fail("threadgroup_barrier called by a kernel run without a threadgroup");
    ctx.group_bar->wait();
}

namespace {

// ---- dispatch description --------------------------------------------------------------------

struct Arg {
    enum Kind { U32, U32S, BUF } kind;
    uint value = 0;
    std::vector<uint> values;
    int buf = -1;
    size_t offset = 0;
};

std::map<int, std::vector<unsigned char>> buffers;

struct Args {
    const std::string *kernel;
    std::vector<Arg> list;

    const Arg &at(size_t i, Arg::Kind kind) const {
        if (i >= list.size()) fail(*kernel + ": missing argument " + std::to_string(i));
        if (list[i].kind != kind) fail(*kernel + ": argument " + std::to_string(i) + " has the wrong kind");
        return list[i];
    }
    uint u32(size_t i) const { return at(i, Arg::U32).value; }
    std::vector<uint> u32s(size_t i) const { return at(i, Arg::U32S).values; }
    template <typename T>
    T *ptr(size_t i) const {
        const Arg &a = at(i, Arg::BUF);
        auto it = buffers.find(a.buf);
        if (it == buffers.end()) fail(*kernel + ": unknown buffer " + std::to_string(a.buf));
        if (a.offset > it->second.size() || a.offset % alignof(T) != 0)
            fail(*kernel + ": bad offset " + std::to_string(a.offset) + " into buffer " + std::to_string(a.buf));
        return reinterpret_cast<T *>(it->second.data() + a.offset);
    }
};

struct Pos {
    uint3 grid;   // thread_position_in_grid
    uint3 group;  // threadgroup_position_in_grid
    uint lid;     // thread_index_in_threadgroup
    uint sg;      // simdgroup_index_in_threadgroup
    uint lane;    // thread_index_in_simdgroup
};

struct Kernel {
    bool synchronises;
    // Called once per dispatch; returns the per-thread body (arguments bound).
    std::function<std::function<void(const Pos &)>(const Args &)> bind;
};

std::map<std::string, Kernel> registry() {
    std::map<std::string, Kernel> r;

#define EMU_SPLIT(SUFFIX, IO)                                                                   \
    r["emilio_ln_split_contiguous_" #SUFFIX] = {false, [](const Args &a) {                      \
        uint count = a.u32(0);                                                                  \
        auto src = a.ptr<IO::storage>(1);                                                       \
        auto logs = a.ptr<float>(2);                                                            \
        auto masks = a.ptr<uint>(3);                                                            \
        return std::function<void(const Pos &)>([=](const Pos &p) mutable {                     \
            emilio_ln_split_contiguous_##SUFFIX(count, src, logs, masks, p.grid.x);             \
        });                                                                                     \
    }};                                                                                         \
    r["emilio_ln_split_strided_" #SUFFIX] = {false, [](const Args &a) {                         \
        uint count = a.u32(0), rank = a.u32(1);                                                 \
        auto dims = std::make_shared<std::vector<uint>>(a.u32s(2));                             \
        auto strides = std::make_shared<std::vector<uint>>(a.u32s(3));                          \
        if (dims->size() != rank || strides->size() != rank)                                    \
            fail("emilio_ln_split_strided_" #SUFFIX ": rank and dims/strides disagree");        \
        auto src = a.ptr<IO::storage>(4);                                                       \
        auto logs = a.ptr<float>(5);                                                            \
        auto masks = a.ptr<uint>(6);                                                            \
        return std::function<void(const Pos &)>([=](const Pos &p) mutable {                     \
            emilio_ln_split_strided_##SUFFIX(count, rank, dims->data(), strides->data(), src,   \
                                             logs, masks, p.grid.x);                            \
        });                                                                                     \
    }};
    EMU_SPLIT(f32, emilio_f32)
    EMU_SPLIT(f16, emilio_f16)
    EMU_SPLIT(bf16, emilio_bf16)

#define EMU_WEIGHT(NAME, OUT, MAG, CALL)                                                        \
    r[NAME] = {true, [](const Args &a) {                                                        \
        uint m = a.u32(0), n = a.u32(1), k = a.u32(2);                                          \
        auto la = a.ptr<float>(3);                                                              \
        auto sa = a.ptr<uint>(4);                                                               \
        auto mags = a.ptr<MAG::storage>(5);                                                     \
        auto signs = a.ptr<uint>(6);                                                            \
        auto y = a.ptr<OUT::storage>(7);                                                        \
        return std::function<void(const Pos &)>([=](const Pos &p) mutable { CALL; });           \
    }};
#define EMU_GEMV(SUFFIX, OUT, MAG)                                                              \
    EMU_WEIGHT("emilio_gemv_" #SUFFIX, OUT, MAG,                                                \
               emilio_gemv_##SUFFIX(m, n, k, la, sa, mags, signs, y, p.group.x, p.sg, p.lane))
#define EMU_GEMM_W(SUFFIX, OUT, MAG)                                                            \
    EMU_WEIGHT("emilio_gemm_w_" #SUFFIX, OUT, MAG,                                              \
               emilio_gemm_w_##SUFFIX(m, n, k, la, sa, mags, signs, y, p.group, p.lid))
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
        uint m = a.u32(0), n = a.u32(1), k = a.u32(2), bstride = a.u32(3);                      \
        auto la = a.ptr<float>(4);                                                              \
        auto sa = a.ptr<uint>(5);                                                               \
        auto lb = a.ptr<float>(6);                                                              \
        auto sb = a.ptr<uint>(7);                                                               \
        auto y = a.ptr<OUT::storage>(8);                                                        \
        return std::function<void(const Pos &)>([=](const Pos &p) mutable {                     \
            emilio_gemm_a_##SUFFIX(m, n, k, bstride, la, sa, lb, sb, y, p.group, p.lid);        \
        });                                                                                     \
    }};
    EMU_GEMM_A(f32, emilio_f32)
    EMU_GEMM_A(f16, emilio_f16)
    EMU_GEMM_A(bf16, emilio_bf16)
    return r;
}

void run_dispatch(const Kernel &kernel, const Args &args, const uint groups[3],
                  const uint threads[3]) {
    const uint per_group = threads[0] * threads[1] * threads[2];
    if (per_group == 0 || per_group > 1024) fail(*args.kernel + ": bad threadgroup size");
    auto body = kernel.bind(args);
    const size_t total = size_t(groups[0]) * groups[1] * groups[2];
    auto pos = [&](size_t group, uint lid) {
        const uint gx = uint(group % groups[0]);
        const uint gy = uint((group / groups[0]) % groups[1]);
        const uint gz = uint(group / (size_t(groups[0]) * groups[1]));
        const uint tx = lid % threads[0];
        const uint ty = (lid / threads[0]) % threads[1];
        const uint tz = lid / (threads[0] * threads[1]);
        Pos p;
        p.group = {gx, gy, gz};
        p.grid = {gx * threads[0] + tx, gy * threads[1] + ty, gz * threads[2] + tz};
        p.lid = lid;
        p.sg = lid / 32;
        p.lane = lid % 32;
        return p;
    };
    if (!kernel.synchronises) {
        ctx = ThreadCtx{};
        for (size_t g = 0; g < total; ++g)
            for (uint lid = 0; lid < per_group; ++lid) body(pos(g, lid));
        return;
    }
    // One OS thread per GPU thread of a threadgroup, reused for every threadgroup in turn: all
    // of them finish a threadgroup (the end barrier) before any starts the next, so the static
    // threadgroup arrays are never shared by two threadgroups.
    Barrier group_bar(per_group), end_bar(per_group);
    std::vector<std::unique_ptr<SimdGroup>> sgs;
    for (uint s = 0; s * 32 < per_group; ++s)
        sgs.emplace_back(new SimdGroup(std::min<uint>(32, per_group - s * 32)));
    std::vector<std::thread> pool;
    pool.reserve(per_group);
    for (uint lid = 0; lid < per_group; ++lid) {
        pool.emplace_back([&, lid] {
            ctx.group_bar = &group_bar;
            ctx.sg = sgs[lid / 32].get();
            ctx.lane = lid % 32;
            for (size_t g = 0; g < total; ++g) {
                body(pos(g, lid));
                end_bar.wait();
            }
        });
    }
    for (auto &t : pool) t.join();
}

std::vector<unsigned char> read_file(const std::string &path, size_t bytes) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot read " + path);
    std::vector<unsigned char> data(bytes);
    f.read(reinterpret_cast<char *>(data.data()), static_cast<std::streamsize>(bytes));
    if (static_cast<size_t>(f.gcount()) != bytes) fail(path + " is shorter than " + std::to_string(bytes) + " bytes");
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
            buffers[id] = path == "-" ? std::vector<unsigned char>(bytes, 0xff) : read_file(path, bytes);
        } else if (word == "dispatch") {
            std::string name;
            uint groups[3], threads[3];
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
            run_dispatch(it->second, args, groups, threads);
        } else if (word == "output") {
            int id;
            std::string path;
            manifest >> id >> path;
            std::ofstream out(path, std::ios::binary);
            const auto &b = buffers.at(id);
            out.write(reinterpret_cast<const char *>(b.data()), static_cast<std::streamsize>(b.size()));
            if (!out) fail("cannot write " + path);
        } else {
            fail("unknown manifest item " + word);
        }
    }
    return 0;
}
