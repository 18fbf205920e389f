"""The L2/L3 services the daemon answers itself: ARP, DHCPv4, NDP, DHCPv6.

Each is sans-IO: ``(frame, FrameInfo, NetConfig) -> reply frames``, wrapped
by a ``ReplyEngine`` (``common.py``) for the dispatcher. Malformed messages
raise ``common.Drop``, whose reason names the drop counter.
"""
