"""kaiser_edu: an interactive course on x86-64 paging and kernel page-table isolation.

Subpackages, with dependencies flowing one way (each uses only those above it):

- :mod:`kaiser_edu.hw`: the hardware model (paging, TLB, PCID), faithful to the Intel SDM
- :mod:`kaiser_edu.perf`: benchmarks of the simulator itself

Importing the package is cheap: numba kernels compile (or load from cache) on first use.
"""

__version__ = "0.1.0"
