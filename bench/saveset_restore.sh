#!/bin/bash
# restore and verify of a 512 MiB disk saveset: an older bacpac (OLD) against this checkout, and stock zstd.
# Usage: OLD=/tmp/bp-old bench/saveset_restore.sh   (works in /tmp/qa; docs/performance.md, "saveset-v3")
set -e
NEW=$(cd "$(dirname "$0")/.." && pwd); OLD=${OLD:?set OLD to a checkout of the older bacpac (git archive b09d9e5)}
mkdir -p /tmp/qa && cd /tmp/qa
IMG=/tmp/qa/img512
if [ ! -f $IMG ]; then
python3 - <<'PY'
import random
r = random.Random(3)
words = [bytes(r.choice(b"abcdefghij ") for _ in range(r.randint(2, 9))) for _ in range(300)]
with open("/tmp/qa/img512", "wb") as f:
    for i in range(128):
        f.write(r.randbytes(1 << 20))
    for i in range(128):
        f.write(b" ".join(r.choices(words, k=200000))[:1 << 20])
    f.truncate(512 << 20)
PY
fi
(cd $OLD && python3 -m bacpac backup --no-progress $IMG /tmp/qa/old.bacpac)
(cd $NEW && python3 -m bacpac backup --no-progress $IMG /tmp/qa/new.bacpac)
t() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1; local e=$(date +%s.%N); echo "$e - $s" | bc; }
for round in 1 2 3; do
  rm -f /tmp/qa/r.img
  echo "round $round"
  echo "stock zstd-d|sha256sum $(t sh -c 'zstd -d -c -q /tmp/qa/new.bacpac | sha256sum')"
  echo "stock zstd-d>img      $(t sh -c 'zstd -d -c -q /tmp/qa/new.bacpac > /tmp/qa/r.img')"; rm -f /tmp/qa/r.img
  echo "verify old            $(cd $OLD && t python3 -m bacpac verify /tmp/qa/old.bacpac)"
  echo "verify new            $(cd $NEW && t python3 -m bacpac verify /tmp/qa/new.bacpac)"
  echo "restore old           $(cd $OLD && t python3 -m bacpac restore --no-progress /tmp/qa/old.bacpac /tmp/qa/r.img)"; rm -f /tmp/qa/r.img
  echo "restore new           $(cd $NEW && t python3 -m bacpac restore --no-progress /tmp/qa/new.bacpac /tmp/qa/r.img)"; rm -f /tmp/qa/r.img
done
uptime
