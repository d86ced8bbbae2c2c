"""A lost process of a multi-process run: the others stop in bounded time, with one line naming
it and the last complete checkpoint (spikejax/train/watchdog.py)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from spikejax.train import checkpoints, watchdog

FMNIST = "/usr/share/datasets/fashion-mnist"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClient:
  """The key-value calls of a ``jax.distributed`` client, in memory; ``broken`` makes every
  call fail as with a coordinator that is gone."""

  def __init__(self):
    self.kv, self.broken = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.broken:
      raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
    self.kv[key] = value

  def key_value_dir_get(self, prefix):
    if self.broken:
      raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
    return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]


def _watch(client, tmp_path, **kw):
  exits = []
  done = threading.Event()

  def fake_exit(code):
    exits.append(code)
    done.set()

  ckpt = tmp_path / "checkpoints"
  for d in ("2", "4", "6.orbax-checkpoint-tmp-1700000000"):   # 6: a save cut short
    (ckpt / d).mkdir(parents=True)
  dog = watchdog.PeerWatchdog(timeout_s=0.4, interval_s=0.05, client=client, process_id=0,
                              num_processes=2, checkpoint_dir=str(ckpt), exit=fake_exit, **kw)
  return dog, exits, done, ckpt


def test_a_silent_peer_stops_this_process_naming_it_and_the_checkpoint(tmp_path, capsys):
  client = FakeClient()
  client.kv["spikejax/watchdog/beat/1"] = "7"        # process 1 beat once, then nothing
  dog, exits, done, ckpt = _watch(client, tmp_path)
  t0 = time.monotonic()
  dog.start()
  assert done.wait(10) and exits == [watchdog.EXIT_PEER_LOST]
  assert 0.4 <= time.monotonic() - t0 < 5
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "process 1 of 2 sent no heartbeat" in err
  assert f"last complete checkpoint is {ckpt / '4'}" in err
  assert client.kv["spikejax/watchdog/beat/0"] != "0"     # its own counter moved


def test_a_live_or_finished_peer_is_not_lost(tmp_path):
  client = FakeClient()
  dog, exits, done, _ = _watch(client, tmp_path)
  stop = threading.Event()

  def peer():  # beats for a while, then finishes normally
    n = 0
    while not stop.wait(0.05):
      n += 1
      client.kv["spikejax/watchdog/beat/1"] = str(n)
    client.kv["spikejax/watchdog/done/1"] = "1"

  t = threading.Thread(target=peer)
  t.start()
  dog.start()
  time.sleep(1.0)       # 2.5 timeouts of beats
  stop.set()
  t.join()
  time.sleep(1.0)       # finished: silent but not lost
  assert exits == []
  dog.finished()
  assert client.kv["spikejax/watchdog/done/0"] == "1"


def test_a_gone_coordinator_stops_this_process(tmp_path, capsys):
  client = FakeClient()
  client.broken = True
  dog, exits, done, _ = _watch(client, tmp_path)
  dog.start()
  assert done.wait(10) and exits == [watchdog.EXIT_PEER_LOST]
  assert "the coordinator (process 0) does not answer (RuntimeError: UNAVAILABLE" in \
      capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install -y dataset-fashion-mnist")
def test_sigkill_of_one_of_two_processes_ends_the_other_in_bounded_time(tmp_path):
  """Issue: SIGKILL of one process left the other to abort after 92 s with a Gloo error. Now
  it exits 5 within the peer timeout (10 s here) plus a poll, naming process 1; every step
  directory left is one orbax finalized, and the one named is the newest."""
  wd = tmp_path / "wd"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("SPIKEJAX_TEST_COMPILE_FLAGS", "") +
             " --xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "spikejax.main", "--config=configs/fashion_mnist.py:base,runlocal",
         f"--workdir={wd}", "--config.max_train_steps=100000", "--config.progress_bar=False",
         "--config.checkpoint_every_steps=2", "--config.num_epochs=100.0",
         "--config.batch_size=8", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         "--peer_timeout_seconds=10"]
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
      if watchdog.last_complete_checkpoint(str(wd / "checkpoints")):
        break
      time.sleep(0.5)
    assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    log = procs[0].communicate(timeout=120)[0]
    waited = time.monotonic() - t_kill
  finally:
    for p in procs:
      p.kill() if p.poll() is None else None
  assert procs[0].returncode == watchdog.EXIT_PEER_LOST, log[-3000:]
  assert waited < 10 + 15, waited
  lines = [x for x in log.splitlines() if x.startswith("error: process 1 of 2")]
  assert len(lines) == 1 and "last complete checkpoint is" in lines[0], log[-3000:]
  ck = checkpoints.TrainCheckpointer(str(wd / "checkpoints"), async_save=False)
  steps = sorted(ck.manager.all_steps())
  named = lines[0].split("last complete checkpoint is ")[1].split(";")[0]
  assert steps and named == str(wd / "checkpoints" / str(steps[-1]))
  for step in steps:            # committed by orbax
    assert (wd / "checkpoints" / str(step) / "commit_success.txt").is_file()
