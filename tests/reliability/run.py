#!/usr/bin/python3
"""The reliability suite: crash, faults, three processes, disk full.

  /usr/bin/python3 tests/reliability/run.py [--small] [--seed N] [--only crash,faults,three,diskfull]

Each part prints one figure line; the exit code is non-zero when any invariant
failed. Every random choice derives from the printed seed: rerun with --seed to replay."""
import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LIB  # noqa: E402

PARTS = ("crash", "faults", "three", "diskfull")
COUNTS = {
    # part: (small, full)
    "crash_kills": (21, 200),
    "crash_large": (2, 12),
    "fault_transfers": (100, 1000),
    "three_files": (36, 120),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="CI counts (a few minutes)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", default=",".join(PARTS))
    args = ap.parse_args()
    if not os.path.exists(LIB + ".so"):
        sys.exit(f"{LIB}.so is missing: build it first")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    n = {k: v[0] if args.small else v[1] for k, v in COUNTS.items()}
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    print(f"reliability: seed {seed} ({'small' if args.small else 'full'} counts); replay with --seed {seed}", flush=True)
    t0 = time.time()
    failed = []
    for part in only:
        start = time.time()
        if part == "crash":
            import crash
            fails, line = crash.run(seed, n["crash_kills"], n["crash_large"])
        elif part == "faults":
            import faults
            fails, line = faults.run(seed, n["fault_transfers"])
        elif part == "three":
            import three
            fails, line = three.run(seed, n["three_files"])
        elif part == "diskfull":
            import diskfull
            fails, line = diskfull.run(seed)
        else:
            sys.exit(f"unknown part {part}; parts are {', '.join(PARTS)}")
        status = "FAIL" if fails else "ok"
        print(f"{line}  [{status}, {len(fails.items)} violation(s), {time.time() - start:.0f} s]", flush=True)
        if fails:
            failed.append(part)
    print(f"reliability: {'FAILED: ' + ', '.join(failed) if failed else 'all invariants held'} "
          f"in {time.time() - t0:.0f} s (seed {seed})", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
