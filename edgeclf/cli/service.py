"""`edgeclf service install`: `edgeclf run` as a systemd service that starts at boot and is restarted when it
dies or its camera hangs.

    sudo .venv/bin/edgeclf service install runs/train/exp/export --source 0 --serve 0.0.0.0:8080
    sudo systemctl daemon-reload && sudo systemctl enable --now edgeclf.service

The unit is ``Type=notify`` with a watchdog: ``edgeclf run`` says READY=1 at its first classified frame and feeds
the watchdog only while frames flow (:mod:`edgeclf.runtime.systemd`). The run's arguments are parsed here by
``edgeclf run``'s own parser, so that a bad option fails now, not at boot, and are written back normalized
(paths made absolute, ``--headless`` added). Secrets never go in the unit (any user can read it with
``systemctl cat``): the token and the MQTT password come from the environment file
``/etc/edgeclf/NAME.env``, which the unit reads, and which the user writes and ``chmod 600``'s.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from edgeclf.errors import EdgeclfError

ENV_DIR = "/etc/edgeclf"
UNIT_DIR = "/etc/systemd/system"
TIMEOUT_STOP_SEC = 20
# a URL with a password: scheme://user:password@...
URL_PASSWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")
ENV_REF_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")  # a whole argument systemd fills in at start
SAFE_WORD_RE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")  # needs no quoting in ExecStart=
UNIT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
PATH_OPTIONS = ("save", "output", "snapshots", "collect")  # run options whose value is a path: made absolute


class ServiceError(EdgeclfError):
    """A service that cannot be installed as asked."""


# --- systemd syntax ---------------------------------------------------------------------------------------
def quote_exec_arg(arg: str, *, env: bool = True) -> str:
    """One ExecStart= word that systemd turns back into exactly ``arg``.

    systemd first expands ``%`` specifiers on the whole line (``%%`` is a ``%``), then splits it into words
    with shell-like quotes and C escapes (``\\\\``, ``\\"``), then, at start, replaces ``$VAR``/``${VAR}`` in
    the arguments (``$$`` is a ``$``; ``env=False`` for the executable's path, which is not). A word that is a
    whole ``${NAME}`` stays a reference: systemd fills in that variable (from the environment file) as one
    argument.
    """
    if env and ENV_REF_RE.fullmatch(arg):
        return arg
    if "\0" in arg:
        raise ServiceError(f"{arg!r}: a NUL character cannot go in a command line")
    if SAFE_WORD_RE.fullmatch(arg) and arg != ";":
        word = arg
    else:
        escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
        escaped = re.sub(r"[\x01-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", escaped)  # C escapes
        word = f'"{escaped}"'
    if env:
        word = word.replace("$", "$$")
    return word.replace("%", "%%")


def exec_line(argv: list[str]) -> str:
    """ExecStart='s value: the absolute executable, then its arguments."""
    exe = argv[0]
    if not os.path.isabs(exe):
        raise ServiceError(f"{exe}: systemd needs the executable's absolute path")
    bad = sorted({ch for ch in exe if ch in "\"'\\$" or ord(ch) < 0x20 or ord(ch) == 0x7F})
    if bad:  # systemd refuses quotes, backslashes and control characters in an executable's name (fatally);
        # a '$' it would take literally in the path but substitute in argv[0]
        raise ServiceError(f"{exe}: systemd cannot start an executable whose path holds {' '.join(map(repr, bad))}; "
                           "use a Python (a virtual environment) at a plainer path")
    return " ".join([quote_exec_arg(exe, env=False)] + [quote_exec_arg(a) for a in argv[1:]])


def unit_value(text: str) -> str:
    """A plain setting value (Description=, WorkingDirectory=, ...): one line, ``%`` escaped."""
    if "\n" in text or "\r" in text:
        raise ServiceError(f"{text!r}: a line break cannot go in a unit setting")
    return text.replace("%", "%%")


def env_file(name: str) -> str:
    return f"{ENV_DIR}/{name}.env"


def render_unit(*, name: str, argv: list[str], working_dir: str, description: str, user: str | None,
                watchdog_sec: float, restart_sec: float, timeout_stop_sec: float = TIMEOUT_STOP_SEC) -> str:
    """The text of ``NAME.service``: ``argv`` (absolute executable first) as a Type=notify service with a
    watchdog, restarted on failure, its secrets read from :func:`env_file`."""
    if not os.path.isabs(working_dir):
        raise ServiceError(f"{working_dir}: the working directory must be absolute")
    lines = [
        "# Written by `edgeclf service install`; write it again rather than edit it.",
        f"# Secrets (EDGECLF_TOKEN, EDGECLF_MQTT_PASSWORD) go in {env_file(name)} (chmod 600), never here.",
        "[Unit]",
        f"Description={unit_value(description)}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
    ]
    if user:
        lines.append(f"User={unit_value(user)}")
    lines += [
        f"ExecStart={exec_line(argv)}",
        f"WorkingDirectory={unit_value(working_dir)}",
        f"EnvironmentFile=-{unit_value(env_file(name))}",
        "Environment=PYTHONUNBUFFERED=1",
        f"WatchdogSec={_seconds(watchdog_sec)}",
        "Restart=on-failure",
        f"RestartSec={_seconds(restart_sec)}",
        f"TimeoutStopSec={_seconds(timeout_stop_sec)}",
        "# a stop before the loop runs (a SIGTERM while the model loads) exits 130: still a clean stop",
        "SuccessExitStatus=130",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value:g}s" if float(value) != int(value) else f"{int(value)}"


# --- the run's arguments ----------------------------------------------------------------------------------
def parse_run_args(args: list[str]) -> click.Context:
    """``edgeclf run``'s context for ``args`` (MODEL and options), or a one-line ServiceError."""
    from edgeclf.cli import run

    try:
        return run.command.make_context("run", list(args), resilient_parsing=False)
    except click.exceptions.Exit as exc:  # --version and the like: nothing to install
        raise ServiceError("edgeclf run's arguments: expected EXPORT --source SPEC [options]") from exc
    except click.ClickException as exc:
        raise ServiceError(f"edgeclf run would refuse these arguments: {exc.format_message()} "
                           "(see edgeclf run --help)") from exc


def refuse_secrets(ctx: click.Context, name: str) -> None:
    """No token and no password in the unit: say where they go instead."""
    from click.core import ParameterSource

    where = f"{env_file(name)} (then: sudo chmod 600 {env_file(name)})"
    if ctx.get_parameter_source("token") == ParameterSource.COMMANDLINE:
        raise ServiceError(f"--token: a unit file is readable by every user (systemctl cat); put "
                           f"EDGECLF_TOKEN=... in {where} instead, the service reads it from there")
    for key, env in (("mqtt", None), ("source", "EDGECLF_SOURCE"), ("webhook", "EDGECLF_WEBHOOK")):
        value = ctx.params.get(key)
        if not isinstance(value, str) or not URL_PASSWORD_RE.search(value):
            continue
        if env is None:
            raise ServiceError(f"--mqtt: a password in the unit file is readable by every user (systemctl cat); "
                               f"pass --mqtt mqtt://USER@HOST and put EDGECLF_MQTT_PASSWORD=... in {where}")
        raise ServiceError(f"--{key}: a password in the unit file is readable by every user (systemctl cat); "
                           f"put {env}=URL in {where} and pass --{key} '${{{env}}}' (systemd fills it in at start)")
    for arg in ctx.args:  # nothing is left over by run's parser, but never write what was not checked
        if URL_PASSWORD_RE.search(arg):
            raise ServiceError("a URL with a password in the arguments: it would be readable by every user; "
                               f"use {where}")


def check_run(ctx: click.Context, name: str) -> list[str]:
    """What ``edgeclf run`` would refuse at boot, refused now; returns notes for the user."""
    from edgeclf.cli.run import _device_options
    from edgeclf.runtime.device import MQTT_PASSWORD_ENV, TOKEN_ENV, check, is_loopback, parse_bind
    from edgeclf.runtime.model import resolve_model

    p = ctx.params
    notes: list[str] = []
    model = resolve_model(p["model"], p["artifact"])  # no runtime loaded: the folder, its contract, the file
    opts = _device_options(p)
    refs = {k: v for k, v in (("mqtt", opts.mqtt), ("webhook", opts.webhook))
            if isinstance(v, str) and ENV_REF_RE.fullmatch(v)}
    for key in refs:  # filled in by systemd at start: its value cannot be checked here
        setattr(opts, key, None)
    opts.token = "placeholder-token"  # the service reads it from the environment file (refused as an option)
    check(opts, list(model.classes))
    if opts.serve is not None and not is_loopback(parse_bind(opts.serve)[0]):
        notes.append(f"--serve {opts.serve} needs a token: put {TOKEN_ENV}=... (8 characters or more) in "
                     f"{env_file(name)}, then: sudo chmod 600 {env_file(name)}")
    if opts.mqtt is not None and re.match(r"^mqtts?://[^/:@]+@", opts.mqtt):
        notes.append(f"--mqtt names a user: put its password as {MQTT_PASSWORD_ENV}=... in {env_file(name)} "
                     f"(chmod 600) if the broker asks for one")
    if p["source"] is not None and ENV_REF_RE.fullmatch(p["source"]):
        refs["source"] = p["source"]
    for key, ref in refs.items():
        notes.append(f"--{key} {ref}: put {ref[2:-1]}=... in {env_file(name)} (chmod 600); systemd fills it in "
                     "at each start")
    return notes


def service_argv(ctx: click.Context, cwd: Path) -> list[str]:
    """``python -m edgeclf run`` with the parsed arguments written back: the options given on the command
    line (in ``edgeclf run``'s order), paths absolute, ``--headless`` added (a service has no display)."""
    from click.core import ParameterSource

    argv = [os.path.abspath(sys.executable), "-m", "edgeclf", "run"]
    params = ctx.params
    model = Path(params["model"]).expanduser()
    argv.append(str(model if model.is_absolute() else (cwd / model)))
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        long_opts = [o for o in param.opts if o.startswith("--")] or param.opts
        if param.is_flag:
            value = params.get(param.name, True) if param.expose_value else True
            if value:
                argv.append(long_opts[0])
            elif param.secondary_opts:
                argv.append(param.secondary_opts[0])
            continue
        value = params[param.name]
        if value is None:
            continue
        if param.name in PATH_OPTIONS:
            path = Path(value).expanduser()
            text = str(path if path.is_absolute() else cwd / path)
        elif param.name == "source":
            text = _absolute_source(str(value), cwd)
        else:
            text = str(value)
        argv += [f"{long_opts[0]}={text}"] if text.startswith("-") else [long_opts[0], text]
    if not params.get("headless"):
        argv.append("--headless")
    return argv


def _absolute_source(spec: str, cwd: Path) -> str:
    """A local file, folder or glob relative to ``cwd`` made absolute; cameras and URLs as they are."""
    if re.fullmatch(r"\d+|picamera\d*", spec, re.IGNORECASE) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec) \
            or ENV_REF_RE.fullmatch(spec):
        return spec
    path = Path(spec).expanduser()
    return spec if path.is_absolute() else str(cwd / path)


def _describe_source(spec: str) -> str:
    if spec.isdigit():
        return f"camera {spec}"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec):
        from edgeclf.runtime.sources import redact_url

        return redact_url(spec)
    return spec


def default_user() -> str | None:
    """The invoking user: this process's, or sudo's caller; None for root (no User= line: root)."""
    import pwd

    uid = os.geteuid()
    if uid != 0:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)
    sudo_user = os.environ.get("SUDO_USER", "")
    return sudo_user if sudo_user and sudo_user != "root" else None


def _camera_note(user: str | None, source: str) -> str | None:
    """A camera needs the service's user in the 'video' group."""
    if not user or not re.fullmatch(r"\d+|picamera\d*", source, re.IGNORECASE):
        return None
    import grp
    import pwd

    try:
        video = grp.getgrnam("video")
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    if entry.pw_gid == video.gr_gid or user in video.gr_mem:
        return None
    return f"{user} is not in the video group and may not open the camera: sudo usermod -aG video {user}"


# --- the commands -----------------------------------------------------------------------------------------
@click.group("service")
def command() -> None:
    """Run `edgeclf run` as a systemd service: at boot, restarted when it dies or its camera hangs.

    \b
      sudo .venv/bin/edgeclf service install EXPORT --source 0 --serve 0.0.0.0:8080
      edgeclf service install EXPORT --source 0 --unit-dir -      print the unit, write nothing
    """


@command.command("install", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True})
@click.option("--name", default="edgeclf", show_default=True, help="The unit's name: NAME.service.")
@click.option("--unit-dir", default=UNIT_DIR, show_default=True, metavar="DIR",
              help="Where the unit is written; - prints it instead.")
@click.option("--user", default=None,
              help="The user the service runs as [default: the invoking user (sudo's caller); root: none].")
@click.option("--watchdog-sec", type=click.FloatRange(1), default=30, show_default=True,
              help="systemd restarts the service when no frame has come for --stall-timeout and then this long.")
@click.option("--restart-sec", type=click.FloatRange(0), default=5, show_default=True,
              help="Seconds between a failure and the restart.")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED, metavar="EXPORT --source SPEC [RUN OPTIONS]...")
def install(name: str, unit_dir: str, user: str | None, watchdog_sec: float, restart_sec: float,
            run_args: tuple[str, ...]) -> None:
    """Write a systemd unit that runs `edgeclf run EXPORT --source SPEC [RUN OPTIONS]` at boot.

    Every `edgeclf run` option may follow (checked now by `edgeclf run`'s own parser). The unit waits for the
    first classified frame (Type=notify), and systemd restarts the service when it fails or when no frame has
    come for --stall-timeout plus --watchdog-sec. Secrets are not written: the token and the MQTT password go
    in /etc/edgeclf/NAME.env (chmod 600), which the unit reads.

    \b
      sudo .venv/bin/edgeclf service install export/ --source 0 --serve 0.0.0.0:8080 --mqtt mqtt://pi@broker
      sudo mkdir -p /etc/edgeclf && echo 'EDGECLF_TOKEN=...' | sudo tee /etc/edgeclf/edgeclf.env >/dev/null
      sudo chmod 600 /etc/edgeclf/edgeclf.env
    """
    if name.endswith(".service"):
        name = name[: -len(".service")]
    if not UNIT_NAME_RE.fullmatch(name):
        raise ServiceError(f"--name {name}: use letters, digits and _ . : - (e.g. edgeclf, edgeclf-door)")
    if not run_args:
        raise ServiceError("expected the arguments of edgeclf run: EXPORT --source SPEC [options]")
    ctx = parse_run_args(list(run_args))
    refuse_secrets(ctx, name)
    notes = check_run(ctx, name)
    if user is None:
        user = default_user()
    elif user:
        import pwd

        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ServiceError(f"--user {user}: no such user on this machine") from None
    cwd = Path.cwd()
    argv = service_argv(ctx, cwd)
    parse_run_args(argv[4:])  # what is written is what edgeclf run accepts
    note = _camera_note(user, str(ctx.params["source"]))
    if note:
        notes.append(note)
    description = f"edgeclf run {Path(argv[4]).name} on {_describe_source(str(ctx.params['source']))}"
    text = render_unit(name=name, argv=argv, working_dir=str(cwd), description=description, user=user,
                       watchdog_sec=watchdog_sec, restart_sec=restart_sec)
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    if unit_dir == "-":
        click.echo(text, nl=False)
        for n in notes:
            say(f"note: {n}")
        return
    folder = Path(unit_dir)
    if not folder.is_dir():
        raise ServiceError(f"--unit-dir {folder}: no such folder (systemd reads {UNIT_DIR})")
    target = folder / f"{name}.service"
    existed = target.exists()
    from edgeclf.fsutil import write_text

    try:
        write_text(target, text)
    except PermissionError:
        raise ServiceError(f"cannot write {target}: permission denied (run it with sudo, or print the unit "
                           "with --unit-dir -)") from None
    except OSError as exc:
        raise ServiceError(f"cannot write {target}: {exc.strerror or exc}") from None
    click.echo(f"{'replaced' if existed else 'wrote'} {target}" + (f" (runs as {user})" if user else " (runs as root)"))
    for n in notes:
        click.echo(f"note: {n}")
    click.echo("enable and start it:")
    click.echo("  sudo systemctl daemon-reload")
    click.echo(f"  sudo systemctl enable --now {name}.service"
               + (f"    (running already: sudo systemctl restart {name}.service)" if existed else ""))
    click.echo("follow it:")
    click.echo(f"  journalctl -u {name} -f")
