"""Event-camera I/O and events -> frames (spikejax.data.events)."""

import os
import pathlib
import struct
import sys

import numpy as np
import pytest

from spikejax.data import events as E

DVS_DIR = pathlib.Path(os.environ.get(
    "SPIKEJAX_DVS_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "dvs"))
AEDAT4 = DVS_DIR / "davis346_street.aedat4"
DECODED = DVS_DIR / "davis346_street_decoded.npz"


@pytest.fixture(scope="module")
def real():
  if not (AEDAT4.is_file() and DECODED.is_file()):
    pytest.skip(f"real DVS sample absent in {DVS_DIR} (set SPIKEJAX_DVS_DATA)")
  events, frames, frame_t = E.read_aedat4(AEDAT4, frames=True)
  with np.load(DECODED) as z:
    ref = {k: z[k] for k in z.files}
  return events, frames, frame_t, ref


def _header_fields(data: bytes):
  """(file offset of the IOHeader compression field, of the data-table field, header end)."""
  hsize = struct.unpack_from("<i", data, 14)[0]
  base = 18
  root = base + struct.unpack_from("<I", data, base)[0]
  vt = root - struct.unpack_from("<i", data, root)[0]
  comp_off, table_off = struct.unpack_from("<HH", data, vt + 4)
  return root + comp_off, root + table_off, base + hsize


def _packets(data: bytes):
  _, table_field, pos = _header_fields(data)
  end = struct.unpack_from("<q", data, table_field)[0]
  while pos < end:
    sid, size = struct.unpack_from("<ii", data, pos)
    yield pos, sid, data[pos + 8:pos + 8 + size]
    pos += 8 + size


def _recompress(data: bytes, code: int, compress) -> bytes:
  """The same AEDAT 4 file with every packet re-encoded (and no data table)."""
  import lz4.frame
  comp_field, table_field, hend = _header_fields(data)
  head = bytearray(data[:hend])
  body = bytearray()
  for _, sid, payload in _packets(data):
    raw = compress(lz4.frame.decompress(payload))
    body += struct.pack("<ii", sid, len(raw)) + raw
  struct.pack_into("<i", head, comp_field, code)
  struct.pack_into("<q", head, table_field, len(head) + len(body))
  return bytes(head + body)


# --------------------------------------------------------------------------- AEDAT 4


def test_aedat4_matches_decoded_reference(real):
  events, frames, frame_t, ref = real
  assert len(events) == 78830 and events.sensor_size == (346, 260) == tuple(ref["sensor"])
  assert events.t.dtype == np.int64 and events.p.dtype == np.uint8
  np.testing.assert_array_equal(events.t - events.t[0], ref["t"])
  np.testing.assert_array_equal(events.x, ref["x"])
  np.testing.assert_array_equal(events.y, ref["y"])
  np.testing.assert_array_equal(events.p, ref["p"])
  assert frames.dtype == np.uint8 and frames.shape == (59, 260, 346)
  np.testing.assert_array_equal(frames, ref["frames"])
  assert frame_t.shape == (59,) and np.all(np.diff(frame_t) > 0)
  plain = E.read_events(AEDAT4)
  np.testing.assert_array_equal(plain.t, events.t)


def test_real_frames_sum_to_event_count(real):
  events = real[0]
  for split_by in ("time", "count"):
    frames = E.events_to_frames(events, 10, split_by=split_by)
    assert frames.shape == (10, 260, 346, 2) and frames.dtype == np.float32
    assert frames.sum() == len(events)
    np.testing.assert_array_equal(frames.sum(axis=(0, 1, 2)),
                                  [np.sum(events.p == 0), np.sum(events.p == 1)])
  per_chunk = E.events_to_frames(events, 7, split_by="count").sum(axis=(1, 2, 3))
  np.testing.assert_array_equal(per_chunk, [len(a) for a in np.array_split(events.t, 7)])
  small = E.events_to_frames(events, 4, size=(64, 64), polarity_channels=False)
  assert small.shape == (4, 64, 64, 1) and small.sum() == len(events)


@pytest.mark.parametrize("code", [0, 3])
def test_aedat4_uncompressed_and_zstd(real, tmp_path, code):
  import zstandard
  data = AEDAT4.read_bytes()
  compress = (lambda b: b) if code == 0 else zstandard.ZstdCompressor(level=1).compress
  path = tmp_path / "re.aedat4"
  path.write_bytes(_recompress(data, code, compress))
  events = E.read_aedat4(path)
  np.testing.assert_array_equal(events.t, real[0].t)
  np.testing.assert_array_equal(events.x, real[0].x)


def test_aedat4_corrupt_files(tmp_path):
  if not AEDAT4.is_file():
    pytest.skip(f"real DVS sample absent in {DVS_DIR}")
  data = AEDAT4.read_bytes()
  comp_field, _, hend = _header_fields(data)

  def err(blob, name):
    path = tmp_path / name
    path.write_bytes(blob)
    with pytest.raises(ValueError) as info:
      E.read_aedat4(path)
    msg = str(info.value)
    assert str(path) in msg and "byte" in msg
    return msg

  assert "magic" in err(b"#!AER-DAT9.9\r\n" + data[14:], "magic.aedat4")
  assert "IOHeader" in err(data[:hend - 100], "short_header.aedat4")
  msg = err(data[:len(data) // 2], "truncated.aedat4")
  assert "truncated" in msg
  bad = bytearray(data)
  struct.pack_into("<i", bad, comp_field, 9)
  assert "unknown compression type 9" in err(bytes(bad), "comp.aedat4")
  pos, _, payload = next(_packets(data))
  bad = bytearray(data)
  bad[pos + 8:pos + 8 + len(payload)] = b"\xAB" * len(payload)
  msg = err(bytes(bad), "garbage.aedat4")
  assert f"byte {pos}" in msg and "decompress" in msg


# --------------------------------------------------------------------------- AEDAT 2 / dispatch


def _random_stream(rng, n=500, size=(128, 128)):
  t = np.sort(rng.integers(0, 1_000_000, n))
  return E.EventStream.from_arrays(t, rng.integers(0, size[0], n), rng.integers(0, size[1], n),
                                   rng.integers(0, 2, n), sensor_size=size)


def test_aedat2_round_trip_and_address_convention(tmp_path):
  stream = _random_stream(np.random.default_rng(0))
  path = tmp_path / "a.aedat"
  E.write_aedat2(path, stream)
  assert path.read_bytes().startswith(b"#!AER-DAT2.0\r\n")
  back = E.read_aedat2(path)
  assert back.sensor_size == (128, 128)
  for f in "txyp":
    np.testing.assert_array_equal(getattr(back, f), getattr(stream, f))
  np.testing.assert_array_equal(E.read_events(path).x, stream.x)
  # SpikingJelly CIFAR10-DVS: x = 127 - (addr >> 8 & 0x7F), y = 127 - (addr >> 1 & 0x7F),
  # p = 1 - (addr & 1).
  raw = np.array([[(5 << 8) | (10 << 1) | 1, 7], [(0 << 8) | (127 << 1) | 0, 9]], ">u4")
  path2 = tmp_path / "b.aedat"
  path2.write_bytes(b"#!AER-DAT2.0\r\n# x\r\n#End Of ASCII Header\r\n" + raw.tobytes())
  ev = E.read_aedat2(path2)
  assert ev.x.tolist() == [122, 127] and ev.y.tolist() == [117, 0]
  assert ev.p.tolist() == [0, 1] and ev.t.tolist() == [7, 9]
  path2.write_bytes(b"#!AER-DAT2.0\r\n" + raw.tobytes()[:-3])
  with pytest.raises(ValueError, match="truncated"):
    E.read_aedat2(path2)
  with pytest.raises(ValueError, match="128x128"):
    E.write_aedat2(path2, _random_stream(np.random.default_rng(1), size=(200, 100)))


def test_read_events_npz_npy(tmp_path):
  stream = _random_stream(np.random.default_rng(2), size=(40, 30))
  np.savez(tmp_path / "e.npz", t=stream.t, x=stream.x, y=stream.y, p=stream.p, sensor=[40, 30])
  np.save(tmp_path / "e.npy", stream.to_structured())
  for name, kw in (("e.npz", {}), ("e.npy", {"sensor_size": (40, 30)})):
    back = E.read_events(tmp_path / name, **kw)
    assert back.sensor_size == (40, 30)
    np.testing.assert_array_equal(back.t, stream.t)
    np.testing.assert_array_equal(back.y, stream.y)
  (tmp_path / "x.bin").write_bytes(b"\x00" * 16)
  with pytest.raises(ValueError, match="unknown event file format"):
    E.read_events(tmp_path / "x.bin")


# --------------------------------------------------------------------------- container


def test_from_arrays_validation():
  ok = E.EventStream.from_arrays([0, 1, 1], [0, 3, 2], [1, 0, 2], [-1, 1, 1])
  assert ok.sensor_size == (4, 3) and ok.p.tolist() == [0, 1, 1] and len(ok) == 3
  assert ok.duration_us == 1
  with pytest.raises(ValueError, match="different lengths"):
    E.EventStream.from_arrays([0, 1], [0], [0], [0])
  with pytest.raises(ValueError, match="outside"):
    E.EventStream.from_arrays([0, 1], [0, 5], [0, 0], [0, 1], sensor_size=(4, 4))
  with pytest.raises(ValueError, match="polarity"):
    E.EventStream.from_arrays([0, 1], [0, 1], [0, 0], [0, 2])
  with pytest.raises(ValueError, match="sort=True"):
    E.EventStream.from_arrays([5, 1], [0, 1], [0, 0], [0, 1])
  with pytest.raises(ValueError, match="non-integer"):
    E.EventStream.from_arrays([0.5, 1], [0, 1], [0, 0], [0, 1])
  with pytest.raises(ValueError, match="empty"):
    E.EventStream.from_arrays([], [], [], [])
  s = E.EventStream.from_arrays([5, 1, 3], [0, 1, 2], [0, 0, 1], [0, 1, 1], sort=True)
  assert s.t.tolist() == [1, 3, 5] and s.x.tolist() == [1, 2, 0]
  rec = s.to_structured()
  again = E.EventStream.from_arrays(rec, sensor_size=(3, 2))
  np.testing.assert_array_equal(again.x, s.x)
  assert s.slice_time(2, 5).t.tolist() == [3]
  c = s.crop(1, 0, 2, 2)
  assert c.sensor_size == (2, 2) and c.x.tolist() == [0, 1] and c.t.tolist() == [1, 3]
  d = E.EventStream.from_arrays([0, 1], [4, 5], [2, 3], [0, 1], sensor_size=(6, 5)).downsample(2)
  assert d.sensor_size == (3, 3) and d.x.tolist() == [2, 2] and d.y.tolist() == [1, 1]


# --------------------------------------------------------------------------- events -> frames


@pytest.fixture()
def hand():
  # sensor 4 wide x 3 high; 10 events at uneven times.
  t = [0, 1, 2, 3, 10, 20, 30, 60, 80, 99]
  x = [0, 1, 2, 3, 0, 0, 3, 3, 1, 1]
  y = [0, 0, 1, 2, 0, 0, 2, 2, 1, 1]
  p = [1, 0, 1, 1, 1, 1, 0, 1, 0, 0]
  return E.EventStream.from_arrays(t, x, y, p, sensor_size=(4, 3))


def test_events_to_frames_time_split(hand):
  f = E.events_to_frames(hand, 4, t_start=0, t_end=100)   # bins [0,25) [25,50) [50,75) [75,100)
  assert f.shape == (4, 3, 4, 2) and f.dtype == np.float32
  assert f.sum(axis=(1, 2, 3)).tolist() == [6, 1, 1, 2]
  assert f[0, 0, 0, 1] == 3 and f[0, 0, 1, 0] == 1 and f[0, 1, 2, 1] == 1 and f[0, 2, 3, 1] == 1
  assert f[1, 2, 3, 0] == 1 and f[2, 2, 3, 1] == 1 and f[3, 1, 1, 0] == 2
  # default window [0, 99 + 1): bin = t * 3 // 100
  d = E.events_to_frames(hand, 3)
  assert d.sum(axis=(1, 2, 3)).tolist() == [7, 1, 2]
  # window [10, 61) drops the other events; bin = (t - 10) * 2 // 51
  w = E.events_to_frames(hand, 2, t_start=10, t_end=61)
  assert w.sum(axis=(1, 2, 3)).tolist() == [3, 1]
  b = E.events_to_frames(hand, 4, mode="binary", t_start=0, t_end=100)
  assert b.max() == 1 and b[0, 0, 0, 1] == 1 and b.sum() == 7
  one = E.events_to_frames(hand, 1, polarity_channels=False)
  assert one.shape == (1, 3, 4, 1) and one[0, :, :, 0].tolist() == [
      [3, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 3]]


def test_events_to_frames_count_split_and_resize(hand):
  f = E.events_to_frames(hand, 3, split_by="count")   # array_split: 4, 3, 3 events
  assert f.sum(axis=(1, 2, 3)).tolist() == [4, 3, 3]
  assert f[1, 0, 0, 1] == 2 and f[1, 2, 3, 0] == 1 and f[2, 1, 1, 0] == 2
  assert E.events_to_frames(hand, 12, split_by="count").sum(axis=(1, 2, 3)).tolist() == (
      [1] * 10 + [0, 0])
  r = E.events_to_frames(hand, 1, size=(1, 2), polarity_channels=False)   # x // 2, y // 3
  assert r.shape == (1, 1, 2, 1) and r[0, 0, :, 0].tolist() == [6, 4]
  r = E.events_to_frames(hand, 1, size=(2, 8))   # upsampling: out = x * 8 // 4, y * 2 // 3
  assert r.sum() == 10 and r[0, 1, 6, 1] == 2 and r[0, 0, 2, 0] == 3


def test_events_to_frames_errors_and_empty(hand):
  for kw in ({"time_steps": 0}, {"time_steps": 2, "size": (0, 3)},
             {"time_steps": 2, "split_by": "number"}, {"time_steps": 2, "mode": "sum"},
             {"time_steps": 2, "t_start": 5, "t_end": 5}):
    with pytest.raises(ValueError):
      E.events_to_frames(hand, **kw)
  empty = hand.slice_time(200, 300)
  assert len(empty) == 0
  z = E.events_to_frames(empty, 3, size=5)
  assert z.shape == (3, 5, 5, 2) and not z.any()


def test_numpy_and_jax_agree():
  import jax.numpy as jnp
  rng = np.random.default_rng(3)
  stream = _random_stream(rng, n=700, size=(34, 26))
  pad = 1024
  def padded(a, dtype):
    out = np.zeros(pad, dtype)
    out[:len(a)] = a
    return jnp.asarray(out)
  args = [padded(stream.t, np.int32), padded(stream.x, np.int32), padded(stream.y, np.int32),
          padded(stream.p, np.int32), padded(np.ones(len(stream), bool), bool)]
  configs = [dict(split_by="time"), dict(split_by="count"),
             dict(split_by="time", mode="binary", size=(13, 17)),
             dict(split_by="count", size=(8, 8), polarity_channels=False),
             dict(split_by="time", t_start=100_000, t_end=800_000)]
  for cfg in configs:
    ref = E.events_to_frames(stream, 5, **cfg)
    kw = dict(cfg)
    for k in ("t_start", "t_end"):
      if k in kw:
        kw[k] = jnp.int32(kw[k])
    out = E.events_to_frames_jax(*args, time_steps=5, sensor_size=(34, 26), **kw)
    np.testing.assert_array_equal(np.asarray(out), ref, err_msg=str(cfg))
  none = E.events_to_frames_jax(*args[:4], jnp.zeros(pad, bool), time_steps=5,
                                sensor_size=(34, 26))
  assert not np.asarray(none).any()


def test_numpy_and_jax_agree_on_real_recording(real):
  import jax.numpy as jnp
  events = real[0]
  t = jnp.asarray((events.t - events.t[0]).astype(np.int32))
  out = E.events_to_frames_jax(t, jnp.asarray(events.x), jnp.asarray(events.y),
                               jnp.asarray(events.p), jnp.ones(len(events), bool),
                               time_steps=6, sensor_size=events.sensor_size, size=(64, 64))
  np.testing.assert_array_equal(np.asarray(out), E.events_to_frames(events, 6, size=(64, 64)))


# --------------------------------------------------------------------------- HAR-DVS


def test_hardvs_frame_channels_thresholds():
  p = np.array([0.0, 0.11, 0.12, 0.2, 0.3, 0.31, 0.78, 0.79, 1.0], np.float32)
  out = E.hardvs_frame_channels(p[None])   # [1, 9] "image" -> [1, 9, 2]
  assert out.shape == (1, 9, 2) and out.dtype == np.float32
  assert out[0, :, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0]
  assert out[0, :, 1].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0]   # > 0.78 -> 0.3 -> neither
  # uint8 input (ToTensor: v / 255): 30/255 < 0.12 < 31/255; 76/255 < 0.3 < 77/255;
  # 198/255 <= 0.78 < 199/255.
  u = np.array([[0, 30, 31, 76, 77, 198, 199, 255]], np.uint8)
  o = E.hardvs_frame_channels(u)
  assert o[0, :, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
  assert o[0, :, 1].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
  assert E.hardvs_frame_channels(np.zeros((8, 5, 6), np.uint8)).shape == (8, 5, 6, 2)


def test_hardvs_sample_frames():
  rng = np.random.default_rng(0)
  starts = set()
  for _ in range(400):
    idx, mask = E.hardvs_sample_frames(12, 8, rng)
    assert mask.all() and np.all(np.diff(idx) == 1)
    starts.add(int(idx[0]))
  assert starts == set(range(5))   # uniform start in [0, n - T]
  idx, mask = E.hardvs_sample_frames(8, 8, rng)
  assert idx.tolist() == list(range(8)) and mask.all()
  idx, mask = E.hardvs_sample_frames(5, 8, rng)
  assert idx.tolist() == [0, 1, 2, 3, 4, 0, 0, 0]
  assert mask.tolist() == [True] * 5 + [False] * 3
  with pytest.raises(ValueError):
    E.hardvs_sample_frames(5, 0, rng)


def test_missing_decompressor_names_the_package(monkeypatch):
  if not AEDAT4.is_file():
    pytest.skip(f"real DVS sample absent in {DVS_DIR}")
  monkeypatch.setitem(sys.modules, "lz4", None)
  monkeypatch.setitem(sys.modules, "lz4.frame", None)
  with pytest.raises(ImportError, match="pip install lz4"):
    E.read_aedat4(AEDAT4)
