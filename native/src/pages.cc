// Per-page loops called once per batch: the fill-word scan and the similarity sketch.
// Each is the twin of a TypeScript function (src/codec/pages.ts scanPagesTs, src/codec/
// sketch.ts sketchPagesTs) and must give bit-identical results; every constant below mirrors
// one there. The algorithms and their citations are described in sketch.ts. Nothing here
// allocates: callers pass the page buffer and preallocated output arrays.
#include <napi.h>

#include <cstdint>
#include <cstring>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pages.cc reads words as little-endian; add byte swaps for big-endian hosts"
#endif

namespace {

constexpr size_t kPageSize = 4096;
constexpr size_t kFillWordBytes = 8;
constexpr size_t kFeatureCount = 4;  // FEATURE_COUNT in src/codec/types.ts
constexpr size_t kBlockBytes = 64;
constexpr size_t kBlockOffsets[2] = {1216, 2752};
constexpr size_t kSubChunkCount = 8;
constexpr unsigned kSubChunkShift = 9;  // log2(kPageSize / kSubChunkCount)
constexpr size_t kFeaturesPerSuper = kSubChunkCount / 2;
constexpr size_t kHalfPage = kPageSize / 2;
constexpr uint32_t kGearSeed = 0x9e3779b9u;
constexpr uint32_t kBlockSeed = 0x5d1ff00du;
constexpr uint32_t kSuperSeed = 0x2545f491u;
constexpr uint32_t kSlotBlockA = 0, kSlotBlockB = 1, kSlotSuperA = 2, kSlotSuperB = 3;
// Bits of the flags argument of sketchPages.
constexpr uint32_t kSketchBlocks = 1, kSketchSuperFeatures = 2;

inline uint32_t Rotl32(uint32_t x, unsigned r) { return (x << r) | (x >> (32 - r)); }

// MurmurHash3's finaliser and body step (Appleby), as fmix32 / murmurStep in sketch.ts.
inline uint32_t Fmix32(uint32_t h) {
  h = (h ^ (h >> 16)) * 0x85ebca6bu;
  h = (h ^ (h >> 13)) * 0xc2b2ae35u;
  return h ^ (h >> 16);
}

inline uint32_t MurmurStep(uint32_t h, uint32_t k) {
  k = Rotl32(k * 0xcc9e2d51u, 15) * 0x1b873593u;
  return Rotl32(h ^ k, 13) * 5 + 0xe6546b64u;
}

inline uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

struct GearTable {
  uint32_t words[256];
  GearTable() {
    uint32_t state = 0;
    for (auto& word : words) {
      state += kGearSeed;
      word = Fmix32(state);
    }
  }
};
const GearTable kGear;

inline uint32_t TagFeature(uint32_t hash, uint32_t slot) {
  uint32_t feature = (hash >> 2) | (slot << 30);
  return feature == 0 ? 1 : feature;
}

// True when `len` bytes at p are one 8-byte word repeated: equal to themselves shifted by 8.
inline bool Periodic8(const uint8_t* p, size_t len) {
  return std::memcmp(p, p + kFillWordBytes, len - kFillWordBytes) == 0;
}

uint32_t BlockHash(const uint8_t* block) {
  if (Periodic8(block, kBlockBytes)) return 0;
  uint32_t h = kBlockSeed;
  for (size_t at = 0; at < kBlockBytes; at += 4) h = MurmurStep(h, Load32(block + at));
  return Fmix32(h ^ kBlockBytes);
}

void GearMaxima(const uint8_t* page, uint32_t* maxima) {
  constexpr size_t kSubChunkBytes = kPageSize / kSubChunkCount;
  static_assert(kSubChunkBytes == size_t{1} << kSubChunkShift, "sub-chunk size");
  uint32_t fp = 0;
  for (size_t chunk = 0; chunk < kSubChunkCount; chunk++) {
    // The running maximum stays in a register; the hash carries on across sub-chunks,
    // exactly as the TypeScript twin's single loop does.
    const uint8_t* p = page + chunk * kSubChunkBytes;
    uint32_t best = 0;
    for (size_t i = 0; i < kSubChunkBytes; i++) {
      fp = (fp << 1) + kGear.words[p[i]];
      best = fp > best ? fp : best;
    }
    maxima[chunk] = best;
  }
}

uint32_t SuperFeature(const uint32_t* maxima) {
  uint32_t h = kSuperSeed;
  for (size_t i = 0; i < kFeaturesPerSuper; i++) h = MurmurStep(h, maxima[i]);
  return Fmix32(h ^ kFeaturesPerSuper);
}

void SketchPage(const uint8_t* page, uint32_t flags, uint32_t* out) {
  for (size_t i = 0; i < kFeatureCount; i++) out[i] = 0;
  if (flags & kSketchBlocks) {
    uint32_t a = BlockHash(page + kBlockOffsets[0]);
    uint32_t b = BlockHash(page + kBlockOffsets[1]);
    if (a != 0) out[kSlotBlockA] = TagFeature(a, kSlotBlockA);
    if (b != 0) out[kSlotBlockB] = TagFeature(b, kSlotBlockB);
  }
  if (flags & kSketchSuperFeatures) {
    uint32_t maxima[kSubChunkCount];
    GearMaxima(page, maxima);
    const uint8_t* half_b = page + kHalfPage;
    uint32_t a = Periodic8(page, kHalfPage) ? 0 : SuperFeature(maxima);
    uint32_t b = Periodic8(half_b, kHalfPage) ? 0 : SuperFeature(maxima + kFeaturesPerSuper);
    if (a != 0) out[kSlotSuperA] = TagFeature(a, kSlotSuperA);
    if (b != 0) out[kSlotSuperB] = TagFeature(b, kSlotSuperB);
  }
}

// Argument helpers: each throws a JS TypeError/RangeError and returns false on bad input.
bool Fail(const Napi::Env& env, const char* message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return false;
}

bool GetPages(const Napi::CallbackInfo& info, const uint8_t** pages, size_t* page_count) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() !=
                                     napi_uint8_array) {
    return Fail(env, "pages: expected a Buffer");
  }
  if (!info[1].IsNumber()) return Fail(env, "pageCount: expected a number");
  auto src = info[0].As<Napi::Uint8Array>();
  int64_t count = info[1].As<Napi::Number>().Int64Value();
  if (count < 0 || static_cast<uint64_t>(count) > src.ElementLength() / kPageSize) {
    return Fail(env, "pageCount: more pages than the buffer holds");
  }
  *pages = src.Data();
  *page_count = static_cast<size_t>(count);
  return true;
}

// scanPages(src, pageCount, words: BigUint64Array, uniform: Uint8Array): undefined
Napi::Value ScanPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint8_t* pages;
  size_t count;
  if (!GetPages(info, &pages, &count)) return env.Undefined();
  if (!info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array ||
      !info[3].IsTypedArray() ||
      info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Fail(env, "scanPages: expected (Buffer, number, BigUint64Array, Uint8Array)");
    return env.Undefined();
  }
  auto words = info[2].As<Napi::TypedArrayOf<uint64_t>>();
  auto uniform = info[3].As<Napi::Uint8Array>();
  if (words.ElementLength() < count || uniform.ElementLength() < count) {
    Fail(env, "scanPages: output arrays shorter than pageCount");
    return env.Undefined();
  }
  uint64_t* word_out = words.Data();
  uint8_t* uniform_out = uniform.Data();
  for (size_t i = 0; i < count; i++) {
    const uint8_t* page = pages + i * kPageSize;
    bool same = Periodic8(page, kPageSize);
    uniform_out[i] = same ? 1 : 0;
    word_out[i] = same ? Load64(page) : 0;
  }
  return env.Undefined();
}

// sketchPages(src, pageCount, features: Uint32Array, flags: number): undefined
Napi::Value SketchPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint8_t* pages;
  size_t count;
  if (!GetPages(info, &pages, &count)) return env.Undefined();
  if (!info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
      !info[3].IsNumber()) {
    Fail(env, "sketchPages: expected (Buffer, number, Uint32Array, number)");
    return env.Undefined();
  }
  auto features = info[2].As<Napi::Uint32Array>();
  if (features.ElementLength() < count * kFeatureCount) {
    Fail(env, "sketchPages: features array shorter than pageCount * FEATURE_COUNT");
    return env.Undefined();
  }
  uint32_t flags = info[3].As<Napi::Number>().Uint32Value();
  uint32_t* out = features.Data();
  for (size_t i = 0; i < count; i++) {
    SketchPage(pages + i * kPageSize, flags, out + i * kFeatureCount);
  }
  return env.Undefined();
}

}  // namespace

void RegisterPages(Napi::Env env, Napi::Object exports) {
  exports.Set("scanPages", Napi::Function::New(env, ScanPages, "scanPages"));
  exports.Set("sketchPages", Napi::Function::New(env, SketchPages, "sketchPages"));
}
