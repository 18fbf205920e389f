"""Engines for the dispatcher tests: ``arp`` records, ``udp`` raises, others absent."""
