"""Start-up: invoke is loaded only when ssh_config's `Match exec` needs it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, env: Optional[dict] = None) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_client_start_does_not_load_invoke() -> None:
    out = _python("""
        import sys
        import bacpac.cli
        print(type(sys.modules["invoke"]).__name__, "invoke.tasks" in sys.modules)
    """)
    assert out == "_Deferred False"


def shell_without_ssh(tmp_path: Path) -> Path:
    """A directory for PATH that holds bash (invoke runs Match exec with it) and no ssh."""
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "bash").symlink_to(shutil.which("bash"))
    return directory


def test_match_exec_still_runs_through_the_deferred_invoke(tmp_path) -> None:
    """Where the OpenSSH client is missing (a PATH without ssh), bacpac's own parser runs."""
    config = tmp_path / "ssh_config"
    config.write_text("Match exec \"/bin/true\"\n    Port 2201\n"
                      "Match exec \"/bin/false\"\n    User nobody\n")
    out = _python(f"""
        import sys
        from bacpac.transport.ssh.config import SshOptions, resolve_host
        cfg = resolve_host("somehost", None, SshOptions(config_file={str(config)!r}))
        print(cfg.port, cfg.user != "nobody", type(sys.modules["invoke"]).__name__)
    """, env={**os.environ, "PATH": str(shell_without_ssh(tmp_path))})
    assert out == "2201 True module"


def test_defer_leaves_a_missing_module_missing() -> None:
    out = _python("""
        from bacpac import lazy
        lazy.defer("no_such_module_here")
        try:
            import no_such_module_here
        except ImportError:
            print("ImportError")
    """)
    assert out == "ImportError"
