"""Event-camera data: an ``EventStream`` container, AEDAT readers, events -> frames (numpy / JAX).

Public API::

  EventStream.from_arrays(t, x=None, y=None, p=None, sensor_size=None, *, sort=False)
      # t int64 us (non-decreasing), x/y int32 pixels, p uint8 (1 = ON, 0 = OFF),
      # sensor_size = (width, height); ``t`` may instead be a structured array with t, x, y, p
  stream.sort(), stream.slice_time(t0, t1), stream.crop(x0, y0, width, height),
  stream.downsample(factor), stream.to_structured(), len(stream), stream.duration_us

  read_aedat4(path, *, frames=False) -> EventStream | (EventStream, frames uint8 [N, H, W],
                                                      frame_t int64 [N])
  read_aedat2(path, sensor='dvs128') -> EventStream          # jAER AEDAT 2.0 (CIFAR10-DVS)
  write_aedat2(path, stream, sensor='dvs128')
  read_events(path, *, sensor_size=None) -> EventStream      # by magic line / suffix

  events_to_frames(stream, time_steps, *, split_by='time', mode='count', size=None,
                   polarity_channels=True, t_start=None, t_end=None) -> float32 [T, H, W, C]
  events_to_frames_jax(t, x, y, p, valid, *, time_steps, sensor_size, ...)  # jit-able, padded

  hardvs_frame_channels(images) -> float32 [..., H, W, 2]    # spec section 6.1 thresholds
  hardvs_sample_frames(n_frames, time_steps=8, rng=None) -> (int64 indices [T], bool mask [T])

Frames are channels-last (NHWC, like the rest of the repo); with ``polarity_channels`` channel 0
counts OFF events and channel 1 ON events. Readers always return time-sorted streams (a stable
sort, which leaves an already sorted file in file order).

AEDAT 4 (iniVation DV): ``#!AER-DAT4.0\\r\\n``, an int32 size and a FlatBuffers ``IOHeader``
(compression, data-table position, XML stream description), then packets ``int32 stream id,
int32 size, size bytes`` of (LZ4-frame / zstd compressed) size-prefixed FlatBuffers: ``EVTS``
event packets (a vector of 16-byte structs ``int64 t; int16 x; int16 y; bool on``) and ``FRME``
frames (one per packet). Decompression needs the ``lz4`` / ``zstandard`` packages.

AEDAT 2.0 DVS128 addresses follow SpikingJelly's CIFAR10-DVS loader
(``spikingjelly/datasets/cifar10_dvs.py``, ``_load_origin_data``): records are big-endian
``uint32 address, uint32 timestamp (us)`` and ::

  x = 127 - ((addr >> 8) & 0x7F),  y = 127 - ((addr >> 1) & 0x7F),  p = 1 - (addr & 1)

i.e. jAER's raw x/y fields are swapped and both mirrored, and raw polarity bit 0 means ON.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import xml.etree.ElementTree as ET
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spikejax.data.errors import DataError

#: One AEDAT 4 event struct: ``int64 t; int16 x; int16 y; bool on`` + 3 bytes of padding.
AEDAT4_EVENT_DTYPE = np.dtype({"names": ["t", "x", "y", "on"],
                               "formats": ["<i8", "<i2", "<i2", "u1"],
                               "offsets": [0, 8, 10, 12], "itemsize": 16})
#: Structured layout of ``EventStream.to_structured`` (and accepted by ``read_events`` ``.npy``).
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i4"), ("y", "<i4"), ("p", "u1")])

AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"
AEDAT2_MAGIC = b"#!AER-DAT2.0"
_AEDAT4_COMPRESSION = {0: "NONE", 1: "LZ4", 2: "LZ4_HIGH", 3: "ZSTD", 4: "ZSTD_HIGH"}
_DVS128_SIZE = (128, 128)


# --------------------------------------------------------------------------- container


def _as_int_array(name: str, a) -> np.ndarray:
  """1-D integer int64 copy of ``a`` (floats allowed only when integral-valued)."""
  a = np.asarray(a)
  if a.ndim != 1:
    raise ValueError(f"events: {name} must be 1-D, got shape {a.shape}; pass flat per-event arrays")
  if a.dtype.kind in "iub":
    return a.astype(np.int64)
  if a.dtype.kind == "f":
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
      raise ValueError(f"events: {name} has non-integer values; {name} must be integer "
                       f"(timestamps in microseconds, e.g. np.round(t_seconds * 1e6))")
    return a.astype(np.int64)
  raise ValueError(f"events: {name} has dtype {a.dtype}; expected an integer array")


@dataclasses.dataclass(frozen=True, eq=False)
class EventStream:
  """Time-sorted polarity events of one sensor (build with ``from_arrays`` to validate).

  Attributes:
    t: int64 [N] timestamps in microseconds, non-decreasing.
    x: int32 [N] column, ``0 <= x < width``.
    y: int32 [N] row, ``0 <= y < height``.
    p: uint8 [N] polarity, 1 = ON (brighter), 0 = OFF.
    sensor_size: ``(width, height)``.
  """
  t: np.ndarray
  x: np.ndarray
  y: np.ndarray
  p: np.ndarray
  sensor_size: tuple[int, int]

  def __post_init__(self):
    n = len(self.t)
    if not all(isinstance(a, np.ndarray) and a.ndim == 1 and len(a) == n
               for a in (self.t, self.x, self.y, self.p)):
      raise ValueError("EventStream: t, x, y, p must be 1-D numpy arrays of equal length; "
                       "use EventStream.from_arrays(...) to convert and validate")
    object.__setattr__(self, "sensor_size", tuple(int(s) for s in self.sensor_size))

  @classmethod
  def from_arrays(cls, t, x=None, y=None, p=None,
                  sensor_size: Sequence[int] | None = None, *, sort: bool = False) -> EventStream:
    """Validate and convert per-event arrays (or one structured array) to an ``EventStream``.

    Args:
      t: timestamps (integer microseconds), or a structured array with fields t, x, y, p (then
        ``x``, ``y``, ``p`` must be None).
      x, y: integer pixel coordinates (non-negative, inside the sensor).
      p: polarity with values in {0, 1} (1 = ON), {-1, 1} (mapped to {0, 1}) or bool.
      sensor_size: ``(width, height)``; default ``(max x + 1, max y + 1)``.
      sort: stably sort by time instead of rejecting decreasing timestamps.

    Raises:
      ValueError: naming the problem (shape, dtype, range, polarity values, order) and the fix.
    """
    if isinstance(t, np.ndarray) and t.dtype.names is not None:
      if x is not None or y is not None or p is not None:
        raise ValueError("events: pass either a structured array or separate t, x, y, p")
      missing = [f for f in "txyp" if f not in t.dtype.names]
      if missing:
        raise ValueError(f"events: structured array lacks field(s) {missing}; it has "
                         f"{list(t.dtype.names)} (needed: t, x, y, p)")
      t, x, y, p = t["t"], t["x"], t["y"], t["p"]
    if x is None or y is None or p is None:
      raise ValueError("events: x, y and p are required (or pass one structured array as t)")
    t, x, y = _as_int_array("t", t), _as_int_array("x", x), _as_int_array("y", y)
    p = np.asarray(p)
    if p.ndim != 1:
      raise ValueError(f"events: p must be 1-D, got shape {p.shape}")
    if not len(t) == len(x) == len(y) == len(p):
      raise ValueError(f"events: t, x, y, p have different lengths "
                       f"{len(t)}, {len(x)}, {len(y)}, {len(p)}; they must be per-event arrays")
    p = _polarity(p)
    if sensor_size is None:
      if len(t) == 0:
        raise ValueError("events: cannot infer sensor_size of an empty stream; "
                         "pass sensor_size=(width, height)")
      sensor_size = (int(x.max()) + 1, int(y.max()) + 1)
    sensor_size = _check_sensor_size(sensor_size)
    for name, a, lim in (("x", x, sensor_size[0]), ("y", y, sensor_size[1])):
      if len(a) and (a.min() < 0 or a.max() >= lim):
        bad = int(np.sum((a < 0) | (a >= lim)))
        raise ValueError(f"events: {bad} {name} value(s) outside [0, {lim}) (range "
                         f"{a.min()}..{a.max()}) for sensor_size (width, height) = {sensor_size}; "
                         "pass the right sensor_size (or crop the events)")
    if len(t) > 1:
      dec = np.flatnonzero(np.diff(t) < 0)
      if len(dec):
        if not sort:
          i = int(dec[0])
          raise ValueError(f"events: timestamps decrease at index {i + 1} ({t[i]} -> {t[i + 1]}, "
                           f"{len(dec)} decrease(s) in all); pass sort=True to sort them by time")
        order = np.argsort(t, kind="stable")
        t, x, y, p = t[order], x[order], y[order], p[order]
    return cls(t, x.astype(np.int32), y.astype(np.int32), p, sensor_size)

  def __len__(self) -> int:
    return len(self.t)

  @property
  def width(self) -> int:
    return self.sensor_size[0]

  @property
  def height(self) -> int:
    return self.sensor_size[1]

  @property
  def duration_us(self) -> int:
    """``t[-1] - t[0]`` (0 for fewer than two events)."""
    return int(self.t[-1] - self.t[0]) if len(self.t) else 0

  def _take(self, index, sensor_size=None, x=None, y=None) -> EventStream:
    return EventStream(self.t[index], self.x[index] if x is None else x,
                       self.y[index] if y is None else y, self.p[index],
                       self.sensor_size if sensor_size is None else sensor_size)

  def sort(self) -> EventStream:
    """Stably sorted by time (``self`` if already sorted)."""
    if len(self.t) < 2 or np.all(np.diff(self.t) >= 0):
      return self
    return self._take(np.argsort(self.t, kind="stable"))

  def slice_time(self, t0: int | None = None, t1: int | None = None) -> EventStream:
    """Events with ``t0 <= t < t1`` (None: unbounded); assumes a sorted stream."""
    lo = 0 if t0 is None else int(np.searchsorted(self.t, t0, side="left"))
    hi = len(self.t) if t1 is None else int(np.searchsorted(self.t, t1, side="left"))
    return self._take(slice(lo, max(lo, hi)))

  def crop(self, x0: int, y0: int, width: int, height: int) -> EventStream:
    """Events inside the box, shifted to its origin; the new sensor is ``(width, height)``."""
    keep = (self.x >= x0) & (self.x < x0 + width) & (self.y >= y0) & (self.y < y0 + height)
    return self._take(keep, _check_sensor_size((width, height)),
                      x=self.x[keep] - x0, y=self.y[keep] - y0)

  def downsample(self, factor: int) -> EventStream:
    """Integer-divide the coordinates by ``factor`` (sensor ``ceil(size / factor)``)."""
    if int(factor) != factor or factor < 1:
      raise ValueError(f"downsample factor must be a positive integer, got {factor}")
    f = int(factor)
    size = (-(-self.width // f), -(-self.height // f))
    return EventStream(self.t, self.x // f, self.y // f, self.p, size)

  def to_structured(self) -> np.ndarray:
    """Structured array with fields t (int64), x, y (int32), p (uint8)."""
    out = np.empty(len(self.t), EVENT_DTYPE)
    out["t"], out["x"], out["y"], out["p"] = self.t, self.x, self.y, self.p
    return out


def _polarity(p: np.ndarray) -> np.ndarray:
  if p.dtype == np.bool_:
    return p.astype(np.uint8)
  if p.dtype.kind not in "iuf":
    raise ValueError(f"events: p has dtype {p.dtype}; expected integer or bool polarities")
  values = set(np.unique(p).tolist())
  if values <= {0, 1}:
    return p.astype(np.uint8)
  if values <= {-1, 1}:
    return (p > 0).astype(np.uint8)
  raise ValueError(f"events: polarity values {sorted(values)[:6]} are neither in {{0, 1}} nor in "
                   "{-1, 1}; map them to 1 = ON, 0 = OFF")


def _check_sensor_size(sensor_size) -> tuple[int, int]:
  try:
    w, h = (int(s) for s in sensor_size)
  except (TypeError, ValueError):
    raise ValueError(f"sensor_size must be (width, height), got {sensor_size!r}") from None
  if w < 1 or h < 1:
    raise ValueError(f"sensor_size (width, height) must be positive, got {(w, h)}")
  return w, h


# --------------------------------------------------------------------------- AEDAT 4


class _Corrupt(Exception):
  """Internal: a malformed structure at an offset relative to the current buffer."""

  def __init__(self, offset: int, what: str):
    super().__init__(what)
    self.offset, self.what = offset, what


def _unpack(fmt: str, buf, pos: int):
  if pos < 0 or pos + struct.calcsize(fmt) > len(buf):
    raise _Corrupt(pos, f"FlatBuffer read of {struct.calcsize(fmt)} bytes at {pos} is outside "
                        f"the {len(buf)}-byte buffer")
  return struct.unpack_from(fmt, buf, pos)


def _fb_root(buf, size_prefixed: bool, identifier: bytes | None) -> tuple[int, int]:
  """Root table position of a FlatBuffer (and the byte count the buffer should have)."""
  base = 4 if size_prefixed else 0
  if size_prefixed:
    (size,) = _unpack("<I", buf, 0)
    if size + 4 > len(buf):
      raise _Corrupt(0, f"FlatBuffer size prefix {size} exceeds the {len(buf) - 4} bytes present")
  (root,) = _unpack("<I", buf, base)
  if identifier is not None and bytes(buf[base + 4:base + 8]) != identifier:
    raise _Corrupt(base + 4, f"FlatBuffer identifier {bytes(buf[base + 4:base + 8])!r} is not "
                             f"{identifier!r}")
  return base, base + root


def _fb_fields(buf, table: int) -> list[int | None]:
  """Absolute positions of a table's fields (None where absent)."""
  (soff,) = _unpack("<i", buf, table)
  vt = table - soff
  vsize, _ = _unpack("<HH", buf, vt)
  if vsize < 4 or vsize % 2:
    raise _Corrupt(vt, f"bad FlatBuffer vtable size {vsize}")
  offs = _unpack(f"<{(vsize - 4) // 2}H", buf, vt + 4)
  return [table + o if o else None for o in offs]


def _fb_get(fields, i, fmt, buf, default):
  return default if i >= len(fields) or fields[i] is None else _unpack(fmt, buf, fields[i])[0]


def _fb_deref(buf, fields, i) -> int | None:
  """Target of an offset field (string / vector / table), None if absent."""
  if i >= len(fields) or fields[i] is None:
    return None
  (off,) = _unpack("<I", buf, fields[i])
  return fields[i] + off


def _fb_vector(buf, pos: int, itemsize: int) -> tuple[int, int]:
  """(start, length) of a vector; checks that it lies in the buffer."""
  (n,) = _unpack("<I", buf, pos)
  if pos + 4 + n * itemsize > len(buf):
    raise _Corrupt(pos, f"FlatBuffer vector of {n} x {itemsize} bytes runs past the buffer end")
  return pos + 4, n


def _decompress(data: bytes, compression: int) -> bytes:
  if compression == 0:
    return data
  if compression in (1, 2):
    try:
      import lz4.frame
    except ImportError:
      raise ImportError("reading LZ4-compressed AEDAT 4 needs the lz4 package: pip install lz4") \
        from None
    return lz4.frame.decompress(data)
  try:
    import zstandard
  except ImportError:
    raise ImportError("reading zstd-compressed AEDAT 4 needs the zstandard package: "
                      "pip install zstandard") from None
  return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _aedat4_streams(info: str) -> dict[int, dict]:
  """Stream id -> {'type', 'size'} from the IOHeader's XML info node."""
  streams = {}
  root = ET.fromstring(info)
  for node in root.iter("node"):
    if not node.get("name", "").isdigit():
      continue
    attrs = {a.get("key"): (a.text or "") for a in node.findall("attr")}
    if "typeIdentifier" not in attrs:
      continue
    size = None
    for sub in node.findall("node"):
      if sub.get("name") == "info":
        sattrs = {a.get("key"): (a.text or "") for a in sub.findall("attr")}
        if "sizeX" in sattrs and "sizeY" in sattrs:
          size = (int(sattrs["sizeX"]), int(sattrs["sizeY"]))
    streams[int(node.get("name"))] = {"type": attrs["typeIdentifier"], "size": size}
  return streams


def read_aedat4(path: str | os.PathLike, *, frames: bool = False):
  """Read the polarity events (and optionally the greyscale frames) of an AEDAT 4 file.

  The first ``EVTS`` stream gives the events (absolute timestamps in microseconds, as
  recorded); ``sensor_size`` comes from its ``sizeX``/``sizeY``. Packets are read up to the
  header's data-table position (or the end of the file).

  Args:
    path: the ``.aedat4`` file.
    frames: also decode the first ``FRME`` stream (8-bit grey frames only).

  Returns:
    The ``EventStream``; with ``frames=True`` the tuple ``(events, frames, frame_t)`` with uint8
    frames [N, height, width] (an ROI is pasted at its offset into a zero image) and int64
    frame timestamps [N] (the frames' central ``t`` field).

  Raises:
    ValueError: for a malformed file, naming the path, the byte offset and the problem.
    ImportError: if the needed decompressor (``lz4`` / ``zstandard``) is missing.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    data = f.read()
  buf = memoryview(data)

  def fail(offset, what):
    return ValueError(f"{path}: corrupt AEDAT 4 file at byte {offset}: {what}")

  if not data.startswith(AEDAT4_MAGIC):
    raise fail(0, f"the file starts with {data[:14]!r}, not the AEDAT 4 magic {AEDAT4_MAGIC!r}"
                  + ("" if not data.startswith(b"#!AER-DAT") else "; use read_events()"))
  pos = len(AEDAT4_MAGIC)
  if len(data) < pos + 4:
    raise fail(pos, "the file is truncated inside the IOHeader size")
  (hsize,) = struct.unpack_from("<i", data, pos)
  if hsize <= 0 or pos + 4 + hsize > len(data):
    raise fail(pos, f"IOHeader size {hsize} does not fit the {len(data)}-byte file "
                    "(truncated file?)")
  hbuf = buf[pos + 4:pos + 4 + hsize]
  try:
    _, root = _fb_root(hbuf, size_prefixed=False, identifier=b"IOHE")
    fields = _fb_fields(hbuf, root)
    compression = _fb_get(fields, 0, "<i", hbuf, 0)
    table_pos = _fb_get(fields, 1, "<q", hbuf, -1)
    spos = _fb_deref(hbuf, fields, 2)
    if spos is None:
      raise _Corrupt(root, "the IOHeader has no info string")
    start, n = _fb_vector(hbuf, spos, 1)
    info = bytes(hbuf[start:start + n]).decode("utf-8")
  except _Corrupt as e:
    raise fail(pos + 4 + e.offset, f"bad IOHeader: {e.what}") from None
  if compression not in _AEDAT4_COMPRESSION:
    raise fail(pos + 4, f"unknown compression type {compression} (known: "
                        f"{_AEDAT4_COMPRESSION})")
  try:
    streams = _aedat4_streams(info)
  except (ET.ParseError, ValueError) as e:
    raise fail(pos + 4, f"unreadable XML stream description ({e})") from None
  ev_ids = sorted(i for i, s in streams.items() if s["type"] == "EVTS")
  fr_ids = sorted(i for i, s in streams.items() if s["type"] == "FRME")
  if not ev_ids:
    raise fail(pos + 4, f"no event (EVTS) stream in the file; streams: {streams}")
  ev_id = ev_ids[0]
  fr_id = fr_ids[0] if fr_ids else None
  end = len(data) if table_pos is None or table_pos < 0 else min(table_pos, len(data))

  event_chunks, frame_list, frame_ts = [], [], []
  pos += 4 + hsize
  while pos < end:
    if pos + 8 > len(data):
      raise fail(pos, "the file is truncated inside a packet header")
    sid, size = struct.unpack_from("<ii", data, pos)
    if size < 0 or pos + 8 + size > len(data):
      raise fail(pos, f"packet of stream {sid} claims {size} bytes but only "
                      f"{len(data) - pos - 8} remain (truncated file?)")
    if sid == ev_id or (frames and sid == fr_id):
      try:
        packet = _decompress(data[pos + 8:pos + 8 + size], compression)
      except ImportError:
        raise
      except Exception as e:  # lz4 / zstd raise RuntimeError or their own error types.
        raise fail(pos, f"cannot decompress the {_AEDAT4_COMPRESSION[compression]} packet of "
                        f"stream {sid} ({type(e).__name__}: {e})") from None
      try:
        if sid == ev_id:
          event_chunks.append(_parse_event_packet(packet))
        else:
          frame, ft = _parse_frame_packet(packet, streams[fr_id]["size"])
          frame_list.append(frame)
          frame_ts.append(ft)
      except _Corrupt as e:
        raise fail(pos, f"bad packet of stream {sid} (at byte {e.offset} of its decompressed "
                        f"{len(packet)} bytes): {e.what}") from None
    pos += 8 + size

  ev = (np.concatenate(event_chunks) if event_chunks else np.empty(0, AEDAT4_EVENT_DTYPE))
  events = EventStream.from_arrays(ev["t"], ev["x"], ev["y"], ev["on"],
                                   sensor_size=streams[ev_id]["size"], sort=True)
  if not frames:
    return events
  if frame_list:
    fr = np.stack(frame_list)
  else:
    w, h = (streams[fr_id]["size"] if fr_id is not None and streams[fr_id]["size"]
            else events.sensor_size)
    fr = np.zeros((0, h, w), np.uint8)
  return events, fr, np.asarray(frame_ts, np.int64)


def _parse_event_packet(packet: bytes) -> np.ndarray:
  buf = memoryview(packet)
  _, root = _fb_root(buf, size_prefixed=True, identifier=b"EVTS")
  vec = _fb_deref(buf, _fb_fields(buf, root), 0)
  if vec is None:
    return np.empty(0, AEDAT4_EVENT_DTYPE)
  start, n = _fb_vector(buf, vec, AEDAT4_EVENT_DTYPE.itemsize)
  return np.frombuffer(packet, AEDAT4_EVENT_DTYPE, count=n, offset=start)


def _parse_frame_packet(packet: bytes, sensor: tuple[int, int] | None) -> tuple[np.ndarray, int]:
  # table Frame {t, begin_t, end_t, exposure_begin_t, exposure_end_t: int64; format: int8;
  #              width, height, offset_x, offset_y: int16; pixels: [uint8]}
  buf = memoryview(packet)
  _, root = _fb_root(buf, size_prefixed=True, identifier=b"FRME")
  fields = _fb_fields(buf, root)
  t = _fb_get(fields, 0, "<q", buf, 0)
  fmt = _fb_get(fields, 5, "<b", buf, 0)
  w, h = _fb_get(fields, 6, "<h", buf, 0), _fb_get(fields, 7, "<h", buf, 0)
  ox, oy = _fb_get(fields, 8, "<h", buf, 0), _fb_get(fields, 9, "<h", buf, 0)
  if fmt != 0:
    raise _Corrupt(root, f"frame format {fmt} is not supported (only 8-bit grey, format 0)")
  vec = _fb_deref(buf, fields, 10)
  start, n = _fb_vector(buf, vec, 1) if vec is not None else (0, 0)
  if n != w * h or w < 0 or h < 0:
    raise _Corrupt(root, f"frame of {w}x{h} pixels has {n} pixel bytes")
  img = np.frombuffer(packet, np.uint8, count=n, offset=start).reshape(h, w)
  sw, sh = sensor if sensor else (w + ox, h + oy)
  if (sw, sh) == (w, h) and ox == oy == 0:
    return img.copy(), t
  if ox < 0 or oy < 0 or ox + w > sw or oy + h > sh:
    raise _Corrupt(root, f"frame ROI {w}x{h} at ({ox}, {oy}) lies outside the {sw}x{sh} sensor")
  full = np.zeros((sh, sw), np.uint8)
  full[oy:oy + h, ox:ox + w] = img
  return full, t


# --------------------------------------------------------------------------- AEDAT 2


def _check_aedat2_sensor(sensor: str):
  if sensor != "dvs128":
    raise ValueError(f"AEDAT 2.0 sensor {sensor!r} is not supported; only 'dvs128' (CIFAR10-DVS)")


def read_aedat2(path: str | os.PathLike, sensor: str = "dvs128") -> EventStream:
  """Read a jAER AEDAT 2.0 DVS128 recording (e.g. a CIFAR10-DVS ``.aedat`` file).

  The ASCII header is every leading line starting with ``#`` (up to ``#End Of ASCII Header``
  when present); then 8-byte big-endian records ``uint32 address, uint32 timestamp (us)``.
  Addresses are decoded with SpikingJelly's CIFAR10-DVS convention (module docstring); bits
  above 14 (jAER's special-event flag) are ignored, as there. The result is stably sorted by
  time.

  Raises:
    ValueError: unsupported ``sensor``, an unterminated header or a truncated last record.
  """
  _check_aedat2_sensor(sensor)
  path = os.fspath(path)
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while data[pos:pos + 1] == b"#":
    nl = data.find(b"\n", pos)
    if nl < 0:
      raise DataError(f"{path}: AEDAT 2.0 header line at byte {pos} has no end of line "
                       "(truncated file?)")
    line, pos = data[pos:nl].strip(), nl + 1
    if line.lower() == b"#end of ascii header":
      break
  body = len(data) - pos
  if body % 8:
    raise DataError(f"{path}: AEDAT 2.0 data from byte {pos} has {body} bytes, not a multiple "
                     f"of the 8-byte record; the last {body % 8} bytes (at byte "
                     f"{len(data) - body % 8}) are a truncated record")
  rec = np.frombuffer(data, ">u4", offset=pos).reshape(-1, 2)
  addr, ts = rec[:, 0], rec[:, 1].astype(np.int64)
  x = 127 - ((addr >> 8) & 0x7F).astype(np.int32)
  y = 127 - ((addr >> 1) & 0x7F).astype(np.int32)
  p = (1 - (addr & 1)).astype(np.uint8)
  return EventStream.from_arrays(ts, x, y, p, sensor_size=_DVS128_SIZE, sort=True)


def write_aedat2(path: str | os.PathLike, stream: EventStream, sensor: str = "dvs128") -> None:
  """Write ``stream`` as jAER AEDAT 2.0 DVS128 (the exact inverse of ``read_aedat2``).

  Raises:
    ValueError: if the stream does not fit a 128x128 sensor or timestamps are outside uint32.
  """
  _check_aedat2_sensor(sensor)
  if len(stream) and (stream.x.max() >= 128 or stream.y.max() >= 128):
    raise ValueError(f"write_aedat2: coordinates up to ({stream.x.max()}, {stream.y.max()}) do "
                     "not fit the 128x128 DVS128; crop or downsample the stream first")
  if len(stream) and (stream.t.min() < 0 or stream.t.max() >= 2**32):
    raise ValueError("write_aedat2: timestamps must lie in [0, 2**32) microseconds; "
                     "subtract the first timestamp first")
  addr = (((127 - stream.x.astype(np.uint32)) << 8) | ((127 - stream.y.astype(np.uint32)) << 1)
          | (1 - stream.p.astype(np.uint32)))
  rec = np.stack([addr, stream.t.astype(np.uint32)], axis=1).astype(">u4")
  with open(path, "wb") as f:
    f.write(AEDAT2_MAGIC + b"\r\n# written by spikejax.data.events.write_aedat2 (DVS128)\r\n")
    f.write(rec.tobytes())


def read_events(path: str | os.PathLike, *, sensor_size: Sequence[int] | None = None
                ) -> EventStream:
  """Read events from AEDAT 4, AEDAT 2.0 (DVS128), ``.npz`` (t, x, y, p) or structured ``.npy``.

  The format is chosen by the file's first line (``#!AER-DAT4.0`` / ``#!AER-DAT2.0`` or another
  ``#`` header), else by the suffix. ``sensor_size`` is used for ``.npz`` / ``.npy`` files
  (an ``.npz`` may carry it as ``sensor`` or ``sensor_size``); otherwise it is inferred.

  Raises:
    ValueError: an unsupported format (AEDAT 3.x, unknown suffix) or malformed contents.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(16)
  if head.startswith(b"#!AER-DAT4"):
    return read_aedat4(path)
  if head.startswith(b"#!AER-DAT3"):
    raise DataError(f"{path}: AEDAT 3.x is not supported; convert it to AEDAT 4 (e.g. with "
                     "iniVation's dv tools) or to .npz")
  if head.startswith(b"#"):
    return read_aedat2(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npz":
    with np.load(path) as z:
      missing = [k for k in "txyp" if k not in z.files]
      if missing:
        raise DataError(f"{path}: .npz lacks array(s) {missing}; it has {z.files}")
      if sensor_size is None:
        for key in ("sensor_size", "sensor"):
          if key in z.files:
            sensor_size = tuple(int(v) for v in z[key])
      return EventStream.from_arrays(z["t"], z["x"], z["y"], z["p"], sensor_size=sensor_size)
  if suffix == ".npy":
    return EventStream.from_arrays(np.load(path), sensor_size=sensor_size)
  raise DataError(f"{path}: unknown event file format (first bytes {head!r}); expected an "
                   "AEDAT 4 / 2.0 file, .npz with t, x, y, p, or a structured .npy")


# --------------------------------------------------------------------------- events -> frames


def _check_frame_args(time_steps, split_by, mode, size, sensor_size):
  if isinstance(time_steps, bool) or int(time_steps) != time_steps or time_steps < 1:
    raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}")
  if split_by not in ("time", "count"):
    raise ValueError(f"split_by must be 'time' or 'count', got {split_by!r}")
  if mode not in ("count", "binary"):
    raise ValueError(f"mode must be 'count' or 'binary', got {mode!r}")
  w, h = _check_sensor_size(sensor_size)
  if size is None:
    return int(time_steps), (h, w)
  if isinstance(size, (int, np.integer)):
    size = (int(size), int(size))
  try:
    oh, ow = (int(s) for s in size)
  except (TypeError, ValueError):
    raise ValueError(f"size must be (height, width) or an int, got {size!r}") from None
  if oh < 1 or ow < 1:
    raise ValueError(f"size (height, width) must be positive, got {(oh, ow)}")
  return int(time_steps), (oh, ow)


def _time_edges(duration, steps, xp):
  """``ceil(i * duration / steps)`` for i < steps without overflowing ``i * duration``."""
  i = xp.arange(steps)
  q, r = duration // steps, duration % steps
  return i * q + (i * r + steps - 1) // steps


def _count_bins(rank, n, steps, xp):
  """np.array_split chunk of item ``rank`` of ``n`` (first ``n % steps`` chunks one longer)."""
  q, rem = n // steps, n % steps
  big = rem * (q + 1)
  return xp.where(rank < big, rank // (q + 1), rem + (rank - big) // xp.maximum(q, 1))


def events_to_frames(stream: EventStream, time_steps: int, *, split_by: str = "time",
                     mode: str = "count", size: Sequence[int] | int | None = None,
                     polarity_channels: bool = True, t_start: int | None = None,
                     t_end: int | None = None) -> np.ndarray:
  """Integrate events into ``time_steps`` frames, float32 [T, H, W, C] (channels-last).

  Args:
    stream: the (time-sorted) events.
    time_steps: number of frames T >= 1.
    split_by: 'time': T bins of equal duration over ``[t_start, t_end)``, event bin
      ``floor((t - t_start) * T / (t_end - t_start))``; 'count': the events in that window
      split into T chunks of nearly equal numbers in time order, ``np.array_split`` convention
      (the first ``n % T`` chunks hold one event more; chunks are empty when n < T).
    mode: 'count' (events per pixel) or 'binary' (1 where a pixel has any event).
    size: output ``(H, W)`` (or an int for square); coordinates are integer-binned,
      ``out_x = x * W // width``, ``out_y = y * H // height``. Default: the sensor size.
    polarity_channels: C = 2 with channel 0 = OFF and 1 = ON events; else C = 1 (all events).
    t_start, t_end: the window; defaults: the first event and the last event + 1 us (so every
      event is counted). Events outside ``[t_start, t_end)`` are dropped.

  Returns:
    float32 [T, H, W, C]; all zeros for an empty stream (or window).

  Raises:
    ValueError: time_steps < 1, a bad ``split_by`` / ``mode`` / ``size``, or ``t_end <=
      t_start``.
  """
  steps, (oh, ow) = _check_frame_args(time_steps, split_by, mode, size, stream.sensor_size)
  c = 2 if polarity_channels else 1
  out_shape = (steps, oh, ow, c)
  t = stream.t
  if len(t):
    t0 = int(t[0]) if t_start is None else int(t_start)
    t1 = int(t[-1]) + 1 if t_end is None else int(t_end)
  else:
    t0 = 0 if t_start is None else int(t_start)
    t1 = t0 + 1 if t_end is None else int(t_end)
  if t1 <= t0:
    raise ValueError(f"events_to_frames: empty window [t_start, t_end) = [{t0}, {t1})")
  keep = (t >= t0) & (t < t1)
  if not np.all(keep):
    t, x, y, p = t[keep], stream.x[keep], stream.y[keep], stream.p[keep]
  else:
    x, y, p = stream.x, stream.y, stream.p
  n = len(t)
  if n == 0:
    return np.zeros(out_shape, np.float32)
  if split_by == "time":
    b = np.searchsorted(_time_edges(t1 - t0, steps, np), t - t0, side="right") - 1
  else:
    b = _count_bins(np.arange(n), n, steps, np)
  xx = x.astype(np.int64) * ow // stream.width
  yy = y.astype(np.int64) * oh // stream.height
  flat = ((b * oh + yy) * ow + xx) * c + (p.astype(np.int64) if c == 2 else 0)
  frames = np.bincount(flat, minlength=steps * oh * ow * c).reshape(out_shape)
  if mode == "binary":
    frames = frames > 0
  return frames.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("time_steps", "sensor_size", "split_by", "mode",
                                             "size", "polarity_channels"))
def events_to_frames_jax(t: jax.Array, x: jax.Array, y: jax.Array, p: jax.Array,
                         valid: jax.Array, *, time_steps: int, sensor_size: tuple[int, int],
                         split_by: str = "time", mode: str = "count",
                         size: tuple[int, int] | int | None = None,
                         polarity_channels: bool = True, t_start: jax.Array | None = None,
                         t_end: jax.Array | None = None) -> jax.Array:
  """``events_to_frames`` for fixed-size padded event arrays (jit-compiled; same result).

  Args:
    t, x, y, p: [N] integer arrays, p in {0, 1} (padding entries arbitrary). Without ``jax_enable_x64``
      timestamps are int32: pass times relative to the recording start (fits ~35 minutes).
    valid: [N] bool, True for real events. Valid events must be in time order (for
      ``split_by='count'`` the chunks follow array order).
    time_steps, sensor_size ``(width, height)``, split_by, mode, size, polarity_channels:
      static; as in ``events_to_frames``.
    t_start, t_end: optional traced scalars; defaults: first valid event, last valid + 1.

  Returns:
    float32 [T, H, W, C]; zeros when no event is valid.
  """
  steps, (oh, ow) = _check_frame_args(time_steps, split_by, mode, size, sensor_size)
  width, height = sensor_size
  c = 2 if polarity_channels else 1
  total = steps * oh * ow * c
  t = jnp.asarray(t)
  valid = jnp.asarray(valid, bool)
  big = jnp.iinfo(t.dtype).max
  t0 = jnp.min(jnp.where(valid, t, big)) if t_start is None else jnp.asarray(t_start, t.dtype)
  t1 = (jnp.max(jnp.where(valid, t, jnp.iinfo(t.dtype).min)) + 1 if t_end is None
        else jnp.asarray(t_end, t.dtype))
  valid = valid & (t >= t0) & (t < t1)
  if split_by == "time":
    dt = jnp.where(valid, t - t0, 0)
    edges = _time_edges(jnp.maximum(t1 - t0, 1), steps, jnp)
    b = jnp.searchsorted(edges, dt, side="right") - 1
  else:
    rank = jnp.cumsum(valid) - 1
    b = _count_bins(rank, jnp.sum(valid), steps, jnp)
  xx = jnp.asarray(x, jnp.int32) * ow // width
  yy = jnp.asarray(y, jnp.int32) * oh // height
  flat = ((b.astype(jnp.int32) * oh + yy) * ow + xx) * c
  if c == 2:
    flat = flat + jnp.asarray(p, jnp.int32)
  flat = jnp.where(valid, flat, total)
  frames = jnp.zeros(total, jnp.float32).at[flat].add(1.0, mode="drop")
  if mode == "binary":
    frames = (frames > 0).astype(jnp.float32)
  return frames.reshape(steps, oh, ow, c)


# --------------------------------------------------------------------------- HAR-DVS frames

#: HAR-DVS polarity thresholds (spec section 6.1, ``hardvs_dataset1.py``).
HARDVS_OFF_BELOW = 0.12
HARDVS_ON_LOW = 0.3
HARDVS_ON_HIGH = 0.78


def hardvs_frame_channels(images: np.ndarray) -> np.ndarray:
  """HAR-DVS event-frame image -> 2 binary polarity channels, float32 [..., H, W, 2].

  Spec section 6.1 (applied after Resize(256, bicubic) + CenterCrop 224, e.g.
  ``transforms.resize_center_crop(img, 224, crop_pct=224 / 256)``): with p the grey value in
  [0, 1], values p > 0.78 are first set to 0.3, then ch0 = 1[p < 0.12] and
  ch1 = 1[0.3 < p <= 0.78]. So bright pixels (> 0.78) and p = 0.3 land in neither channel.

  Args:
    images: grey frames [..., H, W]: uint8 (divided by 255 in float32, like ToTensor) or
      float in [0, 1]. Comparisons are done in the input float dtype (float32 for uint8).
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    p = images.astype(np.float32) / np.float32(255)
  elif images.dtype.kind == "f":
    p = images
  else:
    raise ValueError(f"hardvs_frame_channels: expected uint8 or float images, got {images.dtype}")
  dt = p.dtype.type
  p = np.where(p > dt(HARDVS_ON_HIGH), dt(HARDVS_ON_LOW), p)
  off = p < dt(HARDVS_OFF_BELOW)
  on = (p > dt(HARDVS_ON_LOW)) & (p <= dt(HARDVS_ON_HIGH))
  return np.stack([off, on], axis=-1).astype(np.float32)


def hardvs_sample_frames(n_frames: int, time_steps: int = 8,
                         rng: np.random.Generator | int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
  """HAR-DVS temporal sampling: T consecutive frame indices from a random start.

  The start is uniform in ``[0, n_frames - T]`` (random at test time too, spec section 6.1).
  With fewer than T frames it is 0 and the missing steps are padding: their index is 0 and
  their mask False, so ``frames[indices] * mask`` gives the spec's zero frames.

  Returns:
    ``(indices int64 [T], mask bool [T])``.
  """
  if isinstance(time_steps, bool) or int(time_steps) != time_steps or time_steps < 1:
    raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}")
  if int(n_frames) != n_frames or n_frames < 0:
    raise ValueError(f"n_frames must be a non-negative integer, got {n_frames!r}")
  n, steps = int(n_frames), int(time_steps)
  rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  if n >= steps:
    start = int(rng.integers(0, n - steps + 1))
    return start + np.arange(steps, dtype=np.int64), np.ones(steps, bool)
  idx = np.arange(steps, dtype=np.int64)
  mask = idx < n
  return np.where(mask, idx, 0), mask
