"""A Cloud Storage JSON API server on localhost for the `gs://` tests: gcp-storage-emulator,
with the two parts of the API it lacks and tensorstore (Orbax's array writer) relies on.

- A media download carries the object's generation in `x-goog-generation`: tensorstore reads an
  OCDBT manifest, then rewrites it on condition of the generation it read.
- An upload with `ifGenerationMatch` fails with 412 when the object's generation differs (0: the
  object must not exist), as Cloud Storage's does.

    python tests/gcs_server.py PORT BUCKET [BUCKET ...]     # prints "ready" once it serves
"""

from __future__ import annotations

import sys
import time
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects


def _generation(storage, bucket: str, name: str) -> str:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _download(original):
    def download(request, response, storage, *args, **kwargs):
        generation = _generation(storage, request.params["bucket_name"],
                                 request.params["object_id"])
        if generation != "0":
            response["x-goog-generation"] = generation
            response["x-goog-metageneration"] = "1"
        return original(request, response, storage, *args, **kwargs)

    return download


def _insert(original):
    def insert(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        name = request.query.get("name")
        if wanted and name:
            if _generation(storage, request.params["bucket_name"], name[0]) != wanted[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
        return original(request, response, storage, *args, **kwargs)

    return insert


def main(port: int, names: list[str]) -> None:
    objects.download = _download(objects.download)
    objects.insert = _insert(objects.insert)
    from gcp_storage_emulator.server import create_server  # its routes read the handlers above

    server = create_server("localhost", port, in_memory=True)
    for name in names:
        buckets.create_bucket(name, server._storage)
    server.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
