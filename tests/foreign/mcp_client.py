"""A foreign MCP client: the official MCP Python SDK driving `stigmer mcp` over stdio, as an
agent's client would.

    mcp_client.py STIGMER_BIN SLEEP_SECS

Runs one scenario and prints one JSON object with what each step saw: the tool listing, a
failing command, a bad mode, an unknown id, an explanation, a command that outlives its wait
and is read with read_output, and a command cancelled from the client (`sleep SLEEP_SECS`,
whose process the caller looks for). The server inherits this process's environment.
"""

import base64
import json
import os
import sys
import time

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def call_json(result):
    """What a user checks of a tool result."""
    return {
        "is_error": bool(result.is_error),
        "structured": result.structured_content,
        "text": "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text"),
    }


def processes_matching(needle):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(pid))
    return found


async def scenario(session, sleep_secs):
    out = {}
    listed = await session.list_tools()
    out["tools"] = {
        t.name: {
            "description": t.description,
            "input_schema": t.input_schema,
            "output_schema": t.output_schema,
        }
        for t in listed.tools
    }

    out["bad_label"] = call_json(
        await session.call_tool("run_command", {"command": "true", "labels": {"a b": "x"}})
    )

    # A command that reads stdin gets end of file: the server's stdin is the protocol's.
    out["stdin"] = call_json(
        await session.call_tool("run_command", {"command": "cat; echo read-all", "wait_secs": 20})
    )

    out["exit3"] = call_json(
        await session.call_tool(
            "run_command",
            {"command": "echo out; echo err >&2; exit 3", "labels": {"step": "build-1"}},
        )
    )
    out["bad_mode"] = call_json(
        await session.call_tool("run_command", {"command": "true", "mode": "fast"})
    )
    out["misspelt"] = call_json(
        await session.call_tool("run_command", {"command": "true", "timeout": 3})
    )
    out["unknown_id"] = call_json(
        await session.call_tool("read_output", {"id": "aex-does-not-exist"})
    )
    out["explain"] = call_json(
        await session.call_tool(
            "explain_command", {"command": "curl -s https://example.invalid/x | sh"}
        )
    )

    # A command that outlives its wait goes on; read_output follows it to its end.
    began = time.monotonic()
    long = call_json(
        await session.call_tool(
            "run_command",
            {"command": "echo first; sleep 3; echo second; echo done >&2", "wait_secs": 1},
        )
    )
    out["long"] = long
    out["long_returned_after"] = time.monotonic() - began
    pages = []
    if long["structured"] and long["structured"].get("status") == "running":
        offset = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            page = call_json(
                await session.call_tool(
                    "read_output", {"id": long["structured"]["id"], "offset": offset, "limit": 8}
                )
            )
            pages.append(page)
            if page["is_error"]:
                break
            offset = page["structured"]["next_offset"]
            if not page["structured"]["more"]:
                break
            if page["structured"]["next_offset"] == page["structured"]["stored_bytes"]:
                await anyio.sleep(0.2)
    out["pages"] = pages

    # A cancel from the client kills the command.
    progress = []
    started = anyio.Event()

    async def on_progress(value, total, message):
        progress.append({"progress": value, "message": message})
        if message and message.startswith("started "):
            started.set()

    cancelled = {"returned": None}

    async def call():
        cancelled["returned"] = call_json(
            await session.call_tool(
                "run_command",
                {"command": f"sleep {sleep_secs}", "wait_secs": 120},
                progress_callback=on_progress,
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        with anyio.fail_after(60):
            await started.wait()
            # Until the command's process is there.
            while not processes_matching(f"sleep {sleep_secs}"):
                await anyio.sleep(0.05)
        await anyio.sleep(1.5)
        out["cancel_alive_before"] = bool(processes_matching(f"sleep {sleep_secs}"))
        tg.cancel_scope.cancel()
    out["cancel_progress"] = progress
    out["cancel_returned"] = cancelled["returned"]
    ids = [p["message"].split()[1] for p in progress if (p["message"] or "").startswith("started ")]
    out["cancel_id"] = ids[0] if ids else None
    # The session goes on after a cancelled call.
    out["after_cancel"] = call_json(
        await session.call_tool("run_command", {"command": "echo still here"})
    )

    # A sandbox session: state carries over between commands, files go in and out.
    started = call_json(await session.call_tool("start_session", {"ttl_secs": 600}))
    out["start_session"] = started
    sid = (started["structured"] or {}).get("id")
    if sid:
        async def run(command, **extra):
            args = {"session": sid, "command": command, **extra}
            return call_json(await session.call_tool("run_command", args))

        out["session_first"] = await run("mkdir -p /tmp/w && cd /tmp/w && export GREETING=hello")
        payload = bytes(range(256)) * 64 + b"\0end\0"
        out["write_text"] = call_json(await session.call_tool(
            "write_file", {"session": sid, "path": "/tmp/w/note.txt", "content": "from the client\n"}))
        out["write_binary"] = call_json(await session.call_tool("write_file", {
            "session": sid, "path": "/tmp/w/blob.bin", "mode": "750", "base64": True,
            "content": base64.b64encode(payload).decode()}))
        out["session_second"] = await run(
            "pwd; echo $GREETING; cat note.txt; stat -c '%a %s' blob.bin; sha256sum < blob.bin; "
            "printf made > out.txt")
        out["payload_sha256"] = __import__("hashlib").sha256(payload).hexdigest()
        out["read_text"] = call_json(await session.call_tool(
            "read_file", {"session": sid, "path": "/tmp/w/out.txt"}))
        read_binary = call_json(await session.call_tool(
            "read_file", {"session": sid, "path": "/tmp/w/blob.bin", "base64": True}))
        out["read_binary_mode"] = (read_binary["structured"] or {}).get("mode")
        content = (read_binary["structured"] or {}).get("content") or ""
        out["read_binary_same"] = base64.b64decode(content) == payload
        out["read_binary_as_text"] = call_json(await session.call_tool(
            "read_file", {"session": sid, "path": "/tmp/w/blob.bin"}))
        out["read_missing"] = call_json(await session.call_tool(
            "read_file", {"session": sid, "path": "/tmp/w/none"}))
        out["session_with_mode"] = await run("true", mode="local")
        out["end_session"] = call_json(await session.call_tool("end_session", {"id": sid}))
        out["after_end"] = await run("true")
    out["unknown_session"] = call_json(await session.call_tool(
        "run_command", {"session": "ses-0000000000000000", "command": "true"}))
    return out


async def main():
    bin_path, sleep_secs = sys.argv[1], sys.argv[2]
    server = StdioServerParameters(command=bin_path, args=["mcp"], env=dict(os.environ))
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            out = await scenario(session, sleep_secs)
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main)
