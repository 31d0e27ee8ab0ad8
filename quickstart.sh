#!/usr/bin/env bash
# The quick start: install, make a sample ext4 disk, and duplicate it with a saveset, over a
# throwaway OpenSSH server on 127.0.0.1 when one can start here, locally otherwise.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)

bash tools/setup.sh
mkdir -p sample
python3 bench/sample.py sample/disk.img "${SAMPLE_SIZE:-512M}"
rm -rf sample/sshd sample/copy.img sample/copy.bps

sshd_pid=""
trap '[ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null; true' EXIT
python3 tools/loopback_sshd.py sample/sshd >sample/sshd.out 2>&1 &
sshd_pid=$!
for _ in $(seq 100); do
    grep -q ssh_config sample/sshd.out 2>/dev/null && break
    kill -0 "$sshd_pid" 2>/dev/null || break
    sleep 0.1
done

if grep -q ssh_config sample/sshd.out 2>/dev/null; then
    target="testhost:$here/sample/copy.img"
    ssh_args=(-F sample/sshd/ssh_config)
    echo "== bacpac dup over SSH to a loopback sshd (sample/sshd/ssh_config: Host testhost)"
else
    target="$here/sample/copy.img"
    ssh_args=()
    echo "== no sshd could start here ($(tail -1 sample/sshd.out)); bacpac dup runs locally"
fi
set -x
bacpac dup "${ssh_args[@]}" sample/disk.img "$target" --saveset "$here/sample/copy.bps"
bacpac info "${ssh_args[@]}" "${target%copy.img}copy.bps"
{ set +x; } 2>/dev/null
sha256sum sample/disk.img sample/copy.img
echo "== bacpac's image digest (sha256-1m above), recomputed with stock tools"
split -b 1M --filter=sha256sum sample/disk.img | sha256sum
