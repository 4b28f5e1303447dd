// Per-page loops called once per batch: fill-word scan, similarity sketch.
#include <napi.h>

void RegisterPages(Napi::Env env, Napi::Object exports) {
  (void)env;
  (void)exports;
}
