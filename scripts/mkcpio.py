#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mkcpio.py SPEC OUT: a gzip-compressed cpio archive (newc, the format of a
Linux initramfs) of the entries SPEC lists, written without root or cpio(1):
every entry is owned by 0:0, mtimes are 0, so the same SPEC and files give
the same bytes. OUT is written atomically (OUT.tmp, then renamed).

SPEC lines ('#' comments and blank lines are skipped; PATH may start with /):
    dir PATH MODE                 a directory (MODE octal, e.g. 755)
    file PATH SRC MODE            a regular file with the contents of SRC
    slink PATH TARGET             a symbolic link
    nod PATH MODE c|b MAJ MIN     a character or block device node

Used by scripts/guest-kernels.sh (the guests' initramfs images) and
tests/guest/pvpanic-pci-guest-test.sh (an extra archive appended to one).
Keep the output byte for byte stable: guest images are compared and cached.
"""
import gzip, os, sys

if len(sys.argv) != 3:
    sys.exit("usage: mkcpio.py SPEC OUT")
spec, out = sys.argv[1:3]
ino = [721]
def entry(f, name, mode, data=b"", rmaj=0, rmin=0, nlink=1):
    ino[0] += 1
    name_b = name.encode() + b"\0"
    hdr = "070701" + "".join("%08X" % v for v in (
        ino[0], mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name_b), 0))
    f.write(hdr.encode() + name_b)
    f.write(b"\0" * (-(110 + len(name_b)) % 4))
    f.write(data)
    f.write(b"\0" * (-len(data) % 4))
with open(out + ".tmp", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    for line in open(spec):
        w = line.split()
        if not w or w[0].startswith("#"):
            continue
        path = w[1].lstrip("/")
        if w[0] == "dir":
            entry(f, path, 0o040000 | int(w[2], 8), nlink=2)
        elif w[0] == "file":
            entry(f, path, 0o100000 | int(w[3], 8), open(w[2], "rb").read())
        elif w[0] == "slink":
            entry(f, path, 0o120777, w[2].encode())
        elif w[0] == "nod":
            kind = 0o020000 if w[3] == "c" else 0o060000
            entry(f, path, kind | int(w[2], 8), rmaj=int(w[4]), rmin=int(w[5]))
        else:
            sys.exit("mkcpio: bad line: " + line)
    entry(f, "TRAILER!!!", 0, nlink=1)
os.replace(out + ".tmp", out)
