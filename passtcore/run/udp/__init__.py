"""UDP translation: guest datagrams <-> host UDP sockets (passt-reference 7).

passt tracks UDP by *port*, not by connection, and so does this engine:

* For each family and guest source port there is one host socket, bound to
  the same port number (so the guest's source port is preserved on the host;
  if that port is busy the socket falls back to a kernel-chosen port instead of
  dropping, a deliberate improvement). It is unconnected: whatever arrives on
  it (a reply from anyone) goes to the guest with that guest port as the
  destination. It expires 180 s after the last guest datagram (the registry's deadline).
* ``-u`` forwarded ports are sockets bound at start-up (one per family) and
  registered under the *guest-side* port, so the guest's replies from that
  port leave through the same socket: the reverse mapping is implicit. They
  never expire.
* Destination mapping: ``--dns-forward`` address port 53 -> the host's first
  resolver (answers come back from the ``--dns-forward`` address); the gateway
  -> loopback unless ``--no-map-gw`` or the last local sender on that port was
  the host's own address (7.3). Link-local destinations get the template
  interface's scope.
* Frames to the guest: source NAT of 4.6, destination = the address the guest
  was last seen using; IPv4 UDP checksum 0 (the payload is never summed),
  IPv6 full checksum (7.5). Datagrams are received straight into the front
  end's slots, up to 32 per wake-up, and committed as one batch.
* Every port flow is an entry of the daemon's flow registry (``flows.py``):
  it bounds them (``--max-flows``, with TCP and ICMP), and expires idle ones.
"""
from __future__ import annotations

from passtcore.run.udp.engine import UdpEngine

__all__ = ["UdpEngine"]
