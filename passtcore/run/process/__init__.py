"""The process layer: options, host configuration, set-up order, privileges, logging.

``cli.main`` binds the socket first (libvirt's QEMU connects ~20 ms after
exec), then ``options.parse`` validates argv, ``config.build`` reads the host's
addresses in a forked helper (``helper.run_in_child``), and ``daemon.run``
opens the front end, builds the engines, drops privileges, forks and serves.
"""
