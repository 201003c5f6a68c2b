"""The ``docker`` driver: each seat's frontend is a container, managed through the Docker Engine API.

A seat is three Engine objects, all named after ``SeatSpec.name``: the container, its named volume
``<name>-data`` (the seat's workflows, settings and uploads, mounted at ``/data``) and the shared user-defined
bridge network, where nginx and the hub reach the container by name (``<name>:8188``). Docker itself restarts
a container that dies (restart policy ``unless-stopped``), so between two supervisor passes a seat heals
without us; ``docker compose`` users get the same containers from ``workshops.compose``.

Every Engine failure becomes a :class:`ProvisioningError`: an unreachable engine or a timeout can pass
(``permanent=False``); a missing image that cannot be pulled or a bad setting will not.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import Mount

from . import TOKEN_ENV, FrontendStatus, ProvisioningError, SeatSpec, changed

SEAT_PORT = 8188
DATA_DIR = "/data"
MANAGED_LABEL = "comfyume.managed"
# A hash of everything a container is created from (seat token, image, limits…), so that start() can tell
# whether the container it finds is the one it was asked for.
SPEC_LABEL = "comfyume.spec"
# Seconds for one Engine API call. Generous, because a busy engine answers creates and starts slowly; the SDK
# adds the stop grace period to it for stop calls.
API_TIMEOUT = 30
# What a seat may do beyond its memory and CPU, the same from the driver and from `render_compose_users`: its
# files are the /data volume alone (the root filesystem is read-only; /tmp is a small tmpfs), no capability, no
# gaining one through a setuid binary, and a few dozen processes (the seat frontend runs 4) so a fork bomb stays
# inside its container.
READ_ONLY_ROOT = True
TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}
CAP_DROP = ["ALL"]
SECURITY_OPT = ["no-new-privileges"]
PIDS_LIMIT = 128
STOP_GRACE_SECONDS = 10
# A seat's saved workflows and settings (its ComfyUI's user/ folder) are kept on the hub's side as well, under the
# seat's folder of COMFYUME_SEAT_DATA_DIR where the process driver keeps them: the backup reads them there, and a
# seat whose volume is new (a new server after a restore) starts with them. The supervisor copies them every
# few minutes and before it stops a seat (frontends.Supervisor).
KEPT = "user"
# A user/ folder larger than this is not copied (workflows and settings are kilobytes; uploads live in input/).
MAX_KEPT_BYTES = 256 * 1024 * 1024
# The seat image's user (deploy/seat-frontend/Dockerfile: USER 1000:1000), who must own the files put back.
SEAT_UID = SEAT_GID = 1000

log = logging.getLogger(__name__)


def _plain_files(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """Files and folders only, each inside the copy (tarfile's "data" rules); links are left out, not followed."""
    if member.issym() or member.islnk():
        return None
    return tarfile.data_filter(member, path)


def volume_name(spec: SeatSpec) -> str:
    return f"{spec.name}-data"


def container_env(spec: SeatSpec) -> dict[str, str]:
    """The seat's environment inside a container; the listening address and data dir are the image's contract."""
    return {
        **spec.env,
        "COMFYUME_SEAT_HOST": "0.0.0.0",
        "COMFYUME_SEAT_PORT": str(SEAT_PORT),
        "COMFYUME_SEAT_DATA_DIR": DATA_DIR,
    }


def container_labels(spec: SeatSpec) -> dict[str, str]:
    return {
        **spec.labels,
        MANAGED_LABEL: "1",
        "comfyume.workshop": spec.workshop,
        "comfyume.seat": spec.label,
    }


def nano_cpus(cpus: float) -> int:
    return round(cpus * 1_000_000_000)


class DockerDriver:
    """Seat frontends as containers on one Docker Engine (``DOCKER_HOST``)."""

    name = "docker"

    def __init__(
        self,
        *,
        base_url: str,
        image: str,
        network: str,
        memory: str,
        cpus: float,
        client: docker.DockerClient | None = None,
        files_dir: Path | None = None,
    ) -> None:
        self.base_url = base_url
        self.image = image
        self.network = network
        self.memory = memory
        self.cpus = cpus
        self._client = client
        self.files_dir = Path(files_dir) if files_dir is not None else None

    # --- the driver interface ---

    def start(self, spec: SeatSpec) -> FrontendStatus:
        """Make a container built from ``spec`` run, creating its network, volume and container when missing.

        A container built from this very spec that runs already is left alone. One built from another spec is
        replaced, running or not: the supervisor issues a new seat token for every start, and the old token
        (in the old container's environment) stops working at that moment. The seat's data is in the volume,
        which stays.
        """
        with self._engine(f"start {spec.name}") as client:
            container = self._find(client, spec.name)
            if container is not None and container.labels.get(SPEC_LABEL) != self._spec_hash(spec):
                container.remove(force=True)
                container = None
            if container is not None and container.attrs["State"]["Running"]:
                return self._status_of(spec, container)
            self._ensure_network(client)
            new_volume = not self._volume_exists(client, volume_name(spec))
            # Creating a volume that exists returns it unchanged: the Engine makes this idempotent for us.
            client.volumes.create(name=volume_name(spec), labels=container_labels(spec))
            if container is None:
                container = self._create(client, spec)
            if new_volume:
                self._put_back_files(container, spec)
            # Starting a container that runs already (another start won a race) is a 304, which the SDK accepts.
            container.start()
            return FrontendStatus(running=True, address=self._address(spec), detail=f"container {container.short_id}")

    def stop(self, spec: SeatSpec) -> None:
        """Stop the container (SIGTERM, then SIGKILL after the grace period); its volume stays. Its saved files
        are copied to the hub's side first."""
        try:
            self.save_files(spec)
        except (ProvisioningError, OSError, tarfile.TarError) as exc:
            log.warning("Seat %s: its saved files could not be copied before the stop: %s", spec.name, exc)
        with self._engine(f"stop {spec.name}") as client:
            try:
                # Stopping a stopped container is a 304, which the SDK accepts: one call covers both cases.
                client.api.stop(spec.name, timeout=STOP_GRACE_SECONDS)
            except NotFound:
                pass

    def status(self, spec: SeatSpec) -> FrontendStatus:
        with self._engine(f"inspect {spec.name}") as client:
            container = self._find(client, spec.name)
            if container is None:
                return FrontendStatus(running=False, detail="no container")
            return self._status_of(spec, container)

    def reset(self, spec: SeatSpec) -> None:
        """Remove the container, its volume and the hub's copy of its files: the next start is a fresh seat."""
        kept = self.files_path(spec)
        if kept is not None:
            shutil.rmtree(kept / KEPT, ignore_errors=True)
        with self._engine(f"reset {spec.name}") as client:
            try:
                client.api.remove_container(spec.name, force=True)
            except NotFound:
                pass
            try:
                client.api.remove_volume(volume_name(spec))
            except NotFound:
                pass

    def files_path(self, spec: SeatSpec) -> Path | None:
        """The seat's folder on the hub's side (as the process driver's), or None when no copy is kept."""
        return self.files_dir / spec.workshop / spec.label if self.files_dir is not None else None

    def save_files(self, spec: SeatSpec) -> bool:
        """Copy the seat's ``user/`` folder out of its container to the hub's side, replacing the last copy
        whole (never half); False when there is nothing to copy (no container, nothing saved yet)."""
        target = self.files_path(spec)
        if target is None:
            return False
        with self._engine(f"copy the files of {spec.name}") as client:
            container = self._find(client, spec.name)
            if container is None:
                return False
            try:
                stream, _ = container.get_archive(f"{DATA_DIR}/{KEPT}")
            except NotFound:
                return False
            with tempfile.TemporaryFile() as spool:
                size = 0
                for chunk in stream:
                    size += len(chunk)
                    if size > MAX_KEPT_BYTES:
                        raise ProvisioningError(
                            f"{spec.name}'s user folder is over {MAX_KEPT_BYTES // 2**20} MB: not copied",
                            permanent=True,
                        )
                    spool.write(chunk)
                spool.seek(0)
                target.mkdir(parents=True, exist_ok=True)
                fresh = Path(tempfile.mkdtemp(prefix=".check-", dir=target))  # a name the backup skips
                try:
                    with tarfile.open(fileobj=spool) as archive:
                        archive.extractall(fresh, filter=_plain_files)
                    old = target / f".check-{KEPT}-old"
                    shutil.rmtree(old, ignore_errors=True)
                    if (target / KEPT).exists():
                        (target / KEPT).rename(old)
                    (fresh / KEPT).rename(target / KEPT)
                    shutil.rmtree(old, ignore_errors=True)
                finally:
                    shutil.rmtree(fresh, ignore_errors=True)
        return True

    def _put_back_files(self, container: Container, spec: SeatSpec) -> None:
        """Into a new volume, the hub's copy of the seat's ``user/`` folder (a restore, or a volume that was lost),
        owned by the seat image's user. Symlinks are left out."""
        kept = self.files_path(spec)
        if kept is None or not (kept / KEPT).is_dir():
            return
        buffer = io.BytesIO()

        def owned(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            if info.issym() or info.islnk():
                return None
            info.uid, info.gid, info.uname, info.gname = SEAT_UID, SEAT_GID, "", ""
            return info

        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.add(kept / KEPT, arcname=KEPT, filter=owned)
        if not container.put_archive(DATA_DIR, buffer.getvalue()):
            raise ProvisioningError(f"{spec.name}: its saved files could not be put back into its new volume")
        log.info("Seat %s: its saved files were put back into its new volume", spec.name)

    @staticmethod
    def _volume_exists(client: docker.DockerClient, name: str) -> bool:
        try:
            client.volumes.get(name)
        except NotFound:
            return False
        return True

    def list_managed(self) -> list[str]:
        """Names of every container this platform created (running or not), so strays can be found."""
        with self._engine("list seat containers") as client:
            found = client.api.containers(all=True, filters={"label": f"{MANAGED_LABEL}=1"})
            # The list endpoint names containers with a leading slash ("/comfyume-seat-…").
            return sorted(entry["Names"][0].lstrip("/") for entry in found if entry.get("Names"))

    # --- helpers ---

    def _address(self, spec: SeatSpec) -> str:
        return f"{spec.name}:{SEAT_PORT}"

    def _status_of(self, spec: SeatSpec, container: Container) -> FrontendStatus:
        state = container.attrs["State"]
        detail = f"container {container.short_id} {state.get('Status', '?')}"
        if not state["Running"]:
            detail += f" (exit code {state.get('ExitCode', '?')})"
            return FrontendStatus(running=False, detail=detail)
        return FrontendStatus(
            running=True, address=self._address(spec), detail=detail, stale=self._stale(spec, container)
        )

    def _stale(self, spec: SeatSpec, container: Container) -> str:
        """What the running container has that ``spec`` and this driver's image no longer say, read from the
        container itself: that also judges containers made by ``docker compose`` or an earlier version. The
        image adds variables of its own to the environment, so only the spec's are compared."""
        config = container.attrs.get("Config") or {}
        wanted = {key: value for key, value in container_env(spec).items() if key != TOKEN_ENV}
        env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        stale = changed({key: env[key] for key in wanted if key in env}, wanted)
        labels = config.get("Labels") or {}
        stale += [f"label {key}" for key, value in container_labels(spec).items() if labels.get(key) != value]
        if config.get("Image") != self.image:
            stale.append("image")
        return ", ".join(stale)

    def _spec_hash(self, spec: SeatSpec) -> str:
        created_from = {
            "image": self.image,
            "env": container_env(spec),
            "labels": container_labels(spec),
            "memory": self.memory,
            "cpus": self.cpus,
            "network": self.network,
            # A container made before the seats were locked down is made again with these.
            "confinement": [READ_ONLY_ROOT, TMPFS, CAP_DROP, SECURITY_OPT, PIDS_LIMIT],
        }
        return hashlib.sha256(json.dumps(created_from, sort_keys=True).encode()).hexdigest()[:16]

    def _find(self, client: docker.DockerClient, name: str) -> Container | None:
        try:
            return client.containers.get(name)
        except NotFound:
            return None

    def _ensure_network(self, client: docker.DockerClient) -> None:
        try:
            client.networks.get(self.network)
            return
        except NotFound:
            pass
        try:
            client.networks.create(self.network, driver="bridge", labels={MANAGED_LABEL: "1"})
        except APIError as exc:
            # Another supervisor created it between our look and our create: that is what we wanted.
            if exc.status_code != 409:
                raise

    def _create(self, client: docker.DockerClient, spec: SeatSpec) -> Container:
        """Create the container, pulling the image once if the Engine does not have it."""
        try:
            return self._create_container(client, spec)
        except ImageNotFound:
            self._pull(client)
        return self._create_container(client, spec)

    def _create_container(self, client: docker.DockerClient, spec: SeatSpec) -> Container:
        try:
            return client.containers.create(
                self.image,
                name=spec.name,
                environment=container_env(spec),
                labels={**container_labels(spec), SPEC_LABEL: self._spec_hash(spec)},
                mounts=[Mount(target=DATA_DIR, source=volume_name(spec), type="volume")],
                mem_limit=self.memory,
                nano_cpus=nano_cpus(self.cpus),
                read_only=READ_ONLY_ROOT,
                tmpfs=TMPFS,
                cap_drop=CAP_DROP,
                security_opt=SECURITY_OPT,
                pids_limit=PIDS_LIMIT,
                restart_policy={"Name": "unless-stopped"},
                network=self.network,
            )
        except APIError as exc:
            # Lost a race with another start of the same seat: use the container it created.
            if exc.status_code == 409:
                return client.containers.get(spec.name)
            raise

    def _pull(self, client: docker.DockerClient) -> None:
        """Pull the seat image once; failing here is for the operator to fix (build it, or fix registry access).

        The Engine reports some pull failures as an HTTP error and others inside a 200 progress stream, so
        the stream is read to its end for an ``error`` item. (The SDK pulls without a read timeout.)
        """
        try:
            for item in client.api.pull(self.image, stream=True, decode=True):
                if isinstance(item, dict) and item.get("error"):
                    raise ProvisioningError(self._missing_image(item["error"]), permanent=True)
        except APIError as exc:
            raise ProvisioningError(self._missing_image(exc.explanation or str(exc)), permanent=True) from exc

    def _missing_image(self, why: str) -> str:
        return (
            f"The seat image {self.image} is not on the Docker engine and pulling it failed: {why}. "
            f"Build it (docker build -t {self.image} …) or make it pullable, then start the seat again."
        )

    @contextmanager
    def _engine(self, action: str) -> Iterator[docker.DockerClient]:
        """The Engine client, with every failure of the block turned into a ProvisioningError."""
        try:
            yield self._connect(action)
        except ProvisioningError:
            raise
        except ImageNotFound as exc:
            # The image vanished between our pull and our create (someone ran docker rmi): retrying may help.
            raise ProvisioningError(f"Could not {action}: {exc.explanation or exc}") from exc
        except APIError as exc:
            # Bad parameters and refused permissions come back the same next time. A 404 or 409 means something
            # changed under us (a container or network removed or created meanwhile) and a 5xx may pass.
            permanent = exc.status_code in (400, 401, 403)
            raise ProvisioningError(f"Could not {action}: {exc.explanation or exc}", permanent=permanent) from exc
        except requests.exceptions.RequestException as exc:
            # Refused or reset connections, timeouts, a stream cut short (APIError, an HTTPError, is caught above).
            raise self._unreachable(action, exc) from exc
        except DockerException as exc:
            # Client-side refusals (a memory limit it cannot parse, an unsupported API version) won't pass.
            raise ProvisioningError(f"Could not {action}: {exc}", permanent=True) from exc

    def _connect(self, action: str) -> docker.DockerClient:
        """Build the client on first use: it asks the Engine for its API version, so it needs the Engine up."""
        if self._client is None:
            try:
                self._client = docker.DockerClient(base_url=self.base_url, timeout=API_TIMEOUT)
            except (DockerException, ValueError) as exc:
                # Refused before any request (no cause, or urllib's ValueError for a bad port): the address is
                # malformed. Otherwise the version request failed: the Engine is down or not there.
                if exc.__cause__ is None:
                    raise ProvisioningError(
                        f"DOCKER_HOST {self.base_url!r} is not a Docker engine address: {exc}", permanent=True
                    ) from exc
                raise self._unreachable(action, exc) from exc
        return self._client

    def _unreachable(self, action: str, exc: Exception) -> ProvisioningError:
        return ProvisioningError(
            f"Could not {action}: the Docker engine at {self.base_url} did not answer ({exc}). "
            "Check that it runs and that DOCKER_HOST points at it.",
            permanent=False,
        )
