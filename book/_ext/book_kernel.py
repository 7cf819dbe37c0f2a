"""The IPython kernel of the book's build: quiet about its transport, listening to progress.

The kernels that execute the chapters talk to the build over ZeroMQ on the loopback interface,
with every message signed by the key in their connection file; ipykernel 7 logs a warning at
every start that the traffic is not encrypted, one line of noise per chapter in the terminal
of ``jupyter-book build``. jupyter_client can move kernels to IPC sockets or provision CurveZMQ
keys, but only through options of the kernel manager, which myst-nb creates without a way to
configure it. So the build (``book_build.py``) installs a kernel spec that starts the kernel
through this file, which

* drops exactly that log record and nothing else: the kernel's other warnings and errors, and of
  course the errors of the cells, still show;
* installs the handler that appends the package's progress lines (the logger of
  `cvae_utils.progress`) to the file named by ``CVAE_PROGRESS_FILE``, which the build relays to
  its terminal (``book_terminal.py``); without the variable it installs nothing.

It is run as a script (``python .../book/_ext/book_kernel.py -f {connection_file}``), so that the
kernel starts as fast as ipykernel's own launcher, without importing the package first: the
handler waits on the logger's name until the package logs to it.
"""
import logging
import os
import sys

import book_terminal  # beside this file: the first entry of sys.path when run as a script

TRANSPORT_WARNING = "Kernel is running over TCP without encryption"


class DropTransportWarning(logging.Filter):
    """Drops the kernel's warning about unencrypted TCP transport; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return TRANSPORT_WARNING not in record.getMessage()


def main() -> None:
    logging.getLogger("IPKernelApp").addFilter(DropTransportWarning())
    book_terminal.listen_to_progress()
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # the build's folder: its modules are no business of the chapters
    main()
