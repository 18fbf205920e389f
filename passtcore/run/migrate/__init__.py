"""Live migration of the guest's network state, TCP connections included.

QEMU moves the guest's memory; we move what the daemon knows (vhost-user
SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE, io/vhost_user.py):

* ``wire.py``: the stream, in upstream passt's format (version 2), so that
  passt and passtcore can migrate to each other;
* ``device.py``: what the source sends and the target restores, and the
  source's rollback when the guest resumes there after all;
* ``sockets.py``: one host socket's kernel state out and in (TCP_REPAIR);
* ``repair.py``: the channel to the privileged helper that switches repair
  mode on and off (the daemon has no capabilities);
* ``helper.py``: that helper, ``passtcore-repair`` (passt-repair's protocol).

Without a helper the migration still succeeds as it did before passt 2025:
the guest keeps its addresses, connections are reset (the target sends the
guest RST at once for every connection it was told about, and for any
segment of a connection it does not know).
"""
