"""Put first on PYTHONPATH by ``vramtop run``: starts the vramtop agent in every Python process
the command starts (each torchrun rank, accelerate's workers), then runs the program's own
sitecustomize, if it had one.

vramtop is often installed in its own environment (pipx) while training runs in another, so
the agent is loaded from the directory named by VRAMTOP_HOME (vramtop's own installation) by
file location, without putting that environment's other packages on the program's path. The
agent needs only the standard library and the torch the program imports itself.
"""

import os
import sys


def _load_agent() -> None:
    try:
        if "vramtop" not in sys.modules:
            home = os.environ.get("VRAMTOP_HOME", "")
            init = os.path.join(home, "vramtop", "__init__.py")
            if home and os.path.isfile(init):
                import importlib.util

                spec = importlib.util.spec_from_file_location(
                    "vramtop", init, submodule_search_locations=[os.path.dirname(init)]
                )
                if spec is not None and spec.loader is not None:
                    module = importlib.util.module_from_spec(spec)
                    sys.modules["vramtop"] = module
                    spec.loader.exec_module(module)
        import vramtop.agent._autostart  # noqa: F401 - starts the agent if VRAMTOP_AGENT is set
    except Exception as err:
        if os.environ.get("VRAMTOP_DEBUG"):
            print(f"vramtop: agent not started: {err}", file=sys.stderr)


def _chain_to_the_programs_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved_path = sys.path[:]
    this_module = sys.modules.pop("sitecustomize", None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import sitecustomize  # noqa: F401 - the next one on the path, if any
    except ImportError:
        if this_module is not None:
            sys.modules["sitecustomize"] = this_module
    except Exception as err:
        print(f"sitecustomize failed: {err!r}", file=sys.stderr)
    finally:
        sys.path[:] = saved_path


_load_agent()
_chain_to_the_programs_sitecustomize()
