"""Run a notebook top to bottom in a fresh kernel of *this* Python environment.

Both course tools execute notebooks: ``kaiser-edu build-exercises`` (every generated
exercise is committed executed) and ``kaiser-edu check`` (a student's notebook). They must
run the kernel with the interpreter that has kaiser_edu installed, whatever kernel name the
notebook's metadata carries: on a JupyterHub the student's kernelspec may be called
``conda-env-kaiser-py`` or point at another Python. So the kernel manager here ignores
the registry of kernelspecs and always starts ``sys.executable -m ipykernel_launcher``
(what nbval's ``--nbval-current-env`` does).

The kernel's sockets are encrypted (CurveZMQ) when pyzmq supports it: on a shared lab
machine other users cannot read a student's code in transit, and the kernel does not print
its plain-TCP warning into the terminal of ``kaiser-edu check``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import zmq
from ipykernel import kernelspec as ipykernel_spec
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat import NotebookNode
from traitlets import default


class ThisPythonKernelSpecs(KernelSpecManager):
    """Every kernel name resolves to an ipykernel running on this interpreter."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return self.kernel_spec_class(
            resource_dir=ipykernel_spec.RESOURCES, **ipykernel_spec.get_kernel_dict()
        )


class ThisPythonKernelManager(AsyncKernelManager):
    """An AsyncKernelManager that uses :class:`ThisPythonKernelSpecs`."""

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return ThisPythonKernelSpecs(data_dir=self.data_dir)

    @default("transport_encryption")
    def _transport_encryption_default(self) -> str:
        return "auto" if zmq.has("curve") else "disabled"


def execute(
    nb: NotebookNode,
    cwd: str | Path,
    *,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    allow_errors: bool = False,
    kernel_stderr: IO[bytes] | int | None = None,
    **hooks: Callable[..., Any],
) -> NotebookNode:
    """Execute every code cell of ``nb`` in place and return it.

    - ``cwd``: the kernel's working directory (where the notebook lives, so relative paths
      in it work).
    - ``timeout``: seconds per cell; a cell that runs longer is interrupted (it then shows
      a ``KeyboardInterrupt``), so a student's endless loop cannot hang the tool.
    - ``env``: the kernel's whole environment (default: this process's).
    - ``allow_errors``: keep going after a cell raises (the error is stored as the cell's
      output); otherwise ``nbclient.exceptions.CellExecutionError`` is raised.
    - ``kernel_stderr``: where the kernel process's own standard error goes (a file or
      ``subprocess.DEVNULL``; default: this process's). What cells print to ``sys.stderr``
      travels as cell output either way; this is the interpreter's own channel, where
      ipykernel also logs, e.g. the "ZMQError: Socket operation on non-socket" traceback of
      its shutdown race, which would otherwise land in the terminal of ``kaiser-edu check``.
    - ``hooks``: nbclient's hooks, e.g. ``on_cell_execute(cell=..., cell_index=...)`` before
      and ``on_cell_executed(cell=..., cell_index=..., execute_reply=...)`` after each code
      cell.

    Execution times are not recorded in the cells' metadata (they would change every run).
    """
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_manager_class=ThisPythonKernelManager,
        resources={"metadata": {"path": str(cwd)}},
        allow_errors=allow_errors,
        record_timing=False,
        interrupt_on_timeout=True,
        **hooks,
    )
    client.execute(env=dict(os.environ if env is None else env), stderr=kernel_stderr)
    return nb
