"""A fake `vramtop export` page, for the cases of `vramtop --remote` that the real exporter does not
produce on a CPU-only machine (tests/test_remote_live.py reads the real one): a GPU its NVML
failed on, figures gone stale (``vramtop_up 0``), a command line with quotes and backslashes.
Written from docs/exporter.md's names and labels; served over HTTP on loopback from a thread."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MiB = 1 << 20


def exporter_page(hostname: str = "node2", gpus: int = 2, used_mib: int = 30000, failed_gpu: int | None = None,
                  up: bool = True) -> str:
    """Each GPU 81559 MiB with ``used_mib`` used, one process on it (PID 7000 + index); GPU
    ``failed_gpu`` could not be read there; ``up`` False: that host's NVML stopped answering."""
    lines = ["# HELP vramtop_gpu_memory_used_bytes GPU memory used (nvidia-smi memory.used)",
             "# TYPE vramtop_gpu_memory_used_bytes gauge"]
    for i in range(gpus):
        labels = f'gpu="{i}",uuid="GPU-remote-{i:04d}",hostname="{hostname}"'
        lines.append(f"vramtop_gpu_up{{{labels}}} {0 if i == failed_gpu else 1}")
        if i == failed_gpu:
            continue  # the exporter leaves a failed GPU's memory series out
        total, used, reserved = 81559 * MiB, (used_mib + i) * MiB, 480 * MiB
        lines += [f"vramtop_gpu_memory_used_bytes{{{labels}}} {used}",
                  f"vramtop_gpu_memory_total_bytes{{{labels}}} {total}",
                  f"vramtop_gpu_memory_free_bytes{{{labels}}} {total - used - reserved}",
                  f"vramtop_gpu_memory_reserved_bytes{{{labels}}} {reserved}",
                  f'vramtop_process_gpu_memory_bytes{{gpu="{i}",uuid="GPU-remote-{i:04d}",pid="{7000 + i}",'
                  f'command="python train.py --name \\"run {i}\\"",user="bob"}} {(used_mib - 500) * MiB}',
                  f'vramtop_torch_memory_allocated_bytes{{gpu="{i}",pid="{7000 + i}",rank="{i}"}} {20000 * MiB}']
    lines.append(f"vramtop_up {1 if up else 0}")
    return "\n".join(lines) + "\n"


@contextmanager
def serve(page: str, path: str = "/metrics", seen: threading.Event | None = None) -> Iterator[str]:
    """Serve ``page`` at http://127.0.0.1:PORT``path`` (any query string) until the block ends;
    yields HOST:PORT. ``seen`` is set when it was asked for."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page.encode()
            found = self.path.partition("?")[0] == path
            if found and seen is not None:
                seen.set()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
