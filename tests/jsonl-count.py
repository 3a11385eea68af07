#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""jsonl-count.py FILE KEY=VALUE...: count the JSON lines of FILE whose fields
match (VALUE compared as JSON if it parses, else as a string); 0 if FILE is
missing. tests/lib.sh's count/has/has_n."""
import json
import sys

want = []
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    try:
        v = json.loads(v)
    except ValueError:
        pass
    want.append((k, v))
n = 0
try:
    for line in open(sys.argv[1]):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if all(r.get(k) == v for k, v in want):
            n += 1
except FileNotFoundError:
    pass
print(n)
