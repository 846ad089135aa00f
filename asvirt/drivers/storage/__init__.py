"""Storage pools and volumes: the model both storage drivers share, and the QEMU node's driver.

* :mod:`.pool`: pool and volume definitions, libvirt's XML (one parser for every driver);
* :mod:`.common`: the storage calls and rules every driver shares;
* :mod:`.driver`: ``dir`` pools of a QEMU node, on real files, persisted under the root;
* :mod:`.dir_backend`: the file operations of ``dir`` pools;
* :mod:`.qemu_img`: ``qemu-img``, run as a supervised subprocess with a deadline.
"""
