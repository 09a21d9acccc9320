#!/bin/sh
# Regenerate the shipped lackey traces with Debian's valgrind (apt-get install valgrind gcc).
#
#   sh kaiser_edu/perf/traces/make_traces.sh [OUTDIR]     (default: this folder)
#
# Each trace is valgrind's lackey memory trace (--trace-mem=yes: I/L/S/M lines) with
# valgrind's system-call trace (--trace-syscalls=yes: SYSCALL[...] lines) in the same stream
# (--log-fd=3), so the system calls sit where the program made them. Addresses differ from
# run to run and machine to machine (ASLR is off under valgrind, but library versions and
# the environment change the layout), so a regenerated trace is similar, not identical.
#
# wordfreq.lackey.gz  the whole run of wordfreq.c (this folder) over the GPL-3 text of
#                     Debian's base-files (/usr/share/common-licenses/GPL-3)
# python.lackey.gz    the first 3,000,000 lines of /usr/bin/python3 -S running a small
#                     json program (the full run is ~20x longer: far over the 5 MB limit)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v valgrind >/dev/null || { echo "make_traces.sh: valgrind is not installed" >&2; exit 2; }
command -v gcc >/dev/null || { echo "make_traces.sh: gcc is not installed" >&2; exit 2; }

gcc -O2 -o "$work/wordfreq" "$here/wordfreq.c"
valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes --log-fd=3 \
    "$work/wordfreq" < /usr/share/common-licenses/GPL-3 3>&1 >/dev/null \
    | gzip -9n > "$out/wordfreq.lackey.gz"

# head closes the pipe after 3e6 lines; valgrind then stops on SIGPIPE (expected).
{ valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes --log-fd=3 \
    /usr/bin/python3 -S -c \
    "import json; print(len(json.dumps({str(i): list(range(i % 50)) for i in range(2000)})))" \
    3>&1 >/dev/null || true; } | head -n 3000000 | gzip -9n > "$out/python.lackey.gz"

ls -l "$out/wordfreq.lackey.gz" "$out/python.lackey.gz"
