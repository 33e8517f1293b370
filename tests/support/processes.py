"""Real ``fundflow`` processes: their environment, the command line, stopping them, their descendants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
import redis
from aiokafka import AIOKafkaProducer

from streams.local.servers import Stack
from streams.storage.keys import Keys
from streams.topics import TRANSACTIONS
from tests.support import ROOT
from tests.support.webhook import SECRET


def env(stack: Stack, tmp: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    clean.update(
        FUNDFLOW_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        FUNDFLOW_REDIS_URL=stack.redis_url,
        FUNDFLOW_APP_ID="alerts-e2e",
        FUNDFLOW_KEY_PREFIX="alerts-e2e",
        FUNDFLOW_VAR_DIR=str(tmp),
        FUNDFLOW_WEBHOOK_SECRET=SECRET.decode(),
    )
    clean.update(extra)
    return clean


async def produce(bootstrap: str, events: list[dict[str, object]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(TRANSACTIONS, orjson.dumps(event), key=str(event["customer_id"]).encode())
    finally:
        await producer.stop()


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def fundflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("fundflow: error:"), lines[0]
    assert fragment in lines[0], lines[0]


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (by /proc), however deep and whatever its session."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours would still answer kill(0); reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


STOP_BOUND = 10.0  # seconds from SIGTERM / SIGINT to exit 0 (``streams.stopping``)
ESTABLISHED, CLOSE_WAIT = "01", "08"  # TCP states as /proc/net/tcp writes them


def tcp_states(pids: Iterable[int], port: int) -> list[str]:
    """The states of the TCP connections ``pids`` hold to ``port`` (a local server's)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:  # gone, or a descriptor closed while read
            continue
        inodes.update(link[len("socket:[") : -1] for link in links if link.startswith("socket:["))
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                states.append(fields[3])
    return states


def port_of(address: str) -> int:
    """The port of ``host:port`` or ``scheme://host:port[/...]``."""
    return int(address.rsplit(":", 1)[1].split("/", 1)[0])


def applied(redis_url: str, key_prefix: str = "ff") -> int:
    """Events the workers on ``redis_url`` have applied (their stats counter), -1 if Redis is down."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.hget(Keys(key_prefix).stats, "applied") or 0)
    except redis.ConnectionError:
        return -1
    finally:
        client.close()


class Process:
    """``fundflow ARGS`` in its own session, output to a log; killed at the end of the test."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
        # the shipped rules, as a deployment runs (its cwd is the log's folder, where no
        # deploy/rules.yaml is, and a missing rules file is an error)
        clean["FUNDFLOW_RULES_FILE"] = str(ROOT / "deploy" / "rules.yaml")
        clean.update(env)
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "streams.cli.main", *args],
                cwd=log.parent,  # (Faust makes an {app_id}-data folder in its cwd)
                env=clean,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], object], what: str, timeout: float = 60) -> None:
        """Poll ``condition`` until it holds; the process must stay alive meanwhile."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.popen.poll() is None, (
                f"exited {self.popen.returncode} waiting for {what}: {self.text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"not {what} in {timeout}s: {self.text()[-3000:]}"
            time.sleep(0.1)

    def wait_for(self, marker: str, timeout: float = 90) -> None:
        self.wait_until(lambda: marker in self.text(), f"{marker!r} in its output", timeout)

    def wait_ready(self, port: int, timeout: float = 60) -> None:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        self.wait_until(ready, f"ready on :{port}", timeout)

    def pids(self) -> set[int]:
        return {self.popen.pid} | children_of(self.popen.pid)

    def connected_to(self, port: int) -> bool:
        """It (or a process it started) holds an open connection to ``port``."""
        return ESTABLISHED in tcp_states(self.pids(), port)

    def let_go_of(self, port: int) -> bool:
        """No connection of it to ``port`` is open, or closed by the server only (it noticed)."""
        return not {ESTABLISHED, CLOSE_WAIT} & set(tcp_states(self.pids(), port))

    def assert_stops(self, signum: int = signal.SIGTERM) -> None:
        """Signalled, it exits 0 within the bound, says so in one line, and leaves nothing."""
        children = children_of(self.popen.pid)
        started = time.monotonic()
        self.popen.send_signal(signum)
        try:
            code = self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = -9
        seconds = time.monotonic() - started
        text = self.text()
        assert code == 0 and seconds <= STOP_BOUND, f"exit {code} after {seconds:.1f}s:\n{text[-3000:]}"
        name = signal.Signals(signum).name
        assert f"stopping on {name}" in text, text[-2000:]
        deadline = time.monotonic() + 5  # a child's exit can trail its parent's by a moment
        while left := {pid for pid in children if Path(f"/proc/{pid}").exists()}:
            assert time.monotonic() < deadline, f"a child was left behind: {left}"
            time.sleep(0.05)

    def close(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def kill(server: object) -> None:
    """``kill -9`` a server of a ``Stack`` (it returns once the server process is gone)."""
    assert server is not None
    server.kill()  # type: ignore[attr-defined]
