"""The Python code injected into the target, and what it reports back.

It runs once, in the target's main thread, at its next check for pending calls, with the GIL
held (``Py_AddPendingCall`` queues it there). It only loads vramtop's agent from vramtop's own
installation (by file location, as ``vramtop run``'s bootstrap does: nothing is added to the
target's sys.path), starts it unless it already runs, writes one word about the outcome into
``<pid>.attach`` beside the agent's socket, and returns. It never raises into the program: an
exception out of a pending call would end the program's current frame with a SystemError, and a
SystemExit would end the program. A Ctrl-C that lands in it is passed on to the program.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from vramtop.protocol import socket_path

from ._target import process_ended
from .errors import AgentNotYet, AttachError, TargetExited

_SOURCE = '''
def attach(home, directory, interval):
    import os, sys
    marker = os.path.join(directory, "%d.attach" % os.getpid())

    def tell(text):
        try:
            with open(marker + ".tmp", "w") as out:
                out.write(text)
            os.replace(marker + ".tmp", marker)
        except OSError:
            pass

    try:
        if "vramtop" not in sys.modules:
            import importlib.util
            init = os.path.join(home, "vramtop", "__init__.py")
            spec = importlib.util.spec_from_file_location(
                "vramtop", init, submodule_search_locations=[os.path.dirname(init)])
            module = importlib.util.module_from_spec(spec)
            sys.modules["vramtop"] = module
            spec.loader.exec_module(module)
        from vramtop import agent
        if agent.current() is not None:
            tell("running")
            return
        tell("started" if agent.start(interval=interval, directory=directory, attached=True) else "failed")
    except KeyboardInterrupt:
        import _thread
        _thread.interrupt_main()
    except BaseException as err:
        tell("failed: %s: %s" % (type(err).__name__, err))
        try:
            print("vramtop: agent not started: %s" % err, file=sys.stderr)
        except BaseException:
            pass
'''


def bootstrap_code(home: Path, directory: Path, interval: float | None) -> bytes:
    """The text PyRun_SimpleString runs in the target's ``__main__``: it binds no name there
    (the function lives in a namespace of its own) and lets nothing out."""
    call = f"{_SOURCE}\nattach({str(home)!r}, {str(directory)!r}, {interval!r})\n"
    code = ("try:\n"
            f"    __import__('builtins').exec({call!r}, {{'__name__': 'vramtop_attach'}})\n"
            "except BaseException:\n"
            "    pass\n")
    compile(code, "<vramtop attach>", "exec")  # a mistake here must fail here, not in the target
    return code.encode()


def marker_path(pid: int, directory: Path) -> Path:
    return directory / f"{pid}.attach"


def agent_serving(pid: int, directory: Path) -> bool:
    """An agent answers on ``pid``'s socket (not a stale file)."""
    path = socket_path(pid, directory)
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def wait_for_agent(pid: int, directory: Path, timeout: float) -> None:
    """Wait until the started agent serves its socket; AttachError with the reason if it does
    not within ``timeout`` seconds."""
    marker = marker_path(pid, directory)
    deadline = time.monotonic() + timeout
    outcome = ""
    while time.monotonic() < deadline:
        if process_ended(pid, settle=0):
            raise TargetExited(pid)
        outcome = _read(marker) or outcome
        if outcome.startswith("failed"):
            _remove(marker)
            reason = outcome.removeprefix("failed").removeprefix(": ") or "see its stderr"
            raise AttachError(f"the agent did not start in PID {pid}: {reason}")
        if agent_serving(pid, directory):
            _remove(marker)
            return
        time.sleep(0.05)
    _remove(marker)
    if not outcome:
        raise AgentNotYet(f"PID {pid} has not run the agent's start within {timeout:g} s: its main thread has not "
                          "returned to Python since (a long C or CUDA call, or a wait); it starts when it does, "
                          "never twice")
    raise AgentNotYet(f"the agent runs in PID {pid} but serves nothing yet: it waits for the program to use CUDA "
                      "through torch")


def _read(path: Path) -> str:
    """The marker's text; bytes that are not UTF-8 (an error message in another encoding) are
    shown replaced, never raised."""
    try:
        return path.read_bytes().decode(errors="replace").strip()
    except OSError:
        return ""


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
