"""filmmine: mine monocular-depth training data (relative disparity) from stereo films."""

import signal as _signal
import sys as _sys

__version__ = "0.1.0"

# A process multiprocessing spawned (local Dask workers, verify's pool) leaves Ctrl-C to the
# process that started it, which closes it: at a terminal Ctrl-C reaches every process of the
# group, and a worker interrupted in its imports or tasks prints a traceback of its own. Here,
# first thing in such a child (its parent's main module, filmmine's command, is imported
# before anything else), so that hardly any of its start-up is left unguarded.
if "--multiprocessing-fork" in getattr(_sys, "orig_argv", ()):
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
