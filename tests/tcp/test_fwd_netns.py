"""Forwarded-port binding at scale: ``-t all`` running out of file descriptors
(passt's documented fatal error) and an exclusion-only spec (all but ...)."""
from __future__ import annotations

import contextlib
import os
import resource

import pytest

from .world import World

pytestmark = pytest.mark.netns


@contextlib.contextmanager
def nofile(limit: int):
    """Soft limit only (the hard one can't be raised back without CAP_SYS_RESOURCE)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = old[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard) if hard > 0 else limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_all_ports_without_enough_fds_is_fatal(sandbox):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] > 49151 + 1000:
        pytest.skip("the hard RLIMIT_NOFILE is large enough for '-t all' here")
    with nofile(2048):
        with pytest.raises(RuntimeError) as info:
            sandbox.start_daemon("-t", "all", mode="socket")  # 'all' is passt-mode only
    assert "Can't open enough sockets for port specifier" in str(info.value)


def test_exclusion_only_spec_forwards_everything_else():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with nofile(8192):
        w = World("-t", "~1-46000")  # 46001..49151 forwarded
    try:
        ss = w.sb.host("ss", "-ltn").stdout
        assert ":46001 " in ss and ":49151 " in ss and ":46000 " not in ss
        srv = w.server("guest", "peer-server", "::", "47000")
        try:
            out = w.run("host", "line-client", "127.0.0.1", "47000")
            assert out.split()[0].removeprefix("::ffff:") == w.gw4
        finally:
            srv.kill()
            srv.wait()
    finally:
        w.close()
