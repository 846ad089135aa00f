"""The remote driver: a connection to a node served by asvirtd (``qemu:///system``,
``qemu:///session``, ``qemu+unix://...``, ``qemu+ssh://host/...``)."""
