"""``--workdir=gs://...``: the path layer (``spikejax.train.paths``) against a GCS emulator on
127.0.0.1 (``tests/gcs_emulator.py``): files, metrics and TensorBoard in a bucket; a run into
the bucket killed with SIGKILL and resumed from it gives the uninterrupted run's weights; a
two-process run writing to one bucket; an analysis tool reading its ``--checkpoint`` there.

The jobs run as subprocesses with ``STORAGE_EMULATOR_HOST`` (gcsfs),
``TENSORSTORE_GCS_HTTP_URL`` (orbax's arrays) and ``EPATH_USE_TF=false`` (epath takes gcsfs,
not TensorFlow's GCS client, which knows no emulator) and
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (gcsfs's zonal-bucket probe speaks gRPC, which the
emulator does not: each probe would wait 60 s). The test reads the bucket with gcsfs.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("gcsfs", reason="pip install gcsfs (the test extra has it)")
pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator (test extra)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_data = pytest.mark.skipif(not os.path.isdir(FMNIST),
                                reason="apt-get install -y dataset-fashion-mnist")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
  """``(env for the jobs, gcsfs filesystem)`` over a fresh emulator with bucket ``bkt``."""
  from gcsfs.core import GCSFileSystem   # not the zonal-bucket extension (gRPC, no emulator)
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"),
                           str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while True:
      try:
        urllib.request.urlopen(url + "/", timeout=2).read()
        break
      except OSError:
        if time.time() > deadline or proc.poll() is not None:
          raise RuntimeError("the GCS emulator did not start")
        time.sleep(0.2)
    env = dict(os.environ, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               EPATH_USE_TF="false", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
               JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("SPIKEJAX_TEST_COMPILE_FLAGS", ""))
    fs = GCSFileSystem(token="anon", endpoint_url=url, use_listings_cache=False)
    yield env, fs
  finally:
    proc.kill()
    proc.wait()


def _objects(fs, prefix):
  fs.invalidate_cache()
  return sorted(p[len("bkt/"):] for p in fs.find(f"bkt/{prefix}"))


def _read(fs, name) -> bytes:
  with fs.open(f"bkt/{name}", "rb") as f:
    return f.read()


def _events(data: bytes):
  """The events of one TFRecord-framed event file."""
  from tensorboard.compat.proto import event_pb2
  out, i = [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
    i += 12 + n + 4
  return out


PATHS_SCRIPT = r"""
import json, numpy as np
from spikejax.train import metrics, paths
w = "gs://bkt/unit/"
assert paths.resolve(w) == "gs://bkt/unit" and paths.is_remote(w)
w = paths.resolve(w)
paths.makedirs(w)
f = paths.join(w, "config.json")
kept = [paths.write_keeping_old(f, "one"), paths.write_keeping_old(f, "one"),
        paths.write_keeping_old(f, "two")]
paths.write_text(paths.join(w, "d/x/a.txt"), "a")
paths.write_text(paths.join(w, "d/b.txt"), "b")
paths.move(paths.join(w, "d"), paths.join(w, "moved"))
m = metrics.MetricWriter(w)
m.write(1, {"train/loss": 2.5})
m.write(2, {"train/loss": 2.25})
m.flush()
m.write_histograms(2, {"eval_firing/x": np.array([3, 1, 0, 2])})
m.write(3, {"train/loss": 2.0})
m.close()
moved = metrics.supersede_rows(w, 2)
print(json.dumps({"kept": kept, "top": paths.listdir(w), "moved": paths.listdir(paths.join(w, "moved")),
                  "config": paths.read_text(f), "old": paths.read_text(paths.join(w, "config.1.json")),
                  "a": paths.read_text(paths.join(w, "moved/x/a.txt")), "superseded": moved,
                  "rows": [r["step"] for r in metrics.read_metrics(w)]}))
"""


def test_paths_metrics_and_tensorboard_in_a_bucket(gcs):
  env, fs = gcs
  out = subprocess.run([sys.executable, "-c", PATHS_SCRIPT], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["kept"] == [None, None, "gs://bkt/unit/config.1.json"]
  assert (got["config"], got["old"], got["a"]) == ("two", "one", "a")
  assert got["top"] == ["config.1.json", "config.json", "metrics.jsonl",
                        "metrics.superseded.jsonl", "moved", "tensorboard"]
  assert got["moved"] == ["b.txt", "x"]                     # the source is gone: not in "top"
  assert got["superseded"] == 1 and got["rows"] == [1, 2]
  # TensorBoard: one object per flush (explicit, at the histograms, at close), read back in
  # name order as one stream
  names = [n for n in _objects(fs, "unit/tensorboard") if "tfevents" in n]
  assert len(names) == 3, names
  tags = [(ev.step, v.tag) for n in names for ev in _events(_read(fs, n))
          for v in ev.summary.value]
  assert tags == [(1, "train/loss"), (2, "train/loss"), (2, "eval_firing/x"), (3, "train/loss")]


def _main(workdir, *extra):
  return [sys.executable, "-m", "spikejax.main", "--config=configs/fashion_mnist.py:base,runlocal",
          f"--workdir={workdir}", "--config.progress_bar=False", "--config.log_every_steps=1",
          "--config.checkpoint_every_steps=2", "--config.max_train_steps=100000",
          "--config.num_epochs=100.0", "--config.batch_size=8", *extra]


def _committed(fs, run):
  return sorted(int(p.split("/")[-2]) for p in _objects(fs, f"{run}/checkpoints")
                if p.endswith("commit_success.txt") and p.split("/")[-2].isdigit())


def _meta(fs, run, step):
  return json.loads(_read(fs, f"{run}/checkpoints/{step}/meta/metadata"))


def _rows(fs, run):
  return [json.loads(x) for x in _read(fs, f"{run}/metrics.jsonl").decode().splitlines()
          if x.strip()]


@needs_data
def test_run_in_a_bucket_killed_and_resumed_equals_the_uninterrupted_run(gcs):
  env, fs = gcs
  part = subprocess.Popen(_main("gs://bkt/part"), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 400
    while time.time() < deadline and part.poll() is None and not _committed(fs, "part"):
      time.sleep(0.3)
    part.send_signal(signal.SIGKILL)               # no chance to save or flush anything
    log = part.communicate(timeout=60)[0]
  finally:
    part.kill() if part.poll() is None else None
  done = _committed(fs, "part")
  assert done, log[-3000:]
  stop = max(done) + 3
  resumed = subprocess.run(_main("gs://bkt/part", f"--config.stop_after_steps={stop}"),
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  assert f"resumed from gs://bkt/part/checkpoints/{max(done)}" in resumed.stderr
  full = subprocess.run(_main("gs://bkt/full", f"--config.stop_after_steps={stop}"),
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert full.returncode == 0, full.stderr[-3000:]
  # the same weights, bit for bit: the CRC32 digest of every array of the state at `stop`
  assert stop in _committed(fs, "part") and stop in _committed(fs, "full")
  a, b = _meta(fs, "part", stop), _meta(fs, "full", stop)
  assert a["digests"] and a["digests"] == b["digests"]
  # metrics.jsonl: every step's row once, the same losses (rows up to a checkpoint reach the
  # bucket before it; rows of the killed run past the checkpoint resumed are set aside)
  rows_a = [(r["step"], r["train/loss"]) for r in _rows(fs, "part") if "train/loss" in r]
  rows_b = [(r["step"], r["train/loss"]) for r in _rows(fs, "full") if "train/loss" in r]
  assert rows_a == rows_b and [s for s, _ in rows_a] == list(range(1, stop + 1))
  summary = json.loads(_read(fs, "part/summary.json"))
  assert summary["workdir"] == "gs://bkt/part" and summary["step"] == stop
  assert summary["checkpoint"] == f"gs://bkt/part/checkpoints/{stop}"
  # the analysis tools read the trained model from the bucket
  firing = subprocess.run([sys.executable, "-m", "spikejax.analysis.firing",
                           "--checkpoint=gs://bkt/part", "--batches=1", "--batch-size=8",
                           "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert firing.returncode == 0, firing.stderr[-3000:]
  assert json.loads(firing.stdout.strip().splitlines()[-1])["images"] == 8


@needs_data
def test_two_processes_write_one_bucket(gcs):
  env, fs = gcs
  env = dict(env, XLA_FLAGS=env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=1")
  port = _free_port()
  cmd = _main("gs://bkt/two", "--config.stop_after_steps=4",
              f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2")
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      p.kill() if p.poll() is None else None
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  names = _objects(fs, "two")
  assert _committed(fs, "two") == [2, 4], (names, logs[0][-2000:])
  for name in ("config.json", "summary.json", "metrics.jsonl"):
    assert f"two/{name}" in names, (names, logs[0][-2000:])
  assert not [n for n in names if ".spikejax-write-test" in n]   # the probes were removed
  # only process 0 writes metrics and TensorBoard: each step once, one writer's event files
  assert [r["step"] for r in _rows(fs, "two") if "train/loss" in r] == [1, 2, 3, 4], logs[0]
  writers = {n.split("tfevents.")[1].rsplit(".", 1)[0] for n in names if "tfevents" in n}
  assert len(writers) == 1, writers
  summary = json.loads(_read(fs, "two/summary.json"))
  assert summary["step"] == 4 and summary["checkpoint"] == "gs://bkt/two/checkpoints/4"
