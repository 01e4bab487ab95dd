"""Real Sentinel and Cluster deployments on loopback for tests (no fakes), stopped by pid.

``SentinelSet``: one master, one replica, three sentinels (quorum 2).
``ClusterSet``: three masters, the 16384 slots split evenly, no replicas.
The binary is the one ``tests/redis_server.py`` picks (``$FORKQ_REDIS_SERVER``);
a Redis or Valkey server runs as a sentinel with ``--sentinel``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis_server import RedisServer, find_redis_server, free_port, wait_for
from tls import CertBundle, TlsRedisServer

SERVICE = "forkqmaster"


@dataclass
class SentinelProc:
    port: int
    dir: str
    proc: subprocess.Popen[bytes] | None = None
    # A TLS-only sentinel that also speaks TLS to the servers and the other sentinels.
    tls: CertBundle | None = None

    def _listen(self) -> str:
        if self.tls is None:
            return f"port {self.port}\n"
        return (f"port 0\ntls-port {self.port}\ntls-cert-file {self.tls.server_cert}\n"
                f"tls-key-file {self.tls.server_key}\ntls-ca-cert-file {self.tls.ca_cert}\n"
                "tls-auth-clients no\ntls-replication yes\n")

    def start(self, master_port: int) -> SentinelProc:
        conf = Path(self.dir) / "sentinel.conf"
        conf.write_text(
            f"{self._listen()}bind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
            f"logfile {self.dir}/sentinel.log\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 2000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        self.proc = subprocess.Popen([find_redis_server(), str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(self._up, timeout=10, message=f"sentinel on {self.port}")
        return self

    def _up(self) -> bool:
        try:
            self.client().ping()
            return True
        except redis.RedisError:
            assert self.proc is not None and self.proc.poll() is None, "sentinel exited"
            return False

    def client(self) -> redis.Redis:
        tls: dict[str, Any] = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls.ca_cert)}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True, **tls)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _server(tls: CertBundle | None, extra: list[str]) -> RedisServer:
    if tls is None:
        return RedisServer(extra=extra)
    return TlsRedisServer(tls, extra=extra)


@dataclass
class SentinelSet:
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[SentinelProc] = field(default_factory=list)
    dir: str = ""
    # Everything TLS-only (servers, replication, sentinels): a ``rediss+sentinel://`` URL.
    tls: CertBundle | None = None

    def start(self) -> SentinelSet:
        self.dir = tempfile.mkdtemp(prefix="forkq-sentinel-")
        repl = [] if self.tls is None else ["--tls-replication", "yes"]
        try:
            master = _server(self.tls, repl).start()
            self.servers.append(master)
            replica = _server(self.tls, [*repl, "--replicaof", "127.0.0.1", str(master.port)]).start()
            self.servers.append(replica)
            wait_for(lambda: master.client().info("replication")["connected_slaves"] == 1
                     and replica.client().info("replication").get("master_link_status") == "up",
                     timeout=15, message="replica in sync")
            for i in range(3):
                d = Path(self.dir) / f"s{i}"
                d.mkdir()
                self.sentinels.append(SentinelProc(port=free_port(), dir=str(d), tls=self.tls).start(master.port))
            # Every sentinel knows the replica and the other sentinels before a failover.
            wait_for(lambda: all(
                len(s.client().sentinel_slaves(SERVICE)) == 1
                and int(s.client().sentinel_master(SERVICE)["num-other-sentinels"]) == 2
                for s in self.sentinels), timeout=30, interval=0.2, message="sentinels discover each other")
        except BaseException:
            self.cleanup()
            raise
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.tls is not None:
            return f"rediss+sentinel://{hosts}/{SERVICE}/0?ssl_ca_certs={self.tls.ca_cert}"
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def master_port(self) -> int:
        addr = self.sentinels[0].client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(addr[1])

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def master(self) -> RedisServer:
        return self.server(self.master_port())

    def failover(self, attempts: int = 3, per_attempt: float = 20.0) -> tuple[int, int]:
        """SENTINEL FAILOVER; wait until every sentinel names the new master. (old, new) ports.

        A sentinel may abort a failover (a replica it judged not ready, which Valkey's
        sentinel did once on the loaded test machine); it is asked again, up to
        ``attempts`` times.
        """
        old = self.master_port()

        def switched() -> bool:
            return all(int(s.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1]) != old
                       for s in self.sentinels)

        for attempt in range(attempts):
            try:
                self.sentinels[attempt % len(self.sentinels)].client().execute_command(
                    "SENTINEL", "FAILOVER", SERVICE)
            except redis.ResponseError as exc:
                if "INPROG" not in str(exc) and attempt == attempts - 1:
                    raise
            try:
                wait_for(switched, timeout=per_attempt, interval=0.05, message="sentinels switch the master")
                return old, self.master_port()
            except AssertionError:
                if attempt == attempts - 1:
                    raise AssertionError("sentinels did not switch the master:\n" + self.logs()) from None
        raise AssertionError("unreachable")

    def watch_switches(self) -> SwitchWatch:
        """Record every ``+switch-master`` any sentinel announces from now on."""
        return SwitchWatch(self).start()

    def wait_settled(self, timeout: float = 60.0) -> None:
        """The old master demoted and in sync again (ready for another failover).

        Besides the servers' own replication state, every sentinel must have seen
        each server report the role it assigned it: a sentinel that still holds a
        stale role report may "fix" the new master into a replica shortly after the
        next forced failover, and the sentinels then fail over once more on their own.
        """
        new = self.master()
        wait_for(lambda: new.client().info("replication")["connected_slaves"] == 1
                 and all(s.client().info("replication").get("master_link_status") == "up"
                         for s in self.servers if s is not new), timeout=timeout, interval=0.1,
                 message="old master resynced as a replica")
        def agreed() -> bool:
            masters = [s.client().sentinel_master(SERVICE) for s in self.sentinels]
            if not (all(m["flags"] == "master" and int(m["port"]) == new.port
                        and m.get("role-reported") == "master" for m in masters)
                    and len({m["config-epoch"] for m in masters}) == 1):
                return False
            for s in self.sentinels:
                replicas = s.client().sentinel_slaves(SERVICE)
                if len(replicas) != 1:
                    return False
                rep = replicas[0]
                if (rep["flags"] != "slave" or rep.get("role-reported") != "slave"
                        or int(rep.get("master-port", 0)) != new.port
                        or rep.get("master-link-status") != "ok"):
                    return False
            return True

        wait_for(agreed, timeout=timeout, interval=0.2, message="sentinels agree, no failover in progress")

    def logs(self) -> str:
        out = []
        for s in self.sentinels:
            try:
                out.append(f"--- sentinel {s.port}\n" + (Path(s.dir) / "sentinel.log").read_text()[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def cleanup(self) -> None:
        for s in self.sentinels:
            s.stop()
        for r in self.servers:
            r.cleanup()
        if self.dir:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)


class SwitchWatch:
    """The times (``time.time()``) and new ports of the sentinels' ``+switch-master``.

    Subscribed to every sentinel (each announces the switch once it learns of it);
    a switch is recorded once, at its first announcement.
    """

    def __init__(self, sset: SentinelSet) -> None:
        self._sset = sset
        self.switches: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> SwitchWatch:
        ready = []
        for s in self._sset.sentinels:
            ps = s.client().pubsub(ignore_subscribe_messages=True)
            ps.subscribe("+switch-master")
            ready.append(ps)
        for ps in ready:
            t = threading.Thread(target=self._listen, args=(ps,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _listen(self, ps: redis.client.PubSub) -> None:
        try:
            while not self._stop.is_set():
                msg = ps.get_message(timeout=0.2)
                if msg is None or msg.get("type") != "message":
                    continue
                data = msg["data"]
                parts = (data.decode() if isinstance(data, bytes) else data).split()
                if len(parts) == 5 and parts[0] == SERVICE:
                    port = int(parts[4])
                    with self._lock:
                        if not self.switches or self.switches[-1][1] != port:
                            self.switches.append((time.time(), port))
        finally:
            ps.close()

    def last_before(self, t: float) -> float | None:
        """When the master last moved before ``t`` (None: not since the watch began)."""
        with self._lock:
            times = [at for at, _ in self.switches if at <= t]
        return times[-1] if times else None

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)


@dataclass
class ClusterSet:
    """Three cluster-enabled masters on free ports, slots split in three ranges."""

    nodes: list[RedisServer] = field(default_factory=list)
    bus_ports: list[int] = field(default_factory=list)
    # TLS-only nodes, TLS on the cluster bus too: a ``rediss+cluster://`` URL.
    tls: CertBundle | None = None

    def start(self) -> ClusterSet:
        bus_tls = [] if self.tls is None else ["--tls-cluster", "yes", "--tls-replication", "yes"]
        try:
            for _ in range(3):
                # The bus port defaults to port + 10000, past 65535 for a high free port.
                bus = free_port()
                n = _server(self.tls, ["--cluster-enabled", "yes", "--cluster-node-timeout", "3000",
                                       "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus),
                                       *bus_tls])
                self.bus_ports.append(bus)
                n.dir = tempfile.mkdtemp(prefix="forkq-cluster-")
                self.nodes.append(n.start())
            ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
            for n, (lo, hi) in zip(self.nodes, ranges, strict=True):
                n.client().execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            first = self.nodes[0].client()
            for n, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", n.port, bus)
            wait_for(lambda: all(n.client().execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0
                                 and len(n.client().execute_command("CLUSTER", "NODES").decode().splitlines()) == 3
                                 for n in self.nodes), timeout=30, interval=0.1, message="cluster state ok")
        except BaseException:
            self.cleanup()
            raise
        return self

    @property
    def url(self) -> str:
        return self._url(self.nodes)

    def url_of(self, node: RedisServer) -> str:
        return self._url([node])

    def _url(self, nodes: list[RedisServer]) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        if self.tls is not None:
            return f"rediss+cluster://{hosts}?ssl_ca_certs={self.tls.ca_cert}"
        return f"redis+cluster://{hosts}"

    def node_id(self, node: RedisServer) -> str:
        return node.client().execute_command("CLUSTER", "MYID").decode()

    def owner(self, slot: int) -> RedisServer:
        for r in self.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
            if int(r[0]) <= slot <= int(r[1]):
                port = int(r[2][1])
                return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no owner of slot {slot}")

    def migrate_slot(self, slot: int, dest: RedisServer, *, pause: float = 0.0, batch: int = 10) -> int:
        """Move ``slot`` to ``dest`` as redis-cli --cluster reshard does; returns keys moved."""
        src = self.owner(slot)
        src_id, dest_id = self.node_id(src), self.node_id(dest)
        dc, sc = dest.client(), src.client()
        dc.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        sc.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dest_id)
        moved = 0
        while True:
            keys = sc.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            sc.execute_command("MIGRATE", "127.0.0.1", dest.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            if pause:
                time.sleep(pause)
        for n in (dc, sc, *(x.client() for x in self.nodes if x not in (src, dest))):
            n.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dest_id)
        return moved

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()
