"""Servers for the tests: `kpl sim` (the workspace's binary, target/debug/kpl) and kinesalite
(.tools/, bound to 127.0.0.1 by tests/node/bind-loopback.js), each on a free loopback port and
killed with its process group; plus a raw Kinesis JSON client for kinesalite (no boto3)."""
from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KPL = os.environ.get("KPL_BIN", os.path.join(REPO, "target", "debug", "kpl"))
TOOLS = os.path.join(REPO, ".tools", "node_modules")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, endpoint: str) -> None:
        self.proc = proc
        self.endpoint = endpoint

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


class Kinesis:
    """Kinesis's JSON API over plain HTTP, for the servers here (placeholder signature)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def call(self, action: str, **body):
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        req = urllib.request.Request(
            self.endpoint,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"Kinesis_20131202.{action}",
                "X-Amz-Date": now,
                "Authorization": (
                    f"AWS4-HMAC-SHA256 Credential=local/{now[:8]}/us-east-1/kinesis/aws4_request, "
                    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=00"
                ),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{action}: HTTP {e.code}: {e.read()!r}") from None

    def create_stream(self, name: str, shards: int) -> None:
        self.call("CreateStream", StreamName=name, ShardCount=shards)
        for _ in range(300):
            desc = self.call("DescribeStreamSummary", StreamName=name)
            if desc["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                return
            time.sleep(0.05)
        raise RuntimeError(f"stream {name} did not become ACTIVE")

    def raw_records(self, name: str) -> List[Dict]:
        """Every Kinesis record of every shard, as GetRecords returns them (data base64),
        each with its ShardId added."""
        out = []
        for shard in self.call("ListShards", StreamName=name)["Shards"]:
            it = self.call(
                "GetShardIterator",
                StreamName=name,
                ShardId=shard["ShardId"],
                ShardIteratorType="TRIM_HORIZON",
            )["ShardIterator"]
            while it:
                page = self.call("GetRecords", ShardIterator=it, Limit=10000)
                for r in page["Records"]:
                    r["ShardId"] = shard["ShardId"]
                    out.append(r)
                it = page.get("NextShardIterator")
                if not page["Records"]:
                    break
        return out


def wait_ready(server: Server, name: str) -> None:
    api = Kinesis(server.endpoint)
    deadline = time.time() + 30
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {server.proc.returncode}")
        try:
            api.call("ListStreams")
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def start_sim(*args: str) -> Server:
    """`kpl sim --port 0 ARGS...`: it prints its endpoint line on stdout once it is ready."""
    if not os.path.exists(KPL):
        pytest.fail(f"{KPL} is missing: run `cargo build -p kpl-cli` (scripts/test.sh does)")
    proc = subprocess.Popen(
        [KPL, "sim", "--port", "0", "--threads", "1", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    # One line once its streams exist: `kpl sim: listening on http://127.0.0.1:PORT streams=...`
    # (readline returns "" if it exits first).
    line = proc.stdout.readline().strip()
    endpoint = next((word for word in line.split() if word.startswith("http://")), "")
    server = Server(proc, endpoint)
    if not endpoint:
        server.stop()
        raise RuntimeError("kpl sim printed no endpoint")
    wait_ready(server, "kpl sim")
    return server


@pytest.fixture
def sim(request):
    """A `kpl sim` with stream `s` of 2 shards; a test's `sim_args` marker adds flags."""
    marker = request.node.get_closest_marker("sim_args")
    extra = list(marker.args) if marker else []
    server = start_sim("--stream", "s:2", *extra)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kinesalite():
    cli = os.path.join(TOOLS, "kinesalite", "cli.js")
    if not os.path.exists(cli):
        pytest.fail("kinesalite is not installed: run scripts/setup-node.sh (scripts/test.sh does)")
    port = free_port()
    proc = subprocess.Popen(
        ["node", "-r", os.path.join(REPO, "tests", "node", "bind-loopback.js"), cli,
         "--port", str(port), "--shardLimit", "1000", "--createStreamMs", "0",
         "--deleteStreamMs", "0", "--updateStreamMs", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    wait_ready(server, "kinesalite")
    yield server
    server.stop()


_streams = iter(range(1_000_000))


@pytest.fixture
def stream(kinesalite):
    """A new 4-shard stream on the session's kinesalite: (name, api)."""
    name = f"py-{os.getpid()}-{next(_streams)}"
    api = Kinesis(kinesalite.endpoint)
    api.create_stream(name, 4)
    return name, api


def kpl_cat(endpoint: str, stream: str, expected: Optional[int] = None) -> List[Dict]:
    """The stream read back by `kpl cat --format json` (the workspace's reader)."""
    args = [KPL, "cat", "--stream", stream, "--endpoint-url", endpoint, "--format", "json",
            "-q", "--idle-timeout", "1s"]
    if expected is not None:
        args += ["--max-records", str(expected)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    for r in records:
        r["data"] = base64.b64decode(r["data"])
    return records


def pytest_configure(config):
    config.addinivalue_line("markers", "sim_args(*flags): extra flags for the sim fixture")
