"""A foreign client: the official Temporal Python SDK with the AES-256-GCM codec of Temporal's
encryption sample, starting an AgentExecution the way a team's own service would.

    start.py ADDRESS KEY_ID KEY_BASE64 WORKFLOW_ID INPUT_JSON [--retry]

Prints one JSON line: {"status": "completed", "result": ...} or {"status": "failed",
"message": ..., "type": ...}.
"""

import asyncio
import base64
import json
import os
import sys
from datetime import timedelta
from typing import Iterable, List

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.converter import DataConverter, PayloadCodec


class EncryptionCodec(PayloadCodec):
    """The codec of Temporal's Python encryption sample."""

    def __init__(self, key_id: str, key: bytes) -> None:
        self.key_id = key_id
        self.encryptor = AESGCM(key)

    async def encode(self, payloads: Iterable[Payload]) -> List[Payload]:
        out = []
        for p in payloads:
            nonce = os.urandom(12)
            out.append(
                Payload(
                    metadata={
                        "encoding": b"binary/encrypted",
                        "encryption-key-id": self.key_id.encode(),
                    },
                    data=nonce + self.encryptor.encrypt(nonce, p.SerializeToString(), None),
                )
            )
        return out

    async def decode(self, payloads: Iterable[Payload]) -> List[Payload]:
        out = []
        for p in payloads:
            if p.metadata.get("encoding", b"").decode() != "binary/encrypted":
                out.append(p)
                continue
            if p.metadata.get("encryption-key-id", b"").decode() != self.key_id:
                raise ValueError("unknown key id")
            out.append(Payload.FromString(self.encryptor.decrypt(p.data[:12], p.data[12:], None)))
        return out


async def main() -> None:
    address, key_id, key_b64, workflow_id, raw_input = sys.argv[1:6]
    flags = sys.argv[6:]
    retry = "--retry" in flags
    cancel_after = float(flags[flags.index("--cancel-after") + 1]) if "--cancel-after" in flags else None
    query_after = float(flags[flags.index("--query-after") + 1]) if "--query-after" in flags else None
    client = await Client.connect(
        address,
        data_converter=DataConverter(
            payload_codec=EncryptionCodec(key_id, base64.b64decode(key_b64))
        ),
    )
    try:
        handle = await client.start_workflow(
            "AgentExecution",
            json.loads(raw_input),
            id=workflow_id,
            task_queue="stigmer",
            retry_policy=RetryPolicy(maximum_attempts=3) if retry else None,
            execution_timeout=timedelta(seconds=60),
        )
        status = None
        if query_after is not None:
            await asyncio.sleep(query_after)
            status = await handle.query("status")
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            await handle.cancel()
        result = await handle.result()
        print(json.dumps({"status": "completed", "result": result, "queried": status}))
    except WorkflowFailureError as e:
        cause = e.cause
        print(
            json.dumps(
                {
                    "status": "failed",
                    "message": getattr(cause, "message", str(cause)),
                    "type": getattr(cause, "type", None) or type(cause).__name__,
                }
            )
        )


asyncio.run(main())
sys.stdout.flush()
# The SDK's core threads can abort the interpreter's shutdown; the answer is already out.
os._exit(0)
