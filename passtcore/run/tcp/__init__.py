"""TCP translation: guest TCP segments <-> ordinary host TCP sockets.

Design (passt-reference section 6; deliberate differences are noted):

* **Two modules.** ``state.py`` holds the decisions (sequence space, windows,
  SACK, options, the event bits) as functions of a connection's state and a
  parsed segment, testable with frames alone; ``engine.py`` does the socket
  I/O and applies them.
* **One host socket per guest connection**, found through the daemon's flow
  registry (``flows.py``; key ``(6, 0, guest addr, guest port, remote addr,
  remote port)``, ``--max-flows`` in all: at the limit a SYN gets RST|ACK and
  ``tcp_flows_refused`` counts it). Per-connection state is a ``__slots__``
  object (``state.Conn``) the registry maps the flow index to.
* **Host -> guest, no buffering (6.4).** Data is read with ``MSG_PEEK`` from the
  point the guest has not seen yet (``SO_PEEK_OFF``; a throw-away iovec for the
  already-sent part on kernels without it) straight into the payload slots of
  the front end's TX slots (``FIONREAD`` bounds the iovec); headers are
  written in place with ``passtcore.headers.build_tcp`` and the burst is one
  ``ctx.tx_commit``. Bytes leave the kernel socket (``MSG_TRUNC``, no copy)
  only when the guest ACKs them, so the socket buffer is the retransmission
  store. Three duplicate ACKs re-send the holes the guest's SACK blocks show
  (or, without SACK, the first unacknowledged segment; partial ACKs the next
  one: NewReno) - passt re-sends the whole window. A retransmission timeout
  (0.25 s doubling up to passt's 2 s; 7 tries, then RST) rewinds to the last
  ACK. ``SO_RCVLOWAT`` is kept at
  ``unacked + 1`` so that the level-triggered reader wakes up only for data the
  guest has not been sent (or EOF), never spins on queued data.
* **Guest -> host (6.5).** In-order payloads are written straight to the socket
  (``MSG_DONTWAIT``; small ones of one batch coalesce into one ``sendmsg``);
  the guest is ACKed only for what the socket accepted, once per batch of
  frames (``end_batch``, called by the dispatcher: one ACK covers the batch,
  and none waits for another loop pass). The window advertised
  is the socket's free send space (``SO_MEMINFO``), so the guest rarely sends
  more than fits. Segments the socket cannot take yet - beyond a gap, or the
  tail of a partial write - are *held* (bounded: 16 MiB per connection, 256 MiB
  in all, never ACKed) and written when the gap fills or the socket drains.
  passt drops out-of-order data instead; without SACK that costs the guest
  retransmission timeouts (measured here: 100 MiB at 1 % loss and 5 %
  reordering did not finish in 5 minutes; with holding it takes ~1.5 s).
  The window is also capped at 128 guest segments so that several busy flows
  cannot overflow the guest's tap/NIC queue (1000 frames).
* **SACK.** passt never offers it. Here, when the guest's SYN (or SYN-ACK)
  carries SACK-permitted, ours does too (after passt's 8 option bytes): our
  ACKs then carry SACK blocks for held data, and the guest's SACK blocks drive
  selective retransmission. A guest-initiated connection without it on the
  guest's side sees passt's exact option bytes; the SYN we send for an accepted
  host connection always offers SACK-permitted (we cannot know yet whether the
  guest will take it). No timestamps.
* **Handshakes.** Guest SYN -> non-blocking ``connect()``; SYN-ACK only once it
  succeeds, RST|ACK at once when refused/unreachable. Duplicate SYNs while the
  connect is pending are ignored (11.1 bug 3 not replicated); keep-alive probes
  are ACKed (bug 4 not replicated). Accepted host connections on forwarded
  ports become SYNs to the guest from the NAT'ed source (4.6, 6.3); a guest RST
  to that SYN closes the client orderly, as in passt. The guest's MSS is not
  set as ``TCP_MAXSEG`` on the host socket (we re-segment anyway).
* **Closing.** FIN and half-close in each direction; a guest RST aborts an
  established host socket (``SO_LINGER {1, 0}``, so the peer sees a reset
  rather than passt's plain ``close()``); host errors become RST to the guest.
  Timeouts are flow-registry deadlines, chosen by state (``Conn.flow_timeout``):
  10 s handshake, 60 s after both FINs, 7200 s idle (which, unlike 2023 passt,
  does fire). Retransmission and window probes run on their own 125 ms timer
  over only the connections with data in flight or a shut window.
"""
from __future__ import annotations

from passtcore.run.tcp.engine import TcpEngine

__all__ = ["TcpEngine"]
