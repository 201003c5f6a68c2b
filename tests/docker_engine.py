"""A Docker Engine for the container tests: the one that answers ``docker info``, or Debian's, started for the run.

When no engine answers and the run is root with apt, Debian's ``docker.io`` is installed if missing and its
``dockerd`` is started directly (its init script raises the open-files limit above the hard limit of these
machines, and fails), in the background, with everything it writes under one directory of the run: images,
containers, its exec root (containerd's too), pid file, socket and trust key; its containers' cgroups under a
parent named after that directory. So it never meets another engine on the machine, and the host is left as it
was:

- iptables on, as on a server: Docker's own rules keep one network from another (an internal network's containers
  reach nothing off it), which the isolation tests check. The host's IPv4 firewall (``iptables-save``) is saved
  before dockerd starts and put back after it stops (:class:`Firewall`); ``--ip6tables=false`` leaves IPv6 alone;
- ``--bridge=none``: no ``docker0`` interface (it would outlive the engine); containers use ``--network host``
  (to reach PostgreSQL and Redis on 127.0.0.1), ``--network none`` or networks the tests make;
- dockerd turns IP forwarding on at start: the value read before is written back after it stops;
- it stops with SIGTERM (its containers with it), and its directory and cgroups are removed.

Without root, apt or an engine, the tests that need one skip, saying which of these is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
CGROUPS = Path("/sys/fs/cgroup")
# Directories dockerd makes outside its own whatever its flags say; removed after it stops if it made them.
DOCKERD_LEFTOVERS = (Path("/run/docker/plugins"), Path("/run/docker"))
# Why an isolation test cannot run on an engine whose ``isolates`` is False.
NO_ISOLATION = "the engine of this run has no iptables rules: the host's firewall could not be read to be put back"


class DockerError(Exception):
    """A docker command failed; the message holds its arguments and the tail of what it printed."""


@dataclass
class DockerEngine:
    """The engine the tests use, reached with the ``docker`` command and ``env``."""

    env: dict[str, str]
    owned: bool  # started by this run (and stopped at its end)
    server_version: str
    isolates: bool = True  # Docker's iptables rules are on (an engine of the run's own without them: False)
    docker: str = field(default_factory=lambda: shutil.which("docker") or "docker")

    def run(
        self,
        *args: str,
        timeout: float = 120,
        check: bool = True,
        input: str | bytes | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS``; its output as text. ``check`` raises :class:`DockerError` on a non-zero exit."""
        raw = subprocess.run(
            [self.docker, *args],
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            timeout=timeout,
            env=self.env,
            cwd=cwd,
        )
        result = subprocess.CompletedProcess(
            raw.args, raw.returncode, raw.stdout.decode(errors="replace"), raw.stderr.decode(errors="replace")
        )
        if check and result.returncode != 0:
            raise DockerError(
                f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def inspect(self, *names: str) -> Any:
        """``docker inspect`` of one object (an image or a container), as JSON."""
        [found] = json.loads(self.run("inspect", *names).stdout)
        return found

    def has_image(self, name: str) -> bool:
        return self.run("image", "inspect", name, check=False).returncode == 0


def _server_version(env: dict[str, str], timeout: float = 20) -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        answer = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return None
    version = answer.stdout.strip()
    return version if answer.returncode == 0 and version and "<no value>" not in version else None


def install_debian_packages(*packages: str, commands: Sequence[str]) -> str | None:
    """Install Debian's ``packages`` unless every one of ``commands`` is on PATH already; the reason when it
    cannot (not root, no apt, apt failed), else None."""
    sbin_path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    if all(shutil.which(command, path=sbin_path) for command in commands):
        return None
    if os.geteuid() != 0:
        return f"{', '.join(commands)} not found and not root: cannot apt-get install {' '.join(packages)}"
    if shutil.which("apt-get") is None:
        return f"{', '.join(commands)} not found and no apt-get to install {' '.join(packages)}"
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:  # a machine whose package lists are old or missing
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-500:]}"
    return None


class Firewall:
    """The host's IPv4 firewall as ``iptables-save`` prints it, and :meth:`restore` to put it back: every table
    dockerd may have changed (filter and nat, and any table that was not there before) is replaced by its saved
    state, or, where there was none, emptied and then removed (with nft, iptables' backend here)."""

    EMPTY = {
        "filter": ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        "nat": ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    }

    def __init__(self) -> None:
        self.tools = shutil.which("iptables-save"), shutil.which("iptables-restore")
        self.saved: dict[str, str] | None = None
        if all(self.tools):
            try:
                self.saved = self._tables()
            except (OSError, subprocess.SubprocessError):
                self.saved = None  # unreadable: the engine then leaves the firewall alone (OwnedDockerd)

    def _tables(self) -> dict[str, str]:
        """Table name → its rules, without comments and counters."""
        text = subprocess.run([self.tools[0] or ""], capture_output=True, text=True, check=True, timeout=30).stdout
        tables: dict[str, str] = {}
        for block in text.split("*")[1:]:
            name, _, body = block.partition("\n")
            lines = [line.split(" [", 1)[0] if line.startswith(":") else line for line in body.splitlines()]
            tables[name.strip()] = "\n".join(line for line in lines if line and not line.startswith(("#", "COMMIT")))
        return tables

    def restore(self) -> str | None:
        """Put the saved tables back; what still differs afterwards (None when nothing does)."""
        if self.saved is None:
            return None
        now = self._tables()
        dump = ""
        for name in sorted(set(now) | set(self.saved) | {"filter", "nat"}):
            if name in self.saved:
                dump += f"*{name}\n{self.saved[name]}\nCOMMIT\n"
            elif name in self.EMPTY or name in now:
                dump += f"*{name}\n{self.EMPTY.get(name, '')}COMMIT\n"
        try:
            subprocess.run([self.tools[1] or ""], input=dump, capture_output=True, text=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"iptables-restore failed ({exc}); the rules before were: {self.saved}"
        nft = shutil.which("nft")
        for name in set(self._tables()) - set(self.saved):  # one that was not there: gone again (nft backend)
            if nft:
                subprocess.run([nft, "delete", "table", "ip", name], capture_output=True, timeout=30)
        after, before = _meaningful(self._tables()), _meaningful(self.saved)
        return None if after == before else f"the firewall differs from before: {after} != {before}"


def _meaningful(tables: dict[str, str]) -> dict[str, list[str]]:
    """The tables' rules and chains, leaving out a built-in chain's ACCEPT policy (what an empty table has)."""
    found = {}
    for name, rules in tables.items():
        lines = [line for line in rules.splitlines() if not re.fullmatch(r":[A-Z]+ ACCEPT", line.strip())]
        if lines:
            found[name] = lines
    return found


class OwnedDockerd:
    """Debian's dockerd started by this run, everything of it under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.log_path = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ip_forward = IP_FORWARD.read_text() if IP_FORWARD.exists() else None
        self.firewall = Firewall()
        self.leftovers = [path for path in DOCKERD_LEFTOVERS if not path.exists()]
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(root / "cli"),  # the CLI's own files stay here too
            "DOCKER_BUILDKIT": "0",  # the classic builder: BuildKit needs buildx, which the CLI here lacks
        }
        self.env.pop("DOCKER_CONTEXT", None)

    def start(self, timeout: float = 60) -> str:
        """Start dockerd and wait until it answers; its version. :class:`DockerError` if it does not."""
        # Not the host's /etc/docker/daemon.json; and the trust key here, or dockerd writes /etc/docker/key.json.
        (self.root / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        (self.root / "cli").mkdir(exist_ok=True)
        dockerd = shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "dockerd"
        # Docker's rules only where the firewall can be put back as it was; else none at all (isolation untested).
        iptables = [] if self.firewall.saved is not None else ["--iptables=false"]
        args = [
            dockerd,
            *iptables,
            "--ip6tables=false",
            "--bridge=none",
            f"--config-file={self.root / 'daemon.json'}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--host=unix://{self.socket}",
            f"--cgroup-parent=/{self.root.name}",  # its containers' cgroups, removed after it stops
        ]
        with self.log_path.open("wb") as log:
            # A session of its own: a Ctrl-C in the terminal reaches pytest, whose teardown stops dockerd in order.
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DockerError(f"dockerd exited with {self.process.returncode}:\n{self.log_tail()}")
            version = _server_version(self.env, timeout=5)
            if version:
                return version
            time.sleep(0.2)
        self.stop()
        raise DockerError(f"dockerd did not answer within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containers and containerd), then the host's forwarding as it was, then the
        directory. Safe to call twice."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None
            self._stop_orphaned_containerd()
        if self.ip_forward is not None and IP_FORWARD.read_text() != self.ip_forward:
            IP_FORWARD.write_text(self.ip_forward)
        problem = self.firewall.restore()
        if problem:
            print(f"\nWARNING: {problem}")
        for path in self.leftovers:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        self._remove_cgroups()
        self._unmount_below_root()
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        """The parent cgroup of its containers, in every hierarchy (cgroup v1) or the one (v2); the containers are
        gone by now, so each directory is empty of processes and can go, deepest first."""
        for parent in [*CGROUPS.glob(self.root.name), *CGROUPS.glob(f"*/{self.root.name}")]:
            for directory, _, _ in sorted(os.walk(parent), key=lambda entry: len(entry[0]), reverse=True):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass

    def _stop_orphaned_containerd(self) -> None:
        """dockerd stops the containerd it started, unless it was killed: then this does."""
        pid_file = self.root / "exec" / "containerd" / "containerd.pid"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)

    def _unmount_below_root(self) -> None:
        """A killed engine may leave overlay or namespace mounts under its directory; rmtree cannot pass them."""
        prefix = f"{self.root}/"
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)


def _start_owned_engine() -> tuple[DockerEngine, OwnedDockerd] | str:
    """An engine of this run's own, or the reason there cannot be one."""
    if os.geteuid() != 0:
        return "no Docker engine answers `docker info`, and starting one needs root"
    reason = install_debian_packages("docker.io", commands=["dockerd"])
    if reason:
        return f"no Docker engine answers `docker info`, and {reason}"
    if shutil.which("docker") is None:
        return "no docker command after installing docker.io"
    dockerd = OwnedDockerd(Path(tempfile.mkdtemp(prefix="cfme-dockerd-")))
    try:
        version = dockerd.start()
    except DockerError as exc:
        dockerd.stop()
        return f"Debian's dockerd did not start here: {exc}"
    engine = DockerEngine(dockerd.env, owned=True, server_version=version, isolates=dockerd.firewall.saved is not None)
    return engine, dockerd


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The engine that answers, else one started for the session (and stopped after it); skips saying why not."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    version = _server_version(env)
    if version:
        yield DockerEngine(env=env, owned=False, server_version=version)
        return
    started = _start_owned_engine()
    if isinstance(started, str):
        pytest.skip(started)
    engine, dockerd = started
    try:
        yield engine
    finally:
        dockerd.stop()
