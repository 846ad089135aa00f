"""The wire between clients and the daemon: JSON-RPC 2.0, one message per line.

The calls themselves are declared once, in :mod:`asvirt.protocol`; this package only frames,
encodes and decodes them (:mod:`.wire`). ``docs/protocol.md`` describes the whole exchange.
"""
