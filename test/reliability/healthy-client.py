# A well-behaved libnbd client that keeps writing, flushing and reading back its own data
# while hostile sessions run beside it. Prints "ok COUNT MAX_MS" every few rounds (the slowest
# write+read round so far, in ms) and stops cleanly when its stdin closes.
# Usage: python3 healthy-client.py URI SEED EXPORT_SIZE_BYTES
import random
import sys
import threading
import time

import nbd

ROUND_SIZES = [512, 4096, 4096, 65536, 131072]
REPORT_EVERY_ROUNDS = 20

uri, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = threading.Event()


def watch_stdin():
    sys.stdin.read()
    stop.set()


threading.Thread(target=watch_stdin, daemon=True).start()
handle = nbd.NBD()
handle.connect_uri(uri)
rng = random.Random(seed)
rounds = 0
slowest_ms = 0.0
while not stop.is_set():
    started = time.monotonic()
    length = rng.choice(ROUND_SIZES)
    offset = rng.randrange(0, size - length)
    data = rng.randbytes(length)
    handle.pwrite(data, offset)
    if rounds % 7 == 0:
        handle.flush()
    back = handle.pread(length, offset)
    if back != data:
        print(f"MISMATCH offset={offset} length={length}", flush=True)
        sys.exit(3)
    rounds += 1
    slowest_ms = max(slowest_ms, (time.monotonic() - started) * 1000)
    if rounds % REPORT_EVERY_ROUNDS == 0:
        print(f"ok {rounds} {slowest_ms:.1f}", flush=True)
handle.shutdown()
print(f"done {rounds} {slowest_ms:.1f}", flush=True)
