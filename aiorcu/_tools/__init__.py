"""The ``aiorcu`` command and the tools behind it.

The library lives in ``aiorcu``; this subpackage holds what exercises it from
the command line: ``info``, ``watch``, ``bench`` and ``torture``, the shared
console reporter, and the ``aiorcu`` entry point (``cli``).  The tools use
the library through its public API (``aiorcu``, ``aiorcu.testing``); the
library never imports them.
"""
