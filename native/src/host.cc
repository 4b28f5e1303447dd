// Host-safety calls Node lacks: mlockall and prctl(PR_SET_IO_FLUSHER). A server that holds
// the swap of the host it runs on must not itself be paged out, nor have its allocations
// wait on reclaim that needs its own I/O. Each call returns 0 or the errno it failed with;
// src/native/host.ts turns errnos into messages and decides policy (e.g. when not to lock).
// The OOM score is a plain file write and lives in TypeScript.
//
// Locked memory and V8: V8 releases heap and code pages it no longer needs by making them
// inaccessible and discarding them with madvise(MADV_DONTNEED), and aborts the process when
// that fails. On locked memory it always fails (EINVAL). So before locking, the node
// executable's GOT entries for madvise and mprotect are pointed at two wrappers here:
//  - madvise: on EINVAL for a discard, unlock the range (V8 has just made it inaccessible
//    and is giving it up) and discard again;
//  - mprotect: when a range becomes accessible again (V8 reusing a released page), lock it
//    again, lazily (MLOCK_ONFAULT), so reused pages stay covered.
// Only calls made from the node executable (V8, libuv, node itself) go through its GOT;
// libraries keep their own. That is where the discards come from.
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <napi.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>

// Older C libraries lack these; the values are the kernel's (include/uapi/linux/prctl.h,
// mman-common.h), stable ABI.
#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif
#ifndef PR_GET_IO_FLUSHER
#define PR_GET_IO_FLUSHER 58
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif

namespace {

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

using MadviseFn = int (*)(void*, size_t, int);
using MprotectFn = int (*)(void*, size_t, int);
MadviseFn real_madvise = nullptr;
MprotectFn real_mprotect = nullptr;
// Set once memory is locked: only then do the wrappers do anything beyond the real call.
std::atomic<bool> relock_enabled{false};
std::atomic<uint64_t> discard_unlock_count{0};

int WrappedMadvise(void* address, size_t length, int advice) {
  int result = real_madvise(address, length, advice);
  bool discard = advice == MADV_DONTNEED || advice == MADV_FREE;
  if (result != 0 && errno == EINVAL && discard && munlock(address, length) == 0) {
    discard_unlock_count.fetch_add(1, std::memory_order_relaxed);
    result = real_madvise(address, length, advice);
  }
  return result;
}

int WrappedMprotect(void* address, size_t length, int prot) {
  int result = real_mprotect(address, length, prot);
  if (result == 0 && prot != PROT_NONE && relock_enabled.load(std::memory_order_relaxed)) {
    int saved = errno;
    // Best effort: a failure leaves the range unlocked, never breaks the caller.
    syscall(SYS_mlock2, address, length, MLOCK_ONFAULT);
    errno = saved;
  }
  return result;
}

struct HookState {
  int patched_count;
  int error;
};

// Reads a dynamic-section pointer; glibc relocates most of them in place, but not all.
uintptr_t DynPtr(const dl_phdr_info* info, ElfW(Addr) value) {
  return value < info->dlpi_addr ? info->dlpi_addr + value : value;
}

// Points one GOT slot at `target`, lifting RELRO protection for the write.
int PatchSlot(uintptr_t slot, void* target) {
  long page_bytes = sysconf(_SC_PAGESIZE);
  uintptr_t page = slot & ~static_cast<uintptr_t>(page_bytes - 1);
  void* page_address = reinterpret_cast<void*>(page);
  if (mprotect(page_address, page_bytes, PROT_READ | PROT_WRITE) != 0) return errno;
  std::memcpy(reinterpret_cast<void*>(slot), &target, sizeof target);
  // Leave it read-only again, as RELRO had it (a writable GOT would also work, but weaker).
  mprotect(page_address, page_bytes, PROT_READ);
  return 0;
}

void PatchRelocations(const dl_phdr_info* info, const ElfW(Rela) * relocations, size_t bytes,
                      const ElfW(Sym) * symbols, const char* names, HookState* state) {
  for (size_t i = 0; i < bytes / sizeof(ElfW(Rela)); i++) {
    const ElfW(Rela)& r = relocations[i];
    uint32_t type = ELF64_R_TYPE(r.r_info);
    if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT) continue;
    const char* name = names + symbols[ELF64_R_SYM(r.r_info)].st_name;
    void* target = nullptr;
    if (std::strcmp(name, "madvise") == 0) target = reinterpret_cast<void*>(WrappedMadvise);
    if (std::strcmp(name, "mprotect") == 0) target = reinterpret_cast<void*>(WrappedMprotect);
    if (target == nullptr) continue;
    int error = PatchSlot(info->dlpi_addr + r.r_offset, target);
    if (error != 0) state->error = error;
    else state->patched_count++;
  }
}

// dl_iterate_phdr visits the main program first; patch it and stop.
int PatchMainProgram(dl_phdr_info* info, size_t, void* data) {
  auto* state = static_cast<HookState*>(data);
  const ElfW(Dyn)* dynamic = nullptr;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) {
      dynamic = reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    }
  }
  if (dynamic == nullptr) return 1;
  const ElfW(Sym)* symbols = nullptr;
  const char* names = nullptr;
  const ElfW(Rela)* plt = nullptr;
  const ElfW(Rela)* rela = nullptr;
  size_t plt_bytes = 0, rela_bytes = 0;
  for (const ElfW(Dyn)* d = dynamic; d->d_tag != DT_NULL; d++) {
    uintptr_t pointer = DynPtr(info, d->d_un.d_ptr);
    switch (d->d_tag) {
      case DT_SYMTAB: symbols = reinterpret_cast<const ElfW(Sym)*>(pointer); break;
      case DT_STRTAB: names = reinterpret_cast<const char*>(pointer); break;
      case DT_JMPREL: plt = reinterpret_cast<const ElfW(Rela)*>(pointer); break;
      case DT_PLTRELSZ: plt_bytes = d->d_un.d_val; break;
      case DT_RELA: rela = reinterpret_cast<const ElfW(Rela)*>(pointer); break;
      case DT_RELASZ: rela_bytes = d->d_un.d_val; break;
      default: break;
    }
  }
  if (symbols == nullptr || names == nullptr) return 1;
  if (plt != nullptr) PatchRelocations(info, plt, plt_bytes, symbols, names, state);
  if (rela != nullptr) PatchRelocations(info, rela, rela_bytes, symbols, names, state);
  return 1;
}

// installDiscardHook(): number of GOT slots now pointing at the wrappers (0: none found), or
// -errno when a slot could not be written. Idempotent.
Napi::Value InstallDiscardHook(const Napi::CallbackInfo& info) {
  static HookState state{0, 0};
  static bool installed = false;
  if (!installed) {
    installed = true;
    real_madvise = &::madvise;
    real_mprotect = &::mprotect;
    dl_iterate_phdr(PatchMainProgram, &state);
  }
  return Napi::Number::New(info.Env(), state.error != 0 ? -state.error : state.patched_count);
}

// discardUnlockCount(): how many discards of locked ranges the madvise wrapper unlocked.
Napi::Value DiscardUnlockCount(const Napi::CallbackInfo& info) {
  uint64_t count = discard_unlock_count.load(std::memory_order_relaxed);
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

// Bits of mlockAll's flags argument, as MLOCK_* in src/native/host.ts.
constexpr uint32_t kLockCurrent = 1, kLockFuture = 2, kLockOnFault = 4;

int ErrnoOf(int result) { return result == 0 ? 0 : errno; }

// mlockAll(flags: number): errno. Locks every mapping (current, future, lazily on fault).
Napi::Value MlockAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "mlockAll(flags: number)").ThrowAsJavaScriptException();
    return env.Null();
  }
  uint32_t flags = info[0].As<Napi::Number>().Uint32Value();
  int mcl = 0;
  if (flags & kLockCurrent) mcl |= MCL_CURRENT;
  if (flags & kLockFuture) mcl |= MCL_FUTURE;
  if (flags & kLockOnFault) mcl |= MCL_ONFAULT;
  int error = ErrnoOf(mlockall(mcl));
  if (error == 0 && (flags & kLockFuture)) relock_enabled.store(true);
  return Napi::Number::New(env, error);
}

// munlockAll(): errno. Undoes mlockAll, for tests and for a failed start-up.
Napi::Value MunlockAll(const Napi::CallbackInfo& info) {
  relock_enabled.store(false);
  return Napi::Number::New(info.Env(), ErrnoOf(munlockall()));
}

// setIoFlusher(on: boolean): errno. Marks the calling thread (the main thread) and the
// threads it creates afterwards; threads that already exist keep their flags.
Napi::Value SetIoFlusher(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsBoolean()) {
    Napi::TypeError::New(env, "setIoFlusher(on: boolean)").ThrowAsJavaScriptException();
    return env.Null();
  }
  unsigned long on = info[0].As<Napi::Boolean>().Value() ? 1 : 0;
  return Napi::Number::New(env, ErrnoOf(prctl(PR_SET_IO_FLUSHER, on, 0, 0, 0)));
}

// getIoFlusher(): 0 or 1 for the calling thread, or -errno.
Napi::Value GetIoFlusher(const Napi::CallbackInfo& info) {
  int result = prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0);
  return Napi::Number::New(info.Env(), result < 0 ? -errno : result);
}

// punchHole(fd: number, offset: number, length: number): errno. Frees the file blocks of a
// range without changing the file's size (reads of it then return zeros): the page store
// gives dead segment bytes back to the filesystem in place, which works on a full disk where
// copying live records out first cannot. EOPNOTSUPP on filesystems without hole punching.
Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "punchHole(fd, offset, length)").ThrowAsJavaScriptException();
    return env.Null();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  off_t offset = static_cast<off_t>(info[1].As<Napi::Number>().Int64Value());
  off_t length = static_cast<off_t>(info[2].As<Napi::Number>().Int64Value());
  int result = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
  return Napi::Number::New(env, ErrnoOf(result));
}

}  // namespace

void RegisterHost(Napi::Env env, Napi::Object exports) {
  exports.Set("mlockAll", Napi::Function::New(env, MlockAll, "mlockAll"));
  exports.Set("munlockAll", Napi::Function::New(env, MunlockAll, "munlockAll"));
  exports.Set("installDiscardHook",
              Napi::Function::New(env, InstallDiscardHook, "installDiscardHook"));
  exports.Set("discardUnlockCount",
              Napi::Function::New(env, DiscardUnlockCount, "discardUnlockCount"));
  exports.Set("setIoFlusher", Napi::Function::New(env, SetIoFlusher, "setIoFlusher"));
  exports.Set("getIoFlusher", Napi::Function::New(env, GetIoFlusher, "getIoFlusher"));
  exports.Set("punchHole", Napi::Function::New(env, PunchHole, "punchHole"));
}
