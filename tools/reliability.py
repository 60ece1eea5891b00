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
    "integration-tests/test_hardening_artefacts.py",
    "integration-tests/test_hardening_runs.py",
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
    ("paths (escaping the root, absolute, missing images; Unicode forms and the file-name fallback)",
     r"test_broken_csv_dataset\[path-",
     "a `DatasetError` naming the row and the path, nothing outside the dataset root read; NFD file names under an "
     "NFC table and a file found by its name alone load (verify notes the fallback)"),
    ("masks and the file-name fallback (masks/ missing, misplaced files, paths leaving the root)",
     r"test_broken_csv_dataset\[mask-",
     "a fallback never lands on another column's file or folder (an image is never its own mask): a `DatasetError` "
     "naming the row, the column and the file it would have taken"),
    ("label spellings (NA, None, null, N/A, #N/A, <NA>, -, ?; '0' beside '0.0', 'Sick' beside 'sick')",
     r"test_broken_csv_dataset\[table-label-",
     "missing spellings are the empty-label error; two spellings of one class are a `DatasetError` naming the rows "
     "of each; never a silent extra class"),
    ("loader options and dataset.json values of the wrong type or value",
     r"test_broken_csv_dataset\[(option-|file-descriptor-)|test_verify_options_for_other_loaders",
     "a `DatasetError` naming the option (or dataset.json and its key), the value and what was expected; the "
     "descriptor's table stays inside the root"),
    ("symbolic links (linked image folder with a case mismatch, folder loops, file links)",
     r"test_broken_csv_dataset\[symlink-|test_symlinked_images_folder",
     "linked folders load, each real folder once (loops skipped with a warning); a linked file pointing outside "
     "the dataset is refused naming the row"),
    ("broken images (truncated, not an image, empty, NaN pixels)",
     r"test_broken_csv_dataset\[image-(truncated|not|zero|float-nan)",
     "an `ImageReadError` naming the file (`medimg datasets verify` lists them all before training)"),
    ("decompression bombs (a few bytes claiming 30000 x 30000 or 10000 x 10000 pixels)",
     r"decompression.bomb",
     "an `ImageReadError` naming the file in verify, in training and in the explain commands' image reading"),
    ("high-bit-depth images (16-bit of every byte order, 32-bit integer, 32-bit float)",
     r"test_broken_csv_dataset\[image-(I|I-16\w*|F)\]|test_high_bit_depth",
     "rescaled from the image's own minimum and maximum to 0-255, every level kept, never clipped"),
    ("odd images (gray among RGB, other size, 16-bit, RGBA)", r"test_broken_csv_dataset\[image-(gray|other|16|rgba)",
     "handled: converted to the card's channels and resized by the transform (documented)"),
    ("the same cases through `medimg datasets verify`", r"test_broken_csv_dataset_through_the_cli",
     "exit status 1, the same message, no traceback"),
    ("bad data given to training", r"test_training_refuses_bad_data",
     "exit status 1 before a run folder is created"),
    ("verify's notes (tiny or extreme images, a class absent from a split, the file-name fallback); each problem "
     "once; the explain commands' note on a tiny or extreme image",
     r"test_verify_notes|test_verify_lists_each_problem_once|test_explain_notes",
     "exit status 0 with a note naming the files or class; a problem of the whole table listed once, not per "
     "split; an explained image that is tiny or extreme is named in a warning"),
    ("split files that no longer match the data (images added or removed)", r"test_a_split_file",
     "a `DatasetError` saying what changed and how to draw a new split; folds never redrawn silently; files of the "
     "earlier naming adopted"),
    ("config values and devices (batch size, epochs, image size, learning rates, normalisation, precision, ...)",
     r"test_numbers_are_range_checked|test_a_device_this_machine_lacks|test_a_batch_larger|test_a_misspelt_monitor",
     "an error naming the key, the value and the range, exit status 2 (1 for a device or precision this machine "
     "lacks) before any folder exists; a monitor that names no metric is named, with the nearest one"),
    ("failures during a training (bad image, bomb, refused weights, diverging, full disk while checkpointing)",
     r"test_a_training_(failing|that_diverges)|test_a_refused_pretrained|test_a_checkpoint_write_failing"
     r"|test_weights_are_as_readable",
     "a clean error naming the file; no folder left when no checkpoint was written, the folder kept for --resume "
     "otherwise; weights as readable as the config"),
    ("resuming damaged, missing or foreign checkpoints", r"test_resuming_",
     "exit status 1 or 2 naming the damaged file and how to go on (from best, or a new run), or whose run it is; "
     "metrics.jsonl untouched"),
    ("commands given the wrong folder or file (report on a dataset, preview --out)",
     r"test_a_report_of_a_folder|test_preview_out",
     "exit status 1 or 2 naming the folder or option; nothing written"),
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
    ("method artefact files edited or cut short (rules.json, cbm.json, sae.json, names.json, cavs, selection.json, "
     "boundary.json, a push folder's prototypes)",
     r"test_a_tampered_|test_damaged_cavs|test_a_damaged_(sae|cipl_push)|test_cbm_as_written"
     r"|test_rules_json_as_written",
     "a `CheckpointError` naming the file, the key or entry, the value found and what was expected; files as "
     "written still load"),
    ("NaN or infinite weights and pickles in a method's safetensors",
     r"test_(cbm_weights|weights)_holding_nan|test_a_pickle_in_place_of_cbm",
     "refused naming the file and the tensor (any model.safetensors, through `load_weights`); a pickle never runs"),
    ("the methods' commands on damaged, foreign or moved runs (crl, neuron-concepts, cipl, iis, dae-cf)",
     r"test_(crl|cipl|dae|iis_explain)_|test_neuron_concepts_explain|test_another_methods_run|test_an_iis_run",
     "exit status 1 naming the file, value or the run's kind and no traceback; images read as the other methods "
     "read them; an IIS run explains from another working directory"),
    ("failed method stages and scorings (neuron-concepts stages, iis score)",
     r"test_a_failed_stage|test_a_neuron_concepts_stage|test_iis_score_with_refused",
     "no half stage or run folder left; pipeline.json records the earlier stage again; exit status 1, no traceback"),
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
