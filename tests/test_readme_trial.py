"""The README's "Trying both nodes on one machine" recipe, run as written (on free ports), as a new user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from simulations.cluster import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- trial-recipe"


def recipe() -> str:
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, "the README lost its trial recipe"
    found = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S)
    assert found is not None
    return found.group(1)


def test_the_readme_trial_runs_two_nodes_on_one_machine(tmp_path: Path) -> None:
    script = recipe()
    # The only change: free ports instead of the README's, so that parallel runs do not collide.
    for port in ("7443", "7444", "9443"):
        assert f":{port}" in script
        script = script.replace(f":{port}", f":{free_port()}")
    assert "--port 8080" in script
    script = script.replace("--port 8080", f"--port {free_port()}")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # stdin closed: the recipe's last `read` ("press Enter to stop") returns at once, as Enter would
    done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=280, stdin=subprocess.DEVNULL)
    trial = tmp_path / "trial"
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in trial.glob("*.log"))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    out, err = done.stdout, done.stderr
    assert "is serving" in out and "shared customers (both)" in out
    # both preflights first: every check ok, the platform reached over mutual TLS
    assert out.count("ready for the first job") == 2 and "0 failed" in out
    assert re.search(r"^platform handshake +OK +mutual TLS accepted both ways", out, re.M), out
    # train: the alignment it took, per-epoch validation metrics while it runs, the results table at the end
    assert "(the latest that can train: mode 'both')" in err
    assert re.search(r"epoch 2/2 validation AUC tag_young_family \d\.\d{3}, tag_car_owner \d\.\d{3}", err)
    assert re.search(r"^TAG +AUC JOINT +95% CI +AUC BANK-ONLY +95% CI +UPLIFT", out, re.M)
    assert re.search(r"^JOB +NAME +KIND +STATUS +DURATION +TAGS +RESULT", out, re.M) and "first-try" in out
    assert re.search(r"^\+44\d+ +(ok|not_in_intersection) +0\.\d{4}", out, re.M)
    assert re.search(r"^\+440000000000 +unknown_customer +- +-", out, re.M)
    assert re.search(r"epoch 2/2 validation AUC", out) and "succeeded" in out  # `logs`
    # the console started and printed its link (with its token)
    assert re.search(r"^http://127\.0\.0\.1:\d+/\?token=\S+$", out, re.M), out
    # separate state directories, and both nodes stopped gracefully
    assert (trial / "state" / "bank" / "jobs.sqlite").exists() or any((trial / "state" / "bank").iterdir())
    assert any((trial / "state" / "platform").iterdir())
    assert "stopped" in (trial / "bank.log").read_text() and "stopped" in (trial / "platform.log").read_text()
