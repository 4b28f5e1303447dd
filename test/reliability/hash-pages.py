# Reads a whole export through libnbd and prints one line per 4 KiB page: the first 24 hex
# digits of its SHA-256, or "EIO" (or the errno name) when the server refuses to read it.
# Reads in large blocks and falls back to single pages only where a block fails.
# Usage: python3 hash-pages.py URI
import hashlib
import sys

import nbd

PAGE = 4096
BLOCK = 256 * 1024

handle = nbd.NBD()
handle.connect_uri(sys.argv[1])
size = handle.get_size()
out = []


def page_line(data):
    return hashlib.sha256(data).hexdigest()[:24]


for start in range(0, size, BLOCK):
    length = min(BLOCK, size - start)
    try:
        data = handle.pread(length, start)
        out.extend(page_line(data[i:i + PAGE]) for i in range(0, length, PAGE))
    except nbd.Error:
        for at in range(start, start + length, PAGE):
            try:
                out.append(page_line(handle.pread(PAGE, at)))
            except nbd.Error as error:
                out.append(error.errno or "EIO")
handle.shutdown()
sys.stdout.write("\n".join(out) + "\n")
