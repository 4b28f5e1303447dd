# The writer of the crash loop: several libnbd connections write memory-like pages (zero,
# repeated words, shared duplicates, near-duplicates, random), some with FUA, and FLUSH now and
# then, each with a few requests in flight, until the server is killed under them.
#
# It prints one line per event, under one lock, so the order of lines is an order in which
# the events really happened (a line is printed after libnbd saw the reply, and before the
# request is sent):
#   M <0|1>                         the export offers multi-conn (a FLUSH covers every connection)
#   S <conn> <id> <page> <fua> <h>..  write <id> of pages from <page>, content hashes (sent)
#   A <conn> <id>                   write <id> acknowledged
#   E <conn> <id>                   write <id> answered with an error
#   F <conn> <fid>                  FLUSH <fid> sent
#   G <conn> <fid>                  FLUSH <fid> completed
#   X <conn> <message>              the connection failed (the kill) and its thread ended
# Hashes: the first 24 hex digits of SHA-256 of each 4 KiB page.
# Usage: python3 crash-writer.py URI SEED CONNECTIONS PAGE_COUNT SECONDS_MAX
import hashlib
import random
import sys
import threading
import time

import nbd

PAGE = 4096
# Requests in flight per connection: enough to overlap, few enough to keep pages disjoint.
DEPTH = 8
# Pages per write: mostly one, sometimes a run (the store batches them together).
RUN_PAGES = [1, 1, 1, 2, 4, 16]
FUA_PERCENT = 8
FLUSH_PERCENT = 6
POOL_PAGES = 32
TEXT_BYTES = list(b"abcdefgh \n{}:,0123")

uri = sys.argv[1]
seed = int(sys.argv[2])
connections = int(sys.argv[3])
page_count = int(sys.argv[4])
seconds_max = float(sys.argv[5])
lock = threading.Lock()
pool_rng = random.Random(seed)
# Shared pages (identical across connections and pages) and bases for near-duplicates.
pool = [pool_rng.randbytes(PAGE) for _ in range(POOL_PAGES)]


def emit(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def digest(page):
    return hashlib.sha256(page).hexdigest()[:24]


def make_page(rng):
    kind = rng.randrange(10)
    if kind == 0:
        return bytes(PAGE)
    if kind == 1:
        return rng.randbytes(8) * (PAGE // 8)
    if kind <= 3:
        return pool[rng.randrange(POOL_PAGES)]
    if kind <= 6:
        page = bytearray(pool[rng.randrange(POOL_PAGES)])
        for _ in range(rng.randrange(1, 12)):
            at = rng.randrange(PAGE - 16)
            page[at:at + 16] = rng.randbytes(16)
        return bytes(page)
    # Text-like bytes compress; truly random ones do not.
    if kind <= 8:
        return bytes(rng.choices(TEXT_BYTES, k=PAGE))
    return rng.randbytes(PAGE)


def writer(conn):
    rng = random.Random(seed * 1000 + conn)
    first = conn * page_count // connections
    last = (conn + 1) * page_count // connections
    deadline = time.monotonic() + seconds_max
    handle = nbd.NBD()
    try:
        handle.connect_uri(uri)
        if conn == 0:
            emit(f"M {1 if handle.can_multi_conn() else 0}")
        inflight = {}  # libnbd cookie -> (kind, id, pages, buffer)
        busy = set()
        next_id = 0
        while time.monotonic() < deadline:
            while len(inflight) < DEPTH:
                next_id += 1
                if rng.randrange(100) < FLUSH_PERCENT:
                    emit(f"F {conn} {next_id}")
                    cookie = handle.aio_flush()
                    inflight[cookie] = ("flush", next_id, [], None)
                    continue
                run = rng.choice(RUN_PAGES)
                start = rng.randrange(first, last - run + 1)
                pages = list(range(start, start + run))
                if any(p in busy for p in pages):
                    continue
                data = b"".join(make_page(rng) for _ in pages)
                fua = rng.randrange(100) < FUA_PERCENT
                hashes = " ".join(digest(data[i * PAGE:(i + 1) * PAGE]) for i in range(run))
                emit(f"S {conn} {next_id} {start} {1 if fua else 0} {hashes}")
                buf = nbd.Buffer.from_bytearray(bytearray(data))
                flags = nbd.CMD_FLAG_FUA if fua else 0
                cookie = handle.aio_pwrite(buf, start * PAGE, flags=flags)
                inflight[cookie] = ("write", next_id, pages, buf)
                busy.update(pages)
            handle.poll(-1)
            for cookie in list(inflight):
                kind, ident, pages, _ = inflight[cookie]
                try:
                    if not handle.aio_command_completed(cookie):
                        continue
                    emit(f"{'A' if kind == 'write' else 'G'} {conn} {ident}")
                except nbd.Error:
                    if kind == "write":
                        emit(f"E {conn} {ident}")
                    else:
                        raise
                del inflight[cookie]
                busy.difference_update(pages)
    except nbd.Error as error:
        emit(f"X {conn} {str(error).splitlines()[0][:120]}")
        return
    emit(f"X {conn} deadline")


threads = [threading.Thread(target=writer, args=(c,)) for c in range(connections)]
for thread in threads:
    thread.start()
emit("R")
for thread in threads:
    thread.join()
