"""The IPython kernel of the book's build, without its warning about TCP transport.

The kernels that execute the chapters talk to the build over ZeroMQ on the loopback interface,
with every message signed by the key in their connection file; ipykernel 7 logs a warning at
every start that the traffic is not encrypted, one line of noise per chapter in the terminal
of ``jupyter-book build``. jupyter_client can move kernels to IPC sockets or provision CurveZMQ
keys, but only through options of the kernel manager, which myst-nb creates without a way to
configure it. So the build (`cvae_utils.bookbuild`) installs a kernel spec that starts the
kernel through this file, which drops exactly that log record and nothing else: the kernel's
other warnings and errors, and of course the errors of the cells, still show.

It is run as a script (``python .../kernel_launcher.py -f {connection_file}``), so that the
kernel starts as fast as ipykernel's own launcher, without importing this package first.
"""
import os
import sys

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the package directory: its modules must not shadow top-level ones

import logging  # noqa: E402

TRANSPORT_WARNING = "Kernel is running over TCP without encryption"


class DropTransportWarning(logging.Filter):
    """Drops the kernel's warning about unencrypted TCP transport; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return TRANSPORT_WARNING not in record.getMessage()


def main() -> None:
    logging.getLogger("IPKernelApp").addFilter(DropTransportWarning())
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
