// diffswap native addon: hot per-page loops (pages.cc) and the host calls Node lacks
// (host.cc). Every export has a TypeScript twin in src/native/ or a clear error there.
#include <napi.h>

void RegisterPages(Napi::Env env, Napi::Object exports);
void RegisterHost(Napi::Env env, Napi::Object exports);

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  RegisterPages(env, exports);
  RegisterHost(env, exports);
  return exports;
}

NODE_API_MODULE(diffswap_native, Init)
