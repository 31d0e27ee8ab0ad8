#!/usr/bin/env bash
# Install what bacpac, its tests and its benchmark need on a fresh Debian machine: the system
# tools (only those missing, with apt-get, when root) and the Python package with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v zstd >/dev/null || need+=(zstd)
command -v rsync >/dev/null || need+=(rsync)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(mount)
command -v sudo >/dev/null || need+=(sudo)
command -v ip >/dev/null || need+=(iproute2)  # the tests' second host in a network namespace
command -v useradd >/dev/null || need+=(passwd)  # a throwaway user for password authentication
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "setup: installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "setup: missing ${need[*]} (run as root to install them with apt-get)" >&2
    fi
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
    | grep -v -e 'Running pip as the' -e 'is ignored: it is neither' || true
