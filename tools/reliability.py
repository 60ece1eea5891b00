"""Run the hardening tests and write docs/reliability.md: what is tested, how many cases, the outcome.

    python tools/reliability.py

Counts come from the pytest run itself (JUnit XML), never from hand-edited numbers.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "bench"))
from common import ROOT, machine, machine_line

TESTS = [
    "integration-tests/test_hardening_data.py",
    "integration-tests/test_hardening_faults.py",
    "integration-tests/test_hardening_methods.py",
    "packages/medimg-core/tests/test_backbones.py::test_pickled_object_is_refused_and_never_run",
    "packages/medimg-core/tests/test_training.py::test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run",
    "packages/medimg-core/tests/test_loaders_core.py",
    "packages/medimg-core/tests/test_loaders_skin.py",
    "packages/medimg-core/tests/test_loaders_odir_ham.py",
    "packages/medimg-core/tests/test_data_contract.py",
]

#: (class, pattern over "file::test[param]", what a passing case means)
CLASSES = [
    ("bad tables (columns, types, labels, splits, duplicates)", r"test_broken_csv_dataset\[table-",
     "a `DatasetError` naming the file, row, column and value"),
    ("files that are not tables or descriptors", r"test_broken_csv_dataset\[file-",
     "a `DatasetError` naming the file and what was expected"),
    ("paths (escaping the root, absolute, missing images)", r"test_broken_csv_dataset\[path-",
     "a `DatasetError` naming the row and the path; nothing outside the dataset root is read"),
    ("symbolic links (linked image folder with a case mismatch, folder loops, file links)",
     r"test_broken_csv_dataset\[symlink-|test_symlinked_images_folder",
     "linked folders load, each real folder once (loops skipped with a warning); a linked file pointing outside "
     "the dataset is refused naming the row"),
    ("broken images (truncated, not an image, empty)", r"test_broken_csv_dataset\[image-(truncated|not|zero)",
     "an `ImageReadError` naming the file (`medimg datasets verify` lists them all before training)"),
    ("odd images (gray among RGB, other size, 16-bit, RGBA)", r"test_broken_csv_dataset\[image-(gray|other|16|rgba)",
     "handled: converted to the card's channels and resized by the transform (documented)"),
    ("the same cases through `medimg datasets verify`", r"test_broken_csv_dataset_through_the_cli",
     "exit status 1, the same message, no traceback"),
    ("bad data given to training", r"test_training_refuses_bad_data",
     "exit status 1 before a run folder is created"),
    ("MedMNIST .npz files", r"test_broken_medmnist_file|test_not_an_npz|test_npz_holding",
     "a `DatasetError` naming the file; a pickled .npz is refused without running it"),
    ("fuzzed tables (hypothesis, 60 random tables each run)", r"test_any_table_loads_or_fails_clearly",
     "either loads with consistent ids and concepts or raises `DatasetError`; never another exception"),
    ("real-dataset loaders' bad input (WBCAtt, ChestX-ray14, Derm7pt, HAM10000, ODIR, ...)",
     r"test_loaders_(core|skin|odir_ham)(\.py)?::.*(bad|missing|unreadable|error|wrong|checked|lists)",
     "errors naming file, row and column; missing images dropped and counted where the option says so"),
    ("image reading and paths inside the loaders", r"test_read_image_errors|test_path_resolver|test_problem_log",
     "errors naming the file; every problem of a dataset listed at once"),
    ("untrusted checkpoints and caches", r"pickle|tampered",
     "refused (safetensors only, `weights_only` for .pth) or re-extracted; the payload never runs"),
    ("faults: full disk, unwritable output, failed checkpoint write, SIGKILL mid-epoch",
     r"test_full_disk|test_out_is_a_file|test_failed_checkpoint_write|test_sigkill",
     "reported before training and nothing left behind; previous checkpoint kept; resume matches"),
    ("method inputs (NaN or constant features, one class, wrong shapes)", r"test_hardening_methods",
     "a `ValueError` naming the array, the row or column and what was expected"),
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "junit.xml"
        present = [t for t in TESTS if (ROOT / t.split("::")[0]).exists()]
        start = time.time()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml_path}",
                        *present], cwd=ROOT, check=False)
        wall = time.time() - start
        cases = []
        for case in ET.parse(xml_path).getroot().iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name')}".replace(".", "/")
            outcome = "passed"
            if case.find("failure") is not None or case.find("error") is not None:
                outcome = "failed"
            elif case.find("skipped") is not None:
                outcome = "skipped"
            cases.append((name, outcome))
    lines = ["# Reliability", "",
             f"Written by `python tools/reliability.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"({machine_line(machine())}); the hardening tests ran in {wall:.0f} s. Every count below is a pytest "
             "case of that run; the tests are part of `bash tools/test.sh`, so CI runs all of them.", "",
             "| class | cases | passed | failed | skipped | a passing case means |", "|---|---|---|---|---|---|"]
    total = {"passed": 0, "failed": 0, "skipped": 0}
    for title, pattern, meaning in CLASSES:
        hits = [o for n, o in cases if re.search(pattern, n)]
        counts = {k: hits.count(k) for k in total}
        for k in total:
            total[k] += counts[k]
        lines.append(f"| {title} | {len(hits)} | {counts['passed']} | {counts['failed']} | {counts['skipped']} | "
                     f"{meaning} |")
    lines += ["", f"All classes: {sum(total.values())} cases, {total['passed']} passed, {total['failed']} failed, "
              f"{total['skipped']} skipped (a case can fall in two classes).", "",
              "Tests: " + ", ".join(f"`{t}`" for t in TESTS if (ROOT / t.split("::")[0]).exists()) + ".", ""]
    out = ROOT / "docs" / "reliability.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    if total["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
