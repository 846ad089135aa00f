"""The ``asvirt`` command line (see :mod:`asvirt.cli.main`)."""


def process_main() -> int:
    """The ``asvirt`` console script and ``python -m asvirt``:
    :func:`asvirt.cli.main.process_main`, the cycle collector turned off before the command
    line's modules load.

    Reference counting frees what a one-shot command drops; the collector's passes over the
    objects its imports make (classes, enums, code) cost it 3% of its instructions for
    nothing (issue 9). What runs on under trio collects again.
    """
    import gc

    collecting = gc.isenabled()
    gc.disable()
    from .main import process_main

    return process_main(collecting)
