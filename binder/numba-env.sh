# Sourced by binder/postBuild (building the image) and binder/start (every session), so that
# both use the same numba cache and the same target CPU.
# NB_PYTHON_PREFIX is the image's Python environment (repo2docker sets it): the cache lives
# there, inside the image, and not in $HOME, which a BinderHub may mount a volume over.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-${NB_PYTHON_PREFIX:-$HOME}/share/kaiser-edu/numba-cache}"
# numba keys cached code on the CPU model and its features; the session runs on whatever
# node the cluster picks, so compile for a generic x86-64 CPU that every node matches.
export NUMBA_CPU_NAME="${NUMBA_CPU_NAME:-generic}"
