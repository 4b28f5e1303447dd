// Host-safety calls Node lacks: mlockall, prctl(PR_SET_IO_FLUSHER), OOM score.
#include <napi.h>

void RegisterHost(Napi::Env env, Napi::Object exports) {
  (void)env;
  (void)exports;
}
