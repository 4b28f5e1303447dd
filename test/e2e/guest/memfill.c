/*
 * memfill: the workload of diffswap's guest test. Runs as a static binary inside a tiny
 * guest whose only swap device is a diffswap (or nbdkit) export.
 *
 * It maps several times the guest's RAM, fills every 4 KiB page with content shaped like
 * real memory (zero pages, pages repeated many times, near-copies of those, text, random
 * bytes), reads every page back and checks it, overwrites everything with a second
 * generation and checks again in a scattered order. Each page's content is a pure function
 * of (page index, generation), so nothing but the arithmetic is kept to verify it: the
 * whole mapping must travel through swap and come back intact.
 *
 * Output (serial console), one line per phase and one final line the test parses:
 *   DIFFSWAP-GUEST-PHASE <name> gen=<g> ms=<elapsed>
 *   DIFFSWAP-GUEST-RESULT <ok|FAIL> pages=<n> checked=<n> errors=<n> ms=<total>
 *
 * Usage: memfill <MiB to map>
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE_BYTES 4096u
#define WORDS_PER_PAGE (PAGE_BYTES / 8u)
/* Distinct "library" pages that repeated and near-repeated pages copy. */
#define TEMPLATE_COUNT 16u
/* Mismatches printed in full; the rest are only counted. */
#define ERRORS_PRINTED_MAX 10u
/* Upper bound on the mapping so a typo cannot ask for terabytes. */
#define MAP_MIB_MAX 65536ul

/* Shares of each kind, in percent; they add up to 100. */
enum { SHARE_ZERO = 25, SHARE_REPEATED = 20, SHARE_NEAR = 20, SHARE_TEXT = 25 };
/* SHARE_RANDOM is the rest: 10. */

enum page_kind { KIND_ZERO, KIND_REPEATED, KIND_NEAR, KIND_TEXT, KIND_RANDOM };
static const char *const kind_names[] = {"zero", "repeated", "near", "text", "random"};

static const char *const words[] = {
    "the",    "page",   "swap",   "memory", "kernel", "guest",  "store",   "delta",
    "zero",   "write",  "read",   "block",  "device", "server", "client",  "export",
    "of",     "and",    "to",     "in",     "is",     "that",   "for",     "with",
    "struct", "return", "static", "const",  "int",    "void",   "unsigned", "char",
    "error",  "count",  "buffer", "offset", "length", "index",  "value",   "object",
    "{",      "}",      "(",      ");",     "=",      "==",     "->",      "\n",
};
#define WORD_COUNT (sizeof(words) / sizeof(words[0]))

static uint8_t templates[TEMPLATE_COUNT][PAGE_BYTES];

/* SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014). */
static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* xorshift64 (Marsaglia, "Xorshift RNGs", 2003): cheap enough to fill whole pages. */
static uint64_t xorshift64(uint64_t *state) {
  uint64_t x = *state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *state = x;
}

static uint64_t page_seed(uint64_t page_index, uint64_t generation) {
  uint64_t state = page_index * 0x100000001b3ull + generation * 0x9e3779b97f4a7c15ull;
  uint64_t seed = splitmix64(&state);
  return seed != 0 ? seed : 1; /* xorshift64 never leaves state 0 */
}

/*
 * Template pages look like heap and stack memory: pointers into one region, small integers,
 * flags and zero padding, so that they compress moderately and near-copies delta well.
 */
static void build_templates(void) {
  for (unsigned t = 0; t < TEMPLATE_COUNT; t++) {
    uint64_t state = 0x5eed0000ull + t;
    uint64_t *page = (uint64_t *)templates[t];
    for (unsigned w = 0; w < WORDS_PER_PAGE; w++) {
      uint64_t r = splitmix64(&state);
      switch (r & 3) {
        case 0: page[w] = 0x00007f0000000000ull | ((r >> 8) & 0xffffff0ull); break;
        case 1: page[w] = (r >> 16) & 0xff; break;
        case 2: page[w] = 0; break;
        default: page[w] = r >> 40; break;
      }
    }
  }
}

static enum page_kind kind_of(uint64_t seed) {
  unsigned share = (unsigned)(seed % 100);
  if (share < SHARE_ZERO) return KIND_ZERO;
  share -= SHARE_ZERO;
  if (share < SHARE_REPEATED) return KIND_REPEATED;
  share -= SHARE_REPEATED;
  if (share < SHARE_NEAR) return KIND_NEAR;
  share -= SHARE_NEAR;
  if (share < SHARE_TEXT) return KIND_TEXT;
  return KIND_RANDOM;
}

static void fill_text(uint8_t *page, uint64_t state) {
  unsigned at = 0;
  while (at < PAGE_BYTES) {
    const char *word = words[xorshift64(&state) % WORD_COUNT];
    size_t length = strlen(word);
    for (size_t i = 0; i < length && at < PAGE_BYTES; i++) page[at++] = (uint8_t)word[i];
    if (at < PAGE_BYTES) page[at++] = ' ';
  }
}

/* Writes the content of (page_index, generation) into page; returns its kind. */
static enum page_kind make_page(uint8_t *page, uint64_t page_index, uint64_t generation) {
  uint64_t seed = page_seed(page_index, generation);
  enum page_kind kind = kind_of(seed);
  uint64_t state = seed;
  switch (kind) {
    case KIND_ZERO:
      memset(page, 0, PAGE_BYTES);
      break;
    case KIND_REPEATED:
      memcpy(page, templates[(seed >> 8) % TEMPLATE_COUNT], PAGE_BYTES);
      break;
    case KIND_NEAR: {
      /* A template with a few words changed, like an object whose counters moved. */
      memcpy(page, templates[(seed >> 8) % TEMPLATE_COUNT], PAGE_BYTES);
      unsigned changes = 1 + (unsigned)((seed >> 16) % 8);
      for (unsigned i = 0; i < changes; i++) {
        uint64_t r = xorshift64(&state);
        uint64_t value = page_index ^ r;
        memcpy(page + (r >> 32) % WORDS_PER_PAGE * 8, &value, 8);
      }
      break;
    }
    case KIND_TEXT:
      fill_text(page, state);
      break;
    case KIND_RANDOM:
      for (unsigned w = 0; w < WORDS_PER_PAGE; w++) {
        uint64_t r = xorshift64(&state);
        memcpy(page + w * 8, &r, 8);
      }
      break;
  }
  return kind;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct run {
  uint8_t *map;
  uint64_t page_count;
  uint64_t checked_count;
  uint64_t error_count;
  uint64_t kind_counts[5];
  uint64_t started_ms;
};

static void phase_done(struct run *run, const char *name, uint64_t generation, uint64_t t0) {
  printf("DIFFSWAP-GUEST-PHASE %s gen=%llu ms=%llu\n", name, (unsigned long long)generation,
         (unsigned long long)(now_ms() - t0));
  fflush(stdout);
  (void)run;
}

static void fill(struct run *run, uint64_t generation) {
  uint64_t t0 = now_ms();
  for (uint64_t p = 0; p < run->page_count; p++) {
    enum page_kind kind = make_page(run->map + p * PAGE_BYTES, p, generation);
    if (generation == 1) run->kind_counts[kind]++;
  }
  phase_done(run, "fill", generation, t0);
}

static void check_page(struct run *run, uint64_t p, uint64_t generation) {
  static uint8_t expected[PAGE_BYTES];
  enum page_kind kind = make_page(expected, p, generation);
  run->checked_count++;
  if (memcmp(expected, run->map + p * PAGE_BYTES, PAGE_BYTES) == 0) return;
  if (run->error_count++ < ERRORS_PRINTED_MAX) {
    printf("DIFFSWAP-GUEST-MISMATCH page=%llu gen=%llu kind=%s\n", (unsigned long long)p,
           (unsigned long long)generation, kind_names[kind]);
  }
}

/* Forward order: swap-ins arrive in readahead clusters, the easy case. */
static void verify_forward(struct run *run, uint64_t generation) {
  uint64_t t0 = now_ms();
  for (uint64_t p = 0; p < run->page_count; p++) check_page(run, p, generation);
  phase_done(run, "verify-forward", generation, t0);
}

/*
 * Scattered order: a stride coprime with the page count visits every page once and makes
 * most swap-ins single-page faults far from the previous one, the hard case.
 */
static void verify_scattered(struct run *run, uint64_t generation) {
  uint64_t t0 = now_ms();
  uint64_t stride = 7919; /* prime; the page count is a multiple of 256, never of 7919 */
  uint64_t p = 0;
  for (uint64_t i = 0; i < run->page_count; i++) {
    check_page(run, p, generation);
    p = (p + stride) % run->page_count;
  }
  phase_done(run, "verify-scattered", generation, t0);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: memfill <MiB to map>\n");
    return 2;
  }
  unsigned long map_mib = strtoul(argv[1], NULL, 10);
  if (map_mib == 0 || map_mib > MAP_MIB_MAX) {
    fprintf(stderr, "memfill: MiB must be 1..%lu, got '%s'\n", MAP_MIB_MAX, argv[1]);
    return 2;
  }
  struct run run = {0};
  run.page_count = (uint64_t)map_mib * (1024 * 1024 / PAGE_BYTES);
  run.map = mmap(NULL, run.page_count * PAGE_BYTES, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (run.map == MAP_FAILED) {
    perror("memfill: mmap");
    return 1;
  }
  build_templates();
  run.started_ms = now_ms();
  printf("DIFFSWAP-GUEST-START pages=%llu mib=%lu\n", (unsigned long long)run.page_count, map_mib);
  fflush(stdout);

  fill(&run, 1);
  verify_forward(&run, 1);
  fill(&run, 2);
  verify_scattered(&run, 2);

  printf("DIFFSWAP-GUEST-KINDS zero=%llu repeated=%llu near=%llu text=%llu random=%llu\n",
         (unsigned long long)run.kind_counts[KIND_ZERO],
         (unsigned long long)run.kind_counts[KIND_REPEATED],
         (unsigned long long)run.kind_counts[KIND_NEAR],
         (unsigned long long)run.kind_counts[KIND_TEXT],
         (unsigned long long)run.kind_counts[KIND_RANDOM]);
  printf("DIFFSWAP-GUEST-RESULT %s pages=%llu checked=%llu errors=%llu ms=%llu\n",
         run.error_count == 0 ? "ok" : "FAIL", (unsigned long long)run.page_count,
         (unsigned long long)run.checked_count, (unsigned long long)run.error_count,
         (unsigned long long)(now_ms() - run.started_ms));
  fflush(stdout);
  return run.error_count == 0 ? 0 : 1;
}
