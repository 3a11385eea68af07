#!/usr/bin/env python3
"""Every `unsafe { ... }` block and `unsafe impl` in the given Rust files
has a `// SAFETY:` comment: on its line, or in the comment lines just above
the statement it is in (up to a blank line or the previous statement).
Prints the places that lack one; exits 1 if there are any."""
import re
import sys

UNSAFE = re.compile(r'\bunsafe\s*\{|^\s*unsafe\s+impl\b')
bad = n = 0
for path in sys.argv[1:]:
    lines = open(path, encoding='utf-8').read().splitlines()
    for i, line in enumerate(lines):
        code = line.split('//', 1)[0]
        if not UNSAFE.search(code):
            continue
        n += 1
        ok = 'SAFETY:' in line
        j = i - 1
        while not ok and j >= 0 and i - j <= 8:
            prev = lines[j].strip()
            if not prev:
                break
            if 'SAFETY:' in prev:
                ok = True
            elif not prev.startswith('//') and prev.endswith((';', '}')) and j < i - 1:
                break            # the previous statement: its comment is not ours
            j -= 1
        if not ok:
            bad += 1
            print(f'{path}:{i + 1}: unsafe without a // SAFETY: comment: {line.strip()}')
print(f'{n} unsafe blocks and impls, {bad} without // SAFETY:')
sys.exit(1 if bad else 0)
