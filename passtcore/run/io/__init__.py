"""The I/O layer: the event loop and everything that reads or writes descriptors.

``frontend.py`` is the interface every front end implements (``stream.py``:
QEMU's stream socket and ``-F``; ``tap.py``: namespace mode); ``listeners.py``
the host sockets of forwarded ports; ``splice.py`` pasta's loopback splice;
``portscan.py`` the bound-port scan behind ``auto``; ``pcap.py`` the capture.
"""
