"""Start-up: invoke is loaded only when ssh_config's `Match exec` needs it."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
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


def test_match_exec_still_runs_through_the_deferred_invoke(tmp_path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Match exec \"true\"\n    Port 2201\nMatch exec \"false\"\n    User nobody\n")
    out = _python(f"""
        import sys
        from bacpac.sshconfig import SshOptions, resolve_host
        cfg = resolve_host("somehost", None, SshOptions(config_file={str(config)!r}))
        print(cfg.port, cfg.user != "nobody", type(sys.modules["invoke"]).__name__)
    """)
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
