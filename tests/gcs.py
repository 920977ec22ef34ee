"""pytest fixtures for code that reads or writes ``gs://``: one local GCS emulator per test session
(so one per xdist worker), on free ports, stopped when the session ends.

    def test_x(gcs_bucket, gcs_dir):          # gcs_dir: a fresh 'gs://<bucket>/<test name>'
        run_something(workdir=gcs_dir)
        assert gcs_bucket.list_objects('test_x/') == [...]
        subprocess.run([...], env=gcs_bucket.subprocess_env(), check=True)

The first use sets the emulator's environment in ``os.environ`` for the rest of the session,
before the test body touches ``gs://``: tensorstore reads its endpoint once per process and gcsfs
its options at import, so a process that used ``gs://`` before cannot be redirected (start such
programs as subprocesses with ``env=gcs_bucket.subprocess_env()``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid

import pytest

from xfm_jax import gcs_emulator


@dataclasses.dataclass(frozen=True)
class GcsBucket:
    """A bucket of the session's emulator. ``uri`` is ``gs://<name>``; ``env`` the variables that
    point the storage libraries at the emulator (already set in ``os.environ``)."""
    name: str
    emulator: gcs_emulator.Emulator

    @property
    def uri(self) -> str:
        return f'gs://{self.name}'

    @property
    def env(self) -> dict[str, str]:
        return self.emulator.env

    def subprocess_env(self) -> dict[str, str]:
        """The environment for a subprocess that should write to this bucket."""
        return {**os.environ, **self.env}

    def list_objects(self, prefix: str = '') -> list[str]:
        """Sorted object names under ``prefix`` (no ``gs://<bucket>/``), asked of the server."""
        return self.emulator.list_objects(self.name, prefix)

    def read_object(self, name: str) -> bytes:
        return self.emulator.read_object(self.name, name)


@pytest.fixture(scope='session')
def gcs_bucket(tmp_path_factory) -> GcsBucket:
    name = f'xfm-test-{uuid.uuid4().hex[:8]}'
    log = tmp_path_factory.mktemp('gcs_emulator') / 'emulator.log'
    with gcs_emulator.running(buckets=[name], log_path=log) as emulator, emulator.applied():
        yield GcsBucket(name, emulator)


@pytest.fixture
def gcs_dir(gcs_bucket, request) -> str:
    """``gs://<bucket>/<test name>``: a folder of its own for each test (parameters included)."""
    return f'{gcs_bucket.uri}/{re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)}'
