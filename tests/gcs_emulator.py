"""A GCS emulator on 127.0.0.1 for the bucket tests (``python tests/gcs_emulator.py PORT``).

``gcp-storage-emulator`` (PyPI) with one gap filled: its media downloads carry no
``x-goog-generation`` header, which real GCS sends and tensorstore (orbax's checkpoint
arrays) requires ("Malformed StorageGeneration" otherwise). The object's generation is added
to every download response. In memory; bucket ``bkt`` exists from the start.
"""

import sys


def main(port: int, bucket: str = "bkt") -> None:
  from gcp_storage_emulator.handlers import objects
  from gcp_storage_emulator import server

  original = objects.download

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:   # a missing object: the original handler answers 404
      pass
    return original(request, response, storage, *args, **kwargs)

  objects.download = download          # objects.get(alt=media) calls it by name
  for _, methods in server.HANDLERS:     # the routes hold the function itself
    for method, handler in methods.items():
      if handler is original:
        methods[method] = download
  srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  print(f"listening on 127.0.0.1:{port}", flush=True)
  srv.run()

if __name__ == "__main__":
  main(int(sys.argv[1]))
