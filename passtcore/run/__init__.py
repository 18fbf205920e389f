"""passtcore-run, the daemon: guest Layer-2 frames <-> host TCP/UDP/ICMP sockets.

One package per layer and per transport (docs/ARCHITECTURE.md starts with
"the life of a frame", which follows one through these):

- ``process/``: from argv to a serving daemon (options, host configuration,
  privilege drop, daemonising, logging);
- ``io/``: everything that moves bytes: the event loop, the front ends (QEMU
  stream socket, ``-F``, the tap of namespace mode) behind one interface
  (batches in, slots out), forwarded-port listeners, pasta's splice path,
  the pcap writer;
- ``dispatch.py``: frames -> engines through one route table;
- ``l2/``: ARP, DHCPv4, NDP, DHCPv6 (sans-IO);
- ``tcp/``, ``udp/``, ``icmp/``: the transports, each opening with its design;
- ``flows.py``: the one flow registry of every transport;
- ``context.py``, ``nat.py``, ``counters.py``: what the engines share.
"""
