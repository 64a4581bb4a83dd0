"""moto server, with DynamoDB's item operations made atomic.

moto serves every request on a thread of its own, and its DynamoDB backend checks a
condition expression and then applies the update as two steps with nothing held between
them: two concurrent `UpdateItem`s with the same `attribute_not_exists(...)` condition can
both succeed, which real DynamoDB never allows. The job store's contract tests complete one
chunk from two tasks at once and rely on exactly one of them winning, so they failed now and
then on moto and never on DynamoDB.

This runs moto's own server (`moto.server.main`, same arguments as `moto_server`) after
wrapping each DynamoDB item operation of the backend in one process-wide lock, so that each
is atomic as on AWS. Other services are left as they are.

Run with the Python of the venv moto is installed in: `python moto-server.py -H HOST -p PORT`.
"""

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_ITEM_OPERATIONS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "query",
    "scan",
    "batch_write_item",
    "batch_get_item",
    "transact_write_items",
    "transact_get_items",
    "execute_statement",
    "execute_transaction",
    "batch_execute_statement",
)

# Re-entrant: a transaction applies its items through the single-item operations.
_LOCK = threading.RLock()


def _atomic(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _LOCK:
            return method(*args, **kwargs)

    return locked


for name in _ITEM_OPERATIONS:
    original = getattr(DynamoDBBackend, name, None)
    if original is not None:
        setattr(DynamoDBBackend, name, _atomic(original))

if __name__ == "__main__":
    main(sys.argv[1:])
