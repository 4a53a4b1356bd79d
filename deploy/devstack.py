"""The local infrastructure, without Docker: a real Kafka broker (KRaft, one node) and a real
PostgreSQL cluster, both private to this checkout and bound to loopback.

    python deploy/devstack.py up      # fetch jars once, start both (idempotent), print env lines
    python deploy/devstack.py down    # stop both
    python deploy/devstack.py status

State lives in `.devstack/` (git-ignored). Kafka's jars are resolved from Maven Central by
`deploy/kafka/pom.xml` and cached there, so later starts take seconds. Standard library only:
this runs before the project's virtualenv exists.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("CALLTIME_DEVSTACK_DIR", ROOT / ".devstack"))
KAFKA_PORT = int(os.environ.get("CALLTIME_DEVSTACK_KAFKA_PORT", "29092"))
CONTROLLER_PORT = KAFKA_PORT + 1
PG_PORT = int(os.environ.get("CALLTIME_DEVSTACK_PG_PORT", "25432"))
PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin")]
KAFKA_HEAP = os.environ.get("CALLTIME_DEVSTACK_KAFKA_HEAP", "512m")

KAFKA_LIBS = STATE / "kafka-libs"
KAFKA_DIR = STATE / "kafka"
PG_DIR = STATE / "postgres"


def log(message: str) -> None:
    print(f"devstack: {message}", file=sys.stderr, flush=True)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise SystemExit(f"devstack: {what} did not come up within {timeout:.0f} s")


# ---------------------------------------------------------------- Kafka

def ensure_kafka_jars() -> None:
    if KAFKA_LIBS.is_dir() and any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        return
    if shutil.which("mvn") is None:
        raise SystemExit("devstack: Maven (mvn) is needed once to fetch the Kafka jars")
    log("fetching the Kafka broker jars with Maven (once)")
    tmp = KAFKA_LIBS.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(ROOT / "deploy/kafka/pom.xml"),
         "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
        check=True,
    )
    tmp.rename(KAFKA_LIBS)


def kafka_properties() -> str:
    data = KAFKA_DIR / "data"
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{CONTROLLER_PORT}",
        f"listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{CONTROLLER_PORT}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=3",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=5",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=5",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "share.coordinator.state.topic.num.partitions=5",
        "group.initial.rebalance.delay.ms=0",
        "log.initial.task.delay.ms=100",
        "",
    ])


LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Root level="WARN"><AppenderRef ref="stdout"/></Root>
  </Loggers>
</Configuration>
"""


def java_command(main: str, *args: str) -> list[str]:
    return [
        "java", f"-Xmx{KAFKA_HEAP}", f"-Xms{KAFKA_HEAP}", "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.xml'}",
        "-cp", f"{KAFKA_LIBS}/*", main, *args,
    ]


def kafka_up() -> None:
    if port_open(KAFKA_PORT):
        log(f"kafka already listening on 127.0.0.1:{KAFKA_PORT}")
        return
    ensure_kafka_jars()
    KAFKA_DIR.mkdir(parents=True, exist_ok=True)
    props = KAFKA_DIR / "server.properties"
    props.write_text(kafka_properties())
    (KAFKA_DIR / "log4j2.xml").write_text(LOG4J2)
    started = time.monotonic()
    if not (KAFKA_DIR / "data" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(java_command("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                    "-c", str(props), "-g"),
                       check=True, stdout=subprocess.DEVNULL)
    with open(KAFKA_DIR / "broker.log", "ab") as out:
        proc = subprocess.Popen(java_command("kafka.Kafka", str(props)), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (KAFKA_DIR / "broker.pid").write_text(str(proc.pid))
    wait_for(lambda: port_open(KAFKA_PORT) or proc.poll() is not None, 90, "kafka")
    if proc.poll() is not None:
        raise SystemExit(f"devstack: kafka exited; see {KAFKA_DIR / 'broker.log'}")
    log(f"kafka up on 127.0.0.1:{KAFKA_PORT} in {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------- PostgreSQL

def pg_bin(name: str) -> str:
    for candidate in PG_BIN_CANDIDATES:
        if (candidate / name).exists():
            return str(candidate / name)
    found = shutil.which(name)
    if found:
        return found
    raise SystemExit("devstack: PostgreSQL server binaries not found; run deploy/bootstrap.sh "
                     "(it installs Debian's postgresql package)")


def run_as_postgres_user() -> dict:
    """initdb refuses to run as root; on CI we are root, so drop to the `postgres` account."""
    if os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam(os.environ.get("CALLTIME_DEVSTACK_PG_USER", "postgres"))

    def demote() -> None:
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return {"preexec_fn": demote, "uid": entry.pw_uid, "gid": entry.pw_gid}


def let_postgres_user_reach(folder: Path) -> None:
    """A clone under a 0700 temp folder hides the cluster from the `postgres` account: grant
    search (x) permission, not listing, on each ancestor that lacks it."""
    for path in [folder, *folder.parents]:
        mode = path.stat().st_mode
        if not mode & 0o001:
            os.chmod(path, mode | 0o001)


def postgres_up() -> None:
    if port_open(PG_PORT):
        log(f"postgres already listening on 127.0.0.1:{PG_PORT}")
        return
    as_user = run_as_postgres_user()
    data = PG_DIR / "data"
    PG_DIR.mkdir(parents=True, exist_ok=True)
    if as_user:
        let_postgres_user_reach(PG_DIR)
        os.chown(PG_DIR, as_user["uid"], as_user["gid"])
    demote = as_user.get("preexec_fn")
    started = time.monotonic()
    if not (data / "PG_VERSION").exists():
        subprocess.run([pg_bin("initdb"), "-D", str(data), "-U", "calltime", "--auth=trust",
                        "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, preexec_fn=demote)
    options = (f"-c listen_addresses=127.0.0.1 -p {PG_PORT} -c unix_socket_directories={PG_DIR} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run([pg_bin("pg_ctl"), "-D", str(data), "-l", str(PG_DIR / "server.log"),
                    "-o", options, "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL, preexec_fn=demote)
    wait_for(lambda: port_open(PG_PORT), 30, "postgres")
    log(f"postgres up on 127.0.0.1:{PG_PORT} in {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------- commands

def env_lines() -> list[str]:
    return [
        f"CALLTIME_KAFKA_BOOTSTRAP=127.0.0.1:{KAFKA_PORT}",
        f"CALLTIME_DATABASE_URL=postgresql://calltime@127.0.0.1:{PG_PORT}/postgres",
    ]


def up() -> None:
    postgres_up()
    kafka_up()
    print("\n".join(env_lines()))


def stop_pid_file(pid_file: Path, what: str) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return
    for _ in range(150):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    pid_file.unlink(missing_ok=True)
    log(f"{what} stopped")


def down() -> None:
    stop_pid_file(KAFKA_DIR / "broker.pid", "kafka")
    data = PG_DIR / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL,
                       preexec_fn=run_as_postgres_user().get("preexec_fn"))
        log("postgres stopped")


def status() -> None:
    print(f"kafka 127.0.0.1:{KAFKA_PORT}: {'up' if port_open(KAFKA_PORT) else 'down'}")
    print(f"postgres 127.0.0.1:{PG_PORT}: {'up' if port_open(PG_PORT) else 'down'}")


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status}
    if len(argv) != 2 or argv[1] not in commands:
        print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
        return 2
    commands[argv[1]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
