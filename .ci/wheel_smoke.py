"""What a user gets from ``pip install vtr-*.whl``: run with that environment's python, from a folder
with no repository around it (``make wheel-check`` copies this file to an empty temporary folder).

Checks that ``vtr`` is the installed, non-editable copy; that every shipped module imports; that
the CLI lists the reducers and refuses bad input with one line and exit status 2; that the demo
runs on the shipped checkpoint; and that ``vtr.testing`` builds a tiny model a user's test can patch.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path


#: modules that need an optional extra: module prefix -> (the package it imports, the extra)
OPTIONAL = {"vtr.lmms": ("lmms_eval", "vtr[lmms]")}


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"wheel smoke: FAILED: {what}")
    print(f"wheel smoke: ok: {what}")


def main() -> None:
    import vtr

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    location = Path(vtr.__file__).resolve()
    check(site in location.parents, f"vtr is imported from site-packages ({location})")
    direct_url = list(site.glob("vtr-*.dist-info/direct_url.json"))
    check(not any('"editable": true' in p.read_text() for p in direct_url), "the install is not editable")

    names = [m.name for m in pkgutil.walk_packages(vtr.__path__, "vtr.", onerror=lambda name: None)]
    optional = {name: extra for name in names for prefix, (package, extra) in OPTIONAL.items()
                if (name == prefix or name.startswith(prefix + ".")) and importlib.util.find_spec(package) is None}
    for name in names:
        if name not in optional:
            importlib.import_module(name)
    check(len(names) > 40 and "vtr.adapters.llava" in names and "vtr.reducers.quota.reducer" in names,
          f"all {len(names) - len(optional)} shipped modules import (vtr.adapters and vtr.reducers.quota among them); "
          f"{len(optional)} need an extra that is not installed: {sorted(set(optional.values()))}")
    check((Path(vtr.__file__).parent / "shapes" / "tiny-llava-shapes" / "model.safetensors").is_file(),
          "the demo checkpoint ships as package data")

    script = Path(sys.executable).parent / "vtr"
    listed = subprocess.run([script, "reducers"], capture_output=True, text=True)
    check(listed.returncode == 0 and "fastervlm" in listed.stdout and "quota" in listed.stdout, "`vtr reducers` lists the reducers")
    bad = subprocess.run([script, "run", "--model", "tiny:llava", "--image", "missing.png", "--prompt", "hi"],
                         capture_output=True, text=True)
    check(bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr,
          f"a user error prints one line and exits 2 ({bad.stderr.strip()!r})")

    with tempfile.TemporaryDirectory() as out:
        demo = subprocess.run([script, "demo", "--out", out], capture_output=True, text=True)
        check(demo.returncode == 0 and "trained on procedural shapes" in demo.stdout and "144 -> 14" in demo.stdout,
              "`vtr demo` runs on the shipped checkpoint")
        check(any(Path(out).glob("overlay_fastervlm_keep*.png")), "the demo writes its overlays")
    print(demo.stdout)

    import torch

    from vtr.testing import example_inputs, tiny_model

    model, processor = tiny_model("llava")
    inputs = example_inputs(processor, "llava", "image", batch=2)
    with torch.no_grad():
        reference = model(**inputs).logits
        with vtr.patched(model, "fastervlm", keep=1.0):
            same = model(**inputs).logits
    check(torch.equal(reference, same), "vtr.testing builds a tiny model; keep=1.0 equals the unpatched model")


if __name__ == "__main__":
    main()
