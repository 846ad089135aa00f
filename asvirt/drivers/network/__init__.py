"""Virtual networks (libvirt's network driver, ``src/network/bridge_driver.c``).

* :mod:`.model`: network XML, parsed strictly and formatted as libvirt does (shared by every
  network driver, the test driver's included);
* :mod:`.core`: the API calls, libvirt's rules and the network lifecycle events, once;
* :mod:`.driver`: the host backend of a QEMU node: persistence under the root, a state file
  recording what was created, re-attach at open, autostart;
* :mod:`.bridge` (netlink, through pyroute2), :mod:`.dnsmasq` (configuration, supervision)
  with :mod:`.leases` (the lease database its helper keeps), :mod:`.firewall` (an nft table
  of each network's own), :mod:`.tap` (the taps of domain interfaces).
"""
