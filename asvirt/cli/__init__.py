"""The ``asvirt`` command line (see :mod:`asvirt.cli.main`)."""
