"""asvirtd: a node served to many clients over unix sockets (and SSH, through a bridge).

The daemon opens one node (the QEMU driver's state for ``qemu:///system`` or
``qemu:///session``) and keeps it for its whole life, so VMs stay supervised while clients
come and go. Each client connection is a :class:`~.session.Session`: the same declared calls
as in-process connections (:mod:`asvirt.protocol`), dispatched to the node the same way,
and the node's journaled events streamed with their ``seq``. See ``docs/protocol.md``.
"""
