# Chunked I/O through libnbd for the full-disk and scrub tests. Each chunk holds seeded random
# bytes (incompressible, unique), so any chunk can be written or checked from its number alone.
# Usage: python3 chunk-io.py URI MODE SEED FIRST_CHUNK COUNT [CHUNK_BYTES]
#   write:  write each chunk and FLUSH after it; prints "ok N" once the FLUSH completed, or
#           "err N ERRNO message" at the first failure and stops.
#   verify: read each chunk; prints "match N", "mismatch N BYTES_WRONG" or "err N ERRNO message".
#   trim:   TRIM the chunks and FLUSH; prints "ok N" for the range or "err ...".
import random
import sys

import nbd

uri, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
first, count = int(sys.argv[4]), int(sys.argv[5])
chunk = int(sys.argv[6]) if len(sys.argv) > 6 else 1024 * 1024


def content(n):
    return random.Random(seed * 1_000_003 + n).randbytes(chunk)


def errno_of(error):
    return error.errnum if error.errnum is not None else 0


handle = nbd.NBD()
try:
    handle.connect_uri(uri)
    if mode == "trim":
        handle.trim(count * chunk, first * chunk)
        handle.flush()
        print(f"ok {first}", flush=True)
    for n in range(first, first + count) if mode != "trim" else []:
        try:
            if mode == "write":
                handle.pwrite(content(n), n * chunk)
                handle.flush()
                print(f"ok {n}", flush=True)
            else:
                data = handle.pread(chunk, n * chunk)
                expected = content(n)
                wrong = sum(1 for a, b in zip(data, expected) if a != b) if data != expected else 0
                print(f"match {n}" if wrong == 0 else f"mismatch {n} {wrong}", flush=True)
        except nbd.Error as error:
            print(f"err {n} {errno_of(error)} {str(error).splitlines()[0]}", flush=True)
            if mode == "write":
                break
except nbd.Error as error:
    print(f"err {first} {errno_of(error)} {str(error).splitlines()[0]}", flush=True)
try:
    handle.shutdown()
except nbd.Error:
    pass  # a server that failed may refuse the clean disconnect too
