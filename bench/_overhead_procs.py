"""Processes for bench/overhead.py: the fake upstream, ctxwarden under uvicorn
or granian, and LiteLLM's proxy from a separate venv (bench/litellm_venv.sh).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _overhead_load import HOST, PLAIN_BODY, probe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import ctxwarden_command, wait_for_port  # noqa: E402

SERVERS = ("uvicorn", "granian")
APP_FACTORY = "ctxwarden.app:create_app_from_environment"


class StartError(RuntimeError):
    pass


def start(cmd: list[str], port: int, log_dir: str, name: str, env: dict | None = None,
          timeout: float = 30) -> subprocess.Popen:
    """Start a server; its output goes to a file (a pipe nobody reads would
    fill up and block the server once it logs enough)."""
    log_path = Path(log_dir) / f"{name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_for_port(port, timeout=timeout, proc=proc)
    except Exception as exc:
        stop(proc)
        raise StartError(f"could not start {' '.join(cmd)} ({exc}):\n{tail(log_path)}") from None
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def fake_command(port: int) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "_serve.py"), "fake", "--port", str(port)]


def proxy_command(server: str, port: int, config: Path, *, via_cli: bool = False,
                  profile: str | None = None) -> tuple[list[str], dict]:
    """Command and extra environment that serve ctxwarden on `port`, one worker."""
    if server == "granian":
        # the same factory as `ctxwarden serve`'s workers; granian forks one worker
        # process (its CPU is counted with the parent's)
        cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", HOST,
               "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws",
               "--log-level", "warning", "--no-access-log", "--backlog", "4096", APP_FACTORY]
        return cmd, {"CTXWARDEN_CONFIG": str(config), "CTXWARDEN_LOG_LEVEL": "warning"}
    if via_cli:
        return ctxwarden_command() + ["serve", "--config", str(config), "--host", HOST, "--port", str(port),
                                      "--log-level", "warning"], {}
    cmd = [sys.executable, str(ROOT / "bench" / "_serve.py"), "proxy", "--port", str(port), "--config", str(config)]
    if profile:
        cmd += ["--profile", profile]
    return cmd, {}


# --------------------------------------------------------------------------- LiteLLM

# What is switched off, and why (also in README "Proxy overhead"):
#   no database_url / DATABASE_URL   no Postgres/Prisma: no key checks, spend logs
#                                    or budget jobs against a DB
#   no master_key                    no virtual-key auth (ctxwarden checks none either);
#                                    LiteLLM refuses to start so unless
#                                    dangerously_permit_weak_or_unset_master_key: true
#   general_settings.disable_spend_logs / disable_error_logs: true
#   general_settings.background_health_checks: false
#   litellm_settings.callbacks/success_callback/failure_callback: []   no logging integrations
#   litellm_settings.turn_off_message_logging: true, set_verbose: false, json_logs: false
#   litellm_settings.num_retries: 0, request_timeout: 60 ; router_settings.num_retries: 0
#   LITELLM_LOCAL_MODEL_COST_MAP=True   use the bundled cost map, no download at start
#   LITELLM_LOG=ERROR                also sets its uvicorn's log level: no access log lines
#   LITELLM_TELEMETRY=False, DISABLE_ADMIN_UI=True
#   (its CLI runs uvicorn with uvloop, and httptools when installed: bench/litellm_venv.sh does)
LITELLM_CONFIG = """\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://{host}:{port}/v1
      api_key: sk-fake-upstream
  - model_name: "*"
    litellm_params:
      model: openai/*
      api_base: http://{host}:{port}/v1
      api_key: sk-fake-upstream
litellm_settings:
  set_verbose: false
  json_logs: false
  turn_off_message_logging: true
  callbacks: []
  success_callback: []
  failure_callback: []
  num_retries: 0
  request_timeout: 60
  drop_params: true
router_settings:
  num_retries: 0
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
  background_health_checks: false
  dangerously_permit_weak_or_unset_master_key: true
"""

LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_ADMIN_UI": "True",
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
}
# taken out of LiteLLM's environment, so that it neither finds a DB or a master
# key nor sends to another base URL, nor imports from ctxwarden's venv
LITELLM_SCRUB = ("DATABASE_URL", "LITELLM_MASTER_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "VIRTUAL_ENV",
                 "PYTHONPATH")


def litellm_python(flag: str | None) -> str | None:
    return flag or os.environ.get("LITELLM_PYTHON") or None


def start_litellm(python: str, fake_port: int, port: int, log_dir: str,
                  ready_timeout: float = 180) -> tuple[subprocess.Popen | None, str]:
    """Start `litellm --config ... --port N` (one uvicorn worker) in front of the
    fake upstream and wait until it answers a chat completion; (process, "") or
    (None, why not)."""
    exe = Path(python).with_name("litellm")
    if not Path(python).exists():
        return None, f"{python} does not exist (create it with bench/litellm_venv.sh)"
    if not exe.exists():
        return None, f"no `litellm` next to {python}: pip install 'litellm[proxy]' into that venv"
    config = Path(log_dir) / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(host=HOST, port=fake_port))
    cmd = [str(exe), "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1"]
    full_env = {k: v for k, v in os.environ.items() if k not in LITELLM_SCRUB}
    full_env.update(LITELLM_ENV)
    full_env["PATH"] = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    log_path = Path(log_dir) / "litellm.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=log_dir, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + ready_timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, f"litellm exited with code {proc.returncode}:\n{tail(log_path)}"
        try:
            status = asyncio.run(probe(port, PLAIN_BODY))
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return proc, ""
            last = f"HTTP {status}"
        time.sleep(0.5)
    stop(proc)
    return None, f"litellm not ready within {ready_timeout:.0f}s ({last}):\n{tail(log_path)}"


def litellm_version(python: str) -> str:
    try:
        out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def granian_version() -> str | None:
    try:
        import importlib.metadata as m

        return m.version("granian")
    except Exception:
        return None
