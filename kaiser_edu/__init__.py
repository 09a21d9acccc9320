"""kaiser_edu: an interactive course on x86-64 paging and kernel page-table isolation.

Subpackages, with dependencies flowing one way (each uses only those above it):

- :mod:`kaiser_edu.hw`: the hardware model (paging, TLB, PCID), faithful to the Intel SDM
- :mod:`kaiser_edu.kernel`: the simulated Linux kernel: address spaces, KAISER and PTI,
  kernel entry and exit through the MMU, the event log and the isolation audit
- :mod:`kaiser_edu.perf`: benchmarks of the simulator itself
- :mod:`kaiser_edu.widgets`: the lessons' widgets and figures (thin views over pure functions)
- :mod:`kaiser_edu.course`: checks, the exercise builder, ``kaiser-edu check``, practice
  problems, the doctor, and each lab's checks

Importing the package is cheap: numba kernels compile (or load from cache) on first use.
"""

__version__ = "0.1.0"
