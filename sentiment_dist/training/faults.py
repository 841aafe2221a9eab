"""Fault injection for the fault-tolerance tests: a worker dies, waits for a SIGTERM or waits for
a worker to join at a named point of training, so a test hits that point every time instead of
racing a signal against the clock.

    SENTIMENT_DIST_FAULTS="kill between_steps rank=0 epoch=1 step=22; join between_steps rank=0 world=1 epoch=1 step=21"
    SENTIMENT_DIST_FAULTS_DIR=<a directory>

Each fault (`;`-separated) names an action, a point, the rank that acts (read when the point is
reached: ranks change when workers leave) and optionally the number of workers it waits for
(`world`) and the 1-based epoch and step it acts at (the first time otherwise). It acts once per
job: the process that reaches it first writes `<n>.fired` (n: its index in the list) into the
directory and then acts; a survivor that replays the same position after a rollback finds the
file and goes on. Actions:

- `kill`: SIGKILL itself, as a machine that is lost (no cleanup, no word to its peers).
  With SENTIMENT_DIST_FAULTS_HOSTS=<the discovery script's hosts file> (elastic Horovod), it
  first takes its host off that file: Horovod then re-forms without it however soon the host's
  blacklist cooldown ends, instead of racing the cooldown and sometimes taking it back at once.
- `sigterm`: wait until a SIGTERM has come (the test sends it once it sees the `.fired` file) and
  the preemption guard has taken notice, so the job stops at the next step boundary, whatever
  the machine's speed (TensorFlow's handler looks at the signal only once a second).
- `join`: elastic Horovod: put the hosts `kill` took off back in the hosts file (if any), then
  wait until Horovod reports a host added since the workers last changed (the lost worker's
  host, back after its cooldown), so a worker joins at the next commit instead of after the job
  ended. The example's waits right after the rollback to step 20.

Points: `between_steps` (after step `step`), `in_allreduce` (in step `step`: this worker's
gradients are computed, not yet all-reduced, so the others wait inside the step's all-reduce),
`validation` (as epoch `epoch`'s validation starts: the others fail in its first all-reduce),
`after_training` (every epoch done; before the scores and the run dir are written).

Unset, which is always outside the tests, `reached` returns at once and no step traces a hook.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

POINTS = ("between_steps", "in_allreduce", "validation", "after_training")


@dataclass(frozen=True)
class Fault:
    index: int
    action: str
    point: str
    rank: int
    world: int | None = None
    epoch: int | None = None
    step: int | None = None

    def due(self, point: str, dist, epoch: int | None, step: int | None) -> bool:
        return ((point, dist.rank) == (self.point, self.rank) and self.world in (None, dist.world_size)
                and self.epoch in (None, epoch) and self.step in (None, step))


def parse(text: str) -> list[Fault]:
    faults = []
    for index, spec in enumerate(part.split() for part in text.split(";") if part.strip()):
        action, point, *fields = spec
        values = dict(field.split("=", 1) for field in fields)
        assert action in ("kill", "sigterm", "join") and point in POINTS and set(values) <= {"rank", "world", "epoch", "step"}, spec
        faults.append(Fault(index, action, point, **{key: int(value) for key, value in values.items()}))
    return faults


PLANNED = parse(os.environ.get("SENTIMENT_DIST_FAULTS", ""))
HOSTS_ENV = "SENTIMENT_DIST_FAULTS_HOSTS"
_host_added = threading.Event()  # since the workers last changed
_listening = False


def planned(point: str) -> bool:
    return any(fault.point == point for fault in PLANNED)


def reached(point: str, trainer, epoch: int | None = None, step: int | None = None) -> None:
    """Act on the faults planned for `point` at this epoch and step (1-based) on this rank."""
    if not PLANNED:
        return
    _listen_for_hosts(trainer.dist)
    for fault in PLANNED:
        if fault.due(point, trainer.dist, epoch, step) and _first_to_fire(fault, epoch, step):
            if fault.action == "kill":
                _take_host_off(os.environ.get("HOROVOD_HOSTNAME"))
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault.action == "sigterm":
                trainer.guard.take_notice()
            else:
                _bring_hosts_back()
                _host_added.wait()


def workers_changed() -> None:
    """Horovod re-formed the workers: a host it reported added before has been taken in, or
    dropped (a reset discards the notices Horovod has not acted on)."""
    _host_added.clear()


def _first_to_fire(fault: Fault, epoch: int | None, step: int | None) -> bool:
    path = os.path.join(os.environ["SENTIMENT_DIST_FAULTS_DIR"], f"{fault.index}.fired")
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(descriptor, f"{fault.action} {fault.point} epoch={epoch} step={step} pid={os.getpid()}\n".encode())
    os.close(descriptor)
    return True


def _take_host_off(host: str | None) -> None:
    """Take `host`'s lines off the hosts file, kept aside in the faults dir for `join`."""
    if not os.environ.get(HOSTS_ENV):
        return
    lines = _hosts()
    leaving = [line for line in lines if line.split(":")[0].strip() == host]
    with open(_kept_aside(), "a") as handle:
        handle.writelines(f"{line}\n" for line in leaving)
    _write_hosts([line for line in lines if line not in leaving])


def _bring_hosts_back() -> None:
    """Put the lines `_take_host_off` kept aside back in the hosts file."""
    if not os.environ.get(HOSTS_ENV) or not os.path.exists(_kept_aside()):
        return
    lines = _hosts()
    with open(_kept_aside()) as handle:
        lines += [line for line in handle.read().splitlines() if line not in lines]
    _write_hosts(lines)
    os.remove(_kept_aside())


def _kept_aside() -> str:
    return os.path.join(os.environ["SENTIMENT_DIST_FAULTS_DIR"], "hosts_away")


def _hosts() -> list[str]:
    with open(os.environ[HOSTS_ENV]) as handle:
        return handle.read().splitlines()


def _write_hosts(lines: list[str]) -> None:
    """Replaced whole, so the discovery script never reads half of it."""
    temp = f"{os.environ[HOSTS_ENV]}.{os.getpid()}"
    with open(temp, "w") as handle:
        handle.writelines(f"{line}\n" for line in lines)
    os.replace(temp, os.environ[HOSTS_ENV])


def _listen_for_hosts(dist) -> None:
    """From the first point on, note every host Horovod's driver reports added (it tells rank 0,
    whichever process that is by then)."""
    global _listening
    if _listening or not dist.elastic:
        return
    from horovod.common.elastic import notification_manager
    from horovod.runner.elastic.worker import HostUpdateResult

    class Listener:
        def on_hosts_updated(self, timestamp, update) -> None:
            if update & HostUpdateResult.added:
                _host_added.set()

    notification_manager.register_listener(Listener())
    _listening = True
